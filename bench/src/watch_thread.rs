//! `fleet watch` on a thread and runtime of its own, as in the `fleet watch` process; the
//! benches stop it and wait for its thread to end before they measure what it left.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use fleet::history::HistoryArgs;
use fleet::watch::{Env, WatchOptions};

/// The options of the benches' watch: those of `fleet watch` but `resync` and `host_timeout`.
pub fn options(resync: Duration, host_timeout: Duration) -> WatchOptions {
    WatchOptions {
        resync,
        listen: Default::default(),
        lock_timeout: Duration::from_secs(60),
        parallelism: 10,
        shutdown_grace: Duration::from_secs(8),
        host_timeout,
    }
}

/// A running watch. Dropped, it is asked to stop; [`WatchThread::stop`] also waits for it.
pub struct WatchThread {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl WatchThread {
    pub fn start(file: PathBuf, options: WatchOptions, env: Env) -> WatchThread {
        WatchThread::start_recording(file, options, None, env)
    }

    /// [`WatchThread::start`], keeping history as `history` says (`None`: none).
    pub fn start_recording(
        file: PathBuf,
        options: WatchOptions,
        history: Option<HistoryArgs>,
        env: Env,
    ) -> WatchThread {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("watch runtime: {e}"),
            };
            if let Err(e) = rt.block_on(fleet::watch::run_recording(
                file, options, history, env, stop_rx,
            )) {
                eprintln!("watch stopped: {e}");
            }
        });
        WatchThread {
            stop,
            thread: Some(thread),
        }
    }

    /// Asks watch to stop and waits until its thread has ended.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take()
            && tokio::task::spawn_blocking(move || thread.join())
                .await
                .is_err()
        {
            eprintln!("the watch thread could not be joined");
        }
    }
}

impl Drop for WatchThread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
