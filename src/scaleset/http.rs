//! The HTTP layer of the scale set client: one request at a time, retried with backoff when
//! the service is down or busy, a credential only ever in a sensitive `Authorization` header,
//! and never over plain http unless the host is this machine (the fake GitHub in tests).
//!
//! It uses the GitHub client's transport (`crate::github::transport`: hyper, rustls, proxies,
//! User-Agent) and retry policy, so both clients reach GitHub the same way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};

use super::error::{ScaleSetError, display_url};
pub use crate::github::RetryPolicy;
use crate::github::transport::{self, HttpsClient, ProxyConfig, error_chain, is_loopback, quote};
use crate::secret::Secret;

/// The largest answer fleet reads: the service's answers are a few kilobytes.
const MAX_BODY: usize = 8 << 20;

/// How a request authenticates: `Authorization: <scheme> <token>`.
pub(crate) struct Credential<'a> {
    pub scheme: &'static str,
    pub token: &'a Secret,
}

/// One request to send.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub url: String,
    pub credential: Option<Credential<'a>>,
    pub body: Option<Vec<u8>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    /// A long poll that runs out of time is answered by the caller, not retried.
    pub retry_timeouts: bool,
    /// The scale set the request concerns, for the User-Agent.
    pub scale_set: Option<u64>,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, url: String, timeout: Duration) -> Call<'a> {
        Call {
            method,
            url,
            credential: None,
            body: None,
            headers: Vec::new(),
            timeout,
            retry_timeouts: true,
            scale_set: None,
        }
    }

    pub fn auth(mut self, scheme: &'static str, token: &'a Secret) -> Call<'a> {
        self.credential = Some(Credential { scheme, token });
        self
    }

    pub fn json(mut self, body: &impl serde::Serialize) -> Call<'a> {
        // Serializing fleet's own request types cannot fail; an empty body would be refused
        // by the service and reported there.
        self.body = Some(serde_json::to_vec(body).unwrap_or_default());
        self
    }
}

/// An answer, whatever its status.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The service's error text: an Actions exception's `message` (with its type), a GitHub
    /// error's `message`, or the body itself.
    pub fn error_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim_start_matches('\u{feff}');
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => {
                let message = value
                    .get("message")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                match exception_name(&value) {
                    Some(kind) if !message.is_empty() => quote(&format!("{kind}: {message}")),
                    Some(kind) => kind,
                    None if !message.is_empty() => quote(message),
                    None => quote(text),
                }
            }
            Err(_) => quote(text),
        }
    }

    /// The Actions exception type (`AgentExistsException`, ...) the body names, if any (after
    /// a byte order mark too: without it, AgentExists and JobStillRunning went unrecognised).
    pub fn exception(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(self.json()).ok()?;
        exception_name(&value)
    }

    /// The body without the byte order mark the service may start it with.
    fn json(&self) -> &[u8] {
        self.body
            .strip_prefix("\u{feff}".as_bytes())
            .unwrap_or(&self.body)
    }

    /// The body as JSON of type `T` (the service may start it with a byte order mark).
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: &Method,
        url: &str,
    ) -> Result<T, ScaleSetError> {
        serde_json::from_slice(self.json()).map_err(|e| ScaleSetError::Decode {
            method: method.clone(),
            url: display_url(url),
            message: e.to_string(),
        })
    }
}

/// The short exception name of a `{"typeName": "GitHub.DistributedTask.WebApi.XException, ..."}`
/// body (or its `typeKey`).
fn exception_name(value: &serde_json::Value) -> Option<String> {
    let full = value
        .get("typeKey")
        .or_else(|| value.get("typeName"))
        .and_then(serde_json::Value::as_str)?;
    let class = full.split(',').next().unwrap_or(full).trim();
    let short = class.rsplit('.').next().unwrap_or(class);
    (!short.is_empty()).then(|| short.to_owned())
}

/// One attempt's failure: worth retrying (after an optional wait), or not.
enum Attempt {
    Retry {
        status: u16,
        wait: Option<Duration>,
        rate_limited: bool,
        message: String,
    },
    Final(ScaleSetError),
}

/// The HTTP client of the scale set client. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Http {
    client: HttpsClient,
    pub policy: RetryPolicy,
}

impl Http {
    pub fn new(policy: RetryPolicy, proxy: &ProxyConfig) -> Result<Http, ScaleSetError> {
        let client =
            transport::https_client(proxy).map_err(|message| ScaleSetError::Client { message })?;
        Ok(Http { client, policy })
    }

    /// Sends `call`, retrying transport errors, timeouts, 429 and 5xx (but 501) with backoff.
    /// Any other answer comes back as it is, for the caller to read its status.
    pub async fn send(&self, call: &Call<'_>) -> Result<Answer, ScaleSetError> {
        let uri = check_url(&call.url)?;
        let attempts = self.policy.attempts.max(1);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.base_delay)
            .with_max_delay(self.policy.max_wait)
            .with_max_times(attempts - 1)
            .with_jitter();
        let tries = AtomicUsize::new(0);
        let rate_limited = std::sync::atomic::AtomicU32::new(0);
        let shown = display_url(&call.url);
        let result = (|| async {
            tries.fetch_add(1, Ordering::Relaxed);
            self.attempt(call, &uri).await
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
            let wait = wait.map(|w| w.min(self.policy.max_wait));
            backoff.and_then(|b| self.policy.wait_for(wait, *limited, waits, b))
        })
        .notify(|e: &Attempt, wait| {
            if let Attempt::Retry {
                status, message, ..
            } = e
            {
                let what = if *status == 0 {
                    "no answer".to_owned()
                } else {
                    status.to_string()
                };
                tracing::warn!(
                    "scale set service {} {shown}: {what} {message}; retrying in {:.1}s",
                    call.method,
                    wait.as_secs_f64()
                );
            }
        })
        .await;
        let attempts = tries.load(Ordering::Relaxed);
        match result {
            Ok(answer) => Ok(answer),
            Err(Attempt::Final(error)) => Err(error),
            Err(Attempt::Retry {
                status: 0, message, ..
            }) => Err(ScaleSetError::Transport {
                url: shown,
                attempts,
                message,
            }),
            Err(Attempt::Retry {
                status, message, ..
            }) => Err(ScaleSetError::Unavailable {
                method: call.method.clone(),
                url: shown,
                status,
                attempts,
                message,
            }),
        }
    }

    async fn attempt(&self, call: &Call<'_>, uri: &Uri) -> Result<Answer, Attempt> {
        let request = build_request(call, uri).map_err(Attempt::Final)?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let answer = match tokio::time::timeout(call.timeout, exchange).await {
            Err(_) if call.retry_timeouts => {
                return Err(Attempt::Retry {
                    status: 0,
                    wait: None,
                    rate_limited: false,
                    message: format!("no answer within {} s", call.timeout.as_secs()),
                });
            }
            Err(_) => {
                return Err(Attempt::Final(ScaleSetError::Timeout {
                    method: call.method.clone(),
                    url: display_url(&call.url),
                    secs: call.timeout.as_secs(),
                }));
            }
            Ok(Err(e)) => {
                return Err(Attempt::Retry {
                    status: 0,
                    wait: None,
                    rate_limited: false,
                    message: error_chain(e.as_ref()),
                });
            }
            Ok(Ok(answer)) => answer,
        };
        let status = answer.status;
        let retryable = status == StatusCode::TOO_MANY_REQUESTS
            || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED);
        if retryable {
            return Err(Attempt::Retry {
                status: status.as_u16(),
                wait: retry_after(&answer.headers),
                rate_limited: status == StatusCode::TOO_MANY_REQUESTS,
                message: answer.error_text(),
            });
        }
        Ok(answer)
    }
}

fn build_request(call: &Call<'_>, uri: &Uri) -> Result<Request<Full<Bytes>>, ScaleSetError> {
    let mut builder = Request::builder()
        .method(call.method.clone())
        .uri(uri.clone())
        .header(USER_AGENT, user_agent(call.scale_set));
    if !call.headers.iter().any(|(name, _)| name == ACCEPT) {
        builder = builder.header(ACCEPT, "application/json");
    }
    for (name, value) in &call.headers {
        builder = builder.header(name, value);
    }
    if let Some(credential) = &call.credential {
        let mut value = HeaderValue::from_str(&format!(
            "{} {}",
            credential.scheme,
            credential.token.expose()
        ))
        .map_err(|_| ScaleSetError::Client {
            message: "a token holds characters an HTTP header cannot carry".into(),
        })?;
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    let body = match &call.body {
        Some(bytes) => {
            builder = builder.header(CONTENT_TYPE, "application/json");
            Bytes::from(bytes.clone())
        }
        None => Bytes::new(),
    };
    builder
        .body(Full::new(body))
        .map_err(|e| ScaleSetError::BadUrl {
            url: display_url(&call.url),
            message: e.to_string(),
        })
}

/// `url` parsed, if fleet may send a credential there: https anywhere, plain http only to this
/// machine (a loopback address or `localhost`).
pub(crate) fn check_url(url: &str) -> Result<Uri, ScaleSetError> {
    let bad = |message: &str| ScaleSetError::BadUrl {
        url: display_url(url),
        message: message.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let host = uri.host().ok_or_else(|| bad("it has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(ScaleSetError::InsecureUrl {
            url: display_url(url),
        }),
        _ => Err(bad("only https (or http to this machine) is supported")),
    }
}

/// `fleet/VERSION`, and the scale set a request concerns (`fleet/0.1.0 (scale set 7)`).
fn user_agent(scale_set: Option<u64>) -> String {
    match scale_set {
        Some(id) => format!("{} (scale set {id})", transport::USER_AGENT),
        None => format!("{} (scale sets)", transport::USER_AGENT),
    }
}

/// `Retry-After` in seconds (GitHub and the Actions service send seconds).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_over_https_or_to_this_machine_only() {
        for ok in [
            "https://api.github.com/actions/runner-registration",
            "https://pipelines.actions.githubusercontent.com/abc/_apis/x?api-version=6.0-preview",
            "http://127.0.0.1:8080/x",
            "http://[::1]:9/x",
            "http://localhost/x",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        assert!(matches!(
            check_url("http://pipelines.example.com/x?token=1"),
            Err(ScaleSetError::InsecureUrl { url }) if url == "http://pipelines.example.com/x"
        ));
        assert!(matches!(
            check_url("http://10.0.0.1/x"),
            Err(ScaleSetError::InsecureUrl { .. })
        ));
        assert!(matches!(
            check_url("ftp://127.0.0.1/x"),
            Err(ScaleSetError::BadUrl { .. })
        ));
        assert!(matches!(
            check_url("/relative"),
            Err(ScaleSetError::BadUrl { .. })
        ));
    }

    fn answer(body: &str) -> Answer {
        Answer {
            status: StatusCode::CONFLICT,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn reads_actions_exceptions_and_github_errors() {
        let conflict = answer(
            r#"{"$id":"1","innerException":null,"message":"The runner scale set zq-gpu already has an active session for owner host-1.","typeName":"GitHub.DistributedTask.WebApi.TaskAgentSessionConflictException, GitHub.DistributedTask.WebApi","typeKey":"TaskAgentSessionConflictException","errorCode":0,"eventId":3000}"#,
        );
        assert_eq!(
            conflict.exception().as_deref(),
            Some("TaskAgentSessionConflictException")
        );
        assert!(conflict.error_text().starts_with(
            "TaskAgentSessionConflictException: The runner scale set zq-gpu already has"
        ));
        let exists = answer(
            r#"{"typeName":"GitHub.DistributedTask.WebApi.AgentExistsException, GitHub.DistributedTask.WebApi","message":"exists"}"#,
        );
        assert_eq!(exists.exception().as_deref(), Some("AgentExistsException"));
        let with_bom = answer(
            "\u{feff}{\"typeName\":\"GitHub.DistributedTask.WebApi.JobStillRunningException, GitHub.DistributedTask.WebApi\",\"message\":\"busy\"}",
        );
        assert_eq!(
            with_bom.exception().as_deref(),
            Some("JobStillRunningException")
        );
        let github = answer(r#"{"message":"Bad credentials","documentation_url":"x"}"#);
        assert_eq!(github.exception(), None);
        assert_eq!(github.error_text(), "Bad credentials");
        assert_eq!(answer("\u{feff}plain text").error_text(), "plain text");
    }

    #[test]
    fn decodes_bodies_with_a_byte_order_mark() {
        let answer = answer("\u{feff}{\"count\": 2}");
        let value: serde_json::Value = answer
            .decode(&Method::GET, "https://x/y?z")
            .expect("decodes");
        assert_eq!(value["count"], 2);
    }

    #[test]
    fn reads_retry_after_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
    }
}
