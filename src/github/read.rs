//! Reads: the runners registered at the scope, its runner groups, one runner by name.

use std::collections::BTreeMap;

use http::Method;
use serde::Deserialize;

use super::http::{decode, url_encode};
use super::{GithubClient, GithubError, GithubScope};
use crate::state::GithubRunner;

/// GitHub's runner registrations, read-only.
#[derive(Clone)]
pub struct GithubRead {
    client: GithubClient,
}

impl GithubClient {
    /// The read side of this client.
    pub fn read(&self) -> GithubRead {
        GithubRead {
            client: self.clone(),
        }
    }
}

impl GithubRead {
    /// Every runner registered at the scope, every page (100 a page), sorted by id. A list
    /// whose `total_count` moved between its pages (ephemeral runners come and go while it is
    /// read, shifting the pages) is read again, up to `LIST_READS` times in all.
    pub async fn list_runners(&self) -> Result<Vec<GithubRunner>, GithubError> {
        let first = format!(
            "{}?per_page=100",
            self.client.scoped_url("/actions/runners")
        );
        let mut counts = Vec::new();
        for _ in 0..LIST_READS {
            let pages: Vec<RunnerPage> = self.client.get_all_pages(&first, "list-runners").await?;
            counts = pages.iter().filter_map(|p| p.total_count).collect();
            if counts.windows(2).all(|w| w[0] == w[1]) {
                return Ok(runners_of(pages));
            }
            tracing::debug!(
                "GitHub's runner list changed while it was read (total_count {counts:?}); reading it again"
            );
        }
        Err(GithubError::Pagination {
            first,
            reason: format!(
                "its total_count moved between pages {LIST_READS} times in a row (last {counts:?})"
            ),
        })
    }
}

/// How many times fleet reads a list whose `total_count` moves between pages.
const LIST_READS: usize = 3;

fn runners_of(pages: Vec<RunnerPage>) -> Vec<GithubRunner> {
    let mut runners: Vec<GithubRunner> = pages
        .into_iter()
        .flat_map(|p| p.runners)
        .map(RunnerJson::into_runner)
        .collect();
    runners.sort_by_key(|r| r.id);
    runners.dedup_by_key(|r| r.id);
    runners
}

/// The id of runner group `name` among `groups` (from [`GithubRead::runner_groups`]), and its
/// name as GitHub spells it. GitHub compares group names without regard to case.
pub fn find_group<'a>(groups: &'a BTreeMap<String, u64>, name: &str) -> Option<(&'a str, u64)> {
    groups
        .get_key_value(name)
        .or_else(|| groups.iter().find(|(g, _)| g.eq_ignore_ascii_case(name)))
        .map(|(g, id)| (g.as_str(), *id))
}

impl GithubRead {
    /// Runner groups by name (organization scope; a repository has only the default group).
    pub async fn runner_groups(&self) -> Result<BTreeMap<String, u64>, GithubError> {
        if !matches!(self.client.scope(), GithubScope::Org(_)) {
            return Ok(BTreeMap::new());
        }
        #[derive(Deserialize)]
        struct Group {
            id: u64,
            name: String,
        }
        #[derive(Deserialize)]
        struct Page {
            runner_groups: Vec<Group>,
        }
        let first = format!(
            "{}?per_page=100",
            self.client.scoped_url("/actions/runner-groups")
        );
        let pages: Vec<Page> = self
            .client
            .get_all_pages(&first, "list-runner-groups")
            .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.runner_groups)
            .map(|g| (g.name, g.id))
            .collect())
    }

    /// The runner registered under `name`, if any (`GET .../actions/runners?name=`).
    pub async fn runner_by_name(&self, name: &str) -> Result<Option<GithubRunner>, GithubError> {
        let url = format!(
            "{}?name={}&per_page=100",
            self.client.scoped_url("/actions/runners"),
            url_encode(name)
        );
        let answer = self
            .client
            .send(Method::GET, &url, None, "list-runners")
            .await?;
        let page: RunnerPage = decode(&url, &answer.body)?;
        Ok(page
            .runners
            .into_iter()
            .find(|r| r.name == name)
            .map(RunnerJson::into_runner))
    }

    /// The version of the Linux x64 runner GitHub offers for download
    /// (`GET .../actions/runners/downloads`), read from its file name
    /// (`actions-runner-linux-x64-2.336.0.tar.gz`); `None` when the list has no such file.
    pub async fn latest_runner_version(&self) -> Result<Option<String>, GithubError> {
        let url = self.client.scoped_url("/actions/runners/downloads");
        let answer = self
            .client
            .send(Method::GET, &url, None, "runner-downloads")
            .await?;
        let apps: Vec<RunnerApplication> = decode(&url, &answer.body)?;
        Ok(apps
            .iter()
            .find(|a| a.os == "linux" && a.architecture == "x64")
            .and_then(|a| runner_version_of(&a.filename)))
    }
}

/// A runner application GitHub offers for download (`runner-application`).
#[derive(Deserialize)]
struct RunnerApplication {
    os: String,
    architecture: String,
    filename: String,
}

/// The version in a runner archive's file name: `actions-runner-linux-x64-2.336.0.tar.gz`.
fn runner_version_of(filename: &str) -> Option<String> {
    let version = filename
        .strip_prefix("actions-runner-linux-x64-")?
        .strip_suffix(".tar.gz")?;
    let parts: Vec<&str> = version.split('.').collect();
    (parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| version.to_string())
}

#[cfg(test)]
mod version_tests {
    #[test]
    fn runner_versions_from_file_names() {
        let of = super::runner_version_of;
        assert_eq!(
            of("actions-runner-linux-x64-2.336.0.tar.gz").as_deref(),
            Some("2.336.0")
        );
        assert_eq!(of("actions-runner-osx-x64-2.336.0.tar.gz"), None);
        assert_eq!(of("actions-runner-linux-x64-2.336.tar.gz"), None);
        assert_eq!(of("actions-runner-linux-x64-2.x.0.tar.gz"), None);
    }
}

/// A runner as GitHub's list endpoints describe it (the fields fleet reads).
#[derive(Deserialize)]
struct RunnerJson {
    id: u64,
    name: String,
    status: String,
    busy: bool,
    labels: Vec<LabelJson>,
    #[serde(default)]
    runner_group_id: Option<u64>,
}

#[derive(Deserialize)]
struct LabelJson {
    name: String,
}

#[derive(Deserialize)]
struct RunnerPage {
    #[serde(default)]
    total_count: Option<u64>,
    runners: Vec<RunnerJson>,
}

impl RunnerJson {
    fn into_runner(self) -> GithubRunner {
        GithubRunner {
            id: self.id,
            name: self.name,
            online: self.status == "online",
            busy: self.busy,
            labels: self.labels.into_iter().map(|l| l.name).collect(),
            runner_group_id: self.runner_group_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_match_as_github_compares_them() {
        let groups = BTreeMap::from([("Default".to_string(), 1), ("GPU-Hosts".to_string(), 7)]);
        assert_eq!(find_group(&groups, "gpu-hosts"), Some(("GPU-Hosts", 7)));
        assert_eq!(find_group(&groups, "default"), Some(("Default", 1)));
        assert_eq!(find_group(&groups, "cpu"), None);
    }
}
