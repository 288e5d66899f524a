//! The work folder of an ephemeral runner of a `docker_socket` pool (`<work_dir>/<runner>`,
//! bind-mounted at the identical path; docs/apply.md, "Docker for jobs") goes with its
//! runner. The entrypoint empties it when the runner ends; fleet does not reach the host's
//! files itself (the engine may be remote), so the empty folder is removed by a one-shot
//! container on the runner's own engine and image: `rmdir`, which leaves a folder that is not
//! empty where it is.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::StreamExt;

use super::{DockerWrite, status_of};
use crate::contract::container::WORK_DIR_ENV;
use crate::contract::labels;
use crate::docker::DockerError;

/// The label of the one-shot container that removes a work folder: the fleet's name. Not
/// `fleet.name`, so that it is never taken for a runner.
pub const WORK_DIR_HELPER_LABEL: &str = "fleet.work-dir-helper";

/// A runner's work folder on the host, and the image its runner ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkDir {
    pub path: String,
    pub image: String,
}

impl DockerWrite<'_> {
    /// The work folder of the container of `full_id` (already proved fleet's) when it is an
    /// ephemeral runner's (no `fleet.registration` label: persistent runners keep theirs)
    /// named after the runner, as fleet makes them.
    pub async fn ephemeral_work_dir(&self, full_id: &str) -> Result<Option<WorkDir>, DockerError> {
        let what = || format!("inspect container {}", super::short(full_id));
        let path = self.segment(what, full_id)?;
        let found = match self.host.docker.inspect_container(&path, None).await {
            Ok(found) => found,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.failed(what(), &e)),
        };
        let name = found.name.unwrap_or_default();
        let name = name.trim_start_matches('/');
        let Some(config) = found.config else {
            return Ok(None);
        };
        let persistent = config
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(labels::REGISTRATION));
        let prefix = format!("{WORK_DIR_ENV}=");
        let dir = config
            .env
            .unwrap_or_default()
            .into_iter()
            .find_map(|e| e.strip_prefix(&prefix).map(str::to_string));
        Ok(match (dir, config.image) {
            (Some(path), Some(image))
                if !persistent && !name.is_empty() && path.ends_with(&format!("/{name}")) =>
            {
                Some(WorkDir { path, image })
            }
            _ => None,
        })
    }

    /// Removes the empty work folder `dir` with a one-shot container of its runner's image (as
    /// root, no network, the folder's parent bind-mounted at its own path); whether it went.
    pub async fn remove_work_dir(&self, fleet: &str, dir: &WorkDir) -> Result<bool, DockerError> {
        let what = || format!("remove the work folder {}", dir.path);
        let Some((parent, _)) = dir.path.rsplit_once('/').filter(|(p, _)| !p.is_empty()) else {
            return Ok(false);
        };
        let body = ContainerCreateBody {
            image: Some(dir.image.clone()),
            entrypoint: Some(vec!["rmdir".into(), "--".into(), dir.path.clone()]),
            cmd: Some(vec![]),
            user: Some("0".into()),
            network_disabled: Some(true),
            labels: Some(HashMap::from([(
                WORK_DIR_HELPER_LABEL.to_string(),
                fleet.to_string(),
            )])),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{parent}:{parent}")]),
                network_mode: Some("none".into()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::new().build();
        let id = self
            .host
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.failed(what(), &e))?
            .id;
        let ran = self.run_to_end(&id).await;
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = self.host.docker.remove_container(&id, Some(options)).await
            && status_of(&e) != Some(404)
        {
            tracing::warn!(
                "cannot remove the helper container {}: {e}",
                super::short(&id)
            );
        }
        ran.map_err(|e| self.failed(what(), &e))
    }

    /// Starts the helper `id` and waits for it; whether it exited 0.
    async fn run_to_end(&self, id: &str) -> Result<bool, bollard::errors::Error> {
        self.host
            .docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await?;
        match self.host.docker.wait_container(id, None).next().await {
            Some(Ok(exit)) => Ok(exit.status_code == 0),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => Ok(false),
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }
}
