//! History: what ran, kept by fleet itself in an embedded SQLite database (docs/history.md).
//!
//! `fleet watch` and the executor send [`Event`]s to a [`Recorder`]; one writer thread
//! (`writer.rs`) writes them in batched transactions, so a reconcile never waits on the disk
//! and a history problem (full disk, read-only or corrupt file, newer schema) is logged and
//! counted, never a reason to stop. `query.rs` reads it back (the read API), `report.rs` turns
//! it into `fleet report`.

pub mod query;
pub mod record;
pub mod report;
pub mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

pub use record::HistoryArgs;
pub use writer::{Recorder, WriterOptions};

/// Why history could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history database {path}: cannot {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("history database: cannot {what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "history database has schema version {found}, newer than this fleet's ({known}): it was written by a newer fleet; history is off until fleet is upgraded or --history names another file"
    )]
    NewerSchema { found: u32, known: u32 },
    #[error(
        "history database has schema version {found}, older than this fleet's: `fleet watch` (or `fleet apply`) migrates it when it opens it"
    )]
    OlderSchema { found: u32 },
    #[error("history database {0} does not exist")]
    Missing(String),
    #[error(
        "no place for the history database: set STATE_DIRECTORY, XDG_STATE_HOME or HOME, or pass --history PATH"
    )]
    NoPlace,
}

impl HistoryError {
    fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> HistoryError {
        move |source| HistoryError::Sql { what, source }
    }

    fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> HistoryError {
        let path = path.display().to_string();
        move |source| HistoryError::Io { path, what, source }
    }
}

/// How long a writer waits for another (watch and an `apply` at once) to finish its
/// transaction before giving up on one batch.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The default database of fleet `fleet`: `$STATE_DIRECTORY/<fleet>.db` under systemd (the
/// units set `StateDirectory=fleet`), else `/var/lib/fleet/<fleet>.db` as root, else
/// `$XDG_STATE_HOME/fleet/<fleet>.db` (`~/.local/state/fleet/<fleet>.db`).
pub fn default_path(
    fleet: &str,
    env: &dyn Fn(&str) -> Option<String>,
    is_root: bool,
) -> Result<PathBuf, HistoryError> {
    let file = format!("{fleet}.db");
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    // systemd passes every StateDirectory= entry, separated by colons.
    if let Some(dirs) = set("STATE_DIRECTORY")
        && let Some(first) = dirs.split(':').find(|d| !d.is_empty())
    {
        return Ok(Path::new(first).join(file));
    }
    if is_root {
        return Ok(Path::new("/var/lib/fleet").join(file));
    }
    if let Some(state) = set("XDG_STATE_HOME") {
        return Ok(Path::new(&state).join("fleet").join(file));
    }
    match set("HOME") {
        Some(home) => Ok(Path::new(&home).join(".local/state/fleet").join(file)),
        None => Err(HistoryError::NoPlace),
    }
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Opens (creating it when `create`) the database at `path`: directory 0700 and file 0600 when
/// fleet makes them, WAL, a busy timeout, the schema migrated forward.
pub fn open(path: &Path, create: bool) -> Result<Connection, HistoryError> {
    if create {
        prepare_file(path)?;
    } else if !path.exists() {
        return Err(HistoryError::Missing(path.display().to_string()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(HistoryError::sql("open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(HistoryError::sql("set the busy timeout"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(HistoryError::sql("turn on WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            "history database {}: journal mode is {mode}, not WAL",
            path.display()
        );
    }
    // In WAL mode NORMAL syncs at checkpoints: a crash may lose the last transactions, never
    // the file's consistency.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(HistoryError::sql("set synchronous"))?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// Opens the database read-only (`fleet report`), while watch may be writing it.
pub fn open_read_only(path: &Path) -> Result<Connection, HistoryError> {
    if !path.exists() {
        return Err(HistoryError::Missing(path.display().to_string()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(HistoryError::sql("open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(HistoryError::sql("set the busy timeout"))?;
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(HistoryError::sql("read the schema version"))?;
    if version > schema::VERSION {
        return Err(HistoryError::NewerSchema {
            found: version,
            known: schema::VERSION,
        });
    }
    if version < schema::VERSION {
        return Err(HistoryError::OlderSchema { found: version });
    }
    Ok(conn)
}

/// Makes the directory (0700) and an empty file (0600) when they do not exist, so that SQLite
/// (and its `-wal` and `-shm` files, which take the database's mode) never makes them with the
/// process's umask.
fn prepare_file(path: &Path) -> Result<(), HistoryError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(HistoryError::io(dir, "create its directory"))?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .or_else(|e| match e.kind() {
                // Made by another fleet in between: fine.
                std::io::ErrorKind::AlreadyExists => std::fs::File::open(path),
                _ => Err(e),
            })
            .map_err(HistoryError::io(path, "create it"))?;
    }
    Ok(())
}

/// Seconds since the epoch, as the database stores times.
pub fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Now, in seconds since the epoch.
pub fn now() -> f64 {
    epoch(SystemTime::now())
}

/// Who recorded an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Watch,
    Apply,
    Destroy,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Watch => "watch",
            Source::Apply => "apply",
            Source::Destroy => "destroy",
        }
    }
}

/// One thing that happened, as the watch loop and the executor tell it. Plain data: names,
/// times, counts and results; never a token, a JIT config or a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A reconcile ended.
    Reconcile {
        at: f64,
        trigger: String,
        result: String,
        seconds: f64,
    },
    /// A plan step ended.
    Action {
        at: f64,
        source: Source,
        action: String,
        /// The runner, volume or registration of the step.
        name: String,
        pool: Option<String>,
        host: Option<String>,
        /// done, deferred or failed.
        outcome: String,
        /// Why the plan made the step (its reasons), or why it failed or waits.
        why: String,
        seconds: f64,
        /// The runner a create or replace made.
        runner: Option<String>,
        /// How the runner it removes ends, for the report: `exited`, `job_done`, `gpu_fault`
        /// or `removed`.
        cause: String,
    },
    /// A Docker event of a runner container (`die`, `oom`, `destroy`).
    Docker {
        at: f64,
        container: String,
        action: String,
    },
    /// Everything of one kind as observed now (runner states, hosts up, pools' wanted
    /// counts): the writer turns consecutive snapshots into spans of unchanged values.
    Snapshot {
        at: f64,
        kind: SpanKind,
        entries: Vec<SpanEntry>,
    },
    /// A runner container that has exited.
    Exit {
        at: f64,
        container_id: String,
        runner: String,
        pool: Option<String>,
        host: String,
        exit_code: Option<i64>,
    },
    /// What a scale set message said of a job (fields it did not carry are `None`).
    Job(JobRecord),
    /// GPU readings.
    /// GPU readings; each stands for `every` seconds (the sampling interval).
    Gpus {
        at: f64,
        every: f64,
        samples: Vec<GpuSample>,
    },
}

/// What a span is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// A runner's state: busy, idle, offline, exited.
    Runner,
    /// A host: up or down.
    Host,
    /// A pool: the runners it wants (a number).
    Pool,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Runner => "runner",
            SpanKind::Host => "host",
            SpanKind::Pool => "pool",
        }
    }
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanEntry {
    pub key: String,
    pub pool: Option<String>,
    pub host: Option<String>,
    pub value: String,
}

/// A job, as written (what the scale set's messages or a workflow run's jobs said of it; the
/// fields they did not carry are `None`) and as read back (`query::jobs`). Times in seconds
/// since the epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobRecord {
    pub job_id: String,
    pub pool: String,
    pub repository: Option<String>,
    pub workflow_ref: Option<String>,
    pub job_name: Option<String>,
    pub run_id: Option<u64>,
    pub runner: Option<String>,
    pub queued: Option<f64>,
    pub assigned: Option<f64>,
    pub started: Option<f64>,
    pub finished: Option<f64>,
    pub result: Option<String>,
    /// Where the record came from.
    pub source: JobSource,
}

/// Where a job's record came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobSource {
    /// An autoscaled pool's scale set messages.
    #[default]
    Scaleset,
    /// A fixed pool's busy runner, matched to the job of an in-progress workflow run whose
    /// `runner_name` names it.
    Runs,
}

impl JobSource {
    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::Scaleset => "scaleset",
            JobSource::Runs => "runs",
        }
    }

    pub(crate) fn parse(s: &str) -> JobSource {
        match s {
            "runs" => JobSource::Runs,
            _ => JobSource::Scaleset,
        }
    }
}

/// One GPU reading.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub host: String,
    pub uuid: String,
    pub runner: Option<String>,
    pub pool: Option<String>,
    /// Percent.
    pub utilization: Option<f64>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub temperature: Option<f64>,
    /// `ok`, or what is wrong (NVML cannot read it).
    pub health: String,
}

#[cfg(test)]
mod tests;
