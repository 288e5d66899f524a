//! Small helpers: clock, timestamps, random tokens, JWT payloads.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngExt as _;
use rand::rngs::StdRng;

/// Seconds since the Unix epoch; a clock before 1970 reads as 0.
pub(crate) fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the form GitHub uses for installation tokens.
pub(crate) fn rfc3339(epoch: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(epoch);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `YYYY-MM-DDTHH:MM:SS.000+00:00`, the form GitHub uses for runner registration tokens.
pub(crate) fn rfc3339_millis(epoch: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(epoch);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.000+00:00")
}

/// Splits epoch seconds into a UTC calendar date and time (Howard Hinnant's `civil_from_days`).
fn civil(epoch: u64) -> (i64, u32, u32, u64, u64, u64) {
    let secs_of_day = epoch % 86_400;
    let days = i64::try_from(epoch / 86_400).unwrap_or(0);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    )
}

/// A random string over `alphabet`, drawn from the seeded generator.
pub(crate) fn random_string(rng: &mut StdRng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .filter_map(|_| {
            let i = rng.random_range(0..alphabet.len());
            alphabet.get(i).copied().map(char::from)
        })
        .collect()
}

pub(crate) const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub(crate) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A request id shaped like GitHub's `x-github-request-id` (`C0DE:1F2E3D:4A5B6C:7D8E9F:65A1B2C3`).
pub(crate) fn request_id(rng: &mut StdRng) -> String {
    format!(
        "{:04X}:{:06X}:{:07X}:{:07X}:{:08X}",
        rng.random_range(0..0x1_0000u32),
        rng.random_range(0..0x100_0000u32),
        rng.random_range(0..0x1000_0000u32),
        rng.random_range(0..0x1000_0000u32),
        rng.random_range(0..=u32::MAX),
    )
}

/// A JWT-shaped token (`header.payload.signature`, base64url) whose payload is `claims` and
/// whose signature is `signature` (random: nothing verifies it).
pub(crate) fn fake_jwt(claims: &serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A UUID-shaped id (8-4-4-4-12 lower-case hex) from 32 random alphanumerics.
pub(crate) fn uuid(random: &str) -> String {
    let hex: String = random
        .bytes()
        .map(|b| char::from(b"0123456789abcdef"[usize::from(b % 16)]))
        .collect();
    let part = |from: usize, to: usize| hex.get(from..to).unwrap_or("0");
    format!(
        "{}-{}-{}-{}-{}",
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32)
    )
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text.trim()).ok()
}

/// Why an App JWT was refused; each maps to the message GitHub answers with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JwtError {
    Undecodable,
    Expired,
    WrongIssuer,
}

/// Checks an App JWT's payload: `iss` must name the app (number or string) and `exp` lie in the
/// future. The signature is not verified: the fake has no private key to check it against.
pub(crate) fn check_app_jwt(jwt: &str, app_id: u64, now: u64) -> Result<(), JwtError> {
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Undecodable);
    };
    // Some encoders pad base64url; GitHub's own libraries do not, so accept both.
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| JwtError::Undecodable)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| JwtError::Undecodable)?;
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .ok_or(JwtError::Expired)?;
    if exp <= now {
        return Err(JwtError::Expired);
    }
    let iss = match claims.get("iss") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    if iss == Some(app_id) {
        Ok(())
    } else {
        Err(JwtError::WrongIssuer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_468_275_250), "2016-07-11T22:14:10Z");
        assert_eq!(rfc3339(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(
            rfc3339_millis(1_579_723_415),
            "2020-01-22T20:03:35.000+00:00"
        );
    }

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn ids_look_like_uuids() {
        let id = uuid("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef");
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn fake_jwts_carry_their_claims() {
        let jwt = fake_jwt(&serde_json::json!({"exp": 5}), "sig");
        let payload = jwt.split('.').nth(1).expect("payload");
        let claims = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
        assert_eq!(claims, br#"{"exp":5}"#);
    }

    #[test]
    fn checks_jwt_claims() {
        assert_eq!(check_app_jwt(&jwt(r#"{"iss":7,"exp":100}"#), 7, 50), Ok(()));
        assert_eq!(
            check_app_jwt(&jwt(r#"{"iss":"7","exp":100}"#), 7, 50),
            Ok(())
        );
        assert_eq!(
            check_app_jwt(&jwt(r#"{"iss":7,"exp":100}"#), 7, 100),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check_app_jwt(&jwt(r#"{"iss":8,"exp":100}"#), 7, 50),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(check_app_jwt("nope", 7, 50), Err(JwtError::Undecodable));
    }
}
