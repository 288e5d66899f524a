//! The engine through the system's OpenSSH: one master connection per host, each Docker
//! connection a `docker system dial-stdio` over it.

use super::*;

/// Starts an SSH master connection (the system's `ssh`, host keys checked strictly), checks
/// that `docker` answers on the remote, and returns a client whose every connection is a
/// `docker system dial-stdio` over that master.
pub(super) async fn open(
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
