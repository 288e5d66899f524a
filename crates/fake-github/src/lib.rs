//! A stateful fake of GitHub's self-hosted runner REST API.
//!
//! [`FakeGithub::start`] serves, on 127.0.0.1, the runner endpoints of
//! `api.github.com` at repository and organization scope (list, get, delete, registration and
//! remove tokens, just-in-time configs, labels), organization runner groups, GitHub App
//! installation tokens and `/rate_limit`, answering in the shapes of GitHub's OpenAPI
//! description (`github-api/runners.openapi.json`). On the same port it serves GitHub's runner
//! scale set service (the registration exchange and the Actions service it leads to: scale
//! sets, message sessions, the long-polled job queue, JIT configs), see [`ScaleSetConfig`].
//! Tests steer it in-process through the methods of [`FakeGithub`]; another process steers it
//! through the control API under `/_fake/` (see the crate README).

mod api;
mod control;
pub mod image;
mod scaleset;
mod state;
mod util;
mod workflows;

pub use scaleset::{
    JobDelivery, JobInfo, JobState, QueueJobs, ScaleSetConfig, ScaleSetEndpoint, ScaleSetFault,
    ScaleSetInfo, ScaleSetStatistics,
};
pub use workflows::{NewWorkflowRun, WorkflowRunInfo};

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::State;

/// How the fake is set up when it starts.
#[derive(Clone, Debug)]
pub struct Config {
    /// The API token clients must send (`Authorization: Bearer T` or `token T`).
    pub token: String,
    /// When set, GitHub App authentication (JWT, installation tokens) is available.
    pub app: Option<AppConfig>,
    /// Seeds the generators behind fault injection and tokens, so runs are reproducible.
    pub seed: u64,
    /// The runner scale set service's timings and job delivery.
    pub scaleset: ScaleSetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: "fake-token-for-tests".to_owned(),
            app: None,
            seed: 1,
            scaleset: ScaleSetConfig::default(),
        }
    }
}

/// The one GitHub App the fake knows, installed on every owner and organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppConfig {
    pub app_id: u64,
    pub installation_id: u64,
}

/// Where runners are registered: a repository or an organization.
///
/// Written and parsed as `repo:OWNER/REPO` or `org:ORG` (the control API's form).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Repo { owner: String, repo: String },
    Org(String),
}

impl Scope {
    pub fn repo(owner: impl Into<String>, repo: impl Into<String>) -> Scope {
        Scope::Repo {
            owner: owner.into(),
            repo: repo.into(),
        }
    }

    pub fn org(org: impl Into<String>) -> Scope {
        Scope::Org(org.into())
    }

    /// The API path prefix of this scope's runners, e.g. `/orgs/acme/actions/runners`.
    pub fn runners_path(&self) -> String {
        match self {
            Scope::Repo { owner, repo } => format!("/repos/{owner}/{repo}/actions/runners"),
            Scope::Org(org) => format!("/orgs/{org}/actions/runners"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Repo { owner, repo } => write!(f, "repo:{owner}/{repo}"),
            Scope::Org(org) => write!(f, "org:{org}"),
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        let bad = || format!("scope {s:?} is neither repo:OWNER/REPO nor org:ORG");
        if let Some(rest) = s.strip_prefix("repo:") {
            let (owner, repo) = rest.split_once('/').ok_or_else(bad)?;
            if owner.is_empty() || repo.is_empty() || repo.contains('/') {
                return Err(bad());
            }
            Ok(Scope::repo(owner, repo))
        } else if let Some(org) = s.strip_prefix("org:") {
            if org.is_empty() || org.contains('/') {
                return Err(bad());
            }
            Ok(Scope::org(org))
        } else {
            Err(bad())
        }
    }
}

/// A runner to add directly to the fake's state (bypassing the API).
#[derive(Clone, Debug)]
pub struct NewRunner {
    pub name: String,
    pub labels: Vec<String>,
    pub status_online: bool,
    pub busy: bool,
    pub runner_group_id: u64,
    pub ephemeral: bool,
}

impl Default for NewRunner {
    fn default() -> Self {
        NewRunner {
            name: String::new(),
            labels: Vec::new(),
            status_online: false,
            busy: false,
            runner_group_id: state::DEFAULT_GROUP_ID,
            ephemeral: false,
        }
    }
}

/// What a runner's `config.sh --unattended` sends when it registers with a registration token:
/// `--token`, `--name`, `--labels`, `--runnergroup` and `--replace`.
#[derive(Clone, Debug, Default)]
pub struct RunnerConfiguration {
    /// A registration token from `POST .../actions/runners/registration-token`; it names the
    /// scope the runner joins.
    pub token: String,
    pub name: String,
    /// `--labels`; GitHub's system labels (`self-hosted`, `Linux`, `X64`) are added to them.
    pub labels: Vec<String>,
    /// `--runnergroup`, by name; Default when `None`.
    pub runner_group: Option<String>,
    pub replace: bool,
}

/// A runner as the fake holds it.
#[derive(Clone, Debug, Serialize)]
pub struct RunnerInfo {
    pub id: u64,
    pub name: String,
    /// "online" or "offline".
    pub status: String,
    pub busy: bool,
    pub labels: Vec<String>,
    pub runner_group_id: u64,
    pub ephemeral: bool,
    /// The scale set the runner was registered for, if any (GitHub's REST answers do not say).
    pub scale_set_id: Option<u64>,
}

/// One API request the fake answered (control API requests are not logged).
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`; empty when there was none.
    pub query: String,
    pub status: u16,
    /// Whether the request carried credentials the fake accepts.
    pub authenticated: bool,
    /// Its `User-Agent` and `Accept` headers (empty when missing).
    pub user_agent: String,
    pub accept: String,
}

/// A failure to inflict on API requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a GitHub-like error body; `retry_after` adds `retry-after`.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// 403 with `retry-after` and GitHub's secondary rate limit message.
    SecondaryRateLimit { retry_after: u64 },
    /// Hold the request for 60 s (or until the fake shuts down), then answer 504.
    Timeout,
    /// 403 "Resource not accessible by personal access token" with
    /// `x-accepted-github-permissions: <accepted_permissions>`.
    Forbidden { accepted_permissions: String },
    /// 403 "This installation has been suspended": GitHub's answer to a suspended App's
    /// installation token request.
    Suspended,
    /// 401 about the JWT's `iat`: GitHub's answer when the client's clock is off.
    ClockSkew,
    /// The request is answered as usual, then the `count` oldest runners of every scope are
    /// removed: ephemeral runners that finish between two pages of a list.
    RunnersVanish { count: usize },
}

/// What a just-in-time config carries about its runner, as [`decode_jit_config`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitRunnerSettings {
    pub runner_id: u64,
    pub name: String,
    pub runner_group_id: u64,
    pub work_folder: String,
    /// `https://github.com/OWNER/REPO` or `https://github.com/ORG`.
    pub github_url: String,
}

/// Reads an `encoded_jit_config` the fake issued. Like GitHub's, it is base64 of a JSON object
/// whose `.runner`, `.credentials` and `.credentials_rsaparams` members are base64 JSON files;
/// this decodes `.runner`.
pub fn decode_jit_config(encoded: &str) -> Option<JitRunnerSettings> {
    api::decode_jit_config(encoded)
}

type RequestHook = Arc<dyn Fn(&RequestRecord) + Send + Sync>;

/// What the server tasks share with the [`FakeGithub`] handle.
/// The runner version the fake offers for download until a test sets another.
pub const DEFAULT_RUNNER_VERSION: &str = "2.336.0";

pub(crate) struct Shared {
    state: Mutex<State>,
    hook: Mutex<Option<RequestHook>>,
    shutdown: watch::Receiver<bool>,
    /// Wakes message polls held on the scale set service when something changed.
    scaleset_notify: tokio::sync::Notify,
}

impl Shared {
    /// The state, even if a panicking thread poisoned the lock: every mutation leaves it whole.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, record: RequestRecord) {
        let hook = self
            .hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook(&record);
        }
        self.lock().record(record);
    }

    pub(crate) fn scaleset_notify(&self) -> &tokio::sync::Notify {
        &self.scaleset_notify
    }

    /// Wakes the held message polls: jobs, sessions or scale sets changed.
    pub(crate) fn scaleset_changed(&self) {
        self.scaleset_notify.notify_waiters();
    }

    /// Resolves when the server shuts down.
    pub(crate) async fn stopped(&self) {
        let mut shutdown = self.shutdown.clone();
        // An error means the handle is gone, which is a shutdown too.
        let _ = shutdown.wait_for(|stop| *stop).await;
    }

    /// Sleeps, but wakes early when the server shuts down so held requests do not delay it.
    pub(crate) async fn sleep(&self, duration: Duration) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
}

/// A running fake GitHub. Dropping it (or [`FakeGithub::shutdown`]) stops the server.
pub struct FakeGithub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl FakeGithub {
    /// Starts a server on 127.0.0.1 with a free port.
    pub async fn start(config: Config) -> io::Result<FakeGithub> {
        FakeGithub::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr`, which must be a loopback address.
    pub async fn start_on(config: Config, addr: SocketAddr) -> io::Result<FakeGithub> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to listen on {addr}: only loopback addresses are allowed"),
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config, util::now_epoch())),
            hook: Mutex::new(None),
            shutdown: shutdown.clone(),
            scaleset_notify: tokio::sync::Notify::new(),
        });
        let app = api::router(shared.clone())
            .merge(control::router(shared.clone()))
            .merge(scaleset::router(shared.clone()))
            .merge(scaleset::control_router(shared.clone()));
        let mut graceful = shutdown;
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // An error means the handle is gone, which is a reason to stop too.
                    let _ = graceful.wait_for(|stop| *stop).await;
                })
                .await
        });
        Ok(FakeGithub {
            shared,
            addr,
            stop,
            task: Some(task),
        })
    }

    /// Stops accepting requests and waits (up to 5 s) for the server to finish.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// The API base URL, like `https://api.github.com`: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configured API token.
    pub fn token(&self) -> String {
        self.shared.lock().token.clone()
    }

    /// Adds a runner as if it had registered itself; no name or group checks, so tests can
    /// build foreign runners, duplicates and orphans. Returns its id.
    pub fn add_runner(&self, scope: &Scope, runner: NewRunner) -> u64 {
        self.shared.lock().insert_runner(scope, runner)
    }

    /// Registers a runner as its `config.sh` does with a registration token (see
    /// [`RunnerConfiguration`]): a runner of that name in that group is replaced in place with
    /// `replace` (same id, new labels), as actions/runner does; otherwise a new runner is added.
    /// The runner is offline until [`FakeGithub::set_runner_state`] says it connected. Errors
    /// say why config.sh would fail: an unknown or expired token, an unknown group, the name
    /// taken without `replace` or in another group.
    pub fn configure_runner(&self, config: &RunnerConfiguration) -> Result<RunnerInfo, String> {
        self.shared
            .lock()
            .configure_runner(config, util::now_epoch())
            .map(|(runner, _)| runner.info())
            .map_err(|e| e.to_string())
    }

    /// Sets a runner's status and busy flag; false if there is no such runner in `scope`.
    pub fn set_runner_state(&self, scope: &Scope, id: u64, online: bool, busy: bool) -> bool {
        self.shared
            .lock()
            .set_runner_state(scope, id, online, busy)
            .is_some()
    }

    pub fn set_runner_state_by_name(
        &self,
        scope: &Scope,
        name: &str,
        online: bool,
        busy: bool,
    ) -> bool {
        let mut state = self.shared.lock();
        match state.runner_id_by_name(scope, name) {
            Some(id) => state.set_runner_state(scope, id, online, busy).is_some(),
            None => false,
        }
    }

    /// Removes a runner, as GitHub does when an ephemeral runner finishes its job.
    pub fn remove_runner(&self, scope: &Scope, id: u64) -> bool {
        self.shared.lock().remove_runner(scope, id).is_some()
    }

    /// The runners of `scope`, sorted by id.
    pub fn runners(&self, scope: &Scope) -> Vec<RunnerInfo> {
        self.shared
            .lock()
            .runners(scope)
            .iter()
            .map(state::Runner::info)
            .collect()
    }

    /// Adds a runner group to `org` and returns its id; "Default" (id 1) always exists.
    pub fn add_runner_group(&self, org: &str, name: &str) -> u64 {
        self.shared.lock().add_runner_group(org, name)
    }

    /// From now on each API request fails with `fault` with probability `ratio` (0..=1),
    /// drawn from the seeded generator. Replaces an earlier ratio fault.
    pub fn inject_faults(&self, fault: Fault, ratio: f64) {
        self.shared.lock().inject_faults(fault, ratio);
    }

    /// Like [`FakeGithub::inject_faults`] with several kinds: each request fails with at most
    /// one of them, each with its probability. Replaces earlier ratio faults.
    pub fn inject_fault_mix(&self, faults: Vec<(Fault, f64)>) {
        self.shared.lock().inject_fault_mix(faults);
    }

    /// The next `count` API requests fail with `fault` (before any ratio fault applies).
    pub fn fail_next(&self, fault: Fault, count: usize) {
        self.shared.lock().fail_next(fault, count);
    }

    /// Clears the API's faults and the scale set service's.
    pub fn clear_faults(&self) {
        let mut world = self.shared.lock();
        world.clear_faults();
        world.scalesets.clear_faults();
    }

    /// Delay added to every API request.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Sets the core rate limit state. With `remaining` 0, API requests get GitHub's 403
    /// "API rate limit exceeded" until `reset_epoch_secs`, when the limit refills.
    pub fn set_rate_limit(&self, remaining: u32, reset_epoch_secs: u64) {
        self.shared
            .lock()
            .set_rate_limit(remaining, reset_epoch_secs);
    }

    /// The API requests answered so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().clear_requests();
    }

    /// Calls `hook` for every API request once it has been answered (the binary logs with it).
    pub fn on_request(&self, hook: impl Fn(&RequestRecord) + Send + Sync + 'static) {
        *self
            .shared
            .hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
    }

    /// Sets the runner version `GET .../actions/runners/downloads` offers.
    pub fn set_runner_version(&self, version: &str) {
        self.shared.lock().runner_version = version.to_string();
    }

    pub fn jit_configs_issued(&self) -> usize {
        self.shared.lock().jit_configs_issued
    }

    pub fn registration_tokens_issued(&self) -> usize {
        self.shared.lock().registration_tokens_issued
    }
}

/// A repository's workflow runs and their jobs (`GET .../actions/runs`, `.../runs/{id}/jobs`).
impl FakeGithub {
    /// Starts a workflow run in repository `scope`; each job with a runner has started on it,
    /// and that runner (when registered) is online and busy.
    pub fn start_workflow_run(&self, scope: &Scope, run: &NewWorkflowRun) -> WorkflowRunInfo {
        let mut state = self.shared.lock();
        let (info, runners) = state.workflows.start(scope, run);
        for name in runners {
            if let Some(id) = state.runner_id_by_name(scope, &name) {
                state.set_runner_state(scope, id, true, true);
            }
        }
        info
    }

    /// Job `job_id` of a run in `scope` completes with `conclusion` (`success`, `failure`);
    /// its runner (when registered) is online and idle again.
    pub fn complete_workflow_job(
        &self,
        scope: &Scope,
        job_id: u64,
        conclusion: &str,
    ) -> Result<(), String> {
        let mut state = self.shared.lock();
        let runner = state.workflows.complete(scope, job_id, conclusion)?;
        if let Some(id) = runner.and_then(|name| state.runner_id_by_name(scope, &name)) {
            state.set_runner_state(scope, id, true, false);
        }
        Ok(())
    }
}

/// The runner scale set service: jobs, runners taking them, statistics, tokens and faults.
impl FakeGithub {
    /// Queues `request.count` jobs; they reach the scale sets of their scope whose labels
    /// include all of theirs. Returns the job ids.
    pub fn queue_jobs(&self, request: &QueueJobs) -> Vec<String> {
        let ids = self.shared.lock().queue_jobs(request);
        self.shared.scaleset_changed();
        ids
    }

    /// Queues `count` jobs asking for scale set `id`'s labels; `None` if there is no such set.
    pub fn queue_jobs_for_scale_set(&self, id: u64, count: usize) -> Option<Vec<String>> {
        let ids = self.shared.lock().queue_jobs_for_scale_set(id, count);
        self.shared.scaleset_changed();
        ids
    }

    /// Runner `runner_name` of scale set `id` takes the oldest job assigned to the set (it
    /// becomes online and busy; the listener gets `JobStarted`).
    pub fn start_job(&self, id: u64, runner_name: &str) -> Result<JobInfo, String> {
        let result = self.shared.lock().start_job(id, runner_name);
        self.shared.scaleset_changed();
        result
    }

    /// The job of runner `runner_name` of scale set `id` ends with `result` (`succeeded`,
    /// `failed`, ...); the ephemeral runner is removed, as GitHub does (`JobCompleted`).
    pub fn complete_job(
        &self,
        id: u64,
        runner_name: &str,
        result: &str,
    ) -> Result<JobInfo, String> {
        let outcome = self.shared.lock().complete_job(id, runner_name, result);
        self.shared.scaleset_changed();
        outcome
    }

    /// GitHub takes back an assigned job no runner took: the scale set gets `JobCompleted`
    /// (`canceled`) and the job is queued again under a new request id.
    pub fn reassign_job(&self, job_id: &str) -> Result<JobInfo, String> {
        let result = self.shared.lock().reassign_job(job_id);
        self.shared.scaleset_changed();
        result
    }

    /// Every job the fake knows, oldest first.
    pub fn jobs(&self) -> Vec<JobInfo> {
        self.shared.lock().job_infos()
    }

    /// The scale sets of `scope` (all of them with `None`), by id.
    pub fn scale_sets(&self, scope: Option<&Scope>) -> Vec<ScaleSetInfo> {
        self.shared.lock().scale_set_infos(scope)
    }

    /// Scale set `id`'s statistics, as a message would carry them now.
    pub fn scale_set_statistics(&self, id: u64) -> Option<ScaleSetStatistics> {
        let world = self.shared.lock();
        world
            .scalesets
            .sets
            .get(&id)
            .map(|set| world.statistics(set))
    }

    /// Expires the admin tokens (`admin`) and the queue tokens (`queue`) issued so far: their
    /// next use gets 401, and a client must exchange or refresh them.
    pub fn expire_scaleset_tokens(&self, admin: bool, queue: bool) {
        self.shared
            .lock()
            .scalesets
            .expire_tokens(admin, queue, std::time::Instant::now());
    }

    /// The next `count` scale set service requests to `endpoint` suffer `fault`.
    pub fn fail_next_scaleset(
        &self,
        endpoint: ScaleSetEndpoint,
        fault: ScaleSetFault,
        count: usize,
    ) {
        self.shared
            .lock()
            .scalesets
            .fail_next(endpoint, fault, count);
    }

    /// How many admin tokens the registration exchange has issued.
    pub fn admin_token_exchanges(&self) -> usize {
        self.shared.lock().scalesets.exchanges
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        // Graceful shutdown: the server task finishes on its own once connections close.
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for FakeGithub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGithub")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_round_trips_through_text() {
        for s in ["repo:octo/hello", "org:acme"] {
            let scope: Scope = s.parse().expect("valid scope");
            assert_eq!(scope.to_string(), s);
        }
        for bad in ["repo:octo", "repo:/x", "org:", "team:x", "repo:a/b/c"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad} should not parse");
        }
    }
}
