//! Small helpers for GitHub's HTTP answers: pagination links, headers, JSON bodies, errors.

use http::HeaderMap;
use serde::de::DeserializeOwned;

use super::GithubError;

pub(super) fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
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

pub(super) fn decode<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, GithubError> {
    serde_json::from_slice(body).map_err(|e| GithubError::Decode {
        url: url.to_string(),
        message: e.to_string(),
    })
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
}
