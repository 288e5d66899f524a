//! What the status page shows: watch's last observation, its last reconcile and plan, and the
//! history the page charts. Watch writes it after each reconcile; the server only reads it, so
//! a browser never causes a request to Docker or GitHub and a reconcile never waits on one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::plan::{AutoscalePool, Plan};
use crate::status::{FleetStatus, RunnerState};

/// How far back the in-memory history reaches.
pub const HISTORY_SECONDS: i64 = 24 * 3600;
/// The shortest time between two kept utilization samples of one GPU (a 1 s resync would
/// otherwise keep 86,400 a day).
pub(crate) const SAMPLE_EVERY: i64 = 5;
/// The most events kept.
pub(crate) const MAX_EVENTS: usize = 500;

/// The last reconcile, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LastReconcile {
    /// When it ended, in seconds since the epoch.
    pub ended_at: i64,
    pub trigger: String,
    /// `ok`, `failed`, `error`, `invalid_spec` or `plan_error` (as `fleet_reconcile_total`).
    pub result: String,
    pub duration_seconds: f64,
}

/// What the current plan still wants.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub summary: String,
    /// `action name` of each change apply makes now.
    pub changes: Vec<String>,
    /// `action name` of each change that waits for a busy runner.
    pub deferred: Vec<String>,
    pub warnings: Vec<String>,
    /// Autoscaled pools: wanted, assigned jobs, capacity offered, jobs waiting and why.
    pub autoscale: Vec<AutoscaleView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AutoscaleView {
    #[serde(flatten)]
    pub pool: AutoscalePool,
    /// `X-ScaleSetMaxCapacity` offered to GitHub.
    pub capacity: u32,
}

impl PlanView {
    pub fn of(plan: &Plan) -> PlanView {
        PlanView {
            summary: crate::render::summary_line(&plan.summary()),
            changes: plan
                .changes
                .iter()
                .map(|c| format!("{} {}", c.action().as_str(), c.name()))
                .collect(),
            deferred: plan
                .deferred
                .iter()
                .map(|d| format!("{} {}", d.change.action().as_str(), d.change.name))
                .collect(),
            warnings: plan.warnings.clone(),
            autoscale: plan
                .autoscale
                .iter()
                .map(|p| AutoscaleView {
                    capacity: p.capacity(),
                    pool: p.clone(),
                })
                .collect(),
        }
    }
}

/// `/api/v1/watch`: the loop's own state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchView {
    /// When the status was observed, in seconds since the epoch (`None`: not yet).
    pub observed_at: Option<i64>,
    pub last_reconcile: Option<LastReconcile>,
    pub plan: Option<PlanView>,
}

/// One utilization sample: `[seconds since the epoch, percent]`.
pub type Sample = (i64, u32);

/// `/api/v1/history`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryDoc {
    /// Where it comes from: `database` (the history database watch records) or `memory`
    /// (what this watch saw since it started, at most 24 h: with `--no-history`).
    pub source: &'static str,
    pub since: i64,
    /// GPU utilization by host, then GPU UUID.
    pub gpus: BTreeMap<String, BTreeMap<String, Vec<Sample>>>,
    /// Newest last.
    pub events: Vec<Event>,
    /// Why the history could not be read (the answer is then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Something that happened to the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at: i64,
    /// `runner_started`, `runner_exited`, `runner_removed`, `host_down`, `host_up`,
    /// `reconcile_failed`.
    pub kind: &'static str,
    /// The runner or host.
    pub subject: String,
    pub detail: String,
}

/// Where `/api/v1/history` reads from: the history database (`database.rs`) when watch
/// records one, else the in-memory record below. Called off the async threads: it may block.
pub trait HistorySource: Send + Sync {
    fn history(&self, since: i64) -> HistoryDoc;
}

/// GPU utilization and events that watch saw, kept in memory for [`HISTORY_SECONDS`].
#[derive(Default)]
pub struct MemoryHistory {
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    gpus: BTreeMap<(String, String), VecDeque<Sample>>,
    events: VecDeque<Event>,
}

impl MemoryHistory {
    /// Keeps a sample of each GPU a runner holds that NVML read, at most one per
    /// [`SAMPLE_EVERY`]; drops what is older than [`HISTORY_SECONDS`].
    pub fn sample(&self, status: &FleetStatus, now: i64) {
        let Ok(mut memory) = self.inner.lock() else {
            return;
        };
        for runner in status.pools.iter().flat_map(|p| &p.runners) {
            for gpu in &runner.gpus {
                let Some(percent) = gpu.utilization_percent else {
                    continue;
                };
                let series = memory
                    .gpus
                    .entry((runner.host.clone(), gpu.uuid.clone()))
                    .or_default();
                if series.back().is_none_or(|(at, _)| now - at >= SAMPLE_EVERY) {
                    series.push_back((now, percent));
                }
            }
        }
        for series in memory.gpus.values_mut() {
            while series
                .front()
                .is_some_and(|(at, _)| now - at > HISTORY_SECONDS)
            {
                series.pop_front();
            }
        }
        memory.gpus.retain(|_, s| !s.is_empty());
        memory.events.retain(|e| now - e.at <= HISTORY_SECONDS);
    }

    pub fn events(&self, events: impl IntoIterator<Item = Event>) {
        let Ok(mut memory) = self.inner.lock() else {
            return;
        };
        memory.events.extend(events);
        while memory.events.len() > MAX_EVENTS {
            memory.events.pop_front();
        }
    }
}

impl HistorySource for MemoryHistory {
    fn history(&self, since: i64) -> HistoryDoc {
        let Ok(memory) = self.inner.lock() else {
            return HistoryDoc::default();
        };
        let mut gpus: BTreeMap<String, BTreeMap<String, Vec<Sample>>> = BTreeMap::new();
        for ((host, uuid), series) in &memory.gpus {
            let kept: Vec<Sample> = series
                .iter()
                .filter(|(at, _)| *at >= since)
                .copied()
                .collect();
            if !kept.is_empty() {
                gpus.entry(host.clone())
                    .or_default()
                    .insert(uuid.clone(), kept);
            }
        }
        HistoryDoc {
            source: "memory",
            since,
            gpus,
            events: memory
                .events
                .iter()
                .filter(|e| e.at >= since)
                .cloned()
                .collect(),
            error: None,
        }
    }
}

/// An exit code in words: what the runner's process most likely met.
pub(crate) fn exit_cause(code: Option<i64>) -> String {
    let Some(code) = code else {
        return "exit code unknown".into();
    };
    let cause = match code {
        0 => "finished",
        137 => "killed: SIGKILL, or out of memory",
        143 => "stopped: SIGTERM",
        c if c > 128 => "ended by a signal",
        _ => "failed",
    };
    format!("exit code {code} ({cause})")
}

/// What changed between two observations, as events: runners that came, exited or went, hosts
/// that went away or came back.
pub fn changes(before: &FleetStatus, after: &FleetStatus, at: i64) -> Vec<Event> {
    let runners = |s: &FleetStatus| -> BTreeMap<String, (String, RunnerState, Option<i64>)> {
        s.pools
            .iter()
            .flat_map(|p| &p.runners)
            .map(|r| (r.name.clone(), (r.host.clone(), r.state, r.exit_code)))
            .collect()
    };
    let (old, new) = (runners(before), runners(after));
    let mut events = Vec::new();
    let event = |kind, subject: &str, detail: String| Event {
        at,
        kind,
        subject: subject.to_string(),
        detail,
    };
    for (name, (host, state, code)) in &new {
        match old.get(name) {
            None => events.push(event("runner_started", name, format!("on host {host}"))),
            Some((_, was, _)) if *was != RunnerState::Exited && *state == RunnerState::Exited => {
                events.push(event("runner_exited", name, exit_cause(*code)));
            }
            _ => {}
        }
    }
    for (name, (host, _, _)) in &old {
        if !new.contains_key(name) {
            events.push(event("runner_removed", name, format!("from host {host}")));
        }
    }
    for host in &after.hosts {
        let was = before.hosts.iter().find(|h| h.name == host.name);
        match (was.map(|h| h.observed), host.observed) {
            (Some(true) | None, false) => events.push(event(
                "host_down",
                &host.name,
                host.reason.clone().unwrap_or_default(),
            )),
            (Some(false), true) => events.push(event("host_up", &host.name, String::new())),
            _ => {}
        }
    }
    events
}

/// The shared state: written by watch, read by the server.
pub struct Board {
    /// `/api/v1/status`, serialized once per observation (every poll reads the same bytes).
    status: RwLock<Option<(Arc<FleetStatus>, bytes::Bytes)>>,
    watch: RwLock<WatchView>,
    memory: Arc<MemoryHistory>,
    history: Arc<dyn HistorySource>,
}

impl Default for Board {
    fn default() -> Self {
        Board::new()
    }
}

impl Board {
    /// A board whose history is the in-memory record of this watch.
    pub fn new() -> Board {
        let memory = Arc::new(MemoryHistory::default());
        Board {
            status: RwLock::new(None),
            watch: RwLock::new(WatchView::default()),
            history: memory.clone(),
            memory,
        }
    }

    /// A board whose `/api/v1/history` reads from `history` (the history database) instead of
    /// the in-memory record (which is still kept, but no longer served).
    pub fn with_history(history: Arc<dyn HistorySource>) -> Board {
        Board {
            history,
            ..Board::new()
        }
    }

    /// A new observation (`now`: seconds since the epoch).
    pub fn observed(&self, status: FleetStatus, now: i64) {
        let body = match serde_json::to_vec(&status) {
            Ok(body) => bytes::Bytes::from(body),
            Err(e) => {
                tracing::warn!("cannot serialize the status for the status page: {e}");
                return;
            }
        };
        let status = Arc::new(status);
        let before = match self.status.write() {
            Ok(mut slot) => slot.replace((status.clone(), body)).map(|(s, _)| s),
            Err(_) => return,
        };
        if let Some(before) = before {
            self.memory.events(changes(&before, &status, now));
        } else {
            // The first look: hosts that are already down are news.
            let empty = FleetStatus {
                hosts: vec![],
                pools: vec![],
                ..(*status).clone()
            };
            self.memory.events(changes(&empty, &status, now));
        }
        self.memory.sample(&status, now);
        if let Ok(mut watch) = self.watch.write() {
            watch.observed_at = Some(now);
        }
    }

    pub fn planned(&self, plan: &Plan) {
        if let Ok(mut watch) = self.watch.write() {
            watch.plan = Some(PlanView::of(plan));
        }
    }

    pub fn reconciled(&self, last: LastReconcile) {
        if !matches!(last.result.as_str(), "ok") {
            self.memory.events([Event {
                at: last.ended_at,
                kind: "reconcile_failed",
                subject: last.trigger.clone(),
                detail: last.result.clone(),
            }]);
        }
        if let Ok(mut watch) = self.watch.write() {
            watch.last_reconcile = Some(last);
        }
    }

    /// The status document, `None` before the first observation.
    pub fn status_json(&self) -> Option<bytes::Bytes> {
        self.status.read().ok()?.as_ref().map(|(_, b)| b.clone())
    }

    pub fn watch(&self) -> WatchView {
        self.watch.read().map(|w| w.clone()).unwrap_or_default()
    }

    pub fn history(&self, since: i64) -> HistoryDoc {
        self.history.history(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::ContainerStatus;
    use crate::status::{GpuUse, HostStatus, PoolStatus, RunnerStatus, Totals};

    fn status(runners: &[(&str, RunnerState, Option<u32>)], host_up: bool) -> FleetStatus {
        FleetStatus {
            fleet: "zq".into(),
            pools: vec![PoolStatus {
                name: "gpu".into(),
                host: "local".into(),
                hosts: vec!["local".into()],
                desired: 2,
                runners: runners
                    .iter()
                    .map(|(name, state, util)| RunnerStatus {
                        name: name.to_string(),
                        host: "local".into(),
                        state: *state,
                        container: ContainerStatus::Running,
                        uptime_seconds: 1,
                        exit_code: (*state == RunnerState::Exited).then_some(137),
                        github: None,
                        job: None,
                        gpus: util
                            .map(|u| GpuUse {
                                uuid: format!("GPU-{name}"),
                                utilization_percent: Some(u),
                                memory_used_bytes: None,
                                memory_total_bytes: None,
                            })
                            .into_iter()
                            .collect(),
                    })
                    .collect(),
            }],
            orphan_registrations: vec![],
            totals: Totals::default(),
            hosts: vec![HostStatus {
                name: "local".into(),
                observed: host_up,
                reason: (!host_up).then(|| "does not answer".into()),
                gpu_source: "declared".into(),
                gpu_note: None,
                gpus: vec![],
            }],
            autoscale: vec![],
            scale_set_error: None,
            start_failures: vec![],
        }
    }

    #[test]
    fn a_board_serves_the_history_source_it_is_given() {
        struct Fixed;
        impl HistorySource for Fixed {
            fn history(&self, since: i64) -> HistoryDoc {
                HistoryDoc {
                    source: "database",
                    since,
                    ..HistoryDoc::default()
                }
            }
        }
        let board = Board::with_history(Arc::new(Fixed));
        board.observed(
            status(&[("zq-gpu-a", RunnerState::Busy, Some(40))], true),
            1_000,
        );
        let doc = board.history(7);
        assert_eq!((doc.source, doc.since, doc.gpus.len()), ("database", 7, 0));
        assert_eq!(Board::new().history(0).source, "memory");
    }

    #[test]
    fn events_say_which_runners_came_exited_and_went_and_which_hosts_went_away() {
        let a = status(
            &[
                ("zq-gpu-a", RunnerState::Busy, None),
                ("zq-gpu-b", RunnerState::Idle, None),
            ],
            true,
        );
        let b = status(
            &[
                ("zq-gpu-a", RunnerState::Exited, None),
                ("zq-gpu-c", RunnerState::Idle, None),
            ],
            false,
        );
        let kinds: Vec<(&str, String, String)> = changes(&a, &b, 7)
            .into_iter()
            .map(|e| (e.kind, e.subject, e.detail))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    "runner_exited",
                    "zq-gpu-a".into(),
                    "exit code 137 (killed: SIGKILL, or out of memory)".into()
                ),
                ("runner_started", "zq-gpu-c".into(), "on host local".into()),
                (
                    "runner_removed",
                    "zq-gpu-b".into(),
                    "from host local".into()
                ),
                ("host_down", "local".into(), "does not answer".into()),
            ]
        );
        let back = changes(&b, &a, 8);
        assert!(
            back.iter()
                .any(|e| e.kind == "host_up" && e.subject == "local"),
            "{back:?}"
        );
    }

    #[test]
    fn the_board_serves_the_status_and_keeps_gpu_samples_for_a_day_at_most_every_few_seconds() {
        let board = Board::new();
        assert!(board.status_json().is_none());
        let s = status(&[("zq-gpu-a", RunnerState::Busy, Some(40))], true);
        board.observed(s.clone(), 1_000);
        board.observed(s.clone(), 1_001); // within SAMPLE_EVERY: not kept
        board.observed(
            status(&[("zq-gpu-a", RunnerState::Busy, Some(90))], true),
            1_000 + SAMPLE_EVERY,
        );
        let doc: serde_json::Value =
            serde_json::from_slice(&board.status_json().expect("a status")).expect("json");
        assert_eq!(
            doc,
            serde_json::to_value(status(&[("zq-gpu-a", RunnerState::Busy, Some(90))], true))
                .expect("json")
        );
        let history = board.history(0);
        assert_eq!(
            history.gpus["local"]["GPU-zq-gpu-a"],
            vec![(1_000, 40), (1_005, 90)]
        );
        assert_eq!(history.events.len(), 1, "{:?}", history.events);
        assert_eq!(history.events[0].kind, "runner_started");
        // A day later the old samples are gone.
        board.observed(s, 1_000 + HISTORY_SECONDS + 10);
        let history = board.history(0);
        assert_eq!(
            history.gpus["local"]["GPU-zq-gpu-a"],
            vec![(1_000 + HISTORY_SECONDS + 10, 40)]
        );
        assert!(history.events.is_empty(), "{:?}", history.events);
        assert!(board.watch().observed_at == Some(1_000 + HISTORY_SECONDS + 10));
    }
}
