//! A Docker endpoint that can disappear and come back: a unix socket forwarding to the engine.

use std::path::{Path, PathBuf};

use crate::common::World;

pub struct DockerProxy {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DockerProxy {
    pub fn start(w: &World, path: &Path) -> DockerProxy {
        let _ = std::fs::remove_file(path);
        let listener =
            w.rt.block_on(async { tokio::net::UnixListener::bind(path) })
                .expect("bind proxy");
        let task = w.rt.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    break;
                };
                connections.spawn(async move {
                    if let Ok(mut engine) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
            // Aborting this task drops `connections`, which aborts every forwarded stream.
        });
        DockerProxy {
            path: path.to_path_buf(),
            task: Some(task),
        }
    }

    /// The endpoint goes away: its socket is removed and every forwarded stream is cut.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
