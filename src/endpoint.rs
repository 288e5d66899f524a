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

/// A TLS engine that did not answer, for a reason the HTTP client hid: in TLS 1.3 the engine
/// refuses a client certificate after the handshake, and the client may see only a closed
/// connection. One request made by hand reads the engine's alert, which says why.
async fn explained(target: &Target, attempt: &Attempt<'_>, e: EndpointError) -> EndpointError {
    let (EndpointError::Unreachable { .. }, Target::Tls { host, port, files }) = (&e, target)
    else {
        return e;
    };
    let (host, port, files) = (host.clone(), *port, files.clone());
    let alert = tokio::task::spawn_blocking(move || tls_alert(&host, port, &files))
        .await
        .ok()
        .flatten();
    match alert {
        Some(tls) => attempt.unreachable(&tls),
        None => e,
    }
}

/// The TLS error one `GET /_ping` over a connection of its own meets, if any.
fn tls_alert(host: &str, port: u16, files: &TlsFiles) -> Option<rustls::Error> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let config = Arc::new(tls_config(files).ok()?);
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    let connection = rustls::ClientConnection::new(config, name).ok()?;
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, DIAGNOSIS_TIMEOUT).ok()?;
    tcp.set_read_timeout(Some(DIAGNOSIS_TIMEOUT)).ok()?;
    tcp.set_write_timeout(Some(DIAGNOSIS_TIMEOUT)).ok()?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let request = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n";
    let failure = match tls.write_all(request) {
        Err(e) => e,
        Ok(()) => tls.read(&mut [0u8; 64]).err()?,
    };
    failure
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}

/// How long the diagnosis of a failed TLS connection may wait for the engine.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `target`; nothing has been sent yet, except over SSH (see [`open_ssh`]).
async fn open(
    target: &Target,
    options: &ConnectOptions,
    attempt: &Attempt<'_>,
) -> Result<Docker, EndpointError> {
    // Whole seconds, at least one: bollard's per-request timeout.
    let secs = options.timeout.as_secs().max(1);
    let docker = match target {
        Target::Unix { path } => {
            let path = path.to_string_lossy();
            Docker::connect_with_unix(&path, secs, API_DEFAULT_VERSION)
        }
        Target::PlainLoopback { ip, port } => {
            let addr = std::net::SocketAddr::new(*ip, *port);
            Docker::connect_with_http(&format!("tcp://{addr}"), secs, API_DEFAULT_VERSION)
        }
        Target::Tls { host, port, files } => {
            // Off the runtime: reading files blocks, and the connect timeout must still fire.
            let owned = files.clone();
            let config = tokio::task::spawn_blocking(move || tls_config(&owned))
                .await
                .map_err(|e| FileProblem {
                    role: "CA certificate",
                    path: files.ca.clone(),
                    reason: format!("reading the TLS files failed: {e}"),
                })
                .and_then(|read| read)
                .map_err(|p| attempt.tls_file(p))?;
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .enable_http1()
                .build();
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            docker_over(https, (), &format!("https://{authority}"), secs)
        }
        Target::Ssh { user, host, port } => {
            return open_ssh(user.as_deref(), host, *port, options, attempt).await;
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

/// A TLS file that cannot be used, before any connection is tried.
struct FileProblem {
    role: &'static str,
    path: PathBuf,
    reason: String,
}

/// Trusts only `files.ca` (not the machine's CAs: whoever holds a public certificate for the
/// name must not receive fleet's requests and their secrets) and presents fleet's certificate.
fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, FileProblem> {
    let problem = |role, path: &Path, reason: String| FileProblem {
        role,
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(&files.ca, "CA certificate")? {
        roots
            .add(cert)
            .map_err(|e| problem("CA certificate", &files.ca, e.to_string()))?;
    }
    let chain = read_certificates(&files.cert, "client certificate")?;
    let key = read_private_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("client certificate", &files.cert, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            problem(
                "client key",
                &files.key,
                format!("it does not fit the client certificate: {e}"),
            )
        })
}

fn read_file(path: &Path, role: &'static str) -> Result<Vec<u8>, FileProblem> {
    named_file::read_capped(path, named_file::KEY_CAP).map_err(|refused| FileProblem {
        role,
        path: path.to_path_buf(),
        reason: refused.detail,
    })
}

fn read_certificates(
    path: &Path,
    role: &'static str,
) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let problem = |reason: String| FileProblem {
        role,
        path: path.to_path_buf(),
        reason,
    };
    let pem = read_file(path, role)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(pem_problem(&e).to_string()))?;
    if certs.is_empty() {
        return Err(problem("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Reads the client key, refusing one that others can read (as for the GitHub App key).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileProblem> {
    const ROLE: &str = "client key";
    let problem = |reason: String| FileProblem {
        role: ROLE,
        path: path.to_path_buf(),
        reason,
    };
    let pem = named_file::read_private_key(path).map_err(|refused| problem(refused.detail))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            problem("it holds no PEM private key".into())
        }
        other => problem(pem_problem(&other).to_string()),
    })
}

/// What is wrong with a PEM file, in words that quote nothing from it (it may be a key).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a PEM section in it has no END line",
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line in it is malformed",
        Error::Base64Decode(_) => "a PEM section in it is not valid base64",
        Error::SectionTooLarge => "a PEM section in it is too large",
        _ => "it cannot be read as PEM",
    }
}

fn find_rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    // io::Error hides the error it wraps from `source()` (hyper-rustls wraps tokio-rustls'
    // io::Error, which wraps the rustls::Error, in another io::Error).
    let wrapped = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref());
    if let Some(found) = wrapped.and_then(|inner| find_rustls_error(inner)) {
        return Some(found);
    }
    e.source().and_then(find_rustls_error)
}

fn tls_hint(e: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription, CertificateError};
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            Some("the engine's certificate is not signed by the CA in `tls.ca`")
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            Some("the engine's certificate does not name the host of the endpoint")
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            Some("the engine's certificate has expired")
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired,
        ) => Some(
            "the engine refused fleet's client certificate: is it signed by the engine's --tlscacert?",
        ),
        _ => None,
    }
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

/// Starts an SSH master connection (the system's `ssh`, host keys checked strictly), checks
/// that `docker` answers on the remote, and returns a client whose every connection is a
/// `docker system dial-stdio` over that master.
async fn open_ssh(
    user: Option<&str>,
    host: &str,
    port: Option<u16>,
    options: &ConnectOptions,
    attempt: &Attempt<'_>,
) -> Result<Docker, EndpointError> {
    let mut builder = openssh::SessionBuilder::default();
    builder
        // Never accept an unknown or changed host key: fleet sends secrets to this engine.
        .known_hosts_check(openssh::KnownHosts::Strict)
        // Half the budget, so that ssh's own message arrives before our timeout.
        .connect_timeout(Duration::from_secs((options.timeout.as_secs() / 2).max(1)))
        .server_alive_interval(SSH_ALIVE_INTERVAL)
        // Not ~/.local/state, which it would create: a temporary directory of its own under
        // $TMPDIR holds the control socket (mode 0600).
        .control_directory(std::env::temp_dir());
    if let Some(user) = user {
        builder.user(user.to_string());
    }
    if let Some(port) = port {
        builder.port(port);
    }
    if let Some(config) = &options.ssh_config {
        builder.config_file(config);
    }
    let session = builder
        .connect(host)
        .await
        .map_err(|e| EndpointError::Ssh {
            host: attempt.host.to_string(),
            endpoint: attempt.endpoint.to_string(),
            ssh_said: ssh_message(&e),
        })?;
    check_remote_docker(&session, attempt).await?;
    let sessions = Arc::new(tokio::sync::Semaphore::new(SSH_SESSIONS));
    let dialer = SshDialer {
        session: Arc::new(session),
        sessions: Arc::clone(&sessions),
        host: Arc::from(attempt.host),
    };
    let secs = options.timeout.as_secs().max(1);
    // The address only fills the Host header: every connection goes through the dialer.
    docker_over(dialer, CloseOnDrop(sessions), "http://docker", secs)
        .map_err(|e| attempt.unreachable(&e))
}

/// Closes the SSH session permits when the client goes. hyper finishes a connection attempt
/// that lost the race to an idle connection in the background, holding the connection pool;
/// one waiting for a permit held by that pool's idle connections would keep the pool, and with
/// it the SSH master, alive. Closed permits end such attempts at once.
struct CloseOnDrop(Arc<tokio::sync::Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What ssh printed (openssh keeps ssh's log in the error it returns).
fn ssh_message(e: &openssh::Error) -> String {
    let said = match e {
        openssh::Error::Connect(io) => io.to_string(),
        other => describe(other),
    };
    let said = bounded(&said);
    if said.is_empty() {
        "nothing (ssh exited without a message)".to_string()
    } else {
        said
    }
}

/// Runs `docker version` on the remote so that a missing CLI, a stopped engine or a denied
/// socket there fails with the remote's own words, not as a closed connection.
async fn check_remote_docker(
    session: &openssh::Session,
    attempt: &Attempt<'_>,
) -> Result<(), EndpointError> {
    let output = session
        .command("docker")
        .arg("version")
        .arg("--format")
        .arg("{{.Server.APIVersion}}")
        .output()
        .await
        .map_err(|e| EndpointError::Ssh {
            host: attempt.host.to_string(),
            endpoint: attempt.endpoint.to_string(),
            ssh_said: ssh_message(&e),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let status = match output.status.code() {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    };
    let mut said = String::from_utf8_lossy(&output.stderr).into_owned();
    if said.trim().is_empty() {
        said = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    Err(EndpointError::RemoteDocker {
        host: attempt.host.to_string(),
        endpoint: attempt.endpoint.to_string(),
        status,
        said: bounded(&said),
    })
}

/// Opens one `docker system dial-stdio` per HTTP connection over the shared SSH master.
#[derive(Clone)]
struct SshDialer {
    session: Arc<openssh::Session>,
    /// Permits for [`SSH_SESSIONS`]; each open stream holds one.
    sessions: Arc<tokio::sync::Semaphore>,
    host: Arc<str>,
}

impl tower_service::Service<hyper::Uri> for SshDialer {
    type Response = TokioIo<SshStream>;
    type Error = openssh::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let session = Arc::clone(&self.session);
        let sessions = Arc::clone(&self.sessions);
        let host = Arc::clone(&self.host);
        Box::pin(async move {
            let permit = sessions.acquire_owned().await.map_err(|_| {
                openssh::Error::ChildIo(io::Error::other("the SSH connection is closing"))
            })?;
            let mut child = session
                .arc_command("docker")
                .arg("system")
                .arg("dial-stdio")
                .stdin(openssh::Stdio::piped())
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped())
                .spawn()
                .await?;
            let (Some(stdin), Some(stdout)) = (child.stdin().take(), child.stdout().take()) else {
                return Err(openssh::Error::ChildIo(io::Error::other(
                    "the remote docker system dial-stdio has no stdin or stdout",
                )));
            };
            if let Some(stderr) = child.stderr().take() {
                tokio::spawn(log_remote_stderr(host, stderr));
            }
            Ok(TokioIo::new(SshStream {
                io: tokio::io::join(stdout, stdin),
                _child: child,
                _permit: permit,
            }))
        })
    }
}

/// The remote `docker system dial-stdio` says why it stops on its stderr: log it.
async fn log_remote_stderr(host: Arc<str>, stderr: openssh::ChildStderr) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::warn!(host = %host, "remote docker system dial-stdio: {line}");
    }
}

/// One HTTP connection: the remote dial-stdio's stdout and stdin. Dropping it ends the remote
/// command (openssh kills the local ssh client process on drop).
struct SshStream {
    io: tokio::io::Join<openssh::ChildStdout, openssh::ChildStdin>,
    _child: openssh::Child<Arc<openssh::Session>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsyncRead for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connection for SshStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    fn tls(url: &str) -> Endpoint {
        Endpoint {
            tls: Some(files(Path::new("/etc/fleet/tower"))),
            ..Endpoint::new(url)
        }
    }

    fn insecure(url: &str) -> Endpoint {
        Endpoint {
            insecure: true,
            ..Endpoint::new(url)
        }
    }

    /// The edge cases are tabled in src/spec/endpoint.rs; here: `target` hands on what the
    /// one reader decides, the TLS files included.
    #[test]
    fn targets_come_from_the_one_endpoint_reader() {
        assert_eq!(
            Endpoint::new("unix:///var/run/docker.sock").target(),
            Ok(Target::Unix {
                path: PathBuf::from("/var/run/docker.sock")
            })
        );
        assert_eq!(
            tls("tcp://tower.lan:12376").target(),
            Ok(Target::Tls {
                host: "tower.lan".into(),
                port: 12376,
                files: files(Path::new("/etc/fleet/tower")),
            })
        );
        assert_eq!(
            insecure("tcp://127.0.0.1:2375").target(),
            Ok(Target::PlainLoopback {
                ip: "127.0.0.1".parse().expect("ip"),
                port: 2375
            })
        );
        for url in [
            "ssh://-F",
            "ssh://ci@-G",
            "ssh://-lroot@h",
            "tcp://tower.lan:2375",
        ] {
            assert!(Endpoint::new(url).target().is_err(), "{url}");
        }
        assert!(insecure("tcp://localhost:2375").target().is_err());
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn connect_error(endpoint: &Endpoint, options: &ConnectOptions) -> EndpointError {
        match runtime().block_on(connect_with("tower", endpoint, options)) {
            Ok(_) => panic!("{endpoint} connected"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_name_the_host_and_the_endpoint() {
        let e = connect_error(
            &Endpoint::new("tcp://tower.lan:2375"),
            &ConnectOptions::default(),
        );
        assert!(matches!(e, EndpointError::Invalid { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.starts_with("host `tower`: Docker endpoint `tcp://tower.lan:2375` cannot be used: expected TLS for a tcp:// endpoint"),
            "{message}"
        );
    }

    /// Writes PEM-looking files; the key is not a real key, which is enough to fail on.
    fn write_tls_files(dir: &Path, key_mode: u32) -> TlsFiles {
        use std::os::unix::fs::PermissionsExt;
        let files = files(dir);
        std::fs::write(&files.ca, "not a certificate\n").expect("write ca");
        std::fs::write(&files.cert, "not a certificate\n").expect("write cert");
        std::fs::write(&files.key, "not a key\n").expect("write key");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(key_mode))
            .expect("chmod key");
        files
    }

    fn tls_file_error(files: TlsFiles) -> (&'static str, PathBuf, String) {
        // Port 9 on loopback: nothing is sent, the files are refused first.
        let endpoint = Endpoint {
            tls: Some(files),
            ..Endpoint::new("tcp://127.0.0.1:9")
        };
        match connect_error(&endpoint, &ConnectOptions::default()) {
            e @ EndpointError::TlsFile { .. } => {
                let message = e.to_string();
                let EndpointError::TlsFile {
                    role, path, reason, ..
                } = e
                else {
                    unreachable!()
                };
                assert!(
                    message.starts_with("host `tower`: cannot use the "),
                    "{message}"
                );
                assert!(message.contains("tcp://127.0.0.1:9"), "{message}");
                (role, path, reason)
            }
            other => panic!("expected a TLS file error, got {other:?}"),
        }
    }

    #[test]
    fn unusable_tls_files_are_named_before_any_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_tls_files(dir.path(), 0o600);
        let (role, path, reason) = tls_file_error(files.clone());
        assert_eq!((role, &path), ("CA certificate", &files.ca));
        // The reason goes to the log only: the message says nothing about the file.
        assert_eq!(reason, named_file::NOT_USABLE);
        assert_eq!(
            read_certificates(&files.ca, "CA certificate")
                .map(|_| ())
                .map_err(|p| p.reason),
            Err("it holds no PEM certificate".to_string())
        );

        let missing = TlsFiles {
            ca: dir.path().join("missing-ca.pem"),
            ..files.clone()
        };
        let (role, _, reason) = tls_file_error(missing.clone());
        assert_eq!(role, "CA certificate");
        assert_eq!(reason, named_file::NOT_USABLE);
        let pagemap = TlsFiles {
            ca: PathBuf::from("/proc/self/pagemap"),
            ..files.clone()
        };
        let (_, _, reason) = tls_file_error(pagemap);
        assert_eq!(reason, named_file::NOT_USABLE);
    }

    #[test]
    fn a_client_key_must_be_private_and_present() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_tls_files(dir.path(), 0o644);
        let key = files.key.clone();
        let Err(problem) = read_private_key(&key) else {
            panic!("a key of mode 0644 was accepted");
        };
        assert_eq!(
            problem.reason,
            "expected a private key readable by its owner only (mode 0600 or stricter), found mode 0644"
        );
        std::fs::remove_file(&key).expect("remove key");
        let Err(problem) = read_private_key(&key) else {
            panic!("a missing key was accepted");
        };
        assert_eq!((problem.role, &problem.path), ("client key", &key));
        assert!(
            problem.reason.contains("No such file"),
            "{}",
            problem.reason
        );
    }

    #[test]
    fn a_broken_key_is_described_without_quoting_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_tls_files(dir.path(), 0o600);
        let broken = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!!\n-----END PRIVATE KEY-----\n";
        std::fs::write(&files.key, broken).expect("write key");
        let Err(problem) = read_private_key(&files.key) else {
            panic!("a broken key was accepted");
        };
        assert_eq!(problem.reason, "a PEM section in it is not valid base64");
    }

    #[test]
    fn an_engine_that_never_answers_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("silent.sock");
        let rt = runtime();
        let endpoint = Endpoint::new(format!("unix://{}", socket.display()));
        let options = ConnectOptions {
            timeout: Duration::from_millis(300),
            ssh_config: None,
        };
        let result = rt.block_on(async {
            // Accepts connections and never replies.
            let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
            let hold = tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    held.push(stream);
                }
            });
            let result = connect_with("tower", &endpoint, &options).await;
            hold.abort();
            result
        });
        match result {
            Err(e @ EndpointError::Timeout { .. }) => assert_eq!(
                e.to_string(),
                format!(
                    "host `tower`: no answer from the Docker engine at {} within 300ms",
                    endpoint.url
                )
            ),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoint = Endpoint::new(format!("unix://{}/none.sock", dir.path().display()));
        let e = connect_error(&endpoint, &ConnectOptions::default());
        assert!(matches!(e, EndpointError::Unreachable { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.starts_with(&format!(
                "host `tower`: the Docker engine at {} does not answer: ",
                endpoint.url
            )),
            "{message}"
        );
        assert!(
            message.ends_with(&format!(
                "Socket not found: {}/none.sock",
                dir.path().display()
            )),
            "{message}"
        );
    }

    #[test]
    fn tls_failures_say_what_to_check() {
        use rustls::CertificateError;
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        // As hyper-rustls returns it: tokio-rustls' io::Error inside another io::Error.
        let wrapped = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, unknown));
        let attempt = Attempt {
            host: "tower",
            endpoint: "tcp://tower.lan:2376",
        };
        let e = attempt.unreachable(&wrapped);
        assert_eq!(
            e.to_string(),
            "host `tower`: the TLS handshake with the Docker engine at tcp://tower.lan:2376 failed: \
             invalid peer certificate: UnknownIssuer (the engine's certificate is not signed by the CA in `tls.ca`)"
        );
    }

    #[test]
    fn describe_follows_sources_without_repeating_them() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] io::Error);
        let e = Outer(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(describe(&e), "client error (Connect): refused");
    }

    #[test]
    fn long_messages_keep_their_end() {
        let text = format!("{}Host key verification failed.", "é".repeat(MESSAGE_LIMIT));
        let kept = bounded(&text);
        assert!(kept.starts_with("..."));
        assert!(kept.ends_with("Host key verification failed."));
        assert!(kept.len() <= MESSAGE_LIMIT + 3);
        assert_eq!(bounded("  short\n"), "short");
    }
}
