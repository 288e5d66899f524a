//! Docker: one connection per host (`DockerHost`), its reads (`read.rs`: what the planner
//! needs, and the event stream `watch` follows) and its writes (`write.rs`: only the executor
//! calls them), as docs/architecture.md draws them.

mod api_path;
pub mod endpoint;
mod probe;
mod read;
mod write;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;

use crate::spec::Host;
use endpoint::{ConnectOptions, Endpoint, EndpointError, Target, TlsFiles};

pub use probe::{PROBE_LABEL, ProbeError, parse_nvidia_smi};
pub use read::{ContainerEvent, DockerRead, Named};
pub use write::{DockerWrite, Stop, WORK_DIR_HELPER_LABEL, WorkDir};

/// The socket used when neither the spec nor $DOCKER_HOST names an engine.
pub const DEFAULT_DOCKER_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// The environment variable that names an ssh client config file for `ssh://` hosts (`ssh -F`),
/// instead of the operator's `~/.ssh/config`. It belongs to the control machine, not to the
/// spec: a config file decides which commands ssh runs (`ProxyCommand`), so a pull request
/// that edits `fleet.yaml` must not choose it.
pub const SSH_CONFIG_ENV: &str = "FLEET_SSH_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// Connecting failed: the message names the host and the endpoint (and what ssh said).
    #[error(transparent)]
    Connect(#[from] EndpointError),
    #[error("Docker at {endpoint} (host `{host}`) failed to {what}: {message}")]
    Api {
        host: String,
        endpoint: String,
        what: String,
        message: String,
    },
    /// A host's answer took longer than fleet waits for one host.
    #[error("host `{host}`: the Docker engine at {endpoint} did not answer within {}", humantime::format_duration(*after))]
    Timeout {
        host: String,
        endpoint: String,
        after: Duration,
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

impl DockerError {
    /// The engine could not be reached or did not answer (as opposed to an answer that says no).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            DockerError::Connect(
                EndpointError::Unreachable { .. }
                    | EndpointError::Timeout { .. }
                    | EndpointError::Ssh { .. }
                    | EndpointError::RemoteDocker { .. }
            ) | DockerError::Timeout { .. }
        )
    }
}

/// A connection to one host's engine.
#[derive(Clone)]
pub struct DockerHost {
    pub name: String,
    pub endpoint: String,
    /// The engine is reached through a Unix socket on this machine (see [`DockerHost::is_local`]).
    local: bool,
    docker: Docker,
}

/// The endpoint a spec host names: its `docker` (else $DOCKER_HOST, else the local socket), its
/// `tls` files (relative paths are relative to the spec's directory `base_dir`) and `insecure`.
pub fn host_endpoint(
    host: &Host,
    base_dir: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Endpoint {
    let url = host
        .docker
        .clone()
        .or_else(|| env("DOCKER_HOST").filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_DOCKER_ENDPOINT.to_string());
    Endpoint {
        url,
        tls: host.tls.as_ref().map(|tls| TlsFiles {
            ca: base_dir.join(&tls.ca),
            cert: base_dir.join(&tls.cert),
            key: base_dir.join(&tls.key),
        }),
        insecure: host.insecure == Some(true),
    }
}

/// What this machine brings to every connection: `$FLEET_SSH_CONFIG` for `ssh://` hosts.
pub fn connect_options(env: &(dyn Fn(&str) -> Option<String> + Sync)) -> ConnectOptions {
    ConnectOptions {
        ssh_config: env(SSH_CONFIG_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        ..ConnectOptions::default()
    }
}

impl DockerHost {
    /// Connects to `endpoint` (a URL without TLS: `unix://` or `ssh://`), else $DOCKER_HOST,
    /// else the local socket; see [`DockerHost::connect_to`].
    pub async fn connect(
        name: &str,
        endpoint: Option<&str>,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<DockerHost, DockerError> {
        let host = Host {
            docker: endpoint.map(str::to_string),
            tls: None,
            insecure: None,
            gpus: crate::spec::HostGpus::None,
            gpu_mode: None,
            gpus_disabled: Vec::new(),
        };
        let endpoint = host_endpoint(&host, Path::new("."), env);
        DockerHost::connect_to(name, &endpoint, &connect_options(env)).await
    }

    /// Connects to the spec's host `name` as `host` describes it.
    pub async fn connect_host(
        name: &str,
        host: &Host,
        base_dir: &Path,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<DockerHost, DockerError> {
        let endpoint = host_endpoint(host, base_dir, env);
        DockerHost::connect_to(name, &endpoint, &connect_options(env)).await
    }

    /// Connects through [`endpoint`] (Unix socket, TLS, SSH or loopback TCP), agrees on
    /// an API version and pings: an unusable endpoint fails here, naming the host and the
    /// endpoint.
    pub async fn connect_to(
        name: &str,
        endpoint: &Endpoint,
        options: &ConnectOptions,
    ) -> Result<DockerHost, DockerError> {
        let docker = endpoint::connect_with(name, endpoint, options).await?;
        let local = matches!(endpoint.target(), Ok(Target::Unix { .. }));
        Ok(DockerHost {
            name: name.to_string(),
            endpoint: endpoint.url.clone(),
            local,
            docker,
        })
    }

    /// Whether the engine runs on this machine, so that NVML here describes its GPUs: only an
    /// engine reached through a Unix socket. A loopback TCP port is not taken for local: it is
    /// also how a forwarded remote engine looks (`ssh -L`), and asking the engine itself
    /// (docs/hosts.md, "GPU inventory") is right wherever it runs. A Unix socket forwarded from
    /// another machine needs its GPUs declared.
    pub fn is_local(&self) -> bool {
        self.local
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
