//! One listener per autoscaled pool: a message session on the pool's runner scale set,
//! long-polled for job messages. It keeps what it learns (jobs assigned, runners busy, the
//! scale set's statistics) in the shared [`Demand`] and asks the watch loop for a reconcile;
//! the reconcile plans `min(max, min_idle + assigned)` runners, capped by free GPUs, and tells
//! the listener the capacity to advertise (`X-ScaleSetMaxCapacity`), so GitHub never assigns
//! more than fleet can start. Messages are acknowledged once handled; a restarted listener gets
//! the unacknowledged ones again, and the statistics say what is assigned (docs/autoscale.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use super::Trigger;
use super::gha_metrics::{ScaleSetLabels, scale_set_labels};
use super::metrics::Metrics;
use crate::github::GithubScope;
use crate::observe::Observers;
use crate::observe::state::{Observed, PoolLoad};
use crate::plan::Plan;
use crate::scaleset::listener::JobTracker;
use crate::scaleset::{JobMessage, Poll, ScaleSetClient, ScaleSetError, ScaleSetMessage, Session};
use crate::spec::Spec;
use crate::status::{FleetStatus, RunnerJob};

/// How long one long poll may last (the service answers an idle one after about 50 s).
const POLL_HOLD: Duration = crate::scaleset::LONG_POLL;

/// What one pool's listener knows, shared with the reconcile loop.
#[derive(Debug, Clone, Default)]
pub struct PoolDemand {
    /// The scale set's id, once the reconcile has seen or made it.
    pub scale_set_id: Option<u64>,
    /// Jobs assigned to the scale set (waiting or running), once a session told.
    pub assigned: Option<u32>,
    /// Jobs queued for it that GitHub has not assigned yet.
    pub queued: u32,
    /// Runners running a job, by name.
    pub busy: BTreeSet<String>,
    /// The jobs they run, by runner name, for the status page.
    pub jobs: BTreeMap<String, RunnerJob>,
    /// The capacity to advertise, set by the reconcile from its plan.
    pub capacity: u32,
    /// Whether a message session is open.
    pub session: bool,
}

/// Every autoscaled pool's demand, by pool.
pub type Demand = Arc<Mutex<BTreeMap<String, PoolDemand>>>;

/// One pool's listener task: the scale set it listens on, and how to stop it.
struct Running {
    scale_set: String,
    task: tokio::task::JoinHandle<()>,
    /// Set to true to stop the listener: it ends its poll and deletes its session.
    stop: tokio::sync::watch::Sender<bool>,
}

/// The listeners of the spec's autoscaled pools, and what they know.
#[derive(Default)]
pub struct Listeners {
    demand: Demand,
    running: BTreeMap<String, Running>,
    /// Where the listeners record the jobs they learn of.
    history: crate::history::Recorder,
    /// Whether the scale set service is known to be down; the listeners tell when it answers.
    pub health: super::outage::ServiceHealth,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for listener in self.running.values() {
            listener.task.abort();
        }
    }
}

impl Listeners {
    /// Listeners that record the jobs they learn of in `history`.
    pub fn recording(history: crate::history::Recorder) -> Listeners {
        let mut listeners = Listeners::default();
        listeners.history = history;
        listeners
    }

    /// Starts a listener for each autoscaled pool that has none (or whose scale set was
    /// renamed), and stops those of pools that no longer autoscale.
    pub fn keep_listening(
        &mut self,
        spec: &Spec,
        observers: &Observers,
        metrics: &Arc<Metrics>,
        tx: &UnboundedSender<Trigger>,
    ) {
        let wanted: BTreeMap<String, String> = spec
            .resolved_pools()
            .into_iter()
            .filter_map(|p| p.autoscale.map(|a| (p.name, a.scale_set)))
            .collect();
        self.running.retain(|pool, listener| {
            let keep =
                wanted.get(pool) == Some(&listener.scale_set) && !listener.task.is_finished();
            if !keep {
                // It ends its poll and deletes its session on its own (the task goes on
                // until it has).
                listener.stop.send_replace(true);
                lock(&self.demand).remove(pool);
            }
            keep
        });
        let Some(client) = &observers.scale_sets else {
            return;
        };
        let ctx = ListenerContext {
            client: client.clone(),
            demand: self.demand.clone(),
            metrics: metrics.clone(),
            tx: tx.clone(),
            owner: crate::scaleset::session_owner(&spec.name),
            history: self.history.clone(),
            sessions: self.health.session_counter(),
        };
        for (pool, set) in wanted {
            if self.running.contains_key(&pool) {
                continue;
            }
            let labels = labels_of(observers, &set, &pool);
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(listen(pool.clone(), labels, ctx.clone(), stopped));
            let listener = Running {
                scale_set: set,
                task,
                stop,
            };
            self.running.insert(pool, listener);
        }
    }

    /// Stops every listener (each deletes its session with the client it has) and forgets
    /// what they knew: the next reconcile starts new ones with the clients it has then (the
    /// spec's `github` changed).
    pub fn restart(&mut self) {
        for listener in std::mem::take(&mut self.running).into_values() {
            listener.stop.send_replace(true);
        }
        lock(&self.demand).clear();
        // Another service, perhaps: asked at once.
        self.health.read(std::time::Instant::now(), None);
    }

    /// Stops every listener: each ends its poll and deletes its message session, within
    /// `grace` (SIGTERM, SIGINT). A restarted watch then opens its sessions at once.
    pub async fn stop(&mut self, grace: Duration) {
        let running = std::mem::take(&mut self.running);
        for listener in running.values() {
            listener.stop.send_replace(true);
        }
        let tasks = running.into_values().map(|l| l.task);
        if tokio::time::timeout(grace, futures_util::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                "stopping: a listener did not delete its message session within {}s; it lapses on the service",
                grace.as_secs()
            );
        }
    }

    /// Puts what the listeners know into an observation: the jobs assigned to each pool whose
    /// listener has a session, and the runners they know to be busy (a job may start before
    /// GitHub's runner list says so: a busy runner is never stopped).
    pub fn add_demand(&self, observed: &mut Observed) {
        let all = lock(&self.demand);
        for (pool, demand) in all.iter() {
            if let (true, Some(assigned)) = (demand.session, demand.assigned) {
                let load = PoolLoad {
                    assigned,
                    queued: demand.queued,
                };
                observed.demand.insert(pool.clone(), load);
            }
            for runner in observed.github.runners.iter_mut() {
                if demand.busy.contains(&runner.name) {
                    runner.busy = true;
                }
            }
        }
        drop(all);
        self.learn_scale_sets(observed);
    }

    /// Tells each runner of an autoscaled pool the job it runs, as the scale set's messages
    /// described it.
    pub fn add_jobs(&self, status: &mut FleetStatus) {
        let all = lock(&self.demand);
        for pool in status.pools.iter_mut() {
            let Some(demand) = all.get(&pool.name) else {
                continue;
            };
            for runner in pool.runners.iter_mut() {
                if let Some(job) = demand.jobs.get(&runner.name) {
                    runner.job = Some(job.clone());
                }
            }
        }
    }

    /// Records the ids of the pools' scale sets, so that their listeners can open sessions.
    pub fn learn_scale_sets(&self, observed: &Observed) {
        let mut all = lock(&self.demand);
        for (pool, listener) in &self.running {
            let set = &listener.scale_set;
            let id = observed
                .github
                .scale_sets
                .iter()
                .flatten()
                .find(|s| crate::contract::same_scale_set_name(&s.name, set))
                .map(|s| s.id);
            if let Some(id) = id {
                all.entry(pool.clone()).or_default().scale_set_id = Some(id);
            }
        }
    }

    /// Tells each listener the capacity its pool can take after this plan, and exports what
    /// the plan wants.
    pub fn planned(&self, spec: &Spec, observers: &Observers, plan: &Plan, metrics: &Metrics) {
        let mut all = lock(&self.demand);
        for pool in &plan.autoscale {
            all.entry(pool.pool.clone()).or_default().capacity = pool.capacity();
            let labels = labels_of(observers, &pool.scale_set, &pool.pool);
            metrics.autoscale.planned(&labels, pool);
            if let Some((jobs, why)) = pool.waiting {
                tracing::info!(
                    "fleet `{}`, pool `{}`: {jobs} job(s) wait for a runner ({})",
                    spec.name,
                    pool.pool,
                    why.as_str()
                );
            }
        }
    }
}

/// The metric labels of pool `pool`'s scale set `set`.
fn labels_of(observers: &Observers, set: &str, pool: &str) -> ScaleSetLabels {
    match observers.github.scope() {
        GithubScope::Repo { owner, repo } => {
            scale_set_labels(set, Some(&format!("{owner}/{repo}")), owner, pool)
        }
        GithubScope::Org(org) => scale_set_labels(set, None, org, pool),
    }
}

/// Reads the shared demand, whatever another thread did while holding it.
pub fn lock(demand: &Demand) -> std::sync::MutexGuard<'_, BTreeMap<String, PoolDemand>> {
    demand.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a listener needs besides its pool.
#[derive(Clone)]
pub struct ListenerContext {
    pub client: ScaleSetClient,
    pub demand: Demand,
    pub metrics: Arc<Metrics>,
    pub tx: UnboundedSender<Trigger>,
    /// Who holds the session (`fleet-<fleet>@<host>`), shown to whoever finds it taken.
    pub owner: String,
    pub history: crate::history::Recorder,
    /// Raised for each session opened: the service answers (src/watch/outage.rs).
    pub sessions: Arc<std::sync::atomic::AtomicU64>,
}

/// The longest wait between two attempts to open a session (the service down, or a session
/// of another listener still open).
const SESSION_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How a session's polling ended.
enum SessionEnd {
    /// The listener was told to stop.
    Stopped,
    /// The session is gone on the service, or failed in a way a new session may cure.
    Lost,
}

/// Sleeps `wait` unless the listener is stopped first; false when it was.
async fn pause(stop: &mut tokio::sync::watch::Receiver<bool>, wait: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    !stopped && !*stop.borrow()
}

/// A listener for `pool` whose scale set is `scale_set`: runs until `stop` turns true (then
/// it deletes its session) or the channel closes. While the service fails it opens sessions
/// again with backoff, 1 s doubling to [`SESSION_BACKOFF_CAP`].
pub async fn listen(
    pool: String,
    labels: ScaleSetLabels,
    ctx: ListenerContext,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut tracker = JobTracker::new();
    // A session that could not be deleted when it ended (the service was down): deleted
    // before a new one is opened, so that the new one is not refused while it lapses.
    let mut stale: Option<Session> = None;
    while !ctx.tx.is_closed() && !*stop.borrow() {
        if let Some(old) = stale.take()
            && ctx.client.delete_session(&old).await.is_err()
        {
            stale = Some(old);
        }
        let Some(id) = lock(&ctx.demand).get(&pool).and_then(|d| d.scale_set_id) else {
            // The reconcile has not seen or made the scale set yet.
            if !pause(&mut stop, Duration::from_secs(1)).await {
                break;
            }
            continue;
        };
        let opened = tokio::select! {
            opened = ctx.client.create_session(id, &ctx.owner) => opened,
            _ = stop.wait_for(|s| *s) => break,
        };
        match opened {
            Ok(session) => {
                backoff = Duration::from_secs(1);
                ctx.sessions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("pool `{pool}`: listening on scale set {id}");
                let end =
                    run_session(&pool, &labels, &ctx, &session, &mut tracker, &mut stop).await;
                if let SessionEnd::Stopped = end {
                    close(&pool, &ctx, &session).await;
                    return;
                }
                set(&ctx.demand, &pool, |d| d.session = false);
                if ctx.client.delete_session(&session).await.is_err() {
                    stale = Some(session);
                }
            }
            Err(ScaleSetError::SessionConflict { .. }) => tracing::warn!(
                "pool `{pool}`: scale set {id} has a message session already (another listener, or one that stopped without closing it); waiting {}s for it to end",
                backoff.as_secs()
            ),
            Err(e) => tracing::warn!(
                "pool `{pool}`: cannot open a message session: {e}; retrying in {}s",
                backoff.as_secs()
            ),
        }
        if !pause(&mut stop, backoff).await {
            break;
        }
        backoff = (backoff * 2).min(SESSION_BACKOFF_CAP);
    }
    if let Some(old) = stale {
        close(&pool, &ctx, &old).await;
    }
}

/// Deletes a session on the way out, as actions-runner-controller's listener does: the next
/// listener opens its own at once instead of waiting for this one to lapse.
async fn close(pool: &str, ctx: &ListenerContext, session: &Session) {
    match ctx.client.delete_session(session).await {
        Ok(()) => tracing::info!("pool `{pool}`: message session closed"),
        Err(e) => tracing::warn!(
            "pool `{pool}`: cannot delete its message session ({e}); it lapses on the service"
        ),
    }
}

fn set(demand: &Demand, pool: &str, change: impl FnOnce(&mut PoolDemand)) {
    let mut all = lock(demand);
    change(all.entry(pool.to_string()).or_default());
}

/// Polls one session until it ends (stopped, gone on the service, or an error that a new
/// session may cure).
async fn run_session(
    pool: &str,
    labels: &ScaleSetLabels,
    ctx: &ListenerContext,
    session: &Session,
    tracker: &mut JobTracker,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> SessionEnd {
    tracker.start_session(session.statistics);
    publish(pool, labels, ctx, tracker);
    let mut errors = 0u32;
    while !ctx.tx.is_closed() {
        let capacity = lock(&ctx.demand).get(pool).map_or(0, |d| d.capacity);
        let poll = Poll {
            last_message_id: tracker.last_message_id(),
            max_capacity: capacity,
            timeout: POLL_HOLD,
        };
        let polled = tokio::select! {
            polled = ctx.client.get_message(session, &poll) => polled,
            _ = stop.wait_for(|s| *s) => return SessionEnd::Stopped,
        };
        match polled {
            Ok(None) => errors = 0,
            Ok(Some(message)) => {
                errors = 0;
                handle(pool, labels, ctx, session, tracker, &message).await;
            }
            Err(ScaleSetError::NotFound { .. }) => return SessionEnd::Lost,
            Err(e) if e.is_transient() && errors < 5 => {
                errors += 1;
                tracing::warn!("pool `{pool}`: polling its scale set failed: {e}; polling again");
                if !pause(stop, Duration::from_secs(u64::from(errors))).await {
                    return SessionEnd::Stopped;
                }
            }
            Err(e) => {
                tracing::warn!(
                    "pool `{pool}`: polling its scale set failed: {e}; opening a new session"
                );
                return SessionEnd::Lost;
            }
        }
    }
    SessionEnd::Stopped
}

/// Handles one message: acquire what is offered, record what started and finished, publish
/// the demand and ask for a reconcile, then acknowledge it.
async fn handle(
    pool: &str,
    labels: &ScaleSetLabels,
    ctx: &ListenerContext,
    session: &Session,
    tracker: &mut JobTracker,
    message: &ScaleSetMessage,
) {
    let observation = tracker.observe(message);
    if !observation.duplicate {
        for skipped in &message.skipped {
            tracing::warn!("pool `{pool}`: a scale set message was not understood: {skipped}");
        }
        if !observation.to_acquire.is_empty()
            && let Err(e) = ctx
                .client
                .acquire_jobs(session, &observation.to_acquire)
                .await
        {
            // Not acknowledged: the message comes again and its jobs are acquired then.
            tracing::warn!(
                "pool `{pool}`: cannot acquire offered jobs: {e}; message {} is handled again when it comes back",
                message.id
            );
            tracker.handle_again(message.id, &observation.to_acquire);
            return;
        }
        record_jobs(labels, &ctx.metrics, message);
        for job in &message.jobs {
            ctx.history
                .send(crate::history::record::job_event(pool, job));
            if let Some(waited) = crate::history::record::queue_seconds(job) {
                ctx.metrics.job_queued(pool, waited);
            }
        }
        publish(pool, labels, ctx, tracker);
    }
    if let Err(e) = ctx.client.delete_message(session, message.id).await {
        tracing::warn!(
            "pool `{pool}`: cannot acknowledge message {}: {e}; it comes again",
            message.id
        );
    }
}

/// Shares what the tracker knows and asks the watch loop to reconcile.
fn publish(pool: &str, labels: &ScaleSetLabels, ctx: &ListenerContext, tracker: &JobTracker) {
    set(&ctx.demand, pool, |d| {
        d.assigned = Some(tracker.assigned_jobs());
        d.queued = tracker.statistics().map_or(0, |s| s.total_available_jobs);
        d.busy = tracker.busy_runners();
        d.jobs = tracker
            .running_jobs()
            .into_iter()
            .map(|(runner, job)| (runner, runner_job(&job)))
            .collect();
        d.session = true;
    });
    if let Some(statistics) = tracker.statistics() {
        ctx.metrics.autoscale.statistics(labels, &statistics);
    }
    let _ = ctx.tx.send(Trigger::Autoscale {
        pool: pool.to_string(),
    });
}

/// A job message's details as the status document tells them.
fn runner_job(job: &crate::scaleset::JobInfo) -> RunnerJob {
    let repository = match (job.owner_name.as_str(), job.repository_name.as_str()) {
        ("", name) | (name, "") => name.to_string(),
        (owner, name) => format!("{owner}/{name}"),
    };
    let started_at = rfc3339(&job.runner_assign_time)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok());
    RunnerJob {
        repository,
        workflow: job.job_workflow_ref.clone(),
        job_name: job.job_display_name.clone(),
        run_id: Some(job.workflow_run_id).filter(|id| *id != 0),
        started_at,
        url: None,
    }
}

/// Job counters and durations, as actions-runner-controller's listener exports them.
fn record_jobs(labels: &ScaleSetLabels, metrics: &Metrics, message: &ScaleSetMessage) {
    for job in &message.jobs {
        match job {
            JobMessage::Started { job, .. } => {
                metrics.autoscale.job_started(labels);
                if let Some(seconds) = between(&job.scale_set_assign_time, &job.runner_assign_time)
                {
                    metrics.autoscale.job_startup(labels, seconds);
                }
            }
            JobMessage::Completed { job, result, .. } => {
                metrics.autoscale.job_completed(labels, result);
                if let Some(seconds) = between(&job.runner_assign_time, &job.finish_time) {
                    metrics.autoscale.job_execution(labels, seconds);
                }
            }
            JobMessage::Available(_) | JobMessage::Assigned(_) => {}
        }
    }
}

/// Seconds from one RFC 3339 time to a later one; `None` when either is missing, Go's zero time
/// (`0001-01-01T00:00:00Z`: the step has not happened) or not later.
fn between(from: &Option<String>, to: &Option<String>) -> Option<f64> {
    rfc3339(to)?
        .duration_since(rfc3339(from)?)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// An RFC 3339 time; `None` when missing or Go's zero time (`0001-01-01T00:00:00Z`: the step
/// has not happened).
fn rfc3339(t: &Option<String>) -> Option<SystemTime> {
    let t = t.as_deref()?;
    if t.starts_with("0001-") {
        return None;
    }
    humantime::parse_rfc3339_weak(t).ok()
}

#[cfg(test)]
mod tests {
    use super::{between, runner_job};

    #[test]
    fn durations_between_job_times() {
        let t = |s: &str| Some(s.to_string());
        assert_eq!(
            between(&t("2026-11-30T10:00:00Z"), &t("2026-11-30T10:00:02.5Z")),
            Some(2.5)
        );
        assert_eq!(
            between(&t("0001-01-01T00:00:00Z"), &t("2026-11-30T10:00:00Z")),
            None
        );
        assert_eq!(between(&None, &t("2026-11-30T10:00:00Z")), None);
        assert_eq!(
            between(&t("2026-11-30T10:00:02Z"), &t("2026-11-30T10:00:00Z")),
            None
        );
    }

    #[test]
    fn a_started_job_tells_its_repository_workflow_name_run_and_start() {
        let job = crate::scaleset::JobInfo {
            owner_name: "acme".into(),
            repository_name: "zquic".into(),
            job_workflow_ref: "acme/zquic/.github/workflows/ci.yml@refs/heads/main".into(),
            job_display_name: "test (gpu)".into(),
            workflow_run_id: 991,
            runner_assign_time: Some("2026-11-30T10:00:00Z".into()),
            ..Default::default()
        };
        let shown = runner_job(&job);
        assert_eq!(shown.repository, "acme/zquic");
        assert_eq!(shown.job_name, "test (gpu)");
        assert_eq!(shown.run_id, Some(991));
        assert_eq!(shown.started_at, Some(1_796_032_800));
        let untold = runner_job(&crate::scaleset::JobInfo {
            runner_assign_time: Some("0001-01-01T00:00:00Z".into()),
            ..Default::default()
        });
        assert_eq!((untold.run_id, untold.started_at), (None, None));
    }
}
