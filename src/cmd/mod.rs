//! The body of each command of the command line, one module per command. `cli.rs` parses the
//! arguments, calls one of these, and alone turns what it returns into output on stderr and an
//! exit code: a command returns how it ended ([`Done`]) or why it stopped ([`Failure`]).

pub mod apply;
pub mod completions;
mod converge;
pub mod destroy;
pub mod gpus;
pub mod import;
pub mod init;
pub mod plan;
mod progress;
pub mod report;
pub mod schema;
pub mod show;
pub mod status;
pub mod validate;
pub mod watch;

use std::io::{IsTerminal, Write};

use crate::observe::ObserveError;
use crate::plan::PlanError;
use crate::spec::SpecError;

/// How a command that ran to its end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// It did what was asked (and, for `plan --detailed-exitcode`, found nothing to change).
    Ok,
    /// `plan --detailed-exitcode` found changes.
    Changes,
    /// The operator did not approve; nothing was changed.
    Cancelled,
}

/// Everything that can stop a command; `cli.rs` prints it and maps it to the exit code.
#[derive(Debug)]
pub enum Failure {
    Spec(SpecError),
    /// `fleet validate`: the spec's problems, as its report.
    Invalid(SpecError),
    Observe(ObserveError),
    Plan(PlanError),
    /// Steps of an apply or destroy that failed (each `name: cause`); the others ran.
    Steps(Vec<String>),
    Import(crate::import::ImportError),
    Init(init::InitError),
    Other(String),
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))
}

pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether text on stdout gets colour: a terminal, and NO_COLOR unset or empty.
pub(crate) fn stdout_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Writes to stdout; a closed pipe (`fleet schema | head`) is not an error worth a panic.
pub(crate) fn print_stdout(text: &str) -> Result<Done, Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(Done::Ok),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Done::Ok),
        Err(e) => Err(Failure::Other(format!("cannot write to stdout: {e}"))),
    }
}

/// This machine's GPUs with their use: the observation's NVML reading when it made one (NVML is
/// not read twice), else a reading of their own (GPUs declared on a local host).
pub(crate) fn observed_devices() -> Vec<crate::observe::gpu::GpuDevice> {
    match crate::observe::nvml_reader::reader().latest() {
        Some(Ok(reading)) => reading.report.devices.clone(),
        _ => crate::observe::gpu::nvml_devices().unwrap_or_default(),
    }
}

/// Which hosts of the spec a command reads (and changes).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HostSelection {
    /// Leave out host NAME (repeatable): its runners, volumes and GitHub registrations are
    /// left as they are, and no registration without a container is removed. For a host
    /// that is down.
    #[arg(long = "exclude-host", value_name = "NAME")]
    pub exclude_host: Vec<String>,
}

impl HostSelection {
    pub(crate) fn excluded(&self) -> std::collections::BTreeSet<String> {
        self.exclude_host.iter().cloned().collect()
    }

    /// Says on stderr which hosts are left out.
    pub(crate) fn announce(&self) {
        for host in &self.exclude_host {
            eprintln!(
                "note: host `{host}` is excluded: nothing there is read or changed, and no registration that may belong to it is removed"
            );
        }
    }
}

/// Options of the commands that change the world.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Steps run at once on each host (never two on one runner); hosts are changed at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub parallelism: u16,
    /// How long to wait for another fleet process that holds this fleet's lock (60s, 2m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub lock_timeout: std::time::Duration,
    #[command(flatten)]
    pub history: crate::history::HistoryArgs,
}
