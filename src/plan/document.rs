//! The JSON plan (format_version "1", docs/plan.md): what `plan --format json` prints, what
//! `plan --out` saves and `show` reads back. Every view renders this document, so a saved plan
//! prints exactly as it did when it was made.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spec::Spec;
use crate::state::Observed;

use super::model::{
    Action, AttributeChange, AutoscalePool, Change, Deferral, Plan, RegistrationOp, RunnerChange,
    RunnerOp, ScaleSetOp, Summary,
};

/// The version of the JSON plan format. Fields may be added; none may change meaning without a
/// new version.
pub const FORMAT_VERSION: &str = "1";

/// The host a registration without a container is listed under.
pub const REGISTRATION_HOST: &str = "github";

/// The whole plan as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanDocument {
    pub format_version: String,
    pub fleet: String,
    pub summary: Summary,
    /// Every change, deferred ones included (`action: defer`), registrations last.
    pub changes: Vec<ChangeDocument>,
    pub warnings: Vec<String>,
    /// Autoscaled pools: what each wants, has and waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub autoscale: Vec<AutoscalePool>,
    /// Pools that make no runner now because their runners exit without taking a job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<super::crashloop::PoolBackoff>,
    pub spec_hash: String,
    pub observed_fingerprint: String,
}

/// One change as JSON: a flat record whose fields apply by `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeDocument {
    pub action: Action,
    pub pool: String,
    /// The Docker host; `github` for a registration with no container.
    pub host: String,
    /// The runner (= container) name, or the volume name.
    pub name: String,
    pub reasons: Vec<String>,
    /// GPU UUIDs the new runner gets (create, replace), or holds (destroy, defer).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// For a replace: the new runner's name when it differs (ephemeral runners get a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// For a defer: what will happen once the runner's job is done (`replace` or `destroy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Action>,
    /// Attributes that changed (replace, defer of a replace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diff: Vec<AttributeChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<u64>,
    /// A persistent runner's state volume: kept (create, replace) or removed (destroy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_volume: Option<String>,
    /// A destroy (or defer of one) that leaves the runner's registration on GitHub: the pool
    /// wants the runner on another host, where it registers again under its name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub registration_kept: bool,
}

impl ChangeDocument {
    fn runner(change: &RunnerChange) -> ChangeDocument {
        let (replacement, diff) = match &change.op {
            RunnerOp::Replace { replacement, diff } => (replacement.clone(), diff.clone()),
            _ => (None, vec![]),
        };
        ChangeDocument {
            action: change.action(),
            pool: change.pool.clone(),
            host: change.host.clone(),
            name: change.name.clone(),
            reasons: change.reasons.iter().map(ToString::to_string).collect(),
            gpus: change.gpus.clone(),
            replacement,
            deferred: None,
            diff,
            container_id: change.container_id.clone(),
            runner_id: change.runner_id,
            state_volume: change.state_volume.clone(),
            registration_kept: change.registration_kept,
        }
    }

    fn bare(action: Action, pool: &str, host: &str, name: &str, reasons: Vec<String>) -> Self {
        ChangeDocument {
            action,
            pool: pool.to_string(),
            host: host.to_string(),
            name: name.to_string(),
            reasons,
            gpus: vec![],
            replacement: None,
            deferred: None,
            diff: vec![],
            container_id: None,
            runner_id: None,
            state_volume: None,
            registration_kept: false,
        }
    }

    fn of_change(change: &Change) -> ChangeDocument {
        match change {
            Change::Runner(r) => ChangeDocument::runner(r),
            Change::Volume(v) => ChangeDocument::bare(
                change.action(),
                v.pool.as_deref().unwrap_or_default(),
                &v.host,
                &v.name,
                v.reasons.iter().map(ToString::to_string).collect(),
            ),
            Change::Registration(r) => ChangeDocument {
                runner_id: Some(r.runner_id),
                diff: match &r.op {
                    RegistrationOp::Update { diff, .. } => diff.clone(),
                    RegistrationOp::Remove => vec![],
                },
                ..ChangeDocument::bare(
                    change.action(),
                    r.pool.as_deref().unwrap_or_default(),
                    r.host.as_deref().unwrap_or(REGISTRATION_HOST),
                    &r.name,
                    r.reasons.iter().map(ToString::to_string).collect(),
                )
            },
            Change::ScaleSet(set) => ChangeDocument {
                diff: match &set.op {
                    ScaleSetOp::Update { diff } => diff.clone(),
                    _ => vec![],
                },
                state_volume: set.record.as_ref().map(|(_, volume)| volume.clone()),
                ..ChangeDocument::bare(
                    change.action(),
                    set.pool.as_deref().unwrap_or_default(),
                    REGISTRATION_HOST,
                    &set.name,
                    set.reasons.iter().map(ToString::to_string).collect(),
                )
            },
        }
    }

    fn of_deferral(deferral: &Deferral) -> ChangeDocument {
        let mut doc = ChangeDocument::runner(&deferral.change);
        doc.action = Action::Defer;
        doc.deferred = Some(deferral.change.action());
        doc.replacement = None;
        doc.reasons.push(deferral.busy().to_string());
        doc
    }

    /// The order of the plan: by host, pool, action and name; registrations, then volumes that
    /// `fleet destroy --volumes` removes, last.
    fn order_key(&self) -> (bool, bool, &str, &str, Action, &str) {
        (
            matches!(self.action, Action::Deregister | Action::DestroyVolume),
            self.action == Action::DestroyVolume,
            &self.host,
            &self.pool,
            self.action,
            &self.name,
        )
    }
}

impl From<&Plan> for PlanDocument {
    fn from(plan: &Plan) -> PlanDocument {
        let mut changes: Vec<ChangeDocument> = plan
            .changes
            .iter()
            .map(ChangeDocument::of_change)
            .chain(plan.deferred.iter().map(ChangeDocument::of_deferral))
            .collect();
        changes.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        PlanDocument {
            format_version: FORMAT_VERSION.into(),
            fleet: plan.fleet.clone(),
            summary: plan.summary(),
            changes,
            warnings: plan.warnings.clone(),
            autoscale: plan.autoscale.clone(),
            backoff: plan.backoff.clone(),
            spec_hash: plan.spec_hash.clone(),
            observed_fingerprint: plan.observed_fingerprint.clone(),
        }
    }
}

impl Plan {
    /// The plan as the JSON document describes it.
    pub fn document(&self) -> PlanDocument {
        PlanDocument::from(self)
    }
}

impl PlanDocument {
    /// No change to make.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Changes other than `defer`: what `apply` would do right now.
    pub fn actionable(&self) -> impl Iterator<Item = &ChangeDocument> {
        self.changes.iter().filter(|c| c.action != Action::Defer)
    }
}

/// Why a saved plan could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not a fleet plan: it is not JSON ({message}); save one with `fleet plan --out FILE`",
        path.display()
    )]
    NotJson {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(
        "{} is a fleet plan of format_version {found}; this fleet reads format_version {FORMAT_VERSION}",
        path.display()
    )]
    Version {
        path: std::path::PathBuf,
        found: String,
    },
    #[error(
        "{} is not a fleet plan: it has no format_version; save one with `fleet plan --out FILE`",
        path.display()
    )]
    NoVersion { path: std::path::PathBuf },
    #[error("{} is not a valid fleet plan: {message}", path.display())]
    Invalid {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{} is a plan for fleet `{saved}`, not `{spec}`; nothing was changed", path.display())]
    OtherFleet {
        path: std::path::PathBuf,
        saved: String,
        spec: String,
    },
    #[error(
        "the saved plan {} is stale: the spec changed since it was made. Run `fleet plan --out` again; nothing was changed.",
        path.display()
    )]
    SpecChanged { path: std::path::PathBuf },
    #[error(
        "the saved plan {} is stale: containers or GitHub runners changed since it was made. Run `fleet plan --out` again; nothing was changed.",
        path.display()
    )]
    WorldChanged { path: std::path::PathBuf },
    #[error(
        "the saved plan {} is not the plan fleet makes from this spec and what it observes now: {difference}. A saved plan is applied only as fleet planned it; run `fleet plan --out` again. Nothing was changed.",
        path.display()
    )]
    Differs {
        path: std::path::PathBuf,
        difference: String,
    },
}

/// Reads a plan saved by `fleet plan --out`.
pub fn read_saved(path: &Path) -> Result<PlanDocument, SavedPlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| SavedPlanError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| SavedPlanError::NotJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    match value.get("format_version").and_then(|v| v.as_str()) {
        Some(FORMAT_VERSION) => {}
        Some(other) => {
            return Err(SavedPlanError::Version {
                path: path.to_path_buf(),
                // The file is anyone's: what it says is shown escaped (src/escape.rs).
                found: crate::escape::escaped(other).into_owned(),
            });
        }
        None => {
            return Err(SavedPlanError::NoVersion {
                path: path.to_path_buf(),
            });
        }
    }
    serde_json::from_value(value).map_err(|e| SavedPlanError::Invalid {
        path: path.to_path_buf(),
        message: crate::escape::escaped(&e.to_string()).into_owned(),
    })
}

/// A saved plan is a proposal: fleet plans again from what it observes now and goes ahead only
/// when the new plan (`fresh`) is the saved one.
pub fn check_saved(
    path: &Path,
    spec: &Spec,
    observed: &Observed,
    fresh: &Plan,
) -> Result<(), SavedPlanError> {
    let saved = read_saved(path)?;
    let path = path.to_path_buf();
    if saved.fleet != spec.name {
        return Err(SavedPlanError::OtherFleet {
            path,
            saved: saved.fleet,
            spec: spec.name.clone(),
        });
    }
    if saved.spec_hash != super::spec_hash(spec) {
        return Err(SavedPlanError::SpecChanged { path });
    }
    if saved.observed_fingerprint != super::observed_fingerprint(observed) {
        return Err(SavedPlanError::WorldChanged { path });
    }
    match first_difference(&saved, &fresh.document()) {
        None => Ok(()),
        Some(difference) => Err(SavedPlanError::Differs { path, difference }),
    }
}

/// The first change in which two plans differ, described. Scale set changes are left out:
/// `plan` does not read scale sets (that needs a registration token), apply decides them.
fn first_difference(saved: &PlanDocument, fresh: &PlanDocument) -> Option<String> {
    // Debug-quoted: a saved plan's words reach the terminal escaped.
    let describe = |c: &ChangeDocument| format!("{} {:?}", c.action.as_str(), c.name);
    let decided_at_apply = |c: &&ChangeDocument| {
        matches!(
            c.action,
            Action::CreateScaleSet | Action::UpdateScaleSet | Action::DeleteScaleSet
        )
    };
    let saved: Vec<&ChangeDocument> = saved
        .changes
        .iter()
        .filter(|c| !decided_at_apply(c))
        .collect();
    let fresh: Vec<&ChangeDocument> = fresh
        .changes
        .iter()
        .filter(|c| !decided_at_apply(c))
        .collect();
    for (i, (a, b)) in saved.iter().zip(&fresh).enumerate() {
        if a != b {
            return Some(format!(
                "change {} differs in `{}` (saved: {}; planned now: {})",
                i + 1,
                differing_field(a, b),
                describe(a),
                describe(b)
            ));
        }
    }
    match saved.len().cmp(&fresh.len()) {
        std::cmp::Ordering::Equal => None,
        _ => Some(format!(
            "it has {} change(s), the plan made now has {}",
            saved.len(),
            fresh.len()
        )),
    }
}

/// The first field of two changes that differs, by its JSON name.
fn differing_field(a: &ChangeDocument, b: &ChangeDocument) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return "?".into();
    };
    a.keys()
        .chain(b.keys())
        .find(|key| a.get(*key) != b.get(*key))
        .cloned()
        .unwrap_or_else(|| "?".into())
}
