//! `fleet watch`: the daemon, until SIGTERM or SIGINT.

use std::path::Path;

use super::{Done, Failure, RunOptions, env_var, runtime};

pub fn run(
    file: &Path,
    resync: std::time::Duration,
    listen: crate::web::ListenArgs,
    host_timeout: std::time::Duration,
    run: &RunOptions,
) -> Result<Done, Failure> {
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
    Ok(Done::Ok)
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
