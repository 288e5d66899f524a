//! The one writer of a watch's history: a thread that takes [`Event`]s from a bounded channel
//! and writes them in batched transactions, and keeps the database's size in check (retention,
//! downsampling of old GPU samples). Sending never blocks: when the queue is full or the
//! writer is gone the event is dropped and counted, as is a batch the disk refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use rusqlite::{Connection, Transaction, params};

use super::{Event, GpuSample, HistoryError, JobRecord, SpanEntry, SpanKind, now, open};

/// How the writer batches and what it keeps.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Events older than this are deleted.
    pub retention: Duration,
    /// GPU samples older than this are kept as averages over `downsample_step`.
    pub downsample_after: Duration,
    pub downsample_step: Duration,
    /// The longest an event waits in memory before its transaction commits (what `kill -9`
    /// may lose).
    pub batch_window: Duration,
    /// Events that may wait for the writer; more are dropped and counted.
    pub queue: usize,
    /// How often retention and downsampling run.
    pub maintenance_every: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            retention: Duration::from_secs(90 * 86_400),
            downsample_after: Duration::from_secs(2 * 86_400),
            downsample_step: Duration::from_secs(300),
            batch_window: Duration::from_millis(250),
            queue: 65_536,
            maintenance_every: Duration::from_secs(3600),
        }
    }
}

/// A longer gap than this between two snapshots ends a span: what happened in between was not
/// seen (watch was stopped), and is not counted.
const MAX_GAP: f64 = 300.0;

enum Message {
    Event(Box<Event>),
    /// Commit what is pending, then answer.
    Flush(SyncSender<()>),
    /// Commit what is pending, apply retention and downsampling, then answer.
    Maintain(SyncSender<()>),
    Stop,
}

/// Where the watch loop and the executor send events. Cloning it is cheap; a recorder that is
/// off takes every event and does nothing.
#[derive(Clone)]
pub struct Recorder {
    tx: Option<SyncSender<Message>>,
    errors: Counter,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    path: Option<PathBuf>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::off()
    }
}

impl Recorder {
    /// A recorder that records nothing (`--no-history`).
    pub fn off() -> Recorder {
        Recorder {
            tx: None,
            errors: Counter::default(),
            thread: Arc::new(Mutex::new(None)),
            path: None,
        }
    }

    /// Opens (or creates) the database at `path` and starts its writer. A database that
    /// cannot be opened is logged and counted in `errors`, and the recorder is off: history
    /// is never a reason for watch to stop.
    pub fn start(path: &Path, options: WriterOptions, errors: Counter) -> Recorder {
        let conn = match open(path, true) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::error!("{e}; fleet goes on without history");
                errors.inc();
                return Recorder {
                    errors,
                    ..Recorder::off()
                };
            }
        };
        let (tx, rx) = sync_channel(options.queue.max(1));
        let writer = Writer {
            conn,
            options,
            open: HashMap::new(),
            errors: errors.clone(),
            last_error_log: None,
            path: path.to_path_buf(),
        };
        let thread = std::thread::Builder::new()
            .name("fleet-history".into())
            .spawn(move || writer.run(rx));
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::error!(
                    "cannot start the history writer: {e}; fleet goes on without history"
                );
                errors.inc();
                return Recorder {
                    errors,
                    ..Recorder::off()
                };
            }
        };
        tracing::info!("history in {}", path.display());
        Recorder {
            tx: Some(tx),
            errors,
            thread: Arc::new(Mutex::new(thread)),
            path: Some(path.to_path_buf()),
        }
    }

    /// Whether events are written somewhere.
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// The database written, when on.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Queues `event` without waiting; dropped (and counted) when the writer cannot keep up.
    pub fn send(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Message::Event(Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.errors.inc();
            }
        }
    }

    /// Waits (off the hot path: tests, shutdown) until what was sent before is committed.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = sync_channel(1);
        if tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Commits what is pending and applies retention and downsampling now (the writer also
    /// does every hour); waits until done.
    pub fn maintain_now(&self) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = sync_channel(1);
        if tx.send(Message::Maintain(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(600));
        }
    }

    /// Commits what is pending and stops the writer (every clone stops recording).
    pub fn close(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Stop);
        }
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Who waits for a batch to be committed, and whether maintenance runs after it.
type Waiter = (SyncSender<()>, bool);

/// A span being extended: its row, value and last end.
struct OpenSpan {
    row: i64,
    value: String,
    end: f64,
}

struct Writer {
    conn: Connection,
    options: WriterOptions,
    /// Spans still open, by kind and key.
    open: HashMap<(SpanKind, String), OpenSpan>,
    errors: Counter,
    last_error_log: Option<Instant>,
    path: PathBuf,
}

impl Writer {
    fn run(mut self, rx: Receiver<Message>) {
        // Spans left open by a watch that stopped end where it last saw them.
        if let Err(e) = self
            .conn
            .execute("UPDATE spans SET open = 0 WHERE open = 1", [])
        {
            self.failed(&HistoryError::Sql {
                what: "close the spans of the last run",
                source: e,
            });
        }
        self.maintain();
        let mut last_maintenance = Instant::now();
        loop {
            let first = match rx.recv_timeout(self.options.maintenance_every) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    self.maintain();
                    last_maintenance = Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let (batch, flushes, stop) = self.gather(first, &rx);
            if !batch.is_empty() {
                self.write(&batch);
            }
            if flushes.iter().any(|(_, maintain)| *maintain) {
                self.maintain();
                last_maintenance = Instant::now();
            }
            for (done, _) in flushes {
                let _ = done.send(());
            }
            if stop {
                return;
            }
            if last_maintenance.elapsed() >= self.options.maintenance_every {
                self.maintain();
                last_maintenance = Instant::now();
            }
        }
    }

    /// Takes what arrives within the batch window after `first`.
    fn gather(&self, first: Message, rx: &Receiver<Message>) -> (Vec<Event>, Vec<Waiter>, bool) {
        let deadline = Instant::now() + self.options.batch_window;
        let (mut batch, mut flushes) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Event(event) => batch.push(*event),
                Message::Flush(done) => {
                    flushes.push((done, false));
                    break;
                }
                Message::Maintain(done) => {
                    flushes.push((done, true));
                    break;
                }
                Message::Stop => return (batch, flushes, true),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            next = match rx.recv_timeout(left) {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return (batch, flushes, true),
            };
        }
        (batch, flushes, false)
    }

    fn write(&mut self, batch: &[Event]) {
        let result = self.write_batch(batch);
        if let Err(e) = result {
            // The spans' rows may not exist: start them again.
            self.open.clear();
            self.failed(&e);
        }
    }

    fn write_batch(&mut self, batch: &[Event]) -> Result<(), HistoryError> {
        let tx = self
            .conn
            .transaction()
            .map_err(HistoryError::sql("start a transaction"))?;
        for event in batch {
            write_event(&tx, &mut self.open, event).map_err(HistoryError::sql("write"))?;
        }
        tx.commit().map_err(HistoryError::sql("commit"))
    }

    /// Logs a failure (at most once a minute) and counts it.
    fn failed(&mut self, e: &HistoryError) {
        self.errors.inc();
        let quiet = self
            .last_error_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        if !quiet {
            tracing::error!(
                "history ({}): {e}; events are dropped until it works again, fleet goes on",
                self.path.display()
            );
            self.last_error_log = Some(Instant::now());
        }
    }

    /// Retention and downsampling.
    fn maintain(&mut self) {
        let now = now();
        let cutoff = now - self.options.retention.as_secs_f64();
        let old = now - self.options.downsample_after.as_secs_f64();
        let step = self.options.downsample_step.as_secs_f64().max(1.0);
        let result = maintain(&mut self.conn, cutoff, old, step);
        if let Err(e) = result {
            self.failed(&HistoryError::Sql {
                what: "apply retention",
                source: e,
            });
        }
    }
}

/// Deletes what is older than `cutoff`, and replaces GPU samples older than `old` by their
/// averages over `step` seconds.
pub(super) fn maintain(
    conn: &mut Connection,
    cutoff: f64,
    old: f64,
    step: f64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM events WHERE ts < ?1", [cutoff])?;
    tx.execute("DELETE FROM spans WHERE open = 0 AND end < ?1", [cutoff])?;
    tx.execute(
        "DELETE FROM jobs WHERE COALESCE(finished, started, assigned, queued, 0) < ?1",
        [cutoff],
    )?;
    tx.execute("DELETE FROM gpu_samples WHERE ts < ?1", [cutoff])?;
    tx.execute("DELETE FROM exits WHERE ts < ?1", [cutoff])?;
    tx.execute("DELETE FROM gpu_hourly WHERE hour < ?1 - 3600", [cutoff])?;
    let last: i64 = tx.query_row("SELECT COALESCE(MAX(rowid), 0) FROM gpu_samples", [], |r| {
        r.get(0)
    })?;
    tx.execute(
        "INSERT INTO gpu_samples (ts, host, uuid, runner, pool, utilization, memory_used,
             memory_total, temperature, health, samples, seconds)
         SELECT CAST(ts / ?2 AS INTEGER) * ?2, host, uuid, runner, pool,
             SUM(utilization * seconds) / SUM(CASE WHEN utilization IS NULL THEN 0 ELSE seconds END),
             CAST(AVG(memory_used) AS INTEGER), MAX(memory_total), AVG(temperature),
             COALESCE(MAX(CASE WHEN health <> 'ok' THEN health END), 'ok'),
             SUM(samples), SUM(seconds)
         FROM gpu_samples WHERE ts < ?1 AND seconds < ?2 AND rowid <= ?3
         GROUP BY CAST(ts / ?2 AS INTEGER), host, uuid, runner, pool",
        params![old, step, last],
    )?;
    tx.execute(
        "DELETE FROM gpu_samples WHERE ts < ?1 AND seconds < ?2 AND rowid <= ?3",
        params![old, step, last],
    )?;
    tx.commit()
}

fn write_event(
    tx: &Transaction,
    open: &mut HashMap<(SpanKind, String), OpenSpan>,
    event: &Event,
) -> rusqlite::Result<()> {
    match event {
        Event::Reconcile {
            at,
            trigger,
            result,
            seconds,
        } => {
            let detail =
                serde_json::json!({"trigger": trigger, "result": result, "seconds": seconds});
            insert_event(tx, *at, "reconcile", "watch", None, None, None, &detail)
        }
        Event::Action {
            at,
            source,
            action,
            name,
            pool,
            host,
            outcome,
            why,
            seconds,
            runner,
            cause,
        } => {
            let detail = serde_json::json!({
                "action": action, "outcome": outcome, "why": why, "seconds": seconds,
                "new_runner": runner, "cause": cause,
            });
            insert_event(
                tx,
                *at,
                "action",
                source.as_str(),
                pool.as_deref(),
                host.as_deref(),
                Some(name),
                &detail,
            )
        }
        Event::Docker {
            at,
            container,
            action,
        } => {
            let detail = serde_json::json!({"action": action});
            insert_event(
                tx,
                *at,
                "docker",
                "watch",
                None,
                None,
                Some(container),
                &detail,
            )
        }
        Event::Snapshot { at, kind, entries } => snapshot(tx, open, *at, *kind, entries),
        Event::Exit {
            at,
            container_id,
            runner,
            pool,
            host,
            exit_code,
        } => {
            // An OOM event of the container before its exit marks it.
            let oom: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM events WHERE kind = 'docker' AND runner = ?1
                     AND detail = '{\"action\":\"oom\"}' AND ts <= ?2 + 5)",
                params![runner, at],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO exits (container_id, ts, runner, pool, host, exit_code, oom)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![container_id, at, runner, pool, host, exit_code, oom],
            )?;
            Ok(())
        }
        Event::Job(job) => upsert_job(tx, job),
        Event::Gpus { at, every, samples } => {
            for sample in samples {
                insert_gpu(tx, *at, *every, sample)?;
            }
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_event(
    tx: &Transaction,
    at: f64,
    kind: &str,
    source: &str,
    pool: Option<&str>,
    host: Option<&str>,
    runner: Option<&str>,
    detail: &serde_json::Value,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (ts, kind, source, pool, host, runner, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        at,
        kind,
        source,
        pool,
        host,
        runner,
        detail.to_string()
    ])?;
    Ok(())
}

/// Extends the spans whose value is unchanged, ends the others and starts new ones.
fn snapshot(
    tx: &Transaction,
    open: &mut HashMap<(SpanKind, String), OpenSpan>,
    at: f64,
    kind: SpanKind,
    entries: &[SpanEntry],
) -> rusqlite::Result<()> {
    let now: HashMap<&str, &SpanEntry> = entries.iter().map(|e| (e.key.as_str(), e)).collect();
    let mut ended = Vec::new();
    for ((k, key), span) in open.iter_mut() {
        if *k != kind {
            continue;
        }
        let same = now.get(key.as_str()).is_some_and(|e| e.value == span.value);
        let gap = at - span.end > MAX_GAP;
        if !gap {
            span.end = at;
        }
        if !same || gap {
            tx.prepare_cached("UPDATE spans SET end = ?2, open = 0 WHERE id = ?1")?
                .execute(params![span.row, span.end])?;
            ended.push(key.clone());
        } else {
            tx.prepare_cached("UPDATE spans SET end = ?2 WHERE id = ?1")?
                .execute(params![span.row, span.end])?;
        }
    }
    for key in ended {
        open.remove(&(kind, key));
    }
    for entry in entries {
        if open.contains_key(&(kind, entry.key.clone())) {
            continue;
        }
        tx.prepare_cached(
            "INSERT INTO spans (kind, key, pool, host, value, start, end, open)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 1)",
        )?
        .execute(params![
            kind.as_str(),
            entry.key,
            entry.pool,
            entry.host,
            entry.value,
            at
        ])?;
        let span = OpenSpan {
            row: tx.last_insert_rowid(),
            value: entry.value.clone(),
            end: at,
        };
        open.insert((kind, entry.key.clone()), span);
    }
    Ok(())
}

fn upsert_job(tx: &Transaction, job: &JobRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO jobs (job_id, pool, repository, workflow_ref, job_name, run_id, runner,
             queued, assigned, started, finished, result, source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (job_id) DO UPDATE SET
             repository = COALESCE(excluded.repository, repository),
             workflow_ref = COALESCE(excluded.workflow_ref, workflow_ref),
             job_name = COALESCE(excluded.job_name, job_name),
             run_id = COALESCE(excluded.run_id, run_id),
             runner = COALESCE(excluded.runner, runner),
             queued = COALESCE(queued, excluded.queued),
             assigned = COALESCE(excluded.assigned, assigned),
             started = COALESCE(excluded.started, started),
             finished = COALESCE(excluded.finished, finished),
             result = COALESCE(excluded.result, result)",
    )?
    .execute(params![
        job.job_id,
        job.pool,
        job.repository,
        job.workflow_ref,
        job.job_name,
        job.run_id.map(|id| id as i64),
        job.runner,
        job.queued,
        job.assigned,
        job.started,
        job.finished,
        job.result,
        job.source.as_str(),
    ])?;
    if job.finished.is_some() {
        // Its GPU time, once: the samples of its runner between its start and finish.
        tx.prepare_cached(
            "UPDATE jobs SET gpu_seconds = (SELECT COALESCE(SUM(g.seconds), 0) FROM gpu_samples g
                 WHERE g.runner = jobs.runner AND g.ts >= jobs.started AND g.ts <= jobs.finished)
             WHERE job_id = ?1 AND runner IS NOT NULL AND started IS NOT NULL
               AND finished IS NOT NULL",
        )?
        .execute(params![job.job_id])?;
    }
    Ok(())
}

/// GPU samples above this utilization (percent) count as busy in the hourly sums; a report
/// with another threshold reads the samples themselves.
pub const ROLLUP_BUSY_THRESHOLD: f64 = 10.0;

fn insert_gpu(tx: &Transaction, at: f64, every: f64, s: &GpuSample) -> rusqlite::Result<()> {
    let held = if s.runner.is_some() { every } else { 0.0 };
    let busy = if s.runner.is_some() && s.utilization.is_some_and(|u| u > ROLLUP_BUSY_THRESHOLD) {
        every
    } else {
        0.0
    };
    tx.prepare_cached(
        "INSERT INTO gpu_hourly (hour, host, uuid, pool, sampled, held, busy, busy_utilization,
             incidents)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (hour, host, uuid, pool) DO UPDATE SET
             sampled = sampled + excluded.sampled, held = held + excluded.held,
             busy = busy + excluded.busy,
             busy_utilization = busy_utilization + excluded.busy_utilization,
             incidents = incidents + excluded.incidents",
    )?
    .execute(params![
        (at / 3600.0).floor() * 3600.0,
        s.host,
        s.uuid,
        s.pool.as_deref().unwrap_or_default(),
        every,
        held,
        busy,
        busy * s.utilization.unwrap_or(0.0),
        i64::from(s.health != "ok"),
    ])?;
    tx.prepare_cached(
        "INSERT INTO gpu_samples (ts, host, uuid, runner, pool, utilization, memory_used,
             memory_total, temperature, health, seconds)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        at,
        s.host,
        s.uuid,
        s.runner,
        s.pool,
        s.utilization,
        s.memory_used.map(|m| m as i64),
        s.memory_total.map(|m| m as i64),
        s.temperature,
        s.health,
        every,
    ])?;
    Ok(())
}

/// Writes `events` in one transaction at once (`fleet apply`, tests): no writer thread.
pub(super) fn write_now(conn: &mut Connection, events: &[Event]) -> Result<(), HistoryError> {
    let tx = conn
        .transaction()
        .map_err(HistoryError::sql("start a transaction"))?;
    let mut open = HashMap::new();
    for event in events {
        write_event(&tx, &mut open, event).map_err(HistoryError::sql("write"))?;
    }
    tx.commit().map_err(HistoryError::sql("commit"))
}
