//! Persistent runners: identity (name, state volume, registration) through every loss of their
//! container, retirement of all three together, and registration drift set on GitHub.

use super::tests::{add_runner, apply_to, empty_world, plan, set_busy, with_pools};
use super::{Action, plan as typed_plan};
use crate::contract::{naming, ownership_label};
use crate::observe::state::{ContainerStatus, GithubRunner, Observed, VolumeState};
use crate::spec::Spec;

const PERSISTENT_2: &str = "  per:\n    count: 2\n    image: r:1\n    ephemeral: false\n";

/// Two persistent runners, each with its container, registration and state volume.
fn converged(spec: &Spec) -> Observed {
    let mut world = empty_world();
    for name in ["zq-per-0", "zq-per-1"] {
        add_runner(&mut world, spec, "per", name, &[]);
        add_state_volume(&mut world, name);
    }
    world
}

fn add_state_volume(world: &mut Observed, runner: &str) {
    let host = world.hosts.get_mut("local").expect("host");
    host.volumes.push(VolumeState {
        name: naming::state_volume(runner),
        owned: true,
        pool: Some("per".into()),
        runner: Some(runner.into()),
        scale_set: None,
        quarantine: None,
    });
    host.volumes.sort_by(|a, b| a.name.cmp(&b.name));
}

fn remove_container(world: &mut Observed, name: &str) {
    let host = world.hosts.get_mut("local").expect("host");
    host.containers.retain(|c| c.name != name);
}

fn actions(world: &Observed, spec: &Spec) -> Vec<(Action, String)> {
    plan(spec, world)
        .expect("plan")
        .changes
        .iter()
        .map(|c| (c.action, c.name.clone()))
        .collect()
}

#[test]
fn a_converged_persistent_pool_has_no_changes() {
    let spec = with_pools(PERSISTENT_2);
    assert!(plan(&spec, &converged(&spec)).expect("plan").is_empty());
}

#[test]
fn a_removed_container_is_made_again_under_its_name_keeping_registration_and_state() {
    let spec = with_pools(PERSISTENT_2);
    let mut world = converged(&spec);
    remove_container(&mut world, "zq-per-0");
    let plan = plan(&spec, &world).expect("plan");
    assert_eq!(plan.changes.len(), 1, "{:#?}", plan.changes);
    let change = &plan.changes[0];
    assert_eq!(
        (change.action, change.name.as_str()),
        (Action::Create, "zq-per-0")
    );
    assert_eq!(
        change.reasons,
        ["container missing; registration and state kept"]
    );
    assert_eq!(change.state_volume.as_deref(), Some("zq-per-0-state"));
    // Applying it converges, with the same registration.
    let after = apply_to(&spec, &world, &plan);
    assert!(super::tests::plan(&spec, &after).expect("plan").is_empty());
    let ids: Vec<u64> = after.github.runners.iter().map(|r| r.id).collect();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn an_offline_registration_of_a_wanted_runner_is_never_deregistered() {
    let spec = with_pools(PERSISTENT_2);
    let mut world = converged(&spec);
    remove_container(&mut world, "zq-per-1");
    for r in &mut world.github.runners {
        r.online = false;
    }
    let changes = actions(&world, &spec);
    assert_eq!(changes, [(Action::Create, "zq-per-1".to_string())]);
}

#[test]
fn lowering_the_count_retires_the_highest_index_with_registration_and_volume() {
    let spec = with_pools(PERSISTENT_2);
    let world = converged(&spec);
    let one = with_pools("  per:\n    count: 1\n    image: r:1\n    ephemeral: false\n");
    let plan = plan(&one, &world).expect("plan");
    assert_eq!(plan.changes.len(), 1, "{:#?}", plan.changes);
    let change = &plan.changes[0];
    assert_eq!(
        (change.action, change.name.as_str()),
        (Action::Destroy, "zq-per-1")
    );
    assert_eq!(change.runner_id, Some(2));
    assert_eq!(change.state_volume.as_deref(), Some("zq-per-1-state"));
    let after = apply_to(&one, &world, &plan);
    assert!(
        after.hosts["local"]
            .volumes
            .iter()
            .all(|v| v.name != "zq-per-1-state")
    );
}

#[test]
fn a_busy_runner_to_retire_waits_for_its_job() {
    let spec = with_pools(PERSISTENT_2);
    let mut world = converged(&spec);
    set_busy(&mut world, "zq-per-1");
    let one = with_pools("  per:\n    count: 1\n    image: r:1\n    ephemeral: false\n");
    let plan = plan(&one, &world).expect("plan");
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].action, Action::Defer);
    assert_eq!(plan.changes[0].deferred, Some(Action::Destroy));
    assert_eq!(
        plan.changes[0].state_volume.as_deref(),
        Some("zq-per-1-state")
    );
}

#[test]
fn a_registration_github_dropped_is_registered_again_on_the_same_volume() {
    let spec = with_pools(PERSISTENT_2);
    let mut world = converged(&spec);
    // Stopped, and deleted on GitHub meanwhile.
    for c in &mut world.hosts.get_mut("local").expect("host").containers {
        if c.name == "zq-per-0" {
            c.status = ContainerStatus::Exited;
            c.exit_code = Some(0);
        }
    }
    world.github.runners.retain(|r| r.name != "zq-per-0");
    let plan = plan(&spec, &world).expect("plan");
    assert_eq!(plan.changes.len(), 1, "{:#?}", plan.changes);
    let change = &plan.changes[0];
    assert_eq!(
        (change.action, change.name.as_str()),
        (Action::Replace, "zq-per-0")
    );
    assert_eq!(change.replacement, None, "same name");
    assert!(
        change.reasons.contains(
            &"re-register: the registration is gone from GitHub; the state volume is kept"
                .to_string()
        ),
        "{:?}",
        change.reasons
    );
    assert_eq!(change.state_volume.as_deref(), Some("zq-per-0-state"));
    // Gone altogether (container too): made again on the volume.
    remove_container(&mut world, "zq-per-0");
    let changes = actions(&world, &spec);
    assert_eq!(changes, [(Action::Create, "zq-per-0".to_string())]);
}

#[test]
fn a_runner_registering_itself_is_left_to_do_so() {
    let spec = with_pools(PERSISTENT_2);
    let mut world = converged(&spec);
    world.github.runners.retain(|r| r.name != "zq-per-0");
    let host = world.hosts.get_mut("local").expect("host");
    for c in &mut host.containers {
        if c.name == "zq-per-0" {
            c.labels.insert(
                crate::contract::labels::REGISTRATION.into(),
                "register".into(),
            );
        }
    }
    assert!(plan(&spec, &world).expect("plan").is_empty());
    // Without the label it restored a registration that GitHub no longer has: re-register.
    let host = world.hosts.get_mut("local").expect("host");
    for c in &mut host.containers {
        c.labels.remove(crate::contract::labels::REGISTRATION);
    }
    assert_eq!(
        actions(&world, &spec),
        [(Action::Replace, "zq-per-0".to_string())]
    );
}

#[test]
fn an_image_change_replaces_the_container_and_keeps_the_registration() {
    let spec = with_pools(PERSISTENT_2);
    let world = converged(&spec);
    let new = with_pools("  per:\n    count: 2\n    image: r:2\n    ephemeral: false\n");
    let plan = plan(&new, &world).expect("plan");
    assert!(
        plan.changes.iter().all(|c| c.action == Action::Replace
            && c.replacement.is_none()
            && c.runner_id.is_some())
    );
    let after = apply_to(&new, &world, &plan);
    let ids: Vec<u64> = after.github.runners.iter().map(|r| r.id).collect();
    assert_eq!(ids, [1, 2], "registrations kept");
}

#[test]
fn a_label_change_updates_the_registration_and_recreates_nothing() {
    let spec = with_pools(PERSISTENT_2);
    let world = converged(&spec);
    let new = with_pools(
        "  per:\n    count: 2\n    image: r:1\n    ephemeral: false\n    labels: [cuda-12]\n",
    );
    let typed = typed_plan(&new, &world).expect("plan");
    let plan = typed.document();
    assert_eq!(plan.changes.len(), 2, "{:#?}", plan.changes);
    for change in &plan.changes {
        assert_eq!(change.action, Action::UpdateRegistration);
        assert_eq!(
            change.reasons,
            ["the registration's labels differ from the pool's"]
        );
        assert_eq!(change.diff[0].attribute, "labels");
        assert_eq!(change.diff[0].after, "cuda-12\nfleet.zq");
    }
    match &typed.changes[0] {
        super::Change::Registration(r) => match &r.op {
            super::RegistrationOp::Update { labels, group, .. } => {
                assert_eq!(
                    labels.as_deref(),
                    Some(&["cuda-12".to_string(), ownership_label("zq")][..])
                );
                assert_eq!(*group, None);
            }
            other => panic!("not an update: {other:?}"),
        },
        other => panic!("not a registration change: {other:?}"),
    }
    let after = apply_to(&new, &world, &plan);
    assert!(super::tests::plan(&new, &after).expect("plan").is_empty());
}

#[test]
fn new_runners_take_the_lowest_free_index() {
    let spec = with_pools(PERSISTENT_2);
    let mut world = empty_world();
    add_runner(&mut world, &spec, "per", "zq-per-1", &[]);
    add_state_volume(&mut world, "zq-per-1");
    let three = with_pools("  per:\n    count: 3\n    image: r:1\n    ephemeral: false\n");
    let mut creates: Vec<String> = actions(&world, &three)
        .into_iter()
        .filter(|(a, _)| *a == Action::Create)
        .map(|(_, n)| n)
        .collect();
    creates.sort();
    assert_eq!(creates, ["zq-per-0", "zq-per-2"]);
}

#[test]
fn state_volumes_nobody_wants_are_removed_and_shown() {
    let spec = with_pools(PERSISTENT_2);
    let mut world = converged(&spec);
    // A runner retired earlier left its volume behind; a pool that left the spec left another.
    add_state_volume(&mut world, "zq-per-7");
    let host = world.hosts.get_mut("local").expect("host");
    host.volumes.push(VolumeState {
        name: "zq-gone-0-state".into(),
        owned: true,
        pool: Some("gone".into()),
        runner: Some("zq-gone-0".into()),
        scale_set: None,
        quarantine: None,
    });
    let plan = plan(&spec, &world).expect("plan");
    let removed: Vec<(Action, &str, &str)> = plan
        .changes
        .iter()
        .map(|c| (c.action, c.name.as_str(), c.reasons[0].as_str()))
        .collect();
    assert_eq!(
        removed,
        [
            (
                Action::DestroyVolume,
                "zq-gone-0-state",
                "state volume of runner `zq-gone-0`, which no pool wants any more"
            ),
            (
                Action::DestroyVolume,
                "zq-per-7-state",
                "state volume of runner `zq-per-7`, which no pool wants any more"
            ),
        ]
    );
}

#[test]
fn a_removed_persistent_pool_takes_its_state_volumes_along() {
    let spec = with_pools(PERSISTENT_2);
    let world = converged(&spec);
    let other = with_pools("  cpu:\n    count: 0\n    image: r:1\n");
    let plan = plan(&other, &world).expect("plan");
    let volumes: Vec<Option<&str>> = plan
        .changes
        .iter()
        .map(|c| c.state_volume.as_deref())
        .collect();
    assert_eq!(volumes, [Some("zq-per-0-state"), Some("zq-per-1-state")]);
    let after = apply_to(&other, &world, &plan);
    assert!(after.hosts["local"].volumes.is_empty());
}

#[test]
fn a_foreign_volume_with_a_state_name_is_never_touched() {
    let spec = with_pools(PERSISTENT_2);
    let mut world = converged(&spec);
    let host = world.hosts.get_mut("local").expect("host");
    host.volumes.push(VolumeState {
        name: "zq-per-5-state".into(),
        owned: false,
        ..VolumeState::default()
    });
    world.github.runners.push(GithubRunner {
        id: 50,
        name: "zq-per-5".into(),
        labels: vec!["self-hosted".into()],
        ..GithubRunner::default()
    });
    assert!(plan(&spec, &world).expect("plan").is_empty());
}

#[test]
fn a_runner_that_asks_to_be_registered_again_is_made_again_even_while_restarting() {
    // The entrypoint's 75: no registration saved and no token, while GitHub still lists it.
    let spec = with_pools(PERSISTENT_2);
    for status in [ContainerStatus::Exited, ContainerStatus::Restarting] {
        let mut world = converged(&spec);
        for c in &mut world.hosts.get_mut("local").expect("host").containers {
            if c.name == "zq-per-0" {
                c.status = status;
                c.exit_code = Some(crate::contract::container::EXIT_REGISTER_AGAIN);
            }
        }
        let plan = plan(&spec, &world).expect("plan");
        assert_eq!(plan.changes.len(), 1, "{:#?}", plan.changes);
        assert_eq!(
            (plan.changes[0].action, plan.changes[0].name.as_str()),
            (Action::Replace, "zq-per-0")
        );
        assert!(
            plan.changes[0]
                .reasons
                .iter()
                .any(|r| r.starts_with("container exited with code 75 (nothing to restore")),
            "{:?}",
            plan.changes[0].reasons
        );
    }
    // Any other restarting container is left to Docker.
    let mut world = converged(&spec);
    for c in &mut world.hosts.get_mut("local").expect("host").containers {
        c.status = ContainerStatus::Restarting;
        c.exit_code = Some(1);
    }
    assert!(plan(&spec, &world).expect("plan").changes.is_empty());
}
