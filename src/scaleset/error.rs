//! What can go wrong talking to GitHub's runner scale set service.
//!
//! Every variant names the request (method and URL without its query string) or the scale set it
//! concerns. None carries a credential: tokens travel only in request headers, and the bodies
//! quoted in `message` fields are the service's error texts, cut to a few hundred characters.

use http::Method;

#[derive(Debug, thiserror::Error)]
pub enum ScaleSetError {
    #[error("cannot set up the scale set client: {message}")]
    Client { message: String },
    #[error(
        "refusing to send a credential to {url}: plain http is allowed only to a loopback address"
    )]
    InsecureUrl { url: String },
    #[error("{url} is not a URL fleet can use: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot get a runner registration token for the scale set service: {message}")]
    RegistrationToken { message: String },
    #[error("GitHub refused to open the Actions service for {config_url} ({status} {message})")]
    Registration {
        config_url: String,
        status: u16,
        message: String,
    },
    #[error("the Actions service rejected fleet's credentials for {method} {url} ({message})")]
    Unauthorized {
        method: Method,
        url: String,
        message: String,
    },
    #[error(
        "scale set {scale_set_id} already has an active message session ({message}); another listener holds it, or a stopped one has not timed out yet"
    )]
    SessionConflict { scale_set_id: u64, message: String },
    #[error("{what} does not exist ({method} {url}: {message})")]
    NotFound {
        what: String,
        method: Method,
        url: String,
        message: String,
    },
    #[error("a runner named {name} is already registered ({message})")]
    RunnerExists { name: String, message: String },
    #[error("runner {runner_id} is still running a job ({message})")]
    RunnerBusy { runner_id: u64, message: String },
    #[error("{what}: more than one matches the name {name}")]
    Ambiguous { what: String, name: String },
    #[error("the Actions service answered {status} for {method} {url}: {message}")]
    Rejected {
        method: Method,
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "the Actions service answered {status} for {method} {url} after {attempts} attempts: {message}"
    )]
    Unavailable {
        method: Method,
        url: String,
        status: u16,
        attempts: usize,
        message: String,
    },
    #[error("cannot reach {url} after {attempts} attempts: {message}")]
    Transport {
        url: String,
        attempts: usize,
        message: String,
    },
    #[error("{method} {url} did not answer within {secs} s")]
    Timeout {
        method: Method,
        url: String,
        secs: u64,
    },
    #[error("the answer to {method} {url} is not what fleet expected: {message}")]
    Decode {
        method: Method,
        url: String,
        message: String,
    },
}

impl ScaleSetError {
    /// Whether trying again later could succeed: the service was down, slow or busy, or a
    /// session is still held by a listener that will time out.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ScaleSetError::Unavailable { .. }
                | ScaleSetError::Transport { .. }
                | ScaleSetError::Timeout { .. }
                | ScaleSetError::SessionConflict { .. }
        )
    }
}

/// A URL as errors and logs show it: without the query string, which can carry names and ids.
pub(crate) fn display_url(url: &str) -> String {
    url.split_once('?').map_or(url, |(path, _)| path).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_query() {
        assert_eq!(
            display_url("https://x/_apis/a?name=b&api-version=6.0-preview"),
            "https://x/_apis/a"
        );
        assert_eq!(display_url("https://x/y"), "https://x/y");
    }

    #[test]
    fn transient_errors() {
        let conflict = ScaleSetError::SessionConflict {
            scale_set_id: 1,
            message: String::new(),
        };
        assert!(conflict.is_transient());
        let exists = ScaleSetError::RunnerExists {
            name: "r".into(),
            message: String::new(),
        };
        assert!(!exists.is_transient());
    }
}
