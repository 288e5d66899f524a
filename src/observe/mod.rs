//! The observation: assembles an [`Observed`](state::Observed), the planner's only input
//! besides the spec, from the readers of Docker ([`crate::docker`]), GitHub ([`crate::github`])
//! and the GPUs ([`gpu`]). Any failure means no observation: fleet never plans on a partial view.

pub mod gpu;
pub mod scalesets;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures_util::future::try_join_all;

use crate::docker::{DockerError, DockerHost};
use crate::github::{GithubClient, GithubError, RetryPolicy};
use crate::spec::Spec;
use state::Observed;

/// Why the world could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Github(#[from] GithubError),
    #[error("cannot read the runner scale sets: {0}")]
    ScaleSets(#[from] crate::scaleset::ScaleSetError),
}

impl ObserveError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ObserveError::Docker(DockerError::Unreachable { .. }) => Some(
                "start the Docker engine, or point hosts.<name>.docker or DOCKER_HOST at it".into(),
            ),
            ObserveError::Docker(_) => None,
            ObserveError::Github(e) => e.hint(),
            ObserveError::ScaleSets(_) => None,
        }
    }
}

/// Connections to every outside system a spec names.
#[derive(Clone)]
pub struct Observers {
    pub hosts: BTreeMap<String, DockerHost>,
    pub github: GithubClient,
    /// The scale set service, when the spec has autoscaled pools.
    pub scale_sets: Option<crate::scaleset::ScaleSetClient>,
}

impl Observers {
    /// Sets up the GitHub client (credentials are checked before anything is contacted) and
    /// connects to every Docker host.
    pub async fn connect(
        spec: &Spec,
        base_dir: &Path,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        policy: RetryPolicy,
    ) -> Result<Observers, ObserveError> {
        let github = GithubClient::from_spec(spec, base_dir, env, policy)?;
        let mut hosts = BTreeMap::new();
        for (name, host) in spec.effective_hosts() {
            let connection = DockerHost::connect(&name, host.docker.as_deref(), env).await?;
            hosts.insert(name, connection);
        }
        let scale_sets = Some(scalesets::client_for(&github)?);
        Ok(Observers {
            hosts,
            github,
            scale_sets,
        })
    }

    /// Observes as [`Observers::observe`] does, and reads the runner scale sets too (which
    /// needs a registration token: `apply` and `watch` only) when the spec has autoscaled pools
    /// or a host holds the record of one fleet made. Without autoscaled pools in the spec they
    /// are read only to remove those of pools that left it: a failure then is a warning, and
    /// nothing is removed.
    pub async fn observe_for_apply(&self, spec: &Spec) -> Result<Observed, ObserveError> {
        let mut observed = self.observe(spec).await?;
        let Some(client) = &self.scale_sets else {
            return Ok(observed);
        };
        let autoscaled = spec.resolved_pools().iter().any(|p| p.autoscale.is_some());
        let recorded = observed
            .hosts
            .values()
            .flat_map(|h| &h.volumes)
            .any(|v| v.owned && v.scale_set.is_some());
        if !autoscaled && !recorded {
            // No scale set to make, none made: no registration token to spend.
            return Ok(observed);
        }
        match scalesets::read(client).await {
            Ok(sets) => observed.github.scale_sets = Some(sets),
            Err(e) if autoscaled => return Err(e.into()),
            Err(e) => tracing::warn!(
                "cannot read the runner scale sets ({e}); those of pools that left the spec are not removed this time"
            ),
        }
        Ok(observed)
    }

    /// Observes every host and GitHub at once.
    pub async fn observe(&self, spec: &Spec) -> Result<Observed, ObserveError> {
        let pools = spec.resolved_pools();
        let declared = spec.effective_hosts();
        let host_futures = self.hosts.iter().map(|(name, host)| {
            let images: BTreeSet<String> = pools
                .iter()
                .filter(|p| &p.host == name)
                .map(|p| p.image.clone())
                .collect();
            let volumes: BTreeSet<String> = pools
                .iter()
                .filter(|p| &p.host == name)
                .flat_map(|p| p.volumes.iter().filter(|v| !v.is_bind()))
                .map(|v| v.source.clone())
                .collect();
            let gpus = declared
                .get(name)
                .map(|h| gpu::inventory(name, &h.gpus, host.is_local()))
                .unwrap_or_default();
            async move {
                let images: Vec<String> = images.into_iter().collect();
                let volumes: Vec<String> = volumes.into_iter().collect();
                let state = host
                    .read()
                    .observe(&spec.name, &images, &volumes, gpus)
                    .await?;
                Ok::<_, ObserveError>((name.clone(), state))
            }
        });
        let github = async {
            let read = self.github.read();
            let runners = read.list_runners().await?;
            let groups = read.runner_groups().await?;
            Ok::<_, ObserveError>(state::GithubState {
                runners,
                groups,
                scale_sets: None,
            })
        };
        let (hosts, github) = futures_util::try_join!(try_join_all(host_futures), github)?;
        tracing::debug!(
            "observed {} host(s) and {} GitHub runner(s) with {} GitHub request(s)",
            hosts.len(),
            github.runners.len(),
            self.github.stats().total()
        );
        Ok(Observed {
            hosts: hosts.into_iter().collect(),
            github,
            demand: BTreeMap::new(),
        })
    }
}
