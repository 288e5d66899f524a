//! The monitoring kit of `ci/monitoring/`: the alert rules pass `promtool check rules` and their
//! unit tests (each alert fires and clears), the example Prometheus configuration passes
//! `promtool check config`, and the Grafana dashboard is checked for real: Debian's `prometheus`
//! scrapes a running `fleet watch` (fake GitHub, real engine, stand-in NVML) and every panel's
//! query must return series, every alert rule must evaluate, and fleet's `/metrics` must pass
//! `promtool check metrics`. promtool and prometheus must be installed: a missing one fails the
//! test, it never skips (`.ci/run` installs them).

mod common;
#[path = "support/watch.rs"]
mod watch_process;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::nvml::{NvmlStub, StubGpu};
use common::{World, pool};
use fake_github::{Config, ScaleSetConfig};
use watch_process::{WatchProcess, free_port, http_get, listening_scale_set, sample};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The path of `name` on PATH; fails the test when it is not there.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed (not on PATH): apt-get install -y prometheus")
        })
}

fn monitoring(path: &str) -> PathBuf {
    Path::new(ROOT).join("ci/monitoring").join(path)
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("run the tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tool("promtool");
    let rules = monitoring("fleet-alerts.yml");
    let text = run_ok(Command::new(&promtool).args(["check", "rules"]).arg(&rules));
    assert!(text.contains("SUCCESS: 14 rules found"), "{text}");
    let tests: Vec<PathBuf> = std::fs::read_dir(monitoring("tests"))
        .expect("ci/monitoring/tests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    assert!(!tests.is_empty());
    let text = run_ok(Command::new(&promtool).args(["test", "rules"]).args(&tests));
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every alert of the rule file has a unit test where it fires and one where it is clear.
#[test]
fn every_alert_is_tested_firing_and_clear() {
    let rules = std::fs::read_to_string(monitoring("fleet-alerts.yml")).expect("rules");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 14, "{alerts:?}");
    let mut tests = String::new();
    for entry in std::fs::read_dir(monitoring("tests")).expect("tests") {
        tests.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("read"));
    }
    // The unit tests are written `alertname: X` then `exp_alerts: []` (clear) or `exp_alerts:`
    // followed by the expected alerts (firing).
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for alert in alerts {
        let outcomes: Vec<&str> = lines
            .windows(2)
            .filter(|w| w[0] == format!("alertname: {alert}"))
            .map(|w| w[1])
            .collect();
        assert!(
            outcomes.contains(&"exp_alerts: []"),
            "{alert} is never tested clear"
        );
        assert!(
            outcomes.contains(&"exp_alerts:"),
            "{alert} is never tested firing"
        );
    }
}

#[test]
fn the_example_prometheus_configuration_passes_promtool() {
    let text = run_ok(
        Command::new(tool("promtool"))
            .args(["check", "config"])
            .arg(monitoring("prometheus.yml")),
    );
    assert!(text.contains("SUCCESS: 14 rules found"), "{text}");
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(monitoring("grafana/fleet.json")).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// `(panel title, query)` of every panel target.
fn panel_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let title = p["title"].as_str().expect("title").to_string();
            p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_string()))
        })
        .collect()
}

#[test]
fn the_dashboard_is_well_formed_and_provisioned_from_a_file() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "fleet-runners");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    let mut cells = std::collections::BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id {p}"
        );
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64(),
            g["y"].as_u64(),
            g["w"].as_u64(),
            g["h"].as_u64(),
        );
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            panic!("gridPos of {p}");
        };
        assert!(x + w <= 24, "{p}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "panel {} overlaps another",
                    p["title"]
                );
            }
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{p}");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{t}");
            }
        }
    }
    let provisioning =
        std::fs::read_to_string(monitoring("grafana/provisioning/dashboards.yml")).expect("read");
    assert!(provisioning.contains("type: file"), "{provisioning}");
    assert!(provisioning.contains("path: "), "{provisioning}");
    let datasources =
        std::fs::read_to_string(monitoring("grafana/provisioning/datasources.yml")).expect("read");
    assert!(datasources.contains("type: prometheus"), "{datasources}");
}

/// Debian's `prometheus` on 127.0.0.1, in its own directory; stopped and removed on drop, also
/// when the test fails.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let binary = tool("prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: fleet\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
                monitoring("fleet-alerts.yml").display()
            ),
        )
        .expect("write the config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/...` as JSON, `None` while Prometheus does not answer.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Option<serde_json::Value> {
        let query = serde_urlencoded::to_string(params).expect("encode the query");
        let body = http_get(self.port, &format!("/api/v1/{path}?{query}"))?;
        serde_json::from_str(&body).ok()
    }

    /// The series an instant query returns; panics on a query error.
    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let answer = self
            .api("query", &[("query", expr)])
            .unwrap_or_else(|| panic!("no answer to {expr}; prometheus log:\n{}", self.log()));
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn eventually(&self, limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "timed out waiting for {what}; prometheus log:\n{}",
            self.log()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The TempDir removes the directory after this.
    }
}

/// A Grafana query as Prometheus reads it: every pool and host, a one-minute rate window.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$pool", ".*")
        .replace("$host", ".*")
}

/// A watch with GPU runners (stand-in NVML), a CPU pool and an autoscaled pool, after one
/// runner was replaced and one job ran on the autoscaled pool, so that every metric fleet
/// exports has samples.
fn watched_world(w: &World) -> (NvmlStub, WatchProcess) {
    let stub = NvmlStub::new(w.dir.path(), &[StubGpu::numbered(0), StubGpu::numbered(1)]);
    let spec = w.spec_gpus_auto(&format!(
        "{}    gpus: 1\n{}{}",
        pool("gpu", 2, true),
        pool("cpu", 1, true),
        autoscaled_pool("auto")
    ));
    w.gpu_runners(&stub, &spec, 2);
    let watch = WatchProcess::start(w, &["--resync", "2s"], &stub.env());
    watch.eventually(Duration::from_secs(60), "the cpu runner", || {
        sample(
            &watch.metrics(),
            "fleet_runners",
            &[("pool", "cpu"), ("state", "offline")],
        ) == Some(1.0)
    });
    let cpu = w.container_names("cpu");
    common::docker_ok(&["kill", &cpu[0]]);
    watch.eventually(Duration::from_secs(60), "a replacement", || {
        sample(
            &watch.metrics(),
            "fleet_replacement_latency_seconds_count",
            &[],
        )
        .is_some_and(|n| n >= 1.0)
    });
    run_one_autoscaled_job(w, &watch, "auto");
    (stub, watch)
}

/// An autoscaled CPU pool that starts from no runner.
fn autoscaled_pool(name: &str) -> String {
    format!(
        "  {name}:\n    image: {}\n    pull: never\n    network: none\n    autoscale: {{ min_idle: 0, max: 2 }}\n",
        common::TEST_IMAGE
    )
}

/// One job queued for `pool`'s scale set, taken by the runner watch starts for it and
/// completed, as GitHub and the runner would.
fn run_one_autoscaled_job(w: &World, watch: &WatchProcess, pool: &str) {
    let id = listening_scale_set(w, watch, pool);
    w.fake.queue_jobs_for_scale_set(id, 1).expect("queue a job");
    let mut runner = None;
    watch.eventually(Duration::from_secs(60), "a runner for the job", || {
        runner = w.container_names(pool).into_iter().next();
        runner.is_some()
    });
    let runner = runner.expect("runner");
    watch.eventually(Duration::from_secs(30), "the job to start", || {
        w.fake.start_job(id, &runner).is_ok()
    });
    w.fake
        .complete_job(id, &runner, "succeeded")
        .expect("complete the job");
    common::docker_ok(&["stop", "-t", "0", &runner]);
    watch.eventually(Duration::from_secs(60), "the job's metrics", || {
        sample(&watch.metrics(), "gha_completed_jobs_total", &[]).is_some_and(|n| n >= 1.0)
    });
}

#[test]
fn prometheus_scrapes_fleet_watch_and_every_dashboard_query_returns_series() {
    let promtool = tool("promtool");
    tool("prometheus");
    let w = World::with_fake(Config {
        scaleset: ScaleSetConfig {
            long_poll: Duration::from_millis(300),
            session_timeout: Duration::from_secs(3),
            ..ScaleSetConfig::default()
        },
        ..Config::default()
    });
    let (_stub, watch) = watched_world(&w);

    // fleet's page in the classic text format passes promtool's lint.
    let page = watch.metrics();
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), page.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prometheus = Prometheus::start(watch.metrics_port);
    prometheus.eventually(Duration::from_secs(60), "ten scrapes of fleet", || {
        prometheus
            .api(
                "query",
                &[("query", "count_over_time(up{job=\"fleet\"}[1m]) >= 10")],
            )
            .is_some_and(|a| {
                a["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            })
    });
    assert_eq!(
        prometheus.query("up{job=\"fleet\"} == 1").len(),
        1,
        "{}",
        prometheus.log()
    );

    let mut empty = Vec::new();
    for (title, expr) in panel_queries(&dashboard()) {
        if prometheus.query(&as_promql(&expr)).is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without series:\n{}",
        empty.join("\n")
    );

    // The dashboard's variables list what fleet exports.
    for (label, metric, wanted) in [
        ("pool", "fleet_desired_runners", "gpu"),
        ("host", "fleet_runners", "local"),
    ] {
        let values = prometheus
            .api(&format!("label/{label}/values"), &[("match[]", metric)])
            .expect("label values");
        assert!(
            values["data"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v == wanted)),
            "{label}: {values}"
        );
    }

    // Every alert rule evaluates against fleet's real series without an error.
    prometheus.eventually(Duration::from_secs(30), "the rules to be evaluated", || {
        let Some(answer) = prometheus.api("rules", &[]) else {
            return false;
        };
        let rules: Vec<serde_json::Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(
            rules.iter().all(|r| r["health"] != "err"),
            "a rule fails: {answer}"
        );
        rules.len() == 14 && rules.iter().all(|r| r["health"] == "ok")
    });
    // fleet watch is up and reconciling: the rules about it are quiet.
    let firing = prometheus.query("ALERTS{alertstate=\"firing\"}");
    assert!(
        firing
            .iter()
            .all(|a| a["metric"]["alertname"] != "FleetWatchDown"
                && a["metric"]["alertname"] != "FleetWatchAbsent"),
        "{firing:?}"
    );
}
