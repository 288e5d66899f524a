//! The GitHub client: transport and authentication through octocrab, every request retried with
//! backoff on 5xx and timeouts, GitHub's documented rate-limit behaviour, conditional requests
//! with ETags, and a count of requests. Reads and writes are built on it (`read.rs`, `write.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use http::{HeaderMap, Method, StatusCode};
use octocrab::Octocrab;
use serde::de::DeserializeOwned;

use super::GithubError;
use super::auth::{self, Credentials, GithubScope};
use super::endpoint::ApiEndpoint;
use super::http::{decode, error_chain, header_u64, next_link};
use super::pacing::Pacer;
use super::retry::{Attempt, RetryPolicy, classify};
use super::stats::RequestStats;
use crate::spec::Spec;

/// The most pages fleet reads of one list (100 entries a page): a bound against a server that
/// links on for ever.
const MAX_PAGES: usize = 1000;

/// A GitHub client for one scope.
#[derive(Clone)]
pub struct GithubClient {
    // Shared by every clone, so that an App's installation token is fetched once and reused.
    octo: Arc<Octocrab>,
    /// The only API requests go to (`endpoint.rs`).
    endpoint: ApiEndpoint,
    scope: GithubScope,
    policy: RetryPolicy,
    stats: Arc<RequestStats>,
    /// The last 200 answer of each GET, by URL, with its `ETag`: asked again with
    /// `If-None-Match`, GitHub answers 304 (which does not count against the rate limit) and
    /// the cached answer is used.
    etags: Arc<Mutex<BTreeMap<String, Cached>>>,
    /// Writes paced under GitHub's secondary rate limit.
    pub(super) pacer: Arc<Pacer>,
}

#[derive(Clone)]
struct Cached {
    etag: http::HeaderValue,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// An answer that came back 2xx.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl GithubClient {
    /// A client for the spec's scope, API URL and credentials. `env` reads environment
    /// variables (a parameter so tests need not touch the process's environment).
    pub fn from_spec(
        spec: &Spec,
        base_dir: &std::path::Path,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        policy: RetryPolicy,
    ) -> Result<GithubClient, GithubError> {
        let (endpoint, scope, credentials) = auth::from_spec(spec, base_dir, env)?;
        GithubClient::with_endpoint(endpoint, scope, credentials, policy)
    }

    /// A client for the API at `api_url` (`https://`, or `http://` on a loopback host).
    pub fn new(
        api_url: &str,
        scope: GithubScope,
        credentials: Credentials,
        policy: RetryPolicy,
    ) -> Result<GithubClient, GithubError> {
        let endpoint = ApiEndpoint::parse(api_url, "the GitHub API URL")?;
        GithubClient::with_endpoint(endpoint, scope, credentials, policy)
    }

    fn with_endpoint(
        endpoint: ApiEndpoint,
        scope: GithubScope,
        credentials: Credentials,
        policy: RetryPolicy,
    ) -> Result<GithubClient, GithubError> {
        let api_url = endpoint.url().to_string();
        let client_error = |message: String| GithubError::Client {
            api_url: api_url.clone(),
            message,
        };
        let builder = Octocrab::builder()
            .base_uri(api_url.as_str())
            .map_err(|e| client_error(e.to_string()))?
            // fleet times each request itself (`RetryPolicy::request_timeout`); octocrab's own
            // timeouts only back that up, so that a timeout always reads the same.
            .set_connect_timeout(Some(policy.request_timeout + Duration::from_secs(5)))
            .set_read_timeout(Some(policy.request_timeout + Duration::from_secs(5)))
            // The media type GitHub asks every client to accept. (Not a User-Agent of fleet's:
            // octocrab sends its own on every request, and an added one would be a second.)
            .add_header(http::header::ACCEPT, "application/vnd.github+json".into());
        let octo = match credentials {
            Credentials::Token(token) => builder
                .personal_token(token)
                .build()
                .map_err(|e| client_error(e.to_string()))?,
            Credentials::App {
                app_id,
                installation_id,
                key_pem,
                key_path,
            } => {
                let key = octocrab::EncodingKey::from_rsa_pem(&key_pem).map_err(|e| {
                    tracing::info!(
                        "the GitHub App private key {}: not an RSA PEM key: {e}",
                        crate::escape::escaped(&key_path)
                    );
                    GithubError::AppKeyFormat {
                        path: key_path.clone(),
                    }
                })?;
                builder
                    .app(app_id.into(), key)
                    .build()
                    .and_then(|app| app.installation(installation_id.into()))
                    .map_err(|e| client_error(e.to_string()))?
            }
        };
        Ok(GithubClient {
            octo: Arc::new(octo),
            endpoint,
            scope,
            policy,
            stats: Arc::new(RequestStats::default()),
            etags: Arc::new(Mutex::new(BTreeMap::new())),
            pacer: Arc::new(Pacer::default()),
        })
    }

    pub fn scope(&self) -> &GithubScope {
        &self.scope
    }

    pub fn api_url(&self) -> &str {
        self.endpoint.url()
    }

    pub fn stats(&self) -> Arc<RequestStats> {
        self.stats.clone()
    }

    /// The URL of a path under the scope (`/actions/runners` -> `.../repos/o/r/actions/runners`).
    pub(super) fn scoped_url(&self, path: &str) -> String {
        format!("{}{}{path}", self.endpoint.url(), self.scope.path())
    }

    /// The URL `config.sh --url` registers against.
    pub fn registration_url(&self) -> String {
        auth::registration_url(self.endpoint.url(), &self.scope)
    }

    /// GETs `first` and every page its `Link: <...>; rel="next"` headers lead to. Every page or
    /// an error: a list that stops early (a Link loop, a link off the API, a page that fails)
    /// would make the planner see runners as gone.
    pub(super) async fn get_all_pages<T: DeserializeOwned>(
        &self,
        first: &str,
        endpoint: &str,
    ) -> Result<Vec<T>, GithubError> {
        let partial = |reason: String| GithubError::Pagination {
            first: first.to_string(),
            reason,
        };
        let mut pages = Vec::new();
        let mut next = Some(first.to_string());
        let mut seen = std::collections::BTreeSet::new();
        while let Some(url) = next.take() {
            if !seen.insert(url.clone()) {
                return Err(partial(format!(
                    "page {} links back to {url}, a page already read",
                    pages.len()
                )));
            }
            if pages.len() >= MAX_PAGES {
                return Err(partial(format!("more than {MAX_PAGES} pages")));
            }
            let answer = self.send(Method::GET, &url, None, endpoint).await?;
            pages.push(decode(&url, &answer.body)?);
            next = next_link(&answer.headers);
            if let Some(link) = &next
                && let Err(e) = self.endpoint.relative(link)
            {
                return Err(partial(format!(
                    "the next page's link {link} is refused: {e}"
                )));
            }
        }
        Ok(pages)
    }

    /// Sends one request with retries, backoff and rate-limit waits; returns a 2xx answer.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        endpoint: &str,
    ) -> Result<Answer, GithubError> {
        let attempts = self.policy.attempts.max(1);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.base_delay)
            .with_max_delay(self.policy.max_wait)
            .with_max_times(attempts - 1)
            .with_jitter();
        let max_wait = self.policy.max_wait;
        let tries = AtomicU64::new(0);
        let result = (|| async {
            tries.fetch_add(1, Ordering::Relaxed);
            self.attempt(method.clone(), url, body, endpoint).await
        })
        .retry(backoff)
        .when(|e: &Attempt| matches!(e, Attempt::Retry { .. }))
        .adjust(|e: &Attempt, backoff| match e {
            // GitHub said how long to wait: do that, within bounds.
            Attempt::Retry {
                wait: Some(wait), ..
            } => backoff.map(|_| (*wait).min(max_wait)),
            _ => backoff,
        })
        .notify(|e: &Attempt, wait| {
            if let Attempt::Retry {
                status, message, ..
            } = e
            {
                tracing::warn!(
                    "GitHub {method} {url}: {} {message}; retrying in {:.1}s",
                    if *status == 0 {
                        "no answer".to_string()
                    } else {
                        status.to_string()
                    },
                    wait.as_secs_f64()
                );
            }
        })
        .await;
        let attempts = tries.load(Ordering::Relaxed) as usize;
        tracing::debug!(
            "GitHub: {} request(s) so far ({} {url} took {attempts} attempt(s))",
            self.stats.total(),
            method
        );
        match result {
            Ok(answer) => Ok(answer),
            Err(Attempt::Final(e)) => Err(e),
            Err(Attempt::Retry {
                status: 0, message, ..
            }) => Err(GithubError::Transport {
                url: url.to_string(),
                attempts,
                message,
            }),
            Err(Attempt::Retry {
                status, message, ..
            }) => Err(GithubError::Unavailable {
                method,
                url: url.to_string(),
                status,
                attempts,
                message,
            }),
        }
    }

    async fn attempt(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        endpoint: &str,
    ) -> Result<Answer, Attempt> {
        // octocrab adds the App's installation token only to requests without a host of their
        // own (it fills in the base URI, GHES path included), so send the path and query; a URL
        // off the trusted API is refused, never rewritten.
        let relative = self.endpoint.relative(url).map_err(Attempt::Final)?;
        let relative = relative.as_str();
        let cached = if method == Method::GET {
            self.etags.lock().ok().and_then(|m| m.get(url).cloned())
        } else {
            None
        };
        let call = async {
            let response = match method {
                Method::GET => {
                    let mut headers = HeaderMap::new();
                    if let Some(c) = &cached {
                        headers.insert(http::header::IF_NONE_MATCH, c.etag.clone());
                    }
                    self.octo._get_with_headers(relative, Some(headers)).await
                }
                Method::POST => self.octo._post(relative, body).await,
                Method::DELETE => self.octo._delete(relative, body).await,
                Method::PUT => self.octo._put(relative, body).await,
                _ => self.octo._get(relative).await,
            }?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = self.octo.body_to_string(response).await?;
            Ok::<_, octocrab::Error>((status, headers, body))
        };
        let (status, headers, text) =
            match tokio::time::timeout(self.policy.request_timeout, call).await {
                Err(_) => {
                    self.stats.record(endpoint, 0);
                    return Err(Attempt::Retry {
                        status: 0,
                        wait: None,
                        message: format!(
                            "no answer within {:.0}s",
                            self.policy.request_timeout.as_secs_f64()
                        ),
                    });
                }
                Ok(Err(e)) => {
                    self.stats.record(endpoint, 0);
                    return Err(Attempt::Retry {
                        status: 0,
                        wait: None,
                        message: error_chain(&e),
                    });
                }
                Ok(Ok(answer)) => answer,
            };
        self.stats.record(endpoint, status.as_u16());
        if let Some(remaining) = header_u64(&headers, "x-ratelimit-remaining") {
            self.stats
                .rate_limit_remaining
                .store(remaining as i64, Ordering::Relaxed);
        }
        tracing::debug!("GitHub {method} {url} -> {}", status.as_u16());
        if status == StatusCode::NOT_MODIFIED
            && let Some(c) = cached
        {
            return Ok(Answer {
                status: StatusCode::OK,
                headers: c.headers,
                body: c.body,
            });
        }
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            // octocrab is built without its follow-redirect feature: a 3xx comes back here, and
            // fleet does not follow it (a redirect could lead credentials off the trusted API).
            return Err(Attempt::Final(GithubError::Redirected {
                method,
                url: url.to_string(),
                status: status.as_u16(),
                location: headers
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(no Location header)")
                    .to_string(),
            }));
        }
        if status.is_success() {
            let body = text.into_bytes();
            if method == Method::GET
                && let Some(etag) = headers.get(http::header::ETAG)
                && let Ok(mut cache) = self.etags.lock()
            {
                // Bounded: lookups by name would otherwise grow it for as long as watch runs.
                if cache.len() >= 256 {
                    cache.clear();
                }
                cache.insert(
                    url.to_string(),
                    Cached {
                        etag: etag.clone(),
                        headers: headers.clone(),
                        body: body.clone(),
                    },
                );
            }
            return Ok(Answer {
                status,
                headers,
                body,
            });
        }
        Err(self.classify(method, url, status, &headers, &text))
    }

    fn classify(
        &self,
        method: Method,
        url: &str,
        status: StatusCode,
        headers: &HeaderMap,
        text: &str,
    ) -> Attempt {
        classify(
            &self.policy,
            &self.scope,
            method,
            url,
            status,
            headers,
            text,
        )
    }
}
