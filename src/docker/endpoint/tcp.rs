//! The engine over TCP: TLS with the host's certificate files, or plain HTTP on a loopback
//! address.

use super::*;

/// Plain HTTP, to an engine on a loopback address only (spec/endpoint.rs refuses others).
pub(super) fn open_plain(
    ip: IpAddr,
    port: u16,
    secs: u64,
) -> Result<Docker, bollard::errors::Error> {
    let addr = std::net::SocketAddr::new(ip, port);
    Docker::connect_with_http(&format!("tcp://{addr}"), secs, API_DEFAULT_VERSION)
}

/// TLS over TCP with the host's certificate files. The files are read off the runtime: reading
/// blocks, and the connect timeout must still fire.
pub(super) async fn open_tls(
    host: &str,
    port: u16,
    files: &TlsFiles,
    secs: u64,
    attempt: &Attempt<'_>,
) -> Result<Result<Docker, bollard::errors::Error>, EndpointError> {
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
    Ok(docker_over(
        https,
        (),
        &format!("https://{authority}"),
        secs,
    ))
}

/// A TLS file that cannot be used, before any connection is tried.
pub(super) struct FileProblem {
    pub(super) role: &'static str,
    pub(super) path: PathBuf,
    pub(super) reason: String,
}

/// Trusts only `files.ca` (not the machine's CAs: whoever holds a public certificate for the
/// name must not receive fleet's requests and their secrets) and presents fleet's certificate.
pub(super) fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, FileProblem> {
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

pub(super) fn read_certificates(
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
pub(super) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileProblem> {
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
