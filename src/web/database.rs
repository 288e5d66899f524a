//! `/api/v1/history` from the history database (src/history/) that `fleet watch` records:
//! GPU utilization by host and GPU, and what happened, read through a read-only connection.
//! The server calls it off the async threads (src/web/mod.rs), since SQLite blocks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

use super::board::{
    Event, HistoryDoc, HistorySource, MAX_EVENTS, SAMPLE_EVERY, Sample, exit_cause,
};
use crate::history::{self, HistoryError, query};

/// The history database as a [`HistorySource`]; the connection is opened at the first request
/// and opened again after an error.
pub struct DatabaseHistory {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl DatabaseHistory {
    pub fn new(path: &Path) -> DatabaseHistory {
        DatabaseHistory {
            path: path.to_path_buf(),
            conn: Mutex::new(None),
        }
    }

    fn read(&self, since: i64) -> Result<HistoryDoc, HistoryError> {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(history::open_read_only(&self.path)?);
        }
        let Some(conn) = slot.as_ref() else {
            return Ok(HistoryDoc::default());
        };
        let doc = read_doc(conn, since);
        if doc.is_err() {
            // A connection that failed once is not trusted again (the file may have been
            // replaced); the next request opens a new one.
            *slot = None;
        }
        doc
    }
}

impl HistorySource for DatabaseHistory {
    fn history(&self, since: i64) -> HistoryDoc {
        self.read(since).unwrap_or_else(|e| {
            tracing::warn!("status page: cannot read the history database: {e}");
            HistoryDoc {
                source: "database",
                since,
                error: Some(e.to_string()),
                ..HistoryDoc::default()
            }
        })
    }
}

fn read_doc(conn: &Connection, since: i64) -> Result<HistoryDoc, HistoryError> {
    let (from, to) = (since as f64, f64::MAX);
    let mut gpus: BTreeMap<String, BTreeMap<String, Vec<Sample>>> = BTreeMap::new();
    for row in query::gpu_samples(conn, from, to)? {
        let Some(percent) = row.utilization else {
            continue;
        };
        let series = gpus
            .entry(row.host)
            .or_default()
            .entry(row.uuid)
            .or_default();
        let at = row.ts as i64;
        // The sampler may read every second; the chart needs no more than the memory keeps.
        if series
            .last()
            .is_none_or(|(last, _)| at - last >= SAMPLE_EVERY)
        {
            series.push((at, percent.round().clamp(0.0, 100.0) as u32));
        }
    }
    let mut events: Vec<Event> = query::events(conn, from, to)?
        .into_iter()
        .flat_map(events_of)
        .collect();
    events.extend(query::exits(conn, from, to)?.into_iter().map(|exit| {
        let oom = if exit.oom { ", out of memory" } else { "" };
        Event {
            at: exit.ts as i64,
            kind: "runner_exited",
            subject: exit.runner,
            detail: format!("{}{oom}", exit_cause(exit.exit_code)),
        }
    }));
    events.extend(host_events(query::spans(conn, "host", from, to)?, from));
    events.sort_by_key(|e| e.at);
    let excess = events.len().saturating_sub(MAX_EVENTS);
    events.drain(..excess);
    Ok(HistoryDoc {
        source: "database",
        since,
        gpus,
        events,
        error: None,
    })
}

/// Hosts that went down (a `down` span that starts in the span asked for) or came back (an
/// `up` span after a `down` one).
fn host_events(spans: Vec<query::Span>, from: f64) -> Vec<Event> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut events = Vec::new();
    for span in spans {
        let was = last.insert(span.key.clone(), span.value.clone());
        if span.start < from {
            continue;
        }
        let kind = match (was.as_deref(), span.value.as_str()) {
            (Some("down"), "up") => "host_up",
            (_, "down") => "host_down",
            _ => continue,
        };
        events.push(Event {
            at: span.start as i64,
            kind,
            subject: span.key,
            detail: String::new(),
        });
    }
    events
}

/// A recorded event as the page lists it, in the words of the in-memory record: a runner
/// created, removed or replaced, a step that failed, a reconcile that did not go well, a
/// container out of memory. Left out: reconciles that went well, deferred steps (each
/// reconcile defers again), Docker's `die` (the exits table tells it with its exit code).
fn events_of(row: query::EventRow) -> Vec<Event> {
    let text = |key: &str| {
        row.detail
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let at = row.ts as i64;
    let event = |kind, subject: String, detail: String| Event {
        at,
        kind,
        subject,
        detail,
    };
    let subject = row.runner.clone().unwrap_or_default();
    let host = row.host.clone().unwrap_or_default();
    match (
        row.kind.as_str(),
        text("outcome").as_str(),
        text("action").as_str(),
    ) {
        ("reconcile", _, _) if text("result") != "ok" => {
            vec![event("reconcile_failed", text("trigger"), text("result"))]
        }
        ("action", "done", "create") => {
            vec![event("runner_started", subject, format!("on host {host}"))]
        }
        ("action", "done", "destroy") => vec![event(
            "runner_removed",
            subject,
            format!("from host {host}: {}", text("why")),
        )],
        ("action", "done", "replace") => {
            let new = text("new_runner");
            let mut events = vec![event(
                "runner_removed",
                subject,
                format!("from host {host}: replaced by {new}: {}", text("why")),
            )];
            if !new.is_empty() {
                events.push(event("runner_started", new, format!("on host {host}")));
            }
            events
        }
        ("action", "failed", action) => vec![event(
            "action_failed",
            subject,
            format!("{action} ({}): {}", row.source, text("why")),
        )],
        ("docker", _, "oom") => vec![event("runner_out_of_memory", subject, String::new())],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{
        Event as Recorded, GpuSample, Recorder, SpanEntry, SpanKind, WriterOptions,
    };
    use prometheus_client::metrics::counter::Counter;

    fn gpu(at: f64, uuid: &str, utilization: Option<f64>) -> Recorded {
        Recorded::Gpus {
            at,
            every: 1.0,
            samples: vec![GpuSample {
                host: "gpu-box".into(),
                uuid: uuid.into(),
                runner: Some("zq-gpu-a".into()),
                pool: Some("gpu".into()),
                utilization,
                memory_used: None,
                memory_total: None,
                temperature: None,
                health: "ok".into(),
            }],
        }
    }

    fn action(at: f64, action: &str, outcome: &str, name: &str, new: Option<&str>) -> Recorded {
        Recorded::Action {
            at,
            source: crate::history::Source::Watch,
            action: action.into(),
            name: name.into(),
            pool: Some("gpu".into()),
            host: Some("gpu-box".into()),
            outcome: outcome.into(),
            why: "its job is done".into(),
            seconds: 0.5,
            runner: new.map(str::to_string),
            cause: "job_done".into(),
        }
    }

    #[test]
    fn history_is_read_from_the_database_watch_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zq.db");
        let recorder = Recorder::start(&path, WriterOptions::default(), Counter::default());
        assert!(recorder.is_on());
        for event in [
            gpu(900.0, "GPU-a", Some(10.0)), // before the span asked for
            gpu(1_000.0, "GPU-a", Some(40.4)),
            gpu(1_002.0, "GPU-a", Some(50.0)), // within SAMPLE_EVERY of the last: left out
            gpu(1_010.0, "GPU-a", Some(90.0)),
            gpu(1_010.0, "GPU-b", None), // unreadable: no point
            Recorded::Reconcile {
                at: 1_001.0,
                trigger: "resync".into(),
                result: "ok".into(),
                seconds: 0.1,
            },
            Recorded::Reconcile {
                at: 1_003.0,
                trigger: "spec-change".into(),
                result: "failed".into(),
                seconds: 0.1,
            },
            Recorded::Exit {
                at: 1_004.0,
                container_id: "c1".into(),
                runner: "zq-gpu-<b>".into(),
                pool: Some("gpu".into()),
                host: "gpu-box".into(),
                exit_code: Some(137),
            },
            action(1_006.0, "replace", "done", "zq-gpu-a", Some("zq-gpu-c")),
            action(1_006.0, "create-volume", "done", "zq-vol", None),
            action(1_006.0, "create", "deferred", "zq-gpu-d", None),
            action(1_007.0, "destroy", "failed", "zq-gpu-e", None),
            Recorded::Snapshot {
                at: 1_005.0,
                kind: SpanKind::Host,
                entries: vec![SpanEntry {
                    key: "gpu-box".into(),
                    pool: None,
                    host: Some("gpu-box".into()),
                    value: "down".into(),
                }],
            },
            Recorded::Snapshot {
                at: 1_008.0,
                kind: SpanKind::Host,
                entries: vec![SpanEntry {
                    key: "gpu-box".into(),
                    pool: None,
                    host: Some("gpu-box".into()),
                    value: "up".into(),
                }],
            },
        ] {
            recorder.send(event);
        }
        recorder.flush();

        let doc = DatabaseHistory::new(&path).history(950);
        assert_eq!((doc.source, doc.since, doc.error), ("database", 950, None));
        assert_eq!(doc.gpus["gpu-box"]["GPU-a"], vec![(1_000, 40), (1_010, 90)]);
        assert!(!doc.gpus["gpu-box"].contains_key("GPU-b"), "{:?}", doc.gpus);
        let events: Vec<(i64, &str, &str, &str)> = doc
            .events
            .iter()
            .map(|e| (e.at, e.kind, e.subject.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(
            events,
            [
                (1_003, "reconcile_failed", "spec-change", "failed"),
                (
                    1_004,
                    "runner_exited",
                    "zq-gpu-<b>",
                    "exit code 137 (killed: SIGKILL, or out of memory)"
                ),
                (1_005, "host_down", "gpu-box", ""),
                (
                    1_006,
                    "runner_removed",
                    "zq-gpu-a",
                    "from host gpu-box: replaced by zq-gpu-c: its job is done"
                ),
                (1_006, "runner_started", "zq-gpu-c", "on host gpu-box"),
                (
                    1_007,
                    "action_failed",
                    "zq-gpu-e",
                    "destroy (watch): its job is done"
                ),
                (1_008, "host_up", "gpu-box", ""),
            ]
        );
        recorder.close();
    }

    #[test]
    fn a_missing_database_answers_an_empty_history_that_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let doc = DatabaseHistory::new(&dir.path().join("none.db")).history(0);
        assert_eq!(doc.source, "database");
        assert!(doc.gpus.is_empty() && doc.events.is_empty());
        assert!(doc.error.unwrap_or_default().contains("does not exist"));
    }
}
