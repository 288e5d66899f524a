//! The steps of one runner: create (registration, image, volumes, container), destroy
//! (registration first, then container, then a persistent runner's state volume) and replace.

use super::{Executor, Outcome, StepError, StepResult};
use crate::contract::container::{Registration, RunnerContainer};
use crate::contract::{self, RunnerConfig, naming};
use crate::docker::DockerError;
use crate::github::{GithubError, GithubScope, JitConfig, Removal};
use crate::observe::state::GithubRunner;
use crate::plan::{RunnerChange, RunnerOp};
use crate::spec::ResolvedPool;

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
        if let Some(runner) = self.owned_registration(&change.name).await?
            && runner.busy
        {
            return Ok(StepResult::deferred(
                "GitHub says the runner is busy: replaced after its job",
            ));
        }
        let host = self.host(&change.host)?;
        let target = change.container_id.as_deref().unwrap_or(&change.name);
        host.write().remove_container(target).await?;
        self.create(change, &change.name).await
    }

    /// Removes a runner: its registration first (GitHub refuses while it runs a job, and then
    /// the container stays), then its container, then a persistent runner's state volume.
    async fn destroy(&self, change: &RunnerChange) -> Result<StepResult, StepError> {
        let host = self.host(&change.host)?;
        let id = match change.runner_id {
            Some(id) => Some(id),
            // Registered since the observation (a persistent runner that just configured).
            None => self.owned_registration(&change.name).await?.map(|r| r.id),
        };
        if let Some(id) = id
            && self.remove_registration(id, &change.name).await? == Removal::Busy
        {
            return Ok(StepResult::deferred(
                "GitHub says the runner is busy: kept, and handled after its job",
            ));
        }
        let target = change.container_id.as_deref().unwrap_or(&change.name);
        host.write().remove_container(target).await?;
        if let Some(volume) = &change.state_volume {
            host.write().remove_volume(volume).await?;
        }
        Ok(StepResult::done())
    }

    /// The registration of `name` on GitHub, if fleet owns it.
    async fn owned_registration(&self, name: &str) -> Result<Option<GithubRunner>, StepError> {
        let fleet = &self.spec.name;
        self.observers
            .github
            .read()
            .runner_by_name(name)
            .await
            .map(|r| r.filter(|r| contract::registration_owned(r, fleet)))
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
                self.observed
                    .github
                    .groups
                    .get(group)
                    .copied()
                    .ok_or_else(|| {
                        StepError::Plan(format!(
                            "runner group `{group}` does not exist in organization {org}"
                        ))
                    })
            }
        }
    }

    /// Makes the pool's image ready on the change's host, once per apply. Held while pulling,
    /// so that parallel creates of one pool wait for one pull.
    async fn ensure_image(
        &self,
        change: &RunnerChange,
        pool: &ResolvedPool,
    ) -> Result<(), StepError> {
        let mut ready = self.images_ready.lock().await;
        let key = (change.host.clone(), pool.image.clone());
        if !ready.contains(&key) {
            let host = self.host(&change.host)?;
            host.write().ensure_image(&pool.image, pool.pull).await?;
            ready.insert(key);
        }
        Ok(())
    }

    /// Creates runner `name` of the change's pool: registration, image, volumes, container.
    async fn create(&self, change: &RunnerChange, name: &str) -> Result<StepResult, StepError> {
        let pool = self.pool(&change.pool)?;
        let host = self.host(&change.host)?;
        let config = RunnerConfig::for_pool(&self.spec.name, pool);
        self.ensure_image(change, pool).await?;
        let (name, registration, jit_runner) = if pool.ephemeral {
            let (name, jit) = self.register_jit(pool, &config, name).await?;
            (name, Registration::Jit(jit.encoded), Some(jit.runner_id))
        } else {
            let registration = self.register_persistent(change, pool, name).await?;
            (name.to_string(), registration, None)
        };
        let observed_host = self.observed.hosts.get(&change.host);
        let body = RunnerContainer {
            fleet: &self.spec.name,
            pool,
            config: &config,
            name: &name,
            gpus: &change.gpus,
            host_has_gpus: observed_host.is_some_and(|h| !h.gpus.uuids.is_empty()),
            nvidia_runtime: observed_host.is_some_and(|h| h.engine.nvidia_runtime),
            registration,
        }
        .body();
        let made = match host.write().create_container(&name, body).await {
            Ok(_) => host.write().start_container(&name).await,
            Err(e) => Err(e),
        };
        if let Err(cause) = made {
            // Roll back: no container without its runner, no registration without its container.
            let _ = host.write().remove_container(&name).await;
            if let Some(id) = jit_runner {
                let _ = self.observers.github.write().delete_runner(id).await;
            }
            return Err(with_gpu_hint(cause, !change.gpus.is_empty(), &host.name));
        }
        Ok(StepResult {
            outcome: Outcome::Done,
            runner: Some(name),
        })
    }

    /// A persistent runner's state volume, and a registration token unless GitHub knows the
    /// runner and its state volume was there already (then the volume holds its credentials: it
    /// comes back as itself). A token tells the container to discard any saved registration.
    async fn register_persistent(
        &self,
        change: &RunnerChange,
        pool: &ResolvedPool,
        name: &str,
    ) -> Result<Registration, StepError> {
        let host = self.host(&change.host)?;
        let labels = contract::volume_labels(&self.spec.name, &pool.name, Some(name));
        let new_volume = host
            .write()
            .create_volume(&naming::state_volume(name), labels.into_iter().collect())
            .await?;
        let known = self.owned_registration(name).await?.is_some();
        let token = match known && !new_volume {
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
        Ok(Registration::Persistent {
            url: self.observers.github.registration_url(),
            token,
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
        for attempt in 0..3 {
            let write = self.observers.github.write();
            match write.generate_jitconfig(&name, group, &config.labels).await {
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
