//! Shell completions (`fleet completions SHELL`) and man pages (`fleet man --out DIR`, hidden),
//! both generated from the clap definitions of the command line (`cli.rs` passes them in), so
//! they never drift from the commands.

use std::path::PathBuf;

use super::{Done, Failure, print_stdout};

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

/// Prints the completion script for `args.shell` on stdout; `command`: fleet's clap command.
pub fn print(args: &CompletionsArgs, mut command: clap::Command) -> Result<Done, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "fleet", &mut script);
    print_stdout(&String::from_utf8_lossy(&script))
}

/// Writes a man page for fleet and for each visible command into `args.out`.
pub fn write_man_pages(args: &ManArgs, command: clap::Command) -> Result<Done, Failure> {
    std::fs::create_dir_all(&args.out)
        .and_then(|()| clap_mangen::generate_to(command, &args.out))
        .map_err(|e| {
            Failure::Other(format!(
                "cannot write the man pages to {}: {e}",
                args.out.display()
            ))
        })?;
    Ok(Done::Ok)
}
