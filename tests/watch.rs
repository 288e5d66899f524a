//! `fleet watch` and `fleet status` on the real engine with the fake GitHub.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{World, pool, running, stderr, stdout};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `fleet watch` as a child process, its log in a file.
struct Watch {
    child: Child,
}

impl Watch {
    fn start(w: &World, extra: &[&str]) -> Watch {
        let log = w.dir.path().join("watch.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fleet"))
            .current_dir(w.dir.path())
            .arg("watch")
            .args(extra)
            .env("GITHUB_TOKEN", w.fake.token())
            .env("GITHUB_API_URL", w.fake.url())
            .env("FLEET_LOCK_DIR", w.dir.path())
            .env("STATE_DIRECTORY", w.dir.path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn fleet watch");
        Watch { child }
    }

    /// SIGTERM; returns how long the exit took and the exit code.
    fn terminate(&mut self) -> (Duration, Option<i32>) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (started.elapsed(), status.code());
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                return (started.elapsed(), None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds, at most `limit`.
fn eventually(
    limit: Duration,
    what: &str,
    log: &dyn Fn() -> String,
    mut check: impl FnMut() -> bool,
) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; watch log:\n{}", log());
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read");
    out
}

/// The value of one sample line of a Prometheus text page, matched by prefix.
fn sample(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Replaces the spec the way editors do: write a new file, rename it over the old one.
fn atomic_replace(w: &World, pools: &str) {
    let path = w.spec(pools);
    let text = std::fs::read_to_string(&path).expect("spec");
    let tmp = w.dir.path().join(".fleet.yaml.swp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
}

#[test]
fn watch_replaces_exited_runners_follows_edits_ignores_invalid_ones_and_reports_metrics() {
    let w = World::new();
    w.spec(&pool("eph", 2, true));
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut watch = Watch::start(
        &w,
        &["-v", "--resync", "60s", "--metrics-addr", &metrics_addr],
    );
    let log = || watch_log(&w);
    eventually(Duration::from_secs(30), "2 runners", &log, || {
        running(&w, "eph").len() == 2
    });

    // A runner's container exits: a replacement comes without any command.
    let victim = running(&w, "eph")[0].clone();
    common::docker(&["kill", &victim]);
    eventually(Duration::from_secs(15), "the replacement", &log, || {
        let now = running(&w, "eph");
        now.len() == 2 && !now.contains(&victim)
    });

    // An editor's save of a new count converges.
    atomic_replace(&w, &pool("eph", 3, true));
    eventually(Duration::from_secs(15), "3 runners", &log, || {
        running(&w, "eph").len() == 3
    });

    // An invalid edit changes nothing.
    let before = running(&w, "eph");
    std::fs::write(
        w.dir.path().join("fleet.yaml"),
        "version: 1\nname: Not Valid\n",
    )
    .expect("write");
    eventually(
        Duration::from_secs(10),
        "the invalid spec to be reported",
        &log,
        || log().contains("is invalid; the last valid spec stays in force"),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(running(&w, "eph"), before);

    // Fixed again, with a lower count: idle runners go.
    atomic_replace(&w, &pool("eph", 1, true));
    eventually(Duration::from_secs(15), "1 runner", &log, || {
        running(&w, "eph").len() == 1
    });

    // The metrics tell the same story once the reconcile that removed them has finished (the
    // gauges are set at its end, a moment after the containers went).
    let runners_total = |page: &str| -> f64 {
        ["busy", "idle", "offline"]
            .iter()
            .filter_map(|s| {
                sample(
                    page,
                    &format!("fleet_runners{{pool=\"eph\",state=\"{s}\",host=\"local\"}}"),
                )
            })
            .sum()
    };
    let settled = |page: &str| {
        sample(page, "fleet_desired_runners{pool=\"eph\"}") == Some(1.0)
            && runners_total(page) == 1.0
    };
    eventually(
        Duration::from_secs(15),
        "the gauges to settle",
        &log,
        || settled(&http_get(port, "/metrics")),
    );
    let page = http_get(port, "/metrics");
    assert!(page.contains("200 OK"), "{page}");
    assert!(settled(&page), "{page}");
    assert!(
        sample(
            &page,
            "fleet_reconcile_total{trigger=\"docker\",result=\"ok\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "fleet_reconcile_total{trigger=\"spec\",result=\"invalid_spec\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert!(
        sample(
            &page,
            "fleet_apply_actions_total{action=\"replace\",result=\"done\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{page}"
    );
    assert!(
        sample(
            &page,
            "fleet_apply_actions_total{action=\"destroy\",result=\"done\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{page}"
    );
    assert!(
        sample(&page, "fleet_replacement_latency_seconds_count").unwrap_or(0.0) >= 1.0,
        "{page}"
    );
    assert!(
        sample(
            &page,
            "fleet_github_requests_total{endpoint=\"generate-jitconfig\",status=\"201\"}"
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{page}"
    );
    assert!(
        sample(&page, "fleet_github_rate_limit_remaining").unwrap_or(0.0) > 4000.0,
        "{page}"
    );
    assert!(
        sample(&page, "fleet_runner_uptime_seconds{pool=\"eph\",runner=").is_some(),
        "{page}"
    );
    assert!(http_get(port, "/healthz").ends_with("ok\n"));

    // SIGTERM: out within 10 s, runners left alone.
    let (took, code) = watch.terminate();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(code, Some(0), "{}", log());
    assert_eq!(running(&w, "eph").len(), 1);
    assert!(log().contains("runners were left as they are"), "{}", log());
}

fn watch_log(w: &World) -> String {
    std::fs::read_to_string(w.dir.path().join("watch.log")).unwrap_or_default()
}

/// A Docker endpoint that can disappear and come back: a unix socket forwarding to the engine.
struct DockerProxy {
    path: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DockerProxy {
    fn start(w: &World, path: &std::path::Path) -> DockerProxy {
        let _ = std::fs::remove_file(path);
        let listener =
            w.rt.block_on(async { tokio::net::UnixListener::bind(path) })
                .expect("bind proxy");
        let task = w.rt.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    break;
                };
                connections.spawn(async move {
                    if let Ok(mut engine) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
            // Aborting this task drops `connections`, which aborts every forwarded stream.
        });
        DockerProxy {
            path: path.to_path_buf(),
            task: Some(task),
        }
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn watch_rides_out_a_docker_endpoint_that_disappears_and_comes_back() {
    let w = World::new();
    let socket = w.dir.path().join("docker.sock");
    let mut proxy = DockerProxy::start(&w, &socket);
    w.spec_with(
        &pool("eph", 1, true),
        &format!("unix://{}", socket.display()),
        "none",
    );
    let _watch = Watch::start(&w, &["--resync", "1s"]);
    let log = || watch_log(&w);
    eventually(Duration::from_secs(30), "1 runner", &log, || {
        running(&w, "eph").len() == 1
    });
    let first = running(&w, "eph")[0].clone();

    // The endpoint goes away; meanwhile the runner's container exits.
    proxy.stop();
    common::docker(&["kill", &first]);
    eventually(
        Duration::from_secs(15),
        "the loss to be reported",
        &log,
        || log().contains("the Docker engine at unix://") && log().contains("retrying in"),
    );
    assert!(
        running(&w, "eph").is_empty(),
        "nothing can be done without Docker"
    );

    // It comes back: the fleet converges again.
    let _proxy = DockerProxy::start(&w, &socket);
    eventually(
        Duration::from_secs(60),
        "the replacement after Docker came back",
        &log,
        || {
            let now = running(&w, "eph");
            now.len() == 1 && now[0] != first
        },
    );
}

#[test]
fn status_shows_each_runner_its_github_state_and_totals() {
    let w = World::new();
    w.spec(&format!(
        "{}{}",
        pool("eph", 2, true),
        pool("per", 1, false)
    ));
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let eph = w.container_names("eph");
    w.fake
        .set_runner_state_by_name(&w.scope, &eph[0], true, true);
    w.fake
        .set_runner_state_by_name(&w.scope, &eph[1], true, false);

    let out = w.fleet(&["status", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["totals"]["desired"], 3);
    assert_eq!(status["totals"]["containers"], 3);
    assert_eq!(status["totals"]["busy"], 1);
    assert_eq!(status["totals"]["idle"], 1);
    assert_eq!(
        status["totals"]["offline"], 1,
        "the persistent runner never registered (no real runner here)"
    );
    let pools = status["pools"].as_array().expect("pools");
    let eph_pool = pools.iter().find(|p| p["name"] == "eph").expect("eph");
    let busy = eph_pool["runners"]
        .as_array()
        .expect("runners")
        .iter()
        .find(|r| r["name"] == eph[0].as_str())
        .expect("runner");
    assert_eq!(busy["state"], "busy");
    assert_eq!(busy["container"], "running");
    assert_eq!(busy["github"]["online"], true);
    assert!(busy["uptime_seconds"].as_i64().is_some());

    let out = w.fleet(&["status"]);
    let text = stdout(&out);
    assert!(
        text.contains("pool eph on host local: 2 of 2 runners"),
        "{text}"
    );
    assert!(text.contains("online busy"), "{text}");
    assert!(
        text.contains("Total: 3 of 3 runners (1 busy, 1 idle, 1 offline), 0 exited."),
        "{text}"
    );
}
