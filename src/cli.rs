//! The command line. The only place that turns errors into exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::io::IsTerminal;
use std::path::Path;

use clap::{Parser, Subcommand};

use crate::apply::{Outcome, Progress, Run, StepReport, lock};
use crate::escape::escaped_lines;
use crate::github::RetryPolicy;
use crate::observe::state::Observed;
use crate::observe::{ObserveError, Observers};
use crate::plan::{self, Action, Plan, PlanDocument, PlanError};
use crate::render::{self, Format};
use crate::spec::{self, Spec, SpecError};

/// Exit codes, as terraform: 0 success, 1 error, 2 success with changes (`--detailed-exitcode`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const CHANGES: u8 = 2;
}

#[derive(Debug, Parser)]
#[command(
    name = "fleet",
    version,
    about = "Keep self-hosted GitHub Actions runners on Docker GPU hosts equal to fleet.yaml",
    long_about = "fleet keeps a set of self-hosted GitHub Actions runners, running as Docker \
containers on GPU hosts, equal to what a git-tracked fleet.yaml says.\n\n\
Exit codes: 0 success, 1 error, 2 success with changes (plan --detailed-exitcode).",
    after_help = "Environment: GITHUB_TOKEN, GITHUB_API_URL, DOCKER_HOST, NO_COLOR.\n\
Docs: README.md and docs/ in the fleet repository."
)]
pub struct Cli {
    /// The fleet spec to read.
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "fleet.yaml",
        value_name = "FILE"
    )]
    pub file: PathBuf,

    /// Log more to stderr: -v info, -vv debug (with the count of GitHub requests), -vvv
    /// everything. RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check fleet.yaml: YAML syntax, the schema, and the rules between its parts.
    ///
    /// Every problem of the file is reported at once, each with file:line:column, its path
    /// (pools.gpu.count), what was expected and what was found. Nothing is contacted: neither
    /// Docker nor GitHub. Exit 0 when the file is valid, 1 otherwise.
    Validate,
    /// Show what apply would change, without changing anything.
    ///
    /// Reads fleet.yaml, observes the Docker hosts, GitHub's runner registrations and the GPUs,
    /// and prints the changes that would make the world match the spec. Read-only: nothing is
    /// created, started, stopped or deleted, on Docker or on GitHub, and no registration token
    /// or JIT config is asked for.
    ///
    /// Exit codes: 0 success (with --detailed-exitcode: no changes), 1 error, 2 success with
    /// changes (only with --detailed-exitcode).
    Plan {
        /// Save the plan to FILE (JSON, no secrets) for `fleet show`, and for `fleet apply FILE`
        /// once it exists.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
        /// text for people, json for programs, markdown for a pull-request comment.
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
        /// Exit 2 when there are changes, 0 when there are none.
        #[arg(long)]
        detailed_exitcode: bool,
        #[command(flatten)]
        hosts: HostSelection,
    },
    /// Make the world match fleet.yaml.
    ///
    /// Without PLANFILE: plans, prints the plan, and asks for `yes` on a terminal (without a
    /// terminal it refuses unless --auto-approve). With PLANFILE (from `fleet plan --out`):
    /// observes again and refuses a stale plan (the spec or the world changed since) with exit 1
    /// and nothing done. Busy runners are never interrupted: their changes wait for their jobs.
    /// Holds the fleet's lock from the observation to the end, so two applies never overlap.
    ///
    /// Exit codes: 0 success, 1 error or a failed step (the other steps still run).
    Apply {
        /// A plan saved by `fleet plan --out`.
        #[arg(value_name = "PLANFILE")]
        plan: Option<std::path::PathBuf>,
        /// Apply without asking.
        #[arg(long)]
        auto_approve: bool,
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        hosts: HostSelection,
    },
    /// Remove every runner of the fleet: registration first, then container.
    ///
    /// Busy runners are kept until their jobs end (run destroy again then). Named volumes stay
    /// unless --volumes. Asks for `yes` on a terminal; without one it refuses unless
    /// --auto-approve.
    Destroy {
        /// Destroy without asking.
        #[arg(long)]
        auto_approve: bool,
        /// Also remove the volumes fleet created (caches, runner state).
        #[arg(long)]
        volumes: bool,
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        hosts: HostSelection,
    },
    /// Keep the fleet converged: re-plan and apply whenever fleet.yaml changes, a runner
    /// container exits, or the resync timer fires.
    ///
    /// Uses the same code and the same lock as `apply`. An invalid edit of fleet.yaml is logged
    /// and the last valid spec stays in force. Docker or GitHub errors are retried with backoff
    /// and never lead to destroying anything. SIGTERM or SIGINT stops it within seconds; runners
    /// are never removed on the way out. Logs go to stderr at info level.
    Watch {
        /// How often to re-observe GitHub and Docker without a trigger (30s, 1m).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        resync: std::time::Duration,
        #[command(flatten)]
        listen: crate::web::ListenArgs,
        /// The most one host's observation may take (30s, 1m): a host slower than this, or
        /// one that fails, is left alone (its runners and registrations untouched) while the
        /// others converge, and is reconnected with backoff.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        host_timeout: std::time::Duration,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Show every runner: container state, uptime, GitHub status, GPUs and their use.
    ///
    /// Read-only. Per pool, desired against actual; each host's GPUs and the runner holding
    /// each; totals at the end. A host that does not answer is shown with its error (exit 1);
    /// the others are shown all the same. JSON for programs.
    Status {
        #[arg(long, value_enum, default_value = "text")]
        format: StatusFormat,
        #[command(flatten)]
        hosts: HostSelection,
    },
    /// NVIDIA GPUs: this machine's through NVML (index, UUID, name, memory, utilization,
    /// temperature, processes), or with --host those of a host of fleet.yaml and the runners
    /// holding them.
    ///
    /// The UUIDs are what a host's `gpus:` list declares. Without an NVIDIA library it says
    /// so and exits 0; a driver or permission problem, or a GPU NVML cannot read (lost), is an
    /// error (exit 1). FLEET_NVML_LIBRARY names the library to load instead of
    /// libnvidia-ml.so.1. With --host, a `gpus: auto` host whose engine is not on this machine
    /// is asked through a one-shot container running the host's nvidia-smi (docs/hosts.md);
    /// when its GPUs cannot be read, it says why (exit 1).
    Gpus {
        #[arg(long, value_enum, default_value = "text")]
        format: GpusFormat,
        /// A host of fleet.yaml (-f) instead of this machine.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Release the quarantine of this GPU (on --host, else on every host of fleet.yaml
        /// where it has one) and say what was released (docs/gpu-health.md).
        #[arg(long, value_name = "UUID")]
        release: Option<String>,
    },
    /// What the history of `fleet watch` says of a time range: runner availability and
    /// uptime, job waits and durations, GPU-hours busy and idle, exits by cause.
    ///
    /// Read-only; works while watch writes. Per pool and host, per GPU and pool, and the
    /// repositories and workflows that used the most GPU-hours. docs/history.md says how each
    /// figure is counted. Markdown for an issue, CSV for a spreadsheet, JSON for programs.
    Report(crate::history::report::ReportArgs),
    /// Print a plan saved by `fleet plan --out FILE`.
    Show {
        /// The saved plan.
        #[arg(value_name = "PLANFILE")]
        plan: std::path::PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },
    /// Print the JSON Schema (2020-12) of fleet.yaml.
    ///
    /// Editors use it through a `# yaml-language-server: $schema=...` comment at the top of
    /// fleet.yaml; `fleet validate` checks files against the same schema.
    Schema {
        /// Print the schema generated from fleet's types instead of the built-in copy
        /// (for fleet's developers; the two are equal in every release).
        #[arg(long, hide = true)]
        generate: bool,
    },
    /// Write a fleet.yaml from the GitHub runner services of docker-compose files.
    ///
    /// Each runner service becomes a pool; services that run no runner are left out. Every line
    /// that needed a decision gets a comment, and a report on stderr names every secret removed
    /// (by name, never its value) and every setting left out. What is written always passes
    /// `fleet validate`. docs/migrating.md describes the rules.
    Import(crate::import::ImportArgs),
    /// Write a starter fleet.yaml for this machine (to -f, default ./fleet.yaml).
    ///
    /// The repository comes from --repo or --org, else from the `origin` remote of the git
    /// repository in the current folder; the GPUs from NVML: one GPU pool with a GPU per runner
    /// when there are GPUs, and a CPU pool. Never overwrites a file without --force.
    Init(crate::init::InitArgs),
    /// Print a completion script for bash, zsh or fish (also elvish and powershell).
    ///
    /// bash: `fleet completions bash > /usr/share/bash-completion/completions/fleet`;
    /// zsh: `fleet completions zsh > "${fpath[1]}/_fleet"`;
    /// fish: `fleet completions fish > ~/.config/fish/completions/fleet.fish`.
    Completions(crate::completions::CompletionsArgs),
    /// Write the man pages of fleet and of each command (for packagers).
    #[command(hide = true)]
    Man(crate::completions::ManArgs),
}

/// Output formats of `fleet plan` and `fleet show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
}

impl From<PlanFormat> for Format {
    fn from(format: PlanFormat) -> Format {
        match format {
            PlanFormat::Text => Format::Text,
            PlanFormat::Json => Format::Json,
            PlanFormat::Markdown => Format::Markdown,
        }
    }
}

/// Output formats of `fleet gpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpusFormat {
    Text,
    Json,
}

/// Output formats of `fleet status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

fn gpus_command(format: GpusFormat) -> Result<u8, Failure> {
    use crate::observe::gpu::{NvmlProblem, devices_table};
    use crate::observe::nvml_reader::{Reading, read_once};
    let (reading, reason) = match read_once() {
        Ok(reading) => (reading, None),
        Err(NvmlProblem::Absent(reason)) => (Reading::default(), Some(reason)),
        Err(NvmlProblem::Failed(message)) => {
            return Err(Failure::Other(format!(
                "{message}; `nvidia-smi` on this machine shows whether the driver works"
            )));
        }
    };
    let report = &reading.report;
    // Without a spec, fleet cannot tell a runner's processes from a leak: no GPU is called
    // dirty here (`fleet gpus --host NAME` tells).
    let settings = crate::spec::GpuHealthSettings::default();
    let health: Vec<_> = report
        .devices
        .iter()
        .map(|d| {
            reading
                .signals
                .get(&d.uuid)
                .map(|s| crate::observe::health::classify(s, &settings, true))
        })
        .collect();
    let text = match format {
        GpusFormat::Json => {
            let gpus: Vec<serde_json::Value> = report
                .devices
                .iter()
                .zip(&health)
                .map(|(device, health)| {
                    let mut value = serde_json::to_value(device).unwrap_or_default();
                    if let (Some(h), Some(map)) = (health, value.as_object_mut()) {
                        map.insert("health".into(), h.state.as_str().into());
                        map.insert("health_reasons".into(), h.reasons.clone().into());
                    }
                    value
                })
                .collect();
            let value = serde_json::json!({
                "gpus": gpus, "unreadable": report.unreadable, "reason": reason
            });
            format!(
                "{}\n",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            )
        }
        GpusFormat::Text if report.devices.is_empty() && report.unreadable.is_empty() => format!(
            "no NVIDIA GPUs found{}\n",
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ),
        GpusFormat::Text => devices_table(&report.devices, &health),
    };
    let code = print_stdout(&text);
    // A GPU NVML counts but cannot read (lost, most often) needs the operator: exit 1.
    match report.unreadable.as_slice() {
        [] => Ok(code),
        unreadable => Err(Failure::Other(
            unreadable
                .iter()
                .map(|g| g.reason.as_str())
                .collect::<Vec<_>>()
                .join("\nerror: "),
        )),
    }
}

fn watch_command(
    file: &Path,
    resync: std::time::Duration,
    listen: crate::web::ListenArgs,
    host_timeout: std::time::Duration,
    run: &RunOptions,
) -> Result<u8, Failure> {
    let options = crate::watch::WatchOptions {
        resync,
        listen,
        host_timeout,
        lock_timeout: run.lock_timeout,
        parallelism: usize::from(run.parallelism),
        shutdown_grace: std::time::Duration::from_secs(8),
    };
    let rt = runtime()?;
    rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: stopping");
            let _ = stop_tx.send(true);
        });
        crate::watch::run_recording(
            file.to_path_buf(),
            options,
            Some(run.history.clone()),
            std::sync::Arc::new(env_var),
            stop_rx,
        )
        .await
        .map_err(Failure::Other)
    })?;
    Ok(exit::OK)
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn status_command(file: &Path, format: StatusFormat, hosts: &HostSelection) -> Result<u8, Failure> {
    use crate::observe::ObserveOptions;
    use crate::observe::inventory::ProbeWhen;
    let spec = spec::load(file).map_err(Failure::Spec)?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let excluded = hosts.excluded();
    let (observation, mut failed) = runtime()?.block_on(async {
        let (observers, failed) = Observers::connect_available(
            &spec,
            base_dir,
            &env_var,
            RetryPolicy::default(),
            &excluded,
        )
        .await
        .map_err(Failure::Observe)?;
        let options = ObserveOptions {
            tolerate_down_hosts: true,
            probe: ProbeWhen::Always,
            ..ObserveOptions::default()
        };
        let mut observation = observers
            .observe_with(&spec, options)
            .await
            .map_err(Failure::Observe)?;
        observers
            .read_scale_sets(&spec, &mut observation.observed)
            .await;
        Ok::<_, Failure>((observation, failed))
    })?;
    failed.extend(observation.failed);
    let devices = observed_devices();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut status = crate::status::build(&spec, &observation.observed, &devices, now);
    status.autoscale = crate::status::autoscale_statuses(&spec, &observation.observed);
    for host in &excluded {
        status.note_unobserved(host, "excluded with --exclude-host".into());
    }
    for (host, e) in &failed {
        status.note_unobserved(host, e.to_string());
    }
    let text = match format {
        StatusFormat::Text => crate::status::text(&status),
        StatusFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        ),
    };
    let code = print_stdout(&text);
    if failed.is_empty() {
        return Ok(code);
    }
    Err(Failure::Other(format!(
        "{} host(s) did not answer: {}",
        failed.len(),
        failed.keys().cloned().collect::<Vec<_>>().join(", ")
    )))
}

/// `fleet gpus --release UUID [--host NAME]`: removes the quarantine records of GPU `uuid`
/// that fleet made, on `host` or on every host of the spec, and says what it released. A record
/// fleet did not make is never touched.
fn release_command(file: &Path, uuid: &str, only: Option<&str>) -> Result<u8, Failure> {
    use crate::docker::DockerHost;
    let spec = spec::load(file).map_err(Failure::Spec)?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let hosts = spec.effective_hosts();
    if let Some(name) = only.filter(|n| !hosts.contains_key(*n)) {
        return Err(Failure::Other(format!("the spec has no host `{name}`")));
    }
    let released = runtime()?.block_on(async {
        let mut released = Vec::new();
        for (name, host) in hosts.iter().filter(|(n, _)| only.is_none_or(|o| o == n.as_str())) {
            let connection = DockerHost::connect_host(name, host, base_dir, &env_var)
                .await
                .map_err(|e| Failure::Other(e.to_string()))?;
            let volumes = connection
                .read()
                .owned_volumes(&spec.name)
                .await
                .map_err(|e| Failure::Other(e.to_string()))?;
            for (volume, record) in volumes
                .iter()
                .filter_map(|v| v.quarantine.as_ref().map(|q| (v, q)))
                .filter(|(_, q)| q.uuid == uuid)
            {
                connection
                    .write()
                    .remove_owned_volume(&volume.name, &spec.name)
                    .await
                    .map_err(|e| Failure::Other(e.to_string()))?;
                let since = record.since.map_or("at an unknown time".to_string(), |s| {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.max(0) as u64);
                    format!("since {}", humantime::format_rfc3339_seconds(at))
                });
                released.push(format!(
                    "released the quarantine of GPU {uuid} on host `{name}` (quarantined {since}: {})",
                    record.reason
                ));
            }
        }
        Ok::<_, Failure>(released)
    })?;
    if released.is_empty() {
        let at = only.map_or("any host of the spec".to_string(), |h| {
            format!("host `{h}`")
        });
        return Err(Failure::Other(format!(
            "GPU {uuid} has no quarantine record of fleet `{}` on {at}; nothing was changed",
            spec.name
        )));
    }
    Ok(print_stdout(&format!("{}\n", released.join("\n"))))
}

/// This machine's GPUs with their use: the observation's NVML reading when it made one (NVML is
/// not read twice), else a reading of their own (GPUs declared on a local host).
fn observed_devices() -> Vec<crate::observe::gpu::GpuDevice> {
    match crate::observe::nvml_reader::reader().latest() {
        Some(Ok(reading)) => reading.report.devices.clone(),
        _ => crate::observe::gpu::nvml_devices().unwrap_or_default(),
    }
}

/// `fleet gpus --host NAME`: the GPUs of one host of the spec and the runners holding them.
fn host_gpus_command(file: &Path, host: &str, format: GpusFormat) -> Result<u8, Failure> {
    use crate::observe::state::GpuSource;
    let spec = spec::load(file).map_err(Failure::Spec)?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let observed = runtime()?
        .block_on(crate::observe::observe_one_host(
            &spec, host, base_dir, &env_var,
        ))
        .map_err(Failure::Observe)?;
    let devices = observed_devices();
    let status = crate::status::build(&spec, &observed, &devices, 0);
    let Some(view) = status.hosts.iter().find(|h| h.name == host) else {
        return Err(Failure::Other(format!("the spec has no host `{host}`")));
    };
    let text = match format {
        GpusFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(view).unwrap_or_default()
        ),
        GpusFormat::Text => crate::status::host_text(view).trim_start().to_string(),
    };
    let code = print_stdout(&text);
    let unreadable = observed
        .hosts
        .get(host)
        .is_some_and(|h| matches!(h.gpus.source, GpuSource::Unavailable(_)));
    if unreadable {
        return Err(Failure::Other(format!(
            "the GPUs of host `{host}` cannot be read (see above)"
        )));
    }
    Ok(code)
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
    fn excluded(&self) -> std::collections::BTreeSet<String> {
        self.exclude_host.iter().cloned().collect()
    }

    /// Says on stderr which hosts are left out.
    fn announce(&self) {
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

/// Runs fleet with the process's arguments; returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // watch is a daemon: its log is its output, so it logs its actions at info level.
    let watch = matches!(cli.command, Command::Watch { .. });
    init_logging(cli.verbose + u8::from(watch));
    ExitCode::from(run(cli))
}

/// Crates whose debug and trace logs carry what fleet must never print: the Docker client logs
/// request bodies (a container's create request holds its JIT config), the HTTP stack headers
/// and bodies (tokens). Whatever RUST_LOG says, their logs stop at info (`log_cap`).
const CAPPED_LOG_TARGETS: &[&str] = &[
    "axum",
    "bollard",
    "h2",
    "hyper",
    "hyper_rustls",
    "hyper_util",
    "hyperlocal",
    "jsonwebtoken",
    "octocrab",
    "reqwest",
    "rustls",
    "tokio_rustls",
    "tower",
    "tower_http",
];

/// The cap on [`CAPPED_LOG_TARGETS`]: a filter of its own beside RUST_LOG's, so that no
/// directive of RUST_LOG (not even a more specific one, `bollard::docker=trace`) lifts it. Each
/// target covers its modules (`bollard` covers `bollard::docker`).
fn log_cap() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    CAPPED_LOG_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |cap, target| cap.with_target(*target, LevelFilter::INFO),
    )
}

/// Logs to stderr. RUST_LOG chooses, else `-v`; by default only fleet's own warnings: the
/// dependencies' logs (octocrab logs each failed attempt as an error, which fleet reports itself
/// in its own words) are for `-v` and RUST_LOG, and never above the cap.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = match verbose {
        0 => "fleet=warn",
        1 => "info,octocrab=warn",
        2 => "fleet=debug,info,octocrab=warn",
        _ => "debug",
    };
    let requested = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let filter = tracing_subscriber::filter::FilterExt::and(requested, log_cap());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_target(false)
        .fmt_fields(log_fields())
        .with_filter(filter);
    let _ = tracing_subscriber::registry().with(stderr).try_init();
}

/// How a log event's message and fields are written: every value through
/// [`crate::escape::escaped`], so that what the spec, GitHub or Docker said cannot move the
/// cursor, forge a log line or reorder text in the log (the formatter escapes ESC by itself,
/// not newlines or bidirectional controls).
fn log_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = crate::escape::escaped(&text);
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// Whether text on stdout gets colour: a terminal, and NO_COLOR unset or empty.
fn stdout_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Everything that can stop a command, mapped to messages and exit codes in one place.
enum Failure {
    Spec(SpecError),
    Observe(ObserveError),
    Plan(PlanError),
    Other(String),
}

impl Failure {
    /// Every message goes through [`escaped_lines`]: errors quote the spec, saved plans and
    /// the services' answers, which must not reach the terminal as control sequences.
    fn report(&self) -> u8 {
        match self {
            Failure::Spec(e) => eprint!("{}", escaped_lines(&e.render())),
            Failure::Observe(e) => {
                eprintln!("error: {}", escaped_lines(&e.to_string()));
                if let Some(hint) = e.hint() {
                    eprintln!("hint: {hint}");
                }
                eprintln!("No plan was made: fleet never plans on a partial view of the world.");
            }
            Failure::Plan(e) => {
                for problem in &e.problems {
                    eprintln!("error: {}", escaped_lines(&problem.to_string()));
                }
                eprintln!("No plan was made; nothing was changed.");
            }
            Failure::Other(message) => eprintln!("error: {}", escaped_lines(message)),
        }
        exit::ERROR
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))
}

/// Loads the spec, observes the world (but the excluded hosts) and plans.
async fn observe_and_plan(
    file: &Path,
    spec: &Spec,
    hosts: &HostSelection,
) -> Result<Plan, Failure> {
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let observers = Observers::connect_excluding(
        spec,
        base_dir,
        &env_var,
        RetryPolicy::default(),
        &hosts.excluded(),
    )
    .await
    .map_err(Failure::Observe)?;
    let observed = observers.observe(spec).await.map_err(Failure::Observe)?;
    tracing::debug!("GitHub requests made: {}", observers.github.stats().total());
    plan::plan(spec, &observed).map_err(Failure::Plan)
}

fn plan_command(
    file: &Path,
    out: Option<&Path>,
    format: Format,
    detailed_exitcode: bool,
    hosts: &HostSelection,
) -> Result<u8, Failure> {
    let spec = spec::load(file).map_err(Failure::Spec)?;
    hosts.announce();
    let plan = runtime()?.block_on(observe_and_plan(file, &spec, hosts))?;
    let color = format == Format::Text && stdout_color();
    let mut text = render::render(&plan, format, color);
    if let Some(out) = out {
        std::fs::write(out, render::json(&plan.document())).map_err(|e| {
            Failure::Other(format!("cannot write the plan to {}: {e}", out.display()))
        })?;
        if format == Format::Text {
            text.push_str(&format!(
                "\nSaved the plan to {}. `fleet show {}` prints it again.\n",
                out.display(),
                out.display()
            ));
        }
    }
    let code = print_stdout(&text);
    if code != exit::OK {
        return Ok(code);
    }
    Ok(if detailed_exitcode && !plan.is_empty() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// Prints each step as it starts and ends, like terraform; a bar on a terminal.
struct ProgressPrinter {
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressPrinter {
    fn new(steps: usize) -> ProgressPrinter {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(steps as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {elapsed}")
            {
                bar.set_style(style);
            }
            bar
        });
        ProgressPrinter { bar }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn verbs(action: Action) -> (&'static str, &'static str) {
    match action {
        Action::Create => ("Creating...", "Created"),
        Action::Replace => ("Replacing...", "Replaced"),
        Action::Destroy => ("Destroying...", "Destroyed"),
        Action::Deregister => ("Removing registration...", "Registration removed"),
        Action::CreateVolume => ("Creating volume...", "Volume created"),
        Action::DestroyVolume => ("Destroying volume...", "Volume destroyed"),
        Action::UpdateRegistration => ("Updating registration...", "Registration updated"),
        Action::CreateScaleSet => ("Creating scale set...", "Scale set created"),
        Action::UpdateScaleSet => ("Updating scale set...", "Scale set updated"),
        Action::DeleteScaleSet => ("Deleting scale set...", "Scale set deleted"),
        Action::Defer => ("", "Deferred"),
    }
}

impl Progress for ProgressPrinter {
    fn started(&self, action: Action, name: &str) {
        let (doing, _) = verbs(action);
        if !doing.is_empty() {
            self.say(format!("{name}: {doing}"));
        }
    }

    fn finished(&self, report: &StepReport) {
        let name = &report.name;
        let secs = report.elapsed.as_secs_f64();
        let line = match &report.outcome {
            Outcome::Done => {
                let (_, done) = verbs(report.action);
                match &report.runner {
                    Some(runner) if runner != name => {
                        format!("{name}: {done} by {runner} ({secs:.1}s)")
                    }
                    _ => format!("{name}: {done} ({secs:.1}s)"),
                }
            }
            Outcome::Deferred(why) => format!("{name}: Deferred: {why}"),
            Outcome::Failed(cause) => format!("{name}: Failed after {secs:.1}s: {cause}"),
        };
        self.say(line);
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

/// Asks for `yes` on a terminal; refuses without one unless approval was given.
fn approve(question: &str, auto_approve: bool) -> Result<bool, Failure> {
    if auto_approve {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Other(
            "not applying: stdin is not a terminal, so fleet cannot ask for approval; pass --auto-approve to apply without asking. Nothing was changed.".into(),
        ));
    }
    print!("\n{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::Other(format!("cannot read the answer: {e}")))?;
    Ok(answer.trim() == "yes")
}

/// Takes the lock, observes, and runs `decide` to get the plan to execute; `show` says whether
/// to print it first.
fn converge(
    file: &Path,
    options: &RunOptions,
    hosts: &HostSelection,
    run: Run,
    decide: impl FnOnce(&Spec, &Observed) -> Result<(Plan, bool), Failure>,
    auto_approve: bool,
) -> Result<u8, Failure> {
    let spec = spec::load(file).map_err(Failure::Spec)?;
    let command = match run {
        Run::Apply => "fleet apply",
        Run::Destroy => "fleet destroy",
    };
    let _lock = lock::acquire(&spec.name, command, options.lock_timeout)
        .map_err(|e| Failure::Other(e.to_string()))?;
    let rt = runtime()?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    hosts.announce();
    let (observers, observed) = rt.block_on(async {
        let observers = Observers::connect_excluding(
            &spec,
            base_dir,
            &env_var,
            RetryPolicy::default(),
            &hosts.excluded(),
        )
        .await
        .map_err(Failure::Observe)?;
        let mut observed = observers.observe(&spec).await.map_err(Failure::Observe)?;
        observers.read_scale_sets(&spec, &mut observed).await;
        Ok::<_, Failure>((observers, observed))
    })?;
    let (plan, show) = decide(&spec, &observed)?;
    if show {
        print_stdout(&render::render(&plan, Format::Text, stdout_color()));
    }
    if plan.changes.is_empty() {
        if !plan.deferred.is_empty() {
            println!(
                "\nNothing to do now: {} change(s) wait for busy runners to finish their jobs.",
                plan.deferred.len()
            );
        }
        return Ok(exit::OK);
    }
    let question = match run {
        Run::Apply => "Do you want to apply these changes?",
        Run::Destroy => "Do you really want to destroy every runner of this fleet?",
    };
    if !approve(question, auto_approve)? {
        println!("\nCancelled; nothing was changed.");
        return Ok(exit::ERROR);
    }
    println!();
    let progress = ProgressPrinter::new(plan.len());
    let report = rt.block_on(crate::fanout::apply_by_host(
        &spec,
        &observers,
        &observed,
        &plan,
        usize::from(options.parallelism),
        &progress,
    ));
    progress.done();
    crate::history::record::record_apply(&spec.name, &options.history, run, &plan, &report);
    tracing::debug!("GitHub requests made: {}", observers.github.stats().total());
    println!("\n{}", report.summary(run));
    let failed: Vec<&StepReport> = report.failed().collect();
    for step in &failed {
        if let Outcome::Failed(cause) = &step.outcome {
            eprintln!(
                "error: {}",
                escaped_lines(&format!("{}: {cause}", step.name))
            );
        }
    }
    Ok(if failed.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    })
}

fn apply_command(
    file: &Path,
    saved: Option<&Path>,
    auto_approve: bool,
    options: &RunOptions,
    hosts: &HostSelection,
) -> Result<u8, Failure> {
    converge(
        file,
        options,
        hosts,
        Run::Apply,
        |spec, observed| {
            let fresh = plan::plan(spec, observed).map_err(Failure::Plan)?;
            match saved {
                None => Ok((fresh, true)),
                // A saved plan was reviewed when it was made: it is applied without asking,
                // and only as it was made.
                Some(path) => check_saved(path, spec, observed, &fresh).map(|()| (fresh, false)),
            }
        },
        auto_approve || saved.is_some(),
    )
}

/// A saved plan is a proposal: fleet plans again from what it observes now and goes ahead only
/// when the new plan is the saved one.
fn check_saved(path: &Path, spec: &Spec, observed: &Observed, fresh: &Plan) -> Result<(), Failure> {
    let saved = plan::read_saved(path).map_err(|e| Failure::Other(e.to_string()))?;
    if saved.fleet != spec.name {
        return Err(Failure::Other(format!(
            "{} is a plan for fleet `{}`, not `{}`; nothing was changed",
            path.display(),
            saved.fleet,
            spec.name
        )));
    }
    if saved.spec_hash != plan::spec_hash(spec) {
        return Err(Failure::Other(format!(
            "the saved plan {} is stale: the spec changed since it was made. Run `fleet plan --out` again; nothing was changed.",
            path.display()
        )));
    }
    if saved.observed_fingerprint != plan::observed_fingerprint(observed) {
        return Err(Failure::Other(format!(
            "the saved plan {} is stale: containers or GitHub runners changed since it was made. Run `fleet plan --out` again; nothing was changed.",
            path.display()
        )));
    }
    match first_difference(&saved, &fresh.document()) {
        None => Ok(()),
        Some(difference) => Err(Failure::Other(format!(
            "the saved plan {} is not the plan fleet makes from this spec and what it observes now: {difference}. A saved plan is applied only as fleet planned it; run `fleet plan --out` again. Nothing was changed.",
            path.display()
        ))),
    }
}

/// The first change in which two plans differ, described. Scale set changes are left out:
/// `plan` does not read scale sets (that needs a registration token), apply decides them.
fn first_difference(saved: &PlanDocument, fresh: &PlanDocument) -> Option<String> {
    // Debug-quoted: a saved plan's words reach the terminal escaped.
    let describe = |c: &plan::ChangeDocument| format!("{} {:?}", c.action.as_str(), c.name);
    let decided_at_apply = |c: &&plan::ChangeDocument| {
        matches!(
            c.action,
            Action::CreateScaleSet | Action::UpdateScaleSet | Action::DeleteScaleSet
        )
    };
    let saved: Vec<&plan::ChangeDocument> = saved
        .changes
        .iter()
        .filter(|c| !decided_at_apply(c))
        .collect();
    let fresh: Vec<&plan::ChangeDocument> = fresh
        .changes
        .iter()
        .filter(|c| !decided_at_apply(c))
        .collect();
    for (i, (a, b)) in saved.iter().zip(&fresh).enumerate() {
        if a != b {
            return Some(format!(
                "change {} differs in `{}` (saved: {}; planned now: {})",
                i + 1,
                differing_field(a, b),
                describe(a),
                describe(b)
            ));
        }
    }
    match saved.len().cmp(&fresh.len()) {
        std::cmp::Ordering::Equal => None,
        _ => Some(format!(
            "it has {} change(s), the plan made now has {}",
            saved.len(),
            fresh.len()
        )),
    }
}

/// The first field of two changes that differs, by its JSON name.
fn differing_field(a: &plan::ChangeDocument, b: &plan::ChangeDocument) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return "?".into();
    };
    a.keys()
        .chain(b.keys())
        .find(|key| a.get(*key) != b.get(*key))
        .cloned()
        .unwrap_or_else(|| "?".into())
}

fn destroy_command(
    file: &Path,
    auto_approve: bool,
    volumes: bool,
    options: &RunOptions,
    hosts: &HostSelection,
) -> Result<u8, Failure> {
    converge(
        file,
        options,
        hosts,
        Run::Destroy,
        |spec, observed| {
            plan::plan_destroy(spec, observed, volumes)
                .map(|p| (p, true))
                .map_err(Failure::Plan)
        },
        auto_approve,
    )
}

/// Runs one command and maps its outcome to an exit code.
pub fn run(cli: Cli) -> u8 {
    let outcome = match cli.command {
        Command::Plan {
            out,
            format,
            detailed_exitcode,
            hosts,
        } => plan_command(
            &cli.file,
            out.as_deref(),
            format.into(),
            detailed_exitcode,
            &hosts,
        ),
        Command::Show { plan, format } => show_command(&plan, format.into()),
        Command::Apply {
            plan,
            auto_approve,
            run,
            hosts,
        } => apply_command(&cli.file, plan.as_deref(), auto_approve, &run, &hosts),
        Command::Destroy {
            auto_approve,
            volumes,
            run,
            hosts,
        } => destroy_command(&cli.file, auto_approve, volumes, &run, &hosts),
        Command::Gpus {
            release: Some(uuid),
            host,
            ..
        } => release_command(&cli.file, &uuid, host.as_deref()),
        Command::Gpus {
            format, host: None, ..
        } => gpus_command(format),
        Command::Gpus {
            format,
            host: Some(host),
            ..
        } => host_gpus_command(&cli.file, &host, format),
        Command::Watch {
            resync,
            listen,
            host_timeout,
            run,
        } => watch_command(&cli.file, resync, listen, host_timeout, &run),
        Command::Status { format, hosts } => status_command(&cli.file, format, &hosts),
        Command::Report(args) => crate::history::report::command(&cli.file, &args)
            .map(|text| print_stdout(&text))
            .map_err(Failure::Other),
        Command::Validate => Ok(validate(&cli.file)),
        Command::Schema { generate } => {
            let text = if generate {
                spec::schema::generate()
            } else {
                spec::schema::SCHEMA_JSON.to_string()
            };
            Ok(print_stdout(&text))
        }
        Command::Import(args) => Ok(crate::import::run(&args)),
        Command::Init(args) => Ok(crate::init::run(&cli.file, &args)),
        Command::Completions(args) => Ok(crate::completions::print(&args)),
        Command::Man(args) => Ok(crate::completions::write_man_pages(&args)),
    };
    match outcome {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

fn show_command(path: &Path, format: Format) -> Result<u8, Failure> {
    let saved = plan::read_saved(path).map_err(|e| Failure::Other(e.to_string()))?;
    let color = format == Format::Text && stdout_color();
    Ok(print_stdout(&render::render_document(
        &saved, format, color,
    )))
}

fn validate(file: &std::path::Path) -> u8 {
    match spec::load(file) {
        Ok(spec) => {
            let pools = spec.resolved_pools();
            let runners: u32 = pools.iter().map(|p| p.count).sum();
            let hosts = spec.effective_hosts().len();
            print_stdout(&format!(
                "{} is valid: fleet `{}`, {} pool(s), {} runner(s) on {} host(s).\n",
                file.display(),
                spec.name,
                pools.len(),
                runners,
                hosts
            ))
        }
        Err(e) => report_spec_error(&e),
    }
}

fn report_spec_error(e: &SpecError) -> u8 {
    eprint!("{}", e.render());
    exit::ERROR
}

/// Writes to stdout; a closed pipe (`fleet schema | head`) is not an error worth a panic.
fn print_stdout(text: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            exit::ERROR
        }
    }
}

#[cfg(test)]
mod log_tests {
    use std::sync::{Arc, Mutex};

    /// A writer that keeps what the log layer writes.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_messages_and_fields_are_escaped() {
        let kept = Kept::default();
        let writer = kept.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(super::log_fields())
            .finish();
        let hostile = "gone\r\nWARN forged line \u{1b}[2J\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(name = hostile, "host `{hostile}`: lost");
        });
        let logged = String::from_utf8(kept.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(logged.lines().count(), 1, "{logged:?}");
        assert!(
            logged.contains("host `gone\\r\\nWARN forged line \\u{1b}[2J\\u{202e}`: lost"),
            "{logged:?}"
        );
        assert!(
            !logged.contains('\u{1b}') && !logged.contains('\u{202e}'),
            "{logged:?}"
        );
    }
}
