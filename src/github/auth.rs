//! Where fleet talks to GitHub and as whom: the scope (repository or organization) and the
//! credentials, read from the spec and the environment. Secrets never leave these types in a
//! printable form.

use std::fmt;

use super::GithubError;
use super::endpoint::ApiEndpoint;
use crate::spec::{DEFAULT_TOKEN_ENV, Spec};

/// Repository or organization: where runners and scale sets are registered. One type for the
/// REST client and the scale set client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GithubScope {
    Repo { owner: String, repo: String },
    Org(String),
}

impl GithubScope {
    /// The REST path prefix of this scope, e.g. `/repos/acme/app`.
    pub fn api_path(&self) -> String {
        match self {
            GithubScope::Repo { owner, repo } => format!("/repos/{owner}/{repo}"),
            GithubScope::Org(org) => format!("/orgs/{org}"),
        }
    }

    /// The path GitHub's web URL has for this scope, e.g. `/acme/app`.
    pub fn web_path(&self) -> String {
        match self {
            GithubScope::Repo { owner, repo } => format!("/{owner}/{repo}"),
            GithubScope::Org(org) => format!("/{org}"),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            GithubScope::Repo { owner, repo } => format!("repository {owner}/{repo}"),
            GithubScope::Org(org) => format!("organization {org}"),
        }
    }
}

impl fmt::Display for GithubScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// How credentials are obtained. The secret itself never leaves this type in a printable form.
pub enum Credentials {
    Token(String),
    App {
        app_id: u64,
        installation_id: u64,
        key_pem: Vec<u8>,
        key_path: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::App {
                app_id,
                installation_id,
                key_path,
                ..
            } => write!(
                f,
                "App {{ app_id: {app_id}, installation_id: {installation_id}, key: {key_path} }}"
            ),
        }
    }
}

/// The API, scope and credentials of a spec. The API is the one this machine trusts
/// (`endpoint.rs`); a spec `api_url` that names another is an error, before any request.
/// `env` reads environment variables (a parameter so tests need not touch the process's
/// environment).
pub fn from_spec(
    spec: &Spec,
    base_dir: &std::path::Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<(ApiEndpoint, GithubScope, Credentials), GithubError> {
    let endpoint = ApiEndpoint::trusted(env)?;
    endpoint.admit_spec_url(spec.github.api_url.as_deref(), env)?;
    Ok((
        endpoint,
        scope_of(spec),
        credentials_of(spec, base_dir, env)?,
    ))
}

fn scope_of(spec: &Spec) -> GithubScope {
    match (&spec.github.repo, &spec.github.org) {
        (Some(repo), _) => {
            let (owner, name) = repo.split_once('/').unwrap_or((repo, ""));
            GithubScope::Repo {
                owner: owner.to_string(),
                repo: name.to_string(),
            }
        }
        (None, Some(org)) => GithubScope::Org(org.clone()),
        (None, None) => GithubScope::Org(String::new()),
    }
}

fn credentials_of(
    spec: &Spec,
    base_dir: &std::path::Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Credentials, GithubError> {
    let auth = spec.github.auth.as_ref();
    if let Some(app) = auth.and_then(|a| a.app.as_ref()) {
        let path = base_dir.join(&app.private_key_file);
        // Small and checked (a regular file, private, at most 64 KiB), and read off the async
        // workers when there are several (a file system can still be slow).
        let key_pem =
            off_the_runtime(|| crate::named_file::read_private_key(&path)).map_err(|refused| {
                refused.logged("the GitHub App private key");
                GithubError::AppKey {
                    path: path.display().to_string(),
                }
            })?;
        return Ok(Credentials::App {
            app_id: app.app_id,
            installation_id: app.installation_id,
            key_pem,
            key_path: path.display().to_string(),
        });
    }
    let var = auth
        .and_then(|a| a.token_env.clone())
        .unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_string());
    match env(&var).filter(|t| !t.trim().is_empty()) {
        Some(token) => Ok(Credentials::Token(token.trim().to_string())),
        None => Err(GithubError::MissingToken { var }),
    }
}

/// The URL a runner registers against with `config.sh --url`, and the scale set service's
/// registration expects: the web address of the repository or organization. The API of
/// github.com (`api.github.com`) and of GHE.com (`api.SUBDOMAIN.ghe.com`) drop `api.`; a GitHub
/// Enterprise Server API (`HOST/api/v3`) drops `/api/v3`; any other (the fake on 127.0.0.1) is
/// taken as it is.
pub fn registration_url(api_url: &str, scope: &GithubScope) -> String {
    let api = api_url.trim_end_matches('/');
    let web = if let Some(host) = api.strip_prefix("https://api.") {
        format!("https://{host}")
    } else if let Some(base) = api.strip_suffix("/api/v3") {
        base.to_owned()
    } else {
        api.to_owned()
    };
    format!("{web}{}", scope.web_path())
}

/// Runs blocking `work` with `tokio::task::block_in_place` on a multi-threaded runtime (the
/// other tasks go on), else as it is (no runtime, or a current-thread one in tests).
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_reads_run_on_either_runtime_and_without_one() {
        assert_eq!(off_the_runtime(|| 1), 1);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        assert_eq!(
            multi.block_on(async {
                tokio::spawn(async { off_the_runtime(|| 2) })
                    .await
                    .expect("task")
            }),
            2
        );
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(current.block_on(async { off_the_runtime(|| 3) }), 3);
    }

    #[test]
    fn credentials_never_print_the_token() {
        let c = Credentials::Token("ghp_supersecret".into());
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn registration_urls_are_web_addresses() {
        let repo = GithubScope::Repo {
            owner: "acme".into(),
            repo: "zq".into(),
        };
        assert_eq!(
            registration_url(crate::spec::DEFAULT_API_URL, &repo),
            "https://github.com/acme/zq"
        );
        assert_eq!(
            registration_url(
                "https://ghe.example/api/v3",
                &GithubScope::Org("acme".into())
            ),
            "https://ghe.example/acme"
        );
        // GHE.com: the API is api.SUBDOMAIN.ghe.com, the web SUBDOMAIN.ghe.com.
        assert_eq!(
            registration_url("https://api.octo.ghe.com/", &repo),
            "https://octo.ghe.com/acme/zq"
        );
        assert_eq!(
            registration_url("http://127.0.0.1:4000", &repo),
            "http://127.0.0.1:4000/acme/zq"
        );
    }
}
