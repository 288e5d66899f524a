//! The steps of one runner: create (registration, image, volumes, container), destroy
//! (registration first, then container, then a persistent runner's state volume) and replace.
//! Containers are removed only by the id this step created or the plan observed, and only with
//! the fleet's labels; names are never trusted (docs/security.md).

use super::{Executor, Outcome, StepError, StepResult};
use crate::contract::container::{
    EXIT_REGISTER_AGAIN, Registration, RunnerContainer, SecretHandover,
};
use crate::contract::{self, RunnerConfig, labels, naming};
use crate::docker::{DockerError, DockerHost, Stop};
use crate::github::{GithubError, GithubScope, JitConfig, Removal};
use crate::observe::state::GithubRunner;
use crate::plan::{Reason, RunnerChange, RunnerOp};
use crate::spec::{DEFAULT_STOP_TIMEOUT_SECS, PullPolicy, ResolvedPool};

const BUSY: &str = "GitHub says the runner is busy: kept, and handled after its job";
const BUSY_WHILE_STOPPING: &str =
    "the runner took a job while it was being stopped: kept, and handled after its job";

impl Executor<'_> {
    pub(super) async fn runner(&self, change: &RunnerChange) -> Result<StepResult, StepError> {
        match &change.op {
            RunnerOp::Create => self.create(change, &change.name).await,
            RunnerOp::Destroy => self.destroy(change).await,
            RunnerOp::Replace { .. }
                if self.pools.get(&change.pool).is_some_and(|p| !p.ephemeral) =>
            {
                self.replace_persistent(change).await
            }
            RunnerOp::Replace { replacement, .. } => {
                let removed = self.destroy(change).await?;
                if removed.outcome != Outcome::Done {
                    return Ok(removed);
                }
                let name = replacement.as_deref().unwrap_or(&change.name);
                self.create(change, name).await
            }
        }
    }

    /// A persistent runner keeps its registration and its state volume: only the container is
    /// made anew, and the runner comes back as itself.
    async fn replace_persistent(&self, change: &RunnerChange) -> Result<StepResult, StepError> {
        // Looked up once: the busy check and the registration of the new container use it.
        let found = self.registration_named(&change.name).await?;
        let fleet = &self.spec.name;
        if let Some(runner) = &found
            && self.owns(runner)
            && runner.busy
        {
            return Ok(StepResult::deferred(
                "GitHub says the runner is busy: replaced after its job",
            ));
        }
        let id = observed_id(change)?;
        let host = self.host(&change.host)?;
        // Ownership is checked once; the container may be gone already.
        if let Some(full_id) = host.write().owned_container(id, fleet).await?
            && let Some(kept) = self.stop_and_remove(change, &full_id, true).await?
        {
            return Ok(kept);
        }
        self.create_known(change, &change.name, Some(found)).await
    }

    /// Stops the observed container (`full_id`, proved fleet's) gracefully (SIGTERM, then the pool's `stop_timeout`: the
    /// runner ends its session and saves its state), then removes it. When it still runs after
    /// that and its registration stays (`registration_kept`: a replace or a move), GitHub is asked
    /// again whether it runs a job: one that took a job in between is kept, not killed, and the
    /// step is deferred (`Some`). Otherwise the removal kills what is left.
    async fn stop_and_remove(
        &self,
        change: &RunnerChange,
        full_id: &str,
        registration_kept: bool,
    ) -> Result<Option<StepResult>, StepError> {
        let host = self.host(&change.host)?;
        // A pool gone from the spec stops its runners with the default.
        let secs = self
            .pools
            .get(&change.pool)
            .map_or(DEFAULT_STOP_TIMEOUT_SECS, |p| p.stop_timeout_secs);
        let timeout = std::time::Duration::from_secs(secs.into());
        let stop = host
            .write()
            .stop_checked_container(full_id, timeout)
            .await?;
        if stop == Stop::StillRunning {
            tracing::warn!(
                "runner {}: still running {secs} s after SIGTERM (the pool's stop_timeout)",
                change.name
            );
            if registration_kept
                && self
                    .owned_registration(&change.name)
                    .await?
                    .is_some_and(|r| r.busy)
            {
                return Ok(Some(StepResult::deferred(BUSY_WHILE_STOPPING)));
            }
        }
        host.write().remove_checked_container(full_id).await?;
        Ok(None)
    }

    /// Removes a runner: its registration first (GitHub refuses while it runs a job, and then
    /// the container stays), then its container, then a persistent runner's state volume.
    async fn destroy(&self, change: &RunnerChange) -> Result<StepResult, StepError> {
        let host = self.host(&change.host)?;
        let fleet = &self.spec.name;
        // Checked before the registration goes: a container that is not the fleet's stops the
        // step with nothing done.
        let container = observed_id(change)?;
        let checked = host.write().owned_container(container, fleet).await?;
        if change.registration_kept {
            // The runner lives on elsewhere under its registration: only its container goes,
            // and not while GitHub says it runs a job.
            let registration = self.owned_registration(&change.name).await?;
            if registration.is_some_and(|r| r.busy) {
                return Ok(StepResult::deferred(BUSY));
            }
        } else if let Some(id) = self.registration_to_remove(change).await?
            && self.remove_registration(id, &change.name).await? == Removal::Busy
        {
            return Ok(StepResult::deferred(BUSY));
        }
        // Ownership was checked above, once (`None`: already gone).
        let mut work_dir = None;
        if let Some(full_id) = checked {
            work_dir = match host.write().ephemeral_work_dir(&full_id).await {
                Ok(dir) => dir,
                Err(e) => {
                    tracing::warn!("runner {}: its work folder stays: {e}", change.name);
                    None
                }
            };
            if let Some(kept) = self
                .stop_and_remove(change, &full_id, change.registration_kept)
                .await?
            {
                return Ok(kept);
            }
        }
        if let Some(dir) = work_dir {
            remove_work_dir(host, fleet, &dir, &change.name).await;
        }
        if let Some(volume) = &change.state_volume {
            host.write().remove_owned_volume(volume, fleet).await?;
        }
        Ok(StepResult::done())
    }

    /// The registration a destroyed runner loses: the planned one, or one made since the
    /// observation (a persistent runner that just configured).
    async fn registration_to_remove(
        &self,
        change: &RunnerChange,
    ) -> Result<Option<u64>, StepError> {
        match change.runner_id {
            Some(id) => Ok(Some(id)),
            None => Ok(self.owned_registration(&change.name).await?.map(|r| r.id)),
        }
    }

    /// The registration of `name` on GitHub, if fleet owns it.
    async fn owned_registration(&self, name: &str) -> Result<Option<GithubRunner>, StepError> {
        let found = self.registration_named(name).await?;
        Ok(found.filter(|r| self.owns(r)))
    }

    /// Whether fleet owns `runner`: the planner's rule, with the runners of the scale sets
    /// fleet's Docker records name (a service that drops extra labels leaves them without the
    /// ownership label; docs/autoscale.md).
    fn owns(&self, runner: &GithubRunner) -> bool {
        let recorded = self.observed.recorded_scale_sets();
        contract::registration_owned_with(runner, &self.spec.name, &recorded)
    }

    /// The registration GitHub has under `name`, whoever owns it.
    async fn registration_named(&self, name: &str) -> Result<Option<GithubRunner>, StepError> {
        self.observers
            .github
            .read()
            .runner_by_name(name)
            .await
            .map_err(|source| StepError::Github {
                what: format!("cannot look up runner {name} on GitHub"),
                source,
            })
    }

    fn runner_group_id(&self, pool: &ResolvedPool) -> Result<u64, StepError> {
        match self.observers.github.scope() {
            // A repository has one group, the default one (id 1).
            GithubScope::Repo { .. } => Ok(1),
            GithubScope::Org(org) => {
                let group = pool.runner_group.as_deref().unwrap_or("Default");
                crate::github::find_group(&self.observed.github.groups, group)
                    .map(|(_, id)| id)
                    .ok_or_else(|| {
                        StepError::Plan(format!(
                            "runner group `{group}` does not exist in organization {org}"
                        ))
                    })
            }
        }
    }

    /// Makes the pool's image ready on the change's host, once per apply: parallel creates of
    /// one image wait for one pull, and other images are pulled at the same time.
    async fn ensure_image(
        &self,
        change: &RunnerChange,
        pool: &ResolvedPool,
    ) -> Result<(), StepError> {
        // The observation inspected the pool's images: one it saw needs no second look
        // (unless the pool pulls every time).
        let seen = self
            .observed
            .hosts
            .get(&change.host)
            .and_then(|h| h.images.get(&pool.image))
            .is_some_and(|present| *present);
        if seen && pool.pull != PullPolicy::Always {
            return Ok(());
        }
        let key = (change.host.clone(), pool.image.clone());
        self.images_ready
            .run(key, || async {
                let host = self.host(&change.host)?;
                host.write().ensure_image(&pool.image, pool.pull).await?;
                Ok::<(), StepError>(())
            })
            .await
    }

    /// Creates runner `name` of the change's pool: image, registration, volumes, container.
    async fn create(&self, change: &RunnerChange, name: &str) -> Result<StepResult, StepError> {
        self.create_known(change, name, None).await
    }

    /// [`Executor::create`], with GitHub's registration of `name` when the step looked it up
    /// already (`Some(None)`: GitHub has none).
    async fn create_known(
        &self,
        change: &RunnerChange,
        name: &str,
        registration: Option<Option<GithubRunner>>,
    ) -> Result<StepResult, StepError> {
        let pool = self.pool(&change.pool)?;
        self.ensure_image(change, pool).await?;
        let made = if pool.ephemeral {
            self.create_ephemeral(change, pool, name).await?
        } else {
            self.create_persistent(change, pool, name, registration)
                .await?;
            name.to_string()
        };
        Ok(StepResult {
            outcome: Outcome::Done,
            runner: Some(made),
        })
    }

    /// An ephemeral runner: a JIT registration, then its container under the same name. When
    /// a container that this step did not make holds the name, the registration is removed and
    /// the runner takes another fresh name, so that registration and container always match.
    async fn create_ephemeral(
        &self,
        change: &RunnerChange,
        pool: &ResolvedPool,
        planned: &str,
    ) -> Result<String, StepError> {
        let config = RunnerConfig::for_pool(&self.spec.name, pool);
        let mut name = planned.to_string();
        for attempt in 0..NAME_ATTEMPTS {
            let (registered, jit) = self
                .register_jit(pool, &config, &name, &change.host)
                .await?;
            let registration = Registration::Jit(jit.encoded);
            match self
                .make_container(change, pool, &registered, registration)
                .await
            {
                Ok(()) => return Ok(registered),
                Err(failure) => {
                    // No registration without its container.
                    self.forget_registration(jit.runner_id, &registered).await;
                    let StepError::NameTaken(cause) = failure else {
                        return Err(failure);
                    };
                    tracing::warn!("{cause}; runner {registered} takes another name");
                    let suffix = naming::suffix(&conflict_seed(&registered, attempt));
                    name = naming::runner_name(&self.spec.name, &pool.name, &suffix);
                }
            }
        }
        Err(StepError::Plan(format!(
            "cannot create a runner for pool `{}`: {NAME_ATTEMPTS} names in a row were taken by containers on host `{}`",
            pool.name, change.host
        )))
    }

    /// A persistent runner: its registration or a token, its state volume, then its container.
    /// A state volume this step created goes again when the container cannot be made.
    async fn create_persistent(
        &self,
        change: &RunnerChange,
        pool: &ResolvedPool,
        name: &str,
        known: Option<Option<GithubRunner>>,
    ) -> Result<(), StepError> {
        let (registration, new_volume) =
            self.register_persistent(change, pool, name, known).await?;
        let made = self.make_container(change, pool, name, registration).await;
        if made.is_err() && new_volume {
            let host = self.host(&change.host)?;
            let volume = naming::state_volume(name);
            if let Err(e) = host
                .write()
                .remove_owned_volume(&volume, &self.spec.name)
                .await
            {
                tracing::warn!("cannot roll back the state volume of {name}: {e}");
            }
        }
        made
    }

    /// Creates container `name` and starts it, handing its secret over on standard input
    /// (`secrets: stdin`) or as a file written before the start (`secrets: file`). When
    /// a step after the create fails, the container goes again, by the id the create returned.
    async fn make_container(
        &self,
        change: &RunnerChange,
        pool: &ResolvedPool,
        name: &str,
        registration: Registration,
    ) -> Result<(), StepError> {
        let host = self.host(&change.host)?;
        let config = RunnerConfig::for_pool(&self.spec.name, pool);
        let observed_host = self.observed.hosts.get(&change.host);
        let container = RunnerContainer {
            fleet: &self.spec.name,
            pool,
            config: &config,
            name,
            gpus: &change.gpus,
            host_has_gpus: observed_host.is_some_and(|h| !h.gpus.uuids.is_empty()),
            nvidia_runtime: observed_host.is_some_and(|h| h.engine.nvidia_runtime),
            registration,
        };
        let secret = container
            .secret_handover()
            .map_err(|e| StepError::Plan(format!("runner {name}: {e}")))?;
        let wants_gpus = !change.gpus.is_empty();
        let mut body = container.body();
        if change.start_failures > 0 {
            // The pool's run of runners that could not start (src/plan/crashloop.rs).
            body.labels.get_or_insert_with(Default::default).insert(
                labels::START_FAILURES.to_string(),
                change.start_failures.to_string(),
            );
        }
        let id = match host.write().create_container(name, body).await {
            Ok(id) => id,
            Err(
                cause @ DockerError::Write {
                    status: Some(409), ..
                },
            ) => {
                return Err(StepError::NameTaken(cause));
            }
            Err(cause) => return Err(with_gpu_hint(cause, wants_gpus, &host.name)),
        };
        if let Err(cause) = start_with_secret(host, &id, secret).await {
            if let Err(e) = host
                .write()
                .remove_owned_container(&id, &self.spec.name)
                .await
            {
                tracing::warn!("cannot roll back container {name}: {e}");
            }
            return Err(with_gpu_hint(cause, wants_gpus, &host.name));
        }
        Ok(())
    }

    /// Removes a registration this step made for a runner that could not be made.
    async fn forget_registration(&self, runner_id: u64, name: &str) {
        if let Err(e) = self.observers.github.write().delete_runner(runner_id).await {
            tracing::warn!(
                "cannot remove the registration of {name} (runner id {runner_id}), whose container could not be made: {e}"
            );
        }
    }

    /// A persistent runner's registration: a registration token unless GitHub knows the runner
    /// and its state volume was there already (then the volume holds its credentials: it comes
    /// back as itself); a token tells the container to discard any saved registration. And
    /// whether the state volume was created now. A name GitHub has for a runner fleet does not
    /// own gets no token: the runner's `config.sh --replace` would take that registration over.
    async fn register_persistent(
        &self,
        change: &RunnerChange,
        pool: &ResolvedPool,
        name: &str,
        looked_up: Option<Option<GithubRunner>>,
    ) -> Result<(Registration, bool), StepError> {
        let host = self.host(&change.host)?;
        let fleet = &self.spec.name;
        let found = match looked_up {
            Some(found) => found,
            None => self.registration_named(name).await?,
        };
        let known = match found {
            Some(r) if self.owns(&r) => true,
            Some(r) => {
                return Err(StepError::Plan(format!(
                    "GitHub has a runner named {name} (id {}) that fleet `{fleet}` does not own (it lacks the label {}): fleet asks no registration token for it, since the runner's `config.sh --replace` would take that registration over. Remove or rename that runner on GitHub, or rename the pool",
                    r.id,
                    contract::ownership_label(fleet)
                )));
            }
            None => false,
        };
        let labels = contract::volume_labels(fleet, &pool.name, Some(name));
        let new_volume = host
            .write()
            .create_owned_volume(
                &naming::state_volume(name),
                labels.into_iter().collect(),
                fleet,
            )
            .await?;
        let token = match known && !new_volume && !asks_to_register(change) {
            true => None,
            false => Some(
                self.observers
                    .github
                    .write()
                    .registration_token()
                    .await
                    .map_err(|source| StepError::Github {
                        what: format!("cannot get a registration token for {name}"),
                        source,
                    })?,
            ),
        };
        let registration = Registration::Persistent {
            url: self.observers.github.registration_url(),
            token,
            // The host mark, as a JIT registration's: config.sh registers with it.
            host_mark: contract::host_label(fleet, &change.host),
        };
        Ok((registration, new_volume))
    }

    /// Registers an ephemeral runner. When GitHub has the name already (409: a retried request
    /// that had succeeded, or a crash after registering), the holder is removed if it is ours and
    /// idle, and the runner is registered under a new name.
    async fn register_jit(
        &self,
        pool: &ResolvedPool,
        config: &RunnerConfig,
        name: &str,
        host: &str,
    ) -> Result<(String, JitConfig), StepError> {
        let mut name = name.to_string();
        if pool.autoscale.is_some() {
            for attempt in 0..3 {
                if let Some(jit) = self.register_in_scale_set(pool, &name).await? {
                    return Ok((name, jit));
                }
                let suffix = naming::suffix(&conflict_seed(&name, attempt));
                name = naming::runner_name(&self.spec.name, &pool.name, &suffix);
            }
            return Err(StepError::Plan(format!(
                "cannot register a runner for pool `{}`: its scale set kept saying the name is taken",
                pool.name
            )));
        }
        let group = self.runner_group_id(pool)?;
        // The host mark: while another host is away, a lost runner of this host is known.
        let mut labels = config.labels.clone();
        labels.push(contract::host_label(&self.spec.name, host));
        for attempt in 0..3 {
            let write = self.observers.github.write();
            let work_folder = contract::container::registered_work_folder(pool, &name);
            match write
                .generate_jitconfig(&name, group, &labels, &work_folder)
                .await
            {
                Ok(jit) => return Ok((name, jit)),
                Err(GithubError::Rejected { status: 409, .. }) => {
                    match self.owned_registration(&name).await? {
                        Some(r) if !r.busy => {
                            let _ = write.delete_runner(r.id).await;
                        }
                        Some(_) => {}
                        None => tracing::warn!(
                            "runner name {name} is taken on GitHub by a runner fleet does not own"
                        ),
                    }
                    let suffix = naming::suffix(&conflict_seed(&name, attempt));
                    name = naming::runner_name(&self.spec.name, &pool.name, &suffix);
                }
                Err(source) => {
                    return Err(StepError::Github {
                        what: format!("cannot register runner {name}"),
                        source,
                    });
                }
            }
        }
        Err(StepError::Plan(format!(
            "cannot register a runner for pool `{}`: GitHub kept answering 409 (name taken)",
            pool.name
        )))
    }
}

/// Removes an ephemeral runner's emptied work folder from its host (src/docker/write/workdir.rs);
/// one that cannot be removed is logged and left, and the step goes on.
async fn remove_work_dir(host: &DockerHost, fleet: &str, dir: &crate::docker::WorkDir, name: &str) {
    match host.write().remove_work_dir(fleet, dir).await {
        Ok(true) => tracing::debug!("runner {name}: work folder {} removed", dir.path),
        Ok(false) => tracing::warn!(
            "runner {name}: work folder {} on host `{}` was not removed (not empty, or gone)",
            dir.path,
            host.name
        ),
        Err(e) => tracing::warn!("runner {name}: {e}"),
    }
}

/// How many names an ephemeral runner tries when containers hold them.
const NAME_ATTEMPTS: usize = 3;

/// Whether the runner's last container exited saying it has nothing to restore and no token
/// (the entrypoint's [`EXIT_REGISTER_AGAIN`]): it gets a token whatever GitHub knows.
fn asks_to_register(change: &RunnerChange) -> bool {
    change.reasons.contains(&Reason::Exited {
        code: Some(EXIT_REGISTER_AGAIN),
    })
}

/// The id the plan observed for the container of a replace or destroy: fleet removes a
/// container by that id, never by name.
fn observed_id(change: &RunnerChange) -> Result<&str, StepError> {
    change.container_id.as_deref().ok_or_else(|| {
        StepError::Plan(format!(
            "the plan has no container id for runner {}: fleet removes a container only by the id it observed, never by name",
            change.name
        ))
    })
}

/// Writes the secret file into container `id` (when there is one), then starts it.
async fn start_with_secret(
    host: &DockerHost,
    id: &str,
    secret: Option<SecretHandover>,
) -> Result<(), DockerError> {
    match secret {
        Some(SecretHandover::Archive(archive)) => {
            host.write().upload_archive(id, archive).await?;
            host.write().start_container(id).await
        }
        Some(SecretHandover::Stdin(line)) => {
            host.write()
                .start_with_stdin(id, line.expose().as_bytes())
                .await
        }
        None => host.write().start_container(id).await,
    }
}

/// The seed of a new suffix after a name conflict: the clock and the process make it new;
/// collisions are caught by GitHub's 409 and retried.
fn conflict_seed(old: &str, attempt: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{old}/{attempt}/{nanos}/{}", std::process::id())
}

/// The engine's refusal of a GPU container, with the fix.
fn with_gpu_hint(cause: DockerError, wants_gpus: bool, host: &str) -> StepError {
    let text = cause.to_string().to_lowercase();
    if wants_gpus
        && (text.contains("nvidia") || text.contains("device driver") || text.contains("gpu"))
    {
        StepError::Plan(format!(
            "{cause} (host `{host}` has no working NVIDIA container support: install nvidia-container-toolkit on the host, run `nvidia-ctk runtime configure --runtime=docker`, and restart Docker)"
        ))
    } else {
        StepError::Docker(cause)
    }
}
