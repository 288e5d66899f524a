//! The status page of `fleet watch` (`--listen`): one listener for the page, `/metrics`,
//! `/healthz` and a read-only JSON API. Everything it serves comes from the [`Board`] watch
//! writes after each reconcile, so a browser never adds a request to Docker or GitHub and a
//! reconcile never waits on a browser. docs/status-page.md describes it.

mod assets;
pub mod auth;
pub mod board;
pub mod database;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

pub use board::Board;

/// `fleet watch`'s listener options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListenArgs {
    /// Serve the status page, /metrics, /healthz and the JSON API (/api/v1/...) at this
    /// address (127.0.0.1:9105). Any address but loopback needs --listen-auth.
    #[arg(long, value_name = "ADDR", visible_alias = "metrics-addr")]
    pub listen: Option<SocketAddr>,
    /// Bearer tokens and bcrypt password hashes (`user:$2b$...`), one a line, that open the
    /// listener; the file must not be readable by every user. /healthz stays open.
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub listen_auth: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --listen-tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["listen", "listen_tls_key"])]
    pub listen_tls_cert: Option<PathBuf>,
    /// The PEM private key of --listen-tls-cert.
    #[arg(long, value_name = "FILE", requires_all = ["listen", "listen_tls_cert"])]
    pub listen_tls_key: Option<PathBuf>,
}

/// Why the listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "refusing to serve on {addr} without authentication: anyone who reaches it could read the fleet's runners, hosts and jobs; give --listen-auth FILE (bearer tokens or bcrypt hashes, see docs/status-page.md) or listen on 127.0.0.1"
    )]
    NoAuth { addr: SocketAddr },
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    // The wording of the metrics-only listener this one replaced (docs/troubleshooting.md).
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A listener whose settings were checked: auth read, certificate loaded.
pub struct Listen {
    pub addr: SocketAddr,
    auth: Option<Arc<auth::Auth>>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ListenArgs {
    /// Checks the settings before anything else starts: an address other than loopback
    /// without authentication is refused.
    pub fn prepare(&self) -> Result<Option<Listen>, ListenError> {
        let Some(addr) = self.listen else {
            return Ok(None);
        };
        let auth = match &self.listen_auth {
            Some(path) => Some(Arc::new(auth::Auth::load(path)?)),
            None if !addr.ip().is_loopback() => return Err(ListenError::NoAuth { addr }),
            None => None,
        };
        let tls = match (&self.listen_tls_cert, &self.listen_tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        Ok(Some(Listen { addr, auth, tls }))
    }
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen")
            .field("addr", &self.addr)
            .field("auth", &self.auth.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listen {
    /// Binds and serves in a task of its own until `stop` turns true; returns the address
    /// bound.
    pub async fn start(
        &self,
        board: Arc<Board>,
        metrics: Router,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<SocketAddr, ListenError> {
        let addr = self.addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let app = router(board, metrics, self.auth.clone());
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match &self.tls {
            Some(config) => {
                let tls = tls::TlsListener::new(listener, config.clone())
                    .map_err(|source| ListenError::Bind { addr, source })?;
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(tls, app).with_graceful_shutdown(shutdown).await {
                        tracing::error!("status page on {bound} stopped: {e}");
                    }
                });
            }
            None => {
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                    {
                        tracing::error!("status page on {bound} stopped: {e}");
                    }
                });
            }
        }
        let auth = if self.auth.is_some() {
            "with authentication"
        } else {
            "without authentication"
        };
        tracing::info!("status page on {scheme}://{bound}/ ({auth}); metrics on /metrics");
        Ok(bound)
    }
}

/// Every route. Read-only: each is a GET of what the board holds.
/// `metrics`: the routes of `/metrics`, made by the caller (`watch/metrics.rs`), so that this
/// module does not depend on the watch loop that feeds it.
pub fn router(board: Arc<Board>, metrics: Router, auth: Option<Arc<auth::Auth>>) -> Router {
    let api = Router::new()
        .route("/", get(|| async { assets::page("index.html") }))
        .route(
            "/assets/{name}",
            get(
                |axum::extract::Path(name): axum::extract::Path<String>| async move {
                    assets::page(&name)
                },
            ),
        )
        .route("/favicon.ico", get(|| async { assets::page("icon.svg") }))
        .route(
            "/api/v1/status",
            get({
                let board = board.clone();
                move || async move { status(&board) }
            }),
        )
        .route(
            "/api/v1/watch",
            get({
                let board = board.clone();
                move || async move { json(&board.watch()) }
            }),
        )
        .route(
            "/api/v1/history",
            get({
                let board = board.clone();
                move |RawQuery(q): RawQuery| history(board.clone(), q)
            }),
        )
        .merge(metrics);
    let api = match auth {
        Some(auth) => api.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let auth = auth.clone();
                async move { authenticate(&auth, req, next).await }
            },
        )),
        None => api,
    };
    api.route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::map_response(security_headers))
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    /// Seconds since the epoch; default: a day ago.
    since: Option<i64>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn status(board: &Board) -> Response {
    match board.status_json() {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"no observation yet: the first reconcile has not finished"}"#,
        )
            .into_response(),
    }
}

async fn history(board: Arc<Board>, query: Option<String>) -> Response {
    let q: HistoryQuery = match serde_urlencoded::from_str(query.as_deref().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let since = q.since.unwrap_or_else(|| now() - board::HISTORY_SECONDS);
    // The history database is SQLite, which blocks: never on the async threads.
    match tokio::task::spawn_blocking(move || board.history(since)).await {
        Ok(doc) => json(&doc),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn authenticate(auth: &auth::Auth, req: Request, next: Next) -> Response {
    let allowed = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| auth.allows(v));
    if allowed {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            r#"Basic realm="fleet", charset="UTF-8""#,
        )],
        "authentication required\n",
    )
        .into_response()
}

/// The page may load only what this listener serves, run no inline script, and not be framed.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests;
