//! Planner tests: tables for each rule of the planner (docs/plan.md), and properties over random
//! worlds. They read each plan as its JSON document: one flat record per change.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use super::{Action, AttributeChange, PlanError};
use crate::contract::{RunnerConfig, labels, ownership_label};
use crate::observe::state::{
    ContainerState, ContainerStatus, EngineInfo, GithubRunner, GithubState, GpuInventory,
    GpuSource, HostState, Observed, VolumeState,
};
use crate::plan::{ChangeDocument as Change, PlanDocument as Plan};
use crate::spec::{GpuRequest, ResolvedPool, Spec};

/// The planner's plan, as its JSON document.
pub(crate) fn plan(spec: &Spec, observed: &Observed) -> Result<Plan, PlanError> {
    super::plan(spec, observed).map(|p| p.document())
}

fn plan_destroy(spec: &Spec, observed: &Observed, volumes: bool) -> Result<Plan, PlanError> {
    super::plan_destroy(spec, observed, volumes).map(|p| p.document())
}

pub(crate) fn spec(yaml: &str) -> Spec {
    match crate::spec::parse_str(yaml, Path::new(".")) {
        Ok(spec) => spec,
        Err(e) => panic!("test spec invalid: {e:#?}"),
    }
}

pub(crate) const BASE: &str = "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n  local:\n    gpus: [GPU-a, GPU-b, GPU-c, GPU-d]\n";

pub(crate) fn with_pools(pools: &str) -> Spec {
    spec(&format!("{BASE}pools:\n{pools}"))
}

pub(crate) fn empty_world() -> Observed {
    let uuids = ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]
        .map(String::from)
        .to_vec();
    Observed {
        hosts: BTreeMap::from([("local".to_string(), gpu_host(uuids))]),
        github: GithubState::default(),
        ..Observed::default()
    }
}

/// A host with nothing on it but its GPUs (declared; none: no GPU) and NVIDIA's runtime. The
/// plan worlds of every test file are made of these.
pub(crate) fn gpu_host(uuids: Vec<String>) -> HostState {
    let source = if uuids.is_empty() {
        GpuSource::None
    } else {
        GpuSource::Declared
    };
    HostState {
        gpus: GpuInventory {
            uuids,
            source,
            ..GpuInventory::default()
        },
        engine: EngineInfo {
            nvidia_runtime: true,
            cdi_devices: vec![],
        },
        ..HostState::default()
    }
}

/// A running container of `pool_name` as fleet makes it, holding `gpus`.
pub(crate) fn runner_container(
    spec: &Spec,
    pool_name: &str,
    name: &str,
    gpus: &[&str],
    created: i64,
) -> ContainerState {
    let cfg = RunnerConfig::for_pool(&spec.name, &pool(spec, pool_name));
    ContainerState {
        id: format!("id-{name}"),
        name: name.to_string(),
        labels: BTreeMap::from([
            (labels::FLEET.to_string(), spec.name.clone()),
            (labels::POOL.to_string(), pool_name.to_string()),
            (labels::CONFIG_HASH.to_string(), cfg.hash()),
            (labels::CONFIG.to_string(), cfg.to_label()),
            (labels::GPUS.to_string(), gpus.join(",")),
        ]),
        status: ContainerStatus::Running,
        exit_code: None,
        created,
        finished: None,
    }
}

pub(crate) fn pool(spec: &Spec, name: &str) -> ResolvedPool {
    spec.resolved_pools()
        .into_iter()
        .find(|p| p.name == name)
        .expect("pool exists")
}

/// Adds a running container that matches `pool` exactly, and its idle registration.
pub(crate) fn add_runner(
    world: &mut Observed,
    spec: &Spec,
    pool_name: &str,
    name: &str,
    gpus: &[&str],
) {
    let cfg = RunnerConfig::for_pool(&spec.name, &pool(spec, pool_name));
    let host = world.hosts.get_mut("local").expect("host");
    let n = host.containers.len() as i64;
    host.containers
        .push(runner_container(spec, pool_name, name, gpus, 1000 + n));
    let id = world.github.runners.len() as u64 + 1;
    world.github.runners.push(GithubRunner {
        id,
        name: name.to_string(),
        online: true,
        busy: false,
        labels: cfg.labels.clone(),
        ..GithubRunner::default()
    });
}

pub(crate) fn set_busy(world: &mut Observed, name: &str) {
    for r in &mut world.github.runners {
        if r.name == name {
            r.busy = true;
        }
    }
}

fn actions(plan: &Plan) -> Vec<(Action, String)> {
    plan.changes
        .iter()
        .map(|c| (c.action, c.name.clone()))
        .collect()
}

/// What `apply` would leave behind: the model of the executor the planner is checked against.
pub(crate) fn apply_to(spec: &Spec, world: &Observed, plan: &Plan) -> Observed {
    let mut world = world.clone();
    let pools = spec.resolved_pools();
    let mut next_id = world.github.runners.iter().map(|r| r.id).max().unwrap_or(0) + 1;
    let mut clock = world
        .hosts
        .values()
        .flat_map(|h| h.containers.iter().map(|c| c.created))
        .max()
        .unwrap_or(0)
        + 1;
    let remove = |world: &mut Observed, host: &str, name: &str| {
        if let Some(h) = world.hosts.get_mut(host) {
            h.containers.retain(|c| c.name != name);
        }
        world.github.runners.retain(|r| r.name != name);
    };
    // In the executor's order: volumes, removals, creations, then volumes that go last.
    let phase = |action: Action| match action {
        Action::CreateVolume => 0,
        Action::Destroy | Action::Deregister => 1,
        Action::DestroyVolume => 3,
        _ => 2,
    };
    let mut ordered: Vec<&Change> = plan.changes.iter().collect();
    ordered.sort_by_key(|c| phase(c.action));
    for change in ordered {
        let mut add = |world: &mut Observed, name: &str| {
            let Some(pool) = pools.iter().find(|p| p.name == change.pool) else {
                return;
            };
            let cfg = RunnerConfig::for_pool(&spec.name, pool);
            if let Some(h) = world.hosts.get_mut(&change.host) {
                h.containers.push(ContainerState {
                    id: format!("new-{name}"),
                    name: name.to_string(),
                    labels: BTreeMap::from([
                        (labels::FLEET.to_string(), spec.name.clone()),
                        (labels::POOL.to_string(), pool.name.clone()),
                        (labels::CONFIG_HASH.to_string(), cfg.hash()),
                        (labels::CONFIG.to_string(), cfg.to_label()),
                        (labels::GPUS.to_string(), change.gpus.join(",")),
                    ]),
                    status: ContainerStatus::Running,
                    exit_code: None,
                    created: clock,
                    finished: None,
                });
                h.containers.sort_by(|a, b| a.name.cmp(&b.name));
            }
            clock += 1;
            // A persistent runner made again keeps its registration.
            if !world.github.runners.iter().any(|r| r.name == name) {
                world.github.runners.push(GithubRunner {
                    id: next_id,
                    name: name.to_string(),
                    online: false,
                    busy: false,
                    labels: cfg.labels.clone(),
                    ..GithubRunner::default()
                });
                next_id += 1;
            }
            if let (Some(volume), Some(h)) =
                (&change.state_volume, world.hosts.get_mut(&change.host))
                && !h.volumes.iter().any(|v| &v.name == volume)
            {
                h.volumes.push(VolumeState {
                    name: volume.clone(),
                    owned: true,
                    pool: Some(pool.name.clone()),
                    runner: Some(name.to_string()),
                    scale_set: None,
                    quarantine: None,
                });
                h.volumes.sort_by(|a, b| a.name.cmp(&b.name));
            }
        };
        match change.action {
            Action::Create => add(&mut world, &change.name),
            Action::Replace if change.state_volume.is_some() => {
                // Persistent: only the container is made anew.
                if let Some(h) = world.hosts.get_mut(&change.host) {
                    h.containers.retain(|c| c.name != change.name);
                }
                add(&mut world, &change.name);
            }
            Action::Replace => {
                remove(&mut world, &change.host, &change.name);
                let new_name = change.replacement.clone().unwrap_or(change.name.clone());
                add(&mut world, &new_name);
            }
            Action::Destroy if change.registration_kept => {
                if let Some(h) = world.hosts.get_mut(&change.host) {
                    h.containers.retain(|c| c.name != change.name);
                    h.volumes
                        .retain(|v| Some(&v.name) != change.state_volume.as_ref());
                }
            }
            Action::Destroy => {
                remove(&mut world, &change.host, &change.name);
                if let (Some(volume), Some(h)) =
                    (&change.state_volume, world.hosts.get_mut(&change.host))
                {
                    h.volumes.retain(|v| &v.name != volume);
                }
            }
            Action::UpdateRegistration => {
                let Some(pool) = pools.iter().find(|p| p.name == change.pool) else {
                    continue;
                };
                let cfg = RunnerConfig::for_pool(&spec.name, pool);
                for r in &mut world.github.runners {
                    if Some(r.id) == change.runner_id {
                        r.labels = cfg.labels.clone();
                    }
                }
            }
            Action::Deregister => world
                .github
                .runners
                .retain(|r| Some(r.id) != change.runner_id),
            Action::CreateVolume => {
                if let Some(h) = world.hosts.get_mut(&change.host) {
                    h.volumes.push(VolumeState {
                        name: change.name.clone(),
                        owned: true,
                        ..VolumeState::default()
                    });
                    h.volumes.sort_by(|a, b| a.name.cmp(&b.name));
                }
            }
            Action::DestroyVolume => {
                if let Some(h) = world.hosts.get_mut(&change.host) {
                    h.volumes.retain(|v| v.name != change.name);
                }
            }
            Action::Defer
            | Action::CreateScaleSet
            | Action::UpdateScaleSet
            | Action::DeleteScaleSet => {}
        }
    }
    world
}

#[test]
fn empty_host_creates_count_runners_and_volumes() {
    let spec = with_pools(
        "  gpu:\n    count: 2\n    image: r:1\n    gpus: 1\n    volumes: [{ source: cache, target: /cache }]\n",
    );
    let plan = plan(&spec, &empty_world()).expect("plan");
    assert_eq!(plan.summary.create, 2);
    assert_eq!(plan.summary.volumes, 1);
    assert_eq!(plan.changes[0].action, Action::CreateVolume);
    let creates: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Create)
        .collect();
    assert_eq!(creates[0].reasons, ["pool has 0 of 2 runners"]);
    assert_eq!(creates[1].reasons, ["pool has 0 of 2 runners"]);
    let mut gpus: Vec<String> = creates.iter().flat_map(|c| c.gpus.clone()).collect();
    gpus.sort();
    assert_eq!(gpus, ["GPU-a", "GPU-b"]);
    for c in &creates {
        assert!(
            c.name.starts_with("zq-gpu-") && c.name.len() == "zq-gpu-".len() + 6,
            "{}",
            c.name
        );
    }
    assert_ne!(creates[0].name, creates[1].name);
}

#[test]
fn converged_fleet_has_no_changes() {
    let spec = with_pools("  gpu:\n    count: 2\n    image: r:1\n    gpus: 1\n");
    let mut world = empty_world();
    add_runner(&mut world, &spec, "gpu", "zq-gpu-aaaaaa", &["GPU-a"]);
    add_runner(&mut world, &spec, "gpu", "zq-gpu-bbbbbb", &["GPU-b"]);
    let plan = plan(&spec, &world).expect("plan");
    assert!(plan.is_empty(), "{:#?}", plan.changes);
}

#[test]
fn changed_image_replaces_with_attribute_diff() {
    let old = with_pools("  cpu:\n    count: 1\n    image: r:1\n");
    let new = with_pools("  cpu:\n    count: 1\n    image: r:2\n");
    let mut world = empty_world();
    add_runner(&mut world, &old, "cpu", "zq-cpu-aaaaaa", &[]);
    let plan = plan(&new, &world).expect("plan");
    assert_eq!(
        actions(&plan),
        [(Action::Replace, "zq-cpu-aaaaaa".to_string())]
    );
    let change = &plan.changes[0];
    assert_eq!(change.reasons, ["configuration changed: image"]);
    assert_eq!(
        change.diff,
        [AttributeChange {
            attribute: "image".into(),
            before: Some("r:1".into()),
            after: "r:2".into()
        }]
    );
    // Ephemeral runners come back under a new name.
    assert!(
        change
            .replacement
            .as_deref()
            .is_some_and(|n| n != "zq-cpu-aaaaaa")
    );
}

#[test]
fn changed_hardening_or_secret_delivery_replaces_the_runner() {
    let old = with_pools("  cpu:\n    count: 1\n    image: r:1\n");
    let mut world = empty_world();
    add_runner(&mut world, &old, "cpu", "zq-cpu-aaaaaa", &[]);
    // Saying the defaults out loud changes nothing.
    let same = with_pools(
        "  cpu:\n    count: 1\n    image: r:1\n    secrets: stdin\n    security: { no_new_privileges: true, net_raw: false }\n",
    );
    assert!(plan(&same, &world).expect("plan").is_empty());
    for (yaml, attribute, after) in [
        (
            "    security: { pids_limit: 0 }\n",
            "security",
            "no_new_privileges=true pids_limit=none net_raw=false",
        ),
        ("    secrets: env\n", "secrets", "env"),
    ] {
        let new = with_pools(&format!("  cpu:\n    count: 1\n    image: r:1\n{yaml}"));
        let plan = plan(&new, &world).expect("plan");
        assert_eq!(
            actions(&plan),
            [(Action::Replace, "zq-cpu-aaaaaa".to_string())],
            "{yaml}"
        );
        let diff = &plan.changes[0].diff;
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert_eq!(
            (diff[0].attribute.as_str(), diff[0].after.as_str()),
            (attribute, after)
        );
    }
}

#[test]
fn busy_runner_is_deferred_never_replaced_or_destroyed() {
    let old = with_pools("  cpu:\n    count: 2\n    image: r:1\n");
    let new = with_pools("  cpu:\n    count: 1\n    image: r:2\n");
    let mut world = empty_world();
    add_runner(&mut world, &old, "cpu", "zq-cpu-aaaaaa", &[]);
    add_runner(&mut world, &old, "cpu", "zq-cpu-bbbbbb", &[]);
    set_busy(&mut world, "zq-cpu-aaaaaa");
    set_busy(&mut world, "zq-cpu-bbbbbb");
    let plan = plan(&new, &world).expect("plan");
    assert_eq!(
        actions(&plan),
        [
            (Action::Defer, "zq-cpu-aaaaaa".to_string()),
            (Action::Defer, "zq-cpu-bbbbbb".to_string())
        ]
    );
    assert_eq!(plan.changes[0].deferred, Some(Action::Replace));
    assert_eq!(plan.changes[1].deferred, Some(Action::Destroy));
    assert!(plan.changes[1].reasons[0].contains("pool has 2 runners, 1 wanted"));
}

#[test]
fn lower_count_destroys_idle_before_busy() {
    let spec2 = with_pools("  cpu:\n    count: 2\n    image: r:1\n");
    let spec1 = with_pools("  cpu:\n    count: 1\n    image: r:1\n");
    let mut world = empty_world();
    add_runner(&mut world, &spec2, "cpu", "zq-cpu-aaaaaa", &[]);
    add_runner(&mut world, &spec2, "cpu", "zq-cpu-bbbbbb", &[]);
    set_busy(&mut world, "zq-cpu-bbbbbb");
    let plan = plan(&spec1, &world).expect("plan");
    assert_eq!(
        actions(&plan),
        [(Action::Destroy, "zq-cpu-aaaaaa".to_string())]
    );
    assert_eq!(plan.changes[0].runner_id, Some(1));
}

#[test]
fn exited_container_is_replaced() {
    let spec = with_pools("  cpu:\n    count: 1\n    image: r:1\n");
    let mut world = empty_world();
    add_runner(&mut world, &spec, "cpu", "zq-cpu-aaaaaa", &[]);
    let c = &mut world.hosts.get_mut("local").expect("host").containers[0];
    c.status = ContainerStatus::Exited;
    c.exit_code = Some(0);
    world.github.runners.clear(); // GitHub removed the ephemeral registration after its job
    let plan = plan(&spec, &world).expect("plan");
    assert_eq!(
        actions(&plan),
        [(Action::Replace, "zq-cpu-aaaaaa".to_string())]
    );
    assert_eq!(plan.changes[0].reasons, ["container exited with code 0"]);
}

#[test]
fn orphan_registration_is_deregistered_only_when_offline_and_idle() {
    let spec = with_pools("  cpu:\n    count: 0\n    image: r:1\n");
    let own = ownership_label("zq");
    let mut world = empty_world();
    for (id, name, online, busy) in [
        (7, "zq-cpu-orphan", false, false),
        (8, "zq-cpu-online", true, false),
        (9, "zq-cpu-busy", true, true),
    ] {
        world.github.runners.push(GithubRunner {
            id,
            name: name.into(),
            online,
            busy,
            labels: vec!["self-hosted".into(), own.clone()],
            ..GithubRunner::default()
        });
    }
    let plan = plan(&spec, &world).expect("plan");
    assert_eq!(
        actions(&plan),
        [(Action::Deregister, "zq-cpu-orphan".to_string())]
    );
    assert_eq!(plan.changes[0].runner_id, Some(7));
    assert_eq!(plan.changes[0].pool, "cpu");
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
}

#[test]
fn foreign_resources_are_invisible() {
    let spec = with_pools("  cpu:\n    count: 0\n    image: r:1\n");
    let mut world = empty_world();
    // A container of another fleet, one with fleet's name prefix but no label, and GitHub
    // runners with the prefix but no ownership label, or the label but another prefix.
    let host = world.hosts.get_mut("local").expect("host");
    host.containers.push(ContainerState {
        id: "x1".into(),
        name: "zq-cpu-notours".into(),
        labels: BTreeMap::from([(labels::FLEET.to_string(), "other".to_string())]),
        status: ContainerStatus::Exited,
        exit_code: Some(1),
        created: 1,
        finished: None,
    });
    host.containers.push(ContainerState {
        id: "x2".into(),
        name: "zq-cpu-nolabel".into(),
        labels: BTreeMap::new(),
        status: ContainerStatus::Running,
        exit_code: None,
        created: 1,
        finished: None,
    });
    world.github.runners.push(GithubRunner {
        id: 1,
        name: "zq-cpu-handmade".into(),
        online: false,
        busy: false,
        labels: vec!["self-hosted".into()],
        ..GithubRunner::default()
    });
    world.github.runners.push(GithubRunner {
        id: 2,
        name: "someone-else".into(),
        online: false,
        busy: false,
        labels: vec![ownership_label("zq")],
        ..GithubRunner::default()
    });
    let plan = plan(&spec, &world).expect("plan");
    assert!(plan.is_empty(), "{:#?}", plan.changes);
}

#[test]
fn removed_pool_is_destroyed() {
    let old =
        with_pools("  cpu:\n    count: 1\n    image: r:1\n  old:\n    count: 1\n    image: r:1\n");
    let new = with_pools("  cpu:\n    count: 1\n    image: r:1\n");
    let mut world = empty_world();
    add_runner(&mut world, &old, "cpu", "zq-cpu-aaaaaa", &[]);
    add_runner(&mut world, &old, "old", "zq-old-aaaaaa", &[]);
    let plan = plan(&new, &world).expect("plan");
    assert_eq!(
        actions(&plan),
        [(Action::Destroy, "zq-old-aaaaaa".to_string())]
    );
    assert_eq!(
        plan.changes[0].reasons,
        ["pool `old` is no longer in the spec"]
    );
}

#[test]
fn gpu_oversubscription_is_a_plan_error_naming_host_pool_and_numbers() {
    let spec = with_pools("  gpu:\n    count: 3\n    image: r:1\n    gpus: 2\n");
    let err = plan(&spec, &empty_world()).expect_err("no plan");
    assert_eq!(
        err.problems,
        [
            "host `local`: pool `gpu` wants 6 GPU(s) for 3 new runner(s) (2 per runner); 4 of 4 are free"
        ]
    );
}

#[test]
fn gpu_assignments_stay_put_and_new_runners_get_free_gpus() {
    let spec1 = with_pools("  gpu:\n    count: 1\n    image: r:1\n    gpus: 1\n");
    let spec3 = with_pools("  gpu:\n    count: 3\n    image: r:1\n    gpus: 1\n");
    let mut world = empty_world();
    add_runner(&mut world, &spec1, "gpu", "zq-gpu-aaaaaa", &["GPU-c"]);
    let plan = plan(&spec3, &world).expect("plan");
    let mut gpus: Vec<String> = plan.changes.iter().flat_map(|c| c.gpus.clone()).collect();
    gpus.sort();
    assert_eq!(gpus, ["GPU-a", "GPU-b"]);
}

#[test]
fn vanished_gpu_replaces_its_runner() {
    let spec = with_pools("  gpu:\n    count: 1\n    image: r:1\n    gpus: 1\n");
    let mut world = empty_world();
    add_runner(&mut world, &spec, "gpu", "zq-gpu-aaaaaa", &["GPU-z"]);
    let plan = plan(&spec, &world).expect("plan");
    assert_eq!(plan.changes[0].action, Action::Replace);
    assert_eq!(
        plan.changes[0].reasons,
        ["GPU GPU-z is no longer in host `local`'s inventory"]
    );
    assert_eq!(plan.changes[0].gpus, ["GPU-a"]);
}

#[test]
fn persistent_runners_get_stable_indexes_and_keep_their_name_on_replace() {
    let old = with_pools("  cpu:\n    count: 2\n    image: r:1\n    ephemeral: false\n");
    let plan1 = plan(&old, &empty_world()).expect("plan");
    let names: Vec<&str> = plan1.changes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["zq-cpu-0", "zq-cpu-1"]);
    let world = apply_to(&old, &empty_world(), &plan1);
    let new = with_pools("  cpu:\n    count: 2\n    image: r:2\n    ephemeral: false\n");
    let plan2 = plan(&new, &world).expect("plan");
    assert!(
        plan2
            .changes
            .iter()
            .all(|c| c.action == Action::Replace && c.replacement.is_none())
    );
}

#[test]
fn warnings_for_docker_socket_gpus_all_and_missing_nvidia_support() {
    let spec = with_pools(
        "  a:\n    count: 1\n    image: r:1\n    docker_socket: true\n    gpus: all\n  b:\n    count: 1\n    image: r:1\n    gpus: 1\n",
    );
    let mut world = empty_world();
    world
        .hosts
        .get_mut("local")
        .expect("host")
        .engine
        .nvidia_runtime = false;
    let plan = plan(&spec, &world).expect("plan");
    let all = plan.warnings.join("\n");
    assert!(all.contains("mounts /var/run/docker.sock"), "{all}");
    assert!(all.contains("uses `gpus: all`"), "{all}");
    assert!(all.contains("mixes `gpus: all`"), "{all}");
    assert!(
        all.contains("nvidia-ctk runtime configure --runtime=docker"),
        "{all}"
    );
}

#[test]
fn unknown_runner_group_is_a_plan_error() {
    let spec = spec(
        "version: 1\nname: zq\ngithub:\n  org: acme\npools:\n  cpu:\n    count: 1\n    image: r:1\n    runner_group: gpu-builders\n",
    );
    let mut world = empty_world();
    world.github.groups = BTreeMap::from([("Default".to_string(), 1)]);
    let err = plan(&spec, &world).expect_err("no plan");
    assert_eq!(
        err.problems,
        ["pool `cpu`: runner group `gpu-builders` does not exist (the organization has: Default)"]
    );
    world.github.groups.insert("gpu-builders".into(), 2);
    assert!(plan(&spec, &world).is_ok());
}

#[test]
fn a_container_created_but_never_started_is_replaced() {
    let spec = with_pools("  cpu:\n    count: 1\n    image: r:1\n");
    let mut world = empty_world();
    add_runner(&mut world, &spec, "cpu", "zq-cpu-aaaaaa", &[]);
    world.hosts.get_mut("local").expect("host").containers[0].status = ContainerStatus::Created;
    let plan = plan(&spec, &world).expect("plan");
    assert_eq!(
        actions(&plan),
        [(Action::Replace, "zq-cpu-aaaaaa".to_string())]
    );
    assert_eq!(
        plan.changes[0].reasons,
        ["container was created but never started"]
    );
}

#[test]
fn destroy_plans_remove_everything_owned_but_busy_runners_and_volumes_on_request() {
    let spec = with_pools(
        "  cpu:\n    count: 2\n    image: r:1\n    volumes: [{ source: cache, target: /c }]\n",
    );
    let mut world = empty_world();
    add_runner(&mut world, &spec, "cpu", "zq-cpu-aaaaaa", &[]);
    add_runner(&mut world, &spec, "cpu", "zq-cpu-bbbbbb", &[]);
    set_busy(&mut world, "zq-cpu-bbbbbb");
    world.hosts.get_mut("local").expect("host").volumes = vec![
        VolumeState {
            name: "cache".into(),
            owned: true,
            ..VolumeState::default()
        },
        VolumeState {
            name: "theirs".into(),
            owned: false,
            ..VolumeState::default()
        },
    ];
    let keep = plan_destroy(&spec, &world, false).expect("plan");
    assert_eq!(
        actions(&keep),
        [
            (Action::Destroy, "zq-cpu-aaaaaa".to_string()),
            (Action::Defer, "zq-cpu-bbbbbb".to_string())
        ]
    );
    let all = plan_destroy(&spec, &world, true).expect("plan");
    assert_eq!(all.summary.destroy_volumes, 1);
    assert_eq!(
        all.changes.last().map(|c| (c.action, c.name.as_str())),
        Some((Action::DestroyVolume, "cache"))
    );
}

#[test]
fn applying_a_plan_converges() {
    let spec = with_pools(
        "  gpu:\n    count: 2\n    image: r:1\n    gpus: 1\n  cpu:\n    count: 2\n    image: r:1\n    ephemeral: false\n    volumes: [{ source: cache, target: /c }]\n",
    );
    let world = empty_world();
    let first = plan(&spec, &world).expect("plan");
    let after = apply_to(&spec, &world, &first);
    let second = plan(&spec, &after).expect("plan");
    assert!(second.is_empty(), "{:#?}", second.changes);
}

// ---- properties ----

#[derive(Debug, Clone)]
struct PoolGen {
    count: u32,
    ephemeral: bool,
    gpus: u8, // 0, 1, 2, or 3 = all
    image: u8,
}

#[derive(Debug, Clone)]
struct ContainerGen {
    pool: usize,
    status: u8, // 0 running, 1 exited, 2 created, 3 dead
    drifted: bool,
    registered: bool,
    online: bool,
    busy: bool,
    gpu: u8,
    foreign: bool,
}

fn pool_gen() -> impl Strategy<Value = PoolGen> {
    (0u32..5, any::<bool>(), 0u8..4, 0u8..2).prop_map(|(count, ephemeral, gpus, image)| PoolGen {
        count,
        ephemeral,
        gpus,
        image,
    })
}

fn container_gen() -> impl Strategy<Value = ContainerGen> {
    (
        0usize..4,
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u8..8,
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(pool, status, drifted, registered, online, busy, gpu, foreign)| ContainerGen {
                pool,
                status,
                drifted,
                registered,
                online,
                busy,
                gpu,
                foreign,
            },
        )
}

fn build_world(
    pools: &[PoolGen],
    inventory: usize,
    containers: &[ContainerGen],
    orphans: &[(bool, bool, bool)],
) -> (Spec, Observed) {
    let mut yaml = format!(
        "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n  local:\n    gpus: {}\npools:\n",
        if inventory == 0 {
            "none".to_string()
        } else {
            format!(
                "[{}]",
                (0..inventory)
                    .map(|i| format!("GPU-{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    for (i, p) in pools.iter().enumerate() {
        let gpus = if inventory == 0 {
            "0".to_string()
        } else {
            match p.gpus {
                3 => "all".to_string(),
                n => (n as usize).min(inventory).to_string(),
            }
        };
        yaml.push_str(&format!(
            "  p{i}:\n    count: {}\n    image: r:{}\n    ephemeral: {}\n    gpus: {gpus}\n",
            p.count, p.image, p.ephemeral
        ));
    }
    let spec = spec(&yaml);
    let mut world = empty_world();
    let host = world.hosts.get_mut("local").expect("host");
    host.gpus.uuids = (0..inventory).map(|i| format!("GPU-{i}")).collect();
    host.gpus.source = if inventory == 0 {
        GpuSource::None
    } else {
        GpuSource::Declared
    };
    let resolved = spec.resolved_pools();
    for (i, c) in containers.iter().enumerate() {
        let pool = &resolved[c.pool % resolved.len()];
        let name = format!("zq-{}-c{i:05}", pool.name);
        let mut cfg = RunnerConfig::for_pool("zq", pool);
        if c.drifted {
            cfg.image.push_str("-old");
        }
        let gpus = if inventory > 0 && matches!(pool.gpus, GpuRequest::Count(n) if n > 0) {
            format!("GPU-{}", c.gpu as usize % (inventory + 1)) // sometimes a vanished one
        } else {
            String::new()
        };
        let fleet = if c.foreign { "other" } else { "zq" };
        world
            .hosts
            .get_mut("local")
            .expect("host")
            .containers
            .push(ContainerState {
                id: format!("id{i}"),
                name: name.clone(),
                labels: BTreeMap::from([
                    (labels::FLEET.to_string(), fleet.to_string()),
                    (labels::POOL.to_string(), pool.name.clone()),
                    (labels::CONFIG_HASH.to_string(), cfg.hash()),
                    (labels::CONFIG.to_string(), cfg.to_label()),
                    (labels::GPUS.to_string(), gpus),
                ]),
                status: match c.status {
                    0 => ContainerStatus::Running,
                    1 => ContainerStatus::Exited,
                    2 => ContainerStatus::Created,
                    _ => ContainerStatus::Dead,
                },
                exit_code: (c.status == 1).then_some(0),
                created: i as i64,
                finished: None,
            });
        if c.registered {
            let mut labels = cfg.labels.clone();
            if c.foreign {
                labels.retain(|l| l != &ownership_label("zq"));
            }
            world.github.runners.push(GithubRunner {
                id: i as u64 + 1,
                name,
                online: c.online,
                busy: c.busy,
                labels,
                ..GithubRunner::default()
            });
        }
    }
    for (j, (owned, online, busy)) in orphans.iter().enumerate() {
        world.github.runners.push(GithubRunner {
            id: 10_000 + j as u64,
            name: format!("zq-p0-orphan{j}"),
            online: *online,
            busy: *busy,
            labels: if *owned {
                vec![ownership_label("zq")]
            } else {
                vec!["self-hosted".into()]
            },
            ..GithubRunner::default()
        });
    }
    (spec, world)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn plans_are_deterministic_safe_and_converge(
        pools in prop::collection::vec(pool_gen(), 1..4),
        inventory in 0usize..7,
        containers in prop::collection::vec(container_gen(), 0..12),
        orphans in prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 0..3),
    ) {
        let (spec, world) = build_world(&pools, inventory, &containers, &orphans);
        let first = plan(&spec, &world);
        // Same inputs, same plan (or the same error).
        prop_assert_eq!(&first, &plan(&spec, &world));
        let Ok(first) = first else {
            // Only a GPU shortage may stop a plan.
            let err = first.expect_err("err");
            prop_assert!(err.problems.iter().all(|p| p.contains("GPU")), "{:?}", err);
            return Ok(());
        };

        let own = ownership_label("zq");
        let busy_names: Vec<&str> = world.github.runners.iter().filter(|r| r.busy).map(|r| r.name.as_str()).collect();
        for change in &first.changes {
            let container = world.hosts["local"].containers.iter().find(|c| c.name == change.name);
            match change.action {
                Action::Destroy | Action::Replace => {
                    let c = container.expect("the container exists");
                    // Never a foreign container.
                    prop_assert_eq!(c.label(labels::FLEET), Some("zq"));
                    // Never a busy runner (a finished container's runner is gone already).
                    prop_assert!(c.status.is_finished() || !busy_names.contains(&c.name.as_str()),
                        "{:?} on busy {}", change.action, c.name);
                }
                Action::Deregister => {
                    let r = world.github.runners.iter().find(|r| Some(r.id) == change.runner_id).expect("runner");
                    prop_assert!(r.labels.contains(&own) && r.name.starts_with("zq-"));
                    prop_assert!(!r.busy && !r.online);
                }
                Action::Defer => {
                    prop_assert!(busy_names.contains(&change.name.as_str()));
                }
                Action::Create | Action::CreateVolume => {}
                Action::CreateScaleSet | Action::UpdateScaleSet | Action::DeleteScaleSet => {
                    prop_assert!(false, "no scale set: the world has no autoscaled pool");
                }
                Action::DestroyVolume => {
                    // Only a state volume of this fleet.
                    let v = world.hosts["local"].volumes.iter().find(|v| v.name == change.name).expect("volume");
                    prop_assert!(v.owned && v.runner.is_some(), "{:?}", v);
                }
                Action::UpdateRegistration => {
                    let r = world.github.runners.iter().find(|r| Some(r.id) == change.runner_id).expect("runner");
                    prop_assert!(r.labels.contains(&own) && r.name.starts_with("zq-"));
                }
            }
        }

        // Applying the plan and planning again leaves only what waits on busy runners.
        let after = apply_to(&spec, &world, &first);
        let second = plan(&spec, &after).expect("second plan");
        let left: Vec<&Change> = second.actionable().collect();
        prop_assert!(left.is_empty(), "not converged: {:#?}", left);

        // A GPU given out by this plan is held by no other exclusive runner. (Two busy runners
        // that already shared one before the plan cannot be helped until their jobs end.)
        let mut holders: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for c in &after.hosts["local"].containers {
            let pool = spec.resolved_pools().into_iter().find(|p| Some(p.name.as_str()) == c.label(labels::POOL));
            let exclusive = pool.is_some_and(|p| matches!(p.gpus, GpuRequest::Count(n) if n > 0));
            if c.label(labels::FLEET) == Some("zq") && exclusive {
                for uuid in c.gpus() {
                    holders.entry(uuid).or_default().push(c.name.as_str());
                }
            }
        }
        let existed = |name: &str| world.hosts["local"].containers.iter().any(|c| c.name == name);
        for (uuid, names) in &holders {
            if names.iter().any(|n| !existed(n)) {
                prop_assert_eq!(names.len(), 1, "{} held by {:?}", uuid, names);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whenever the demand fits the free GPUs, every runner is placed, on distinct GPUs; and
    /// after a scale-up the runners that existed keep theirs.
    #[test]
    fn placement_places_everything_that_fits(
        inventory in 1usize..9,
        pools in prop::collection::vec((1u32..4, 0u32..4), 1..4),
        grow in 0u32..3,
    ) {
        let demand: usize = pools.iter().map(|(n, c)| (*n * *c) as usize).sum();
        prop_assume!(demand <= inventory && pools.iter().all(|(n, _)| (*n as usize) <= inventory));
        let uuids: Vec<String> = (0..inventory).map(|i| format!("GPU-{i}")).collect();
        let yaml = |extra: u32| {
            let mut y = format!(
                "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n  local:\n    gpus: [{}]\npools:\n",
                uuids.join(", ")
            );
            for (i, (n, c)) in pools.iter().enumerate() {
                let count = if i == 0 { c + extra } else { *c };
                y.push_str(&format!("  p{i}:\n    count: {count}\n    image: r:1\n    gpus: {n}\n"));
            }
            y
        };
        let mut world = empty_world();
        world.hosts.get_mut("local").expect("host").gpus.uuids = uuids.clone();
        let spec1 = spec(&yaml(0));
        let first = plan(&spec1, &world).expect("demand fits: a plan");
        let mut given = std::collections::BTreeSet::new();
        for c in first.changes.iter().filter(|c| c.action == Action::Create) {
            let want = spec1.resolved_pools().into_iter().find(|p| p.name == c.pool).map(|p| p.gpus);
            prop_assert_eq!(Some(GpuRequest::Count(c.gpus.len() as u32)), want);
            for g in &c.gpus {
                prop_assert!(given.insert(g.clone()), "{} given twice", g);
            }
        }
        // Scale pool 0 up: fits or not, runners that exist keep their GPUs.
        let world = apply_to(&spec1, &world, &first);
        let spec2 = spec(&yaml(grow));
        let extra_demand = (pools[0].0 * grow) as usize;
        match plan(&spec2, &world) {
            Ok(second) => {
                prop_assert!(demand + extra_demand <= inventory);
                prop_assert!(second.changes.iter().all(|c| c.action == Action::Create));
                for c in &second.changes {
                    for g in &c.gpus {
                        prop_assert!(!given.contains(g), "{} taken from a running runner", g);
                    }
                }
            }
            Err(e) => {
                prop_assert!(demand + extra_demand > inventory, "{:?}", e);
                prop_assert!(e.problems[0].contains("pool `p0` wants"), "{:?}", e);
            }
        }
    }
}
