//! Shell completions (`fleet completions SHELL`) and man pages (`fleet man --out DIR`, hidden),
//! both generated from the clap definitions of [`crate::cli::Cli`], so they never drift from
//! the commands.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::cli::{Cli, exit};

/// `fleet completions` on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// `fleet man` on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// The folder to write fleet.1 and fleet-<command>.1 into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn print(args: &CompletionsArgs) -> u8 {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "fleet", &mut script);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            exit::ERROR
        }
    }
}

/// Writes a man page for fleet and for each visible command into `args.out`.
pub fn write_man_pages(args: &ManArgs) -> u8 {
    let written = std::fs::create_dir_all(&args.out)
        .and_then(|()| clap_mangen::generate_to(Cli::command(), &args.out));
    match written {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!(
                "error: cannot write the man pages to {}: {e}",
                args.out.display()
            );
            exit::ERROR
        }
    }
}
