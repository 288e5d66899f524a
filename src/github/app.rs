//! GitHub App authentication: a JWT signed with the App's key buys an installation token
//! (`POST /app/installations/{id}/access_tokens`), used until shortly before it expires. A
//! refusal is reported as what it is (wrong installation, bad key or App id, clock skew,
//! suspended App), never as a network error.

use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use serde::Deserialize;

use super::GithubError;
use crate::secret::Secret;

/// An installation token is fetched again when it has less than this left (GitHub gives an
/// hour).
const TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The App's identity and its cached installation token.
pub(super) struct AppAuth {
    pub app_id: u64,
    pub installation_id: u64,
    key: octocrab::EncodingKey,
    token: tokio::sync::Mutex<Option<(Secret, SystemTime)>>,
}

/// An installation token and when it expires, as GitHub answers.
#[derive(Deserialize)]
struct Issued {
    token: String,
    #[serde(default)]
    expires_at: Option<String>,
}

/// What the access-token request answered: the token, or the status and GitHub's message.
pub(super) enum Exchange {
    Issued(Vec<u8>),
    Refused { status: u16, message: String },
}

impl AppAuth {
    pub fn new(app_id: u64, installation_id: u64, key: octocrab::EncodingKey) -> AppAuth {
        AppAuth {
            app_id,
            installation_id,
            key,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// The path of the access-token request, under the API's base path.
    pub fn token_path(&self) -> String {
        format!("/app/installations/{}/access_tokens", self.installation_id)
    }

    /// A fresh JWT for the App (valid nine minutes, issued a minute in the past for clocks
    /// slightly behind GitHub's).
    pub fn jwt(&self) -> Result<Secret, GithubError> {
        octocrab::auth::create_jwt(self.app_id.into(), &self.key)
            .map(Secret::new)
            .map_err(|e| GithubError::Client {
                api_url: String::new(),
                message: format!("cannot sign the GitHub App's JWT: {e}"),
            })
    }

    /// The cached installation token, or `exchange`'s answer (which is then cached).
    pub async fn token<F, Fut>(&self, exchange: F) -> Result<Secret, GithubError>
    where
        F: FnOnce(Secret) -> Fut,
        Fut: Future<Output = Result<Exchange, GithubError>>,
    {
        let mut cached = self.token.lock().await;
        let now = SystemTime::now();
        if let Some((token, expires)) = cached.as_ref()
            && now + TOKEN_MARGIN < *expires
        {
            return Ok(token.clone());
        }
        let body = match exchange(self.jwt()?).await? {
            Exchange::Issued(body) => body,
            Exchange::Refused { status, message } => return Err(self.refusal(status, message)),
        };
        let issued: Issued = serde_json::from_slice(&body).map_err(|e| GithubError::Decode {
            url: self.token_path(),
            message: e.to_string(),
        })?;
        let expires = issued
            .expires_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .unwrap_or(now + Duration::from_secs(30 * 60));
        let token = Secret::new(issued.token);
        *cached = Some((token.clone(), expires));
        Ok(token)
    }

    /// Forgets the cached token (GitHub refused it: revoked, or the installation changed).
    pub async fn forget(&self) {
        *self.token.lock().await = None;
    }

    fn refusal(&self, status: u16, message: String) -> GithubError {
        GithubError::AppRefused {
            app_id: self.app_id,
            installation_id: self.installation_id,
            status,
            reason: AppRefusal::of(status, &message),
            message,
        }
    }
}

/// Why GitHub refused the App's installation token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppRefusal {
    /// 404: no installation of this id for this App.
    UnknownInstallation,
    /// 401 about the token's times: this machine's clock is off.
    ClockSkew,
    /// 401 otherwise: the key is not the App's, or the App id is wrong.
    BadKey,
    /// 403: the App or its installation is suspended.
    Suspended,
    /// Anything else.
    Other,
}

impl AppRefusal {
    fn of(status: u16, message: &str) -> AppRefusal {
        let lower = message.to_lowercase();
        match status {
            404 => AppRefusal::UnknownInstallation,
            401 if lower.contains("'exp'") || lower.contains("'iat'") || lower.contains("time") => {
                AppRefusal::ClockSkew
            }
            401 => AppRefusal::BadKey,
            403 if lower.contains("suspend") => AppRefusal::Suspended,
            _ => AppRefusal::Other,
        }
    }

    /// What the operator can do.
    pub fn hint(self, app_id: u64, installation_id: u64) -> String {
        match self {
            AppRefusal::UnknownInstallation => format!(
                "App {app_id} has no installation {installation_id}: check github.auth.app.installation_id (the number at the end of the installation's settings URL) and that the App is installed on the organization or repository"
            ),
            AppRefusal::ClockSkew => "this machine's clock differs from GitHub's: the App's JWT is issued a minute in the past and lives nine minutes; synchronize the clock (chrony, systemd-timesyncd)".into(),
            AppRefusal::BadKey => format!(
                "GitHub could not verify the App's JWT: check that github.auth.app.app_id is {app_id}'s App and that the private key file is a current key of that App (keys can be revoked in the App's settings)"
            ),
            AppRefusal::Suspended => "the App or its installation is suspended: an organization owner can unsuspend it in the installation's settings".into(),
            AppRefusal::Other => "check the App's settings and installation on GitHub".into(),
        }
    }
}

/// Classifies the access-token request's answer.
pub(super) fn exchange_answer(status: StatusCode, body: Vec<u8>) -> Exchange {
    if status.is_success() {
        return Exchange::Issued(body);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
    Exchange::Refused {
        status: status.as_u16(),
        message: super::transport::quote(&message),
    }
}

/// The method of the access-token request.
pub(super) const TOKEN_METHOD: Method = Method::POST;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart() {
        assert_eq!(
            AppRefusal::of(404, "Not Found"),
            AppRefusal::UnknownInstallation
        );
        assert_eq!(
            AppRefusal::of(
                401,
                "'Issued at' claim ('iat') must be an Integer representing a time in the past"
            ),
            AppRefusal::ClockSkew
        );
        assert_eq!(
            AppRefusal::of(401, "A JSON web token could not be decoded"),
            AppRefusal::BadKey
        );
        assert_eq!(
            AppRefusal::of(403, "This installation has been suspended"),
            AppRefusal::Suspended
        );
        assert!(AppRefusal::ClockSkew.hint(1, 2).contains("clock"));
        assert!(
            AppRefusal::UnknownInstallation
                .hint(1, 2)
                .contains("installation_id")
        );
    }
}
