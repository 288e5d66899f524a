//! A repository's workflow runs and their jobs, as GitHub's REST API lists them
//! (`GET /repos/{owner}/{repo}/actions/runs` and `.../runs/{run_id}/jobs`), in the shapes of
//! the API description's examples. Stateful: a test starts a run whose jobs run on named
//! runners (which turn busy) and completes its jobs (which turn them idle again).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, Uri};
use serde_json::{Value, json};

use crate::api::{base_url, json_response, query_pairs};
use crate::{Scope, Shared, util};

/// A run to start: its workflow and its jobs, each on a runner (by name) or waiting for one.
#[derive(Debug, Clone, Default)]
pub struct NewWorkflowRun {
    /// The workflow's name (`CI`).
    pub workflow: String,
    /// The workflow's file (`.github/workflows/ci.yml`).
    pub path: String,
    pub branch: String,
    /// Each job's name and the runner that takes it (`None`: queued).
    pub jobs: Vec<(String, Option<String>)>,
}

/// A run that was started: its id and its jobs' ids, in the order they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRunInfo {
    pub run_id: u64,
    pub job_ids: Vec<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct Run {
    id: u64,
    workflow: String,
    path: String,
    branch: String,
    created: u64,
    updated: u64,
    jobs: Vec<Job>,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    id: u64,
    name: String,
    runner: Option<String>,
    started: Option<u64>,
    completed: Option<u64>,
    conclusion: Option<String>,
}

impl Run {
    fn status(&self) -> &'static str {
        if self.jobs.iter().all(|j| j.completed.is_some()) {
            "completed"
        } else if self.jobs.iter().any(|j| j.started.is_some()) {
            "in_progress"
        } else {
            "queued"
        }
    }

    fn conclusion(&self) -> Option<&str> {
        if self.status() != "completed" {
            return None;
        }
        let failed = self
            .jobs
            .iter()
            .any(|j| j.conclusion.as_deref() != Some("success"));
        Some(if failed { "failure" } else { "success" })
    }

    fn to_json(&self, base: &str, scope: &Scope) -> Value {
        let repo = scope.runners_path().replace("/actions/runners", "");
        let full_name = repo.trim_start_matches("/repos/");
        json!({
            "id": self.id,
            "name": self.workflow,
            "node_id": format!("WFR_{}", self.id),
            "head_branch": self.branch,
            "head_sha": format!("{:040x}", self.id),
            "path": self.path,
            "run_number": self.id,
            "run_attempt": 1,
            "event": "push",
            "display_title": self.workflow,
            "status": self.status(),
            "conclusion": self.conclusion(),
            "workflow_id": 1000 + self.id % 7,
            "url": format!("{base}{repo}/actions/runs/{}", self.id),
            "html_url": format!("https://github.com/{full_name}/actions/runs/{}", self.id),
            "jobs_url": format!("{base}{repo}/actions/runs/{}/jobs", self.id),
            "created_at": util::rfc3339(self.created),
            "updated_at": util::rfc3339(self.updated),
            "run_started_at": util::rfc3339(self.created),
            "repository": { "full_name": full_name },
        })
    }

    fn job_json(&self, job: &Job, base: &str, scope: &Scope) -> Value {
        let repo = scope.runners_path().replace("/actions/runners", "");
        let full_name = repo.trim_start_matches("/repos/");
        let status = match (job.started, job.completed) {
            (_, Some(_)) => "completed",
            (Some(_), None) => "in_progress",
            _ => "queued",
        };
        json!({
            "id": job.id,
            "run_id": self.id,
            "run_url": format!("{base}{repo}/actions/runs/{}", self.id),
            "node_id": format!("CR_{}", job.id),
            "head_branch": self.branch,
            "head_sha": format!("{:040x}", self.id),
            "url": format!("{base}{repo}/actions/jobs/{}", job.id),
            "html_url": format!("https://github.com/{full_name}/actions/runs/{}/job/{}", self.id, job.id),
            "status": status,
            "conclusion": job.conclusion,
            "created_at": util::rfc3339(self.created),
            "started_at": util::rfc3339(job.started.unwrap_or(self.created)),
            "completed_at": job.completed.map(util::rfc3339),
            "name": job.name,
            "steps": [],
            "labels": ["self-hosted"],
            "runner_id": job.runner.as_ref().map(|_| job.id),
            "runner_name": job.runner,
            "runner_group_id": job.runner.as_ref().map(|_| 1),
            "runner_group_name": job.runner.as_ref().map(|_| "Default"),
            "workflow_name": self.workflow,
        })
    }
}

/// Every scope's runs, by id.
#[derive(Debug, Default)]
pub(crate) struct Workflows {
    runs: BTreeMap<Scope, BTreeMap<u64, Run>>,
    next_id: u64,
}

impl Workflows {
    /// Starts a run; returns it, and the runners its jobs run on.
    pub(crate) fn start(
        &mut self,
        scope: &Scope,
        new: &NewWorkflowRun,
    ) -> (WorkflowRunInfo, Vec<String>) {
        let now = util::now_epoch();
        self.next_id += 1;
        let run_id = 30_000_000 + self.next_id;
        let mut jobs = Vec::new();
        for (name, runner) in &new.jobs {
            self.next_id += 1;
            jobs.push(Job {
                id: 400_000_000 + self.next_id,
                name: name.clone(),
                runner: runner.clone(),
                started: runner.as_ref().map(|_| now),
                completed: None,
                conclusion: None,
            });
        }
        let info = WorkflowRunInfo {
            run_id,
            job_ids: jobs.iter().map(|j| j.id).collect(),
        };
        let runners = jobs.iter().filter_map(|j| j.runner.clone()).collect();
        let run = Run {
            id: run_id,
            workflow: new.workflow.clone(),
            path: new.path.clone(),
            branch: new.branch.clone(),
            created: now,
            updated: now,
            jobs,
        };
        self.runs
            .entry(scope.clone())
            .or_default()
            .insert(run_id, run);
        (info, runners)
    }

    /// Completes job `job_id` with `conclusion`; returns the runner it ran on (`Err`: no such
    /// job, or it was completed already).
    pub(crate) fn complete(
        &mut self,
        scope: &Scope,
        job_id: u64,
        conclusion: &str,
    ) -> Result<Option<String>, String> {
        let now = util::now_epoch();
        let run = self
            .runs
            .get_mut(scope)
            .and_then(|runs| {
                runs.values_mut()
                    .find(|r| r.jobs.iter().any(|j| j.id == job_id))
            })
            .ok_or_else(|| format!("no job {job_id}"))?;
        run.updated = now;
        let job = run
            .jobs
            .iter_mut()
            .find(|j| j.id == job_id)
            .ok_or_else(|| format!("no job {job_id}"))?;
        if job.completed.is_some() {
            return Err(format!("job {job_id} is completed already"));
        }
        job.started.get_or_insert(now);
        job.completed = Some(now);
        job.conclusion = Some(conclusion.to_string());
        Ok(job.runner.clone())
    }

    /// The runs of `scope`, newest first, whose status is `status` (every run: `None`).
    fn list(&self, scope: &Scope, status: Option<&str>) -> Vec<&Run> {
        let mut runs: Vec<&Run> = self
            .runs
            .get(scope)
            .map(|runs| runs.values().collect())
            .unwrap_or_default();
        runs.retain(|r| status.is_none_or(|s| r.status() == s || r.conclusion() == Some(s)));
        runs.reverse();
        runs
    }
}

type Ctx = State<Arc<Shared>>;

fn repo_scope(params: &BTreeMap<String, String>) -> Option<Scope> {
    Some(Scope::repo(
        params.get("owner")?.as_str(),
        params.get("repo")?.as_str(),
    ))
}

fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "message": "Not Found",
            "documentation_url": "https://docs.github.com/rest/actions/workflow-runs",
            "status": "404",
        }),
    )
}

fn page_params(pairs: &[(String, String)]) -> (usize, usize) {
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
    };
    (
        get("page").unwrap_or(1),
        get("per_page").unwrap_or(30).min(100),
    )
}

fn page<T: Clone>(items: &[T], (page, per_page): (usize, usize)) -> Vec<T> {
    items
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .cloned()
        .collect()
}

/// `GET /repos/{owner}/{repo}/actions/runs` (`status`, `per_page`, `page`).
pub(crate) async fn list_runs(
    State(shared): Ctx,
    Path(params): Path<BTreeMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Some(scope) = repo_scope(&params) else {
        return not_found();
    };
    let pairs = query_pairs(&uri);
    let status = pairs
        .iter()
        .find(|(k, _)| k == "status")
        .map(|(_, v)| v.as_str());
    let base = base_url(&headers);
    let state = shared.lock();
    let runs: Vec<Value> = state
        .workflows
        .list(&scope, status)
        .into_iter()
        .map(|r| r.to_json(&base, &scope))
        .collect();
    let body = json!({
        "total_count": runs.len(),
        "workflow_runs": page(&runs, page_params(&pairs)),
    });
    json_response(StatusCode::OK, &body)
}

/// `GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs` (`per_page`, `page`; one attempt
/// per run, so `filter` changes nothing).
pub(crate) async fn list_jobs(
    State(shared): Ctx,
    Path(params): Path<BTreeMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Some(scope) = repo_scope(&params) else {
        return not_found();
    };
    let Some(run_id) = params.get("run_id").and_then(|id| id.parse::<u64>().ok()) else {
        return not_found();
    };
    let base = base_url(&headers);
    let state = shared.lock();
    let Some(run) = state
        .workflows
        .runs
        .get(&scope)
        .and_then(|r| r.get(&run_id))
    else {
        return not_found();
    };
    let jobs: Vec<Value> = run
        .jobs
        .iter()
        .map(|j| run.job_json(j, &base, &scope))
        .collect();
    let body = json!({
        "total_count": jobs.len(),
        "jobs": page(&jobs, page_params(&query_pairs(&uri))),
    });
    json_response(StatusCode::OK, &body)
}
