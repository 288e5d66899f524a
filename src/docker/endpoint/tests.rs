use super::tcp::{read_certificates, read_private_key};
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
