//! A small HTTP server on 127.0.0.1 that records every request it gets (method, path and query,
//! `Authorization` header) and answers as the test says: the stand-in for a server the operator
//! did not name (where no credential may arrive), or for a GitHub that misbehaves (redirects,
//! Link loops). Included with `#[path]` by the tests that need it.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};

/// One request as the recorder saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub authorization: Option<String>,
}

type Answer = dyn Fn(&Seen, &str) -> Response<Body> + Send + Sync;

/// A running recorder; it stops when dropped.
pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Starts a recorder on a free port of 127.0.0.1. `answer` gets each request and the
    /// recorder's own URL (for links that point back to it).
    pub async fn start(
        answer: impl Fn(&Seen, &str) -> Response<Body> + Send + Sync + 'static,
    ) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let (log, own_url) = (seen.clone(), url.clone());
        let app = axum::Router::new().fallback(move |request: Request<Body>| {
            let (log, answer, own_url) = (log.clone(), answer.clone(), own_url.clone());
            async move {
                let seen = Seen {
                    method: request.method().to_string(),
                    target: request
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    authorization: request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                };
                log.lock().expect("log").push(seen.clone());
                answer(&seen, &own_url)
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { url, seen, task }
    }

    /// A recorder that answers 404 to everything: a server no request should reach.
    pub async fn bystander() -> Recorder {
        Recorder::start(|_, _| status(StatusCode::NOT_FOUND, "{\"message\":\"Not Found\"}")).await
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JSON answer with `status`.
pub fn status(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

/// A 302 to `location`.
pub fn redirect(location: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", location)
        .body(Body::empty())
        .expect("response")
}

/// A page of one runner, as GitHub lists them, with `Link: <next>; rel="next"`.
pub fn runner_page(next: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("link", format!("<{next}>; rel=\"next\""))
        .body(Body::from(
            r#"{"total_count":200,"runners":[{"id":1,"name":"r-1","os":"linux","status":"online","busy":false,"labels":[{"id":1,"name":"self-hosted","type":"read-only"}]}]}"#,
        ))
        .expect("response")
}

/// An installation access token answer, as GitHub gives an App.
pub fn installation_token(token: &str) -> Response<Body> {
    status(
        StatusCode::CREATED,
        &format!(r#"{{"token":"{token}","expires_at":"2099-01-01T00:00:00Z","permissions":{{}}}}"#),
    )
}
