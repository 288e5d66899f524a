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
