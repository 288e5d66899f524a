//! Connecting to one host's Docker engine: a Unix socket, TLS over TCP, the system's OpenSSH
//! running `docker system dial-stdio`, or plain TCP on a loopback address. [`connect`] agrees
//! on an API version (`GET /version`) before it returns, so a wrong CA, an unreadable key, an SSH host
//! key mismatch or a dead engine fail here, with an error that names the host and the endpoint.
//! The operator's side (certificates, `dockerd` flags, SSH set-up) is in docs/hosts.md.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::{API_DEFAULT_VERSION, BollardRequest, Docker};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, ReadBuf};

use crate::escape::escaped;
use crate::named_file;
use crate::spec::endpoint::{DockerEndpoint, Transport};

mod ssh;
mod tcp;
mod tls_alert;
mod unix;

use tcp::{FileProblem, tls_config};
use tls_alert::{explained, find_rustls_error, tls_hint};

/// How long each request may take once connected (the engine can be slow under load).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Keeps an idle SSH connection alive through NAT and notices a dead peer.
const SSH_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// SSH sessions open at once over one host's master connection: sshd refuses more than its
/// MaxSessions (10 by default), so further API connections wait for one to close. fleet keeps
/// at most one long-lived stream (events) per host, which leaves room for the rest.
const SSH_SESSIONS: usize = 8;
/// The most of an SSH or remote `docker` message that an error carries.
const MESSAGE_LIMIT: usize = 4000;

/// Where a host's engine is, as the spec's host says: `docker`, `tls` and `insecure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `unix:///path`, `ssh://[user@]host[:port]`, `tcp://host:port` (or `https://`) with
    /// `tls`, or `tcp://`/`http://` on a loopback address with `insecure`.
    pub url: String,
    pub tls: Option<TlsFiles>,
    /// Allows plain TCP without TLS, and only to a loopback address.
    pub insecure: bool,
}

/// The PEM files of a TLS endpoint: the CA that signed the engine's certificate (the only CA
/// trusted for it), and fleet's client certificate and key (mode 0600 or stricter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the control machine brings to a connection, as opposed to what the spec says.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Bounds connecting, the SSH handshake, and version negotiation together.
    pub timeout: Duration,
    /// An ssh config file used instead of `~/.ssh/config` (`ssh -F`); `None` uses the
    /// operator's usual OpenSSH configuration.
    pub ssh_config: Option<PathBuf>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(30),
            ssh_config: None,
        }
    }
}

/// An endpoint once checked: exactly one way to reach the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix {
        path: PathBuf,
    },
    /// `host` is a DNS name or an IP address (without brackets).
    Tls {
        host: String,
        port: u16,
        files: TlsFiles,
    },
    PlainLoopback {
        ip: IpAddr,
        port: u16,
    },
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("host `{host}`: Docker endpoint `{endpoint}` cannot be used: {reason}")]
    Invalid {
        host: String,
        endpoint: String,
        reason: String,
    },
    #[error("host `{host}`: cannot use the {role} {} for {endpoint}: {reason}", path.display())]
    TlsFile {
        host: String,
        endpoint: String,
        role: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "host `{host}`: the TLS handshake with the Docker engine at {endpoint} failed: {reason}"
    )]
    Tls {
        host: String,
        endpoint: String,
        reason: String,
    },
    #[error("host `{host}`: ssh could not connect to {endpoint}; ssh said:\n{ssh_said}")]
    Ssh {
        host: String,
        endpoint: String,
        ssh_said: String,
    },
    #[error("host `{host}`: ssh reached {endpoint}, but `docker` there failed ({status}):\n{said}")]
    RemoteDocker {
        host: String,
        endpoint: String,
        status: String,
        said: String,
    },
    #[error("host `{host}`: the Docker engine at {endpoint} does not answer: {reason}")]
    Unreachable {
        host: String,
        endpoint: String,
        reason: String,
    },
    #[error("host `{host}`: no answer from the Docker engine at {endpoint} within {}", humantime::format_duration(*after))]
    Timeout {
        host: String,
        endpoint: String,
        after: Duration,
    },
}

impl Endpoint {
    /// An endpoint without TLS and not insecure: enough for `unix://` and `ssh://`.
    pub fn new(url: impl Into<String>) -> Endpoint {
        Endpoint {
            url: url.into(),
            tls: None,
            insecure: false,
        }
    }

    /// Checks the endpoint without touching the network; the reason says what to change. The
    /// one reader of endpoints (src/spec/endpoint.rs) decides, as it does for `fleet validate`:
    /// plain TCP only when `insecure` and to a loopback IP address.
    pub fn target(&self) -> Result<Target, String> {
        let endpoint = DockerEndpoint::parse(&self.url)?;
        let transport = endpoint
            .transport(self.tls.is_some(), self.insecure)
            .map_err(|refusal| refusal.to_string())?;
        Ok(match (transport, &self.tls) {
            (Transport::Unix { path }, _) => Target::Unix {
                path: PathBuf::from(path),
            },
            (Transport::Ssh { user, host, port }, _) => Target::Ssh { user, host, port },
            (Transport::PlainLoopback { ip, port }, _) => Target::PlainLoopback { ip, port },
            (Transport::Tls { host, port }, Some(files)) => Target::Tls {
                host,
                port,
                files: files.clone(),
            },
            // `transport` gives TLS only when `tls` is set.
            (Transport::Tls { .. }, None) => return Err("`tls` is missing".into()),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Names the host and endpoint in every error of one connection attempt.
struct Attempt<'a> {
    host: &'a str,
    endpoint: &'a str,
}

impl Attempt<'_> {
    fn unreachable(&self, e: &(dyn StdError + 'static)) -> EndpointError {
        if let Some(tls) = find_rustls_error(e) {
            return EndpointError::Tls {
                host: self.host.to_string(),
                endpoint: self.endpoint.to_string(),
                reason: match tls_hint(tls) {
                    Some(hint) => format!("{tls} ({hint})"),
                    None => tls.to_string(),
                },
            };
        }
        EndpointError::Unreachable {
            host: self.host.to_string(),
            endpoint: self.endpoint.to_string(),
            reason: describe(e),
        }
    }

    /// The file and its role are named, the reason only in the log: the spec chose the path,
    /// and a plan's output must not say what exists on this machine (src/named_file.rs).
    fn tls_file(&self, problem: FileProblem) -> EndpointError {
        tracing::info!(
            "host `{}`: the TLS {} {}: {}",
            escaped(self.host),
            problem.role,
            escaped(&problem.path.display().to_string()),
            problem.reason
        );
        EndpointError::TlsFile {
            host: self.host.to_string(),
            endpoint: self.endpoint.to_string(),
            role: problem.role,
            path: problem.path,
            reason: named_file::NOT_USABLE.to_string(),
        }
    }
}

/// Connects with [`ConnectOptions::default`].
pub async fn connect(host_name: &str, endpoint: &Endpoint) -> Result<Docker, EndpointError> {
    connect_with(host_name, endpoint, &ConnectOptions::default()).await
}

/// Connects to `endpoint` for the spec's host `host_name` and agrees on an API version (the
/// request that proves the engine answers), all within `options.timeout`. The client it returns has a per-request timeout of 60 s; over
/// SSH it owns the SSH connection, which closes when the last clone is dropped.
pub async fn connect_with(
    host_name: &str,
    endpoint: &Endpoint,
    options: &ConnectOptions,
) -> Result<Docker, EndpointError> {
    let attempt = Attempt {
        host: host_name,
        endpoint: &endpoint.url,
    };
    let target = endpoint.target().map_err(|reason| EndpointError::Invalid {
        host: host_name.to_string(),
        endpoint: endpoint.url.clone(),
        reason,
    })?;
    let connecting = async {
        let docker = open(&target, options, &attempt).await?;
        // `GET /version` is the round trip that proves the engine answers: no ping after it.
        match docker.negotiate_version().await {
            Ok(docker) => Ok(docker.with_timeout(REQUEST_TIMEOUT)),
            Err(e) => Err(explained(&target, &attempt, attempt.unreachable(&e)).await),
        }
    };
    match tokio::time::timeout(options.timeout, connecting).await {
        Ok(result) => result,
        Err(_) => Err(EndpointError::Timeout {
            host: host_name.to_string(),
            endpoint: endpoint.url.clone(),
            after: options.timeout,
        }),
    }
}

/// A client for `target`; nothing has been sent yet, except over SSH (see [`open_ssh`]).
async fn open(
    target: &Target,
    options: &ConnectOptions,
    attempt: &Attempt<'_>,
) -> Result<Docker, EndpointError> {
    // Whole seconds, at least one: bollard's per-request timeout.
    let secs = options.timeout.as_secs().max(1);
    let docker = match target {
        Target::Unix { path } => unix::open(path, secs),
        Target::PlainLoopback { ip, port } => tcp::open_plain(*ip, *port, secs),
        Target::Tls { host, port, files } => {
            tcp::open_tls(host, *port, files, secs, attempt).await?
        }
        Target::Ssh { user, host, port } => {
            return ssh::open(user.as_deref(), host, *port, options, attempt).await;
        }
    };
    docker.map_err(|e| attempt.unreachable(&e))
}

/// The body type bollard's requests carry (it is not exported under a name of its own).
type BollardBody = <BollardRequest as RequestBody>::Body;

trait RequestBody {
    type Body;
}

impl<B> RequestBody for http::Request<B> {
    type Body = B;
}

/// A bollard client that sends its requests through `connector` (TLS or SSH). `owned` lives as
/// long as the client (its last clone), and is dropped with it.
fn docker_over<C, O>(
    connector: C,
    owned: O,
    address: &str,
    secs: u64,
) -> Result<Docker, bollard::errors::Error>
where
    C: Connect + Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    // With a timer, idle connections (over SSH: a remote dial-stdio each) close after 90 s.
    let client: Client<C, BollardBody> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector);
    Docker::connect_with_custom_transport(
        move |request: BollardRequest| {
            let _owned = &owned;
            let client = client.clone();
            async move {
                client
                    .request(request)
                    .await
                    .map_err(bollard::errors::Error::from)
            }
        },
        Some(address),
        secs,
        API_DEFAULT_VERSION,
    )
}

/// An error and its sources on one line, without repeating a message a source already said.
fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut current = e.source();
    while let Some(err) = current {
        let message = err.to_string();
        if !parts.iter().any(|p| p.contains(&message)) {
            parts.push(message);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// At most [`MESSAGE_LIMIT`] bytes of what ssh or a remote command printed, trimmed.
fn bounded(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MESSAGE_LIMIT {
        return text.to_string();
    }
    let mut start = text.len() - MESSAGE_LIMIT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests;
