//! The credentials chain of the scale set service: a GitHub credential buys a runner
//! registration token; the registration token buys (at `POST {api}/actions/runner-registration`,
//! `Authorization: RemoteAuth <registration token>`) the Actions service's URL and an admin
//! token, a JWT that expires; the admin token opens message sessions, whose queue token reads
//! the queue. See docs/autoscale-protocol.md.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;

use super::error::ScaleSetError;
use crate::secret::Secret;

/// How long an admin token whose expiry cannot be read is used before fleet exchanges a new
/// one (a 401 makes it exchange sooner).
const UNKNOWN_EXPIRY: Duration = Duration::from_secs(600);

/// Gives runner registration tokens for the scope of the scale sets. fleet's GitHub client
/// implements it with whatever credential it holds (a token, or a GitHub App's installation
/// token), in src/observe/scalesets.rs.
pub trait RegistrationTokenSource: Send + Sync {
    /// A fresh registration token (`POST .../actions/runners/registration-token`).
    fn registration_token(&self) -> BoxFuture<'_, Result<Secret, ScaleSetError>>;
}

/// The Actions service's URL and the admin token for it.
pub(crate) struct AdminToken {
    pub service_url: String,
    pub token: Secret,
    pub expires_at: SystemTime,
}

impl AdminToken {
    /// Usable for at least `margin` more.
    pub fn is_fresh(&self, margin: Duration, now: SystemTime) -> bool {
        now.checked_add(margin)
            .is_some_and(|later| later < self.expires_at)
    }
}

/// The `exp` claim of a JWT, read without checking the signature (fleet only needs to know when
/// to ask for a new one; the service checks the signature).
pub(crate) fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// When an admin token stops being usable, by its `exp` or, if it has none fleet can read,
/// `UNKNOWN_EXPIRY` from now.
pub(crate) fn admin_expiry(token: &str, now: SystemTime) -> SystemTime {
    jwt_expiry(token).unwrap_or_else(|| {
        tracing::debug!("the Actions service admin token has no readable expiry");
        now + UNKNOWN_EXPIRY
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_the_expiry_of_a_jwt() {
        let at = jwt_expiry(&jwt(r#"{"exp": 2000000000, "iss": "x"}"#));
        assert_eq!(
            at,
            UNIX_EPOCH.checked_add(Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry(&jwt(r#"{"iss": "x"}"#)), None);
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }

    #[test]
    fn a_token_is_refreshed_before_it_expires() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let token = AdminToken {
            service_url: "https://x".into(),
            token: Secret::new("t"),
            expires_at: now + Duration::from_secs(90),
        };
        assert!(token.is_fresh(Duration::from_secs(60), now));
        assert!(!token.is_fresh(Duration::from_secs(60), now + Duration::from_secs(30)));
        assert_eq!(
            admin_expiry("opaque", now),
            now + UNKNOWN_EXPIRY,
            "an unreadable token is used for a while, then exchanged"
        );
    }
}
