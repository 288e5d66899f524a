//! What to do with an answer that is not a success: retry (after how long) or give up, as
//! GitHub documents its rate limits: `retry-after` is waited in full; a 429 or secondary limit
//! without it at least a minute, twice as long each time. One policy for the REST client and
//! the scale set client (`src/scaleset/http.rs`).

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
    /// The longest fleet waits for one retry (a rate-limit reset or `retry-after` further away
    /// is an error, never a shorter wait).
    pub max_wait: Duration,
    /// Timeout of one request (a scale set long poll has its own).
    pub request_timeout: Duration,
    /// The first wait after a 429 or secondary rate limit that names no `retry-after` (GitHub
    /// asks for at least a minute); it doubles with each one.
    pub rate_limit_wait: Duration,
}

impl RetryPolicy {
    /// How long to wait before the next attempt: GitHub's `retry-after` in full; after a rate
    /// limit without one, `rate_limit_wait` doubled for each earlier one (`waits`); otherwise
    /// the backoff. `None`: give up (the wait would exceed `max_wait`).
    pub fn wait_for(
        &self,
        retry_after: Option<Duration>,
        rate_limited: bool,
        waits: u32,
        backoff: Duration,
    ) -> Option<Duration> {
        match (retry_after, rate_limited) {
            (Some(wait), _) => Some(wait),
            (None, true) => {
                let wait = self
                    .rate_limit_wait
                    .checked_mul(1u32.checked_shl(waits).unwrap_or(u32::MAX))?;
                (wait <= self.max_wait).then_some(wait)
            }
            (None, false) => Some(backoff),
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(500),
            max_wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            rate_limit_wait: Duration::from_secs(60),
        }
    }
}

/// One attempt's failure: worth retrying (after an optional wait), or final.
pub(super) enum Attempt {
    Retry {
        status: u16,
        /// `retry-after` or the primary limit's reset.
        wait: Option<Duration>,
        /// A rate limit: without `wait`, at least `RetryPolicy::rate_limit_wait`.
        rate_limited: bool,
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
                    rate_limited: true,
                    message,
                };
            }
            let secondary = message.to_lowercase().contains("secondary rate limit");
            if let Some(wait) = retry_after.filter(|w| *w > policy.max_wait) {
                return Attempt::Final(GithubError::RetryAfterTooLong {
                    method,
                    url: url.to_string(),
                    wait_secs: wait.as_secs(),
                    max_wait_secs: policy.max_wait.as_secs(),
                });
            }
            if retry_after.is_some() || secondary || code == 429 {
                return Attempt::Retry {
                    status: code,
                    wait: retry_after,
                    rate_limited: true,
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
            wait: retry_after.map(|w| w.min(policy.max_wait)),
            rate_limited: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_waited_in_full_and_bare_limits_a_minute_then_longer() {
        let policy = RetryPolicy::default();
        let backoff = Duration::from_millis(500);
        assert_eq!(
            policy.wait_for(Some(Duration::from_secs(200)), true, 0, backoff),
            Some(Duration::from_secs(200)),
            "retry-after is not cut short"
        );
        let waits: Vec<_> = (0..4)
            .map(|n| policy.wait_for(None, true, n, backoff))
            .collect();
        assert_eq!(
            waits,
            [
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(120)),
                Some(Duration::from_secs(240)),
                None
            ],
            "a bare 429 waits a minute, then twice as long, and gives up past max_wait"
        );
        assert_eq!(policy.wait_for(None, false, 0, backoff), Some(backoff));
    }

    fn classify_429(headers: &HeaderMap, text: &str) -> Attempt {
        classify(
            &RetryPolicy::default(),
            &GithubScope::Org("acme".into()),
            Method::POST,
            "https://api.github.com/x",
            StatusCode::TOO_MANY_REQUESTS,
            headers,
            text,
        )
    }

    #[test]
    fn a_retry_after_beyond_max_wait_is_an_error_not_a_shorter_wait() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "3600".parse().expect("header"));
        assert!(matches!(
            classify_429(&headers, "{}"),
            Attempt::Final(GithubError::RetryAfterTooLong {
                wait_secs: 3600,
                ..
            })
        ));
        headers.insert("retry-after", "90".parse().expect("header"));
        assert!(matches!(
            classify_429(&headers, "{}"),
            Attempt::Retry { wait: Some(w), rate_limited: true, .. } if w == Duration::from_secs(90)
        ));
        assert!(matches!(
            classify_429(&HeaderMap::new(), "{}"),
            Attempt::Retry {
                wait: None,
                rate_limited: true,
                ..
            }
        ));
    }
}
