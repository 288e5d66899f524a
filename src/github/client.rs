//! The GitHub client: requests over the shared transport (`transport.rs`: proxies, TLS, the
//! User-Agent), authenticated with a token or a GitHub App's installation token (`app.rs`),
//! every request retried with backoff on 5xx and timeouts, GitHub's documented rate-limit
//! behaviour (`retry.rs`), conditional requests with ETags, and a count of requests. Reads and
//! writes are built on it (`read.rs`, `write.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;

use super::GithubError;
use super::app::{self, AppAuth, Exchange};
use super::auth::{self, Credentials, GithubScope};
use super::endpoint::ApiEndpoint;
use super::http::{decode, header_u64, next_link};
use super::pacing::Pacer;
use super::retry::{Attempt, RetryPolicy, classify};
use super::stats::RequestStats;
use super::transport::{self, HttpsClient, ProxyConfig, error_chain};
use crate::secret::Secret;
use crate::spec::Spec;

/// The most pages fleet reads of one list (100 entries a page): a bound against a server that
/// links on for ever.
const MAX_PAGES: usize = 1000;
/// The largest answer fleet reads: GitHub's pages of 100 runners are well under a megabyte.
const MAX_BODY: usize = 16 << 20;
/// The REST API version fleet is written against.
const API_VERSION: &str = "2022-11-28";

/// A GitHub client for one scope.
#[derive(Clone)]
pub struct GithubClient {
    http: HttpsClient,
    proxy: ProxyConfig,
    // Shared by every clone, so that an App's installation token is fetched once and reused.
    auth: Arc<Auth>,
    /// The only API requests go to (`endpoint.rs`).
    endpoint: ApiEndpoint,
    scope: GithubScope,
    policy: RetryPolicy,
    stats: Arc<RequestStats>,
    /// The last 200 answer of each GET, by URL, with its `ETag`: asked again with
    /// `If-None-Match`, GitHub answers 304 (which does not count against the rate limit) and
    /// the cached answer is used.
    etags: Arc<Mutex<BTreeMap<String, Cached>>>,
    /// Writes paced under GitHub's secondary rate limits.
    pub(super) pacer: Arc<Pacer>,
}

enum Auth {
    Token(Secret),
    App(AppAuth),
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

/// An answer of any status.
struct RawAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl GithubClient {
    /// A client for the spec's scope, API URL and credentials. `env` reads environment
    /// variables (a parameter so tests need not touch the process's environment), proxies
    /// included.
    pub fn from_spec(
        spec: &Spec,
        base_dir: &std::path::Path,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        policy: RetryPolicy,
    ) -> Result<GithubClient, GithubError> {
        let (endpoint, scope, credentials) = auth::from_spec(spec, base_dir, env)?;
        let proxy = ProxyConfig::from_env(env);
        GithubClient::with_endpoint(endpoint, scope, credentials, policy, proxy)
    }

    /// A client for the API at `api_url` (`https://`, or `http://` on a loopback host), through
    /// the proxies of the process's environment.
    pub fn new(
        api_url: &str,
        scope: GithubScope,
        credentials: Credentials,
        policy: RetryPolicy,
    ) -> Result<GithubClient, GithubError> {
        let endpoint = ApiEndpoint::parse(api_url, "the GitHub API URL")?;
        let proxy = ProxyConfig::from_process();
        GithubClient::with_endpoint(endpoint, scope, credentials, policy, proxy)
    }

    /// This client, through `proxy` instead.
    pub fn with_proxy(mut self, proxy: ProxyConfig) -> Result<GithubClient, GithubError> {
        self.http = transport::https_client(&proxy).map_err(|message| GithubError::Client {
            api_url: self.endpoint.url().to_string(),
            message,
        })?;
        self.proxy = proxy;
        Ok(self)
    }

    fn with_endpoint(
        endpoint: ApiEndpoint,
        scope: GithubScope,
        credentials: Credentials,
        policy: RetryPolicy,
        proxy: ProxyConfig,
    ) -> Result<GithubClient, GithubError> {
        let http = transport::https_client(&proxy).map_err(|message| GithubError::Client {
            api_url: endpoint.url().to_string(),
            message,
        })?;
        let auth = match credentials {
            Credentials::Token(token) => Auth::Token(Secret::new(token)),
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
                Auth::App(AppAuth::new(app_id, installation_id, key))
            }
        };
        Ok(GithubClient {
            http,
            proxy,
            auth: Arc::new(auth),
            endpoint,
            scope,
            policy,
            stats: Arc::new(RequestStats::default()),
            etags: Arc::new(Mutex::new(BTreeMap::new())),
            pacer: Arc::new(Pacer::default()),
        })
    }

    /// The proxies this client goes through (the scale set client uses the same).
    pub fn proxy(&self) -> &ProxyConfig {
        &self.proxy
    }

    /// The retry policy (the scale set client uses the same).
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
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
        format!("{}{}{path}", self.endpoint.url(), self.scope.api_path())
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
        let tries = AtomicU64::new(0);
        let rate_limited = AtomicU32::new(0);
        let result = (|| async {
            tries.fetch_add(1, Ordering::Relaxed);
            self.attempt(method.clone(), url, body, endpoint).await
        })
        .retry(backoff)
        .when(|e: &Attempt| matches!(e, Attempt::Retry { .. }))
        .adjust(|e: &Attempt, backoff| {
            let Attempt::Retry {
                wait,
                rate_limited: limited,
                ..
            } = e
            else {
                return backoff;
            };
            let waits = if *limited {
                rate_limited.fetch_add(1, Ordering::Relaxed)
            } else {
                0
            };
            // `None` from backon: no attempt left; GitHub's wait is never shortened.
            backoff.and_then(|b| self.policy.wait_for(*wait, *limited, waits, b))
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
                message: self.through_proxy(url, message),
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

    /// `message`, saying which proxy the request went through, if one did.
    fn through_proxy(&self, url: &str, message: String) -> String {
        match self.proxy.describe_for(url) {
            Some(proxy) if !message.contains("proxy") => {
                format!("{message} (through the proxy {proxy})")
            }
            _ => message,
        }
    }

    /// The `Authorization` header value: the token, or the App's installation token.
    async fn authorization(&self) -> Result<Secret, GithubError> {
        let token = match self.auth.as_ref() {
            Auth::Token(token) => token.clone(),
            Auth::App(app) => app.token(|jwt| self.exchange_app_token(app, jwt)).await?,
        };
        Ok(Secret::new(format!("Bearer {}", token.expose())))
    }

    /// `POST /app/installations/{id}/access_tokens` with the App's JWT, once (the request
    /// that needs the token is retried as a whole).
    async fn exchange_app_token(
        &self,
        app: &AppAuth,
        jwt: Secret,
    ) -> Result<Exchange, GithubError> {
        let url = format!("{}{}", self.endpoint.url(), app.token_path());
        let bearer = Secret::new(format!("Bearer {}", jwt.expose()));
        let answer = self
            .round_trip(app::TOKEN_METHOD, &url, &bearer, None, None)
            .await
            .map_err(|message| GithubError::Transport {
                url: url.clone(),
                attempts: 1,
                message: self.through_proxy(&url, message),
            })?;
        self.stats
            .record("installation-token", answer.status.as_u16());
        if answer.status.is_redirection() {
            return Err(redirected(app::TOKEN_METHOD, &url, &answer));
        }
        Ok(app::exchange_answer(answer.status, answer.body.to_vec()))
    }

    /// One request and its whole answer, within the policy's timeout. A URL off the trusted
    /// API is refused, never sent.
    async fn round_trip(
        &self,
        method: Method,
        url: &str,
        authorization: &Secret,
        body: Option<&serde_json::Value>,
        if_none_match: Option<&HeaderValue>,
    ) -> Result<RawAnswer, String> {
        self.endpoint.relative(url).map_err(|e| e.to_string())?;
        let mut auth = HeaderValue::from_str(authorization.expose())
            .map_err(|_| "the credential holds characters an HTTP header cannot carry")?;
        auth.set_sensitive(true);
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(http::header::USER_AGENT, transport::USER_AGENT)
            .header(http::header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION)
            .header(http::header::AUTHORIZATION, auth);
        if let Some(etag) = if_none_match {
            request = request.header(http::header::IF_NONE_MATCH, etag.clone());
        }
        let bytes = match body {
            Some(value) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(value).map_err(|e| e.to_string())?)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(bytes))
            .map_err(|e| error_chain(&e))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| transport::quote(&e.to_string()))?
                .to_bytes();
            Ok(RawAnswer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.policy.request_timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "no answer within {:.0}s",
                    self.policy.request_timeout.as_secs_f64()
                )
            })?
    }

    async fn attempt(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        endpoint: &str,
    ) -> Result<Answer, Attempt> {
        // Checked before the credential is fetched: a URL off the trusted API is refused.
        self.endpoint.relative(url).map_err(Attempt::Final)?;
        let authorization = self.authorization().await.map_err(|e| match e {
            GithubError::Transport { message, .. } => Attempt::Retry {
                status: 0,
                wait: None,
                rate_limited: false,
                message,
            },
            other => Attempt::Final(other),
        })?;
        let cached = if method == Method::GET {
            self.etags.lock().ok().and_then(|m| m.get(url).cloned())
        } else {
            None
        };
        let answer = self
            .round_trip(
                method.clone(),
                url,
                &authorization,
                body,
                cached.as_ref().map(|c| &c.etag),
            )
            .await;
        let RawAnswer {
            status,
            headers,
            body,
        } = match answer {
            Ok(answer) => answer,
            Err(message) => {
                self.stats.record(endpoint, 0);
                return Err(Attempt::Retry {
                    status: 0,
                    wait: None,
                    rate_limited: false,
                    message,
                });
            }
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
            // fleet follows no redirect: it could lead credentials off the trusted API.
            let raw = RawAnswer {
                status,
                headers,
                body,
            };
            return Err(Attempt::Final(redirected(method, url, &raw)));
        }
        if status.is_success() {
            let body = body.to_vec();
            self.remember(&method, url, &headers, &body);
            return Ok(Answer {
                status,
                headers,
                body,
            });
        }
        if status == StatusCode::UNAUTHORIZED
            && let Auth::App(app) = self.auth.as_ref()
        {
            // The installation token was revoked or the installation changed: fetch a new one
            // next time.
            app.forget().await;
        }
        let text = String::from_utf8_lossy(&body);
        Err(classify(
            &self.policy,
            &self.scope,
            method,
            url,
            status,
            &headers,
            &text,
        ))
    }

    /// Keeps a GET's answer with its `ETag`, for a conditional request next time.
    fn remember(&self, method: &Method, url: &str, headers: &HeaderMap, body: &[u8]) {
        if method != Method::GET {
            return;
        }
        let (Some(etag), Ok(mut cache)) = (headers.get(http::header::ETAG), self.etags.lock())
        else {
            return;
        };
        // Bounded: lookups by name would otherwise grow it for as long as watch runs.
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(
            url.to_string(),
            Cached {
                etag: etag.clone(),
                headers: headers.clone(),
                body: body.to_vec(),
            },
        );
    }
}

fn redirected(method: Method, url: &str, answer: &RawAnswer) -> GithubError {
    GithubError::Redirected {
        method,
        url: url.to_string(),
        status: answer.status.as_u16(),
        location: answer
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(no Location header)")
            .to_string(),
    }
}
