//! Reads of a repository's workflow runs and their jobs: which job a busy runner of a fixed
//! pool is running (`GET /repos/{owner}/{repo}/actions/runs?status=in_progress` and
//! `GET .../actions/runs/{run_id}/jobs`). Both are conditional requests (the client's ETags):
//! an unchanged answer is a 304, which GitHub does not count against the rate limit.

use http::Method;
use serde::Deserialize;

use super::http::decode;
use super::{GithubClient, GithubError, GithubScope};

/// A workflow run, as the runs list describes it (the fields fleet reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkflowRun {
    pub id: u64,
    /// The workflow's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The workflow file (`.github/workflows/build.yml`, sometimes with `@ref`).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub head_branch: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A job of a workflow run (the fields fleet reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkflowJob {
    pub id: u64,
    pub run_id: u64,
    pub name: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    /// The runner that took the job; `None` until one has.
    #[serde(default)]
    pub runner_name: Option<String>,
    #[serde(default)]
    pub workflow_name: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
}

#[derive(Deserialize)]
struct RunPage {
    #[serde(default)]
    workflow_runs: Vec<WorkflowRun>,
}

#[derive(Deserialize)]
struct JobPage {
    #[serde(default)]
    jobs: Vec<WorkflowJob>,
}

impl GithubClient {
    /// `owner/repo` of a repository-scoped client; `None` for an organization (its runs are
    /// spread over its repositories: fleet does not look for jobs there).
    pub fn repository(&self) -> Option<String> {
        match self.scope() {
            GithubScope::Repo { owner, repo } => Some(format!("{owner}/{repo}")),
            GithubScope::Org(_) => None,
        }
    }

    /// The repository's workflow runs in progress, newest first (the first 100: one request).
    pub async fn in_progress_runs(&self) -> Result<Vec<WorkflowRun>, GithubError> {
        let url = format!(
            "{}?status=in_progress&per_page=100",
            self.scoped_url("/actions/runs")
        );
        let answer = self
            .send(Method::GET, &url, None, "list-workflow-runs")
            .await?;
        let page: RunPage = decode(&url, &answer.body)?;
        Ok(page.workflow_runs)
    }

    /// The jobs of the latest attempt of run `run_id` (the first 100: one request).
    pub async fn run_jobs(&self, run_id: u64) -> Result<Vec<WorkflowJob>, GithubError> {
        let url = format!(
            "{}?filter=latest&per_page=100",
            self.scoped_url(&format!("/actions/runs/{run_id}/jobs"))
        );
        let answer = self
            .send(Method::GET, &url, None, "list-workflow-jobs")
            .await?;
        let page: JobPage = decode(&url, &answer.body)?;
        Ok(page.jobs)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fake_github::{Config, FakeGithub, NewWorkflowRun, Scope};

    use super::*;
    use crate::github::{Credentials, RetryPolicy};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runs_job_names_its_runner_and_an_unchanged_list_is_a_free_304() {
        let fake = FakeGithub::start(Config::default()).await.expect("fake");
        let scope = Scope::repo("acme", "zq");
        let repo = GithubScope::Repo {
            owner: "acme".into(),
            repo: "zq".into(),
        };
        let policy = RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(20),
            max_wait: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            rate_limit_wait: Duration::from_secs(1),
        };
        let gh = GithubClient::new(&fake.url(), repo, Credentials::Token(fake.token()), policy)
            .expect("client");
        assert_eq!(gh.repository().as_deref(), Some("acme/zq"));
        assert!(gh.in_progress_runs().await.expect("runs").is_empty());
        let started = fake.start_workflow_run(
            &scope,
            &NewWorkflowRun {
                workflow: "CI".into(),
                path: ".github/workflows/ci.yml".into(),
                branch: "main".into(),
                jobs: vec![
                    ("test".into(), Some("zq-gpu-1".into())),
                    ("lint".into(), None),
                ],
            },
        );
        let runs = gh.in_progress_runs().await.expect("runs");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].id, started.run_id);
        assert_eq!(runs[0].path.as_deref(), Some(".github/workflows/ci.yml"));
        let jobs = gh.run_jobs(started.run_id).await.expect("jobs");
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].runner_name.as_deref(), Some("zq-gpu-1"));
        assert_eq!(jobs[0].status.as_deref(), Some("in_progress"));
        assert_eq!(jobs[1].runner_name, None);
        // Asked again unchanged: a 304, not counted against the rate limit.
        gh.in_progress_runs().await.expect("runs");
        let not_modified = gh
            .stats()
            .by_endpoint()
            .get(&("list-workflow-runs".to_string(), 304))
            .copied();
        assert_eq!(not_modified, Some(1));
        for id in started.job_ids {
            fake.complete_workflow_job(&scope, id, "success")
                .expect("complete");
        }
        assert!(gh.in_progress_runs().await.expect("runs").is_empty());
        fake.shutdown().await;
    }
}
