//! Autoscaled pools: their scale sets as plan changes, the runners they want with and without
//! known demand, and GPUs shared with fixed pools.

use super::tests::{add_runner, empty_world, with_pools};
use super::{Action, Waiting, plan};
use crate::contract::ownership_label;
use crate::observe::state::{Observed, PoolLoad, ScaleSetState};

const AUTO: &str =
    "  auto:\n    image: r:1\n    labels: [gpu]\n    autoscale: { min_idle: 1, max: 4 }\n";

fn with_scale_sets(mut world: Observed, sets: Vec<ScaleSetState>) -> Observed {
    world.github.scale_sets = Some(sets);
    world
}

fn ours(id: u64, name: &str, labels: &[&str]) -> ScaleSetState {
    ScaleSetState {
        id,
        name: name.into(),
        runner_group_id: 1,
        runner_group: "Default".into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        disable_update: true,
    }
}

fn actions(world: &Observed, pools: &str) -> Vec<(Action, String)> {
    plan(&with_pools(pools), world)
        .expect("plan")
        .document()
        .changes
        .iter()
        .map(|c| (c.action, c.name.clone()))
        .collect()
}

#[test]
fn plan_does_not_read_scale_sets_and_says_apply_decides() {
    let plan = plan(&with_pools(AUTO), &empty_world()).expect("plan");
    assert!(plan.changes.iter().all(|c| c.action() == Action::Create));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("scale set `zq-auto`") && w.contains("when apply runs")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn a_missing_scale_set_is_created_with_its_labels_name_first() {
    let world = with_scale_sets(empty_world(), vec![]);
    let typed = plan(&with_pools(AUTO), &world).expect("plan");
    let set = typed
        .changes
        .iter()
        .find_map(|c| match c {
            super::Change::ScaleSet(s) => Some(s),
            _ => None,
        })
        .expect("a scale set change");
    assert_eq!(set.op, super::ScaleSetOp::Create);
    assert_eq!(set.name, "zq-auto");
    assert_eq!(
        set.labels,
        [
            "zq-auto",
            "self-hosted",
            "Linux",
            "X64",
            "gpu",
            &ownership_label("zq")
        ]
    );
    assert_eq!(
        set.reasons[0].to_string(),
        "pool `auto` autoscales and GitHub has no scale set of that name"
    );
}

#[test]
fn a_scale_set_fleet_did_not_make_is_never_adopted() {
    let world = with_scale_sets(empty_world(), vec![ours(7, "zq-auto", &["zq-auto", "gpu"])]);
    let err = plan(&with_pools(AUTO), &world).expect_err("no plan");
    assert!(err.problems[0].contains("did not create"), "{err:?}");
}

#[test]
fn label_drift_updates_and_a_scale_set_no_pool_uses_is_deleted() {
    let own = ownership_label("zq");
    let world = with_scale_sets(
        empty_world(),
        vec![
            ours(
                7,
                "zq-auto",
                &["zq-auto", "self-hosted", "Linux", "X64", &own],
            ),
            ours(8, "zq-old", &["zq-old", &own]),
            ours(9, "someone-else", &["someone-else"]),
        ],
    );
    let changes = actions(&world, AUTO);
    assert!(
        changes.contains(&(Action::UpdateScaleSet, "zq-auto".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&(Action::DeleteScaleSet, "zq-old".into())),
        "{changes:?}"
    );
    assert!(!changes.iter().any(|(_, n)| n == "someone-else"));
}

#[test]
fn without_known_demand_runners_stay_between_min_idle_and_max() {
    let spec = with_pools(AUTO);
    // None: min_idle is made.
    let creates = actions(&empty_world(), AUTO);
    assert_eq!(
        creates.iter().filter(|(a, _)| *a == Action::Create).count(),
        1
    );
    // Six: two above max go; three are kept (apply from cron does not undo demand).
    let mut world = empty_world();
    for i in 0..6 {
        add_runner(&mut world, &spec, "auto", &format!("zq-auto-r{i}"), &[]);
    }
    let destroys = actions(&world, AUTO);
    assert_eq!(
        destroys
            .iter()
            .filter(|(a, _)| *a == Action::Destroy)
            .count(),
        2
    );
}

#[test]
fn with_known_demand_the_pool_wants_min_idle_plus_assigned_up_to_max() {
    let spec = with_pools(AUTO);
    let mut world = empty_world();
    world.demand.insert(
        "auto".into(),
        PoolLoad {
            assigned: 2,
            queued: 0,
        },
    );
    let typed = plan(&spec, &world).expect("plan");
    assert_eq!(typed.summary().create, 3);
    let pool = &typed.autoscale[0];
    assert_eq!((pool.wanted, pool.runners, pool.assigned), (3, 3, Some(2)));
    assert_eq!(pool.waiting, None);
    assert_eq!(pool.capacity(), 4, "no GPUs: capacity is max");
    // Demand above max waits at max.
    world.demand.get_mut("auto").expect("demand").assigned = 9;
    let typed = plan(&spec, &world).expect("plan");
    assert_eq!(typed.summary().create, 4);
    assert_eq!(
        typed.autoscale[0].waiting,
        Some((5, Waiting::AtMax)),
        "9 jobs, 4 runners: the min_idle runner is not a job"
    );
}

#[test]
fn autoscaled_runners_take_only_the_gpus_fixed_pools_leave() {
    let pools = "  fixed:\n    count: 2\n    image: r:1\n    gpus: 1\n  auto:\n    image: r:1\n    gpus: 1\n    autoscale: { min_idle: 0, max: 8 }\n";
    let spec = with_pools(pools);
    let mut world = empty_world(); // four GPUs
    world.demand.insert(
        "auto".into(),
        PoolLoad {
            assigned: 5,
            queued: 1,
        },
    );
    let typed = plan(&spec, &world).expect("no GPU error for an autoscaled pool");
    let doc = typed.document();
    let gpus_of = |pool: &str| -> Vec<String> {
        doc.changes
            .iter()
            .filter(|c| c.pool == pool)
            .flat_map(|c| c.gpus.clone())
            .collect()
    };
    assert_eq!(gpus_of("fixed").len(), 2, "fixed pools first");
    assert_eq!(gpus_of("auto").len(), 2, "what is left");
    let mut all: Vec<String> = [gpus_of("fixed"), gpus_of("auto")].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "no GPU held twice");
    let pool = &typed.autoscale[0];
    assert_eq!(pool.runners, 2);
    assert_eq!(pool.free_slots, Some(0));
    assert_eq!(
        pool.capacity(),
        2,
        "GitHub is told no more than fleet can start"
    );
    assert_eq!(pool.waiting, Some((4, Waiting::NoFreeGpu)));
}

#[test]
fn an_outage_of_the_scale_set_service_freezes_only_the_autoscaled_pools() {
    let pools = format!("  fixed:\n    count: 2\n    image: r:1\n{AUTO}");
    let spec = with_pools(&pools);
    let own = ownership_label("zq");
    let mut world = empty_world();
    world.github.scale_set_error = Some("503 Service Unavailable".into());
    // Seven autoscaled runners (above max), one of them exited; an autoscaled registration
    // without a container; the fixed pool lacks a runner.
    for i in 0..7 {
        add_runner(&mut world, &spec, "auto", &format!("zq-auto-r{i}"), &[]);
    }
    let host = world.hosts.get_mut("local").expect("host");
    host.containers[0].status = crate::observe::state::ContainerStatus::Exited;
    world
        .github
        .runners
        .push(crate::observe::state::GithubRunner {
            id: 99,
            name: "zq-auto-gone".into(),
            labels: vec![own.clone()],
            ..Default::default()
        });
    add_runner(&mut world, &spec, "fixed", "zq-fixed-0", &[]);
    let typed = plan(&spec, &world).expect("plan");
    let changes: Vec<(Action, String)> = typed
        .document()
        .changes
        .iter()
        .map(|c| (c.action, c.pool.clone()))
        .collect();
    assert_eq!(
        changes,
        [(Action::Create, "fixed".to_string())],
        "only the fixed pool converges"
    );
    assert!(typed.autoscale.is_empty(), "{:?}", typed.autoscale);
    assert!(
        typed.warnings.iter().any(
            |w| w.contains("cannot be read (503") && w.contains("`auto` (scale set `zq-auto`)")
        ),
        "{:?}",
        typed.warnings
    );
}

#[test]
fn a_retired_scale_set_with_a_busy_runner_is_deleted_after_the_last_job() {
    let own = ownership_label("zq");
    let old = "  old:\n    image: r:1\n    autoscale: { min_idle: 0, max: 4 }\n";
    let before = with_pools(old);
    let mut world = with_scale_sets(empty_world(), vec![ours(8, "zq-old", &["zq-old", &own])]);
    add_runner(&mut world, &before, "old", "zq-old-busy01", &[]);
    add_runner(&mut world, &before, "old", "zq-old-idle01", &[]);
    super::tests::set_busy(&mut world, "zq-old-busy01");
    let host = world.hosts.get_mut("local").expect("host");
    host.volumes.push(crate::observe::state::VolumeState {
        name: "zq-old.scale-set".into(),
        owned: true,
        pool: Some("old".into()),
        runner: None,
        scale_set: Some("zq-old".into()),
        quarantine: None,
    });
    let after = with_pools("  other:\n    count: 0\n    image: r:1\n");
    let typed = plan(&after, &world).expect("plan");
    let changes: Vec<(Action, String)> = typed
        .document()
        .changes
        .iter()
        .map(|c| (c.action, c.name.clone()))
        .collect();
    assert_eq!(
        changes,
        [
            (Action::Destroy, "zq-old-idle01".to_string()),
            (Action::Defer, "zq-old-busy01".to_string())
        ],
        "the idle runner goes now, the busy one and the scale set wait"
    );
    assert!(
        typed.warnings.iter().any(
            |w| w.contains("`zq-old` (id 8) is deleted after the last job")
                && w.contains("zq-old-busy01")
        ),
        "{:?}",
        typed.warnings
    );
    // The job is over (the runner is idle): the scale set goes, with its record.
    world.github.runners.iter_mut().for_each(|r| r.busy = false);
    let changes = actions(&world, "  other:\n    count: 0\n    image: r:1\n");
    assert!(
        changes.contains(&(Action::DeleteScaleSet, "zq-old".into())),
        "{changes:?}"
    );
}

#[test]
fn jobs_wait_for_the_reason_that_holds_them() {
    use super::waiting_jobs;
    use crate::observe::state::PoolLoad;
    let load = |assigned, queued| PoolLoad { assigned, queued };
    // (assigned, queued, runners after the plan, max, GPU-bound) -> waiting
    let cases = [
        // Every job has a runner, idle runners beside them: nothing waits.
        ((2, 0), 3, 4, false, None),
        ((0, 0), 1, 4, false, None),
        // Available, room left: on its way, not a problem.
        ((0, 2), 0, 4, false, Some((2, Waiting::Acquiring))),
        ((3, 0), 1, 4, false, Some((2, Waiting::Acquiring))),
        // GPUs hold the pool below max.
        ((3, 0), 1, 4, true, Some((2, Waiting::NoFreeGpu))),
        ((2, 1), 2, 4, true, Some((1, Waiting::NoFreeGpu))),
        // At max: only then at_max, even with GPUs short.
        ((6, 0), 4, 4, false, Some((2, Waiting::AtMax))),
        ((4, 3), 4, 4, true, Some((3, Waiting::AtMax))),
    ];
    for ((assigned, queued), runners, max, gpu_bound, want) in cases {
        assert_eq!(
            waiting_jobs(load(assigned, queued), runners, max, gpu_bound),
            want,
            "assigned {assigned}, queued {queued}, runners {runners}, max {max}, GPU-bound {gpu_bound}"
        );
    }
}

#[test]
fn a_scale_set_whose_runners_may_update_themselves_is_updated_unless_the_pool_enables_it() {
    let own = ownership_label("zq");
    let labels = [
        "zq-auto",
        "self-hosted",
        "Linux",
        "X64",
        "gpu",
        own.as_str(),
    ];
    let mut set = ours(7, "zq-auto", &labels);
    set.disable_update = false;
    let world = with_scale_sets(empty_world(), vec![set]);
    let typed = plan(&with_pools(AUTO), &world).expect("plan");
    let update = typed
        .changes
        .iter()
        .find_map(|c| match c {
            super::Change::ScaleSet(s) => Some(s),
            _ => None,
        })
        .expect("a scale set change");
    assert!(
        matches!(&update.op, super::ScaleSetOp::Update { diff }
            if diff.len() == 1 && diff[0].attribute == "runner_update" && diff[0].after == "disabled"),
        "{:?}",
        update.op
    );
    let enabled = AUTO.replace("autoscale:", "runner_update: enabled\n    autoscale:");
    let changes = actions(&world, &enabled);
    assert!(
        !changes.contains(&(Action::UpdateScaleSet, "zq-auto".into())),
        "enabled: no drift: {changes:?}"
    );
}

#[test]
fn a_scale_set_without_fleets_labels_is_fleets_only_by_its_record() {
    // The service dropped every label but the name (some GitHub Enterprise Server versions).
    let bare = with_scale_sets(empty_world(), vec![ours(7, "zq-auto", &["zq-auto"])]);
    let err = plan(&with_pools(AUTO), &bare).expect_err("no record: never adopted");
    assert!(err.problems[0].contains("did not create"), "{err:?}");
    let mut recorded = bare.clone();
    recorded.hosts.get_mut("local").expect("host").volumes.push(
        crate::observe::state::VolumeState {
            name: "zq-auto.scale-set".into(),
            owned: true,
            pool: Some("auto".into()),
            runner: None,
            scale_set: Some("zq-auto".into()),
            quarantine: None,
        },
    );
    let changes = actions(&recorded, AUTO);
    assert!(
        !changes
            .iter()
            .any(|(a, _)| matches!(a, Action::UpdateScaleSet | Action::CreateScaleSet)),
        "proven by its record; labels the service drops are not updated again: {changes:?}"
    );
    // Left the spec: deleted, as fleet's.
    let changes = actions(&recorded, "  other:\n    count: 0\n    image: r:1\n");
    assert!(
        changes.contains(&(Action::DeleteScaleSet, "zq-auto".into())),
        "{changes:?}"
    );
}
