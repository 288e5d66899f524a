//! Docker writes, each idempotent: what exists already is not an error, what is gone already
//! is not an error. Only the executor calls these.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};
use futures_util::StreamExt;

use crate::observe::docker::DockerHost;
use crate::spec::PullPolicy;

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

/// Makes sure `image` is on the host, as the pool's pull policy says.
pub async fn ensure_image(host: &DockerHost, image: &str, pull: PullPolicy) -> Result<(), String> {
    let present = host.has_image(image).await.map_err(|e| e.to_string())?;
    match (pull, present) {
        (PullPolicy::Never, false) => Err(format!(
            "image {image} is not on host `{}` and the pool says `pull: never`",
            host.name
        )),
        (PullPolicy::Never, true) | (PullPolicy::IfMissing, true) => Ok(()),
        (PullPolicy::IfMissing, false) | (PullPolicy::Always, _) => {
            tracing::info!("host `{}`: pulling {image}", host.name);
            let options = CreateImageOptionsBuilder::new().from_image(image).build();
            let mut stream = host.docker.create_image(Some(options), None, None);
            while let Some(step) = stream.next().await {
                if let Err(e) = step {
                    // With `always`, an image already present still serves when the registry is down.
                    if pull == PullPolicy::Always && present {
                        tracing::warn!(
                            "host `{}`: cannot pull {image} ({}); using the local copy",
                            host.name,
                            message_of(&e)
                        );
                        return Ok(());
                    }
                    return Err(format!(
                        "host `{}`: cannot pull {image}: {}",
                        host.name,
                        message_of(&e)
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Creates a named volume with fleet's labels; an existing one is left as it is.
pub async fn create_volume(
    host: &DockerHost,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<(), String> {
    match host.docker.inspect_volume(name).await {
        Ok(_) => return Ok(()),
        Err(e) if status_of(&e) == Some(404) => {}
        Err(e) => {
            return Err(format!(
                "host `{}`: cannot inspect volume {name}: {}",
                host.name,
                message_of(&e)
            ));
        }
    }
    host.docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "host `{}`: cannot create volume {name}: {}",
                host.name,
                message_of(&e)
            )
        })
}

/// Removes a volume; one already gone is fine.
pub async fn remove_volume(host: &DockerHost, name: &str) -> Result<(), String> {
    let options = RemoveVolumeOptionsBuilder::new().force(false).build();
    match host.docker.remove_volume(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if status_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(format!(
            "host `{}`: cannot remove volume {name}: {}",
            host.name,
            message_of(&e)
        )),
    }
}

/// Creates container `name`; returns its id.
pub async fn create_container(
    host: &DockerHost,
    name: &str,
    body: ContainerCreateBody,
) -> Result<String, String> {
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    host.docker
        .create_container(Some(options), body)
        .await
        .map(|r| r.id)
        .map_err(|e| {
            format!(
                "host `{}`: cannot create container {name}: {}",
                host.name,
                message_of(&e)
            )
        })
}

pub async fn start_container(host: &DockerHost, name: &str) -> Result<(), String> {
    host.docker
        .start_container(
            name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|e| {
            format!(
                "host `{}`: cannot start container {name}: {}",
                host.name,
                message_of(&e)
            )
        })
}

/// Removes a container, running or not, with its anonymous volumes (named volumes stay).
pub async fn remove_container(host: &DockerHost, name_or_id: &str) -> Result<(), String> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match host
        .docker
        .remove_container(name_or_id, Some(options))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if status_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(format!(
            "host `{}`: cannot remove container {name_or_id}: {}",
            host.name,
            message_of(&e)
        )),
    }
}
