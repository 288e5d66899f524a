//! The read API of history: rows between two times, plain data, for `fleet report` and for
//! whatever else shows history (a web page reading `/api/v1/history`). Times are seconds since
//! the epoch; a range is `[from, to)`.

use rusqlite::{Connection, Params, Row, params};
use serde::Serialize;

use super::HistoryError;

/// A value that held from `start` to `end`: a runner's state, a host up or down, a pool's
/// wanted count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub kind: String,
    pub key: String,
    pub pool: Option<String>,
    pub host: Option<String>,
    pub value: String,
    pub start: f64,
    pub end: f64,
}

/// One recorded event: a reconcile, an apply action, a Docker event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub ts: f64,
    pub kind: String,
    pub source: String,
    pub pool: Option<String>,
    pub host: Option<String>,
    pub runner: Option<String>,
    pub detail: serde_json::Value,
}

/// A job as read back: the record the writer wrote (`JobRecord`).
pub type JobRow = super::JobRecord;

/// A GPU reading (or the average of several, once downsampled).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuRow {
    pub ts: f64,
    pub host: String,
    pub uuid: String,
    pub runner: Option<String>,
    pub pool: Option<String>,
    pub utilization: Option<f64>,
    pub memory_used: Option<i64>,
    pub memory_total: Option<i64>,
    pub temperature: Option<f64>,
    pub health: String,
    /// How many seconds the row stands for.
    pub seconds: f64,
}

/// A runner container's exit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExitRow {
    pub ts: f64,
    pub runner: String,
    pub pool: Option<String>,
    pub host: Option<String>,
    pub exit_code: Option<i64>,
    pub oom: bool,
}

/// Every row `sql` selects with `params`, each made by `row`; `what` says what was read when
/// it fails.
pub(super) fn rows<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    what: &'static str,
    row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, HistoryError> {
    let mut stmt = conn.prepare_cached(sql).map_err(HistoryError::sql(what))?;
    let rows = stmt
        .query_map(params, row)
        .map_err(HistoryError::sql(what))?;
    rows.collect::<Result<_, _>>()
        .map_err(HistoryError::sql(what))
}

/// The first and last time history has anything for; `None` for an empty database.
pub fn extent(conn: &Connection) -> Result<Option<(f64, f64)>, HistoryError> {
    conn.query_row(
        "SELECT MIN(a), MAX(b) FROM (
             SELECT MIN(ts) AS a, MAX(ts) AS b FROM events
             UNION ALL SELECT MIN(start), MAX(end) FROM spans
             UNION ALL SELECT MIN(ts), MAX(ts) FROM gpu_samples
             UNION ALL SELECT MIN(COALESCE(queued, assigned, started)), MAX(COALESCE(finished, started)) FROM jobs)",
        [],
        |r| Ok((r.get::<_, Option<f64>>(0)?, r.get::<_, Option<f64>>(1)?)),
    )
    .map(|(a, b)| a.zip(b))
    .map_err(HistoryError::sql("read the span of history"))
}

/// Spans of `kind` (`runner`, `host`, `pool`) that overlap `[from, to)`.
pub fn spans(conn: &Connection, kind: &str, from: f64, to: f64) -> Result<Vec<Span>, HistoryError> {
    rows(
        conn,
        "SELECT kind, key, pool, host, value, start, end FROM spans
         WHERE kind = ?1 AND end >= ?2 AND start < ?3 ORDER BY start",
        params![kind, from, to],
        "read spans",
        |r| {
            Ok(Span {
                kind: r.get(0)?,
                key: r.get(1)?,
                pool: r.get(2)?,
                host: r.get(3)?,
                value: r.get(4)?,
                start: r.get(5)?,
                end: r.get(6)?,
            })
        },
    )
}

/// Events in `[from, to)`, oldest first.
pub fn events(conn: &Connection, from: f64, to: f64) -> Result<Vec<EventRow>, HistoryError> {
    events_of_kind(conn, None, from, to)
}

/// Events of `kind` (`reconcile`, `action`, `docker`; `None`: all) in `[from, to)`.
pub fn events_of_kind(
    conn: &Connection,
    kind: Option<&str>,
    from: f64,
    to: f64,
) -> Result<Vec<EventRow>, HistoryError> {
    // Two statements: `kind = ?3` alone lets SQLite use the (kind, ts) index.
    let sql = match kind {
        Some(_) => {
            "SELECT ts, kind, source, pool, host, runner, detail FROM events
             WHERE kind = ?3 AND ts >= ?1 AND ts < ?2 ORDER BY ts, id"
        }
        None => {
            "SELECT ts, kind, source, pool, host, runner, detail FROM events
             WHERE ts >= ?1 AND ts < ?2 AND ?3 IS NULL ORDER BY ts, id"
        }
    };
    rows(conn, sql, params![from, to, kind], "read events", |r| {
        let detail: String = r.get(6)?;
        Ok(EventRow {
            ts: r.get(0)?,
            kind: r.get(1)?,
            source: r.get(2)?,
            pool: r.get(3)?,
            host: r.get(4)?,
            runner: r.get(5)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        })
    })
}

/// Jobs that ran (or waited) in `[from, to)`: those that started, finished or were queued then.
pub fn jobs(conn: &Connection, from: f64, to: f64) -> Result<Vec<JobRow>, HistoryError> {
    rows(
        conn,
        "SELECT job_id, pool, repository, workflow_ref, job_name, run_id, runner, queued,
             assigned, started, finished, result, source FROM jobs
         WHERE COALESCE(finished, started, assigned, queued) >= ?1
           AND COALESCE(queued, assigned, started, finished) < ?2
         ORDER BY COALESCE(queued, assigned, started)",
        params![from, to],
        "read jobs",
        |r| {
            Ok(JobRow {
                job_id: r.get(0)?,
                pool: r.get(1)?,
                repository: r.get(2)?,
                workflow_ref: r.get(3)?,
                job_name: r.get(4)?,
                run_id: r.get::<_, Option<i64>>(5)?.map(|id| id as u64),
                runner: r.get(6)?,
                queued: r.get(7)?,
                assigned: r.get(8)?,
                started: r.get(9)?,
                finished: r.get(10)?,
                result: r.get(11)?,
                source: super::JobSource::parse(&r.get::<_, String>(12)?),
            })
        },
    )
}

/// GPU samples in `[from, to)`, oldest first.
pub fn gpu_samples(conn: &Connection, from: f64, to: f64) -> Result<Vec<GpuRow>, HistoryError> {
    rows(
        conn,
        "SELECT ts, host, uuid, runner, pool, utilization, memory_used, memory_total,
             temperature, health, seconds FROM gpu_samples
         WHERE ts >= ?1 AND ts < ?2 ORDER BY ts",
        params![from, to],
        "read GPU samples",
        |r| {
            Ok(GpuRow {
                ts: r.get(0)?,
                host: r.get(1)?,
                uuid: r.get(2)?,
                runner: r.get(3)?,
                pool: r.get(4)?,
                utilization: r.get(5)?,
                memory_used: r.get(6)?,
                memory_total: r.get(7)?,
                temperature: r.get(8)?,
                health: r.get(9)?,
                seconds: r.get(10)?,
            })
        },
    )
}

/// Runner exits in `[from, to)`.
pub fn exits(conn: &Connection, from: f64, to: f64) -> Result<Vec<ExitRow>, HistoryError> {
    rows(
        conn,
        "SELECT ts, runner, pool, host, exit_code, oom FROM exits
         WHERE ts >= ?1 AND ts < ?2 ORDER BY ts",
        params![from, to],
        "read exits",
        |r| {
            Ok(ExitRow {
                ts: r.get(0)?,
                runner: r.get(1)?,
                pool: r.get(2)?,
                host: r.get(3)?,
                exit_code: r.get(4)?,
                oom: r.get(5)?,
            })
        },
    )
}

/// A time series: the runners of each pool in each state, sampled every `step` seconds from
/// the runner spans (a point per step that some runner covers).
pub fn runner_series(
    conn: &Connection,
    from: f64,
    to: f64,
    step: f64,
) -> Result<Vec<SeriesPoint>, HistoryError> {
    let step = step.max(1.0);
    let spans = spans(conn, "runner", from, to)?;
    let mut points: std::collections::BTreeMap<(i64, String, String), f64> = Default::default();
    for s in &spans {
        let first = ((s.start.max(from) - from) / step).ceil() as i64;
        let last = ((s.end.min(to) - from) / step).floor() as i64;
        for i in first..=last {
            let key = (i, s.pool.clone().unwrap_or_default(), s.value.clone());
            *points.entry(key).or_default() += 1.0;
        }
    }
    Ok(points
        .into_iter()
        .map(|((i, pool, state), value)| SeriesPoint {
            ts: from + i as f64 * step,
            series: format!("{pool}/{state}"),
            value,
        })
        .collect())
}

/// One point of a time series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    pub ts: f64,
    /// What the point is of (`pool/state`).
    pub series: String,
    pub value: f64,
}

/// `PRAGMA integrity_check`: `ok`, or what SQLite found wrong.
pub fn integrity_check(conn: &Connection) -> Result<String, HistoryError> {
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(HistoryError::sql("check the database"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(HistoryError::sql("check the database"))?;
    let lines: Vec<String> = rows
        .collect::<Result<_, _>>()
        .map_err(HistoryError::sql("check the database"))?;
    Ok(lines.join("\n"))
}
