//! `fake-github`: serve the fake GitHub API as a process, for the offline demo and
//! cross-process tests.
//!
//! Prints exactly one line, `listening on http://127.0.0.1:PORT`, to stdout once it accepts
//! connections; logs each API request to stderr; exits 0 on SIGTERM or SIGINT.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use fake_github::{AppConfig, Config, FakeGithub};

const USAGE: &str = "usage: fake-github [--addr 127.0.0.1:0] [--token T] \
                     [--app-id N --installation-id N] [--seed N] [--quiet]";

struct Args {
    addr: SocketAddr,
    config: Config,
    /// No per-request log lines on stderr.
    quiet: bool,
}

/// Writes one line to stderr. Unlike `eprintln!` it cannot panic when stderr is closed.
fn log(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "fake-github: {message}");
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = Config::default();
    let (mut app_id, mut installation_id) = (None, None);
    let mut quiet = false;
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        if flag == "--quiet" && inline.is_none() {
            quiet = true;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?,
        };
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--addr" => {
                addr = value
                    .parse()
                    .map_err(|_| format!("--addr: {value:?} is not an address like 127.0.0.1:0"))?;
            }
            "--token" => config.token = value,
            "--app-id" => app_id = Some(number(&value)?),
            "--installation-id" => installation_id = Some(number(&value)?),
            "--seed" => config.seed = number(&value)?,
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr}: only loopback addresses are allowed"
        ));
    }
    config.app = match (app_id, installation_id) {
        (Some(app_id), Some(installation_id)) => Some(AppConfig {
            app_id,
            installation_id,
        }),
        (None, None) => None,
        _ => return Err("--app-id and --installation-id go together".to_owned()),
    };
    Ok(Args {
        addr,
        config,
        quiet,
    })
}

/// Resolves when the process gets SIGTERM or SIGINT (Ctrl-C).
async fn termination() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            result = tokio::signal::ctrl_c() => result,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            log(format_args!("{message}"));
            return ExitCode::from(2);
        }
    };
    let fake = match FakeGithub::start_on(args.config, args.addr).await {
        Ok(fake) => fake,
        Err(e) => {
            log(format_args!("cannot listen on {}: {e}", args.addr));
            return ExitCode::FAILURE;
        }
    };
    if !args.quiet {
        fake.on_request(|r| {
            let query = if r.query.is_empty() {
                String::new()
            } else {
                format!("?{}", r.query)
            };
            log(format_args!(
                "{} {}{query} -> {}",
                r.method, r.path, r.status
            ));
        });
    }
    // Signal handlers go in before the announcement, so a SIGTERM right after it is handled.
    let stop = tokio::spawn(termination());
    {
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "listening on {}", fake.url())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            log(format_args!("cannot write to stdout"));
            return ExitCode::FAILURE;
        }
    }
    let outcome = stop.await;
    fake.shutdown().await;
    match outcome {
        Ok(Ok(())) => {
            log(format_args!("stopped"));
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            log(format_args!("cannot wait for signals: {e}"));
            ExitCode::FAILURE
        }
        Err(e) => {
            log(format_args!("signal task failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_flags() {
        let args = parse(&[
            "--addr=127.0.0.1:8080",
            "--token",
            "t",
            "--quiet",
            "--seed",
            "9",
        ])
        .expect("valid arguments");
        assert!(args.quiet);
        assert_eq!(args.addr.port(), 8080);
        assert_eq!(args.config.token, "t");
        assert_eq!(args.config.seed, 9);
        let app = parse(&["--app-id", "1", "--installation-id", "2"])
            .expect("valid arguments")
            .config
            .app;
        assert_eq!(
            app,
            Some(AppConfig {
                app_id: 1,
                installation_id: 2
            })
        );
    }

    #[test]
    fn refuses_non_loopback_and_nonsense() {
        assert!(parse(&["--addr", "0.0.0.0:80"]).is_err());
        assert!(parse(&["--app-id", "1"]).is_err());
        assert!(parse(&["--bogus", "1"]).is_err());
        assert!(parse(&["--seed"]).is_err());
    }
}
