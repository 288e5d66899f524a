//! `fleet watch`: the always-on control plane. One loop observes, plans and applies with the
//! same code and the same lock as `fleet apply`, whenever the spec file changes, an owned
//! container dies, or the resync timer fires. Triggers that arrive together are coalesced, and
//! two reconciles never run at once (there is one loop).

pub mod metrics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::apply::{Executor, Outcome, Progress, StepReport, lock};
use crate::observe::Observers;
use crate::observe::docker::DockerHost;
use crate::observe::github::RetryPolicy;
use crate::observe::gpu::nvml_devices;
use crate::observe::state::labels;
use crate::plan::{self, Action, Change};
use crate::spec::{self, Spec};
use metrics::Metrics;

/// Reads environment variables (shared with the tasks that reconnect to Docker).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How `watch` runs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub resync: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub lock_timeout: Duration,
    pub parallelism: usize,
    /// How long a reconcile in flight may finish after SIGTERM or SIGINT.
    pub shutdown_grace: Duration,
}

/// Why a reconcile happens.
#[derive(Debug, Clone)]
enum Trigger {
    Start,
    Spec,
    /// An owned container died, was destroyed or ran out of memory (Docker's event time).
    /// `recheck` counts the looks taken again because Docker still listed the container as
    /// it was before the event.
    Docker {
        container: String,
        action: String,
        at: SystemTime,
        recheck: u32,
    },
    Resync,
    /// A retry after a failed observation.
    Retry,
}

impl Trigger {
    fn name(&self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Spec => "spec",
            Trigger::Docker { .. } => "docker",
            Trigger::Resync => "resync",
            Trigger::Retry => "retry",
        }
    }
}

/// Runs until `stop` turns true (SIGTERM, SIGINT). Runners are never removed on the way out.
pub async fn run(
    file: PathBuf,
    options: WatchOptions,
    env: Env,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let spec = spec::load(&file).map_err(|e| e.render())?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = options.metrics_addr {
        let listener_metrics = metrics.clone();
        let mut stop_server = stop.clone();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        let bound = listener.local_addr().unwrap_or(addr);
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_server.wait_for(|s| *s).await;
            };
            if let Err(e) = metrics::serve(listener, listener_metrics, shutdown).await {
                tracing::error!("metrics server on {bound} stopped: {e}");
            }
        });
        tracing::info!("metrics on http://{bound}/metrics");
    }

    let (tx, mut rx) = unbounded_channel();
    let _spec_watcher = watch_spec_file(&file, tx.clone())?;
    let mut event_tasks = spawn_event_tasks(&spec, env.clone(), tx.clone());
    let resync_tx = tx.clone();
    let resync = options.resync;
    let resync_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(resync);
        tick.tick().await; // the first tick is now: the start trigger covers it
        loop {
            tick.tick().await;
            if resync_tx.send(Trigger::Resync).is_err() {
                break;
            }
        }
    });
    let _ = tx.send(Trigger::Start);

    let mut state = Loop {
        file,
        spec,
        options,
        env,
        metrics,
        observers: None,
        backoff: Duration::from_secs(1),
        retry_pending: false,
        tx: tx.clone(),
    };
    tracing::info!(
        "watching {} for fleet `{}` (resync every {}s)",
        state.file.display(),
        state.spec.name,
        state.options.resync.as_secs_f64()
    );
    loop {
        let first = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            t = rx.recv() => match t { Some(t) => t, None => break },
        };
        let triggers = coalesce(first, &mut rx).await;
        let hosts_before: Vec<String> = state.spec.effective_hosts().into_keys().collect();
        let grace = state.options.shutdown_grace;
        let stopped = {
            let reconcile = state.reconcile(&triggers);
            tokio::pin!(reconcile);
            let stopped = tokio::select! {
                _ = &mut reconcile => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                tracing::info!(
                    "stopping: letting the running reconcile finish (at most {}s)",
                    grace.as_secs()
                );
                if tokio::time::timeout(grace, &mut reconcile).await.is_err() {
                    tracing::warn!(
                        "stopping: abandoned the running reconcile; the next start takes the world as it finds it"
                    );
                }
            }
            stopped
        };
        if stopped {
            break;
        }
        let hosts_after: Vec<String> = state.spec.effective_hosts().into_keys().collect();
        if hosts_after != hosts_before {
            for task in event_tasks.drain(..) {
                task.abort();
            }
            event_tasks = spawn_event_tasks(&state.spec, state.env.clone(), tx.clone());
        }
    }
    resync_task.abort();
    for task in event_tasks {
        task.abort();
    }
    tracing::info!("stopped; runners were left as they are");
    Ok(())
}

/// Takes every trigger that arrives within a short window: a burst of container exits or an
/// editor's save (which is often several file events) becomes one reconcile.
async fn coalesce(first: Trigger, rx: &mut UnboundedReceiver<Trigger>) -> Vec<Trigger> {
    let window = match first {
        Trigger::Spec => Duration::from_millis(250),
        Trigger::Docker { .. } => Duration::from_millis(10),
        _ => Duration::ZERO,
    };
    let mut triggers = vec![first];
    if !window.is_zero() {
        tokio::time::sleep(window).await;
    }
    while let Ok(t) = rx.try_recv() {
        triggers.push(t);
    }
    triggers
}

/// Watches the spec's directory, so that an editor's atomic replace (write a new file, rename
/// it over) and a `git pull` are seen as well as an in-place write.
fn watch_spec_file(
    file: &Path,
    tx: UnboundedSender<Trigger>,
) -> Result<notify::RecommendedWatcher, String> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = tx.send(Trigger::Spec);
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    Ok(watcher)
}

/// One task per host that follows Docker's events of the fleet's containers, reconnecting with
/// backoff when the engine goes away.
fn spawn_event_tasks(
    spec: &Spec,
    env: Env,
    tx: UnboundedSender<Trigger>,
) -> Vec<tokio::task::JoinHandle<()>> {
    spec.effective_hosts()
        .into_iter()
        .map(|(name, host)| {
            let fleet = spec.name.clone();
            let tx = tx.clone();
            let env = env.clone();
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(500);
                loop {
                    match DockerHost::connect(&name, host.docker.as_deref(), &*env).await {
                        Ok(docker) => {
                            backoff = Duration::from_millis(500);
                            follow_events(&docker, &fleet, &tx).await;
                            tracing::warn!(
                                "host `{name}`: lost Docker's event stream; reconnecting"
                            );
                        }
                        Err(e) => tracing::warn!("{e}; retrying in {:.1}s", backoff.as_secs_f64()),
                    }
                    if tx.is_closed() {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            })
        })
        .collect()
}

async fn follow_events(docker: &DockerHost, fleet: &str, tx: &UnboundedSender<Trigger>) {
    use bollard::query_parameters::EventsOptionsBuilder;
    let filters = std::collections::HashMap::from([
        ("type", vec!["container".to_string()]),
        ("label", vec![format!("{}={fleet}", labels::FLEET)]),
        (
            "event",
            vec!["die".to_string(), "destroy".into(), "oom".into()],
        ),
    ]);
    let options = EventsOptionsBuilder::new().filters(&filters).build();
    let mut events = docker.docker.events(Some(options));
    while let Some(event) = events.next().await {
        let Ok(event) = event else { return };
        let container = event
            .actor
            .and_then(|a| a.attributes)
            .and_then(|a| a.get("name").cloned())
            .unwrap_or_default();
        let at = event
            .time_nano
            .and_then(|n| u64::try_from(n).ok())
            .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
            .unwrap_or_else(SystemTime::now);
        let action = event.action.unwrap_or_default();
        tracing::info!("host `{}`: container {container} {action}", docker.name);
        let trigger = Trigger::Docker {
            container,
            action,
            at,
            recheck: 0,
        };
        if tx.send(trigger).is_err() {
            return;
        }
    }
}

struct Loop {
    file: PathBuf,
    spec: Spec,
    options: WatchOptions,
    env: Env,
    metrics: Arc<Metrics>,
    observers: Option<Observers>,
    backoff: Duration,
    retry_pending: bool,
    tx: UnboundedSender<Trigger>,
}

/// Logs each step and counts it.
struct WatchProgress<'a> {
    metrics: &'a Metrics,
    exits: &'a BTreeMap<String, SystemTime>,
}

impl Progress for WatchProgress<'_> {
    fn started(&self, _: &Change) {}

    fn finished(&self, report: &StepReport) {
        let change = &report.change;
        let result = match &report.outcome {
            Outcome::Done => {
                tracing::info!(
                    "{}: {} done ({:.1}s){}",
                    change.name,
                    change.action.as_str(),
                    report.elapsed.as_secs_f64(),
                    report
                        .runner
                        .as_ref()
                        .filter(|r| *r != &change.name)
                        .map(|r| format!(", now {r}"))
                        .unwrap_or_default()
                );
                if change.action == Action::Replace
                    && let Some(at) = self.exits.get(&change.name)
                    && let Ok(latency) = SystemTime::now().duration_since(*at)
                {
                    self.metrics.replaced_after(latency.as_secs_f64());
                }
                "done"
            }
            Outcome::Deferred(why) => {
                tracing::info!(
                    "{}: {} deferred: {why}",
                    change.name,
                    change.action.as_str()
                );
                "deferred"
            }
            Outcome::Failed(cause) => {
                tracing::error!(
                    "{}: {} failed: {cause}",
                    change.name,
                    change.action.as_str()
                );
                "failed"
            }
        };
        self.metrics.action(change.action.as_str(), result);
    }
}

/// How many times a Docker event is looked at again when the engine's container list has not
/// caught up with it yet, and the first wait (doubled each time).
const EVENT_RECHECKS: u32 = 5;
const EVENT_RECHECK_WAIT: Duration = Duration::from_millis(100);

/// Docker sends `die` a moment before its container list says `exited` (seen on Engine 20.10.24), so
/// a reconcile right after the event can still see the runner running and keep it. Returns each
/// event the observation contradicts, to be sent again after the wait beside it; a few times at
/// most (a persistent runner that Docker restarted is running again, and that is fine).
fn lagging_events(
    triggers: &[Trigger],
    observed: &crate::observe::state::Observed,
) -> Vec<(Duration, Trigger)> {
    let mut again = Vec::new();
    for trigger in triggers {
        let Trigger::Docker {
            container,
            action,
            at,
            recheck,
        } = trigger
        else {
            continue;
        };
        let listed = observed
            .hosts
            .values()
            .flat_map(|h| h.containers.iter())
            .find(|c| &c.name == container);
        let lagging = match (action.as_str(), listed) {
            ("die", Some(c)) => !c.status.is_finished(),
            ("destroy", Some(_)) => true,
            _ => false,
        };
        if lagging && *recheck < EVENT_RECHECKS {
            again.push((
                EVENT_RECHECK_WAIT * 2u32.pow(*recheck),
                Trigger::Docker {
                    container: container.clone(),
                    action: action.clone(),
                    at: *at,
                    recheck: recheck + 1,
                },
            ));
        }
    }
    again
}

impl Loop {
    /// Sends again, after their wait, the Docker events this observation contradicts.
    fn recheck_lagging_events(
        &self,
        triggers: &[Trigger],
        observed: &crate::observe::state::Observed,
    ) {
        for (wait, again) in lagging_events(triggers, observed) {
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

    async fn reconcile(&mut self, triggers: &[Trigger]) {
        let started = Instant::now();
        if triggers.iter().any(|t| matches!(t, Trigger::Retry)) {
            self.retry_pending = false;
        }
        let trigger = ["spec", "docker", "retry", "start", "resync"]
            .into_iter()
            .find(|name| triggers.iter().any(|t| t.name() == *name))
            .unwrap_or("resync");
        tracing::debug!(
            "reconcile for {} trigger(s), first `{trigger}`",
            triggers.len()
        );
        let exits: BTreeMap<String, SystemTime> = triggers
            .iter()
            .filter_map(|t| match t {
                Trigger::Docker { container, at, .. } => Some((container.clone(), *at)),
                _ => None,
            })
            .collect();

        if triggers.iter().any(|t| matches!(t, Trigger::Spec)) {
            match spec::load(&self.file) {
                Ok(new) if new != self.spec => {
                    tracing::info!("{} changed; converging to it", self.file.display());
                    if new.effective_hosts() != self.spec.effective_hosts()
                        || new.github != self.spec.github
                    {
                        self.observers = None;
                    }
                    self.spec = new;
                }
                Ok(_) => {
                    if triggers.iter().all(|t| matches!(t, Trigger::Spec)) {
                        return; // saved without a change
                    }
                }
                Err(e) => {
                    tracing::error!(
                        "{} is invalid; the last valid spec stays in force and nothing is done for this change:\n{}",
                        self.file.display(),
                        e.render()
                    );
                    self.metrics.reconciled(
                        trigger,
                        "invalid_spec",
                        started.elapsed().as_secs_f64(),
                    );
                    if triggers.iter().all(|t| matches!(t, Trigger::Spec)) {
                        return;
                    }
                }
            }
        }

        let name = self.spec.name.clone();
        let timeout = self.options.lock_timeout;
        let lock =
            tokio::task::spawn_blocking(move || lock::acquire(&name, "fleet watch", timeout))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
        let _lock = match lock {
            Ok(lock) => lock,
            Err(e) => {
                self.metrics
                    .reconciled(trigger, "error", started.elapsed().as_secs_f64());
                self.schedule_retry(&e);
                return;
            }
        };

        if self.observers.is_none() {
            let base = self.file.parent().unwrap_or(Path::new(".")).to_path_buf();
            match Observers::connect(&self.spec, &base, &*self.env, RetryPolicy::default()).await {
                Ok(o) => self.observers = Some(o),
                Err(e) => {
                    self.metrics
                        .reconciled(trigger, "error", started.elapsed().as_secs_f64());
                    let why = match e.hint() {
                        Some(hint) => format!("{e} ({hint})"),
                        None => e.to_string(),
                    };
                    self.schedule_retry(&why);
                    return;
                }
            }
        }
        let Some(observers) = self.observers.clone() else {
            return;
        };
        let observed = match observers.observe(&self.spec).await {
            Ok(observed) => observed,
            Err(e) => {
                // Never act on a partial view: no plan, nothing destroyed.
                self.metrics.github(&observers.github.stats());
                self.metrics
                    .reconciled(trigger, "error", started.elapsed().as_secs_f64());
                if matches!(e, crate::observe::ObserveError::Docker(_)) {
                    self.observers = None;
                }
                self.schedule_retry(&e.to_string());
                return;
            }
        };
        self.backoff = Duration::from_secs(1);
        self.recheck_lagging_events(triggers, &observed);

        let plan = match plan::plan(&self.spec, &observed) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("no plan: {e}");
                self.metrics
                    .reconciled(trigger, "plan_error", started.elapsed().as_secs_f64());
                return;
            }
        };
        let actionable = plan.actionable().count();
        let mut result = "ok";
        if actionable == 0 {
            tracing::debug!(
                "{} ({trigger}): nothing to do ({} change(s) deferred or kept)",
                self.spec.name,
                plan.changes.len()
            );
        }
        if actionable > 0 {
            tracing::info!(
                "{} ({trigger}): {}",
                self.spec.name,
                crate::render::summary_line(&plan.summary)
            );
            let progress = WatchProgress {
                metrics: &self.metrics,
                exits: &exits,
            };
            let report = Executor::new(&self.spec, &observers, &observed, self.options.parallelism)
                .apply(&plan, &progress)
                .await;
            if report.failed().next().is_some() {
                result = "failed";
            }
        }
        // Gauges from a fresh look when something changed, else from what was observed.
        let observed = if actionable > 0 {
            observers.observe(&self.spec).await.unwrap_or(observed)
        } else {
            observed
        };
        let devices = nvml_devices().unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let status = crate::status::build(&self.spec, &observed, &devices, now);
        let local = observers
            .hosts
            .values()
            .find(|h| h.is_local())
            .map(|h| h.name.clone())
            .unwrap_or_default();
        self.metrics.observe_status(&status, &local);
        self.metrics.github(&observers.github.stats());
        self.metrics
            .reconciled(trigger, result, started.elapsed().as_secs_f64());
    }
}

/// A compile-time check (it is never called): the watch loop can be spawned on a
/// multi-threaded runtime.
#[cfg(test)]
mod send_check {
    fn assert_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    fn run_is_send(
        options: super::WatchOptions,
        env: super::Env,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let f = super::run(std::path::PathBuf::new(), options, env, stop);
        assert_send(&f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::{ContainerState, ContainerStatus, HostState, Observed};

    fn observed(containers: &[(&str, ContainerStatus)]) -> Observed {
        let host = HostState {
            containers: containers
                .iter()
                .map(|(name, status)| ContainerState {
                    id: format!("id-{name}"),
                    name: name.to_string(),
                    labels: BTreeMap::new(),
                    status: *status,
                    exit_code: None,
                    created: 0,
                })
                .collect(),
            ..HostState::default()
        };
        Observed {
            hosts: BTreeMap::from([("local".to_string(), host)]),
            ..Observed::default()
        }
    }

    fn event(container: &str, action: &str, recheck: u32) -> Trigger {
        Trigger::Docker {
            container: container.into(),
            action: action.into(),
            at: UNIX_EPOCH,
            recheck,
        }
    }

    fn rechecks(again: &[(Duration, Trigger)]) -> Vec<(u128, String, u32)> {
        again
            .iter()
            .filter_map(|(wait, t)| match t {
                Trigger::Docker {
                    container, recheck, ..
                } => Some((wait.as_millis(), container.clone(), *recheck)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_die_event_the_list_has_not_caught_up_with_is_looked_at_again_later() {
        let world = observed(&[
            ("f-eph-a", ContainerStatus::Running),
            ("f-eph-b", ContainerStatus::Exited),
        ]);
        let triggers = [
            event("f-eph-a", "die", 0),
            event("f-eph-b", "die", 0),
            Trigger::Spec,
        ];
        assert_eq!(
            rechecks(&lagging_events(&triggers, &world)),
            vec![(100, "f-eph-a".to_string(), 1)]
        );
        // The wait doubles, and after five looks the resync is left to it.
        assert_eq!(
            rechecks(&lagging_events(&[event("f-eph-a", "die", 3)], &world)),
            vec![(800, "f-eph-a".to_string(), 4)]
        );
        assert!(lagging_events(&[event("f-eph-a", "die", EVENT_RECHECKS)], &world).is_empty());
    }

    #[test]
    fn destroy_events_wait_for_the_container_to_leave_the_list() {
        let world = observed(&[("f-eph-a", ContainerStatus::Exited)]);
        assert_eq!(
            rechecks(&lagging_events(&[event("f-eph-a", "destroy", 0)], &world)),
            vec![(100, "f-eph-a".to_string(), 1)]
        );
        // Gone from the list, or an oom of a process inside a running container: nothing to wait for.
        assert!(lagging_events(&[event("f-eph-z", "destroy", 0)], &world).is_empty());
        assert!(lagging_events(&[event("f-eph-z", "die", 0)], &world).is_empty());
        let running = observed(&[("f-eph-a", ContainerStatus::Running)]);
        assert!(lagging_events(&[event("f-eph-a", "oom", 0)], &running).is_empty());
    }
}
