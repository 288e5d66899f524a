//! Docker: one connection per host (`DockerHost`), its reads (`read.rs`: what the planner
//! needs, and the event stream `watch` follows) and its writes (`write.rs`: only the executor
//! calls them), as docs/architecture.md draws them.

mod read;
mod write;

use std::time::Duration;

use bollard::Docker;

pub use read::{ContainerEvent, DockerRead};
pub use write::DockerWrite;

/// The socket used when neither the spec nor $DOCKER_HOST names an engine.
pub const DEFAULT_DOCKER_ENDPOINT: &str = "unix:///var/run/docker.sock";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach Docker at {endpoint} (host `{host}`): is the engine running? ({message})"
    )]
    Unreachable {
        host: String,
        endpoint: String,
        message: String,
    },
    #[error("Docker at {endpoint} (host `{host}`) failed to {what}: {message}")]
    Api {
        host: String,
        endpoint: String,
        what: String,
        message: String,
    },
    #[error("image {image} is not on host `{host}` and the pool says `pull: never`")]
    ImageMissing { host: String, image: String },
    #[error("host `{host}`: cannot pull {image}: {message}")]
    Pull {
        host: String,
        image: String,
        message: String,
    },
    /// A write the engine refused; `status` is its HTTP status (409: a name in use).
    #[error("host `{host}`: cannot {what}: {message}")]
    Write {
        host: String,
        what: String,
        status: Option<u16>,
        message: String,
    },
}

/// A connection to one host's engine.
#[derive(Clone)]
pub struct DockerHost {
    pub name: String,
    pub endpoint: String,
    docker: Docker,
}

impl DockerHost {
    /// Connects to `endpoint` (the spec's `docker`), else $DOCKER_HOST, else the local socket,
    /// and agrees on an API version with the engine.
    pub async fn connect(
        name: &str,
        endpoint: Option<&str>,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<DockerHost, DockerError> {
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| env("DOCKER_HOST").filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_DOCKER_ENDPOINT.to_string());
        let unreachable = |message: String| DockerError::Unreachable {
            host: name.to_string(),
            endpoint: endpoint.clone(),
            message,
        };
        let docker = Docker::connect_with_host(&endpoint)
            .map_err(|e| unreachable(e.to_string()))?
            .with_timeout(Duration::from_secs(60));
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(DockerHost {
            name: name.to_string(),
            endpoint,
            docker,
        })
    }

    /// Whether the engine runs on this machine (then NVML here describes its GPUs).
    pub fn is_local(&self) -> bool {
        self.endpoint.starts_with("unix://")
    }

    pub(super) fn api_error(&self, what: &str, e: impl std::fmt::Display) -> DockerError {
        DockerError::Api {
            host: self.name.clone(),
            endpoint: self.endpoint.clone(),
            what: what.to_string(),
            message: e.to_string(),
        }
    }

    /// The read side of this connection.
    pub fn read(&self) -> DockerRead<'_> {
        DockerRead { host: self }
    }

    /// The write side of this connection.
    pub fn write(&self) -> DockerWrite<'_> {
        DockerWrite { host: self }
    }
}
