//! History without fleet around it: paths, file modes, migrations, the writer's spans and
//! batches, retention and downsampling, and the report's figures on known data.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::report::{self, ReportFormat, ReportOptions};
use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn the_default_path_follows_systemd_then_root_then_xdg() {
    let systemd = env_of(&[("STATE_DIRECTORY", "/var/lib/fleet:/other"), ("HOME", "/h")]);
    assert_eq!(
        default_path("zq", &systemd, false).unwrap(),
        Path::new("/var/lib/fleet/zq.db")
    );
    let plain = env_of(&[("HOME", "/home/ci")]);
    assert_eq!(
        default_path("zq", &plain, true).unwrap(),
        Path::new("/var/lib/fleet/zq.db")
    );
    assert_eq!(
        default_path("zq", &plain, false).unwrap(),
        Path::new("/home/ci/.local/state/fleet/zq.db")
    );
    let xdg = env_of(&[("XDG_STATE_HOME", "/x"), ("HOME", "/home/ci")]);
    assert_eq!(
        default_path("zq", &xdg, false).unwrap(),
        Path::new("/x/fleet/zq.db")
    );
    assert!(matches!(
        default_path("zq", &env_of(&[]), false),
        Err(HistoryError::NoPlace)
    ));
}

#[test]
fn a_new_database_is_private_in_wal_mode_at_the_latest_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/fleet/zq.db");
    let conn = open(&path, true).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::VERSION);
    // The WAL's files take the database's mode.
    conn.execute(
        "INSERT INTO events (ts, kind, source) VALUES (1, 'x', 'watch')",
        [],
    )
    .unwrap();
    assert_eq!(mode(&dir.path().join("state/fleet/zq.db-wal")), 0o600);
}

#[test]
fn apply_does_not_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    assert!(matches!(open(&path, false), Err(HistoryError::Missing(_))));
    assert!(!path.exists());
}

#[test]
fn a_database_of_the_previous_schema_is_migrated_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        schema::migrate_to(&mut conn, schema::VERSION - 1).unwrap();
        conn.execute(
            "INSERT INTO jobs (job_id, pool, runner, queued, started, finished, result)
             VALUES ('j1', 'gpu', 'zq-gpu-a', 100, 110, 170, 'succeeded')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO gpu_samples (ts, host, uuid, runner, pool, utilization)
             VALUES (120, 'local', 'GPU-1', 'zq-gpu-a', 'gpu', 90)",
            [],
        )
        .unwrap();
    }
    assert!(matches!(
        open_read_only(&path),
        Err(HistoryError::OlderSchema { .. })
    ));
    let conn = open(&path, true).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::VERSION);
    let jobs = query::jobs(&conn, 0.0, 1000.0).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].finished, Some(170.0));
    let source: String = conn
        .query_row("SELECT source FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(source, "scaleset");
    let samples = query::gpu_samples(&conn, 0.0, 1000.0).unwrap();
    assert_eq!(samples[0].seconds, 10.0);
}

#[test]
fn a_database_of_a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema::VERSION + 1)
            .unwrap();
    }
    assert!(matches!(
        open(&path, true),
        Err(HistoryError::NewerSchema { .. })
    ));
    // The recorder is off and the error counted: watch goes on.
    let errors = Counter::default();
    let recorder = Recorder::start(&path, WriterOptions::default(), errors.clone());
    assert!(!recorder.is_on());
    assert_eq!(errors.get(), 1);
    recorder.send(Event::Reconcile {
        at: 1.0,
        trigger: "start".into(),
        result: "ok".into(),
        seconds: 0.1,
    });
}

#[test]
fn an_unwritable_place_is_counted_and_recording_stays_off() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let errors = Counter::default();
    let recorder = Recorder::start(
        &file.join("zq.db"),
        WriterOptions::default(),
        errors.clone(),
    );
    assert!(!recorder.is_on());
    assert_eq!(errors.get(), 1);
}

fn entry(key: &str, pool: &str, value: &str) -> SpanEntry {
    SpanEntry {
        key: key.into(),
        pool: Some(pool.into()),
        host: Some("local".into()),
        value: value.into(),
    }
}

fn snapshot(at: f64, entries: Vec<SpanEntry>) -> Event {
    Event::Snapshot {
        at,
        kind: SpanKind::Runner,
        entries,
    }
}

#[test]
fn snapshots_become_spans_of_unchanged_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    let recorder = Recorder::start(&path, WriterOptions::default(), Counter::default());
    recorder.send(snapshot(100.0, vec![entry("a", "gpu", "idle")]));
    recorder.send(snapshot(110.0, vec![entry("a", "gpu", "idle")]));
    recorder.send(snapshot(
        120.0,
        vec![entry("a", "gpu", "busy"), entry("b", "gpu", "idle")],
    ));
    recorder.send(snapshot(130.0, vec![entry("b", "gpu", "idle")]));
    // A gap longer than watch could have seen: b's span ends at 130, a new one starts.
    recorder.send(snapshot(1000.0, vec![entry("b", "gpu", "idle")]));
    recorder.flush();
    recorder.close();
    let conn = open_read_only(&path).unwrap();
    let spans: Vec<(String, String, f64, f64)> = query::spans(&conn, "runner", 0.0, 2000.0)
        .unwrap()
        .into_iter()
        .map(|s| (s.key, s.value, s.start, s.end))
        .collect();
    assert_eq!(
        spans,
        vec![
            ("a".into(), "idle".into(), 100.0, 120.0),
            ("a".into(), "busy".into(), 120.0, 130.0),
            ("b".into(), "idle".into(), 120.0, 130.0),
            ("b".into(), "idle".into(), 1000.0, 1000.0),
        ]
    );
}

#[test]
fn a_restarted_writer_never_extends_the_spans_of_the_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    // Recent times: the writer applies retention when it starts.
    let base = now().floor() - 1000.0;
    for at in [base + 100.0, base + 200.0] {
        let recorder = Recorder::start(&path, WriterOptions::default(), Counter::default());
        recorder.send(snapshot(at, vec![entry("a", "gpu", "idle")]));
        recorder.send(snapshot(at + 10.0, vec![entry("a", "gpu", "idle")]));
        recorder.close();
    }
    let conn = open_read_only(&path).unwrap();
    let spans = query::spans(&conn, "runner", base, base + 1000.0).unwrap();
    let times: Vec<(f64, f64)> = spans
        .iter()
        .map(|s| (s.start - base, s.end - base))
        .collect();
    assert_eq!(times, vec![(100.0, 110.0), (200.0, 210.0)]);
}

#[test]
fn a_full_queue_drops_events_and_counts_them_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    let errors = Counter::default();
    let options = WriterOptions {
        queue: 1,
        batch_window: Duration::from_millis(500),
        ..WriterOptions::default()
    };
    let recorder = Recorder::start(&path, options, errors.clone());
    let started = std::time::Instant::now();
    for i in 0..1000 {
        recorder.send(Event::Docker {
            at: f64::from(i),
            container: "zq-gpu-a".into(),
            action: "die".into(),
        });
    }
    assert!(started.elapsed() < Duration::from_millis(400));
    assert!(errors.get() > 0);
    recorder.close();
}

fn gpu(at: f64, runner: Option<&str>, utilization: f64) -> Event {
    Event::Gpus {
        at,
        every: 10.0,
        samples: vec![GpuSample {
            host: "local".into(),
            uuid: "GPU-1".into(),
            runner: runner.map(str::to_string),
            pool: runner.map(|_| "gpu".to_string()),
            utilization: Some(utilization),
            memory_used: Some(1 << 30),
            memory_total: Some(8 << 30),
            temperature: Some(50.0),
            health: "ok".into(),
        }],
    }
}

#[test]
fn old_gpu_samples_become_five_minute_averages_and_history_past_retention_goes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    let mut conn = open(&path, true).unwrap();
    let mut events = Vec::new();
    // 60 samples of 10 s from 0 to 590: two 5-minute buckets, 30 at 100% then 30 at 0%.
    for i in 0..60 {
        let u = if i < 30 { 100.0 } else { 0.0 };
        events.push(gpu(1_000_000.0 + f64::from(i) * 10.0, Some("a"), u));
    }
    events.push(gpu(10.0, Some("a"), 50.0)); // past retention
    writer::write_now(&mut conn, &events).unwrap();
    writer::maintain(&mut conn, 100.0, 2_000_000.0, 300.0).unwrap();
    let rows = query::gpu_samples(&conn, 0.0, 3_000_000.0).unwrap();
    let summary: Vec<(f64, f64, f64)> = rows
        .iter()
        .map(|r| (r.ts, r.utilization.unwrap(), r.seconds))
        .collect();
    let expected = [
        (999_900.0, 100.0, 200.0),
        (1_000_200.0, 100.0 / 3.0, 300.0),
        (1_000_500.0, 0.0, 100.0),
    ];
    assert_eq!(summary.len(), 3, "{summary:?}");
    for (got, want) in summary.iter().zip(expected) {
        assert_eq!(got.0, want.0);
        assert!((got.1 - want.1).abs() < 1e-9, "{summary:?}");
        assert_eq!(got.2, want.2);
    }
    // GPU-seconds are kept: 600 s in all, 300 s of them at 100%.
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    assert_eq!(total, 600.0);
    let busy: f64 = rows
        .iter()
        .map(|r| r.utilization.unwrap() * r.seconds / 100.0)
        .sum();
    assert!((busy - 300.0).abs() < 1e-6, "{busy}");
    // Running it again changes nothing.
    writer::maintain(&mut conn, 100.0, 2_000_000.0, 300.0).unwrap();
    let again: f64 = query::gpu_samples(&conn, 0.0, 3_000_000.0)
        .unwrap()
        .iter()
        .map(|r| r.seconds)
        .sum();
    assert_eq!(again, 600.0);
}

/// A day of known history: pool `gpu` wants 2 runners for 1000 s; runner a is online all of
/// it (busy 400 s), runner b only its last 500 s; one job queued 30 s then ran 300 s on a;
/// a's GPU held all along, busy (90%) during the job.
fn known_history(conn: &mut rusqlite::Connection) {
    let mut events = Vec::new();
    for t in (0..=10).map(|i| 1000.0 + f64::from(i) * 100.0) {
        let a = if (1200.0..1600.0).contains(&t) {
            "busy"
        } else {
            "idle"
        };
        let mut runners = vec![entry("zq-gpu-a", "gpu", a)];
        if t >= 1500.0 {
            runners.push(entry("zq-gpu-b", "gpu", "idle"));
        } else {
            runners.push(entry("zq-gpu-b", "gpu", "offline"));
        }
        events.push(snapshot(t, runners));
        events.push(Event::Snapshot {
            at: t,
            kind: SpanKind::Pool,
            entries: vec![SpanEntry {
                key: "gpu".into(),
                pool: Some("gpu".into()),
                host: None,
                value: "2".into(),
            }],
        });
    }
    for i in 0..100 {
        let t = 1000.0 + f64::from(i) * 10.0;
        let u = if (1200.0..1500.0).contains(&t) {
            90.0
        } else {
            0.0
        };
        events.push(gpu(t, Some("zq-gpu-a"), u));
    }
    events.push(Event::Job(JobRecord {
        job_id: "j1".into(),
        pool: "gpu".into(),
        repository: Some("zq/app".into()),
        workflow_ref: Some("zq/app/.github/workflows/ci.yml@refs/heads/main".into()),
        job_name: Some("test".into()),
        run_id: Some(7),
        runner: Some("zq-gpu-a".into()),
        queued: Some(1170.0),
        assigned: Some(1180.0),
        started: Some(1200.0),
        finished: Some(1500.0),
        result: Some("succeeded".into()),
        ..JobRecord::default()
    }));
    events.push(Event::Exit {
        at: 1600.0,
        container_id: "c1".into(),
        runner: "zq-gpu-old".into(),
        pool: Some("gpu".into()),
        host: "local".into(),
        exit_code: Some(0),
    });
    events.push(Event::Docker {
        at: 1650.0,
        container: "zq-gpu-oom".into(),
        action: "oom".into(),
    });
    events.push(Event::Exit {
        at: 1651.0,
        container_id: "c2".into(),
        runner: "zq-gpu-oom".into(),
        pool: Some("gpu".into()),
        host: "local".into(),
        exit_code: Some(137),
    });
    writer::write_now(conn, &events).unwrap();
}

fn options() -> ReportOptions {
    ReportOptions {
        from: 0.0,
        to: 10_000.0,
        pool: None,
        host: None,
        busy_threshold: 10.0,
        top: 10,
    }
}

#[test]
fn the_report_counts_known_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    let mut conn = open(&path, true).unwrap();
    known_history(&mut conn);
    let report = report::build(&conn, &options()).unwrap();
    let pool = &report.pools[0];
    assert_eq!(pool.pool, "gpu");
    // Wanted 2 x 1000 s; online: a 1000 s + b 500 s.
    assert!((pool.wanted_runner_hours * 3600.0 - 2000.0).abs() < 1e-6);
    assert!((pool.online_runner_hours * 3600.0 - 1500.0).abs() < 1e-6);
    assert!((pool.availability.unwrap() - 0.75).abs() < 1e-9);
    // Containers ran 2000 s, 500 s of it b offline.
    assert!((pool.runner_uptime.unwrap() - 0.75).abs() < 1e-9);
    assert!((pool.busy_runner_hours * 3600.0 - 400.0).abs() < 1e-6);
    assert_eq!(pool.jobs, 1);
    assert_eq!(pool.queue_wait_p50_seconds, Some(30.0));
    assert_eq!(pool.job_duration_p95_seconds, Some(300.0));
    assert_eq!(pool.exits.job_done, 1);
    assert_eq!(pool.exits.oom, 1);
    assert_eq!(pool.exits.crash, 0);
    let g = &report.gpus[0];
    assert_eq!(g.subject, "local/GPU-1");
    assert!((g.held_hours * 3600.0 - 1000.0).abs() < 1e-6);
    assert!((g.busy_hours * 3600.0 - 300.0).abs() < 1e-6);
    assert!((g.idle_held_hours * 3600.0 - 700.0).abs() < 1e-6);
    assert_eq!(g.mean_utilization_busy, Some(90.0));
    let repo = &report.top_repositories[0];
    assert_eq!(repo.name, "zq/app");
    // The job's GPU time: samples from 1200 to 1500, both ends in, 10 s each.
    assert!((repo.gpu_hours * 3600.0 - 310.0).abs() < 1e-6, "{repo:?}");
    assert_eq!(report.history_from, Some(1000.0));
}

#[test]
fn the_report_renders_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    let mut conn = open(&path, true).unwrap();
    known_history(&mut conn);
    let report = report::build(&conn, &options()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&report::render(&report, ReportFormat::Json)).unwrap();
    assert_eq!(json["format_version"], "1");
    assert_eq!(json["pools"][0]["availability"], 0.75);
    let csv = report::render(&report, ReportFormat::Csv);
    assert!(csv.starts_with("section,subject,figure,value\n"));
    assert!(csv.contains("\npool,gpu,availability,0.7500\n"), "{csv}");
    let text = report::render(&report, ReportFormat::Text);
    // No `-0.0` for a host that was never down.
    assert!(!text.contains("-0.0"), "{text}");
    assert_eq!(json["hosts"][0]["down_hours"].as_f64(), Some(0.0));
    assert!(!json["hosts"][0]["down_hours"].to_string().starts_with('-'));
    assert!(
        text.contains("history exists from 1970-01-01T00:16:40Z"),
        "{text}"
    );
    assert!(
        text.contains(" gpu   local  0.6       0.4       75.0%"),
        "{text}"
    );
    let markdown = report::render(&report, ReportFormat::Markdown);
    assert!(markdown.contains("| POOL | HOSTS |"), "{markdown}");
    assert!(markdown.contains("| zq/app | 1 | 0.09 |"), "{markdown}");
}

#[test]
fn a_pool_filter_keeps_only_that_pool() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    let mut conn = open(&path, true).unwrap();
    known_history(&mut conn);
    let mut only = options();
    only.pool = Some("cpu".into());
    let report = report::build(&conn, &only).unwrap();
    assert!(report.pools.is_empty());
    assert!(report.gpus.is_empty());
}

#[test]
fn percentiles_are_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(report::percentile(&v, 0.5), Some(50.0));
    assert_eq!(report::percentile(&v, 0.95), Some(95.0));
    assert_eq!(report::percentile(&[], 0.5), None);
    assert_eq!(report::percentile(&[3.0], 0.95), Some(3.0));
}

#[test]
fn hourly_sums_and_the_samples_give_the_same_gpu_figures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zq.db");
    let mut conn = open(&path, true).unwrap();
    known_history(&mut conn);
    // A range that cuts an hour: 1500 s from the samples, the rest from the sums.
    for (from, to) in [(0.0, 10_000.0), (1500.0, 10_000.0), (0.0, 1500.0)] {
        let by_sums = report::build(
            &conn,
            &ReportOptions {
                from,
                to,
                ..options()
            },
        )
        .unwrap();
        let by_samples = report::build(
            &conn,
            &ReportOptions {
                from,
                to,
                busy_threshold: 10.000_001,
                ..options()
            },
        )
        .unwrap();
        assert_eq!(by_sums.gpus, by_samples.gpus, "{from}..{to}");
        assert_eq!(by_sums.gpu_pools, by_samples.gpu_pools, "{from}..{to}");
    }
    let late = report::build(
        &conn,
        &ReportOptions {
            from: 1500.0,
            ..options()
        },
    )
    .unwrap();
    // From 1500: samples 1500..1990, 50 of 10 s, none busy.
    assert!((late.gpus[0].held_hours * 3600.0 - 500.0).abs() < 1e-6);
    assert_eq!(late.gpus[0].busy_hours, 0.0);
}

#[test]
fn each_removed_runner_carries_the_cause_the_plan_gave() {
    use crate::apply::{Outcome, StepReport};
    use crate::plan::{Action, Change, Plan, Reason, RunnerChange, RunnerOp};
    let change = |name: &str, reasons: Vec<Reason>| {
        Change::Runner(RunnerChange::new(
            RunnerOp::Destroy,
            "gpu",
            "local",
            name,
            reasons,
        ))
    };
    let plan = Plan {
        fleet: "zq".into(),
        changes: vec![
            change("zq-gpu-a", vec![Reason::Exited { code: Some(1) }]),
            change("zq-gpu-b", vec![Reason::Unregistered]),
            change(
                "zq-gpu-c",
                vec![Reason::GpuGone {
                    uuid: "GPU-1".into(),
                    host: "local".into(),
                    lost: true,
                }],
            ),
            change(
                "zq-gpu-d",
                vec![Reason::PoolOver {
                    total: 3,
                    wanted: 2,
                }],
            ),
        ],
        deferred: vec![],
        warnings: vec![],
        autoscale: vec![],
        backoff: vec![],
        spec_hash: String::new(),
        observed_fingerprint: String::new(),
    };
    let context = record::ActionContext::new(&plan, Source::Watch);
    let step = |name: &str, action: Action| StepReport {
        action,
        name: name.into(),
        outcome: Outcome::Done,
        elapsed: Duration::from_millis(10),
        runner: None,
    };
    let causes: Vec<String> = ["zq-gpu-a", "zq-gpu-b", "zq-gpu-c", "zq-gpu-d"]
        .iter()
        .map(|n| match context.event(&step(n, Action::Destroy)) {
            Some(Event::Action {
                cause, pool, host, ..
            }) => {
                assert_eq!(
                    (pool.as_deref(), host.as_deref()),
                    (Some("gpu"), Some("local"))
                );
                cause
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(causes, ["exited", "job_done", "gpu_fault", "removed"]);
    // A change that waits for a busy runner is planned again each reconcile: not recorded.
    assert!(context.event(&step("zq-gpu-a", Action::Defer)).is_none());
}
