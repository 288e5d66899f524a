//! What to do with an answer that is not a success: retry (after how long) or give up, as
//! GitHub documents its rate limits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, StatusCode};

use super::GithubError;
use super::auth::GithubScope;
use super::http::header_u64;

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

/// One attempt's failure: worth retrying (after an optional wait), or final.
pub(super) enum Attempt {
    Retry {
        status: u16,
        wait: Option<Duration>,
        message: String,
    },
    Final(GithubError),
}

/// Classifies a non-2xx answer.
pub(super) fn classify(
    policy: &RetryPolicy,
    scope: &GithubScope,
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
                if Duration::from_secs(wait) > policy.max_wait {
                    return Attempt::Final(GithubError::RateLimited {
                        reset,
                        wait_secs: wait,
                        max_wait_secs: policy.max_wait.as_secs(),
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
            scope: scope.describe(),
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
