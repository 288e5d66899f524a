//! Docker: the containers and volumes a fleet owns on one host, its pool images, and what the
//! engine offers for GPUs. Read-only here; the executor is the only writer.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};

use super::state::{
    ContainerState, ContainerStatus, EngineInfo, GpuInventory, HostState, VolumeState, labels,
};

/// The socket used when neither the spec nor $DOCKER_HOST names an engine.
pub const DEFAULT_DOCKER_ENDPOINT: &str = "unix:///var/run/docker.sock";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach Docker at {endpoint} (host `{host}`): is the engine running? ({message})"
    )]
    Unreachable {
        host: String,
        endpoint: String,
        message: String,
    },
    #[error("Docker at {endpoint} (host `{host}`) failed to {what}: {message}")]
    Api {
        host: String,
        endpoint: String,
        what: String,
        message: String,
    },
}

/// A connection to one host's engine.
#[derive(Clone)]
pub struct DockerHost {
    pub name: String,
    pub endpoint: String,
    pub docker: Docker,
}

impl DockerHost {
    /// Connects to `endpoint` (the spec's `docker`), else $DOCKER_HOST, else the local socket,
    /// and agrees on an API version with the engine.
    pub async fn connect(
        name: &str,
        endpoint: Option<&str>,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<DockerHost, DockerError> {
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| env("DOCKER_HOST").filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_DOCKER_ENDPOINT.to_string());
        let unreachable = |message: String| DockerError::Unreachable {
            host: name.to_string(),
            endpoint: endpoint.clone(),
            message,
        };
        let docker = Docker::connect_with_host(&endpoint)
            .map_err(|e| unreachable(e.to_string()))?
            .with_timeout(Duration::from_secs(60));
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(DockerHost {
            name: name.to_string(),
            endpoint,
            docker,
        })
    }

    /// Whether the engine runs on this machine (then NVML here describes its GPUs).
    pub fn is_local(&self) -> bool {
        self.endpoint.starts_with("unix://")
    }

    pub(crate) fn api_error(&self, what: &str, e: impl std::fmt::Display) -> DockerError {
        DockerError::Api {
            host: self.name.clone(),
            endpoint: self.endpoint.clone(),
            what: what.to_string(),
            message: e.to_string(),
        }
    }

    /// Everything about this host the planner needs.
    pub async fn observe(
        &self,
        fleet: &str,
        images: &[String],
        volume_names: &[String],
        gpus: GpuInventory,
    ) -> Result<HostState, DockerError> {
        let containers = self.owned_containers(fleet).await?;
        let volumes = self.volumes(fleet, volume_names).await?;
        let mut image_presence = BTreeMap::new();
        for image in images {
            image_presence.insert(image.clone(), self.has_image(image).await?);
        }
        let engine = self.engine_info().await?;
        Ok(HostState {
            containers,
            volumes,
            images: image_presence,
            gpus,
            engine,
        })
    }

    /// Containers labelled `fleet.name=<fleet>`, running or not, sorted by name.
    pub async fn owned_containers(&self, fleet: &str) -> Result<Vec<ContainerState>, DockerError> {
        let filters = HashMap::from([("label", vec![format!("{}={fleet}", labels::FLEET)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.api_error("list containers", e))?;
        let mut containers: Vec<ContainerState> = summaries
            .into_iter()
            .filter_map(|s| {
                let name = s.names?.first()?.trim_start_matches('/').to_string();
                let labels: BTreeMap<String, String> =
                    s.labels.unwrap_or_default().into_iter().collect();
                // Docker filtered by label already; check again, ownership is the one rule
                // that must never bend.
                if labels.get(labels::FLEET).map(String::as_str) != Some(fleet) {
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
                let exit_code = match status {
                    ContainerStatus::Exited => s.status.as_deref().and_then(exit_code_of),
                    _ => None,
                };
                Some(ContainerState {
                    id: s.id.unwrap_or_default(),
                    name,
                    labels,
                    status,
                    exit_code,
                    created: s.created.unwrap_or_default(),
                })
            })
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    /// The volumes the spec names (owned or not) and those the fleet owns, sorted by name.
    async fn volumes(
        &self,
        fleet: &str,
        names: &[String],
    ) -> Result<Vec<VolumeState>, DockerError> {
        let filters = HashMap::from([("label", vec![format!("{}={fleet}", labels::FLEET)])]);
        let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
        let owned = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| self.api_error("list volumes", e))?;
        let mut volumes: BTreeMap<String, VolumeState> = owned
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.labels.get(labels::FLEET).map(String::as_str) == Some(fleet))
            .map(|v| {
                (
                    v.name.clone(),
                    VolumeState {
                        name: v.name,
                        owned: true,
                    },
                )
            })
            .collect();
        for name in names {
            if volumes.contains_key(name) {
                continue;
            }
            match self.docker.inspect_volume(name).await {
                Ok(v) => {
                    let owned = v.labels.get(labels::FLEET).map(String::as_str) == Some(fleet);
                    volumes.insert(
                        name.clone(),
                        VolumeState {
                            name: v.name,
                            owned,
                        },
                    );
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(self.api_error(&format!("inspect volume {name}"), e)),
            }
        }
        Ok(volumes.into_values().collect())
    }

    /// Whether the engine has `image` locally.
    pub async fn has_image(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.api_error(&format!("inspect image {image}"), e)),
        }
    }

    /// The engine's NVIDIA runtime and CDI devices.
    pub async fn engine_info(&self) -> Result<EngineInfo, DockerError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.api_error("read engine info", e))?;
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

/// The code in Docker's status text: `Exited (137) 5 minutes ago` -> 137.
fn exit_code_of(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_codes_from_status_text() {
        assert_eq!(super::exit_code_of("Exited (0) 2 seconds ago"), Some(0));
        assert_eq!(
            super::exit_code_of("Exited (137) About an hour ago"),
            Some(137)
        );
        assert_eq!(super::exit_code_of("Up 5 minutes"), None);
    }
}
