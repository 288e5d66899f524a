//! The HTTP transport every GitHub request goes through, REST and scale set service alike: one
//! hyper client over rustls (ring, the system's root certificates) that honours `HTTPS_PROXY`,
//! `HTTP_PROXY` and `NO_PROXY` (and their lower-case forms) with HTTP CONNECT tunnels, and the
//! small helpers both clients share (loopback check, error chains, quoting).
//!
//! Through a proxy, TLS still runs end to end with GitHub: the proxy sees the host and port of
//! the CONNECT, never a header or a credential. A plain-http API (only ever on this machine, see
//! `endpoint.rs`) goes through a proxy only when the proxy is on this machine too; a proxy
//! elsewhere would read the request in clear and reach its own loopback, not ours.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// The proxy variables fleet reads, upper-case form first (as curl does).
const PROXY_VARS: [(&str, &str); 3] = [
    ("HTTPS_PROXY", "https_proxy"),
    ("HTTP_PROXY", "http_proxy"),
    ("NO_PROXY", "no_proxy"),
];

/// The User-Agent of every request: fleet and its version, as GitHub asks of API clients.
pub const USER_AGENT: &str = concat!("fleet/", env!("CARGO_PKG_VERSION"));

/// The proxies of this machine's environment. Never prints a proxy's user name or password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    https: Option<String>,
    http: Option<String>,
    no_proxy: String,
}

impl ProxyConfig {
    /// From `env` (the process's environment in fleet; a closure in tests).
    pub fn from_env(env: &(dyn Fn(&str) -> Option<String> + Sync)) -> ProxyConfig {
        let read = |(upper, lower): (&str, &str)| {
            env(upper)
                .or_else(|| env(lower))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        ProxyConfig {
            https: read(PROXY_VARS[0]),
            http: read(PROXY_VARS[1]),
            no_proxy: read(PROXY_VARS[2]).unwrap_or_default(),
        }
    }

    /// The process's environment.
    pub fn from_process() -> ProxyConfig {
        ProxyConfig::from_env(&|k| std::env::var(k).ok())
    }

    /// No proxy at all.
    pub fn direct() -> ProxyConfig {
        ProxyConfig::default()
    }

    /// Checks the proxy URLs: `http://HOST:PORT` (with an optional user and password) only.
    fn check(&self) -> Result<(), String> {
        for (var, url) in [("HTTPS_PROXY", &self.https), ("HTTP_PROXY", &self.http)] {
            let Some(url) = url else { continue };
            let shown = redact_url(url);
            let with_scheme = if url.contains("://") {
                url.clone()
            } else {
                format!("http://{url}")
            };
            let uri: Uri = with_scheme
                .parse()
                .map_err(|_| format!("{var} is `{shown}`, not a URL like http://proxy:3128"))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(format!(
                    "{var} is `{shown}`: fleet speaks to proxies in plain http (http://HOST:PORT) and tunnels TLS through them"
                ));
            }
        }
        Ok(())
    }

    fn matcher(&self) -> Matcher {
        Matcher::builder()
            .https(self.https.clone().unwrap_or_default())
            .http(self.http.clone().unwrap_or_default())
            .no(self.no_proxy.clone())
            .build()
    }

    /// The proxy a request to `url` goes through, redacted, if any (for messages).
    pub fn describe_for(&self, url: &str) -> Option<String> {
        let uri: Uri = url.parse().ok()?;
        route(&self.matcher(), &uri).map(|r| show_proxy(&r.proxy))
    }
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("https", &self.https.as_deref().map(redact_url))
            .field("http", &self.http.as_deref().map(redact_url))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// `url` without the user name and password it may carry (`http://***@proxy:3128`).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let shown = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    if scheme.is_empty() {
        format!("{shown}{tail}")
    } else {
        format!("{scheme}://{shown}{tail}")
    }
}

/// A proxy as messages show it: `http://HOST:PORT` (its credentials are never part of it).
fn show_proxy(proxy: &Uri) -> String {
    let authority = proxy.authority().map(|a| a.as_str()).unwrap_or_default();
    redact_url(&format!(
        "{}://{authority}",
        proxy.scheme_str().unwrap_or("http")
    ))
}

/// Where a connection to a destination goes: the proxy to tunnel through, with its
/// `Proxy-Authorization` if the proxy URL carries a user.
struct Route {
    proxy: Uri,
    auth: Option<http::HeaderValue>,
}

fn route(matcher: &Matcher, dst: &Uri) -> Option<Route> {
    let intercept = matcher.intercept(dst)?;
    let proxy = intercept.uri().clone();
    let plain = dst.scheme_str() == Some("http");
    if plain && !proxy.host().is_some_and(is_loopback) {
        // Plain http reaches this machine only (`endpoint.rs`): never through a proxy elsewhere.
        return None;
    }
    Some(Route {
        proxy,
        auth: intercept.basic_auth().cloned(),
    })
}

/// A connector that opens a CONNECT tunnel through the proxy a destination's scheme and
/// `NO_PROXY` choose, or a direct TCP connection.
#[derive(Clone)]
pub struct ProxyConnector {
    direct: HttpConnector,
    matcher: Arc<Matcher>,
}

type BoxError = Box<dyn StdError + Send + Sync>;
type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(route) = route(&self.matcher, &dst) else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let shown = show_proxy(&route.proxy);
        let mut tunnel = Tunnel::new(route.proxy, self.direct.clone());
        if let Some(auth) = route.auth {
            tunnel = tunnel.with_auth(auth);
        }
        // CONNECT names a port: the scheme's default when the URL has none.
        let dst = with_port(dst);
        let connecting = tunnel.call(dst);
        Box::pin(async move {
            connecting.await.map_err(|e| {
                BoxError::from(format!("through the proxy {shown}: {}", error_chain(&e)))
            })
        })
    }
}

fn with_port(dst: Uri) -> Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = if dst.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let host = dst.host().unwrap_or_default();
    format!("{}://{host}:{port}/", dst.scheme_str().unwrap_or("https"))
        .parse()
        .unwrap_or(dst)
}

/// The client type both GitHub clients use.
pub type HttpsClient = Client<HttpsConnector<ProxyConnector>, Full<Bytes>>;

/// A client honouring `proxy`; http only reaches loopback hosts (the callers check URLs first).
pub fn https_client(proxy: &ProxyConfig) -> Result<HttpsClient, String> {
    proxy.check()?;
    let mut direct = HttpConnector::new();
    direct.enforce_http(false);
    let connector = ProxyConnector {
        direct,
        matcher: Arc::new(proxy.matcher()),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// 127.0.0.0/8, ::1 and `localhost`: the only hosts plain http:// may reach.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error and its causes on one line, each cause once, quoted (`quote`).
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    quote(&out)
}

/// How many characters of a server's text an error quotes.
pub const MAX_QUOTED: usize = 300;

/// The first `MAX_QUOTED` characters of `text`, on one line.
pub fn quote(text: &str) -> String {
    let one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTED)
        .collect();
    if text.trim().chars().count() > MAX_QUOTED {
        format!("{one_line}…")
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<String> + Sync {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn proxy_urls_never_show_their_credentials() {
        assert_eq!(
            redact_url("http://alice:s3cret@proxy.lab:3128"),
            "http://***@proxy.lab:3128"
        );
        assert_eq!(redact_url("alice:pw@proxy:1/x"), "***@proxy:1/x");
        assert_eq!(redact_url("http://proxy:3128"), "http://proxy:3128");
        let config = ProxyConfig::from_env(&env(&[("https_proxy", "http://u:hunter2@p:3128")]));
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(
            config.describe_for("https://api.github.com/x").as_deref(),
            Some("http://p:3128")
        );
        let refused = ProxyConfig::from_env(&env(&[("HTTPS_PROXY", "socks5://u:hunter2@p:1")]))
            .check()
            .expect_err("socks");
        assert!(
            !refused.contains("hunter2") && refused.contains("***@p:1"),
            "{refused}"
        );
    }

    #[test]
    fn no_proxy_and_plain_http_choose_direct_connections() {
        let config = ProxyConfig::from_env(&env(&[
            ("HTTPS_PROXY", "http://proxy.lab:3128"),
            ("HTTP_PROXY", "http://proxy.lab:3128"),
            ("NO_PROXY", "ghe.internal,10.0.0.0/8"),
        ]));
        assert!(config.describe_for("https://api.github.com/x").is_some());
        assert_eq!(config.describe_for("https://ghe.internal/api/v3"), None);
        assert_eq!(config.describe_for("https://api.ghe.internal/x"), None);
        assert_eq!(config.describe_for("https://10.1.2.3/x"), None);
        // A plain-http API is this machine: a proxy elsewhere would see it in clear.
        assert_eq!(config.describe_for("http://127.0.0.1:8080/x"), None);
        let local = ProxyConfig::from_env(&env(&[("HTTP_PROXY", "http://127.0.0.1:3128")]));
        assert!(local.describe_for("http://127.0.0.1:8080/x").is_some());
        assert_eq!(ProxyConfig::direct().describe_for("https://x/"), None);
    }

    #[test]
    fn quotes_are_short_and_on_one_line() {
        assert_eq!(quote("  a\nb  "), "a b");
        let quoted = quote(&"x".repeat(MAX_QUOTED + 10));
        assert_eq!(quoted.chars().count(), MAX_QUOTED + 1);
        assert!(quoted.ends_with('…'));
    }
}
