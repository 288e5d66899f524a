//! fleet's GitHub clients through an HTTP CONNECT proxy: a small proxy of the test's own on
//! 127.0.0.1 with the fake GitHub behind it. The REST client and the scale set client tunnel
//! through it, `NO_PROXY` sends them direct, the proxy sees CONNECTs to the trusted API only,
//! and the proxy's password is never printed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_github::{Config, FakeGithub, NewRunner, Scope};
use fleet::github::{Credentials, GithubClient, GithubScope, ProxyConfig, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw: each CONNECT's target and its `Proxy-Authorization`, if any.
#[derive(Default)]
struct Seen {
    connects: Vec<(String, Option<String>)>,
}

/// A CONNECT-only proxy on 127.0.0.1; it refuses anything else with 405.
async fn start_proxy() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(tunnel(client, log.clone()));
        }
    });
    (addr, seen)
}

async fn tunnel(mut client: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.lines();
    let request = lines.next().unwrap_or_default().to_string();
    let auth = lines
        .find(|l| l.to_ascii_lowercase().starts_with("proxy-authorization:"))
        .map(|l| l["proxy-authorization:".len()..].trim().to_string());
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "CONNECT" {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    if let Ok(mut seen) = seen.lock() {
        seen.connects.push((target.to_string(), auth));
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(20),
        max_wait: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        rate_limit_wait: Duration::from_millis(50),
    }
}

fn env(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> + Sync {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
}

async fn fake_with_runner() -> FakeGithub {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    fake.add_runner(
        &Scope::repo("acme", "zq"),
        NewRunner {
            name: "r-1".into(),
            ..NewRunner::default()
        },
    );
    fake
}

fn client(fake: &FakeGithub, proxy: ProxyConfig) -> GithubClient {
    GithubClient::new(
        &fake.url(),
        GithubScope::Repo {
            owner: "acme".into(),
            repo: "zq".into(),
        },
        Credentials::Token(fake.token()),
        policy(),
    )
    .and_then(|c| c.with_proxy(proxy))
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_clients_tunnel_through_the_proxy_to_the_trusted_api_only() {
    let fake = fake_with_runner().await;
    let (proxy, seen) = start_proxy().await;
    // Lower-case forms count as well; the user and password become Proxy-Authorization.
    let config = ProxyConfig::from_env(&env(vec![(
        "http_proxy",
        format!("http://fleet:pr0xy-secret@{proxy}"),
    )]));
    let github = client(&fake, config);
    let runners = github.read().list_runners().await.expect("runners");
    assert_eq!(runners.len(), 1);
    let scale_sets = fleet::observe::scalesets::client_for(&github).expect("scale set client");
    scale_sets.list_scale_sets().await.expect("scale sets");

    let seen = seen.lock().expect("seen");
    let api = fake.addr().to_string();
    assert!(seen.connects.len() >= 2, "{:?}", seen.connects);
    for (target, auth) in &seen.connects {
        assert_eq!(target, &api, "the proxy was asked for another host");
        // base64("fleet:pr0xy-secret")
        assert_eq!(auth.as_deref(), Some("Basic ZmxlZXQ6cHIweHktc2VjcmV0"));
    }
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with("/actions/runner-registration")),
        "the scale set exchange went through too"
    );
    assert!(
        requests.iter().all(|r| r.user_agent.starts_with("fleet/")),
        "every request names fleet: {:?}",
        requests.iter().map(|r| &r.user_agent).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_sends_requests_direct() {
    let fake = fake_with_runner().await;
    let (proxy, seen) = start_proxy().await;
    let config = ProxyConfig::from_env(&env(vec![
        ("HTTP_PROXY", format!("http://{proxy}")),
        ("NO_PROXY", "example.org, 127.0.0.1".to_string()),
    ]));
    let github = client(&fake, config);
    github.read().list_runners().await.expect("runners");
    assert!(seen.lock().expect("seen").connects.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_does_not_answer_is_named_without_its_password() {
    let fake = fake_with_runner().await;
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let config = ProxyConfig::from_env(&env(vec![(
        "HTTP_PROXY",
        format!("http://fleet:pr0xy-secret@{addr}"),
    )]));
    assert!(!format!("{config:?}").contains("pr0xy-secret"));
    let error = client(&fake, config)
        .read()
        .list_runners()
        .await
        .expect_err("no proxy there");
    let text = error.to_string();
    assert!(text.contains("proxy"), "{text}");
    assert!(text.contains(&format!("http://{addr}")), "{text}");
    assert!(!text.contains("pr0xy-secret"), "{text}");
}

#[test]
fn a_proxy_fleet_cannot_speak_to_is_refused_before_any_request() {
    let refused = GithubClient::new(
        "https://api.github.com",
        GithubScope::Org("acme".into()),
        Credentials::Token("t".into()),
        policy(),
    )
    .and_then(|c| {
        c.with_proxy(ProxyConfig::from_env(&env(vec![(
            "HTTPS_PROXY",
            "socks5://u:pr0xy-secret@proxy:1080".into(),
        )])))
    });
    let text = match refused {
        Ok(_) => panic!("a socks proxy was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains("HTTPS_PROXY") && !text.contains("pr0xy-secret"),
        "{text}"
    );
}
