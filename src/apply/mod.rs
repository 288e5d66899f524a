//! The executor: the only part of fleet that changes the world. It carries out a `Plan` step
//! by step, with bounded parallelism, one step per runner at a time, each step idempotent and
//! rolled back where it can be when it fails half-way. `runner.rs` holds the steps of a runner.

pub mod lock;
mod once;
mod runner;
mod scaleset;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::contract;
use crate::docker::{DockerError, DockerHost};
use crate::github::{GithubError, Removal};
use crate::observe::Observers;
use crate::observe::state::Observed;
use crate::plan::{
    Action, Change, Deferral, Plan, RegistrationChange, RegistrationOp, VolumeChange, VolumeOp,
};
use crate::spec::{ResolvedPool, Spec};

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Not done now: the runner is busy; it happens after its job.
    Deferred(String),
    Failed(String),
}

/// One step's report.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub action: Action,
    /// The runner, volume or registration of the step.
    pub name: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// The runner that now exists, when a create or replace made one (its name can differ from
    /// the plan's when GitHub had the planned name already).
    pub runner: Option<String>,
}

/// What an apply did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub steps: Vec<StepReport>,
}

/// What the executor carries out: `Apply` or `Destroy` (the words of its summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Apply,
    Destroy,
}

impl ApplyReport {
    pub fn failed(&self) -> impl Iterator<Item = &StepReport> {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
    }

    fn count(&self, action: Action) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action == action && s.outcome == Outcome::Done)
            .count()
    }

    /// `, 1 scale set(s) deleted` and the like, for the scale set steps done.
    fn scale_set_counts(&self) -> String {
        [
            (Action::CreateScaleSet, "created"),
            (Action::UpdateScaleSet, "updated"),
            (Action::DeleteScaleSet, "deleted"),
        ]
        .into_iter()
        .map(|(action, done)| (self.count(action), done))
        .filter(|(n, _)| *n > 0)
        .map(|(n, done)| format!(", {n} scale set(s) {done}"))
        .collect()
    }

    /// `Apply complete: 2 created, ...`, or the failures.
    pub fn summary(&self, run: Run) -> String {
        let what = match run {
            Run::Apply => "Apply",
            Run::Destroy => "Destroy",
        };
        let deferred = self
            .steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Deferred(_)))
            .count();
        let failed = self.failed().count();
        let counts = format!(
            "{} created, {} replaced, {} destroyed, {} registration(s) removed, {} volume(s) created{}, {} deferred, {} failed.",
            self.count(Action::Create),
            self.count(Action::Replace),
            self.count(Action::Destroy),
            self.count(Action::Deregister),
            self.count(Action::CreateVolume),
            match self.count(Action::DestroyVolume) {
                0 => String::new(),
                n => format!(", {n} volume(s) destroyed"),
            } + &self.scale_set_counts(),
            deferred,
            failed
        );
        if failed == 0 {
            format!("{what} complete: {counts}")
        } else {
            format!("{what} finished with failures: {counts}")
        }
    }
}

/// Told about each step as it starts and ends (the CLI prints progress from it).
pub trait Progress: Send + Sync {
    fn started(&self, action: Action, name: &str);
    fn finished(&self, report: &StepReport);
}

/// Progress that says nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn started(&self, _: Action, _: &str) {}
    fn finished(&self, _: &StepReport) {}
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("{what}: {source}")]
    Github {
        what: String,
        #[source]
        source: GithubError,
    },
    #[error("{what}: {source}")]
    ScaleSet {
        what: String,
        #[source]
        source: crate::scaleset::ScaleSetError,
    },
    #[error("{0}")]
    Plan(String),
    /// A container that this step did not make holds the runner's name.
    #[error(transparent)]
    NameTaken(DockerError),
}

/// How a step that did not fail ended, and the runner it made.
struct StepResult {
    outcome: Outcome,
    runner: Option<String>,
}

impl StepResult {
    fn done() -> StepResult {
        StepResult {
            outcome: Outcome::Done,
            runner: None,
        }
    }

    fn deferred(why: &str) -> StepResult {
        StepResult {
            outcome: Outcome::Deferred(why.to_string()),
            runner: None,
        }
    }
}

/// Carries out plans against the hosts and GitHub of one spec.
pub struct Executor<'a> {
    spec: &'a Spec,
    observers: &'a Observers,
    observed: &'a Observed,
    pools: BTreeMap<String, ResolvedPool>,
    parallelism: usize,
    /// (host, image) pairs made ready in this apply: each is inspected or pulled once, and
    /// different images at once.
    images_ready: once::OncePerKey<(String, String)>,
    /// Scale set ids by pool, of the scale sets this apply created or updated.
    scale_set_ids: tokio::sync::Mutex<BTreeMap<String, u64>>,
}

/// One step of a phase.
enum Step<'p> {
    Change(&'p Change),
    Deferred(&'p Deferral),
}

impl<'a> Executor<'a> {
    /// `observed` is the observation the plan was made from (runner groups, GPU inventories).
    pub fn new(
        spec: &'a Spec,
        observers: &'a Observers,
        observed: &'a Observed,
        parallelism: usize,
    ) -> Executor<'a> {
        Executor {
            spec,
            observers,
            observed,
            pools: spec
                .resolved_pools()
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            parallelism: parallelism.max(1),
            images_ready: once::OncePerKey::new(),
            scale_set_ids: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Applies `plan`: volumes first, then removals, then creations (so that GPUs and names
    /// freed by a removal are free before a new runner takes them), then what waits. A failed
    /// step does not stop the others.
    pub async fn apply(&self, plan: &Plan, progress: &dyn Progress) -> ApplyReport {
        let phases: [&[Action]; 3] = [
            &[
                Action::CreateVolume,
                Action::CreateScaleSet,
                Action::UpdateScaleSet,
            ],
            &[Action::Destroy, Action::Deregister],
            &[Action::Replace, Action::Create, Action::UpdateRegistration],
        ];
        let mut report = ApplyReport::default();
        for phase in phases {
            let steps = plan
                .changes
                .iter()
                .filter(|c| phase.contains(&c.action()))
                .map(Step::Change);
            report.steps.extend(self.run_phase(steps, progress).await);
        }
        let last = plan.deferred.iter().map(Step::Deferred).chain(
            plan.changes
                .iter()
                .filter(|c| matches!(c.action(), Action::DestroyVolume | Action::DeleteScaleSet))
                .map(Step::Change),
        );
        report.steps.extend(self.run_phase(last, progress).await);
        report
    }

    async fn run_phase<'p>(
        &self,
        steps: impl Iterator<Item = Step<'p>>,
        progress: &dyn Progress,
    ) -> Vec<StepReport> {
        // The futures are made before they are streamed: a closure in the stream would make
        // the apply future !Send (rust-lang/rust#102211), and watch needs it Send.
        let futures: Vec<_> = steps.map(|step| self.step(step, progress)).collect();
        futures_util::stream::iter(futures)
            .buffer_unordered(self.parallelism)
            .collect()
            .await
    }

    async fn step(&self, step: Step<'_>, progress: &dyn Progress) -> StepReport {
        let (action, name) = match &step {
            Step::Change(c) => (c.action(), c.name().to_string()),
            Step::Deferred(d) => (Action::Defer, d.change.name.clone()),
        };
        progress.started(action, &name);
        let started = Instant::now();
        let result = match step {
            Step::Change(change) => self.run(change).await,
            Step::Deferred(deferral) => Ok(StepResult::deferred(&deferral.busy().to_string())),
        };
        let (outcome, runner) = match result {
            Ok(StepResult { outcome, runner }) => (outcome, runner),
            Err(e) => (Outcome::Failed(e.to_string()), None),
        };
        let report = StepReport {
            action,
            name,
            outcome,
            elapsed: started.elapsed(),
            runner,
        };
        progress.finished(&report);
        report
    }

    fn host(&self, name: &str) -> Result<&DockerHost, StepError> {
        self.observers
            .hosts
            .get(name)
            .ok_or_else(|| StepError::Plan(format!("host `{name}` is not in the spec")))
    }

    fn pool(&self, name: &str) -> Result<&ResolvedPool, StepError> {
        self.pools
            .get(name)
            .ok_or_else(|| StepError::Plan(format!("pool `{name}` is not in the spec")))
    }

    async fn run(&self, change: &Change) -> Result<StepResult, StepError> {
        match change {
            Change::Volume(volume) => self.volume(volume).await,
            Change::Registration(r) => self.registration(r).await,
            Change::ScaleSet(set) => self.scale_set(set).await,
            Change::Runner(runner) => self.runner(runner).await,
        }
    }

    async fn volume(&self, volume: &VolumeChange) -> Result<StepResult, StepError> {
        let host = self.host(&volume.host)?;
        match volume.op {
            VolumeOp::Create if volume.quarantine.is_some() => {
                let labels = quarantine_labels(&self.spec.name, volume.quarantine.as_ref());
                host.write()
                    .create_owned_volume(&volume.name, labels, &self.spec.name)
                    .await?;
            }
            VolumeOp::Create => {
                let pool = volume.pool.as_deref().unwrap_or_default();
                let labels = contract::volume_labels(&self.spec.name, pool, None);
                host.write()
                    .create_volume(&volume.name, labels.into_iter().collect())
                    .await?;
            }
            VolumeOp::Destroy => {
                host.write()
                    .remove_owned_volume(&volume.name, &self.spec.name)
                    .await?
            }
        }
        Ok(StepResult::done())
    }

    async fn registration(&self, change: &RegistrationChange) -> Result<StepResult, StepError> {
        let (id, name) = (change.runner_id, &change.name);
        let RegistrationOp::Update { labels, group, .. } = &change.op else {
            return match self.remove_registration(id, name).await? {
                Removal::Busy => Ok(StepResult::deferred(
                    "GitHub says the runner is busy; it is removed after its job",
                )),
                Removal::Removed | Removal::Gone => Ok(StepResult::done()),
            };
        };
        let write = self.observers.github.write();
        let failed = |what: &str| {
            let what = format!("cannot set the {what} of {name} (runner id {id})");
            move |source| StepError::Github { what, source }
        };
        if let Some(labels) = labels {
            write
                .set_custom_labels(id, labels)
                .await
                .map_err(failed("labels"))?;
        }
        if let Some(group) = group {
            write
                .move_to_group(*group, id)
                .await
                .map_err(failed("runner group"))?;
        }
        Ok(StepResult::done())
    }

    async fn remove_registration(&self, id: u64, name: &str) -> Result<Removal, StepError> {
        self.observers
            .github
            .write()
            .delete_runner(id)
            .await
            .map_err(|source| StepError::Github {
                what: format!("cannot remove the registration of {name} (runner id {id})"),
                source,
            })
    }
}

/// The labels of a GPU's quarantine record, stamped with the time of the apply that makes it.
fn quarantine_labels(
    fleet: &str,
    record: Option<&crate::observe::state::QuarantineRecord>,
) -> std::collections::HashMap<String, String> {
    use contract::labels;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut map: std::collections::HashMap<String, String> =
        contract::volume_labels(fleet, "", None)
            .into_iter()
            .collect();
    if let Some(record) = record {
        map.insert(labels::GPU_QUARANTINE.into(), record.uuid.clone());
        map.insert(labels::GPU_QUARANTINE_REASON.into(), record.reason.clone());
        map.insert(labels::GPU_QUARANTINE_SINCE.into(), now.to_string());
        map.insert(
            labels::GPU_QUARANTINE_UNTIL_RESET.into(),
            record.until_reset.to_string(),
        );
    }
    map
}

#[cfg(test)]
mod summary_tests {
    use super::{Action, ApplyReport, Outcome, Run, StepReport};
    use std::time::Duration;

    #[test]
    fn a_deleted_scale_set_counts_as_deleted() {
        let step = |action, name: &str| StepReport {
            action,
            name: name.into(),
            outcome: Outcome::Done,
            elapsed: Duration::ZERO,
            runner: None,
        };
        let report = ApplyReport {
            steps: vec![
                step(Action::Destroy, "zq-auto-abc123"),
                step(Action::DeleteScaleSet, "zq-auto"),
            ],
        };
        assert_eq!(
            report.summary(Run::Destroy),
            "Destroy complete: 0 created, 0 replaced, 1 destroyed, 0 registration(s) removed, 0 volume(s) created, 1 scale set(s) deleted, 0 deferred, 0 failed."
        );
    }
}
