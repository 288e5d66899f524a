//! Autoscaled pools (`autoscale: { min_idle, max }`): the runner scale set each owns on GitHub,
//! and how many runners each wants. A scale set is fleet's when its labels carry the fleet's
//! ownership label; one of the same name that is not is an error, never adopted or deleted
//! (docs/autoscale.md).

use std::collections::BTreeSet;

use super::model::{AttributeChange, Change, Reason, ScaleSetChange, ScaleSetOp};
use crate::contract::{self, RunnerConfig, naming};
use crate::observe::state::{Observed, ScaleSetState};
use crate::spec::{ResolvedPool, RunnerUpdate, Spec};

/// The labels a pool's scale set carries: its name first (what `runs-on:` names on
/// github.com), then the pool's runner labels and the ownership label.
pub fn scale_set_labels(fleet: &str, pool: &ResolvedPool, name: &str) -> Vec<String> {
    let mut labels = vec![name.to_string()];
    for label in RunnerConfig::for_pool(fleet, pool).labels {
        if !labels.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
            labels.push(label);
        }
    }
    labels
}

/// The runner group a pool's scale set belongs in, by name (`None`: the default group).
fn group_of(pool: &ResolvedPool) -> Option<String> {
    pool.runner_group.clone().filter(|g| g != "Default")
}

/// What the scale set phase decided.
#[derive(Default)]
pub(super) struct ScaleSetPlan {
    pub changes: Vec<Change>,
    /// A scale set of a pool's name that fleet did not make stops the plan.
    pub problems: Vec<String>,
    /// Scale sets compared only when apply runs.
    pub warnings: Vec<String>,
}

/// Scale set changes. When the scale sets were not read (`plan` never asks for the
/// registration token reading them needs), apply reads and decides: the plan says so.
pub(super) fn plan_scale_sets(
    spec: &Spec,
    pools: &[ResolvedPool],
    observed: &Observed,
) -> ScaleSetPlan {
    if let Some(error) = &observed.github.scale_set_error {
        return ScaleSetPlan {
            warnings: outage_warnings(pools, error),
            ..ScaleSetPlan::default()
        };
    }
    let Some(existing) = observed.github.scale_sets.as_ref() else {
        let warnings = pools
            .iter()
            .filter_map(|p| p.autoscale.as_ref().map(|a| (p, a)))
            .map(|(pool, autoscale)| format!(
                "pool `{}` autoscales with the runner scale set `{}`: it is compared with GitHub (and created or updated) when apply runs, since reading scale sets needs a registration token, which plan never asks for",
                pool.name, autoscale.scale_set
            ))
            .collect();
        return ScaleSetPlan {
            warnings,
            ..ScaleSetPlan::default()
        };
    };
    let fleet = spec.name.as_str();
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    let mut wanted = BTreeSet::new();
    for pool in pools {
        let Some(autoscale) = &pool.autoscale else {
            continue;
        };
        let name = autoscale.scale_set.as_str();
        wanted.insert(name.to_string());
        let labels = scale_set_labels(fleet, pool, name);
        match existing
            .iter()
            .find(|s| contract::same_scale_set_name(&s.name, name))
        {
            None => {
                let mut create = change(ScaleSetOp::Create, pool, name, None, labels);
                if let Change::ScaleSet(set) = &mut create {
                    set.record = Some((pool.host.clone(), naming::scale_set_record(fleet, &pool.name)));
                }
                changes.push(create);
            }
            Some(set) if !owned(fleet, observed, set) => problems.push(format!(
                "pool `{}`: GitHub has a runner scale set `{}` (id {}) that fleet `{fleet}` did not create; fleet never adopts it: rename the pool's scale set (autoscale.scale_set) or remove that one",
                pool.name, set.name, set.id
            )),
            Some(set) => {
                // A service that dropped the labels (some GitHub Enterprise Server versions)
                // would drop them again: only the runner group is compared then.
                let compare_labels = contract::scale_set_owned(&set.labels, fleet);
                let mut diff = drift(set, &labels, group_of(pool).as_deref(), compare_labels);
                let disable_update = pool.runner_update == RunnerUpdate::Disabled;
                if set.disable_update != disable_update {
                    diff.push(AttributeChange {
                        attribute: "runner_update".into(),
                        before: Some(update_text(set.disable_update).into()),
                        after: update_text(disable_update).into(),
                    });
                }
                if !diff.is_empty() {
                    let op = ScaleSetOp::Update { diff };
                    changes.push(change(op, pool, name, Some(set.id), labels));
                }
            }
        }
    }
    let warnings = delete_unused(fleet, observed, existing, &wanted, &mut changes);
    ScaleSetPlan {
        changes,
        problems,
        warnings,
    }
}

/// Deletes of the scale sets fleet made that no pool uses any more (into `changes`); the
/// warnings say which wait for the last job of their runners.
fn delete_unused(
    fleet: &str,
    observed: &Observed,
    existing: &[ScaleSetState],
    wanted: &BTreeSet<String>,
    changes: &mut Vec<Change>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for set in existing {
        let ours = owned(fleet, observed, set);
        let used = wanted
            .iter()
            .any(|w: &String| contract::same_scale_set_name(w, &set.name));
        if ours && !used {
            let record = record_of(observed, &set.name);
            let busy = busy_runners(fleet, observed, set, record.as_ref());
            if !busy.is_empty() {
                // The service refuses to delete a scale set whose runner runs a job; its
                // idle runners go now, the set after the last job.
                warnings.push(format!(
                    "runner scale set `{}` (id {}) is deleted after the last job of its runners: {} busy",
                    set.name,
                    set.id,
                    busy.join(", ")
                ));
                continue;
            }
            changes.push(Change::ScaleSet(ScaleSetChange {
                op: ScaleSetOp::Delete,
                pool: None,
                name: set.name.clone(),
                id: Some(set.id),
                labels: vec![],
                runner_group: None,
                record,
                reasons: vec![Reason::ScaleSetUnused],
            }));
        }
    }
    warnings
}

/// The runners of scale set `set` that run a job: running containers of its pool (from its
/// record, else from its default name `<fleet>-<pool>`) whose registration is busy.
fn busy_runners(
    fleet: &str,
    observed: &Observed,
    set: &ScaleSetState,
    record: Option<&(String, String)>,
) -> Vec<String> {
    let from_record = record.and_then(|(host, volume)| {
        observed
            .hosts
            .get(host)?
            .volumes
            .iter()
            .find(|v| &v.name == volume)?
            .pool
            .clone()
    });
    let from_name = || {
        set.name
            .strip_prefix(fleet)
            .and_then(|rest| rest.strip_prefix('-'))
            .map(str::to_string)
    };
    let Some(pool) = from_record.or_else(from_name) else {
        return vec![];
    };
    let recorded = observed.recorded_scale_sets();
    let busy: BTreeSet<&str> = observed
        .github
        .runners
        .iter()
        .filter(|r| r.busy && contract::registration_owned_with(r, fleet, &recorded))
        .map(|r| r.name.as_str())
        .collect();
    observed
        .hosts
        .values()
        .flat_map(|h| &h.containers)
        .filter(|c| contract::container_owned(c, fleet) && !c.status.is_finished())
        .filter(|c| c.label(crate::contract::labels::POOL) == Some(pool.as_str()))
        .filter(|c| busy.contains(c.name.as_str()))
        .map(|c| c.name.clone())
        .collect()
}

/// What an outage of the scale set service leaves as it is.
fn outage_warnings(pools: &[ResolvedPool], error: &str) -> Vec<String> {
    let autoscaled: Vec<String> = pools
        .iter()
        .filter_map(|p| p.autoscale.as_ref().map(|a| (p, a)))
        .map(|(pool, autoscale)| format!("`{}` (scale set `{}`)", pool.name, autoscale.scale_set))
        .collect();
    let left = if autoscaled.is_empty() {
        "the scale sets of pools that left the spec are not removed".to_string()
    } else {
        format!(
            "autoscaled pool(s) {} are left as they are: no scale set, runner or registration of theirs is created or removed",
            autoscaled.join(", ")
        )
    };
    vec![format!(
        "the runner scale set service cannot be read ({error}): {left} until it answers again; the other pools converge"
    )]
}

fn change(
    op: ScaleSetOp,
    pool: &ResolvedPool,
    name: &str,
    id: Option<u64>,
    labels: Vec<String>,
) -> Change {
    let reasons = match &op {
        ScaleSetOp::Update { diff } => vec![Reason::ScaleSetDrift {
            attributes: diff.iter().map(|d| d.attribute.clone()).collect(),
        }],
        _ => vec![Reason::ScaleSetMissing {
            pool: pool.name.clone(),
        }],
    };
    Change::ScaleSet(ScaleSetChange {
        op,
        pool: Some(pool.name.clone()),
        name: name.to_string(),
        id,
        labels,
        runner_group: group_of(pool),
        record: None,
        reasons,
    })
}

/// Whether scale set `set` is fleet's: its labels carry the ownership label, or, when the
/// service returned it without fleet's labels (GitHub Enterprise Server versions that drop
/// extra labels), fleet's Docker record of it says fleet made it. One with neither is never
/// adopted.
fn owned(fleet: &str, observed: &Observed, set: &ScaleSetState) -> bool {
    contract::scale_set_owned(&set.labels, fleet) || record_of(observed, &set.name).is_some()
}

/// The volume that records scale set `name`, if fleet made one.
fn record_of(observed: &Observed, name: &str) -> Option<(String, String)> {
    observed.hosts.iter().find_map(|(host, state)| {
        state
            .volumes
            .iter()
            .find(|v| {
                v.owned
                    && v.scale_set
                        .as_deref()
                        .is_some_and(|s| contract::same_scale_set_name(s, name))
            })
            .map(|v| (host.clone(), v.name.clone()))
    })
}

/// What differs between a scale set and the pool's wishes.
/// A scale set's `disableUpdate` as the spec's `runner_update` says it.
fn update_text(disable_update: bool) -> &'static str {
    match disable_update {
        true => RunnerUpdate::Disabled.as_str(),
        false => RunnerUpdate::Enabled.as_str(),
    }
}

fn drift(
    set: &ScaleSetState,
    labels: &[String],
    group: Option<&str>,
    compare_labels: bool,
) -> Vec<AttributeChange> {
    let mut diff = Vec::new();
    let lower =
        |list: &[String]| -> BTreeSet<String> { list.iter().map(|l| l.to_lowercase()).collect() };
    if compare_labels && lower(&set.labels) != lower(labels) {
        diff.push(AttributeChange {
            attribute: "labels".into(),
            before: Some(set.labels.join("\n")),
            after: labels.join("\n"),
        });
    }
    let group = group.unwrap_or("Default");
    if !set.runner_group.eq_ignore_ascii_case(group) {
        diff.push(AttributeChange {
            attribute: "runner_group".into(),
            before: Some(set.runner_group.clone()),
            after: group.to_string(),
        });
    }
    diff
}
