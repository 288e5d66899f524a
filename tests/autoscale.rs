//! Autoscaled pools under `fleet watch`, against the fake GitHub's scale set service and the
//! real Docker engine: from zero to the jobs queued and back, GPUs shared with a fixed pool and
//! never held twice, and a restarted watch that loses no job.

mod common;
#[path = "support/watch.rs"]
mod support;

use std::time::Duration;

use common::{TEST_IMAGE, World, autoscaled, running};
use fake_github::{Config, ScaleSetConfig, ScaleSetEndpoint, ScaleSetFault};
use support::{WatchProcess, listening_scale_set};

fn world() -> World {
    World::with_quick_scale_sets(|_| {})
}

fn spec(w: &World, pools: &str, gpus: &str) -> std::path::PathBuf {
    let path = w.dir.path().join("fleet.yaml");
    let text = format!(
        "version: 1\nname: {run}\ngithub:\n  repo: acme/{run}\nhosts:\n  local:\n    docker: unix:///var/run/docker.sock\n    gpus: {gpus}\n    gpu_mode: env\npools:\n{pools}",
        run = w.run
    );
    std::fs::write(&path, text).expect("write spec");
    path
}

/// Each running runner of `pool` takes a job and finishes it: GitHub removes the ephemeral
/// registration and the container exits, as a real runner's would.
fn run_jobs(w: &World, scale_set: u64, pool: &str) -> usize {
    let mut done = 0;
    for runner in running(w, pool) {
        let started = w.fake.start_job(scale_set, &runner);
        if started.is_ok() {
            w.fake
                .complete_job(scale_set, &runner, "succeeded")
                .expect("complete");
            common::docker_ok(&["stop", "-t", "0", &runner]);
            done += 1;
        }
    }
    done
}

#[test]
fn a_pool_scales_from_zero_to_its_jobs_and_back() {
    let w = world();
    spec(&w, &autoscaled("auto", 0, 4), "none");
    // plan reads no scale set: it says apply decides, and plans nothing for min_idle 0.
    let out = w.fleet(&["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert!(
        common::stdout(&out).contains("when apply runs"),
        "{}",
        common::stdout(&out)
    );

    let watch = WatchProcess::start(&w, &["--resync", "5s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    let set = w
        .fake
        .scale_sets(Some(&w.scope))
        .into_iter()
        .find(|s| s.id == id)
        .expect("set");
    assert!(
        set.labels.contains(&format!("fleet.{}", w.run)),
        "owned: {:?}",
        set.labels
    );
    assert!(running(&w, "auto").is_empty(), "min_idle 0: no runner yet");

    w.fake.queue_jobs_for_scale_set(id, 3).expect("queue");
    // Runners start for jobs still being acquired; a runner takes a job once GitHub has
    // assigned it to the scale set, so both are waited for.
    watch.eventually(
        Duration::from_secs(60),
        "three runners and three assigned jobs",
        || {
            running(&w, "auto").len() == 3
                && w.fake
                    .scale_set_statistics(id)
                    .is_some_and(|s| s.total_assigned_jobs == 3)
        },
    );
    let jobs = run_jobs(&w, id, "auto");
    assert_eq!(jobs, 3, "each runner took one job");
    watch.eventually(Duration::from_secs(60), "no runner left", || {
        w.owned_containers().is_empty() && w.owned_runner_names().is_empty()
    });
    let metrics = watch.metrics();
    for name in [
        "gha_assigned_jobs",
        "gha_desired_runners",
        "gha_started_jobs_total",
        "gha_completed_jobs_total",
        "fleet_autoscale_jobs_waiting",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[test]
fn autoscaled_and_fixed_pools_share_gpus_and_github_is_told_the_capacity() {
    let w = world();
    let pools = format!(
        "  fixed:\n    count: 1\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    gpus: 1\n{}",
        autoscaled("auto", 1, 4)
    );
    spec(&w, &pools, "[GPU-aaaa-0001, GPU-aaaa-0002, GPU-aaaa-0003]");
    let watch = WatchProcess::start(&w, &["--resync", "5s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    w.fake.queue_jobs_for_scale_set(id, 4).expect("queue");
    watch.eventually(Duration::from_secs(60), "two autoscaled runners", || {
        running(&w, "auto").len() == 2
    });
    watch.eventually(Duration::from_secs(30), "capacity 2 on the poll", || {
        w.fake
            .scale_sets(Some(&w.scope))
            .iter()
            .any(|s| s.id == id && s.capacity == Some(2))
    });
    let stats = w.fake.scale_set_statistics(id).expect("statistics");
    assert_eq!(
        stats.total_assigned_jobs, 2,
        "GitHub assigned what fleet can run"
    );
    // Every GPU is held once.
    let mut held: Vec<String> = w
        .owned_containers()
        .into_iter()
        .flat_map(|(name, _)| {
            let labels = &w.inspect(&name)["Config"]["Labels"];
            labels["fleet.gpus"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    held.sort();
    let before = held.len();
    held.dedup();
    assert_eq!((before, held.len()), (3, 3), "{held:?}");
    watch.eventually(Duration::from_secs(30), "two jobs waiting for GPUs", || {
        support::sample(
            &watch.metrics(),
            "fleet_autoscale_jobs_waiting",
            &[("pool", "auto"), ("reason", "no_free_gpu")],
        ) == Some(2.0)
    });
    // The jobs end: GPUs free, the next two jobs get runners.
    run_jobs(&w, id, "auto");
    watch.eventually(Duration::from_secs(60), "the other two jobs run", || {
        w.fake
            .scale_set_statistics(id)
            .is_some_and(|s| s.total_assigned_jobs == 2 && s.total_available_jobs == 0)
            && running(&w, "auto").len() == 2
    });
}

#[test]
fn a_restarted_watch_loses_no_job_and_starts_no_extra_runner() {
    let w = world();
    spec(&w, &autoscaled("auto", 0, 5), "none");
    let watch = WatchProcess::start(&w, &["--resync", "5s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    drop(watch); // SIGKILL: its session stays open until it lapses
    w.fake.queue_jobs_for_scale_set(id, 2).expect("queue");
    let watch = WatchProcess::start(&w, &["--resync", "5s"], &[]);
    watch.eventually(
        Duration::from_secs(90),
        "two runners after the restart",
        || running(&w, "auto").len() == 2,
    );
    // Steady: a full reconcile later (a resync at the latest), still no third runner.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    watch.eventually(
        Duration::from_secs(30),
        "a reconcile after both runners ran",
        || {
            support::sample(
                &watch.metrics(),
                "fleet_last_reconcile_timestamp_seconds",
                &[],
            )
            .is_some_and(|at| at > now + 1.0)
                && w.fake
                    .scale_set_statistics(id)
                    .is_some_and(|s| s.total_assigned_jobs == 2)
        },
    );
    assert_eq!(running(&w, "auto").len(), 2, "{}", watch.log());
    assert_eq!(run_jobs(&w, id, "auto"), 2);
}

#[test]
fn apply_from_cron_keeps_the_scale_set_and_min_idle_runners() {
    let w = world();
    let pool = format!(
        "  auto:\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    labels: [gpu]\n    autoscale: {{ min_idle: 2, max: 5 }}\n"
    );
    spec(&w, &pool, "none");
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    assert!(text.contains("scale set"), "{text}");
    let sets = w.fake.scale_sets(Some(&w.scope));
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].name, format!("{}-auto", w.run));
    assert!(
        sets[0].labels.contains(&"gpu".to_string()),
        "{:?}",
        sets[0].labels
    );
    assert!(
        sets[0].disable_update,
        "runner_update: disabled, the default: the runners keep the image's runner"
    );
    assert_eq!(running(&w, "auto").len(), 2, "min_idle runners");
    let record = format!("{}-auto.scale-set", w.run);
    let label = common::docker_ok(&[
        "volume",
        "inspect",
        "--format",
        "{{index .Labels \"fleet.scale-set\"}}",
        &record,
    ]);
    assert_eq!(
        label,
        format!("{}-auto", w.run),
        "the scale set is recorded"
    );
    // Their registrations are the scale set's runners.
    assert_eq!(w.owned_runner_names().len(), 2);
    // `fleet status` shows the pool's scale set, by id, and what the pool wants.
    let status = w.fleet(&["status", "--format", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", common::stderr(&status));
    let status: serde_json::Value =
        serde_json::from_str(&common::stdout(&status)).expect("status JSON");
    let pool = &status["autoscale"][0];
    assert_eq!(pool["scale_set"], format!("{}-auto", w.run), "{status}");
    assert_eq!(pool["scale_set_id"], sets[0].id, "{status}");
    assert_eq!(
        (&pool["wanted"], &pool["min_idle"], &pool["max"]),
        (&2.into(), &2.into(), &5.into())
    );
    let text = common::stdout(&w.fleet(&["status"]));
    assert!(text.contains("autoscaled pools"), "{text}");
    assert!(text.contains(&format!("{}-auto", w.run)), "{text}");
    // Converged: a second apply changes nothing.
    let again = w.apply();
    assert!(
        common::stdout(&again).contains("No changes"),
        "{}",
        common::stdout(&again)
    );
    // The pool stops autoscaling: its scale set goes once its runners are gone.
    spec(&w, "  other:\n    count: 0\n    image: x:1\n", "none");
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stdout(&out));
    assert!(w.owned_containers().is_empty());
    assert!(w.fake.scale_sets(Some(&w.scope)).is_empty());
    assert!(
        !common::docker(&["volume", "inspect", &record])
            .status
            .success()
    );
}

#[test]
fn a_scale_set_fleet_did_not_make_is_an_error_never_adopted() {
    use fleet::github::{Credentials, GithubClient, RetryPolicy};
    use fleet::scaleset::{ClientConfig, ScaleSetClient, ScaleSetSpec, Scope};
    let w = world();
    spec(&w, &autoscaled("auto", 0, 2), "none");
    // Someone else made a scale set with the pool's name (no ownership label).
    let scope = Scope::Repo {
        owner: "acme".into(),
        repo: w.run.clone(),
    };
    let name = format!("{}-auto", w.run);
    w.rt.block_on(async {
        let tokens = GithubClient::new(
            &w.fake.url(),
            scope.clone(),
            Credentials::Token(w.fake.token()),
            RetryPolicy::default(),
        )
        .expect("token source");
        let client = ScaleSetClient::new(
            ClientConfig::new(&w.fake.url(), &scope),
            std::sync::Arc::new(tokens),
        )
        .expect("client");
        client
            .get_or_create_scale_set(&ScaleSetSpec::new(name.clone()))
            .await
            .expect("their scale set");
    });
    let out = w.apply();
    assert_eq!(out.status.code(), Some(1), "{}", common::stdout(&out));
    assert!(
        common::stderr(&out).contains("did not create"),
        "{}",
        common::stderr(&out)
    );
    let sets = w.fake.scale_sets(Some(&w.scope));
    assert_eq!(sets.len(), 1, "not deleted, not adopted: {sets:?}");
    assert!(!sets[0].labels.iter().any(|l| l.starts_with("fleet.")));
    assert!(w.owned_containers().is_empty());
}

#[test]
fn an_outage_of_the_scale_set_service_stops_only_the_autoscaled_pools() {
    let w = world();
    let pools = format!(
        "  fixed:\n    count: 1\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n{}",
        autoscaled("auto", 0, 2)
    );
    spec(&w, &pools, "none");
    let watch = WatchProcess::start(&w, &["--resync", "3s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    watch.eventually(Duration::from_secs(60), "the fixed runner", || {
        running(&w, "fixed").len() == 1
    });
    // The Actions service answers 503 to everything; GitHub's REST API still answers.
    w.fake.fail_next_scaleset(
        ScaleSetEndpoint::Any,
        ScaleSetFault::Status(503),
        usize::MAX,
    );
    let first = running(&w, "fixed").remove(0);
    common::docker_ok(&["stop", "-t", "0", &first]);
    watch.eventually(
        Duration::from_secs(60),
        "the fixed runner replaced during the outage",
        || {
            let now = running(&w, "fixed");
            now.len() == 1 && now[0] != first
        },
    );
    watch.eventually(Duration::from_secs(30), "the outage in the metrics", || {
        support::sample(&watch.metrics(), "fleet_scale_set_service_up", &[]) == Some(0.0)
    });
    let status = w.fleet(&["status"]);
    assert!(
        common::stdout(&status).contains("runner scale sets: cannot be read"),
        "{}",
        common::stdout(&status)
    );
    // The service answers again: the listener opens a session and serves a job, no restart.
    w.fake.clear_faults();
    w.fake.queue_jobs_for_scale_set(id, 1).expect("queue");
    watch.eventually(
        Duration::from_secs(90),
        "a runner for the job after the outage",
        || running(&w, "auto").len() == 1,
    );
    watch.eventually(Duration::from_secs(30), "the service up again", || {
        support::sample(&watch.metrics(), "fleet_scale_set_service_up", &[]) == Some(1.0)
    });
}

#[test]
fn a_stopped_watch_closes_its_sessions_and_a_restart_serves_a_job_at_once() {
    // Sessions lapse only after ten minutes here: a restart that waited for its old session
    // would not serve the job in time.
    let w = World::with_fake(Config {
        scaleset: ScaleSetConfig {
            long_poll: Duration::from_millis(300),
            session_timeout: Duration::from_secs(600),
            ..ScaleSetConfig::default()
        },
        ..Config::default()
    });
    spec(&w, &autoscaled("auto", 0, 2), "none");
    let mut watch = WatchProcess::start(&w, &["--resync", "30s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    let status = watch.terminate();
    assert!(status.success(), "{status}: {}", watch.log());
    let sessions: Vec<_> = w
        .fake
        .scale_sets(Some(&w.scope))
        .into_iter()
        .filter_map(|s| s.session)
        .collect();
    assert!(sessions.is_empty(), "{sessions:?}\n{}", watch.log());
    assert!(
        watch.log().contains("message session closed"),
        "{}",
        watch.log()
    );

    w.fake.queue_jobs_for_scale_set(id, 1).expect("queue");
    let watch = WatchProcess::start(&w, &["--resync", "30s"], &[]);
    watch.eventually(
        Duration::from_secs(5),
        "a runner for the job within 5 s of the restart",
        || running(&w, "auto").len() == 1,
    );
}

/// An autoscaled pool of `min_idle` runners made by apply, one of them running a job.
fn one_busy_runner(w: &World) -> (u64, String, String) {
    let pool = format!(
        "  auto:\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    autoscale: {{ min_idle: 2, max: 4 }}\n"
    );
    spec(w, &pool, "none");
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let sets = w.fake.scale_sets(Some(&w.scope));
    assert_eq!(sets.len(), 1, "{sets:?}");
    let mut runners = running(w, "auto");
    runners.sort();
    assert_eq!(runners.len(), 2);
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &runners[0], true, true)
    );
    (sets[0].id, runners[0].clone(), runners[1].clone())
}

#[test]
fn retiring_an_autoscaled_pool_with_a_busy_runner_waits_for_its_job() {
    let w = world();
    let (id, busy, idle) = one_busy_runner(&w);
    spec(&w, "  other:\n    count: 0\n    image: x:1\n", "none");
    let out = w.apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(text.contains("is deleted after the last job"), "{text}");
    assert!(w.fake.scale_sets(Some(&w.scope)).iter().any(|s| s.id == id));
    assert_eq!(
        running(&w, "auto"),
        std::slice::from_ref(&busy),
        "the idle runner went at once ({idle})"
    );
    // The job ends: the next apply deletes the scale set and its record.
    w.finish_job(&busy);
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stdout(&out));
    assert!(w.fake.scale_sets(Some(&w.scope)).is_empty());
    assert!(
        w.owned_containers().is_empty(),
        "{:?}",
        w.owned_containers()
    );
}

#[test]
fn destroy_waits_for_a_busy_scale_set_runner_before_deleting_its_scale_set() {
    let w = world();
    let (id, busy, _) = one_busy_runner(&w);
    let out = w.fleet(&["destroy", "--auto-approve"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert!(w.fake.scale_sets(Some(&w.scope)).iter().any(|s| s.id == id));
    assert_eq!(running(&w, "auto"), std::slice::from_ref(&busy));
    w.finish_job(&busy);
    let out = w.fleet(&["destroy", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stdout(&out));
    assert!(w.fake.scale_sets(Some(&w.scope)).is_empty());
}

#[test]
fn a_job_whose_acquisition_failed_is_acquired_when_its_message_comes_again() {
    let w = World::with_quick_scale_sets(|c| {
        c.delivery = fake_github::JobDelivery::Acquire;
        c.redelivery = Duration::from_secs(1);
    });
    spec(&w, &autoscaled("auto", 0, 2), "none");
    let watch = WatchProcess::start(&w, &["--resync", "5s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    w.fake
        .fail_next_scaleset(ScaleSetEndpoint::AcquireJobs, ScaleSetFault::Status(400), 1);
    w.fake.queue_jobs_for_scale_set(id, 1).expect("queue");
    watch.eventually(
        Duration::from_secs(60),
        "the job acquired and assigned after the failure, and its runner",
        || {
            w.fake
                .scale_set_statistics(id)
                .is_some_and(|s| s.total_assigned_jobs == 1)
                && running(&w, "auto").len() == 1
        },
    );
    assert!(
        watch.log().contains("cannot acquire offered jobs"),
        "{}",
        watch.log()
    );
}

#[test]
fn a_new_session_after_a_lost_one_numbers_its_messages_anew() {
    let w = World::with_quick_scale_sets(|c| c.message_ids_per_session = true);
    spec(&w, &autoscaled("auto", 0, 3), "none");
    let watch = WatchProcess::start(&w, &["--resync", "5s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    let session = || {
        w.fake
            .scale_sets(Some(&w.scope))
            .into_iter()
            .find(|s| s.id == id)
            .and_then(|s| s.session)
            .map(|(session, _)| session)
    };
    w.fake.queue_jobs_for_scale_set(id, 1).expect("queue");
    watch.eventually(Duration::from_secs(60), "one runner", || {
        running(&w, "auto").len() == 1
    });
    let first = session().expect("a session");
    // The service loses the session: the listener opens another, whose messages start at 1.
    w.fake
        .fail_next_scaleset(ScaleSetEndpoint::GetMessage, ScaleSetFault::Status(404), 1);
    watch.eventually(Duration::from_secs(60), "a new session", || {
        session().is_some_and(|s| s != first)
    });
    w.fake.queue_jobs_for_scale_set(id, 1).expect("queue");
    watch.eventually(
        Duration::from_secs(60),
        "a runner for the second job",
        || running(&w, "auto").len() == 2,
    );
}

#[test]
fn a_scale_set_name_that_differs_only_in_case_is_the_same_scale_set() {
    let w = world();
    let pool = |name: &str| {
        format!(
            "  auto:\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    autoscale: {{ min_idle: 1, max: 2, scale_set: {name} }}\n"
        )
    };
    let lower = format!("{}-auto", w.run);
    spec(&w, &pool(&lower), "none");
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let before = running(&w, "auto");
    assert_eq!(before.len(), 1);
    // The spec names the scale set in capitals, and the runner is gone: apply registers its
    // replacement in the scale set GitHub has, by the service's rule (case ignored).
    spec(&w, &pool(&lower.to_uppercase()), "none");
    w.finish_job(&before[0]);
    let out = w.apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert_eq!(w.fake.scale_sets(Some(&w.scope)).len(), 1);
    let now = running(&w, "auto");
    assert_eq!(now.len(), 1);
    assert_ne!(now, before);
    let status = w.fleet(&["status", "--format", "json"]);
    let status: serde_json::Value =
        serde_json::from_str(&common::stdout(&status)).expect("status JSON");
    assert!(status["autoscale"][0]["scale_set_id"].is_u64(), "{status}");
}

#[test]
fn a_github_change_restarts_the_listeners_with_the_new_client() {
    let w = world();
    let path = spec(&w, &autoscaled("auto", 0, 2), "none");
    let watch = WatchProcess::start(&w, &["--resync", "3s"], &[]);
    let old = listening_scale_set(&w, &watch, "auto");
    // The fleet moves to another repository.
    let other = format!("{}-two", w.run);
    let text = std::fs::read_to_string(&path).expect("spec");
    let moved = text.replace(
        &format!("repo: acme/{}\n", w.run),
        &format!("repo: acme/{other}\n"),
    );
    assert_ne!(text, moved);
    std::fs::write(&path, moved).expect("write spec");
    let scope = fake_github::Scope::repo("acme", other);
    watch.eventually(
        Duration::from_secs(60),
        "a session on the new repository's scale set",
        || {
            w.fake
                .scale_sets(Some(&scope))
                .iter()
                .any(|s| s.session.is_some())
        },
    );
    watch.eventually(Duration::from_secs(30), "the old session closed", || {
        w.fake
            .scale_sets(Some(&w.scope))
            .iter()
            .all(|s| s.id != old || s.session.is_none())
    });
}

#[test]
fn a_service_that_drops_extra_labels_keeps_fleets_scale_set_by_its_record() {
    let w = World::with_quick_scale_sets(|c| c.drop_extra_labels = true);
    let pool = format!(
        "  auto:\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    labels: [gpu]\n    autoscale: {{ min_idle: 1, max: 2 }}\n"
    );
    spec(&w, &pool, "none");
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let sets = w.fake.scale_sets(Some(&w.scope));
    assert_eq!(sets.len(), 1);
    assert_eq!(
        sets[0].labels,
        [format!("{}-auto", w.run)],
        "labels dropped"
    );
    assert_eq!(running(&w, "auto").len(), 1);
    // The next apply knows the scale set by fleet's record of it: no error, nothing to do.
    let again = w.apply();
    assert_eq!(again.status.code(), Some(0), "{}", common::stderr(&again));
    assert!(
        common::stdout(&again).contains("No changes"),
        "{}",
        common::stdout(&again)
    );
    // Retired: fleet deletes what it proved its own.
    spec(&w, "  other:\n    count: 0\n    image: x:1\n", "none");
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stdout(&out));
    assert!(w.fake.scale_sets(Some(&w.scope)).is_empty());
}

#[test]
fn watch_deletes_a_retired_scale_set_after_its_busy_runners_job() {
    let w = world();
    let (id, busy, _) = one_busy_runner(&w);
    let watch = WatchProcess::start(&w, &["--resync", "2s"], &[]);
    spec(&w, "  other:\n    count: 0\n    image: x:1\n", "none");
    watch.eventually(Duration::from_secs(60), "the idle runner gone", || {
        running(&w, "auto") == std::slice::from_ref(&busy)
    });
    assert!(w.fake.scale_sets(Some(&w.scope)).iter().any(|s| s.id == id));
    w.finish_job(&busy);
    watch.eventually(Duration::from_secs(60), "the scale set deleted", || {
        w.fake.scale_sets(Some(&w.scope)).is_empty() && w.owned_containers().is_empty()
    });
}

#[test]
fn under_a_service_that_drops_extra_labels_apply_knows_its_scale_set_runners_registration() {
    let w = World::with_quick_scale_sets(|c| c.drop_extra_labels = true);
    let pool = format!(
        "  auto:\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    labels: [gpu]\n    autoscale: {{ min_idle: 1, max: 2 }}\n"
    );
    let path = spec(&w, &pool, "none");
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let runner = running(&w, "auto").pop().expect("an idle runner");
    let registered = |name: &str| w.fake.runners(&w.scope).iter().any(|r| r.name == name);
    assert!(registered(&runner));
    // The pool retires. The executor looks the runner's registration up itself (as for one
    // made after the observation): it lacks fleet's label, and the scale set's name, which
    // fleet's record proves, makes it fleet's.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .expect("spec")
            .replace(&pool, "  other:\n    count: 0\n    image: x:1\n"),
    )
    .expect("write spec");
    let spec = fleet::spec::load(&path).expect("spec");
    let (token, api) = (w.fake.token(), w.fake.url());
    let env = move |k: &str| match k {
        "GITHUB_TOKEN" => Some(token.clone()),
        "GITHUB_API_URL" => Some(api.clone()),
        _ => None,
    };
    let report = w.rt.block_on(async {
        let policy = fleet::github::RetryPolicy::default();
        let observers = fleet::observe::Observers::connect(&spec, w.dir.path(), &env, policy)
            .await
            .expect("connect");
        let observed = observers.observe(&spec).await.expect("observe");
        let mut plan = fleet::plan::plan(&spec, &observed).expect("plan");
        for change in &mut plan.changes {
            if let fleet::plan::Change::Runner(r) = change {
                r.runner_id = None;
            }
        }
        fleet::apply::Executor::new(&spec, &observers, &observed, 4)
            .apply(&plan, &fleet::apply::Quiet)
            .await
    });
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.outcome == fleet::apply::Outcome::Done),
        "{report:?}"
    );
    assert!(!registered(&runner), "its registration went with it");
    assert!(w.owned_containers().is_empty());
    // The scale set, empty now, goes with the next apply.
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert!(w.fake.scale_sets(Some(&w.scope)).is_empty());
}

#[test]
fn while_the_scale_set_service_is_known_down_reconciles_do_not_wait_for_it() {
    let w = world();
    let pools = format!(
        "  fixed:\n    count: 1\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n{}",
        autoscaled("auto", 0, 2)
    );
    spec(&w, &pools, "none");
    let watch = WatchProcess::start(&w, &["--resync", "1s"], &[]);
    let id = listening_scale_set(&w, &watch, "auto");
    w.fake.fail_next_scaleset(
        ScaleSetEndpoint::Any,
        ScaleSetFault::Status(503),
        usize::MAX,
    );
    let failed_reads = || {
        watch
            .log()
            .matches("cannot read the runner scale sets")
            .count()
    };
    watch.eventually(Duration::from_secs(60), "a failed read", || {
        failed_reads() >= 1
    });
    let first = failed_reads();
    // Each read retries for several seconds; reconciles every second meanwhile (and a fixed
    // runner replaced in between) ask the service no more.
    let fixed = running(&w, "fixed").remove(0);
    common::docker_ok(&["stop", "-t", "0", &fixed]);
    watch.eventually(Duration::from_secs(20), "the fixed runner replaced", || {
        let now = running(&w, "fixed");
        now.len() == 1 && now[0] != fixed
    });
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(failed_reads(), first, "{}", watch.log());
    // The service answers again: the listener's session says so, and the next reconcile
    // reads the scale sets at once (well within the 30 s recheck).
    w.fake.clear_faults();
    w.fake.queue_jobs_for_scale_set(id, 1).expect("queue");
    watch.eventually(Duration::from_secs(25), "the service up again", || {
        support::sample(&watch.metrics(), "fleet_scale_set_service_up", &[]) == Some(1.0)
    });
    watch.eventually(Duration::from_secs(60), "a runner for the job", || {
        running(&w, "auto").len() == 1
    });
}
