//! Why GitHub could not be read or written, with a hint for the operator where there is one.

use http::Method;

use super::app::AppRefusal;
use super::endpoint::API_URL_ENV;

/// The first GitHub Enterprise Server release with just-in-time runner registration.
pub const JIT_MIN_GHES_VERSION: &str = "3.10";

/// Why GitHub could not be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("{var} is not set: fleet reads the GitHub token from it")]
    MissingToken { var: String },
    /// The spec names the key's path: the reason goes to the log only (src/named_file.rs).
    #[error(
        "the GitHub App private key {path} is {}",
        crate::named_file::NOT_USABLE
    )]
    AppKey { path: String },
    /// Read, but not an RSA PEM key; as for [`GithubError::AppKey`], the reason is logged.
    #[error(
        "the GitHub App private key {path} is {}",
        crate::named_file::NOT_USABLE
    )]
    AppKeyFormat { path: String },
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
    #[error(
        "GitHub asked fleet to wait {wait_secs} s before {method} {url} again (retry-after), longer than fleet waits ({max_wait_secs} s)"
    )]
    RetryAfterTooLong {
        method: Method,
        url: String,
        wait_secs: u64,
        max_wait_secs: u64,
    },
    #[error(
        "GitHub refused an installation token to App {app_id} for installation {installation_id} ({status} {message})"
    )]
    AppRefused {
        app_id: u64,
        installation_id: u64,
        status: u16,
        reason: AppRefusal,
        message: String,
    },
    #[error(
        "{api_url} has no just-in-time runner registration (404 for {url}): GitHub Enterprise Server {JIT_MIN_GHES_VERSION} or later is needed"
    )]
    NoJit { api_url: String, url: String },
    #[error("GitHub's answer to {url} is not what fleet expected: {message}")]
    Decode { url: String, message: String },
    #[error(
        "fleet.yaml sets github.api_url to {spec}, but this machine sends its GitHub credentials only to {trusted} ({trusted_from}): fleet.yaml cannot choose where credentials go"
    )]
    UntrustedApiUrl {
        spec: String,
        trusted: String,
        trusted_from: String,
    },
    #[error("{from} is `{url}`: {reason}")]
    BadApiUrl {
        from: String,
        url: String,
        reason: String,
    },
    #[error(
        "refusing to send credentials to {url}: it is not under {api_url}, the GitHub API this machine trusts"
    )]
    ForeignUrl { url: String, api_url: String },
    #[error(
        "GitHub answered {status} for {method} {url}, a redirect to {location}: fleet follows no redirect, so that no credential leaves the API this machine trusts"
    )]
    Redirected {
        method: Method,
        url: String,
        status: u16,
        location: String,
    },
    #[error("cannot read every page of {first}: {reason}; fleet makes no plan on a partial list")]
    Pagination { first: String, reason: String },
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
            GithubError::RateLimited { .. } | GithubError::RetryAfterTooLong { .. } => {
                Some("try again after the reset time".into())
            }
            GithubError::AppRefused {
                app_id,
                installation_id,
                reason,
                ..
            } => Some(reason.hint(*app_id, *installation_id)),
            GithubError::NoJit { .. } => Some(format!(
                "upgrade GitHub Enterprise Server to {JIT_MIN_GHES_VERSION} or later, or use persistent pools (ephemeral: false), which register with config.sh"
            )),
            GithubError::UntrustedApiUrl { spec, .. } => Some(format!(
                "if {spec} is where this machine's credentials belong, set {API_URL_ENV}={spec} in fleet's environment on this machine; otherwise remove github.api_url from fleet.yaml"
            )),
            GithubError::BadApiUrl { .. } => Some(
                "use https://HOST (GitHub Enterprise Server: https://HOST/api/v3); http:// only on 127.0.0.1, ::1 or localhost".into(),
            ),
            GithubError::Redirected { .. } => Some(format!(
                "point {API_URL_ENV} at the API itself (GitHub Enterprise Server: https://HOST/api/v3), not at a proxy or web address that redirects"
            )),
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
                | GithubError::RetryAfterTooLong { .. }
        )
    }
}
