//! The command line. The only place that turns errors into exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::spec::{self, SpecError};

/// Exit codes, as terraform: 0 success, 1 error, 2 success with changes (`--detailed-exitcode`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
}

#[derive(Debug, Parser)]
#[command(
    name = "fleet",
    version,
    about = "Keep self-hosted GitHub Actions runners on Docker GPU hosts equal to fleet.yaml",
    long_about = "fleet keeps a set of self-hosted GitHub Actions runners, running as Docker \
containers on GPU hosts, equal to what a git-tracked fleet.yaml says.\n\n\
Exit codes: 0 success, 1 error.",
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
}

/// Runs fleet with the process's arguments; returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(run(cli))
}

/// Runs one command and maps its outcome to an exit code.
pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Validate => validate(&cli.file),
        Command::Schema { generate } => {
            let text = if generate {
                spec::schema::generate()
            } else {
                spec::schema::SCHEMA_JSON.to_string()
            };
            print_stdout(&text)
        }
    }
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
