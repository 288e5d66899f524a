//! `fleet watch`: the always-on control plane. One loop observes, plans and applies with the
//! same code and the same lock as `fleet apply`, whenever the spec file changes, an owned
//! container dies, or the resync timer fires. Triggers that arrive together are coalesced, and
//! two reconciles never run at once (there is one loop).

mod autoscale;
mod events;
mod fixed_jobs;
pub mod gha_metrics;
mod gpu_metrics;
mod hosts;
pub mod metrics;
mod outage;
mod reconcile;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::history::record::WatchHistory;
use crate::spec;
use metrics::Metrics;
use reconcile::Loop;

/// Reads environment variables (shared with the tasks that reconnect to Docker).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How `watch` runs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub resync: Duration,
    /// The status page, metrics and API listener (src/web/).
    pub listen: crate::web::ListenArgs,
    pub lock_timeout: Duration,
    pub parallelism: usize,
    /// How long a reconcile in flight may finish after SIGTERM or SIGINT.
    pub shutdown_grace: Duration,
    /// The most one host's observation may take: a host slower than this is left out of the
    /// reconcile (and reconnected) while the others converge.
    pub host_timeout: Duration,
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
    /// An autoscaled pool's listener learnt of jobs (assigned, started, completed).
    Autoscale {
        pool: String,
    },
    /// A host's connection came back (`up`) or was lost.
    Host {
        host: String,
        up: bool,
    },
    /// NVML's event thread saw a critical Xid or ECC event on a GPU of this machine.
    Gpu {
        uuid: String,
        what: String,
    },
}

impl Trigger {
    fn name(&self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Spec => "spec",
            Trigger::Docker { .. } => "docker",
            Trigger::Resync => "resync",
            Trigger::Retry => "retry",
            Trigger::Autoscale { .. } => "autoscale",
            Trigger::Host { .. } => "host",
            Trigger::Gpu { .. } => "gpu",
        }
    }
}

/// Runs until `stop` turns true (SIGTERM, SIGINT). Runners are never removed on the way out.
pub async fn run(
    file: PathBuf,
    options: WatchOptions,
    env: Env,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    run_recording(file, options, None, env, stop).await
}

/// [`run`], recording history as `history` says (`None`: no history).
pub async fn run_recording(
    file: PathBuf,
    options: WatchOptions,
    history: Option<crate::history::HistoryArgs>,
    env: Env,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    // The listener's settings first: an unsafe one is refused before anything starts.
    let listen = options.listen.prepare().map_err(|e| e.to_string())?;
    let spec = spec::load(&file).map_err(|e| e.render())?;
    let metrics = Arc::new(Metrics::new());
    let history = match history {
        Some(args) => WatchHistory::start(&args, &spec.name, &*env, metrics.history_errors.clone()),
        None => WatchHistory::off(),
    };
    // `/api/v1/history` reads the history database when there is one, else what watch saw.
    let board = Arc::new(match history.recorder.path() {
        Some(path) => crate::web::Board::with_history(Arc::new(
            crate::web::database::DatabaseHistory::new(path),
        )),
        None => crate::web::Board::new(),
    });
    if let Some(listen) = &listen {
        listen
            .start(
                board.clone(),
                metrics::router(metrics.clone()),
                stop.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
    }

    let (tx, mut rx) = unbounded_channel();
    let _spec_watcher = watch_spec_file(&file, tx.clone())?;
    let base_dir = spec_dir(&file);
    let links = hosts::HostLinks::start(&spec, &base_dir, env.clone(), tx.clone()).await;
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
    // NVML's events wake a reconcile at once (docs/gpu-health.md).
    let gpu_tx = tx.clone();
    let gpu_events = crate::observe::nvml_events::EventThread::start(move |event| {
        let _ = gpu_tx.send(Trigger::Gpu {
            uuid: event.uuid,
            what: event.what,
        });
    });
    let _ = tx.send(Trigger::Start);

    let gpu_probe = crate::observe::inventory::GpuProbe::new(
        env(crate::observe::inventory::PROBE_IMAGE_ENV),
        GPU_PROBE_KEEP,
    );
    let mut state = Loop {
        file,
        spec,
        options,
        env,
        metrics,
        board,
        github: None,
        links,
        gpu_probe: Arc::new(gpu_probe),
        backoff: Duration::from_secs(1),
        retry_pending: false,
        tx: tx.clone(),
        autoscale: autoscale::Listeners::recording(history.recorder.clone()),
        history,
        fixed_jobs: fixed_jobs::FixedJobs::default(),
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
        let grace = state.options.shutdown_grace;
        let stopped = {
            let reconcile = state.run_once(&triggers);
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
    }
    resync_task.abort();
    if let Some(events) = gpu_events {
        let _ = tokio::task::spawn_blocking(move || events.stop()).await;
    }
    // Message sessions are deleted on the way out: a restarted watch opens its own at once.
    state.autoscale.stop(state.options.shutdown_grace).await;
    let history = std::mem::replace(&mut state.history, WatchHistory::off());
    let _ = tokio::task::spawn_blocking(move || history.close()).await;
    tracing::info!("stopped; runners were left as they are");
    Ok(())
}

/// How long `fleet watch` reuses a GPU inventory read through the GPU probe (a remote engine's
/// GPUs change with hardware, not from one resync to the next).
const GPU_PROBE_KEEP: Duration = Duration::from_secs(600);

/// The directory relative paths of the spec (TLS files, the App key) start from.
fn spec_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Takes every trigger that arrives within a short window: a burst of container exits or an
/// editor's save (which is often several file events) becomes one reconcile.
async fn coalesce(first: Trigger, rx: &mut UnboundedReceiver<Trigger>) -> Vec<Trigger> {
    let window = match first {
        Trigger::Spec => Duration::from_millis(250),
        Trigger::Docker { .. } | Trigger::Autoscale { .. } => Duration::from_millis(10),
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
