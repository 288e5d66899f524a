//! The executor: the only part of fleet that changes the world. It carries out a `Plan`
//! step by step, with bounded parallelism, one step per runner at a time, each step idempotent
//! and rolled back where it can be when it fails half-way.

pub mod container;
pub mod docker_ops;
pub mod lock;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::observe::Observers;
use crate::observe::docker::DockerHost;
use crate::observe::github::{GithubError, GithubScope, Removal};
use crate::observe::state::{Observed, labels};
use crate::plan::{Action, Change, Plan, RunnerConfig, full_hash, ownership_label};
use crate::spec::{ResolvedPool, Spec};
use container::{Registration, RunnerContainer, state_volume};

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Not done now: the runner is busy; it happens after its job.
    Deferred(String),
    Failed(String),
}

/// One step's report.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub change: Change,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// The runner that now exists, when a create or replace made one (its name can differ from
    /// the plan's when GitHub had the planned name already).
    pub runner: Option<String>,
}

/// What an apply did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub steps: Vec<StepReport>,
}

impl ApplyReport {
    pub fn failed(&self) -> impl Iterator<Item = &StepReport> {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
    }

    fn count(&self, action: Action) -> usize {
        self.steps
            .iter()
            .filter(|s| s.change.action == action && s.outcome == Outcome::Done)
            .count()
    }

    /// `Apply complete: 2 created, ...` (`what` is `Apply` or `Destroy`), or the failures.
    pub fn summary(&self, what: &str) -> String {
        let deferred = self
            .steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Deferred(_)))
            .count();
        let failed = self.failed().count();
        let counts = format!(
            "{} created, {} replaced, {} destroyed, {} registration(s) removed, {} volume(s) created{}, {} deferred, {} failed.",
            self.count(Action::Create),
            self.count(Action::Replace),
            self.count(Action::Destroy),
            self.count(Action::Deregister),
            self.count(Action::CreateVolume),
            match self.count(Action::DestroyVolume) {
                0 => String::new(),
                n => format!(", {n} volume(s) destroyed"),
            },
            deferred,
            failed
        );
        if failed == 0 {
            format!("{what} complete: {counts}")
        } else {
            format!("{what} finished with failures: {counts}")
        }
    }
}

/// Told about each step as it starts and ends (the CLI prints progress from it).
pub trait Progress: Send + Sync {
    fn started(&self, change: &Change);
    fn finished(&self, report: &StepReport);
}

/// Progress that says nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn started(&self, _: &Change) {}
    fn finished(&self, _: &StepReport) {}
}

/// Carries out plans against the hosts and GitHub of one spec.
pub struct Executor<'a> {
    spec: &'a Spec,
    observers: &'a Observers,
    observed: &'a Observed,
    pools: BTreeMap<String, ResolvedPool>,
    parallelism: usize,
    /// (host, image) pairs already made ready in this apply: each is inspected or pulled once.
    images_ready: tokio::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl<'a> Executor<'a> {
    /// `observed` is the observation the plan was made from (runner groups, GPU inventories).
    pub fn new(
        spec: &'a Spec,
        observers: &'a Observers,
        observed: &'a Observed,
        parallelism: usize,
    ) -> Executor<'a> {
        Executor {
            spec,
            observers,
            observed,
            pools: spec
                .resolved_pools()
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            parallelism: parallelism.max(1),
            images_ready: tokio::sync::Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    /// Applies `plan`: volumes first, then removals, then creations (so that GPUs and names
    /// freed by a removal are free before a new runner takes them). A failed step does not stop
    /// the others.
    pub async fn apply(&self, plan: &Plan, progress: &dyn Progress) -> ApplyReport {
        let phases: [&[Action]; 4] = [
            &[Action::CreateVolume],
            &[Action::Destroy, Action::Deregister],
            &[Action::Replace, Action::Create],
            &[Action::Defer, Action::DestroyVolume],
        ];
        let mut report = ApplyReport::default();
        for phase in phases {
            let steps: Vec<&Change> = plan
                .changes
                .iter()
                .filter(|c| phase.contains(&c.action))
                .collect();
            // The futures are made before they are streamed: a closure in the stream would make
            // the apply future !Send (rust-lang/rust#102211), and watch needs it Send.
            let futures: Vec<_> = steps
                .into_iter()
                .map(|change| self.step(change, progress))
                .collect();
            let done: Vec<StepReport> = futures_util::stream::iter(futures)
                .buffer_unordered(self.parallelism)
                .collect()
                .await;
            report.steps.extend(done);
        }
        report
    }

    async fn step(&self, change: &Change, progress: &dyn Progress) -> StepReport {
        progress.started(change);
        let started = Instant::now();
        let (outcome, runner) = match self.run(change).await {
            Ok(StepResult { outcome, runner }) => (outcome, runner),
            Err(message) => (Outcome::Failed(message), None),
        };
        let report = StepReport {
            change: change.clone(),
            outcome,
            elapsed: started.elapsed(),
            runner,
        };
        progress.finished(&report);
        report
    }

    fn host(&self, name: &str) -> Result<&DockerHost, String> {
        self.observers
            .hosts
            .get(name)
            .ok_or_else(|| format!("host `{name}` is not in the spec"))
    }

    fn pool(&self, name: &str) -> Result<&ResolvedPool, String> {
        self.pools
            .get(name)
            .ok_or_else(|| format!("pool `{name}` is not in the spec"))
    }

    async fn run(&self, change: &Change) -> Result<StepResult, String> {
        match change.action {
            Action::CreateVolume => {
                let host = self.host(&change.host)?;
                let labels = HashMap::from([
                    (labels::FLEET.to_string(), self.spec.name.clone()),
                    (labels::POOL.to_string(), change.pool.clone()),
                ]);
                docker_ops::create_volume(host, &change.name, labels).await?;
                Ok(StepResult::done())
            }
            Action::DestroyVolume => {
                let host = self.host(&change.host)?;
                docker_ops::remove_volume(host, &change.name).await?;
                Ok(StepResult::done())
            }
            Action::Deregister => {
                let id = change.runner_id.ok_or("the plan names no runner id")?;
                match self.remove_registration(id, &change.name).await? {
                    Removal::Busy => Ok(StepResult::deferred(
                        "GitHub says the runner is busy; it is removed after its job",
                    )),
                    Removal::Removed | Removal::Gone => Ok(StepResult::done()),
                }
            }
            Action::Destroy => self.destroy(change).await,
            Action::Replace if self.pools.get(&change.pool).is_some_and(|p| !p.ephemeral) => {
                // A persistent runner keeps its registration and its state volume: only the
                // container is made anew, and the runner comes back as itself.
                if let Some(runner) = self.owned_registration(&change.name).await?
                    && runner.busy
                {
                    return Ok(StepResult::deferred(
                        "GitHub says the runner is busy: replaced after its job",
                    ));
                }
                let host = self.host(&change.host)?;
                let target = change.container_id.as_deref().unwrap_or(&change.name);
                docker_ops::remove_container(host, target).await?;
                self.create(change, &change.name).await
            }
            Action::Replace => {
                let removed = self.destroy(change).await?;
                if removed.outcome != Outcome::Done {
                    return Ok(removed);
                }
                let name = change.replacement.clone().unwrap_or(change.name.clone());
                self.create(change, &name).await
            }
            Action::Create => self.create(change, &change.name).await,
            Action::Defer => Ok(StepResult::deferred(
                &change
                    .reasons
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "the runner is busy".into()),
            )),
        }
    }

    async fn remove_registration(&self, id: u64, name: &str) -> Result<Removal, String> {
        self.observers
            .github
            .delete_runner(id)
            .await
            .map_err(|e| format!("cannot remove the registration of {name} (runner id {id}): {e}"))
    }

    /// Removes a runner: its registration first (GitHub refuses while it runs a job, and then
    /// the container stays), then its container, then a persistent runner's state volume.
    async fn destroy(&self, change: &Change) -> Result<StepResult, String> {
        let host = self.host(&change.host)?;
        if let Some(id) = change.runner_id {
            if self.remove_registration(id, &change.name).await? == Removal::Busy {
                return Ok(StepResult::deferred(
                    "GitHub says the runner is busy: kept, and handled after its job",
                ));
            }
        } else if let Some(found) = self.owned_registration(&change.name).await? {
            // Registered since the observation (a persistent runner that just configured).
            if self.remove_registration(found.id, &change.name).await? == Removal::Busy {
                return Ok(StepResult::deferred(
                    "GitHub says the runner is busy: kept, and handled after its job",
                ));
            }
        }
        let target = change.container_id.as_deref().unwrap_or(&change.name);
        docker_ops::remove_container(host, target).await?;
        let persistent = self.pools.get(&change.pool).is_some_and(|p| !p.ephemeral);
        if persistent {
            docker_ops::remove_volume(host, &state_volume(&change.name)).await?;
        }
        Ok(StepResult::done())
    }

    async fn owned_registration(
        &self,
        name: &str,
    ) -> Result<Option<crate::observe::state::GithubRunner>, String> {
        let own = ownership_label(&self.spec.name);
        self.observers
            .github
            .runner_by_name(name)
            .await
            .map(|r| r.filter(|r| r.labels.contains(&own)))
            .map_err(|e| format!("cannot look up runner {name} on GitHub: {e}"))
    }

    fn runner_group_id(&self, pool: &ResolvedPool) -> Result<u64, String> {
        match self.observers.github.scope() {
            // A repository has one group, the default one (id 1).
            GithubScope::Repo { .. } => Ok(1),
            GithubScope::Org(org) => {
                let group = pool.runner_group.as_deref().unwrap_or("Default");
                self.observed
                    .github
                    .groups
                    .get(group)
                    .copied()
                    .ok_or_else(|| {
                        format!("runner group `{group}` does not exist in organization {org}")
                    })
            }
        }
    }

    /// Creates runner `name` of the change's pool: registration, image, volumes, container.
    async fn create(&self, change: &Change, name: &str) -> Result<StepResult, String> {
        let pool = self.pool(&change.pool)?;
        let host = self.host(&change.host)?;
        let config = RunnerConfig::for_pool(&self.spec.name, pool);
        {
            // Held while pulling, so that parallel creates of one pool wait for one pull.
            let mut ready = self.images_ready.lock().await;
            let key = (change.host.clone(), pool.image.clone());
            if !ready.contains(&key) {
                docker_ops::ensure_image(host, &pool.image, pool.pull).await?;
                ready.insert(key);
            }
        }
        let observed_host = self.observed.hosts.get(&change.host);
        let host_has_gpus = observed_host.is_some_and(|h| !h.gpus.uuids.is_empty());
        let nvidia_runtime = observed_host.is_some_and(|h| h.engine.nvidia_runtime);

        let mut name = name.to_string();
        let mut jit_runner = None;
        let registration =
            if pool.ephemeral {
                let (final_name, jit) = self.register_jit(pool, &config, &name).await?;
                name = final_name;
                jit_runner = Some(jit.runner_id);
                Registration::Jit(jit.encoded)
            } else {
                let labels = HashMap::from([
                    (labels::FLEET.to_string(), self.spec.name.clone()),
                    (labels::POOL.to_string(), pool.name.clone()),
                    ("fleet.runner".to_string(), name.clone()),
                ]);
                docker_ops::create_volume(host, &state_volume(&name), labels).await?;
                // A runner that is registered already (its state volume holds the credentials)
                // needs no token: it comes back as itself.
                let token =
                    match self.owned_registration(&name).await? {
                        Some(_) => None,
                        None => Some(self.observers.github.registration_token().await.map_err(
                            |e| format!("cannot get a registration token for {name}: {e}"),
                        )?),
                    };
                Registration::Persistent {
                    url: self.observers.github.registration_url(),
                    token,
                }
            };

        let body = RunnerContainer {
            fleet: &self.spec.name,
            pool,
            config: &config,
            name: &name,
            gpus: &change.gpus,
            host_has_gpus,
            nvidia_runtime,
            registration,
        }
        .body();
        let made = match docker_ops::create_container(host, &name, body).await {
            Ok(_) => docker_ops::start_container(host, &name).await,
            Err(e) => Err(e),
        };
        if let Err(cause) = made {
            // Roll back: no container without its runner, no registration without its container.
            let _ = docker_ops::remove_container(host, &name).await;
            if let Some(id) = jit_runner {
                let _ = self.observers.github.delete_runner(id).await;
            }
            return Err(with_gpu_hint(cause, !change.gpus.is_empty(), &host.name));
        }
        Ok(StepResult {
            outcome: Outcome::Done,
            runner: Some(name),
        })
    }

    /// Registers an ephemeral runner. When GitHub has the name already (409: a retried request
    /// that had succeeded, or a crash after registering), the holder is removed if it is ours and
    /// idle, and the runner is registered under a new name.
    async fn register_jit(
        &self,
        pool: &ResolvedPool,
        config: &RunnerConfig,
        name: &str,
    ) -> Result<(String, crate::observe::github::JitConfig), String> {
        let group = self.runner_group_id(pool)?;
        let mut name = name.to_string();
        for attempt in 0..3 {
            match self
                .observers
                .github
                .generate_jitconfig(&name, group, &config.labels)
                .await
            {
                Ok(jit) => return Ok((name, jit)),
                Err(GithubError::Rejected { status: 409, .. }) => {
                    match self.owned_registration(&name).await? {
                        Some(r) if !r.busy => {
                            let _ = self.observers.github.delete_runner(r.id).await;
                        }
                        Some(_) => {}
                        None => tracing::warn!(
                            "runner name {name} is taken on GitHub by a runner fleet does not own"
                        ),
                    }
                    let fresh = fresh_suffix(&name, attempt);
                    name = format!("{}-{}-{fresh}", self.spec.name, pool.name);
                }
                Err(e) => return Err(format!("cannot register runner {name}: {e}")),
            }
        }
        Err(format!(
            "cannot register a runner for pool `{}`: GitHub kept answering 409 (name taken)",
            pool.name
        ))
    }
}

struct StepResult {
    outcome: Outcome,
    runner: Option<String>,
}

impl StepResult {
    fn done() -> StepResult {
        StepResult {
            outcome: Outcome::Done,
            runner: None,
        }
    }

    fn deferred(why: &str) -> StepResult {
        StepResult {
            outcome: Outcome::Deferred(why.to_string()),
            runner: None,
        }
    }
}

/// A new 6-character suffix after a name conflict (the clock makes it new; collisions are
/// caught by GitHub's 409 and retried).
fn fresh_suffix(old: &str, attempt: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let hash = full_hash(format!("{old}/{attempt}/{nanos}/{}", std::process::id()).as_bytes());
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    hash.bytes()
        .take(6)
        .map(|b| alphabet[usize::from(b) % alphabet.len()] as char)
        .collect()
}

/// The engine's refusal of a GPU container, with the fix.
fn with_gpu_hint(cause: String, wants_gpus: bool, host: &str) -> String {
    let lower = cause.to_lowercase();
    if wants_gpus
        && (lower.contains("nvidia") || lower.contains("device driver") || lower.contains("gpu"))
    {
        format!(
            "{cause} (host `{host}` has no working NVIDIA container support: install nvidia-container-toolkit on the host, run `nvidia-ctk runtime configure --runtime=docker`, and restart Docker)"
        )
    } else {
        cause
    }
}
