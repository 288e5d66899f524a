//! GitHub: the runner registrations of a repository or organization, through octocrab.
//!
//! octocrab carries the authentication (a token, or a GitHub App whose installation token it
//! caches until shortly before expiry) and the HTTP client; this module adds what a
//! controller needs on top: every page of a list, retries with backoff on 5xx and timeouts,
//! GitHub's documented rate-limit behaviour, and a count of requests.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use http::{HeaderMap, Method, StatusCode};
use octocrab::Octocrab;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::state::GithubRunner;
use crate::secret::Secret;
use crate::spec::{DEFAULT_API_URL, DEFAULT_TOKEN_ENV, Spec};

/// Why GitHub could not be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("{var} is not set: fleet reads the GitHub token from it")]
    MissingToken { var: String },
    #[error("cannot read the GitHub App private key {path}: {source}")]
    AppKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the GitHub App private key {path} is not an RSA PEM key: {message}")]
    AppKeyFormat { path: String, message: String },
    #[error("cannot set up the GitHub client for {api_url}: {message}")]
    Client { api_url: String, message: String },
    #[error("GitHub rejected the credentials (401 {message}) for {method} {url}")]
    Unauthorized {
        method: Method,
        url: String,
        message: String,
    },
    #[error("GitHub refused {method} {url} (403 {message}){}", permissions_hint(.accepted_permissions))]
    Forbidden {
        method: Method,
        url: String,
        message: String,
        accepted_permissions: Option<String>,
    },
    #[error(
        "GitHub answered 404 for {method} {url}: the {scope} does not exist, or the credentials cannot see its runners (they need admin access)"
    )]
    NotFound {
        method: Method,
        url: String,
        scope: String,
    },
    #[error("GitHub answered {status} for {method} {url}: {message}")]
    Rejected {
        method: Method,
        url: String,
        status: u16,
        message: String,
    },
    #[error("GitHub answered {status} for {method} {url} after {attempts} attempts: {message}")]
    Unavailable {
        method: Method,
        url: String,
        status: u16,
        attempts: usize,
        message: String,
    },
    #[error("cannot reach GitHub at {url} after {attempts} attempts: {message}")]
    Transport {
        url: String,
        attempts: usize,
        message: String,
    },
    #[error(
        "GitHub's rate limit is used up until {reset} (in {wait_secs} s), longer than fleet waits ({max_wait_secs} s)"
    )]
    RateLimited {
        reset: u64,
        wait_secs: u64,
        max_wait_secs: u64,
    },
    #[error("GitHub's answer to {url} is not what fleet expected: {message}")]
    Decode { url: String, message: String },
}

fn permissions_hint(accepted: &Option<String>) -> String {
    match accepted {
        Some(p) if !p.is_empty() => format!(": the credentials need the permission(s) {p}"),
        _ => ": the credentials lack a permission (classic tokens need the repo or admin:org scope; fine-grained tokens and Apps need Administration read/write on the repository, or Self-hosted runners on the organization)".into(),
    }
}

impl GithubError {
    /// A one-line hint for the operator, where there is more to say than the error.
    pub fn hint(&self) -> Option<String> {
        match self {
            GithubError::MissingToken { var } => Some(format!(
                "export {var}=<a token with admin rights on the repository or organization>, or configure github.auth.app"
            )),
            GithubError::Unauthorized { .. } => {
                Some("check that the token is valid and has not expired".into())
            }
            GithubError::RateLimited { .. } => Some("try again after the reset time".into()),
            _ => None,
        }
    }

    /// Whether a retry later could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GithubError::Unavailable { .. }
                | GithubError::Transport { .. }
                | GithubError::RateLimited { .. }
        )
    }
}

/// Repository or organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubScope {
    Repo { owner: String, repo: String },
    Org(String),
}

impl GithubScope {
    fn path(&self) -> String {
        match self {
            GithubScope::Repo { owner, repo } => format!("/repos/{owner}/{repo}"),
            GithubScope::Org(org) => format!("/orgs/{org}"),
        }
    }

    fn describe(&self) -> String {
        match self {
            GithubScope::Repo { owner, repo } => format!("repository {owner}/{repo}"),
            GithubScope::Org(org) => format!("organization {org}"),
        }
    }
}

impl fmt::Display for GithubScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// How credentials are obtained. The secret itself never leaves this type in a printable form.
pub enum Credentials {
    Token(String),
    App {
        app_id: u64,
        installation_id: u64,
        key_pem: Vec<u8>,
        key_path: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::App {
                app_id,
                installation_id,
                key_path,
                ..
            } => write!(
                f,
                "App {{ app_id: {app_id}, installation_id: {installation_id}, key: {key_path} }}"
            ),
        }
    }
}

/// Retries, timeouts and waits.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: usize,
    /// First backoff; it doubles on each retry.
    pub base_delay: Duration,
    /// The longest fleet waits for one retry (a rate-limit reset further away is an error).
    pub max_wait: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(500),
            max_wait: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Requests made, by endpoint and status, for logs and metrics.
#[derive(Debug, Default)]
pub struct RequestStats {
    total: AtomicU64,
    by_endpoint: Mutex<BTreeMap<(String, u16), u64>>,
    rate_limit_remaining: AtomicI64,
}

impl RequestStats {
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// `(endpoint, status) -> count`; status 0 is a request that got no answer.
    pub fn by_endpoint(&self) -> BTreeMap<(String, u16), u64> {
        self.by_endpoint
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The last `x-ratelimit-remaining` GitHub sent, or -1 before the first answer.
    pub fn rate_limit_remaining(&self) -> i64 {
        self.rate_limit_remaining.load(Ordering::Relaxed)
    }

    fn record(&self, endpoint: &str, status: u16) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.by_endpoint.lock() {
            *map.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }
}

/// A GitHub client for one scope.
#[derive(Clone)]
pub struct GithubClient {
    octo: Octocrab,
    api_url: String,
    scope: GithubScope,
    policy: RetryPolicy,
    stats: Arc<RequestStats>,
    /// The last 200 answer of each GET, by URL, with its `ETag`: asked again with
    /// `If-None-Match`, GitHub answers 304 (which does not count against the rate limit) and
    /// the cached answer is used.
    etags: Arc<Mutex<BTreeMap<String, Cached>>>,
    /// Writes paced under GitHub's secondary rate limit.
    pacer: Arc<super::pacing::Pacer>,
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

/// One attempt's failure: worth retrying (after an optional wait), or final.
enum Attempt {
    Retry {
        status: u16,
        wait: Option<Duration>,
        message: String,
    },
    Final(GithubError),
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
        let api_url = spec
            .github
            .api_url
            .clone()
            .or_else(|| env("GITHUB_API_URL").filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let scope = match (&spec.github.repo, &spec.github.org) {
            (Some(repo), _) => {
                let (owner, name) = repo.split_once('/').unwrap_or((repo, ""));
                GithubScope::Repo {
                    owner: owner.to_string(),
                    repo: name.to_string(),
                }
            }
            (None, Some(org)) => GithubScope::Org(org.clone()),
            (None, None) => GithubScope::Org(String::new()),
        };
        let auth = spec.github.auth.as_ref();
        let credentials = match auth.and_then(|a| a.app.as_ref()) {
            Some(app) => {
                let path = base_dir.join(&app.private_key_file);
                let key_pem = std::fs::read(&path).map_err(|source| GithubError::AppKey {
                    path: path.display().to_string(),
                    source,
                })?;
                Credentials::App {
                    app_id: app.app_id,
                    installation_id: app.installation_id,
                    key_pem,
                    key_path: path.display().to_string(),
                }
            }
            None => {
                let var = auth
                    .and_then(|a| a.token_env.clone())
                    .unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_string());
                match env(&var).filter(|t| !t.trim().is_empty()) {
                    Some(token) => Credentials::Token(token.trim().to_string()),
                    None => return Err(GithubError::MissingToken { var }),
                }
            }
        };
        GithubClient::new(&api_url, scope, credentials, policy)
    }

    pub fn new(
        api_url: &str,
        scope: GithubScope,
        credentials: Credentials,
        policy: RetryPolicy,
    ) -> Result<GithubClient, GithubError> {
        let api_url = api_url.trim_end_matches('/').to_string();
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
            .set_read_timeout(Some(policy.request_timeout + Duration::from_secs(5)));
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
                    GithubError::AppKeyFormat {
                        path: key_path.clone(),
                        message: e.to_string(),
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
            octo,
            api_url,
            scope,
            policy,
            stats: Arc::new(RequestStats::default()),
            etags: Arc::new(Mutex::new(BTreeMap::new())),
            pacer: Arc::new(super::pacing::Pacer::default()),
        })
    }

    pub fn scope(&self) -> &GithubScope {
        &self.scope
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    pub fn stats(&self) -> Arc<RequestStats> {
        self.stats.clone()
    }

    /// The URL of a path under the scope (`/actions/runners` -> `.../repos/o/r/actions/runners`).
    pub fn scoped_url(&self, path: &str) -> String {
        format!("{}{}{path}", self.api_url, self.scope.path())
    }

    /// Every runner registered at the scope, every page (100 a page), sorted by id.
    pub async fn list_runners(&self) -> Result<Vec<GithubRunner>, GithubError> {
        let first = format!("{}?per_page=100", self.scoped_url("/actions/runners"));
        let pages: Vec<RunnerPage> = self.get_all_pages(&first, "list-runners").await?;
        let mut runners: Vec<GithubRunner> = pages
            .into_iter()
            .flat_map(|p| p.runners)
            .map(RunnerJson::into_runner)
            .collect();
        runners.sort_by_key(|r| r.id);
        runners.dedup_by_key(|r| r.id);
        Ok(runners)
    }

    /// Runner groups by name (organization scope; a repository has only the default group).
    pub async fn runner_groups(&self) -> Result<BTreeMap<String, u64>, GithubError> {
        if !matches!(self.scope, GithubScope::Org(_)) {
            return Ok(BTreeMap::new());
        }
        #[derive(Deserialize)]
        struct Group {
            id: u64,
            name: String,
        }
        #[derive(Deserialize)]
        struct Page {
            runner_groups: Vec<Group>,
        }
        let first = format!("{}?per_page=100", self.scoped_url("/actions/runner-groups"));
        let pages: Vec<Page> = self.get_all_pages(&first, "list-runner-groups").await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.runner_groups)
            .map(|g| (g.name, g.id))
            .collect())
    }

    /// GETs `first` and every page its `Link: <...>; rel="next"` headers lead to.
    async fn get_all_pages<T: DeserializeOwned>(
        &self,
        first: &str,
        endpoint: &str,
    ) -> Result<Vec<T>, GithubError> {
        let mut pages = Vec::new();
        let mut next = Some(first.to_string());
        let mut seen = std::collections::BTreeSet::new();
        while let Some(url) = next.take() {
            if !seen.insert(url.clone()) {
                break; // a Link loop: stop rather than spin
            }
            let answer = self.send(Method::GET, &url, None, endpoint).await?;
            pages.push(decode(&url, &answer.body)?);
            next = next_link(&answer.headers);
        }
        Ok(pages)
    }

    /// Sends one request with retries, backoff and rate-limit waits; returns a 2xx answer.
    pub async fn send(
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
        // own (it fills in the base URI, GHES path included), so send the path and query.
        let relative = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
            .unwrap_or_else(|| url.to_string());
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
        let message = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        let code = status.as_u16();
        let retry_after = header_u64(headers, "retry-after").map(Duration::from_secs);
        match code {
            401 => Attempt::Final(GithubError::Unauthorized {
                method,
                url: url.to_string(),
                message,
            }),
            403 | 429 => {
                if header_u64(headers, "x-ratelimit-remaining") == Some(0) {
                    // Primary limit: wait until the reset GitHub names, if that is soon enough.
                    let reset = header_u64(headers, "x-ratelimit-reset").unwrap_or(0);
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let wait = reset.saturating_sub(now) + 1;
                    if Duration::from_secs(wait) > self.policy.max_wait {
                        return Attempt::Final(GithubError::RateLimited {
                            reset,
                            wait_secs: wait,
                            max_wait_secs: self.policy.max_wait.as_secs(),
                        });
                    }
                    return Attempt::Retry {
                        status: code,
                        wait: Some(retry_after.unwrap_or(Duration::from_secs(wait))),
                        message,
                    };
                }
                let secondary = message.to_lowercase().contains("secondary rate limit");
                if retry_after.is_some() || secondary || code == 429 {
                    // Secondary limit: GitHub asks for retry-after, else at least a minute.
                    let wait = retry_after.or(secondary.then_some(Duration::from_secs(60)));
                    return Attempt::Retry {
                        status: code,
                        wait,
                        message,
                    };
                }
                Attempt::Final(GithubError::Forbidden {
                    method,
                    url: url.to_string(),
                    message,
                    accepted_permissions: headers
                        .get("x-accepted-github-permissions")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                })
            }
            404 => Attempt::Final(GithubError::NotFound {
                method,
                url: url.to_string(),
                scope: self.scope.describe(),
            }),
            500..=599 => Attempt::Retry {
                status: code,
                wait: retry_after,
                message,
            },
            _ => Attempt::Final(GithubError::Rejected {
                method,
                url: url.to_string(),
                status: code,
                message,
            }),
        }
    }
}

/// A runner as GitHub's list endpoints describe it (the fields fleet reads).
#[derive(Deserialize)]
struct RunnerJson {
    id: u64,
    name: String,
    status: String,
    busy: bool,
    labels: Vec<LabelJson>,
}

#[derive(Deserialize)]
struct LabelJson {
    name: String,
}

#[derive(Deserialize)]
struct RunnerPage {
    runners: Vec<RunnerJson>,
}

impl RunnerJson {
    fn into_runner(self) -> GithubRunner {
        GithubRunner {
            id: self.id,
            name: self.name,
            online: self.status == "online",
            busy: self.busy,
            labels: self.labels.into_iter().map(|l| l.name).collect(),
        }
    }
}

/// What became of a request to remove a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// GitHub had no such runner (already gone): nothing to do.
    Gone,
    /// GitHub refused: the runner is running a job.
    Busy,
}

/// A JIT registration: the runner's id and its single-use configuration.
#[derive(Debug)]
pub struct JitConfig {
    pub runner_id: u64,
    pub encoded: Secret,
}

/// Writes. Only the executor (`src/apply`) calls these.
impl GithubClient {
    /// Registers runner `name` and returns its JIT configuration
    /// (`POST .../actions/runners/generate-jitconfig`).
    pub async fn generate_jitconfig(
        &self,
        name: &str,
        runner_group_id: u64,
        labels: &[String],
    ) -> Result<JitConfig, GithubError> {
        #[derive(Deserialize)]
        struct Runner {
            id: u64,
        }
        #[derive(Deserialize)]
        struct Answer {
            runner: Runner,
            encoded_jit_config: String,
        }
        let url = self.scoped_url("/actions/runners/generate-jitconfig");
        let body = serde_json::json!({
            "name": name,
            "runner_group_id": runner_group_id,
            "labels": labels,
            "work_folder": "_work",
        });
        self.pacer.write("generate-jitconfig").await;
        let answer = self
            .send(Method::POST, &url, Some(&body), "generate-jitconfig")
            .await?;
        let parsed: Answer = decode(&url, &answer.body)?;
        Ok(JitConfig {
            runner_id: parsed.runner.id,
            encoded: Secret::new(parsed.encoded_jit_config),
        })
    }

    /// A registration token for `config.sh` (`POST .../actions/runners/registration-token`).
    pub async fn registration_token(&self) -> Result<Secret, GithubError> {
        #[derive(Deserialize)]
        struct Answer {
            token: String,
        }
        let url = self.scoped_url("/actions/runners/registration-token");
        self.pacer.write("registration-token").await;
        let answer = self
            .send(Method::POST, &url, None, "registration-token")
            .await?;
        let parsed: Answer = decode(&url, &answer.body)?;
        Ok(Secret::new(parsed.token))
    }

    /// The runner registered under `name`, if any (`GET .../actions/runners?name=`).
    pub async fn runner_by_name(&self, name: &str) -> Result<Option<GithubRunner>, GithubError> {
        let url = format!(
            "{}?name={}&per_page=100",
            self.scoped_url("/actions/runners"),
            url_encode(name)
        );
        let answer = self.send(Method::GET, &url, None, "list-runners").await?;
        let page: RunnerPage = decode(&url, &answer.body)?;
        Ok(page
            .runners
            .into_iter()
            .find(|r| r.name == name)
            .map(RunnerJson::into_runner))
    }

    /// Removes registration `id`. A busy runner is refused by GitHub (422) and kept.
    pub async fn delete_runner(&self, id: u64) -> Result<Removal, GithubError> {
        let url = self.scoped_url(&format!("/actions/runners/{id}"));
        self.pacer.write("delete-runner").await;
        match self.send(Method::DELETE, &url, None, "delete-runner").await {
            Ok(_) => Ok(Removal::Removed),
            Err(GithubError::NotFound { .. }) => Ok(Removal::Gone),
            Err(GithubError::Rejected { status: 422, .. }) => Ok(Removal::Busy),
            Err(e) => Err(e),
        }
    }

    /// The URL a runner registers against with `config.sh --url`: the web address of the
    /// repository or organization (https://github.com/acme/zquic; on GHES https://HOST/acme).
    pub fn registration_url(&self) -> String {
        let web = if self.api_url == DEFAULT_API_URL {
            "https://github.com".to_string()
        } else if let Some(host) = self.api_url.strip_suffix("/api/v3") {
            host.to_string()
        } else {
            self.api_url.clone()
        };
        match &self.scope {
            GithubScope::Repo { owner, repo } => format!("{web}/{owner}/{repo}"),
            GithubScope::Org(org) => format!("{web}/{org}"),
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The `rel="next"` URL of a `Link` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

fn decode<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, GithubError> {
    serde_json::from_slice(body).map_err(|e| GithubError::Decode {
        url: url.to_string(),
        message: e.to_string(),
    })
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "link",
            "<https://api.github.com/x?page=1>; rel=\"prev\", <https://api.github.com/x?page=3>; rel=\"next\", <https://api.github.com/x?page=5>; rel=\"last\""
                .parse()
                .expect("header"),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://api.github.com/x?page=3")
        );
        headers.insert(
            "link",
            "<https://a/x?page=1>; rel=\"first\""
                .parse()
                .expect("header"),
        );
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn credentials_never_print_the_token() {
        let c = Credentials::Token("ghp_supersecret".into());
        assert!(!format!("{c:?}").contains("supersecret"));
    }
}
