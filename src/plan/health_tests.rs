//! GPU health in the planner: no new runner on a GPU that is unhealthy, dirty, unknown or
//! disabled; idle runners leave an unhealthy GPU, busy ones after their job; a pool short
//! because of GPU health is a warning, and an autoscaled pool offers only what healthy GPUs
//! give (docs/gpu-health.md).

use super::Action;
use super::tests::{BASE, add_runner, empty_world, plan, set_busy, spec, with_pools};
use crate::observe::state::{GpuHealth, HealthState, Observed, PoolLoad};

/// Marks a GPU's health; an unhealthy one as quarantined already (the quarantine's own test
/// says otherwise).
fn mark(world: &mut Observed, uuid: &str, state: HealthState, reason: &str) {
    world
        .hosts
        .get_mut("local")
        .expect("host")
        .gpus
        .health
        .insert(
            uuid.to_string(),
            GpuHealth {
                state,
                reasons: vec![reason.to_string()],
                application_xids: vec![],
                quarantined: state == HealthState::Unhealthy,
                ..GpuHealth::default()
            },
        );
}

const TWO_GPU_RUNNERS: &str = "  gpu:\n    count: 2\n    image: r:1\n    gpus: 1\n";

#[test]
fn new_runners_get_only_placeable_gpus() {
    let spec = with_pools(TWO_GPU_RUNNERS);
    for state in [
        HealthState::Unhealthy,
        HealthState::Dirty,
        HealthState::Unknown,
    ] {
        let mut world = empty_world();
        mark(&mut world, "GPU-a", state, "why");
        mark(&mut world, "GPU-b", HealthState::Degraded, "hot");
        let doc = plan(&spec, &world).expect("plan");
        let mut gpus: Vec<String> = doc.changes.iter().flat_map(|c| c.gpus.clone()).collect();
        gpus.sort();
        assert_eq!(gpus, ["GPU-b", "GPU-c"], "{state:?}: degraded is placeable");
        assert!(
            doc.warnings.iter().any(|w| w
                == &format!(
                    "host `local`: GPU GPU-a is {} (why): no new runner gets it",
                    state.as_str()
                )),
            "{:?}",
            doc.warnings
        );
        assert!(
            doc.warnings
                .iter()
                .any(|w| w.contains("GPU GPU-b is degraded (hot): new runners may still get it")),
            "{:?}",
            doc.warnings
        );
    }
}

#[test]
fn an_idle_runner_leaves_an_unhealthy_gpu_and_a_busy_one_after_its_job() {
    let spec = with_pools(TWO_GPU_RUNNERS);
    let mut world = empty_world();
    add_runner(&mut world, &spec, "gpu", "zq-gpu-idle", &["GPU-a"]);
    add_runner(&mut world, &spec, "gpu", "zq-gpu-busy", &["GPU-b"]);
    set_busy(&mut world, "zq-gpu-busy");
    mark(
        &mut world,
        "GPU-a",
        HealthState::Unhealthy,
        "critical Xid 79",
    );
    mark(
        &mut world,
        "GPU-b",
        HealthState::Unhealthy,
        "critical Xid 48",
    );
    let doc = plan(&spec, &world).expect("plan");
    assert_eq!(doc.changes.len(), 2, "{:?}", doc.changes);
    let change = doc
        .changes
        .iter()
        .find(|c| c.name == "zq-gpu-idle")
        .expect("the idle runner");
    assert_eq!(change.action, Action::Replace);
    assert_eq!(change.gpus, ["GPU-c"]);
    assert_eq!(
        change.reasons,
        ["GPU GPU-a on host `local` is unhealthy (critical Xid 79)"]
    );
    // The busy runner is not stopped: its replacement waits for its job, and then gets
    // another GPU.
    let busy = doc
        .changes
        .iter()
        .find(|c| c.name == "zq-gpu-busy")
        .expect("the busy runner");
    assert_eq!(
        (busy.action, busy.deferred),
        (Action::Defer, Some(Action::Replace))
    );

    // Unknown or dirty health removes nothing: the runner stays where it is.
    let mut world = empty_world();
    add_runner(&mut world, &spec, "gpu", "zq-gpu-idle", &["GPU-a"]);
    add_runner(&mut world, &spec, "gpu", "zq-gpu-two", &["GPU-b"]);
    mark(&mut world, "GPU-a", HealthState::Unknown, "health unknown");
    assert!(plan(&spec, &world).expect("plan").changes.is_empty());
}

#[test]
fn a_pool_short_because_of_gpu_health_is_a_warning_not_an_error() {
    let spec = with_pools("  gpu:\n    count: 4\n    image: r:1\n    gpus: 1\n");
    let mut world = empty_world();
    mark(
        &mut world,
        "GPU-d",
        HealthState::Unhealthy,
        "critical Xid 79",
    );
    let doc = plan(&spec, &world).expect("a warning, not an error");
    assert_eq!(doc.changes.len(), 3);
    assert!(
        doc.warnings.iter().any(|w| w
            == "pool `gpu` runs 1 runner(s) short on host `local` because of GPU health: GPU-d is unhealthy (critical Xid 79)"),
        "{:?}",
        doc.warnings
    );
    // `fleet watch`'s metric reads the warning back; other warnings are not shortages.
    let shortages: Vec<_> = doc
        .warnings
        .iter()
        .filter_map(|w| crate::plan::health_shortage(w))
        .collect();
    assert_eq!(shortages, [("gpu", "local", 1)]);
    // Asking for more than the host has at all stays an error, naming what is held back.
    let spec = with_pools("  gpu:\n    count: 6\n    image: r:1\n    gpus: 1\n");
    let e = plan(&spec, &world).expect_err("over-subscribed");
    assert!(
        e.problems[0].contains("3 of 4 are free (1 GPU(s) held back: GPU-d is unhealthy"),
        "{e:?}"
    );
}

#[test]
fn an_ephemeral_runner_with_no_healthy_gpu_to_move_to_leaves() {
    let spec = with_pools("  gpu:\n    count: 4\n    image: r:1\n    gpus: 1\n");
    let mut world = empty_world();
    for (name, gpu) in [
        ("a", "GPU-a"),
        ("b", "GPU-b"),
        ("c", "GPU-c"),
        ("d", "GPU-d"),
    ] {
        add_runner(&mut world, &spec, "gpu", &format!("zq-gpu-{name}"), &[gpu]);
    }
    mark(
        &mut world,
        "GPU-d",
        HealthState::Unhealthy,
        "critical Xid 79",
    );
    let doc = plan(&spec, &world).expect("plan");
    assert_eq!(doc.changes.len(), 1, "{:?}", doc.changes);
    assert_eq!(
        (doc.changes[0].action, doc.changes[0].name.as_str()),
        (Action::Destroy, "zq-gpu-d")
    );
    assert!(
        doc.warnings
            .iter()
            .any(|w| w.contains("runs 1 runner(s) short"))
    );
}

#[test]
fn disabled_gpus_are_never_placed_and_idle_runners_leave_them() {
    let spec = spec(&format!(
        "{}    gpus_disabled: [GPU-a]\npools:\n{TWO_GPU_RUNNERS}",
        BASE.trim_end_matches('\n').to_string() + "\n"
    ));
    let mut world = empty_world();
    add_runner(&mut world, &spec, "gpu", "zq-gpu-on-a", &["GPU-a"]);
    let fingerprint = super::observed_fingerprint(&world);
    let typed = super::plan(&spec, &world).expect("plan");
    assert_eq!(typed.observed_fingerprint, fingerprint, "the world's own");
    let doc = typed.document();
    let mut gpus: Vec<String> = doc.changes.iter().flat_map(|c| c.gpus.clone()).collect();
    gpus.sort();
    assert_eq!(gpus, ["GPU-b", "GPU-c"], "{:?}", doc.changes);
    let moved = doc
        .changes
        .iter()
        .find(|c| c.name == "zq-gpu-on-a")
        .expect("the runner on GPU-a moves");
    assert_eq!(
        moved.reasons,
        [
            "GPU GPU-a on host `local` is disabled (taken out of service in hosts.local.gpus_disabled)"
        ]
    );
}

#[test]
fn an_autoscaled_pool_offers_only_what_placeable_gpus_give() {
    let spec = with_pools(
        "  auto:\n    image: r:1\n    gpus: 1\n    autoscale: { min_idle: 0, max: 8 }\n",
    );
    let mut world = empty_world();
    world.demand.insert(
        "auto".into(),
        PoolLoad {
            assigned: 0,
            queued: 0,
        },
    );
    let healthy = super::plan(&spec, &world).expect("plan");
    assert_eq!(healthy.autoscale[0].capacity(), 4);
    mark(
        &mut world,
        "GPU-a",
        HealthState::Unhealthy,
        "critical Xid 79",
    );
    mark(&mut world, "GPU-b", HealthState::Dirty, "a leaked process");
    let typed = super::plan(&spec, &world).expect("plan");
    assert_eq!(
        typed.autoscale[0].capacity(),
        2,
        "GitHub is offered only two"
    );
}

#[test]
fn an_application_xid_is_recorded_against_the_runner_not_the_gpu() {
    let spec = with_pools(TWO_GPU_RUNNERS);
    let mut world = empty_world();
    add_runner(&mut world, &spec, "gpu", "zq-gpu-a", &["GPU-a"]);
    add_runner(&mut world, &spec, "gpu", "zq-gpu-b", &["GPU-b"]);
    world
        .hosts
        .get_mut("local")
        .expect("host")
        .gpus
        .health
        .insert(
            "GPU-a".into(),
            GpuHealth {
                state: HealthState::Healthy,
                reasons: vec![],
                application_xids: vec![13],
                ..GpuHealth::default()
            },
        );
    let doc = plan(&spec, &world).expect("plan");
    assert!(doc.changes.is_empty(), "{:?}", doc.changes);
    assert_eq!(
        doc.warnings,
        [
            "host `local`: application Xid 13 on GPU GPU-a, held by runner `zq-gpu-a`: a fault of its job, not of the GPU"
        ]
    );
}

fn quarantine_record(uuid: &str, until_reset: bool) -> crate::observe::state::VolumeState {
    crate::observe::state::VolumeState {
        name: format!("zq-gpu-quarantine.{uuid}"),
        owned: true,
        quarantine: Some(crate::observe::state::QuarantineRecord {
            uuid: uuid.into(),
            reason: "critical Xid 79".into(),
            since: Some(1),
            until_reset,
            malformed: None,
        }),
        ..Default::default()
    }
}

#[test]
fn an_unhealthy_gpu_is_quarantined_once_and_a_reset_lifts_only_a_reset_quarantine() {
    let spec = with_pools("  gpu:\n    count: 0\n    image: r:1\n    gpus: 1\n");
    let mut world = empty_world();
    mark(
        &mut world,
        "GPU-a",
        HealthState::Unhealthy,
        "critical Xid 79",
    );
    let host = world.hosts.get_mut("local").expect("host");
    host.gpus
        .health
        .get_mut("GPU-a")
        .expect("health")
        .quarantined = false;
    let doc = plan(&spec, &world).expect("plan");
    assert_eq!(doc.changes.len(), 1, "{:?}", doc.changes);
    let change = &doc.changes[0];
    assert_eq!(
        (change.action, change.name.as_str()),
        (Action::CreateVolume, "zq-gpu-quarantine.GPU-a")
    );
    assert_eq!(change.reasons, ["quarantine GPU GPU-a: critical Xid 79"]);

    // Quarantined already: nothing more.
    let host = world.hosts.get_mut("local").expect("host");
    host.gpus
        .health
        .get_mut("GPU-a")
        .expect("health")
        .quarantined = true;
    assert!(plan(&spec, &world).expect("plan").changes.is_empty());

    // A record that ends with a reset goes once the GPU reads healthy; one the operator must
    // release stays.
    let mut world = empty_world();
    let host = world.hosts.get_mut("local").expect("host");
    host.volumes.push(quarantine_record("GPU-b", true));
    host.volumes.push(quarantine_record("GPU-c", false));
    mark(&mut world, "GPU-b", HealthState::Healthy, "");
    mark(&mut world, "GPU-c", HealthState::Healthy, "");
    let doc = plan(&spec, &world).expect("plan");
    assert_eq!(doc.changes.len(), 1, "{:?}", doc.changes);
    assert_eq!(
        (doc.changes[0].action, doc.changes[0].name.as_str()),
        (Action::DestroyVolume, "zq-gpu-quarantine.GPU-b")
    );
}

#[test]
fn words_from_a_driver_are_escaped_in_text_and_markdown() {
    let spec = with_pools(TWO_GPU_RUNNERS);
    let mut world = empty_world();
    mark(
        &mut world,
        "GPU-a",
        HealthState::Unknown,
        "NVML cannot read its memory: \u{1b}]0;owned\u{7}\n+ runner forged ``` @octocat",
    );
    let doc = plan(&spec, &world).expect("plan");
    let text = crate::render::text(&doc, false);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("\\u{1b}]0;owned"), "{text}");
    let markdown = crate::render::markdown(&doc);
    assert!(!markdown.contains('\u{1b}'), "{markdown}");
    assert!(
        !markdown.lines().any(|l| l.starts_with("+ runner forged")),
        "{markdown}"
    );
}

/// Marks what the runner holding `uuid` left on it (first seen now or not).
fn leave(world: &mut Observed, uuid: &str, new: bool) {
    let health = world
        .hosts
        .get_mut("local")
        .expect("host")
        .gpus
        .health
        .entry(uuid.to_string())
        .or_default();
    health.leftovers = vec!["3072 MiB of device memory".into()];
    health.leftovers_new = new;
    health.dirty_seconds = Some(if new { 0 } else { 300 });
}

#[test]
fn an_idle_persistent_runner_left_dirty_is_made_again_in_place_once_and_a_busy_one_never() {
    let spec =
        with_pools("  per:\n    count: 2\n    image: r:1\n    gpus: 1\n    ephemeral: false\n");
    let mut world = empty_world();
    add_runner(&mut world, &spec, "per", "zq-per-0", &["GPU-a"]);
    add_runner(&mut world, &spec, "per", "zq-per-1", &["GPU-b"]);
    set_busy(&mut world, "zq-per-1");
    leave(&mut world, "GPU-a", true);
    leave(&mut world, "GPU-b", true);
    let doc = plan(&spec, &world).expect("plan");
    assert_eq!(doc.changes.len(), 1, "{:?}", doc.changes);
    let change = &doc.changes[0];
    assert_eq!(change.name, "zq-per-0");
    assert_eq!(change.action, Action::Replace);
    assert_eq!(change.replacement, None, "same name");
    assert_eq!(change.gpus, ["GPU-a"], "same GPU");
    assert!(change.runner_id.is_some(), "same registration");
    assert_eq!(
        change.reasons,
        [
            "GPU GPU-a on host `local` still holds 3072 MiB of device memory while its runner is idle: the container is made again in place (same name, state volume, registration and GPU)"
        ]
    );

    // Seen again after that (the runner made again still leaves it): reported, not made again.
    leave(&mut world, "GPU-a", false);
    let doc = plan(&spec, &world).expect("plan");
    assert!(doc.changes.is_empty(), "{:?}", doc.changes);
    assert!(
        doc.warnings.iter().any(|w| w.contains(
            "GPU GPU-a has held 3072 MiB of device memory for 300 s while its runner is idle, longer than gpu_health.dirty_grace (120 s)"
        )),
        "{:?}",
        doc.warnings
    );
}

#[test]
fn a_gpu_dirty_past_its_grace_is_reported() {
    let spec = with_pools(TWO_GPU_RUNNERS);
    let mut world = empty_world();
    mark(
        &mut world,
        "GPU-a",
        HealthState::Dirty,
        "PID 7 using 900 MiB, a host process",
    );
    let doc = plan(&spec, &world).expect("plan");
    assert!(!doc.warnings.iter().any(|w| w.contains("dirty_grace")));
    world
        .hosts
        .get_mut("local")
        .expect("host")
        .gpus
        .health
        .get_mut("GPU-a")
        .expect("GPU-a")
        .dirty_seconds = Some(121);
    let doc = plan(&spec, &world).expect("plan");
    assert!(
        doc.warnings.iter().any(|w| w
            == "host `local`: GPU GPU-a has been dirty for 121 s, longer than gpu_health.dirty_grace (120 s): whoever holds it (named above) must end it; fleet never kills a process"),
        "{:?}",
        doc.warnings
    );
}
