//! Pools across several hosts: placement of new runners, scale-down, persistent runners bound
//! to the host of their state volume, hosts that were not observed; and properties over random
//! worlds of two or three hosts (docs/hosts.md, "Pools on several hosts").

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::tests::{apply_to, gpu_host, plan, runner_container, spec};
use super::{Action, PlanError};
use crate::contract::{RunnerConfig, labels, naming, ownership_label};
use crate::observe::state::{ContainerState, ContainerStatus, GithubRunner, Observed, VolumeState};
use crate::spec::{GpuRequest, Spec};

/// GPU UUIDs of a host: `GPU-<host>-<i>`.
fn uuids(host: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("GPU-{host}-{i}")).collect()
}

/// A spec with `hosts` (name, GPUs; `gpu_mode` when given) and `pools` (YAML, indented).
fn hosts_spec(hosts: &[(&str, usize)], pools: &str) -> Spec {
    let mut yaml = "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n".to_string();
    for (name, gpus) in hosts {
        let list = match gpus {
            0 => "none".to_string(),
            n => format!("[{}]", uuids(name, *n).join(", ")),
        };
        yaml.push_str(&format!("  {name}:\n    gpus: {list}\n"));
    }
    spec(&format!("{yaml}pools:\n{pools}"))
}

/// An observation of `hosts` with nothing on them.
fn world_of(hosts: &[(&str, usize)]) -> Observed {
    let mut world = Observed::default();
    for (name, gpus) in hosts {
        world
            .hosts
            .insert(name.to_string(), gpu_host(uuids(name, *gpus)));
    }
    world
}

/// A running container of `pool` on `host`, as fleet makes it, and its idle registration.
fn add_runner_on(world: &mut Observed, spec: &Spec, pool: &str, host: &str, name: &str) {
    let cfg = RunnerConfig::for_pool(&spec.name, &super::tests::pool(spec, pool));
    let created = world
        .hosts
        .values()
        .map(|h| h.containers.len() as i64)
        .sum::<i64>();
    let state = world.hosts.get_mut(host).expect("host");
    state
        .containers
        .push(runner_container(spec, pool, name, &[], 1000 + created));
    state.containers.sort_by(|a, b| a.name.cmp(&b.name));
    register(world, name, &cfg.labels);
}

fn register(world: &mut Observed, name: &str, labels: &[String]) {
    let id = world.github.runners.len() as u64 + 1;
    world.github.runners.push(GithubRunner {
        id,
        name: name.to_string(),
        labels: labels.to_vec(),
        ..GithubRunner::default()
    });
}

fn add_state_volume(world: &mut Observed, host: &str, pool: &str, runner: &str) {
    let state = world.hosts.get_mut(host).expect("host");
    state.volumes.push(VolumeState {
        name: naming::state_volume(runner),
        owned: true,
        pool: Some(pool.into()),
        runner: Some(runner.into()),
        scale_set: None,
        quarantine: None,
    });
    state.volumes.sort_by(|a, b| a.name.cmp(&b.name));
}

/// `(action, host)` of each change, in the order the planner made them (the document sorts
/// them by host).
fn hosts_of(spec: &Spec, world: &Observed) -> Vec<(Action, String)> {
    super::plan(spec, world)
        .expect("plan")
        .changes
        .iter()
        .map(|c| match c {
            super::Change::Runner(r) => (c.action(), r.host.clone()),
            super::Change::Volume(v) => (c.action(), v.host.clone()),
            super::Change::Registration(r) => {
                (c.action(), r.host.clone().unwrap_or("github".into()))
            }
            super::Change::ScaleSet(_) => (c.action(), "github".into()),
        })
        .collect()
}

/// Owned containers per host after `world`.
fn runners_per_host(world: &Observed) -> BTreeMap<String, usize> {
    world
        .hosts
        .iter()
        .map(|(h, s)| (h.clone(), s.containers.len()))
        .collect()
}

fn create(host: &str) -> (Action, String) {
    (Action::Create, host.to_string())
}

#[test]
fn new_runners_go_to_the_host_with_the_fewest_and_ties_to_the_first_listed() {
    let hosts = [("a", 0), ("b", 0)];
    let spec = hosts_spec(&hosts, "  cpu: { count: 3, image: r:1, host: [a, b] }\n");
    let world = world_of(&hosts);
    let first = plan(&spec, &world).expect("plan");
    assert_eq!(
        hosts_of(&spec, &world),
        [create("a"), create("b"), create("a")]
    );
    let after = apply_to(&spec, &world, &first);
    assert!(plan(&spec, &after).expect("plan").is_empty());

    // The list's order decides ties: [b, a] starts on b.
    let reversed = hosts_spec(&hosts, "  cpu: { count: 3, image: r:1, host: [b, a] }\n");
    assert_eq!(
        hosts_of(&reversed, &world),
        [create("b"), create("a"), create("b")]
    );
}

#[test]
fn runners_that_exist_stay_where_they_are() {
    let hosts = [("a", 0), ("b", 0)];
    let spec = hosts_spec(&hosts, "  cpu: { count: 3, image: r:1, host: [a, b] }\n");
    let mut world = world_of(&hosts);
    for name in ["zq-cpu-aaaaa1", "zq-cpu-aaaaa2", "zq-cpu-aaaaa3"] {
        add_runner_on(&mut world, &spec, "cpu", "a", name);
    }
    assert!(plan(&spec, &world).expect("plan").is_empty());
    // One more goes to the empty host.
    let four = hosts_spec(&hosts, "  cpu: { count: 4, image: r:1, host: [a, b] }\n");
    assert_eq!(hosts_of(&four, &world), [create("b")]);
}

#[test]
fn scaling_down_removes_idle_runners_from_the_fullest_host_first() {
    let hosts = [("a", 0), ("b", 0)];
    let spec = hosts_spec(&hosts, "  cpu: { count: 5, image: r:1, host: [a, b] }\n");
    let mut world = world_of(&hosts);
    for (host, name) in [
        ("a", "zq-cpu-aaaaa1"),
        ("a", "zq-cpu-aaaaa2"),
        ("a", "zq-cpu-aaaaa3"),
        ("b", "zq-cpu-bbbbb1"),
        ("b", "zq-cpu-bbbbb2"),
    ] {
        add_runner_on(&mut world, &spec, "cpu", host, name);
    }
    // 5 -> 3: a has 3, b 2: one from a, then a tie (2, 2) goes to b, the host listed last.
    let three = hosts_spec(&hosts, "  cpu: { count: 3, image: r:1, host: [a, b] }\n");
    let plan = plan(&three, &world).expect("plan");
    let destroyed: Vec<(String, String)> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Destroy)
        .map(|c| (c.host.clone(), c.name.clone()))
        .collect();
    // The newest of each host goes first.
    assert_eq!(
        destroyed,
        [
            ("a".to_string(), "zq-cpu-aaaaa3".to_string()),
            ("b".to_string(), "zq-cpu-bbbbb2".to_string())
        ]
    );
    let after = apply_to(&three, &world, &plan);
    assert_eq!(
        runners_per_host(&after),
        BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
    );
}

#[test]
fn gpu_runners_go_to_the_host_with_the_most_free_gpus() {
    let hosts = [("a", 1), ("b", 2)];
    let spec = hosts_spec(
        &hosts,
        "  gpu: { count: 3, image: r:1, gpus: 1, host: [a, b] }\n",
    );
    let world = world_of(&hosts);
    // b has 2 free; then a tie (1, 1) goes to a; then b.
    assert_eq!(
        hosts_of(&spec, &world),
        [create("b"), create("a"), create("b")]
    );
    let gpus: Vec<(String, Vec<String>)> = super::plan(&spec, &world)
        .expect("plan")
        .changes
        .iter()
        .filter_map(|c| match c {
            super::Change::Runner(r) => Some((r.host.clone(), r.gpus.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        gpus,
        [
            ("b".to_string(), vec!["GPU-b-0".to_string()]),
            ("a".to_string(), vec!["GPU-a-0".to_string()]),
            ("b".to_string(), vec!["GPU-b-1".to_string()]),
        ]
    );
}

#[test]
fn a_runners_gpus_come_from_one_host_and_a_shortage_names_every_host() {
    let hosts = [("a", 1), ("b", 2)];
    let spec = hosts_spec(
        &hosts,
        "  gpu: { count: 2, image: r:1, gpus: 2, host: [a, b] }\n",
    );
    let e: PlanError = plan(&spec, &world_of(&hosts)).expect_err("does not fit");
    assert_eq!(
        e.problems,
        [
            "pool `gpu` wants 2 GPU(s) per runner for 1 more new runner(s), and a runner's GPUs come from one host: after the plan's other new runners, host `a` has 1 of 1 free, host `b` has 0 of 2 free"
        ]
    );
}

#[test]
fn hosts_of_a_gpu_pool_must_hand_gpus_over_the_same_way() {
    let text = "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n  a: { gpus: [GPU-a-0] }\n  b: { gpus: [GPU-b-0], gpu_mode: cdi }\npools:\n  gpu: { count: 1, image: r:1, gpus: 1, host: [a, b] }\n";
    let e = plan(&spec(text), &world_of(&[("a", 1), ("b", 1)])).expect_err("mixed modes");
    assert_eq!(
        e.problems,
        [
            "pool `gpu` has GPUs and runs on hosts with different `gpu_mode`s (`a`: nvidia, `b`: cdi): give those hosts the same gpu_mode, or split the pool"
        ]
    );
}

const PERSISTENT: &str = "  per: { count: 3, image: r:1, ephemeral: false, host: [a, b] }\n";

#[test]
fn persistent_indexes_are_unique_across_hosts_and_a_lost_container_returns_to_its_volume() {
    let hosts = [("a", 0), ("b", 0)];
    let spec = hosts_spec(&hosts, PERSISTENT);
    let world = world_of(&hosts);
    let made: Vec<(String, String)> = super::plan(&spec, &world)
        .expect("plan")
        .changes
        .iter()
        .filter_map(|c| match c {
            super::Change::Runner(r) => Some((r.name.clone(), r.host.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        made,
        [
            ("zq-per-0".to_string(), "a".to_string()),
            ("zq-per-1".to_string(), "b".to_string()),
            ("zq-per-2".to_string(), "a".to_string()),
        ]
    );
    // zq-per-2's container is lost and its state volume is on b (an operator moved it): the
    // fewest-runners rule would pick a (a 1, b 1: the first listed), the volume says b.
    let mut world = world_of(&hosts);
    let labels = RunnerConfig::for_pool("zq", &spec.resolved_pools()[0]).labels;
    add_runner_on(&mut world, &spec, "per", "a", "zq-per-0");
    add_state_volume(&mut world, "a", "per", "zq-per-0");
    add_runner_on(&mut world, &spec, "per", "b", "zq-per-1");
    add_state_volume(&mut world, "b", "per", "zq-per-1");
    add_state_volume(&mut world, "b", "per", "zq-per-2");
    register(&mut world, "zq-per-2", &labels);
    assert_eq!(hosts_of(&spec, &world), [create("b")]);
    let plan = plan(&spec, &world).expect("plan");
    assert_eq!(plan.changes[0].name, "zq-per-2");
    assert_eq!(
        plan.changes[0].reasons,
        ["container missing; registration and state kept"]
    );
}

#[test]
fn a_new_persistent_index_skips_names_held_on_any_host() {
    let hosts = [("a", 0), ("b", 0)];
    let spec = hosts_spec(&hosts, PERSISTENT);
    let mut world = world_of(&hosts);
    add_runner_on(&mut world, &spec, "per", "b", "zq-per-0");
    add_state_volume(&mut world, "b", "per", "zq-per-0");
    add_runner_on(&mut world, &spec, "per", "b", "zq-per-1");
    add_state_volume(&mut world, "b", "per", "zq-per-1");
    let plan = plan(&spec, &world).expect("plan");
    let made: Vec<(&str, &str)> = plan
        .changes
        .iter()
        .map(|c| (c.name.as_str(), c.host.as_str()))
        .collect();
    assert_eq!(made, [("zq-per-2", "a")]);
}

/// A persistent pool of `count` on host `b`, whose runner `zq-per-0` (and its state volume)
/// is still on `a`, where the pool ran before; `busy` when it runs a job.
fn moved_pool(count: u32, runner: &str, busy: bool) -> (Spec, Observed) {
    let hosts = [("a", 0), ("b", 0)];
    let pools = format!("  per: {{ count: {count}, image: r:1, ephemeral: false, host: b }}\n");
    let spec = hosts_spec(&hosts, &pools);
    let mut world = world_of(&hosts);
    add_runner_on(&mut world, &spec, "per", "a", runner);
    add_state_volume(&mut world, "a", "per", runner);
    world.github.runners[0].busy = busy;
    world.github.runners[0].online = true;
    (spec, world)
}

#[test]
fn a_persistent_runner_whose_pool_moved_host_keeps_its_registration() {
    let (spec, world) = moved_pool(1, "zq-per-0", false);
    let plan = plan(&spec, &world).expect("plan");
    let made: Vec<(Action, &str, &str, bool)> = plan
        .changes
        .iter()
        .map(|c| {
            (
                c.action,
                c.host.as_str(),
                c.name.as_str(),
                c.registration_kept,
            )
        })
        .collect();
    assert_eq!(
        made,
        [
            (Action::Destroy, "a", "zq-per-0", true),
            (Action::Create, "b", "zq-per-0", false),
        ],
        "{plan:#?}"
    );
    assert_eq!(plan.changes[0].runner_id, Some(1));
    assert_eq!(plan.summary.deregister, 0);
}

#[test]
fn a_runner_past_the_moved_pools_count_loses_its_registration() {
    let (spec, world) = moved_pool(1, "zq-per-1", false);
    let plan = plan(&spec, &world).expect("plan");
    let gone = plan
        .changes
        .iter()
        .find(|c| c.name == "zq-per-1")
        .expect("the runner on a goes");
    assert_eq!(
        (gone.action, gone.registration_kept),
        (Action::Destroy, false)
    );
}

#[test]
fn a_busy_runner_whose_pool_moved_is_made_again_only_after_its_job() {
    let (spec, world) = moved_pool(1, "zq-per-0", true);
    let plan = plan(&spec, &world).expect("plan");
    let made: Vec<(Action, &str, bool)> = plan
        .changes
        .iter()
        .map(|c| (c.action, c.host.as_str(), c.registration_kept))
        .collect();
    assert_eq!(made, [(Action::Defer, "a", true)], "{plan:#?}");
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("zq-per-0") && w.contains("after its job")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn a_state_volume_fleet_did_not_make_is_never_used() {
    let hosts = [("a", 0), ("b", 0)];
    let spec = hosts_spec(
        &hosts,
        "  per: { count: 1, image: r:1, ephemeral: false, host: b }\n",
    );
    let mut world = world_of(&hosts);
    world
        .hosts
        .get_mut("b")
        .expect("b")
        .volumes
        .push(VolumeState {
            name: "zq-per-0-state".into(),
            owned: false,
            pool: None,
            runner: None,
            scale_set: None,
            quarantine: None,
        });
    let err = plan(&spec, &world).expect_err("an error");
    assert!(
        err.problems.iter().any(|p| p.contains("zq-per-0-state")
            && p.contains("not created by fleet")
            && p.contains("runner `zq-per-0`")),
        "{:?}",
        err.problems
    );
}

/// Host `b` is not observed: `a` holds two runners of the pool, and two more registrations
/// have no container on `a`.
fn half_seen(pools: &str) -> (Spec, Observed) {
    let hosts = [("a", 0), ("b", 0)];
    let spec = hosts_spec(&hosts, pools);
    let mut world = world_of(&hosts[..1]);
    world.unobserved.insert("b".into());
    (spec, world)
}

#[test]
fn runners_that_may_live_on_an_unobserved_host_are_counted_and_never_deregistered() {
    let (spec, mut world) = half_seen("  eph: { count: 4, image: r:1, host: [a, b] }\n");
    add_runner_on(&mut world, &spec, "eph", "a", "zq-eph-aaaaa1");
    add_runner_on(&mut world, &spec, "eph", "a", "zq-eph-aaaaa2");
    let labels = RunnerConfig::for_pool("zq", &spec.resolved_pools()[0]).labels;
    register(&mut world, "zq-eph-bbbbb1", &labels);
    register(&mut world, "zq-eph-bbbbb2", &labels);
    let partial = plan(&spec, &world).expect("plan");
    assert!(partial.is_empty(), "{:#?}", partial.changes);
    assert!(
        partial.warnings.iter().any(|w| w.starts_with(
            "host `b` was not observed: fleet changes nothing there, and removes no GitHub registration"
        )),
        "{:?}",
        partial.warnings
    );
    assert!(
        partial.warnings.iter().any(|w| w.contains(
            "2 registration(s) of this fleet have no container on the hosts that were observed; they may run on host `b`"
        )),
        "{:?}",
        partial.warnings
    );

    // Once b is observed (and empty), they are orphans: removed, and the pool made whole.
    let mut whole = world.clone();
    whole.unobserved.clear();
    whole
        .hosts
        .insert("b".into(), world_of(&[("b", 0)]).hosts["b"].clone());
    let mut actions: Vec<(Action, String)> = hosts_of(&spec, &whole);
    actions.sort();
    assert_eq!(
        actions,
        [
            (Action::Create, "b".to_string()),
            (Action::Create, "b".to_string()),
            (Action::Deregister, "github".to_string()),
            (Action::Deregister, "github".to_string()),
        ]
    );
}

#[test]
fn a_lost_runner_of_a_host_that_answers_is_replaced_while_another_is_away() {
    let (spec, mut world) = half_seen("  eph: { count: 4, image: r:1, host: [a, b] }\n");
    add_runner_on(&mut world, &spec, "eph", "a", "zq-eph-aaaaa1");
    let labels = RunnerConfig::for_pool("zq", &spec.resolved_pools()[0]).labels;
    let marked = |host: &str| {
        let mut l = labels.clone();
        l.push(crate::contract::host_label("zq", host));
        l
    };
    // Made on `a`, its container gone: lost. Made on `b`: may run there. No mark: may be
    // anywhere.
    register(&mut world, "zq-eph-lostaa", &marked("a"));
    register(&mut world, "zq-eph-onbbbb", &marked("b"));
    register(&mut world, "zq-eph-oldone", &labels);
    let typed = plan(&spec, &world).expect("plan");
    let mut actions: Vec<(Action, String)> = typed
        .changes
        .iter()
        .map(|c| (c.action, c.name.clone()))
        .collect();
    actions.sort();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0].0, Action::Create, "{actions:?}");
    assert_eq!(
        actions[1],
        (Action::Deregister, "zq-eph-lostaa".to_string()),
        "only the lost one goes"
    );
    assert!(
        typed.warnings.iter().any(|w| w.contains(
            "2 registration(s) of this fleet have no container on the hosts that were observed"
        )),
        "{:?}",
        typed.warnings
    );
}

#[test]
fn an_orphan_registration_is_kept_while_any_host_is_unobserved() {
    // The pool lists only `a`, but its runner may have been made on `b` before a move.
    let (spec, mut world) = half_seen("  eph: { count: 1, image: r:1, host: a }\n");
    add_runner_on(&mut world, &spec, "eph", "a", "zq-eph-aaaaa1");
    let labels = vec![ownership_label("zq")];
    register(&mut world, "zq-eph-elsewh", &labels);
    let plan = plan(&spec, &world).expect("plan");
    assert!(plan.is_empty(), "{:#?}", plan.changes);
}

#[test]
fn a_persistent_runner_seen_only_on_github_is_left_alone_while_a_host_is_unobserved() {
    let (spec, mut world) =
        half_seen("  per: { count: 2, image: r:1, ephemeral: false, host: [a, b] }\n");
    add_runner_on(&mut world, &spec, "per", "a", "zq-per-0");
    add_state_volume(&mut world, "a", "per", "zq-per-0");
    let labels = RunnerConfig::for_pool("zq", &spec.resolved_pools()[0]).labels;
    register(&mut world, "zq-per-1", &labels);
    let partial = plan(&spec, &world).expect("plan");
    assert!(partial.is_empty(), "{:#?}", partial.changes);
    assert!(
        partial
            .warnings
            .iter()
            .any(|w| w.starts_with("runner `zq-per-1` is registered, but no host that was observed has its container or its state volume")),
        "{:?}",
        partial.warnings
    );
    // `fleet destroy` removes what it sees and leaves the rest.
    let destroy = super::plan_destroy(&spec, &world, false)
        .expect("plan")
        .document();
    let mut actions: Vec<(Action, String)> = destroy
        .changes
        .iter()
        .map(|c| (c.action, c.name.clone()))
        .collect();
    actions.sort();
    assert_eq!(actions, [(Action::Destroy, "zq-per-0".to_string())]);
}

#[test]
fn a_lost_persistent_runner_of_a_host_that_answers_is_made_again_while_another_is_away() {
    let (spec, mut world) =
        half_seen("  per: { count: 3, image: r:1, ephemeral: false, host: [a, b] }\n");
    add_runner_on(&mut world, &spec, "per", "a", "zq-per-0");
    add_state_volume(&mut world, "a", "per", "zq-per-0");
    let labels = RunnerConfig::for_pool("zq", &spec.resolved_pools()[0]).labels;
    let marked = |host: &str| {
        let mut l = labels.clone();
        l.push(crate::contract::host_label("zq", host));
        l
    };
    // zq-per-0 runs on `a` with its mark: no drift. zq-per-1 was made on `a`, and its container
    // and state volume are gone: lost there. zq-per-2 was made on `b`: may run there.
    register(&mut world, "zq-per-0", &marked("a"));
    register(&mut world, "zq-per-1", &marked("a"));
    register(&mut world, "zq-per-2", &marked("b"));
    let typed = plan(&spec, &world).expect("plan");
    let actions: Vec<(Action, String)> = typed
        .changes
        .iter()
        .map(|c| (c.action, c.name.clone()))
        .collect();
    assert_eq!(
        actions,
        [(Action::Create, "zq-per-1".to_string())],
        "{:#?}",
        typed.changes
    );
    assert!(
        typed.warnings.iter().any(
            |w| w.starts_with("runner `zq-per-2` is registered, but no host that was observed")
        ),
        "{:?}",
        typed.warnings
    );
}

#[test]
fn a_persistent_registrations_host_mark_is_no_drift_and_a_label_update_keeps_it() {
    let hosts = [("a", 0)];
    let spec = hosts_spec(
        &hosts,
        "  per: { count: 1, image: r:1, ephemeral: false, labels: [gpu] }\n",
    );
    let mut world = world_of(&hosts);
    add_runner_on(&mut world, &spec, "per", "a", "zq-per-0");
    add_state_volume(&mut world, "a", "per", "zq-per-0");
    let mut labels = RunnerConfig::for_pool("zq", &spec.resolved_pools()[0]).labels;
    labels.push(crate::contract::host_label("zq", "a"));
    register(&mut world, "zq-per-0", &labels);
    assert!(plan(&spec, &world).expect("plan").changes.is_empty());
    // The pool's labels change: the update sets them and keeps the mark.
    let spec = hosts_spec(
        &hosts,
        "  per: { count: 1, image: r:1, ephemeral: false, labels: [gpu, big] }\n",
    );
    let update = super::plan(&spec, &world)
        .expect("plan")
        .changes
        .into_iter()
        .find_map(|c| match c {
            super::model::Change::Registration(super::model::RegistrationChange {
                op: super::model::RegistrationOp::Update { labels, .. },
                ..
            }) => labels,
            _ => None,
        })
        .expect("a label update");
    assert!(
        update.contains(&"fleet.zq.host.a".to_string()),
        "{update:?}"
    );
    assert!(update.contains(&"big".to_string()), "{update:?}");
}

#[test]
fn a_plan_splits_by_host_and_a_retired_registration_goes_with_its_state_volume() {
    let hosts = [("a", 0), ("b", 0)];
    let spec = hosts_spec(
        &hosts,
        "  cpu: { count: 2, image: r:1, host: [a, b] }\n  per: { count: 0, image: r:1, ephemeral: false, host: b }\n",
    );
    let mut world = world_of(&hosts);
    let labels = vec![ownership_label("zq")];
    register(&mut world, "zq-cpu-orphan", &labels);
    register(&mut world, "zq-per-0", &labels);
    add_state_volume(&mut world, "b", "per", "zq-per-0");
    let plan = super::plan(&spec, &world).expect("plan");
    type Part = (Option<String>, Vec<(Action, String)>);
    let parts: Vec<Part> = plan
        .by_host()
        .into_iter()
        .map(|(host, part)| {
            let changes = part
                .changes
                .iter()
                .map(|c| (c.action(), c.name().to_string()))
                .collect();
            (host, changes)
        })
        .collect();
    assert_eq!(parts.len(), 3, "{parts:#?}");
    assert_eq!(
        parts[0],
        (
            None,
            vec![(Action::Deregister, "zq-cpu-orphan".to_string())]
        )
    );
    assert_eq!(parts[1].0.as_deref(), Some("a"));
    assert_eq!(parts[1].1.len(), 1);
    let b: Vec<Action> = parts[2].1.iter().map(|(a, _)| *a).collect();
    assert_eq!(parts[2].0.as_deref(), Some("b"));
    assert_eq!(
        b,
        [Action::Deregister, Action::DestroyVolume, Action::Create],
        "{parts:#?}"
    );
    assert_eq!(
        plan.by_host().iter().map(|(_, p)| p.len()).sum::<usize>(),
        plan.len()
    );
}

// ---- properties ----

#[derive(Debug, Clone)]
struct PoolGen {
    count: u32,
    ephemeral: bool,
    gpus: u32,
    /// Which hosts it lists (bits), and whether the list is reversed.
    hosts: u8,
    reversed: bool,
}

#[derive(Debug, Clone)]
struct ContainerGen {
    pool: usize,
    host: usize,
    status: u8,
    registered: bool,
    busy: bool,
    gpu: u8,
    /// A persistent index name instead of a random one.
    indexed: Option<u8>,
}

fn pool_gen() -> impl Strategy<Value = PoolGen> {
    (0u32..5, any::<bool>(), 0u32..3, 1u8..8, any::<bool>()).prop_map(
        |(count, ephemeral, gpus, hosts, reversed)| PoolGen {
            count,
            ephemeral,
            gpus,
            hosts,
            reversed,
        },
    )
}

fn container_gen() -> impl Strategy<Value = ContainerGen> {
    (
        0usize..3,
        0usize..3,
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        0u8..6,
        proptest::option::of(0u8..4),
    )
        .prop_map(
            |(pool, host, status, registered, busy, gpu, indexed)| ContainerGen {
                pool,
                host,
                status,
                registered,
                busy,
                gpu,
                indexed,
            },
        )
}

const HOST_NAMES: [&str; 3] = ["a", "b", "c"];

/// A spec of `inventories.len()` hosts and the pools, and a world holding the containers.
fn build_world(
    inventories: &[usize],
    pools: &[PoolGen],
    containers: &[ContainerGen],
) -> (Spec, Observed) {
    let hosts: Vec<(&str, usize)> = HOST_NAMES
        .iter()
        .copied()
        .zip(inventories.iter().copied())
        .collect();
    let mut yaml = String::new();
    for (i, p) in pools.iter().enumerate() {
        let mut listed: Vec<&str> = hosts
            .iter()
            .enumerate()
            .filter(|(h, _)| p.hosts & (1 << h) != 0)
            .map(|(_, (name, _))| *name)
            .collect();
        if listed.is_empty() {
            listed.push(hosts[0].0);
        }
        if p.reversed {
            listed.reverse();
        }
        let most = listed
            .iter()
            .filter_map(|h| hosts.iter().find(|(n, _)| n == h).map(|(_, g)| *g))
            .max()
            .unwrap_or(0);
        let gpus = if (p.gpus as usize) <= most { p.gpus } else { 0 };
        yaml.push_str(&format!(
            "  p{i}: {{ count: {}, image: r:1, ephemeral: {}, gpus: {gpus}, host: [{}] }}\n",
            p.count,
            p.ephemeral,
            listed.join(", ")
        ));
    }
    let spec = hosts_spec(&hosts, &yaml);
    let mut world = world_of(&hosts);
    let resolved = spec.resolved_pools();
    let mut used = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let pool = &resolved[c.pool % resolved.len()];
        let (host, inventory) = hosts[c.host % hosts.len()];
        let name = match c.indexed {
            Some(n) if !pool.ephemeral => naming::persistent_name("zq", &pool.name, n.into()),
            _ => format!("zq-{}-c{i:05}", pool.name),
        };
        if !used.insert(name.clone()) {
            continue;
        }
        let cfg = RunnerConfig::for_pool("zq", pool);
        let gpus = match pool.gpus {
            GpuRequest::Count(n) if n > 0 && inventory > 0 => {
                format!("GPU-{host}-{}", c.gpu as usize % (inventory + 1))
            }
            _ => String::new(),
        };
        world
            .hosts
            .get_mut(host)
            .expect("host")
            .containers
            .push(ContainerState {
                id: format!("id{i}"),
                name: name.clone(),
                labels: BTreeMap::from([
                    (labels::FLEET.to_string(), "zq".to_string()),
                    (labels::POOL.to_string(), pool.name.clone()),
                    (labels::CONFIG_HASH.to_string(), cfg.hash()),
                    (labels::CONFIG.to_string(), cfg.to_label()),
                    (labels::GPUS.to_string(), gpus),
                ]),
                status: match c.status {
                    0 => ContainerStatus::Running,
                    1 => ContainerStatus::Exited,
                    _ => ContainerStatus::Created,
                },
                exit_code: (c.status == 1).then_some(0),
                created: i as i64,
                finished: None,
            });
        if !pool.ephemeral && c.indexed.is_some() {
            add_state_volume(&mut world, host, &pool.name, &name);
        }
        if c.registered {
            register(&mut world, &name, &cfg.labels);
            if let Some(r) = world.github.runners.last_mut() {
                r.online = true;
                r.busy = c.busy;
            }
        }
    }
    for state in world.hosts.values_mut() {
        state.containers.sort_by(|a, b| a.name.cmp(&b.name));
    }
    (spec, world)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Same inputs, same plan; every runner made on a host its pool lists; no GPU given twice
    /// on any host; and applying the plan converges. With a host left unobserved, nothing is
    /// planned there and no registration is removed.
    #[test]
    fn plans_over_several_hosts_place_within_the_lists_and_converge(
        inventories in prop::collection::vec(0usize..4, 2..4),
        pools in prop::collection::vec(pool_gen(), 1..4),
        containers in prop::collection::vec(container_gen(), 0..12),
        hidden in proptest::option::of(0usize..3),
    ) {
        let (spec, mut world) = build_world(&inventories, &pools, &containers);
        if let Some(i) = hidden {
            let host = HOST_NAMES[i % inventories.len()];
            world.hosts.remove(host);
            world.unobserved.insert(host.to_string());
        }
        let first = plan(&spec, &world);
        prop_assert_eq!(&first, &plan(&spec, &world));
        let Ok(first) = first else {
            let err = first.expect_err("err");
            prop_assert!(err.problems.iter().all(|p| p.contains("GPU")), "{:?}", err);
            return Ok(());
        };
        let resolved = spec.resolved_pools();
        let lists = |pool: &str| resolved.iter().find(|p| p.name == pool).map(|p| p.hosts.clone()).unwrap_or_default();
        for change in &first.changes {
            prop_assert!(!world.unobserved.contains(&change.host), "{:?} on an unobserved host", change);
            prop_assert!(world.unobserved.is_empty() || change.action != Action::Deregister, "{:?}", change);
            if matches!(change.action, Action::Create | Action::Replace) {
                prop_assert!(lists(&change.pool).contains(&change.host), "{:?} on a host its pool does not list", change);
            }
            if change.action == Action::Destroy || change.action == Action::Replace {
                let on_host = world.hosts[&change.host].containers.iter().any(|c| c.name == change.name);
                prop_assert!(on_host, "{:?} is not on its host", change);
            }
        }
        let after = apply_to(&spec, &world, &first);
        let second = plan(&spec, &after).expect("second plan");
        let left: Vec<_> = second.actionable().collect();
        prop_assert!(left.is_empty(), "not converged: {:#?}", left);

        // A GPU given out by this plan is held by no other exclusive runner of its host.
        for (host, state) in &after.hosts {
            let mut holders: BTreeMap<String, Vec<&str>> = BTreeMap::new();
            for c in &state.containers {
                let exclusive = resolved.iter().any(|p| Some(p.name.as_str()) == c.label(labels::POOL)
                    && matches!(p.gpus, GpuRequest::Count(n) if n > 0));
                if exclusive {
                    for uuid in c.gpus() {
                        prop_assert!(uuid.starts_with(&format!("GPU-{host}-")), "{} on host {}", uuid, host);
                        holders.entry(uuid).or_default().push(c.name.as_str());
                    }
                }
            }
            let existed = |name: &str| world.hosts[host].containers.iter().any(|c| c.name == name);
            for (uuid, names) in &holders {
                if names.iter().any(|n| !existed(n)) {
                    prop_assert_eq!(names.len(), 1, "{} held by {:?}", uuid, names);
                }
            }
        }
    }
}
