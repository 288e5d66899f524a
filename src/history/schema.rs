//! The database's schema: a list of migrations, each run once, in order, in its own
//! transaction. `PRAGMA user_version` holds how many have run. A database written by a newer
//! fleet (a higher version than this one knows) is refused, never changed.

use rusqlite::Connection;

use super::HistoryError;

/// Migration `i` brings the schema from version `i` to `i + 1`. Append only: a released
/// migration is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: events, spans, jobs, GPU samples, exits.
    r#"
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        pool TEXT,
        host TEXT,
        runner TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_ts ON events (ts);
    CREATE TABLE spans (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        pool TEXT,
        host TEXT,
        value TEXT NOT NULL,
        start REAL NOT NULL,
        end REAL NOT NULL,
        open INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX spans_end ON spans (kind, end);
    CREATE INDEX spans_open ON spans (open) WHERE open = 1;
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        repository TEXT,
        workflow_ref TEXT,
        job_name TEXT,
        run_id INTEGER,
        runner TEXT,
        queued REAL,
        assigned REAL,
        started REAL,
        finished REAL,
        result TEXT
    );
    CREATE INDEX jobs_started ON jobs (started);
    CREATE TABLE gpu_samples (
        ts REAL NOT NULL,
        host TEXT NOT NULL,
        uuid TEXT NOT NULL,
        runner TEXT,
        pool TEXT,
        utilization REAL,
        memory_used INTEGER,
        memory_total INTEGER,
        temperature REAL,
        health TEXT NOT NULL DEFAULT 'ok',
        samples INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX gpu_samples_ts ON gpu_samples (ts);
    CREATE TABLE exits (
        container_id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        runner TEXT NOT NULL,
        pool TEXT,
        host TEXT,
        exit_code INTEGER,
        oom INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX exits_ts ON exits (ts);
    "#,
    // 2: where a job's record came from (`scaleset` messages, or a fixed pool's busy runner
    // matched to a workflow run's job), and how long each GPU sample stands for (a
    // downsampled row stands for many seconds); GPU samples by runner, to sum a job's GPU-hours
    // once when it finishes (`jobs.gpu_seconds`); hourly sums of the GPU samples, so that a
    // month's report reads hundreds of rows, not a million.
    r#"
    ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'scaleset';
    ALTER TABLE gpu_samples ADD COLUMN seconds REAL NOT NULL DEFAULT 10;
    CREATE INDEX gpu_samples_runner ON gpu_samples (runner, ts);
    ALTER TABLE jobs ADD COLUMN gpu_seconds REAL;
    CREATE TABLE gpu_hourly (
        hour REAL NOT NULL,
        host TEXT NOT NULL,
        uuid TEXT NOT NULL,
        pool TEXT NOT NULL DEFAULT '',
        sampled REAL NOT NULL DEFAULT 0,
        held REAL NOT NULL DEFAULT 0,
        busy REAL NOT NULL DEFAULT 0,
        busy_utilization REAL NOT NULL DEFAULT 0,
        incidents INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (hour, host, uuid, pool)
    );
    "#,
    // 3: events by kind and time, so that a month's report reads the plan steps it counts
    // without going through every reconcile.
    r#"
    CREATE INDEX events_kind_ts ON events (kind, ts);
    "#,
];

/// The schema version this fleet writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// The first `n` migrations (tests build a database of an older schema with it).
pub fn migrate_to(conn: &mut Connection, n: u32) -> Result<(), HistoryError> {
    let current: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(HistoryError::sql("read the schema version"))?;
    if current > VERSION {
        return Err(HistoryError::NewerSchema {
            found: current,
            known: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(n as usize)
        .skip(current as usize)
    {
        let tx = conn
            .transaction()
            .map_err(HistoryError::sql("start a migration"))?;
        tx.execute_batch(sql)
            .map_err(HistoryError::sql("migrate the schema"))?;
        tx.pragma_update(None, "user_version", i as u32 + 1)
            .map_err(HistoryError::sql("record the schema version"))?;
        tx.commit()
            .map_err(HistoryError::sql("commit a migration"))?;
    }
    Ok(())
}

/// Brings the schema to [`VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<(), HistoryError> {
    migrate_to(conn, VERSION)
}
