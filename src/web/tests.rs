//! The listener on 127.0.0.1 with a plain HTTP client: routes, headers, authentication, TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::*;
use crate::status::{FleetStatus, Totals};

/// Status code, head and body of a GET (HTTP/1.0: the server closes after answering).
async fn get_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, head.to_lowercase(), body.to_string())
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    get_on(stream, path, headers).await
}

fn status() -> FleetStatus {
    FleetStatus {
        fleet: "zq<script>".into(),
        pools: vec![],
        orphan_registrations: vec!["zq-\u{202e}gnp.exe".into()],
        totals: Totals::default(),
        hosts: vec![],
        autoscale: vec![],
        scale_set_error: None,
        start_failures: vec![],
    }
}

async fn serve(
    args: ListenArgs,
    board: Arc<Board>,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listen = args.prepare().expect("settings").expect("a listener");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let addr = listen
        .start(
            board,
            crate::watch::metrics::router(Arc::new(crate::watch::metrics::Metrics::new())),
            stopped,
        )
        .await
        .expect("serves");
    (addr, stop)
}

fn loopback() -> ListenArgs {
    ListenArgs {
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..ListenArgs::default()
    }
}

#[tokio::test]
async fn one_listener_serves_the_page_its_assets_metrics_health_and_the_api_with_a_strict_policy() {
    let board = Arc::new(Board::new());
    let (addr, _stop) = serve(loopback(), board.clone()).await;

    let (code, _, body) = get(addr, "/api/v1/status", &[]).await;
    assert_eq!(code, 503, "no observation yet: {body}");

    board.observed(status(), 1_000);
    let (code, head, body) = get(addr, "/api/v1/status", &[]).await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        doc,
        serde_json::to_value(status()).expect("json"),
        "the document of `fleet status --format json`"
    );

    let (code, head, page) = get(addr, "/", &[]).await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self';"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(page.contains(r#"<script src="/assets/app.js" defer></script>"#));
    // No inline script and nothing from another origin.
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
        ("/assets/icon.svg", "image/svg+xml"),
        ("/favicon.ico", "image/svg+xml"),
    ] {
        let (code, head, body) = get(addr, path, &[]).await;
        assert_eq!(code, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(
            !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    let (_, _, js) = get(addr, "/assets/app.js", &[]).await;
    assert!(
        !js.contains("innerHTML") && !js.contains("eval("),
        "values are set as text"
    );

    let (code, _, body) = get(addr, "/metrics", &[]).await;
    assert_eq!(code, 200);
    assert!(
        body.contains("# TYPE fleet_reconcile_duration_seconds histogram"),
        "{body}"
    );
    let (code, _, body) = get(addr, "/healthz", &[]).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, body) = get(addr, "/api/v1/watch", &[]).await;
    assert_eq!(code, 200);
    let watch: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(watch["observed_at"], 1_000);
    let (code, _, body) = get(addr, "/api/v1/history?since=0", &[]).await;
    assert_eq!(code, 200);
    let history: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(history["source"], "memory");
    let (code, _, _) = get(addr, "/api/v1/history?since=yesterday", &[]).await;
    assert_eq!(code, 400);
    let (code, _, _) = get(addr, "/assets/../Cargo.toml", &[]).await;
    assert_eq!(code, 404);
    let (code, _, _) = get(addr, "/assets/nothing.js", &[]).await;
    assert_eq!(code, 404);
}

#[test]
fn an_address_other_than_loopback_needs_authentication() {
    let open = ListenArgs {
        listen: Some("0.0.0.0:9105".parse().expect("addr")),
        ..ListenArgs::default()
    };
    let e = open.prepare().expect_err("refused");
    assert!(
        e.to_string()
            .starts_with("refusing to serve on 0.0.0.0:9105 without authentication"),
        "{e}"
    );
    let v6 = ListenArgs {
        listen: Some("[::]:9105".parse().expect("addr")),
        ..ListenArgs::default()
    };
    assert!(v6.prepare().is_err());
    assert!(loopback().prepare().expect("loopback is fine").is_some());
    assert!(
        ListenArgs::default()
            .prepare()
            .expect("no listener")
            .is_none()
    );

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("auth");
    std::fs::write(&file, "0123456789abcdef0123\n").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let guarded = ListenArgs {
        listen_auth: Some(file),
        ..open
    };
    assert!(guarded.prepare().expect("with auth").is_some());
}

#[tokio::test]
async fn with_authentication_every_route_but_healthz_answers_401_without_it() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("auth");
    let hash = bcrypt::hash("pw for ops", 4).expect("hash");
    std::fs::write(&file, format!("0123456789abcdef0123\nops:{hash}\n")).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let board = Arc::new(Board::new());
    board.observed(status(), 1_000);
    let args = ListenArgs {
        listen_auth: Some(file),
        ..loopback()
    };
    let (addr, _stop) = serve(args, board).await;
    for path in [
        "/",
        "/assets/app.js",
        "/api/v1/status",
        "/api/v1/history",
        "/api/v1/watch",
        "/metrics",
    ] {
        let (code, head, body) = get(addr, path, &[]).await;
        assert_eq!(code, 401, "{path}");
        assert!(
            head.contains("www-authenticate: basic realm=\"fleet\""),
            "{head}"
        );
        assert!(!body.contains("zq"), "{path}: {body}");
        let (code, _, _) = get(
            addr,
            path,
            &[("Authorization", "Bearer wrong-token-0123456789")],
        )
        .await;
        assert_eq!(code, 401, "{path}");
        let (code, _, _) = get(
            addr,
            path,
            &[("Authorization", "Bearer 0123456789abcdef0123")],
        )
        .await;
        assert_eq!(code, 200, "{path}");
    }
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ops:pw for ops")
    );
    let (code, _, _) = get(addr, "/api/v1/status", &[("Authorization", &basic)]).await;
    assert_eq!(code, 200);
    let (code, _, body) = get(addr, "/healthz", &[]).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn tls_from_a_certificate_and_key() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=fleet-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (install it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = ListenArgs {
        listen_tls_cert: Some(cert.clone()),
        listen_tls_key: Some(key),
        ..loopback()
    };
    let (addr, _stop) = serve(args, Arc::new(Board::new())).await;

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).expect("cert") {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (code, head, body) = get_on(tls, "/healthz", &[]).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"), "{head}");

    // Plain HTTP on the TLS port gets no page.
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut stream = stream;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("ok"),
        "{answer:?}"
    );

    let missing = ListenArgs {
        listen_tls_cert: Some(dir.path().join("none.pem")),
        listen_tls_key: Some(dir.path().join("key.pem")),
        ..loopback()
    };
    let e = missing.prepare().expect_err("refused");
    assert!(
        e.to_string()
            .contains("cannot read the listener's certificate"),
        "{e}"
    );
}
