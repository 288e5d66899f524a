//! The GitHub API fleet trusts with its credentials: the machine's `GITHUB_API_URL`, else
//! https://api.github.com. fleet.yaml may repeat it (`github.api_url`) but never choose it: a
//! spec that names another API is refused before any request (docs/security.md). Every URL a
//! request goes to is checked against this endpoint, so no credential ever leaves it.

use std::net::IpAddr;

use http::Uri;

use super::GithubError;
use crate::spec::DEFAULT_API_URL;

/// The environment variable that names the API this machine trusts.
pub const API_URL_ENV: &str = "GITHUB_API_URL";

/// A checked API base URL: `https://`, or `http://` on a loopback host only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// Without a trailing slash.
    url: String,
    scheme: String,
    host: String,
    port: u16,
    /// The path under which every endpoint lives (`/api/v3` on GitHub Enterprise Server), or "".
    base_path: String,
}

impl ApiEndpoint {
    /// Checks `url`; `from` says where it came from (`GITHUB_API_URL`, `github.api_url`), for
    /// the error.
    pub fn parse(url: &str, from: &str) -> Result<ApiEndpoint, GithubError> {
        let bad = |reason: &str| GithubError::BadApiUrl {
            from: from.to_string(),
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim_end_matches('/');
        let uri: Uri = trimmed
            .parse()
            .map_err(|_| bad("not a URL like https://api.github.com"))?;
        let scheme = uri
            .scheme_str()
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| bad("not a URL like https://api.github.com"))?;
        if scheme != "https" && scheme != "http" {
            return Err(bad(
                "only https:// (or http:// on a loopback host) is accepted",
            ));
        }
        let authority = uri.authority().ok_or_else(|| bad("it names no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "it carries a user name or password; credentials never go in a URL",
            ));
        }
        if uri.query().is_some() {
            return Err(bad("an API base URL has no query string"));
        }
        let host = authority.host().to_ascii_lowercase();
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        if scheme == "http" && !is_loopback(&host) {
            return Err(bad(
                "http:// is accepted only for a loopback host (127.0.0.0/8, ::1, localhost): credentials would cross the network in clear text",
            ));
        }
        Ok(ApiEndpoint {
            url: trimmed.to_string(),
            scheme,
            host,
            port,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The API this machine trusts: `GITHUB_API_URL` when set, else https://api.github.com.
    pub fn trusted(
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<ApiEndpoint, GithubError> {
        match env(API_URL_ENV).filter(|u| !u.trim().is_empty()) {
            Some(url) => ApiEndpoint::parse(url.trim(), API_URL_ENV),
            None => ApiEndpoint::parse(DEFAULT_API_URL, "the default API URL"),
        }
    }

    /// The spec's `github.api_url`, if any, must be this endpoint (a trailing slash aside).
    pub fn admit_spec_url(
        &self,
        spec_url: Option<&str>,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<(), GithubError> {
        let Some(spec_url) = spec_url else {
            return Ok(());
        };
        let spec = ApiEndpoint::parse(spec_url, "github.api_url in fleet.yaml")?;
        if spec.url == self.url {
            return Ok(());
        }
        let trusted_from = if env(API_URL_ENV).is_some_and(|u| !u.trim().is_empty()) {
            format!("{API_URL_ENV} on this machine")
        } else {
            format!("the default, as {API_URL_ENV} is not set on this machine")
        };
        Err(GithubError::UntrustedApiUrl {
            spec: spec.url,
            trusted: self.url.clone(),
            trusted_from,
        })
    }

    /// The URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The path and query of `url`, which must be on this endpoint (same scheme, host and port,
    /// under its base path): the only form in which a request leaves fleet.
    pub(super) fn relative(&self, url: &str) -> Result<String, GithubError> {
        let foreign = || GithubError::ForeignUrl {
            url: url.to_string(),
            api_url: self.url.clone(),
        };
        let uri: Uri = url.parse().map_err(|_| foreign())?;
        let authority = uri.authority().ok_or_else(foreign)?;
        let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
        let port = authority.port_u16().or(match scheme.as_deref() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        let same_origin = scheme.as_deref() == Some(self.scheme.as_str())
            && !authority.as_str().contains('@')
            && authority.host().eq_ignore_ascii_case(&self.host)
            && port == Some(self.port);
        let path = uri.path();
        let under_base = self.base_path.is_empty()
            || path == self.base_path
            || path
                .strip_prefix(&self.base_path)
                .is_some_and(|rest| rest.starts_with('/'));
        if !same_origin || !under_base {
            return Err(foreign());
        }
        Ok(uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| path.to_string()))
    }
}

/// 127.0.0.0/8, ::1 and `localhost`: the only hosts plain http:// may reach.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(url: Option<&'static str>) -> impl Fn(&str) -> Option<String> + Sync {
        move |k: &str| {
            (k == API_URL_ENV)
                .then_some(url)
                .flatten()
                .map(str::to_string)
        }
    }

    #[test]
    fn the_machine_decides_and_github_com_is_the_default() {
        let trusted = ApiEndpoint::trusted(&env_with(None)).expect("default");
        assert_eq!(trusted.url(), "https://api.github.com");
        let ghes =
            ApiEndpoint::trusted(&env_with(Some("https://ghe.example/api/v3/"))).expect("GHES");
        assert_eq!(ghes.url(), "https://ghe.example/api/v3");
    }

    #[test]
    fn a_spec_may_repeat_the_trusted_url_but_not_choose_another() {
        let env = env_with(Some("http://127.0.0.1:8080"));
        let trusted = ApiEndpoint::trusted(&env).expect("loopback");
        trusted.admit_spec_url(None, &env).expect("no api_url");
        trusted
            .admit_spec_url(Some("http://127.0.0.1:8080/"), &env)
            .expect("the same, with a trailing slash");
        match trusted.admit_spec_url(Some("http://127.0.0.1:9090"), &env) {
            Err(GithubError::UntrustedApiUrl {
                spec,
                trusted,
                trusted_from,
            }) => {
                assert_eq!(spec, "http://127.0.0.1:9090");
                assert_eq!(trusted, "http://127.0.0.1:8080");
                assert_eq!(trusted_from, "GITHUB_API_URL on this machine");
            }
            other => panic!("expected UntrustedApiUrl, got {other:?}"),
        }
        let default = ApiEndpoint::trusted(&env_with(None)).expect("default");
        let error = default
            .admit_spec_url(Some("https://evil.example"), &env_with(None))
            .expect_err("another host");
        assert!(
            error.to_string().contains("https://evil.example"),
            "{error}"
        );
        assert!(
            error.to_string().contains("https://api.github.com"),
            "{error}"
        );
        let hint = error.hint().expect("a hint");
        assert!(
            hint.contains("GITHUB_API_URL") && hint.contains("remove"),
            "{hint}"
        );
    }

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:3000",
            "http://127.9.8.7",
            "http://[::1]:8080",
            "http://localhost:1234/api/v3",
            "https://github.example",
        ] {
            ApiEndpoint::parse(ok, "test").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://api.github.com",
            "http://10.0.0.1:8080",
            "http://128.0.0.1",
            "http://localhost.evil.example",
            "ftp://127.0.0.1",
            "ftp://127.0.0.1:21",
            "https://user:pass@github.example",
            "api.github.com",
            "",
        ] {
            match ApiEndpoint::parse(bad, "GITHUB_API_URL") {
                Err(GithubError::BadApiUrl { from, .. }) => assert_eq!(from, "GITHUB_API_URL"),
                other => panic!("{bad}: expected BadApiUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn only_urls_on_the_endpoint_become_requests() {
        let ghes = ApiEndpoint::parse("https://ghe.example/api/v3", "test").expect("GHES");
        assert_eq!(
            ghes.relative("https://ghe.example/api/v3/repos/a/b/actions/runners?page=2")
                .expect("same origin"),
            "/api/v3/repos/a/b/actions/runners?page=2"
        );
        assert_eq!(
            ghes.relative("https://GHE.example:443/api/v3/x")
                .expect("default port"),
            "/api/v3/x"
        );
        for foreign in [
            "https://evil.example/api/v3/x",
            "http://ghe.example/api/v3/x",
            "https://ghe.example:8443/api/v3/x",
            "https://ghe.example/api/v30/x",
            "https://ghe.example/other",
            "https://token@ghe.example/api/v3/x",
            "/api/v3/x",
            "not a url",
        ] {
            assert!(
                matches!(ghes.relative(foreign), Err(GithubError::ForeignUrl { .. })),
                "{foreign} was accepted"
            );
        }
    }
}
