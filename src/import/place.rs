//! Where runners register: a repository or an organization, on github.com or a GitHub
//! Enterprise Server, read from a runner's variables or a git remote URL.

use super::detect::Build;
use super::env::{self, EnvVar, Interpolated};
use super::report::{Finding, Tag};

/// GitHub's public host.
pub const GITHUB_COM: &str = "github.com";

/// A repository (`owner/name`) or an organization.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Repo(String),
    Org(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Repo(repo) => write!(f, "repository {repo}"),
            Scope::Org(org) => write!(f, "organization {org}"),
        }
    }
}

/// Where a runner registers, and which setting said so.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    /// The GitHub host, lower-case: `github.com` or an Enterprise Server's.
    pub host: String,
    pub scope: Scope,
}

impl Place {
    /// The REST API of the place's host: `None` for github.com (fleet's default).
    pub fn api_url(&self) -> Option<String> {
        (self.host != GITHUB_COM).then(|| format!("https://{}/api/v3", self.host))
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host == GITHUB_COM {
            write!(f, "{}", self.scope)
        } else {
            write!(f, "{} on {}", self.scope, self.host)
        }
    }
}

/// Whether `repo` is `owner/name` as the spec's schema accepts it.
pub fn valid_repo(repo: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    matches!(repo.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
}

/// Whether `org` is an organization name as the spec's schema accepts it.
pub fn valid_org(org: &str) -> bool {
    let mut chars = org.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Host and path segments of a GitHub URL: `https://[user@]host[:port]/a/b(.git)`,
/// `ssh://git@host[:port]/a/b.git`, `git://host/a/b`, or scp-like `git@host:a/b.git`.
/// Credentials in the URL are dropped, never returned.
pub fn parse_url(url: &str) -> Option<(String, Vec<String>)> {
    let url = url.trim();
    let (authority, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            if !matches!(scheme, "https" | "http" | "ssh" | "git" | "git+ssh") {
                return None;
            }
            rest.split_once('/').unwrap_or((rest, ""))
        }
        // scp-like syntax: [user@]host:path, with no slash before the colon.
        None => {
            let (authority, path) = url.split_once(':')?;
            if authority.contains('/') || authority.is_empty() {
                return None;
            }
            (authority, path)
        }
    };
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host = host_port.split(':').next().unwrap_or(host_port);
    if host.is_empty() {
        return None;
    }
    let mut segments: Vec<String> = path
        .split(['/', '?', '#'])
        .take_while(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(last) = segments.last_mut()
        && let Some(stripped) = last.strip_suffix(".git")
    {
        *last = stripped.to_string();
    }
    Some((host.to_ascii_lowercase(), segments))
}

/// The place a URL names: two path segments are a repository, one an organization.
pub fn place_from_url(url: &str) -> Result<Place, String> {
    let Some((host, segments)) = parse_url(url) else {
        return Err("it is not a URL fleet can read".into());
    };
    let scope = match segments.as_slice() {
        [first, ..] if first == "enterprises" => {
            return Err(
                "it names an enterprise: fleet registers runners on a repository or an organization"
                    .into(),
            );
        }
        [owner, name, ..] if valid_repo(&format!("{owner}/{name}")) => {
            Scope::Repo(format!("{owner}/{name}"))
        }
        [org] if valid_org(org) => Scope::Org(org.clone()),
        _ => return Err("it names no repository or organization".into()),
    };
    Ok(Place { host, scope })
}

/// Variables holding a runner's registration URL, in the order they are read.
const URL_VARIABLES: &[&str] = &[
    "REPO_URL",
    "RUNNER_REPOSITORY_URL",
    "RUNNER_REPO_URL",
    "REPOSITORY_URL",
    "RUNNER_ORGANIZATION_URL",
    "RUNNER_URL",
    "GITHUB_REPOSITORY_URL",
    "ACTIONS_RUNNER_INPUT_URL",
    "GITHUB_URL",
];

/// Variables that say where a runner registers; all of them are consumed.
pub const PLACE_VARIABLES: &[&str] = &[
    "REPO_URL",
    "RUNNER_REPOSITORY_URL",
    "RUNNER_REPO_URL",
    "REPOSITORY_URL",
    "RUNNER_ORGANIZATION_URL",
    "RUNNER_URL",
    "GITHUB_REPOSITORY_URL",
    "ACTIONS_RUNNER_INPUT_URL",
    "GITHUB_URL",
    "GITHUB_HOST",
    "GITHUB_OWNER",
    "GITHUB_REPOSITORY",
    "GITHUB_ORG",
    "ORG_NAME",
    "RUNNER_SCOPE",
    "ENTERPRISE_NAME",
];

/// Where one runner service registers, with the setting that said so, and what could not be
/// read.
pub fn find(env: &[EnvVar], build: Option<&Build>) -> (Option<(Place, String)>, Vec<Finding>) {
    let mut findings = Vec::new();
    let literal = |name: &str| {
        env::get(env, name).and_then(|raw| match env::interpolate(raw) {
            Interpolated::FromShell { .. } => None,
            other => other.value().map(str::to_string),
        })
    };
    let host = literal("GITHUB_HOST")
        .map(|h| h.trim_end_matches('/').to_ascii_lowercase())
        .unwrap_or_else(|| GITHUB_COM.to_string());
    let scope = literal("RUNNER_SCOPE").unwrap_or_default().to_lowercase();
    if scope.starts_with("ent") {
        findings.push(Finding::new(
            Tag::LeftOut,
            "RUNNER_SCOPE=enterprise: fleet registers runners on a repository or an organization, not an enterprise",
        ));
        return (None, findings);
    }
    let org_from = |name: &str| {
        literal(name).filter(|org| valid_org(org)).map(|org| {
            (
                Place {
                    host: host.clone(),
                    scope: Scope::Org(org),
                },
                name.to_string(),
            )
        })
    };
    if scope.starts_with("org")
        && let Some(found) = org_from("ORG_NAME")
    {
        return (Some(found), findings);
    }
    for name in URL_VARIABLES {
        let Some(raw) = env::get(env, name) else {
            continue;
        };
        if let Interpolated::FromShell { vars } = env::interpolate(raw) {
            findings.push(Finding::new(
                Tag::LeftOut,
                format!("{name} takes its value from the shell or .env (${{{}}}) at `docker compose up`: where it registers is not in the compose file", vars.join("}, ${")),
            ));
            continue;
        }
        match place_from_url(raw) {
            Ok(place) => return (Some((place, name.to_string())), findings),
            Err(why) => findings.push(Finding::new(Tag::LeftOut, format!("{name}: {why}"))),
        }
    }
    if let Some(repo) = literal("GITHUB_REPOSITORY") {
        let repo = match literal("GITHUB_OWNER") {
            Some(owner) if !repo.contains('/') => format!("{owner}/{repo}"),
            _ => repo,
        };
        if valid_repo(&repo) {
            let place = Place {
                host: host.clone(),
                scope: Scope::Repo(repo),
            };
            return (Some((place, "GITHUB_REPOSITORY".into())), findings);
        }
    }
    if let Some(found) = org_from("ORG_NAME").or_else(|| org_from("GITHUB_ORG")) {
        return (Some(found), findings);
    }
    let scanned = build.into_iter().flat_map(|b| &b.registering);
    for file in scanned {
        if let Some(url) = &file.url
            && let Ok(place) = place_from_url(url)
        {
            return (
                Some((place, format!("config.sh --url in {}", file.shown))),
                findings,
            );
        }
    }
    (None, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls() {
        let repo = |host: &str, r: &str| Place {
            host: host.into(),
            scope: Scope::Repo(r.into()),
        };
        for (url, want) in [
            (
                "https://github.com/acme/zquic.git",
                repo("github.com", "acme/zquic"),
            ),
            (
                "https://github.com/acme/zquic",
                repo("github.com", "acme/zquic"),
            ),
            (
                "https://x:ghp_secret@github.com/acme/zquic/",
                repo("github.com", "acme/zquic"),
            ),
            (
                "git@github.com:acme/zquic.git",
                repo("github.com", "acme/zquic"),
            ),
            (
                "ssh://git@github.com:22/acme/zquic.git",
                repo("github.com", "acme/zquic"),
            ),
            (
                "git://GitHub.com/acme/zquic",
                repo("github.com", "acme/zquic"),
            ),
            (
                "https://ghe.acme.lan/tools/ci",
                repo("ghe.acme.lan", "tools/ci"),
            ),
            (
                "https://github.com/acme/zquic/tree/main",
                repo("github.com", "acme/zquic"),
            ),
        ] {
            assert_eq!(place_from_url(url), Ok(want), "{url}");
        }
        assert_eq!(
            place_from_url("https://github.com/acme").map(|p| p.scope),
            Ok(Scope::Org("acme".into()))
        );
        assert!(place_from_url("https://github.com/enterprises/big").is_err());
        assert!(place_from_url("/srv/git/zquic").is_err());
        assert!(place_from_url("https://github.com/").is_err());
    }

    #[test]
    fn credentials_in_urls_never_come_back() {
        let (host, segments) =
            parse_url("https://user:hunter2@github.com/acme/zquic").expect("parses");
        assert_eq!(host, "github.com");
        assert!(!format!("{segments:?}").contains("hunter2"));
    }
}
