//! Reads: the containers and volumes a fleet owns on one host, its pool images, what the
//! engine offers for GPUs, and the events of the fleet's containers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};

use super::{DockerError, DockerHost, api_path};
use crate::contract::{self, labels};
use crate::state::{
    ContainerState, ContainerStatus, EngineInfo, GpuInventory, HostState, QuarantineRecord,
    VolumeState,
};

/// The image label that says which runner version an image carries (the reference image sets
/// it from `RUNNER_VERSION`).
pub const IMAGE_VERSION_LABEL: &str = "org.opencontainers.image.version";

/// What the spec names on one host, whose presence the planner checks.
#[derive(Debug, Clone, Default)]
pub struct Named {
    pub images: Vec<String>,
    /// Volumes the pools mount, and the state volume names of wanted persistent runners.
    pub volumes: Vec<String>,
    /// User networks (not `bridge`, `host`, `none` or `container:...`).
    pub networks: Vec<String>,
}

/// One host's engine, read-only.
pub struct DockerRead<'a> {
    pub(super) host: &'a DockerHost,
}

impl DockerRead<'_> {
    /// Everything about this host the planner needs: the fleet's containers and volumes, and
    /// what the spec names on it (images, volumes, user networks).
    pub async fn observe(
        &self,
        fleet: &str,
        named: &Named,
        gpus: GpuInventory,
    ) -> Result<HostState, DockerError> {
        let containers = self.owned_containers(fleet).await?;
        let volumes = self.volumes(fleet, &named.volumes).await?;
        let mut images = BTreeMap::new();
        let mut image_versions = BTreeMap::new();
        for image in &named.images {
            let found = self.image_version(image).await?;
            images.insert(image.clone(), found.is_some());
            if let Some(Some(version)) = found {
                image_versions.insert(image.clone(), version);
            }
        }
        let mut networks = BTreeMap::new();
        for network in &named.networks {
            networks.insert(network.clone(), self.has_network(network).await?);
        }
        let engine = self.engine_info().await?;
        Ok(HostState {
            containers,
            volumes,
            images,
            gpus,
            engine,
            networks,
            bind_sources: BTreeMap::new(),
            image_versions,
        })
    }

    /// Whether the engine has a network of that name (or id).
    pub async fn has_network(&self, network: &str) -> Result<bool, DockerError> {
        let options = bollard::query_parameters::InspectNetworkOptions::default();
        let path = api_path::segment(network).map_err(|e| {
            self.host
                .api_error(&format!("inspect network {network}"), e)
        })?;
        match self.host.docker.inspect_network(&path, Some(options)).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self
                .host
                .api_error(&format!("inspect network {network}"), e)),
        }
    }

    /// Containers labelled `fleet.name=<fleet>`, running or not, sorted by name.
    pub async fn owned_containers(&self, fleet: &str) -> Result<Vec<ContainerState>, DockerError> {
        let filters = HashMap::from([("label", vec![format!("{}={fleet}", labels::FLEET)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .host
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.host.api_error("list containers", e))?;
        let mut containers: Vec<ContainerState> = summaries
            .into_iter()
            .filter_map(|s| {
                let name = s.names?.first()?.trim_start_matches('/').to_string();
                let labels: BTreeMap<String, String> =
                    s.labels.unwrap_or_default().into_iter().collect();
                // Docker filtered by label already; check again, ownership is the one rule
                // that must never bend.
                if !contract::labels_owned(&labels, fleet) {
                    return None;
                }
                let status = match s.state {
                    Some(ContainerSummaryStateEnum::RUNNING) => ContainerStatus::Running,
                    Some(ContainerSummaryStateEnum::PAUSED) => ContainerStatus::Paused,
                    Some(ContainerSummaryStateEnum::RESTARTING) => ContainerStatus::Restarting,
                    Some(ContainerSummaryStateEnum::REMOVING) => ContainerStatus::Removing,
                    Some(ContainerSummaryStateEnum::EXITED) => ContainerStatus::Exited,
                    Some(ContainerSummaryStateEnum::DEAD) => ContainerStatus::Dead,
                    Some(ContainerSummaryStateEnum::STOPPING) => ContainerStatus::Running,
                    _ => ContainerStatus::Created,
                };
                // A restarting container shows the code of its last exit.
                let exit_code = match status {
                    ContainerStatus::Exited | ContainerStatus::Restarting => {
                        s.status.as_deref().and_then(exit_code_of)
                    }
                    _ => None,
                };
                Some(ContainerState {
                    id: s.id.unwrap_or_default(),
                    name,
                    labels,
                    status,
                    exit_code,
                    created: s.created.unwrap_or_default(),
                    finished: None,
                })
            })
            .collect();
        for c in containers
            .iter_mut()
            .filter(|c| c.status == ContainerStatus::Exited)
        {
            c.finished = self.finished_at(&c.id).await?;
        }
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    /// When an exited container exited (seconds since the epoch), for the planner's rule on
    /// runners that cannot start (src/plan/crashloop.rs). A container removed since it was
    /// listed has none.
    async fn finished_at(&self, id: &str) -> Result<Option<i64>, DockerError> {
        let what = || format!("inspect container {id}");
        let path = api_path::segment(id).map_err(|e| self.host.api_error(&what(), e))?;
        let options = bollard::query_parameters::InspectContainerOptions::default();
        match self
            .host
            .docker
            .inspect_container(&path, Some(options))
            .await
        {
            Ok(inspect) => Ok(inspect
                .state
                .and_then(|s| s.finished_at)
                .and_then(|t| parse_rfc3339_secs(&t))),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.host.api_error(&what(), e)),
        }
    }

    /// The volumes the fleet owns, sorted by name.
    pub async fn owned_volumes(&self, fleet: &str) -> Result<Vec<VolumeState>, DockerError> {
        Ok(self
            .volumes(fleet, &[])
            .await?
            .into_iter()
            .filter(|v| v.owned)
            .collect())
    }

    /// The volumes the fleet owns and those of `names` (owned or not: a volume the spec mounts,
    /// or one holding a persistent runner's state volume name), sorted by name.
    async fn volumes(
        &self,
        fleet: &str,
        names: &[String],
    ) -> Result<Vec<VolumeState>, DockerError> {
        // One listing, filtered by fleet's label unless some names must be seen whoever made
        // them: one call whatever the number of names.
        let filters = HashMap::from([("label", vec![format!("{}={fleet}", labels::FLEET)])]);
        let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
        let listing = self
            .host
            .docker
            .list_volumes(names.is_empty().then_some(options))
            .await
            .map_err(|e| self.host.api_error("list volumes", e))?;
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let mut volumes: Vec<VolumeState> = listing
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| volume_state(v.name, v.labels.into_iter().collect(), fleet))
            .filter(|v| v.owned || wanted.contains(v.name.as_str()))
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// Whether the engine has `image` locally.
    pub async fn has_image(&self, image: &str) -> Result<bool, DockerError> {
        let what = || format!("inspect image {image}");
        let path = api_path::segment(image).map_err(|e| self.host.api_error(&what(), e))?;
        match self.host.docker.inspect_image(&path).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.host.api_error(&what(), e)),
        }
    }

    /// Whether the engine has `image` (`None`: it does not), and the version its
    /// `org.opencontainers.image.version` label gives, if any.
    pub async fn image_version(&self, image: &str) -> Result<Option<Option<String>>, DockerError> {
        let what = || format!("inspect image {image}");
        let path = api_path::segment(image).map_err(|e| self.host.api_error(&what(), e))?;
        match self.host.docker.inspect_image(&path).await {
            Ok(found) => Ok(Some(
                found
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(IMAGE_VERSION_LABEL).cloned()),
            )),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.host.api_error(&what(), e)),
        }
    }

    /// The engine's NVIDIA runtime and CDI devices.
    pub async fn engine_info(&self) -> Result<EngineInfo, DockerError> {
        let info = self
            .host
            .docker
            .info()
            .await
            .map_err(|e| self.host.api_error("read engine info", e))?;
        let nvidia_runtime = info
            .runtimes
            .as_ref()
            .is_some_and(|r| r.contains_key("nvidia"))
            || info.default_runtime.as_deref() == Some("nvidia");
        let mut cdi_devices: Vec<String> = info
            .discovered_devices
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.source.as_deref() == Some("cdi"))
            .filter_map(|d| d.id)
            .collect();
        cdi_devices.sort();
        Ok(EngineInfo {
            nvidia_runtime,
            cdi_devices,
        })
    }
}

/// A volume as the planner sees it: whether fleet `fleet` owns it, and for what.
fn volume_state(name: String, labels: BTreeMap<String, String>, fleet: &str) -> VolumeState {
    let owned = contract::labels_owned(&labels, fleet);
    let label = |key: &str| owned.then(|| labels.get(key).cloned()).flatten();
    VolumeState {
        owned,
        pool: label(labels::POOL),
        runner: label(labels::RUNNER),
        scale_set: label(labels::SCALE_SET),
        quarantine: label(labels::GPU_QUARANTINE).map(|uuid| quarantine_record(uuid, &labels)),
        name,
    }
}

/// A GPU quarantine record from its labels; one that does not say when or why is malformed.
fn quarantine_record(uuid: String, labels: &BTreeMap<String, String>) -> QuarantineRecord {
    let since = labels
        .get(labels::GPU_QUARANTINE_SINCE)
        .and_then(|s| s.parse::<i64>().ok());
    let reason = labels.get(labels::GPU_QUARANTINE_REASON).cloned();
    let until_reset = labels
        .get(labels::GPU_QUARANTINE_UNTIL_RESET)
        .map(String::as_str);
    let malformed = match (&since, &reason, until_reset) {
        (Some(_), Some(_), Some("true" | "false")) if uuid.starts_with("GPU-") => None,
        _ => Some(format!(
            "its labels {}, {} and {} do not read as a time, a reason and true or false, or its GPU `{}` is no GPU UUID",
            labels::GPU_QUARANTINE_SINCE,
            labels::GPU_QUARANTINE_REASON,
            labels::GPU_QUARANTINE_UNTIL_RESET,
            uuid.chars().take(80).collect::<String>()
        )),
    };
    QuarantineRecord {
        uuid,
        reason: reason.unwrap_or_default(),
        since,
        until_reset: until_reset == Some("true"),
        malformed,
    }
}

/// A Docker event of one of the fleet's containers.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container: String,
    /// `die`, `destroy` or `oom`.
    pub action: String,
    /// Docker's time of the event.
    pub at: SystemTime,
}

impl DockerRead<'_> {
    /// The `die`, `destroy` and `oom` events of the fleet's containers, as they happen. The
    /// stream ends when the engine goes away.
    pub fn container_events(
        &self,
        fleet: &str,
    ) -> impl futures_util::Stream<Item = ContainerEvent> + use<> {
        use bollard::query_parameters::EventsOptionsBuilder;
        use futures_util::StreamExt;
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![format!("{}={fleet}", labels::FLEET)]),
            (
                "event",
                vec!["die".to_string(), "destroy".into(), "oom".into()],
            ),
        ]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        self.host
            .docker
            .events(Some(options))
            .take_while(|event| std::future::ready(event.is_ok()))
            .filter_map(|event| std::future::ready(event.ok().map(container_event)))
    }
}

fn container_event(event: bollard::models::EventMessage) -> ContainerEvent {
    let container = event
        .actor
        .and_then(|a| a.attributes)
        .and_then(|a| a.get("name").cloned())
        .unwrap_or_default();
    let at = event
        .time_nano
        .and_then(|n| u64::try_from(n).ok())
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
        .unwrap_or_else(SystemTime::now);
    ContainerEvent {
        container,
        action: event.action.unwrap_or_default(),
        at,
    }
}

/// The code in Docker's status text: `Exited (137) 5 minutes ago` -> 137, `Restarting (75) 2
/// seconds ago` -> 75.
/// Seconds since the epoch of an RFC 3339 time as Docker writes it (`None` before 1970, which
/// is how Docker says "never").
fn parse_rfc3339_secs(time: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339(time).ok()?;
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

fn exit_code_of(status: &str) -> Option<i64> {
    let rest = status
        .strip_prefix("Exited (")
        .or_else(|| status.strip_prefix("Restarting ("))?;
    rest[..rest.find(')')?].parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn docker_times() {
        assert_eq!(
            super::parse_rfc3339_secs("2026-12-08T00:30:00.123456789Z"),
            Some(1_796_689_800)
        );
        assert_eq!(super::parse_rfc3339_secs("0001-01-01T00:00:00Z"), None);
    }

    #[test]
    fn exit_codes_from_status_text() {
        assert_eq!(super::exit_code_of("Exited (0) 2 seconds ago"), Some(0));
        assert_eq!(
            super::exit_code_of("Exited (137) About an hour ago"),
            Some(137)
        );
        assert_eq!(super::exit_code_of("Up 5 minutes"), None);
        assert_eq!(
            super::exit_code_of("Restarting (75) 2 seconds ago"),
            Some(75)
        );
    }
}
