//! Persistent runners under `fleet watch`: a removed container comes back under its name, and a
//! minute of churn (ephemeral runners finishing jobs, persistent containers removed, bursts of
//! GitHub errors, the daemon killed with SIGKILL and started again) ends with every runner
//! registered once, persistent ones under their first registration, and no volume leaked.
//!
//! The runners' own part is played here, as `config.sh` and the runner would: a persistent
//! container started with `FLEET_REGISTRATION=register` and a token not used yet registers
//! itself; a runner is online while its container runs.

mod common;
// Its metrics helpers are not used here.
#[allow(dead_code)]
#[path = "support/watch.rs"]
mod watch_process;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{World, docker, docker_ok, pool, stdout};
use fake_github::{Fault, RunnerConfiguration};
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use watch_process::WatchProcess;

/// How long the churn lasts.
const CHURN: Duration = Duration::from_secs(60);
/// How long the fleet may take to settle once the churn stops (a loaded 2-core machine).
const SETTLE: Duration = Duration::from_secs(90);

/// `docker inspect` of a container that may be gone by now.
fn inspect(name: &str) -> Option<serde_json::Value> {
    let out = docker(&["inspect", name]);
    if !out.status.success() {
        return None;
    }
    let mut all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    (!all.is_empty()).then(|| all.remove(0))
}

fn env_value(container: &serde_json::Value, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    container["Config"]["Env"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|e| e.strip_prefix(&prefix).map(str::to_string))
}

/// The runners' side of the world: registrations made by config.sh, and who is online.
struct Runners<'w> {
    w: &'w World,
    /// The id each persistent runner got when it first registered.
    first_ids: BTreeMap<String, u64>,
    used_tokens: BTreeSet<String>,
    /// Tokens fleet handed to a persistent runner that GitHub knew already.
    needless_tokens: Vec<String>,
}

impl<'w> Runners<'w> {
    fn new(w: &'w World) -> Runners<'w> {
        Runners {
            w,
            first_ids: BTreeMap::new(),
            used_tokens: BTreeSet::new(),
            needless_tokens: Vec::new(),
        }
    }

    fn persistent_prefix(&self) -> String {
        format!("{}-per-", self.w.run)
    }

    /// One look at the containers: register the persistent runners that must, and set every
    /// registration online exactly while its container runs.
    fn play(&mut self) {
        let running: BTreeSet<String> = self
            .w
            .owned_containers()
            .into_iter()
            .filter(|(_, state)| state == "running")
            .map(|(name, _)| name)
            .collect();
        let prefix = self.persistent_prefix();
        for name in running.iter().filter(|n| n.starts_with(&prefix)) {
            if let Some(container) = inspect(name) {
                self.config_sh(name, &container);
            }
        }
        for runner in self.w.fake.runners(&self.w.scope) {
            let online = running.contains(&runner.name);
            if (runner.status == "online") != online {
                self.w
                    .fake
                    .set_runner_state(&self.w.scope, runner.id, online, runner.busy);
            }
        }
    }

    /// What the entrypoint does with `FLEET_REGISTRATION=register` and a token it has not
    /// used yet: `config.sh --unattended --replace`.
    fn config_sh(&mut self, name: &str, container: &serde_json::Value) {
        if env_value(container, "FLEET_REGISTRATION").as_deref() != Some("register") {
            return;
        }
        let env: Vec<String> = container["Config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let secret = common::secret_inputs(&["exec", name], &env);
        let token = secret
            .iter()
            .chain(&env)
            .find_map(|e| e.strip_prefix("ACTIONS_RUNNER_INPUT_TOKEN="))
            .map(str::to_string);
        let Some(token) = token else {
            return;
        };
        if !self.used_tokens.insert(token.clone()) {
            return;
        }
        if self.w.runner_id(name).is_some() {
            self.needless_tokens.push(format!(
                "{name} ({})",
                container["Id"].as_str().unwrap_or_default()
            ));
        }
        let labels = env_value(container, "ACTIONS_RUNNER_INPUT_LABELS").unwrap_or_default();
        let config = RunnerConfiguration {
            token,
            name: name.to_string(),
            labels: labels.split(',').map(str::to_string).collect(),
            runner_group: None,
            replace: true,
        };
        let runner = match self.w.fake.configure_runner(&config) {
            Ok(runner) => runner,
            Err(e) => panic!("config.sh of {name} failed: {e}"),
        };
        self.first_ids.entry(name.to_string()).or_insert(runner.id);
    }
}

/// `fleet watch`, killed with SIGKILL and started again; the logs of every run are kept.
struct Daemon<'w> {
    w: &'w World,
    process: Option<WatchProcess>,
    earlier_logs: String,
    kills: usize,
}

impl<'w> Daemon<'w> {
    fn start(w: &'w World) -> Daemon<'w> {
        let mut daemon = Daemon {
            w,
            process: None,
            earlier_logs: String::new(),
            kills: 0,
        };
        daemon.ensure_running();
        daemon
    }

    fn ensure_running(&mut self) {
        if self.process.is_none() {
            self.process = Some(WatchProcess::start(self.w, &["--resync", "2s"], &[]));
        }
    }

    /// SIGKILL (dropping the process kills it).
    fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            let log = process.log();
            drop(process);
            self.kills += 1;
            self.earlier_logs
                .push_str(&format!("--- watch run {} (killed) ---\n{log}", self.kills));
        }
    }

    fn logs(&self) -> String {
        let current = self.process.as_ref().map(|p| p.log()).unwrap_or_default();
        format!("{}--- current watch run ---\n{current}", self.earlier_logs)
    }
}

/// Everything that differs from the converged fleet; empty when converged.
fn differences(w: &World) -> Vec<String> {
    let mut problems = Vec::new();
    let containers = w.owned_containers();
    if let Some((name, state)) = containers.iter().find(|(_, s)| s != "running") {
        problems.push(format!("{name} is {state}"));
    }
    let names: Vec<String> = containers.into_iter().map(|(n, _)| n).collect();
    let registrations = w.owned_runner_names();
    if names != registrations {
        problems.push(format!(
            "containers {names:?} != registrations {registrations:?}"
        ));
    }
    let per = w.container_names("per");
    let wanted: Vec<String> = (0..2).map(|i| format!("{}-per-{i}", w.run)).collect();
    if per != wanted {
        problems.push(format!("persistent runners {per:?}"));
    }
    if w.container_names("eph").len() != 2 {
        problems.push(format!("ephemeral runners {:?}", w.container_names("eph")));
    }
    problems
}

/// A seed from `FLEET_CHURN_SEED`, or a fixed one: a failure can be replayed.
fn seed() -> u64 {
    std::env::var("FLEET_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_251_128)
}

fn rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&seed.wrapping_add(i as u64).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// One random disturbance; returns what it did.
fn disturb(w: &World, rng: &mut TestRng, daemon: &mut Daemon, burst_until: &mut Instant) -> String {
    match rng.random_range(0..4u32) {
        0 => {
            let eph: Vec<String> = w
                .owned_containers()
                .into_iter()
                .filter(|(n, s)| n.starts_with(&format!("{}-eph-", w.run)) && s == "running")
                .map(|(n, _)| n)
                .collect();
            let Some(name) = eph.get(rng.random_range(0..eph.len().max(1))) else {
                return "no ephemeral runner to finish a job".into();
            };
            if let Some(id) = w.runner_id(name) {
                w.fake.remove_runner(&w.scope, id);
            }
            let _ = docker(&["stop", "-t", "0", name]);
            format!("ephemeral {name} finished a job")
        }
        1 => {
            let name = format!("{}-per-{}", w.run, rng.random_range(0..2u32));
            let _ = docker(&["rm", "-f", &name]);
            format!("docker rm -f {name}")
        }
        2 => {
            w.fake.inject_fault_mix(vec![
                (
                    Fault::Status {
                        status: 502,
                        retry_after: None,
                    },
                    0.4,
                ),
                (
                    Fault::Status {
                        status: 429,
                        retry_after: Some(1),
                    },
                    0.1,
                ),
            ]);
            w.fake.fail_next(
                Fault::Status {
                    status: 500,
                    retry_after: None,
                },
                rng.random_range(1..6usize),
            );
            let secs = rng.random_range(2..6u64);
            *burst_until = Instant::now() + Duration::from_secs(secs);
            format!("GitHub errors for {secs} s")
        }
        _ => {
            daemon.kill();
            std::thread::sleep(Duration::from_millis(rng.random_range(0..1500u64)));
            daemon.ensure_running();
            "watch killed (SIGKILL) and started again".into()
        }
    }
}

#[test]
fn churn_under_watch_keeps_persistent_identities_and_leaks_nothing() {
    let w = World::new();
    let seed = seed();
    eprintln!("churn seed {seed} (FLEET_CHURN_SEED replays it)");
    let mut rng = rng(seed);
    w.spec(&format!(
        "{}{}",
        pool("eph", 2, true),
        pool("per", 2, false)
    ));
    let mut runners = Runners::new(&w);
    let mut daemon = Daemon::start(&w);
    let mut history: Vec<String> = Vec::new();
    let mut burst_until: Option<Instant> = None;

    let started = Instant::now();
    let mut next = started + Duration::from_secs(3);
    while started.elapsed() < CHURN {
        runners.play();
        if burst_until.is_some_and(|t| Instant::now() >= t) {
            w.fake.clear_faults();
            burst_until = None;
        }
        if Instant::now() >= next {
            let mut until = Instant::now();
            let what = disturb(&w, &mut rng, &mut daemon, &mut until);
            if until > Instant::now() {
                burst_until = Some(until);
            }
            history.push(format!("{:>5.1}s {what}", started.elapsed().as_secs_f64()));
            next = Instant::now() + Duration::from_millis(rng.random_range(700..2500u64));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    w.fake.clear_faults();
    daemon.ensure_running();
    let story = || format!("what happened:\n{}\n{}", history.join("\n"), daemon.logs());

    // Settle: the runners keep playing their part while watch converges.
    let settled = Instant::now();
    let mut left = vec!["not looked yet".to_string()];
    while settled.elapsed() < SETTLE {
        runners.play();
        left = differences(&w);
        if left.is_empty() {
            let plan = w.fleet(&["plan", "--detailed-exitcode"]);
            if plan.status.code() == Some(0) {
                break;
            }
            left = vec![format!("plan not empty:\n{}", stdout(&plan))];
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(left.is_empty(), "did not converge: {left:#?}\n{}", story());
    eprintln!(
        "converged {:.1}s after the churn; {} disturbances, {} watch kills:\n{}",
        settled.elapsed().as_secs_f64(),
        history.len(),
        daemon.kills,
        history.join("\n")
    );

    // Persistent runners: the names, the first registrations, no token they did not need.
    let per: Vec<String> = (0..2).map(|i| format!("{}-per-{i}", w.run)).collect();
    for name in &per {
        let first = runners.first_ids.get(name).copied();
        assert!(first.is_some(), "{name} never registered\n{}", story());
        assert_eq!(
            w.runner_id(name),
            first,
            "{name} lost its first registration\n{}",
            story()
        );
    }
    assert!(
        runners.needless_tokens.is_empty(),
        "fleet gave a registration token to runners GitHub knew: {:?}\n{}",
        runners.needless_tokens,
        story()
    );
    let states: Vec<String> = per.iter().map(|n| format!("{n}-state")).collect();
    assert_eq!(w.owned_volumes(), states, "{}", story());
    drop(daemon);

    // Nothing left after destroy.
    let out = w.fleet(&["destroy", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(w.owned_containers().is_empty());
    assert!(w.owned_runner_names().is_empty());
    assert!(w.owned_volumes().is_empty());
}

/// Waits until `check` gives a value, at most `limit`; fails with the watch log.
fn wait_for<T>(
    watch: &WatchProcess,
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(value) = check() {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}; watch log:\n{}", watch.log());
}

fn running_id(name: &str) -> Option<String> {
    let container = inspect(name)?;
    (container["State"]["Status"] == "running")
        .then(|| container["Id"].as_str().map(str::to_string))
        .flatten()
}

#[test]
fn watch_heals_a_removed_persistent_container_under_its_name() {
    let w = World::new();
    w.spec(&format!(
        "{}{}",
        pool("eph", 1, true),
        pool("per", 1, false)
    ));
    // A long resync: only the container's events can bring it back quickly.
    let watch = WatchProcess::start(&w, &["--resync", "300s"], &[]);
    let limit = Duration::from_secs(60);
    let per = format!("{}-per-0", w.run);
    wait_for(&watch, limit, "the runners", || {
        let eph = w.container_names("eph");
        (eph.len() == 1 && running_id(&per).is_some()).then_some(())
    });
    let id = w.config_sh(&per).expect("registered");

    let mut timings = Vec::new();
    for round in 0..3 {
        let eph = w.container_names("eph")[0].clone();
        let removed = Instant::now();
        docker_ok(&["rm", "-f", &eph]);
        wait_for(&watch, limit, "a new ephemeral runner", || {
            let now = w.container_names("eph");
            (now.len() == 1 && now[0] != eph && running_id(&now[0]).is_some()).then_some(())
        });
        let eph_took = removed.elapsed();

        let old = running_id(&per).expect("running");
        let removed = Instant::now();
        docker_ok(&["rm", "-f", &per]);
        let new = wait_for(&watch, limit, "the persistent runner back", || {
            running_id(&per).filter(|new| *new != old)
        });
        let per_took = removed.elapsed();
        assert_ne!(new, old);
        assert_eq!(
            w.runner_id(&per),
            Some(id),
            "round {round}: same registration"
        );
        assert_eq!(
            w.env_value(&per, "FLEET_REGISTRATION").as_deref(),
            Some("restore")
        );
        assert_eq!(
            w.state_mount(&per).as_deref(),
            Some(format!("{per}-state").as_str())
        );
        timings.push((eph_took, per_took));
    }
    assert_eq!(w.fake.registration_tokens_issued(), 1);
    for (round, (eph, per)) in timings.iter().enumerate() {
        eprintln!(
            "round {round}: ephemeral back after {:.2}s, persistent after {:.2}s",
            eph.as_secs_f64(),
            per.as_secs_f64()
        );
    }
}
