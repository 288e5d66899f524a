//! History against ground truth: `fleet watch` on the real engine, with the fake GitHub's
//! scale set service and the stand-in NVML, driven through known scripts (jobs of known
//! lengths, GPUs of known utilization, a runner killed); `fleet report` must say what the test
//! did, within the tolerances stated beside each check. And the crash test: watch killed with
//! SIGKILL again and again under churn leaves a database that passes `PRAGMA integrity_check`
//! and still holds every event recorded before.

mod common;
#[path = "support/docker_proxy.rs"]
mod docker_proxy;
#[path = "support/watch.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::nvml::{NvmlStub, StubGpu};
use common::{TEST_IMAGE, World, pool, stderr, stdout};
use docker_proxy::DockerProxy;
use fake_github::{Config, NewWorkflowRun, ScaleSetConfig};
use support::{WatchProcess, http_get, listening_scale_set, sample};

/// The database watch writes for the test's fleet (`STATE_DIRECTORY` is the test's directory).
fn database(w: &World) -> PathBuf {
    w.dir.path().join(format!("{}.db", w.run))
}

/// `fleet report --format json` over the last hour.
fn report(w: &World, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["report", "--since", "1h", "--format", "json"];
    args.extend_from_slice(extra);
    let out = w.fleet(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_str(&stdout(&out)).expect("report JSON")
}

fn figure(report: &serde_json::Value, section: &str, key: &str, subject: &str, name: &str) -> f64 {
    report[section]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r[key] == subject))
        .and_then(|r| r[name].as_f64())
        .unwrap_or_else(|| panic!("{section} {subject} has no {name}: {report:#}"))
}

/// Stops watch the hard way after its writer had time to commit (it commits every 0.25 s).
fn stop(watch: WatchProcess) {
    std::thread::sleep(Duration::from_millis(1200));
    drop(watch);
}

#[test]
fn job_waits_and_durations_of_an_autoscaled_pool_are_what_the_jobs_did() {
    let w = World::with_fake(Config {
        scaleset: ScaleSetConfig {
            long_poll: Duration::from_millis(300),
            session_timeout: Duration::from_secs(3),
            ..ScaleSetConfig::default()
        },
        ..Config::default()
    });
    w.spec(&format!(
        "  auto:\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    autoscale: {{ min_idle: 0, max: 2 }}\n"
    ));
    let watch = WatchProcess::start(&w, &["--resync", "2s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    let queued = Instant::now();
    w.fake.queue_jobs_for_scale_set(id, 2).expect("queue");
    let prefix = format!("{}-auto-", w.run);
    let mut runners = Vec::new();
    watch.eventually(
        Duration::from_secs(60),
        "two runners, two jobs assigned",
        || {
            runners = w.container_names("auto");
            runners.len() == 2
                && w.fake
                    .scale_set_statistics(id)
                    .is_some_and(|s| s.total_assigned_jobs == 2)
        },
    );
    // The jobs wait 2 s more for their runners.
    std::thread::sleep(Duration::from_secs(2));
    for runner in &runners {
        assert!(runner.starts_with(&prefix));
        w.fake.start_job(id, runner).expect("start");
    }
    let waited = queued.elapsed().as_secs_f64();
    // Each job runs 3 s (the fake's times are whole seconds: +-1 s).
    std::thread::sleep(Duration::from_secs(3));
    for runner in &runners {
        w.fake
            .complete_job(id, runner, "succeeded")
            .expect("complete");
        common::docker_ok(&["stop", "-t", "0", runner]);
    }
    watch.eventually(Duration::from_secs(60), "no runner left", || {
        w.owned_containers().is_empty()
    });
    let metrics = watch.metrics();
    assert_eq!(
        sample(
            &metrics,
            "fleet_job_queue_seconds_count",
            &[("pool", "auto")]
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "fleet_history_errors_total", &[]),
        Some(0.0),
        "{metrics}"
    );
    stop(watch);

    let report = report(&w, &[]);
    assert_eq!(report["format_version"], "1");
    assert_eq!(figure(&report, "pools", "pool", "auto", "jobs"), 2.0);
    let duration = figure(&report, "pools", "pool", "auto", "job_duration_p50_seconds");
    assert!((2.0..=4.0).contains(&duration), "job duration {duration}");
    // The wait is from the queue time to the runner taking the job: at most what the test
    // measured (+1 s for the fake's whole seconds), and the runners took some time to start.
    let wait = figure(&report, "pools", "pool", "auto", "queue_wait_p95_seconds");
    assert!(
        (2.0 - 1.0..=waited + 1.0).contains(&wait),
        "queue wait {wait}, measured {waited}"
    );
    let repo = &report["top_repositories"][0];
    assert_eq!(repo["name"], format!("acme/{}", w.run));
    assert_eq!(repo["jobs"], 2);
    // Both runners ended after their jobs (fleet removes a leaving runner, or it exits 137
    // after `docker stop`): two ends, none of them counted as fleet's removal.
    let exits = &report["pools"][0]["exits"];
    assert_eq!(exits["removed"], 0, "{report:#}");
    let ends = exits["job_done"].as_u64().unwrap() + exits["crash"].as_u64().unwrap();
    assert_eq!(ends, 2, "{report:#}");
    // Wanted runner-time is the plan's: 2 runners while the jobs ran.
    let wanted = figure(&report, "pools", "pool", "auto", "wanted_runner_hours") * 3600.0;
    assert!(wanted >= 2.0 * 3.0, "wanted {wanted}s");
}

#[test]
fn runner_time_gpu_hours_and_a_killed_runner_are_what_happened() {
    let w = World::new();
    let busy = StubGpu {
        utilization_percent: 80,
        ..StubGpu::numbered(0)
    };
    // Nothing left on it when its runner is killed: a GPU with a process or memory held and no
    // runner is dirty (docs/gpu-health.md), and the replacement would not be placed there.
    let idle = StubGpu {
        utilization_percent: 0,
        ..StubGpu::idle(1)
    };
    let stub = NvmlStub::new(w.dir.path(), &[busy.clone(), idle.clone()]);
    let spec = w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 2, true)));
    let names = w.gpu_runners(&stub, &spec, 2);
    // One runner online and busy, the other online and idle.
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &names[0], true, true)
    );
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &names[1], true, false)
    );
    let watch = WatchProcess::start(
        &w,
        &["--resync", "1s", "--history-gpu-every", "1s"],
        &stub.env(),
    );
    watch.eventually(Duration::from_secs(60), "one busy runner", || {
        sample(
            &watch.metrics(),
            "fleet_runners",
            &[("pool", "gpu"), ("state", "busy")],
        ) == Some(1.0)
    });
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let observed = started.elapsed().as_secs_f64();
    // The idle runner is killed (exit 137, a crash); watch replaces it.
    common::docker_ok(&["kill", &names[1]]);
    watch.eventually(Duration::from_secs(60), "the replacement", || {
        w.container_names("gpu").len() == 2 && !w.container_names("gpu").contains(&names[1])
    });
    stop(watch);

    let report = report(&w, &[]);
    let uptime = figure(&report, "pools", "pool", "gpu", "runner_uptime");
    let busy_fraction = figure(&report, "pools", "pool", "gpu", "busy_fraction");
    // Both runners were online the whole 8 s window; the replacement (never online on the
    // fake) for about a second before the test stopped watch.
    assert!(uptime > 0.6, "uptime {uptime}: {report:#}");
    assert!(
        (0.35..=0.65).contains(&busy_fraction),
        "busy {busy_fraction}"
    );
    let online = figure(&report, "pools", "pool", "gpu", "online_runner_hours") * 3600.0;
    assert!(
        online >= 2.0 * observed - 2.0,
        "online {online}s, observed 2 x {observed}s"
    );
    assert_eq!(report["pools"][0]["exits"]["crash"], 1, "{report:#}");

    let gpu = |uuid: &str, name: &str| {
        figure(&report, "gpus", "subject", &format!("local/{uuid}"), name) * 3600.0
    };
    // Sampled every second: held at least the 8 s the test watched (+-2 s of sampling).
    let held = gpu(&busy.uuid, "held_hours");
    assert!(held >= observed - 2.0, "held {held}s of {observed}s");
    assert!(
        (gpu(&busy.uuid, "busy_hours") - held).abs() < 1e-6,
        "80% is busy"
    );
    assert_eq!(
        figure(
            &report,
            "gpus",
            "subject",
            &format!("local/{}", busy.uuid),
            "mean_utilization_busy"
        ),
        80.0
    );
    assert_eq!(gpu(&idle.uuid, "busy_hours"), 0.0);
    assert!(gpu(&idle.uuid, "idle_held_hours") >= observed - 2.0);

    // The other formats say the same.
    let out = w.fleet(&[
        "report", "--since", "1h", "--format", "csv", "--pool", "gpu",
    ]);
    let csv = stdout(&out);
    assert!(csv.contains("\npool,gpu,exits_crash,1\n"), "{csv}");
    let out = w.fleet(&["report", "--since", "1h", "--format", "markdown"]);
    assert!(stdout(&out).contains("#### Pools"), "{}", stdout(&out));
}

#[test]
fn a_fixed_pool_runners_job_is_matched_through_the_workflow_runs_and_counted() {
    let w = World::new();
    let gpu = StubGpu {
        utilization_percent: 80,
        ..StubGpu::numbered(0)
    };
    let stub = NvmlStub::new(w.dir.path(), std::slice::from_ref(&gpu));
    let spec = w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 1, true)));
    let names = w.gpu_runners(&stub, &spec, 1);
    let runner = names[0].clone();
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &runner, true, false)
    );
    let watch = WatchProcess::start(
        &w,
        &["--resync", "1s", "--history-gpu-every", "1s"],
        &stub.env(),
    );
    let in_state = |state: &str| {
        sample(
            &watch.metrics(),
            "fleet_runners",
            &[("pool", "gpu"), ("state", state)],
        ) == Some(1.0)
    };
    watch.eventually(Duration::from_secs(60), "the runner idle", || {
        in_state("idle")
    });
    w.fake.clear_requests();
    let run = w.fake.start_workflow_run(
        &w.scope,
        &NewWorkflowRun {
            workflow: "GPU tests".into(),
            path: ".github/workflows/gpu.yml".into(),
            branch: "main".into(),
            jobs: vec![("train".into(), Some(runner.clone()))],
        },
    );
    let started = Instant::now();
    // The status document names the runner's job (`job`), for the status page.
    let status = || http_get(watch.metrics_port, "/api/v1/status").unwrap_or_default();
    watch.eventually(Duration::from_secs(30), "the job in the status", || {
        status().contains(&format!("\"run_id\":{}", run.run_id))
    });
    let doc: serde_json::Value = serde_json::from_str(&status()).expect("status JSON");
    let shown = doc["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["runners"].as_array().into_iter().flatten())
        .find(|r| r["name"] == runner.as_str())
        .map(|r| r["job"].clone())
        .unwrap_or_default();
    assert_eq!(shown["job_name"], "train", "{doc:#}");
    assert_eq!(shown["workflow"], "GPU tests");
    assert_eq!(shown["repository"], format!("acme/{}", w.run));
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    w.fake
        .complete_workflow_job(&w.scope, run.job_ids[0], "success")
        .expect("complete the job");
    let length = started.elapsed().as_secs_f64();
    watch.eventually(Duration::from_secs(30), "the runner idle again", || {
        in_state("idle")
    });
    stop(watch);
    // One runs list and the run's jobs found it; a handful of requests at most (the budget:
    // 4 a look-up, none while every busy runner's job is known).
    let reads = w
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/actions/runs"))
        .count();
    assert!((2..=4).contains(&reads), "{reads} reads of workflow runs");

    let report = report(&w, &[]);
    assert_eq!(
        figure(&report, "pools", "pool", "gpu", "jobs"),
        1.0,
        "{report:#}"
    );
    // From GitHub's start (whole seconds) to the first reconcile that saw the runner idle
    // (1 s resync): the job's length, 1 s under to 2.5 s over.
    let duration = figure(&report, "pools", "pool", "gpu", "job_duration_p50_seconds");
    assert!(
        (length - 1.0..=length + 2.5).contains(&duration),
        "job {duration}s, ran {length}s"
    );
    let repository = format!("acme/{}", w.run);
    let gpu_seconds = figure(
        &report,
        "top_repositories",
        "name",
        &repository,
        "gpu_hours",
    ) * 3600.0;
    // The GPU samples (every second) of its runner while the job ran: its length +-2.5 s.
    assert!(
        (gpu_seconds - length).abs() <= 2.5,
        "{gpu_seconds} GPU-seconds for a job of {length}s: {report:#}"
    );
    let workflow = format!("{repository}/.github/workflows/gpu.yml@refs/heads/main");
    assert_eq!(
        figure(&report, "top_workflows", "name", &workflow, "jobs"),
        1.0
    );
}

#[test]
fn a_host_outage_is_what_the_report_says_of_the_host_and_the_pool() {
    let w = World::new();
    let socket = w.dir.path().join("docker.sock");
    let mut proxy = DockerProxy::start(&w, &socket);
    w.spec_with(
        &pool("eph", 1, true),
        &format!("unix://{}", socket.display()),
        "none",
    );
    let watched = Instant::now();
    let watch = WatchProcess::start(&w, &["--resync", "1s", "--host-timeout", "3s"], &[]);
    let up = || sample(&watch.metrics(), "fleet_host_up", &[("host", "local")]);
    let mut runner = Vec::new();
    watch.eventually(Duration::from_secs(60), "1 runner", || {
        runner = w.container_names("eph");
        runner.len() == 1
    });
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &runner[0], true, false)
    );
    watch.eventually(
        Duration::from_secs(30),
        "the host up, the runner idle",
        || {
            up() == Some(1.0)
                && sample(
                    &watch.metrics(),
                    "fleet_runners",
                    &[("pool", "eph"), ("state", "idle")],
                ) == Some(1.0)
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    // The engine's endpoint is gone for a known span.
    proxy.stop();
    let outage_started = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let _proxy = DockerProxy::start(&w, &socket);
    let outage = outage_started.elapsed().as_secs_f64();
    watch.eventually(Duration::from_secs(30), "the host up again", || {
        up() == Some(1.0)
    });
    std::thread::sleep(Duration::from_secs(5));
    let total = watched.elapsed().as_secs_f64();
    stop(watch);

    let report = report(&w, &[]);
    let down = figure(&report, "hosts", "host", "local", "down_hours") * 3600.0;
    // Seen down from the first reconcile after the endpoint went (1 s resync, a 3 s host
    // timeout at most) to the first after its reconnection (backoff 0.5, 1, 2, 4 s: the
    // 4th retry, 7.5 s after the loss): 2 s under to 4 s over the outage.
    assert!(
        (outage - 2.0..=outage + 4.0).contains(&down),
        "down {down}s, outage {outage}s: {report:#}"
    );
    let up_fraction = figure(&report, "hosts", "host", "local", "up_fraction");
    let expected = 1.0 - outage / total;
    assert!(
        (up_fraction - expected).abs() <= 4.0 / total,
        "up {up_fraction}, expected {expected} ({outage}s of {total}s): {report:#}"
    );
    // The pool's runner is not online while its host is down: availability falls as much.
    let availability = figure(&report, "pools", "pool", "eph", "availability");
    assert!(
        availability <= 1.0 - (outage - 2.0) / total,
        "availability {availability}, outage {outage}s of {total}s: {report:#}"
    );
}

/// Every event row, as text, to compare what a database holds before and after a crash;
/// `None` while it cannot be read (not made yet).
fn events_of(path: &Path) -> Option<Vec<String>> {
    let conn = fleet::history::open_read_only(path).ok()?;
    let events = fleet::history::query::events(&conn, 0.0, f64::MAX).ok()?;
    Some(
        events
            .into_iter()
            .map(|e| format!("{} {} {:?} {}", e.ts, e.kind, e.runner, e.detail))
            .collect(),
    )
}

#[test]
fn sigkill_under_churn_never_corrupts_history_nor_loses_what_was_committed() {
    let w = World::new();
    w.spec(&pool("eph", 2, true));
    let path = database(&w);
    let mut before: Vec<String> = Vec::new();
    for round in 0..5u64 {
        let watch = WatchProcess::start(&w, &["--resync", "1s"], &[]);
        // Read while watch writes: it has recorded something of this run.
        watch.eventually(Duration::from_secs(60), "two runners, new events", || {
            w.container_names("eph").len() == 2
                && events_of(&path).is_some_and(|events| events.len() > before.len())
        });
        // Churn: a runner exits, watch replaces it while it is killed.
        let names = w.container_names("eph");
        // It may have exited already: churn either way.
        common::docker(&["kill", &names[0]]);
        std::thread::sleep(Duration::from_millis(100 + 250 * round));
        drop(watch); // SIGKILL
        let conn = fleet::history::open_read_only(&path).expect("open after SIGKILL");
        assert_eq!(
            fleet::history::query::integrity_check(&conn).expect("check"),
            "ok"
        );
        drop(conn);
        let now = events_of(&path).expect("events after SIGKILL");
        for event in &before {
            assert!(now.contains(event), "round {round}: lost {event}");
        }
        before = now;
    }
}
