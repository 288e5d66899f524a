//! Why a TLS engine did not answer: the engine's alert, read by a request made by hand when the
//! HTTP client hid it, and a hint for the TLS errors an operator can fix.

use super::*;

/// A TLS engine that did not answer, for a reason the HTTP client hid: in TLS 1.3 the engine
/// refuses a client certificate after the handshake, and the client may see only a closed
/// connection. One request made by hand reads the engine's alert, which says why.
pub(super) async fn explained(
    target: &Target,
    attempt: &Attempt<'_>,
    e: EndpointError,
) -> EndpointError {
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

pub(super) fn find_rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
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

pub(super) fn tls_hint(e: &rustls::Error) -> Option<&'static str> {
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
