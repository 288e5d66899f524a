//! The command line: its parsing (clap), and the one place that turns what a command returns
//! into messages on stderr and an exit code. Each command's body is in `cmd/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::cmd::gpus::GpusFormat;
use crate::cmd::plan::PlanFormat;
use crate::cmd::status::StatusFormat;
use crate::cmd::{self, Done, Failure, HostSelection, RunOptions};
use crate::escape::escaped_lines;
pub use crate::logging::init_logging;

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
    Init(crate::cmd::init::InitArgs),
    /// Print a completion script for bash, zsh or fish (also elvish and powershell).
    ///
    /// bash: `fleet completions bash > /usr/share/bash-completion/completions/fleet`;
    /// zsh: `fleet completions zsh > "${fpath[1]}/_fleet"`;
    /// fish: `fleet completions fish > ~/.config/fish/completions/fleet.fish`.
    Completions(crate::cmd::completions::CompletionsArgs),
    /// Write the man pages of fleet and of each command (for packagers).
    #[command(hide = true)]
    Man(crate::cmd::completions::ManArgs),
}

/// Runs fleet with the process's arguments; returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // watch is a daemon: its log is its output, so it logs its actions at info level.
    let watch = matches!(cli.command, Command::Watch { .. });
    init_logging(cli.verbose + u8::from(watch));
    ExitCode::from(run(cli))
}

/// Runs one command and maps its outcome to an exit code.
pub fn run(cli: Cli) -> u8 {
    match dispatch(cli) {
        Ok(Done::Ok) => exit::OK,
        Ok(Done::Changes) => exit::CHANGES,
        Ok(Done::Cancelled) => exit::ERROR,
        Err(failure) => report(&failure),
    }
}

fn dispatch(cli: Cli) -> Result<Done, Failure> {
    let file = cli.file.as_path();
    match cli.command {
        Command::Plan {
            out,
            format,
            detailed_exitcode,
            hosts,
        } => cmd::plan::run(
            file,
            out.as_deref(),
            format.into(),
            detailed_exitcode,
            &hosts,
        ),
        Command::Show { plan, format } => cmd::show::run(&plan, format.into()),
        Command::Apply {
            plan,
            auto_approve,
            run,
            hosts,
        } => cmd::apply::run(file, plan.as_deref(), auto_approve, &run, &hosts),
        Command::Destroy {
            auto_approve,
            volumes,
            run,
            hosts,
        } => cmd::destroy::run(file, auto_approve, volumes, &run, &hosts),
        Command::Gpus {
            release: Some(uuid),
            host,
            ..
        } => cmd::gpus::release(file, &uuid, host.as_deref()),
        Command::Gpus {
            format, host: None, ..
        } => cmd::gpus::local(format),
        Command::Gpus {
            format,
            host: Some(host),
            ..
        } => cmd::gpus::host(file, &host, format),
        Command::Watch {
            resync,
            listen,
            host_timeout,
            run,
        } => cmd::watch::run(file, resync, listen, host_timeout, &run),
        Command::Status { format, hosts } => cmd::status::run(file, format, &hosts),
        Command::Report(args) => cmd::report::run(file, &args),
        Command::Validate => cmd::validate::run(file),
        Command::Schema { generate } => cmd::schema::run(generate),
        Command::Import(args) => cmd::import::run(&args),
        Command::Init(args) => cmd::init::run(file, &args),
        Command::Completions(args) => cmd::completions::print(&args, Cli::command()),
        Command::Man(args) => cmd::completions::write_man_pages(&args, Cli::command()),
    }
}

/// Every message goes through [`escaped_lines`]: errors quote the spec, saved plans and
/// the services' answers, which must not reach the terminal as control sequences.
fn report(failure: &Failure) -> u8 {
    match failure {
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
        Failure::Invalid(e) => eprint!("{}", e.render()),
        Failure::Steps(failed) => {
            for step in failed {
                eprintln!("error: {}", escaped_lines(step));
            }
        }
        Failure::Import(e) => eprintln!("error: {e}"),
        Failure::Init(e) => eprintln!("error: {e}"),
        Failure::Other(message) => eprintln!("error: {}", escaped_lines(message)),
    }
    exit::ERROR
}
