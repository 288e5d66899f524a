//! The observation: assembles an [`Observed`](state::Observed), the planner's only input
//! besides the spec, from the readers of Docker ([`crate::docker`]), GitHub ([`crate::github`])
//! and the GPUs ([`gpu`], [`inventory`]). Any failure means no observation: fleet never plans on
//! a partial view. The one exception is deliberate and recorded in the observation: hosts left
//! out with `--exclude-host` (or, under `fleet watch`, hosts that do not answer) are listed in
//! `Observed::unobserved`, and the planner leaves alone whatever may live there.

pub mod gpu;
pub mod health;
pub mod holder;
pub mod inventory;
pub mod nvml_events;
pub mod nvml_reader;
pub mod scalesets;
/// The observation's data types live in the leaf module `state.rs`; this path stays for its users.
pub use crate::state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::docker::{DockerError, DockerHost, Named};
use crate::github::{GithubClient, GithubError, RetryPolicy};
use crate::spec::{ResolvedPool, Spec};
use inventory::{GpuProbe, PROBE_IMAGE_ENV, ProbeWhen};
use state::{HostState, Observed};

/// Why the world could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// Hosts that could not be reached or read, each error naming its host; `others`: the
    /// spec has other hosts, which `--exclude-host` would let fleet plan.
    #[error("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Hosts {
        errors: Vec<DockerError>,
        others: bool,
    },
    /// `--exclude-host` or `--host` named a host the spec does not have.
    #[error("the spec has no host `{name}` (its hosts: {known})")]
    UnknownHost { name: String, known: String },
    #[error(transparent)]
    Github(#[from] GithubError),
}

impl ObserveError {
    pub fn hint(&self) -> Option<String> {
        const START: &str =
            "start the Docker engine, or point hosts.<name>.docker or DOCKER_HOST at it";
        match self {
            ObserveError::Hosts { errors, others } => {
                let mut hints = Vec::new();
                if errors.iter().any(DockerError::is_unreachable) {
                    hints.push(START);
                }
                if *others {
                    hints.push("`--exclude-host NAME` plans and applies the other hosts and leaves that host's runners and registrations alone");
                }
                (!hints.is_empty()).then(|| hints.join("; "))
            }
            ObserveError::Docker(e) if e.is_unreachable() => Some(START.into()),
            ObserveError::Docker(_) | ObserveError::UnknownHost { .. } => None,
            ObserveError::Github(e) => e.hint(),
        }
    }
}

/// Connections to every outside system a spec names.
#[derive(Clone)]
pub struct Observers {
    /// The hosts observations read.
    pub hosts: BTreeMap<String, DockerHost>,
    pub github: GithubClient,
    /// Hosts of the spec that are not read: excluded, or not answering under `fleet watch`.
    pub unobserved: BTreeSet<String>,
    gpu_probe: Arc<GpuProbe>,
    /// The scale set service (it contacts nothing until asked: reading costs a registration
    /// token).
    pub scale_sets: Option<crate::scaleset::ScaleSetClient>,
}

/// How one observation treats the hosts.
#[derive(Debug, Clone, Copy)]
pub struct ObserveOptions {
    /// A host that fails, or does not answer within `host_limit`, is left out of this
    /// observation (listed as unobserved) instead of failing it: `fleet watch` and `status`.
    pub tolerate_down_hosts: bool,
    /// The most one host's reads may take; `None`: the engine's own request timeout.
    pub host_limit: Option<Duration>,
    pub probe: ProbeWhen,
}

impl Default for ObserveOptions {
    /// Every host must answer: plan, apply and destroy.
    fn default() -> Self {
        ObserveOptions {
            tolerate_down_hosts: false,
            host_limit: None,
            probe: ProbeWhen::Needed,
        }
    }
}

/// An observation, and the hosts left out of it because they failed (tolerant observations).
pub struct Observation {
    pub observed: Observed,
    pub failed: BTreeMap<String, DockerError>,
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
        Observers::connect_excluding(spec, base_dir, env, policy, &BTreeSet::new()).await
    }

    /// As [`Observers::connect`], leaving out the hosts in `excluded` (each must be a host of
    /// the spec). The others are connected at once; every one that fails is reported.
    pub async fn connect_excluding(
        spec: &Spec,
        base_dir: &Path,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        policy: RetryPolicy,
        excluded: &BTreeSet<String>,
    ) -> Result<Observers, ObserveError> {
        let (observers, failed) =
            Observers::connect_available(spec, base_dir, env, policy, excluded).await?;
        if failed.is_empty() {
            Ok(observers)
        } else {
            let others = spec.effective_hosts().len() > failed.len();
            Err(ObserveError::Hosts {
                errors: failed.into_values().collect(),
                others,
            })
        }
    }

    /// Connects to every host not in `excluded`, at once, and returns the hosts that failed
    /// beside the observers of the others (those are listed as unobserved).
    pub async fn connect_available(
        spec: &Spec,
        base_dir: &Path,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        policy: RetryPolicy,
        excluded: &BTreeSet<String>,
    ) -> Result<(Observers, BTreeMap<String, DockerError>), ObserveError> {
        let declared = spec.effective_hosts();
        if let Some(name) = excluded.iter().find(|n| !declared.contains_key(*n)) {
            return Err(ObserveError::UnknownHost {
                name: name.clone(),
                known: declared.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        let github = GithubClient::from_spec(spec, base_dir, env, policy)?;
        let attempts = declared
            .iter()
            .filter(|(name, _)| !excluded.contains(*name))
            .map(|(name, host)| async move {
                let result = DockerHost::connect_host(name, host, base_dir, env).await;
                (name.clone(), result)
            });
        let mut hosts = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for (name, result) in join_all(attempts).await {
            match result {
                Ok(connection) => {
                    hosts.insert(name, connection);
                }
                Err(e) => {
                    failed.insert(name, e);
                }
            }
        }
        let mut unobserved = excluded.clone();
        unobserved.extend(failed.keys().cloned());
        let probe = GpuProbe::new(env(PROBE_IMAGE_ENV), Duration::ZERO);
        let scale_sets = scale_set_client(&github);
        let observers =
            Observers::from_connections(hosts, github, scale_sets, unobserved, Arc::new(probe));
        Ok((observers, failed))
    }

    /// Observers made of connections the caller keeps (`fleet watch`: the scale set client
    /// too, whose admin token outlives a reconcile), with its GPU probe.
    pub fn from_connections(
        hosts: BTreeMap<String, DockerHost>,
        github: GithubClient,
        scale_sets: Option<crate::scaleset::ScaleSetClient>,
        unobserved: BTreeSet<String>,
        gpu_probe: Arc<GpuProbe>,
    ) -> Observers {
        Observers {
            hosts,
            github,
            unobserved,
            gpu_probe,
            scale_sets,
        }
    }

    /// Reads the runner scale sets into `observed` (which needs a registration token: `apply`
    /// and `watch` only) when the spec has autoscaled pools or a host holds the record of one
    /// fleet made. A failure of the scale set service never fails the observation: it is
    /// recorded in `observed.github.scale_set_error`, and the planner leaves the autoscaled
    /// pools (and the scale sets of pools that left the spec) as they are while the other
    /// pools converge.
    pub async fn read_scale_sets(&self, spec: &Spec, observed: &mut Observed) {
        let Some(client) = &self.scale_sets else {
            return;
        };
        let autoscaled = spec.resolved_pools().iter().any(|p| p.autoscale.is_some());
        let recorded = observed
            .hosts
            .values()
            .flat_map(|h| &h.volumes)
            .any(|v| v.owned && v.scale_set.is_some());
        if !autoscaled && !recorded {
            // No scale set to make, none made: no registration token to spend.
            return;
        }
        match scalesets::read(client).await {
            Ok(sets) => observed.github.scale_sets = Some(sets),
            Err(e) => {
                tracing::warn!(
                    "cannot read the runner scale sets ({e}); autoscaled pools and scale sets are left as they are until the service answers again, the other pools converge"
                );
                observed.github.scale_set_error = Some(e.to_string());
            }
        }
    }

    /// Observes every connected host and GitHub at once; any failure fails the observation.
    pub async fn observe(&self, spec: &Spec) -> Result<Observed, ObserveError> {
        let observation = self.observe_with(spec, ObserveOptions::default()).await?;
        Ok(observation.observed)
    }

    /// Observes every connected host and GitHub at once. A GitHub failure fails the
    /// observation; a host's failure does too, unless `options` tolerates it, in which case the
    /// host is listed as unobserved and its error returned beside the observation.
    pub async fn observe_with(
        &self,
        spec: &Spec,
        options: ObserveOptions,
    ) -> Result<Observation, ObserveError> {
        let pools = spec.resolved_pools();
        let host_futures = self
            .hosts
            .iter()
            .map(|(name, host)| self.observe_host(spec, &pools, name, host, options));
        let github = async {
            let read = self.github.read();
            let runners = read.list_runners().await?;
            let groups = read.runner_groups().await?;
            let runner_version = offered_runner_version(&read).await;
            Ok::<_, ObserveError>(state::GithubState {
                runners,
                groups,
                runner_version,
                ..state::GithubState::default()
            })
        };
        let (hosts, github) = futures_util::join!(join_all(host_futures), github);
        let github = github?;
        let mut observed = Observed {
            github,
            unobserved: self.unobserved.clone(),
            now: unix_now(),
            ..Observed::default()
        };
        let mut failed = BTreeMap::new();
        for (name, result) in hosts {
            match result {
                Ok(state) => {
                    observed.hosts.insert(name, state);
                }
                Err(e) => {
                    failed.insert(name, e);
                }
            }
        }
        health::stamp_leftovers(&mut observed);
        if !failed.is_empty() && !options.tolerate_down_hosts {
            let others = spec.effective_hosts().len() > failed.len();
            return Err(ObserveError::Hosts {
                errors: failed.into_values().collect(),
                others,
            });
        }
        observed.unobserved.extend(failed.keys().cloned());
        tracing::debug!(
            "observed {} host(s) and {} GitHub runner(s) with {} GitHub request(s)",
            observed.hosts.len(),
            observed.github.runners.len(),
            self.github.stats().total()
        );
        Ok(Observation { observed, failed })
    }

    /// One host: its GPU inventory, then its containers, volumes, images and engine, within
    /// `options.host_limit`.
    async fn observe_host(
        &self,
        spec: &Spec,
        pools: &[ResolvedPool],
        name: &str,
        host: &DockerHost,
        options: ObserveOptions,
    ) -> (String, Result<HostState, DockerError>) {
        let named = named_on_host(&spec.name, pools, name);
        let declared = spec.effective_hosts();
        let reading = async {
            let gpus = match declared.get(name) {
                Some(h) => {
                    self.gpu_probe
                        .inventory(&spec.name, name, &h.gpus, host, pools, options.probe)
                        .await
                }
                None => inventory::GpuRead::default(),
            };
            let signals = gpus.signals.clone();
            let mut state = host
                .read()
                .observe(&spec.name, &named, gpus.inventory.clone())
                .await?;
            state.gpus = inventory::GpuRead {
                inventory: state.gpus,
                signals,
            }
            .classified(
                &spec.gpu_health_settings(),
                &state.containers,
                &state.volumes,
            );
            health::time_dirty(name, &mut state.gpus);
            if host.is_local() {
                state.bind_sources = bind_sources(pools, name);
            }
            Ok(state)
        };
        let result = match options.host_limit {
            None => reading.await,
            Some(limit) => tokio::time::timeout(limit, reading)
                .await
                .unwrap_or_else(|_| {
                    Err(DockerError::Timeout {
                        host: name.to_string(),
                        endpoint: host.endpoint.clone(),
                        after: limit,
                    })
                }),
        };
        (name.to_string(), result)
    }
}

/// One host alone, without GitHub: its containers and its GPU inventory (the GPU probe runs
/// for a remote `gpus: auto` engine). `fleet gpus --host` shows it.
pub async fn observe_one_host(
    spec: &Spec,
    name: &str,
    base_dir: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Observed, ObserveError> {
    let declared = spec.effective_hosts();
    let Some(host) = declared.get(name) else {
        return Err(ObserveError::UnknownHost {
            name: name.to_string(),
            known: declared.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    let connection = DockerHost::connect_host(name, host, base_dir, env).await?;
    let probe = GpuProbe::new(env(PROBE_IMAGE_ENV), Duration::ZERO);
    let pools = spec.resolved_pools();
    let gpus = probe
        .inventory(
            &spec.name,
            name,
            &host.gpus,
            &connection,
            &pools,
            ProbeWhen::Always,
        )
        .await;
    let containers = connection.read().owned_containers(&spec.name).await?;
    let volumes = connection.read().owned_volumes(&spec.name).await?;
    let gpus = gpus.classified(&spec.gpu_health_settings(), &containers, &volumes);
    let state = HostState {
        containers,
        gpus,
        ..HostState::default()
    };
    Ok(Observed {
        hosts: BTreeMap::from([(name.to_string(), state)]),
        ..Observed::default()
    })
}

/// The state volume names of the persistent runners the pools on `host` want: a volume of
/// such a name that fleet did not make is never used, and the plan says so.
fn state_volume_names<'a>(
    fleet: &'a str,
    pools: &'a [ResolvedPool],
    host: &'a str,
) -> impl Iterator<Item = String> + 'a {
    pools
        .iter()
        .filter(move |p| !p.ephemeral && p.hosts.iter().any(|h| h == host))
        .flat_map(move |p| {
            (0..p.count as usize).map(move |i| {
                crate::contract::naming::state_volume(&crate::contract::naming::persistent_name(
                    fleet, &p.name, i,
                ))
            })
        })
}

/// What the pools on `host` name there: images, volumes (with wanted state volumes) and user
/// networks, each once.
fn named_on_host(fleet: &str, pools: &[ResolvedPool], host: &str) -> Named {
    let on_host: Vec<&ResolvedPool> = pools
        .iter()
        .filter(|p| p.hosts.iter().any(|h| h == host))
        .collect();
    let images: BTreeSet<String> = on_host.iter().map(|p| p.image.clone()).collect();
    let volumes: BTreeSet<String> = on_host
        .iter()
        .flat_map(|p| p.volumes.iter().filter(|v| !v.is_bind()))
        .map(|v| v.source.clone())
        .chain(state_volume_names(fleet, pools, host))
        .collect();
    let networks: BTreeSet<String> = on_host
        .iter()
        .map(|p| p.network.clone())
        .filter(|n| is_user_network(n))
        .collect();
    Named {
        images: images.into_iter().collect(),
        volumes: volumes.into_iter().collect(),
        networks: networks.into_iter().collect(),
    }
}

/// A network the engine must already have: not one of Docker's own, nor another container's.
fn is_user_network(network: &str) -> bool {
    !matches!(network, "bridge" | "host" | "none" | "default") && !network.starts_with("container:")
}

/// Each bind-mount source of the pools on `host`, and whether it exists on this machine (the
/// engine's own, when it listens on a local socket). A missing one is said in the operator's
/// log (info, `-v`), never in the plan: the spec names the path (docs/security.md).
fn bind_sources(pools: &[ResolvedPool], host: &str) -> BTreeMap<String, bool> {
    let sources: BTreeMap<String, bool> = pools
        .iter()
        .filter(|p| p.hosts.iter().any(|h| h == host) && p.count > 0)
        .flat_map(|p| p.volumes.iter().filter(|v| v.is_bind()))
        .map(|v| (v.source.clone(), Path::new(&v.source).exists()))
        .collect();
    for (source, _) in sources.iter().filter(|(_, exists)| !**exists) {
        tracing::info!(
            "host `{host}`: bind-mount source {} does not exist: creating its runners will fail",
            crate::escape::escaped(source)
        );
    }
    sources
}

/// The scale set client of `github`'s scope; `None`, with a warning, when it cannot be made.
pub fn scale_set_client(github: &GithubClient) -> Option<crate::scaleset::ScaleSetClient> {
    scalesets::client_for(github)
        .inspect_err(|e| tracing::warn!("no runner scale set client: {e}"))
        .ok()
}

/// Seconds since the epoch, for the planner's timed rules (`Observed::now`).
fn unix_now() -> Option<i64> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    i64::try_from(secs).ok()
}

/// How long the runner version GitHub offers is kept before it is read again.
const RUNNER_VERSION_TTL: Duration = Duration::from_secs(3600);

/// The runner version GitHub offers for download, read at most once an hour per process (it
/// changes with runner releases, and only feeds a warning); `None` when it cannot be read,
/// which never fails an observation.
async fn offered_runner_version(read: &crate::github::GithubRead) -> Option<String> {
    static CACHE: std::sync::Mutex<Option<(std::time::Instant, Option<String>)>> =
        std::sync::Mutex::new(None);
    let cached = CACHE
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .filter(|(at, _)| at.elapsed() < RUNNER_VERSION_TTL);
    if let Some((_, version)) = cached {
        return version;
    }
    let version = match read.latest_runner_version().await {
        Ok(version) => version,
        Err(e) => {
            tracing::debug!("cannot read the runner version GitHub offers: {e}");
            return None;
        }
    };
    if let Ok(mut cache) = CACHE.lock() {
        *cache = Some((std::time::Instant::now(), version.clone()));
    }
    version
}
