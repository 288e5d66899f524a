//! What the watch loop and the executor tell history, turned into [`Event`]s: the glue that
//! keeps the edits to `watch/` and `apply/` to a few lines. Pure functions of values the
//! callers already hold; nothing here waits on the disk.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    Event, GpuSample, HistoryError, JobRecord, Recorder, Source, SpanEntry, SpanKind, epoch, now,
};
use crate::apply::{ApplyReport, Outcome, Run, StepReport};
use crate::contract::labels;
use crate::observe::gpu::NvmlReport;
use crate::observe::state::Observed;
use crate::plan::{Change, Plan};
use crate::scaleset::JobMessage;
use crate::status::FleetStatus;

/// `--history`, `--no-history` and `--history-retention`, shared by watch, apply and destroy.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// The history database (default: $STATE_DIRECTORY/<fleet>.db under systemd, else
    /// /var/lib/fleet/<fleet>.db as root, else $XDG_STATE_HOME/fleet/<fleet>.db). apply and
    /// destroy record into it only when it exists.
    #[arg(long = "history", value_name = "PATH", conflicts_with = "no_history")]
    pub path: Option<PathBuf>,
    /// Keep no history.
    #[arg(long)]
    pub no_history: bool,
    /// How long watch keeps history (90d); older records are deleted.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub history_retention: Duration,
    /// How often watch samples this machine's GPUs into history (10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub history_gpu_every: Duration,
}

impl HistoryArgs {
    /// The database to use for fleet `fleet`, or `None` with `--no-history`.
    pub fn resolve(
        &self,
        fleet: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<PathBuf>, HistoryError> {
        if self.no_history {
            return Ok(None);
        }
        match &self.path {
            Some(path) => Ok(Some(path.clone())),
            None => super::default_path(fleet, env, super::running_as_root()).map(Some),
        }
    }
}

/// Records what `fleet apply` or `fleet destroy` did, into fleet `fleet`'s database when it
/// exists. A missing, locked or broken database is a warning: it never fails the apply.
pub fn record_apply(fleet: &str, args: &HistoryArgs, run: Run, plan: &Plan, report: &ApplyReport) {
    let env = |name: &str| std::env::var(name).ok();
    let Ok(Some(path)) = args.resolve(fleet, &env) else {
        return;
    };
    if !path.exists() {
        return;
    }
    let source = match run {
        Run::Apply => Source::Apply,
        Run::Destroy => Source::Destroy,
    };
    let context = ActionContext::new(plan, source);
    let events: Vec<Event> = report
        .steps
        .iter()
        .filter_map(|s| context.event(s))
        .collect();
    let result =
        super::open(&path, false).and_then(|mut conn| super::writer::write_now(&mut conn, &events));
    if let Err(e) = result {
        eprintln!("warning: what was done is not in the history: {e}");
    }
}

/// Each change's pool, host, reasons and cause, to describe its step's report.
pub struct ActionContext {
    source: Source,
    changes: BTreeMap<String, Described>,
}

/// What the plan said of one change.
#[derive(Debug, Clone, Default)]
struct Described {
    pool: Option<String>,
    host: Option<String>,
    why: String,
    cause: &'static str,
}

/// Why a runner that is removed or replaced ends, for the report's exits: `exited` (its exit
/// is counted from the container), `job_done` (an ephemeral runner whose registration went
/// after its job), `gpu_fault` (a GPU it held was lost), else `removed` (fleet's decision).
fn cause(reasons: &[crate::plan::Reason]) -> &'static str {
    use crate::plan::Reason;
    if reasons.iter().any(|r| matches!(r, Reason::Exited { .. })) {
        "exited"
    } else if reasons
        .iter()
        .any(|r| matches!(r, Reason::GpuGone { lost: true, .. }))
    {
        "gpu_fault"
    } else if reasons.iter().any(|r| matches!(r, Reason::Unregistered)) {
        "job_done"
    } else {
        "removed"
    }
}

impl ActionContext {
    pub fn new(plan: &Plan, source: Source) -> ActionContext {
        let describe = |reasons: &[crate::plan::Reason]| {
            reasons
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut changes = BTreeMap::new();
        for change in &plan.changes {
            let pool = Some(change.pool().to_string()).filter(|p| !p.is_empty());
            let (host, reasons) = match change {
                Change::Runner(r) => (Some(r.host.clone()), &r.reasons),
                Change::Volume(v) => (Some(v.host.clone()), &v.reasons),
                Change::Registration(r) => (None, &r.reasons),
                Change::ScaleSet(s) => (None, &s.reasons),
            };
            let described = Described {
                pool,
                host,
                why: describe(reasons),
                cause: cause(reasons),
            };
            changes.insert(change.name().to_string(), described);
        }
        for d in &plan.deferred {
            let r = &d.change;
            let described = Described {
                pool: Some(r.pool.clone()),
                host: Some(r.host.clone()),
                why: describe(&r.reasons),
                cause: cause(&r.reasons),
            };
            changes.insert(r.name.clone(), described);
        }
        ActionContext { source, changes }
    }

    /// The event of one step; none for a change that waits for a busy runner (it is planned
    /// again at every reconcile until the job ends: the step that follows is recorded).
    pub fn event(&self, step: &StepReport) -> Option<Event> {
        if step.action == crate::plan::Action::Defer {
            return None;
        }
        let Described {
            pool,
            host,
            why,
            cause,
        } = self.changes.get(&step.name).cloned().unwrap_or_default();
        let (outcome, why) = match &step.outcome {
            Outcome::Done => ("done", why),
            Outcome::Deferred(w) => ("deferred", w.clone()),
            Outcome::Failed(failure) => ("failed", failure.clone()),
        };
        Some(Event::Action {
            at: now(),
            source: self.source,
            action: step.action.as_str().to_string(),
            name: step.name.clone(),
            pool,
            host,
            outcome: outcome.to_string(),
            why,
            seconds: step.elapsed.as_secs_f64(),
            runner: step.runner.clone(),
            cause: cause.to_string(),
        })
    }
}

/// The spans of a status: each runner's state, each host up or down, each pool's wanted count.
/// `autoscaled`: the runners each autoscaled pool's plan wants (its `count` means nothing).
pub fn status_events(status: &FleetStatus, autoscaled: &BTreeMap<String, u32>) -> Vec<Event> {
    let at = now();
    let runners = status
        .pools
        .iter()
        .flat_map(|p| {
            p.runners.iter().map(|r| SpanEntry {
                key: r.name.clone(),
                pool: Some(p.name.clone()),
                host: Some(r.host.clone()),
                value: r.state.as_str().to_string(),
            })
        })
        .collect();
    let hosts = status
        .hosts
        .iter()
        .map(|h| SpanEntry {
            key: h.name.clone(),
            pool: None,
            host: Some(h.name.clone()),
            value: if h.observed { "up" } else { "down" }.to_string(),
        })
        .collect();
    let mut wanted: BTreeMap<&str, u32> = BTreeMap::new();
    for pool in &status.pools {
        *wanted.entry(pool.name.as_str()).or_default() += pool.desired;
    }
    for (pool, n) in autoscaled {
        wanted.insert(pool.as_str(), *n);
    }
    let pools = wanted
        .into_iter()
        .map(|(pool, n)| SpanEntry {
            key: pool.to_string(),
            pool: Some(pool.to_string()),
            host: None,
            value: n.to_string(),
        })
        .collect();
    vec![
        Event::Snapshot {
            at,
            kind: SpanKind::Runner,
            entries: runners,
        },
        Event::Snapshot {
            at,
            kind: SpanKind::Host,
            entries: hosts,
        },
        Event::Snapshot {
            at,
            kind: SpanKind::Pool,
            entries: pools,
        },
    ]
}

/// The exited runner containers of an observation (each is recorded once, by container id).
pub fn exit_events(observed: &Observed) -> Vec<Event> {
    let at = now();
    let mut events = Vec::new();
    for (host, state) in &observed.hosts {
        for c in state.containers.iter().filter(|c| c.status.is_finished()) {
            events.push(Event::Exit {
                at,
                container_id: c.id.clone(),
                runner: c.name.clone(),
                pool: c.label(labels::POOL).map(str::to_string),
                host: host.clone(),
                exit_code: c.exit_code,
            });
        }
    }
    events
}

/// What one scale set message says of a job of `pool`.
pub fn job_event(pool: &str, message: &JobMessage) -> Event {
    let job = message.job();
    let time = |t: &Option<String>| -> Option<f64> {
        let t = t.as_deref()?;
        if t.starts_with("0001-") {
            return None; // Go's zero time: the step has not happened
        }
        humantime::parse_rfc3339_weak(t).ok().map(epoch)
    };
    let text = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    let mut record = JobRecord {
        job_id: job.job_id.clone(),
        pool: pool.to_string(),
        repository: match (job.owner_name.as_str(), job.repository_name.as_str()) {
            (_, "") => None,
            ("", repo) => Some(repo.to_string()),
            (owner, repo) => Some(format!("{owner}/{repo}")),
        },
        workflow_ref: text(&job.job_workflow_ref),
        job_name: text(&job.job_display_name),
        run_id: Some(job.workflow_run_id).filter(|id| *id != 0),
        queued: time(&job.queue_time),
        assigned: time(&job.scale_set_assign_time),
        ..JobRecord::default()
    };
    match message {
        JobMessage::Available(_) | JobMessage::Assigned(_) => {}
        JobMessage::Started { runner_name, .. } => {
            record.runner = text(runner_name);
            record.started = time(&job.runner_assign_time).or_else(|| Some(now()));
        }
        JobMessage::Completed {
            result,
            runner_name,
            ..
        } => {
            record.runner = text(runner_name);
            record.started = time(&job.runner_assign_time);
            record.finished = time(&job.finish_time).or_else(|| Some(now()));
            record.result = text(result);
        }
    }
    Event::Job(record)
}

/// How long a job waited for a runner: from its queue time to a runner taking it.
pub fn queue_seconds(message: &JobMessage) -> Option<f64> {
    let JobMessage::Started { job, .. } = message else {
        return None;
    };
    let parse = |t: &Option<String>| {
        let t = t.as_deref().filter(|t| !t.starts_with("0001-"))?;
        humantime::parse_rfc3339_weak(t).ok().map(epoch)
    };
    let waited = parse(&job.runner_assign_time)? - parse(&job.queue_time)?;
    (waited >= 0.0).then_some(waited)
}

/// Which runner (and pool) holds each GPU, from a status.
pub fn gpu_holders(status: &FleetStatus) -> BTreeMap<String, (String, String)> {
    let mut holders = BTreeMap::new();
    for pool in &status.pools {
        for r in &pool.runners {
            for g in &r.gpus {
                holders.insert(g.uuid.clone(), (r.name.clone(), pool.name.clone()));
            }
        }
    }
    holders
}

/// GPU samples of this machine's GPUs (host `host`), each with the runner holding it.
pub fn gpu_event(
    report: &NvmlReport,
    host: &str,
    holders: &BTreeMap<String, (String, String)>,
    every: Duration,
) -> Event {
    let mut samples: Vec<GpuSample> = report
        .devices
        .iter()
        .map(|d| {
            let held = holders.get(&d.uuid);
            GpuSample {
                host: host.to_string(),
                uuid: d.uuid.clone(),
                runner: held.map(|h| h.0.clone()),
                pool: held.map(|h| h.1.clone()),
                utilization: d.utilization_percent.map(f64::from),
                memory_used: Some(d.memory_used_bytes),
                memory_total: Some(d.memory_total_bytes),
                temperature: d.temperature_celsius.map(f64::from),
                health: "ok".to_string(),
            }
        })
        .collect();
    for g in &report.unreadable {
        samples.push(GpuSample {
            host: host.to_string(),
            uuid: format!("index-{}", g.index),
            runner: None,
            pool: None,
            utilization: None,
            memory_used: None,
            memory_total: None,
            temperature: None,
            health: g.reason.clone(),
        });
    }
    Event::Gpus {
        at: now(),
        every: every.as_secs_f64(),
        samples,
    }
}

/// What `fleet watch` keeps for history: the recorder, which runner holds each local GPU (for
/// the GPU sampler), and the sampler task.
pub struct WatchHistory {
    pub recorder: Recorder,
    /// The runners each autoscaled pool's last plan wanted.
    autoscaled: std::sync::Mutex<BTreeMap<String, u32>>,
    holders: std::sync::Arc<std::sync::Mutex<GpuHolders>>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

/// This machine's host in the spec and the runner (and pool) holding each of its GPUs.
#[derive(Debug, Clone, Default)]
struct GpuHolders {
    host: Option<String>,
    by_uuid: BTreeMap<String, (String, String)>,
}

impl WatchHistory {
    /// History off.
    pub fn off() -> WatchHistory {
        WatchHistory {
            recorder: Recorder::off(),
            autoscaled: Default::default(),
            holders: Default::default(),
            sampler: None,
        }
    }

    /// Opens the database `args` choose for fleet `fleet` and starts its writer and the GPU
    /// sampler; off with `--no-history`, or (logged, counted) when it cannot be opened.
    pub fn start(
        args: &HistoryArgs,
        fleet: &str,
        env: &dyn Fn(&str) -> Option<String>,
        errors: prometheus_client::metrics::counter::Counter,
    ) -> WatchHistory {
        let path = match args.resolve(fleet, env) {
            Ok(Some(path)) => path,
            Ok(None) => return WatchHistory::off(),
            Err(e) => {
                tracing::error!("{e}; fleet goes on without history");
                errors.inc();
                return WatchHistory::off();
            }
        };
        let options = super::WriterOptions {
            retention: args.history_retention,
            ..super::WriterOptions::default()
        };
        let recorder = Recorder::start(&path, options, errors);
        let holders: std::sync::Arc<std::sync::Mutex<GpuHolders>> = Default::default();
        let sampler = recorder.is_on().then(|| {
            tokio::spawn(sample_gpus(
                recorder.clone(),
                holders.clone(),
                args.history_gpu_every.max(Duration::from_millis(100)),
            ))
        });
        WatchHistory {
            recorder,
            autoscaled: Default::default(),
            holders,
            sampler,
        }
    }

    /// Keeps the runners each autoscaled pool's plan wants (its wanted runner-time).
    pub fn planned(&self, plan: &Plan) {
        let mut wanted = self
            .autoscaled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *wanted = plan
            .autoscale
            .iter()
            .map(|a| (a.pool.clone(), a.wanted))
            .collect();
    }

    /// A reconcile's view of runners, hosts and pools; `local` is the host whose GPUs NVML on
    /// this machine reads.
    pub fn observed(&self, status: &FleetStatus, local: &str) {
        if !self.recorder.is_on() {
            return;
        }
        let autoscaled = self
            .autoscaled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for event in status_events(status, &autoscaled) {
            self.recorder.send(event);
        }
        let mut holders = self
            .holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        holders.host = Some(local.to_string()).filter(|h| !h.is_empty());
        holders.by_uuid = gpu_holders(status);
    }

    /// The exited runner containers an observation shows.
    pub fn exits(&self, observed: &Observed) {
        if self.recorder.is_on() {
            exit_events(observed)
                .into_iter()
                .for_each(|e| self.recorder.send(e));
        }
    }

    pub fn reconciled(&self, trigger: &str, result: &str, seconds: f64) {
        self.recorder.send(Event::Reconcile {
            at: now(),
            trigger: trigger.to_string(),
            result: result.to_string(),
            seconds,
        });
    }

    pub fn docker_event(&self, container: &str, action: &str, at: std::time::SystemTime) {
        self.recorder.send(Event::Docker {
            at: epoch(at),
            container: container.to_string(),
            action: action.to_string(),
        });
    }

    /// Commits what is pending and stops the writer and the sampler.
    pub fn close(&self) {
        if let Some(sampler) = &self.sampler {
            sampler.abort();
        }
        self.recorder.close();
    }
}

/// Sends GPU samples of this machine every `every` (NVML read off the async threads), until
/// the task is aborted.
async fn sample_gpus(
    recorder: Recorder,
    holders: std::sync::Arc<std::sync::Mutex<GpuHolders>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let held = holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Until a reconcile has told which host is this machine, its GPUs are nobody's.
        let Some(host) = held.host else { continue };
        let report = tokio::task::spawn_blocking(crate::observe::gpu::nvml_report).await;
        let Ok(Ok(report)) = report else { continue };
        if report.devices.is_empty() && report.unreadable.is_empty() {
            continue;
        }
        recorder.send(gpu_event(&report, &host, &held.by_uuid, every));
    }
}
