//! fleet's log on stderr: RUST_LOG or `-v` chooses what, every value escaped, and the
//! dependencies that log secrets capped at info.

use std::io::IsTerminal;

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
