//! Writes, each idempotent: what exists already is not an error, what is gone already is not
//! an error. Only the executor calls these.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, StartContainerOptions,
};
use futures_util::StreamExt;

use super::{DockerError, DockerHost};
use crate::spec::PullPolicy;

/// One host's engine, to change.
pub struct DockerWrite<'a> {
    pub(super) host: &'a DockerHost,
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn message_of(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

impl DockerWrite<'_> {
    fn failed(&self, what: String, e: &BollardError) -> DockerError {
        DockerError::Write {
            host: self.host.name.clone(),
            what,
            status: status_of(e),
            message: message_of(e),
        }
    }

    /// Makes sure `image` is on the host, as the pool's pull policy says.
    pub async fn ensure_image(&self, image: &str, pull: PullPolicy) -> Result<(), DockerError> {
        let present = self.host.read().has_image(image).await?;
        match (pull, present) {
            (PullPolicy::Never, false) => Err(DockerError::ImageMissing {
                host: self.host.name.clone(),
                image: image.to_string(),
            }),
            (PullPolicy::Never, true) | (PullPolicy::IfMissing, true) => Ok(()),
            (PullPolicy::IfMissing, false) | (PullPolicy::Always, _) => {
                self.pull(image, pull == PullPolicy::Always && present)
                    .await
            }
        }
    }

    /// Pulls `image`; with `fallback` (an `always` pull of an image already present) a
    /// registry that cannot be reached is a warning, and the local copy serves.
    async fn pull(&self, image: &str, fallback: bool) -> Result<(), DockerError> {
        tracing::info!("host `{}`: pulling {image}", self.host.name);
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut stream = self.host.docker.create_image(Some(options), None, None);
        while let Some(step) = stream.next().await {
            let Err(e) = step else { continue };
            if fallback {
                tracing::warn!(
                    "host `{}`: cannot pull {image} ({}); using the local copy",
                    self.host.name,
                    message_of(&e)
                );
                return Ok(());
            }
            return Err(DockerError::Pull {
                host: self.host.name.clone(),
                image: image.to_string(),
                message: message_of(&e),
            });
        }
        Ok(())
    }

    /// Creates a named volume with `labels`; an existing one is left as it is. Returns whether
    /// it was created.
    pub async fn create_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<bool, DockerError> {
        match self.host.docker.inspect_volume(name).await {
            Ok(_) => return Ok(false),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(self.failed(format!("inspect volume {name}"), &e)),
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        match self.host.docker.create_volume(request).await {
            Ok(_) => Ok(true),
            Err(e) => Err(self.failed(format!("create volume {name}"), &e)),
        }
    }

    /// Removes a volume; one already gone is fine.
    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveVolumeOptionsBuilder::new().force(false).build();
        match self.host.docker.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.failed(format!("remove volume {name}"), &e)),
        }
    }

    /// Creates container `name`; returns its id.
    pub async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        match self.host.docker.create_container(Some(options), body).await {
            Ok(created) => Ok(created.id),
            Err(e) => Err(self.failed(format!("create container {name}"), &e)),
        }
    }

    pub async fn start_container(&self, name: &str) -> Result<(), DockerError> {
        let options = None::<StartContainerOptions>;
        match self.host.docker.start_container(name, options).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(format!("start container {name}"), &e)),
        }
    }

    /// Removes a container, running or not, with its anonymous volumes (named volumes stay).
    pub async fn remove_container(&self, name_or_id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let removed = self
            .host
            .docker
            .remove_container(name_or_id, Some(options))
            .await;
        match removed {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.failed(format!("remove container {name_or_id}"), &e)),
        }
    }
}
