//! One reconcile: observe, plan and apply with the same code and lock as `fleet apply`.
//! `reconcile` returns what it did or why it could not; one error policy turns an error into a
//! metric label and a retry, and a timer records every reconcile's duration when it is dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedSender;

use super::hosts::HostLinks;
use super::metrics::Metrics;
use super::{Env, Trigger, WatchOptions, events, spec_dir};
use crate::apply::{Outcome, Progress, StepReport, lock};
use crate::github::{GithubClient, RetryPolicy};
use crate::observe::inventory::{GpuProbe, ProbeWhen};
use crate::observe::nvml_reader;
use crate::observe::state::Observed;
use crate::observe::{ObserveError, ObserveOptions, Observers};
use crate::plan::{self, Action, PlanError};
use crate::spec::{self, Spec};

/// What a reconcile did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reconciled {
    /// The spec file was saved without a change: nothing looked at, nothing counted.
    Unchanged,
    /// Observed and planned; applied when there was something to do (`failed`: a step failed).
    Converged { failed: bool },
}

/// Why a reconcile could not converge.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReconcileError {
    /// The spec file is invalid and nothing else asked for a reconcile.
    #[error("{0} is invalid; the last valid spec stays in force")]
    InvalidSpec(String),
    #[error("{0}")]
    Lock(String),
    /// The GitHub client could not be set up (credentials).
    #[error("{0}")]
    Connect(ObserveError),
    #[error("{0}")]
    Observe(ObserveError),
    #[error("no plan: {0}")]
    Plan(PlanError),
}

impl ReconcileError {
    /// The error policy: the metric's `result` label, and whether to retry with backoff (an
    /// invalid spec or a plan error waits for the next trigger instead: retrying changes
    /// nothing).
    fn policy(&self) -> (&'static str, bool) {
        match self {
            ReconcileError::InvalidSpec(_) => ("invalid_spec", false),
            ReconcileError::Plan(_) => ("plan_error", false),
            ReconcileError::Lock(_) | ReconcileError::Connect(_) | ReconcileError::Observe(_) => {
                ("error", true)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            ReconcileError::Connect(e) => match e.hint() {
                Some(hint) => format!("{e} ({hint})"),
                None => e.to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// Records a reconcile's trigger, result and duration when dropped, unless skipped.
struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    board: &'a crate::web::Board,
    trigger: &'static str,
    started: Instant,
    result: Option<&'static str>,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        if let Some(result) = self.result {
            let seconds = self.started.elapsed().as_secs_f64();
            self.metrics.reconciled(self.trigger, result, seconds);
            self.board.reconciled(crate::web::board::LastReconcile {
                ended_at: unix_now(),
                trigger: self.trigger.to_string(),
                result: result.to_string(),
                duration_seconds: seconds,
            });
        }
    }
}

/// The state the watch loop keeps between reconciles.
pub(super) struct Loop {
    pub file: PathBuf,
    pub spec: Spec,
    pub options: WatchOptions,
    pub env: Env,
    pub metrics: Arc<Metrics>,
    /// What the status page shows (src/web/).
    pub board: Arc<crate::web::Board>,
    /// Made once, again when the spec's `github` changes; with its scale set client, which
    /// keeps the service's admin token between reconciles.
    pub github: Option<(GithubClient, Option<crate::scaleset::ScaleSetClient>)>,
    /// Each host's connection, kept (and reconnected) by its own task.
    pub links: HostLinks,
    /// Inventories of remote `gpus: auto` hosts, kept for a while.
    pub gpu_probe: Arc<GpuProbe>,
    pub backoff: Duration,
    pub retry_pending: bool,
    pub tx: UnboundedSender<Trigger>,
    /// The listeners of autoscaled pools and what they know.
    pub autoscale: super::autoscale::Listeners,
    pub history: crate::history::record::WatchHistory,
    /// The jobs of fixed pools' busy runners (history and the status page).
    pub fixed_jobs: super::fixed_jobs::FixedJobs,
}

/// Logs each step and counts it.
struct WatchProgress<'a> {
    metrics: &'a Metrics,
    exits: &'a BTreeMap<String, SystemTime>,
    history: (
        &'a crate::history::Recorder,
        crate::history::record::ActionContext,
    ),
}

impl Progress for WatchProgress<'_> {
    fn started(&self, _: Action, _: &str) {}

    fn finished(&self, report: &StepReport) {
        let (name, action) = (&report.name, report.action.as_str());
        let result = match &report.outcome {
            Outcome::Done => {
                let now = report
                    .runner
                    .as_ref()
                    .filter(|r| *r != name)
                    .map(|r| format!(", now {r}"))
                    .unwrap_or_default();
                let secs = report.elapsed.as_secs_f64();
                tracing::info!("{name}: {action} done ({secs:.1}s){now}");
                if report.action == Action::Replace
                    && let Some(at) = self.exits.get(name)
                    && let Ok(latency) = SystemTime::now().duration_since(*at)
                {
                    self.metrics.replaced_after(latency.as_secs_f64());
                }
                "done"
            }
            Outcome::Deferred(why) => {
                tracing::info!("{name}: {action} deferred: {why}");
                "deferred"
            }
            Outcome::Failed(cause) => {
                tracing::error!("{name}: {action} failed: {cause}");
                "failed"
            }
        };
        self.metrics.action(action, result);
        if let Some(event) = self.history.1.event(report) {
            self.history.0.send(event);
        }
    }
}

/// The trigger a reconcile is counted under: the first of these that is among its triggers.
fn trigger_name(triggers: &[Trigger]) -> &'static str {
    [
        "spec",
        "gpu",
        "docker",
        "host",
        "autoscale",
        "retry",
        "start",
        "resync",
    ]
    .into_iter()
    .find(|name| triggers.iter().any(|t| t.name() == *name))
    .unwrap_or("resync")
}

impl Loop {
    /// Reconciles for `triggers`, then applies the error policy.
    pub async fn run_once(&mut self, triggers: &[Trigger]) {
        if triggers.iter().any(|t| matches!(t, Trigger::Retry)) {
            self.retry_pending = false;
        }
        for trigger in triggers {
            if let Trigger::Host { host, up } = trigger {
                let now = if *up { "answers again" } else { "went away" };
                tracing::info!("host `{host}` {now}: reconciling");
            }
            match trigger {
                Trigger::Gpu { uuid, what } if uuid.is_empty() => {
                    tracing::info!("NVML: {what}: reconciling")
                }
                Trigger::Gpu { uuid, what } => tracing::info!("GPU {uuid}: {what}: reconciling"),
                _ => {}
            }
        }
        let (metrics, board) = (self.metrics.clone(), self.board.clone());
        let mut timer = ReconcileTimer {
            metrics: &metrics,
            board: &board,
            trigger: trigger_name(triggers),
            started: Instant::now(),
            result: None,
        };
        let pools: Vec<&str> = triggers
            .iter()
            .filter_map(|t| match t {
                Trigger::Autoscale { pool } => Some(pool.as_str()),
                _ => None,
            })
            .collect();
        tracing::debug!(
            "reconcile for {} trigger(s), first `{}`{}",
            triggers.len(),
            timer.trigger,
            if pools.is_empty() {
                String::new()
            } else {
                format!(", jobs of pool(s) {}", pools.join(", "))
            }
        );
        for t in triggers {
            if let Trigger::Docker {
                container,
                action,
                at,
                recheck: 0,
            } = t
            {
                self.history.docker_event(container, action, *at);
            }
        }
        match self.reconcile(triggers, &timer).await {
            Ok(Reconciled::Unchanged) => {}
            Ok(Reconciled::Converged { failed }) => {
                timer.result = Some(if failed { "failed" } else { "ok" });
            }
            Err(e) => {
                let (label, retry) = e.policy();
                timer.result = Some(label);
                if retry {
                    self.schedule_retry(&e.describe());
                } else if !matches!(e, ReconcileError::InvalidSpec(_)) {
                    tracing::error!("{e}");
                }
            }
        }
        if let Some(result) = timer.result {
            let seconds = timer.started.elapsed().as_secs_f64();
            self.history.reconciled(timer.trigger, result, seconds);
        }
    }

    fn schedule_retry(&mut self, why: &str) {
        tracing::warn!("{why}; retrying in {}s", self.backoff.as_secs());
        if !self.retry_pending {
            self.retry_pending = true;
            let tx = self.tx.clone();
            let wait = self.backoff;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send(Trigger::Retry);
            });
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(60));
    }

    /// Sends again, after their wait, the Docker events this observation contradicts.
    fn recheck_lagging_events(&self, triggers: &[Trigger], observed: &Observed) {
        for (wait, again) in events::lagging_events(triggers, observed) {
            if let Trigger::Docker {
                container, action, ..
            } = &again
            {
                tracing::debug!(
                    "Docker still lists {container} as before its `{action}` event; looking again in {}ms",
                    wait.as_millis()
                );
            }
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send(again);
            });
        }
    }

    /// Reloads the spec when the file changed. `Ok(false)`: nothing else to do.
    fn reload_spec(
        &mut self,
        triggers: &[Trigger],
        timer: &ReconcileTimer,
    ) -> Result<bool, ReconcileError> {
        if !triggers.iter().any(|t| matches!(t, Trigger::Spec)) {
            return Ok(true);
        }
        let only_spec = triggers.iter().all(|t| matches!(t, Trigger::Spec));
        match spec::load(&self.file) {
            Ok(new) if new != self.spec => {
                tracing::info!("{} changed; converging to it", self.file.display());
                if new.github != self.spec.github {
                    // New clients, and listeners that use them.
                    self.github = None;
                    self.autoscale.restart();
                }
                self.spec = new;
                Ok(true)
            }
            Ok(_) => Ok(!only_spec), // saved without a change
            Err(e) => {
                tracing::error!(
                    "{} is invalid; the last valid spec stays in force and nothing is done for this change:\n{}",
                    self.file.display(),
                    e.render()
                );
                if only_spec {
                    return Err(ReconcileError::InvalidSpec(self.file.display().to_string()));
                }
                let seconds = timer.started.elapsed().as_secs_f64();
                self.metrics
                    .reconciled(timer.trigger, "invalid_spec", seconds);
                Ok(true)
            }
        }
    }

    /// Observers of the hosts that are up (the others are unobserved), with the GitHub client;
    /// new host links first when the spec's hosts changed.
    async fn connected(&mut self) -> Result<Observers, ReconcileError> {
        let base = spec_dir(&self.file);
        if !self.links.serve(&self.spec) {
            // Only the hosts whose entries changed are connected again.
            let env = self.env.clone();
            let connected = self
                .links
                .update(&self.spec, &base, env, self.tx.clone())
                .await;
            tracing::debug!("hosts connected for the new spec: {}", connected.join(", "));
        }
        let (github, scale_sets) = match &self.github {
            Some(clients) => clients.clone(),
            None => {
                let github =
                    GithubClient::from_spec(&self.spec, &base, &*self.env, RetryPolicy::default())
                        .map_err(|e| ReconcileError::Connect(ObserveError::Github(e)))?;
                let clients = (github.clone(), crate::observe::scale_set_client(&github));
                self.github = Some(clients.clone());
                clients
            }
        };
        // One reading of the links: a host that comes up in between is in one of the two sets,
        // never in neither (its runners would look like orphans).
        let (up, down) = self.links.split();
        Ok(Observers::from_connections(
            up,
            github,
            scale_sets,
            down.into_keys().collect(),
            self.gpu_probe.clone(),
        ))
    }

    /// Observes the hosts that are up, each within the host timeout; a host that fails is
    /// marked down (its task reconnects) and left out of this reconcile.
    async fn observe(&self, observers: &Observers) -> Result<Observed, ObserveError> {
        let options = ObserveOptions {
            tolerate_down_hosts: true,
            host_limit: Some(self.options.host_timeout),
            probe: ProbeWhen::Needed,
        };
        let observation = observers.observe_with(&self.spec, options).await?;
        for (host, e) in &observation.failed {
            tracing::warn!(
                "{e}; host `{host}` is left out (its runners and registrations untouched) until it answers again"
            );
            self.links.mark_down(host, e.to_string());
        }
        Ok(observation.observed)
    }

    /// [`Loop::observe`], the runner scale sets, and what the autoscale listeners know.
    async fn observe_all(&self, observers: &Observers) -> Result<Observed, ObserveError> {
        let mut observed = self.observe(observers).await?;
        // While the service is known down, a reconcile does not wait for the client's
        // retries to learn it again.
        let health = &self.autoscale.health;
        match health.known_down(Instant::now()) {
            Some(why) => observed.github.scale_set_error = Some(why),
            None => {
                observers.read_scale_sets(&self.spec, &mut observed).await;
                let error = observed.github.scale_set_error.as_deref();
                health.read(Instant::now(), error);
            }
        }
        self.autoscale.add_demand(&mut observed);
        Ok(observed)
    }

    async fn reconcile(
        &mut self,
        triggers: &[Trigger],
        timer: &ReconcileTimer<'_>,
    ) -> Result<Reconciled, ReconcileError> {
        if !self.reload_spec(triggers, timer)? {
            return Ok(Reconciled::Unchanged);
        }
        let name = self.spec.name.clone();
        let timeout = self.options.lock_timeout;
        let _lock =
            tokio::task::spawn_blocking(move || lock::acquire(&name, "fleet watch", timeout))
                .await
                .map_err(|e| ReconcileError::Lock(e.to_string()))?
                .map_err(|e| ReconcileError::Lock(e.to_string()))?;
        let observers = self.connected().await?;
        self.autoscale
            .keep_listening(&self.spec, &observers, &self.metrics, &self.tx);
        let observed = match self.observe_all(&observers).await {
            Ok(observed) => observed,
            Err(e) => {
                // Never act on a partial view of GitHub: no plan, nothing destroyed.
                self.metrics.github(&observers.github.stats());
                return Err(ReconcileError::Observe(e));
            }
        };
        self.backoff = Duration::from_secs(1);
        self.history.exits(&observed);
        self.recheck_lagging_events(triggers, &observed);
        let plan = match plan::plan(&self.spec, &observed) {
            Ok(plan) => plan,
            Err(e) => {
                self.update_gauges(&observers, &observed);
                return Err(ReconcileError::Plan(e));
            }
        };
        self.autoscale
            .planned(&self.spec, &observers, &plan, &self.metrics);
        self.history.planned(&plan);
        self.board.planned(&plan);
        self.metrics.gpu.planned(&plan);
        let failed = self
            .converge(triggers, timer.trigger, &observers, &observed, &plan)
            .await;
        Ok(Reconciled::Converged { failed })
    }

    /// Applies `plan` when it has something to do now, then refreshes the gauges. Returns
    /// whether a step failed.
    async fn converge(
        &self,
        triggers: &[Trigger],
        trigger: &str,
        observers: &Observers,
        observed: &Observed,
        plan: &plan::Plan,
    ) -> bool {
        let mut failed = false;
        if plan.changes.is_empty() {
            tracing::debug!(
                "{} ({trigger}): nothing to do ({} change(s) deferred or kept)",
                self.spec.name,
                plan.len()
            );
        } else {
            tracing::info!(
                "{} ({trigger}): {}",
                self.spec.name,
                crate::render::summary_line(&plan.summary())
            );
            let exits: BTreeMap<String, SystemTime> = triggers
                .iter()
                .filter_map(|t| match t {
                    Trigger::Docker { container, at, .. } => Some((container.clone(), *at)),
                    _ => None,
                })
                .collect();
            let progress = WatchProgress {
                metrics: &self.metrics,
                exits: &exits,
                history: (
                    &self.history.recorder,
                    crate::history::record::ActionContext::new(plan, crate::history::Source::Watch),
                ),
            };
            let report = crate::fanout::apply_by_host(
                &self.spec,
                observers,
                observed,
                plan,
                self.options.parallelism,
                &progress,
            )
            .await;
            failed = report.failed().next().is_some();
        }
        // Gauges from a fresh look when something changed, else from what was observed. The
        // fresh look also tells the listeners of scale sets this apply created.
        let fresh = if plan.changes.is_empty() {
            None
        } else {
            self.observe_all(observers).await.ok()
        };
        self.update_gauges(observers, fresh.as_ref().unwrap_or(observed));
        failed
    }

    fn update_gauges(&self, observers: &Observers, observed: &Observed) {
        // The NVML reading of this reconcile's observation: NVML is not called again here.
        let devices = nvml_reader::reader()
            .latest()
            .and_then(Result::ok)
            .map(|reading| reading.report.devices.clone())
            .unwrap_or_default();
        let now = unix_now();
        let mut status = crate::status::build(&self.spec, observed, &devices, now);
        for (host, why) in self.links.down() {
            status.note_unobserved(&host, why);
        }
        self.autoscale.add_jobs(&mut status);
        self.fixed_jobs
            .observed(&mut status, &observers.github, &self.history.recorder);
        let local = observers
            .hosts
            .values()
            .find(|h| h.is_local())
            .map(|h| h.name.clone())
            .unwrap_or_default();
        self.metrics.observe_status(&status, &local);
        self.metrics.gpu.observed(
            observed,
            &local,
            self.spec.gpu_health_settings().dirty_grace,
        );
        let github = &observed.github;
        let read = (github.scale_sets.is_some() || github.scale_set_error.is_some())
            .then_some(github.scale_set_error.is_none());
        self.metrics.scale_sets_read(read);
        self.history.observed(&status, &local);
        self.metrics.github(&observers.github.stats());
        self.board.observed(status, now);
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
