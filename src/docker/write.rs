//! Writes, each idempotent: what exists already is not an error, what is gone already is not
//! an error. Only the executor calls these. Containers are started, written into and removed
//! by id only, and removed (like volumes) only when they carry the fleet's label
//! (docs/security.md, "Never touch what is not proven owned").

use std::collections::{BTreeMap, HashMap};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    StartContainerOptions, UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;

mod workdir;

pub use workdir::{WORK_DIR_HELPER_LABEL, WorkDir};

use super::{DockerError, DockerHost, api_path};
use crate::contract::{self, labels};
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
        if self.volume_labels(name).await?.is_some() {
            return Ok(false);
        }
        self.make_volume(name, labels).await.map(|()| true)
    }

    /// `POST /volumes/create`, for a volume known to be missing.
    async fn make_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), DockerError> {
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        match self.host.docker.create_volume(request).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failed(format!("create volume {name}"), &e)),
        }
    }

    /// Creates a volume fleet `fleet` will own and use (a persistent runner's state volume), or
    /// adopts it when it is there with `fleet.name=<fleet>`. One there without that label was
    /// not made by this fleet: an error, and it is neither used nor changed. Returns whether it
    /// was created.
    pub async fn create_owned_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        fleet: &str,
    ) -> Result<bool, DockerError> {
        match self.volume_labels(name).await? {
            Some(found) if labels_owned(&found, fleet) => Ok(false),
            Some(_) => Err(self.refused(
                format!("use volume {name}"),
                format!(
                    "volume {name} exists and does not carry the label {}={fleet}: another fleet or someone else made it, and fleet never mounts or removes a volume it cannot prove it created. Rename or remove it, or rename the pool",
                    labels::FLEET
                ),
            )),
            // Looked up just now: made without asking again.
            None => self.make_volume(name, labels).await.map(|()| true),
        }
    }

    /// The labels of volume `name`; `None` when there is no such volume.
    async fn volume_labels(
        &self,
        name: &str,
    ) -> Result<Option<HashMap<String, String>>, DockerError> {
        let path = self.segment(|| format!("inspect volume {name}"), name)?;
        match self.host.docker.inspect_volume(&path).await {
            Ok(volume) => Ok(Some(volume.labels)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.failed(format!("inspect volume {name}"), &e)),
        }
    }

    /// Removes volume `name` if it carries `fleet.name=<fleet>`; one already gone is fine, one
    /// without the label is an error and stays.
    pub async fn remove_owned_volume(&self, name: &str, fleet: &str) -> Result<(), DockerError> {
        let what = || format!("remove volume {name}");
        let Some(labels) = self.volume_labels(name).await? else {
            return Ok(());
        };
        if !labels_owned(&labels, fleet) {
            return Err(self.refused(what(), not_owned("volume", name, fleet)));
        }
        let options = RemoveVolumeOptionsBuilder::new().force(false).build();
        let path = self.segment(what, name)?;
        match self.host.docker.remove_volume(&path, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.failed(what(), &e)),
        }
    }

    /// Creates container `name`; returns its id. A name in use is a `Write` error with status
    /// 409 whose message says which container holds it and whose it is.
    pub async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let fleet = body
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::FLEET))
            .cloned()
            .unwrap_or_default();
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        match self.host.docker.create_container(Some(options), body).await {
            Ok(created) => Ok(created.id),
            Err(e) if status_of(&e) == Some(409) => Err(DockerError::Write {
                host: self.host.name.clone(),
                what: format!("create container {name}"),
                status: Some(409),
                message: self.name_conflict(name, &fleet).await,
            }),
            Err(e) => Err(self.failed(format!("create container {name}"), &e)),
        }
    }

    /// Why `name` is taken: the container that holds it, and whose it is.
    async fn name_conflict(&self, name: &str, fleet: &str) -> String {
        let holder = match api_path::segment(name) {
            Ok(path) => self.host.docker.inspect_container(&path, None).await.ok(),
            Err(_) => None,
        };
        let id = holder.as_ref().and_then(|c| c.id.as_deref()).unwrap_or("?");
        let owner = holder
            .as_ref()
            .and_then(|c| c.config.as_ref())
            .and_then(|config| config.labels.as_ref())
            .and_then(|labels| labels.get(labels::FLEET))
            .cloned();
        match owner {
            Some(owner) if owner == fleet => format!(
                "container {name} already exists (id {}) and is fleet `{fleet}`'s, made after this plan was: run fleet apply again",
                short(id)
            ),
            owner => format!(
                "container {name} already exists (id {}, {}) and fleet never removes a container it cannot prove it created: rename or remove it, or rename the pool",
                short(id),
                match owner {
                    Some(other) => format!("labelled {}={other}", labels::FLEET),
                    None => format!("without a {} label", labels::FLEET),
                }
            ),
        }
    }

    /// Extracts a tar archive at the root of container `id`'s filesystem, before it starts.
    /// Entries keep the owner and mode the archive gives them.
    pub async fn upload_archive(&self, id: &str, archive: Vec<u8>) -> Result<(), DockerError> {
        let id = container_id(id)
            .map_err(|message| self.refused(format!("write into container {id}"), message))?;
        let options = UploadToContainerOptionsBuilder::new()
            .path("/")
            .no_overwrite_dir_non_dir("true")
            .build();
        let body = bollard::body_full(archive.into());
        let path = self.segment(|| format!("write into container {id}"), id)?;
        match self
            .host
            .docker
            .upload_to_container(&path, Some(options), body)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(format!("write into container {}", short(id)), &e)),
        }
    }

    /// Starts container `id`, made with its standard input open once (`OpenStdin`, `StdinOnce`),
    /// and writes `line` to it, which then closes. Attached before the start, so that nothing
    /// is lost; an attach costs the engine far less than an archive written into the container.
    pub async fn start_with_stdin(&self, id: &str, line: &[u8]) -> Result<(), DockerError> {
        use tokio::io::AsyncWriteExt;
        let id = container_id(id)
            .map_err(|message| self.refused(format!("attach to container {id}"), message))?;
        let options = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stream(true)
            .build();
        let path = self.segment(|| format!("attach to container {id}"), id)?;
        let mut attached = self
            .host
            .docker
            .attach_container(&path, Some(options))
            .await
            .map_err(|e| self.failed(format!("attach to container {}", short(id)), &e))?;
        self.start_container(id).await?;
        // io errors name no data: the line never reaches a message.
        let written = async {
            attached.input.write_all(line).await?;
            attached.input.flush().await?;
            attached.input.shutdown().await
        };
        written.await.map_err(|e| {
            self.refused(
                format!("write the registration secret to container {}", short(id)),
                e.to_string(),
            )
        })
    }

    /// Starts container `id`.
    pub async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        let id = container_id(id)
            .map_err(|message| self.refused(format!("start container {id}"), message))?;
        let options = None::<StartContainerOptions>;
        let path = self.segment(|| format!("start container {id}"), id)?;
        match self.host.docker.start_container(&path, options).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(format!("start container {}", short(id)), &e)),
        }
    }

    /// The full id of the container whose id is `id`, if it carries `fleet.name=<fleet>`;
    /// `None` when it is gone. Never by name: `id` must be a container id, and the container
    /// Docker finds must have it. One without the label is an error.
    pub async fn owned_container(
        &self,
        id: &str,
        fleet: &str,
    ) -> Result<Option<String>, DockerError> {
        let what = || format!("remove container {}", short(id));
        let id = container_id(id).map_err(|message| self.refused(what(), message))?;
        let path = self.segment(what, id)?;
        let found = match self.host.docker.inspect_container(&path, None).await {
            Ok(found) => found,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.failed(what(), &e)),
        };
        let full_id = found.id.unwrap_or_default();
        // Docker resolves a name before an id prefix: a container named like the id is not it.
        if !full_id.starts_with(id) {
            return Ok(None);
        }
        let name = found.name.unwrap_or_default();
        let labels = found
            .config
            .and_then(|config| config.labels)
            .unwrap_or_default();
        if !labels_owned(&labels, fleet) {
            let container = format!("container {} ({})", short(id), name.trim_start_matches('/'));
            return Err(self.refused(what(), not_owned("container", &container, fleet)));
        }
        Ok(Some(full_id))
    }

    /// Removes the container whose id is `id` (running or not, with its anonymous volumes;
    /// named volumes stay) if [`DockerWrite::owned_container`] says it is the fleet's. One
    /// already gone is fine; one without the label is an error and stays.
    pub async fn remove_owned_container(&self, id: &str, fleet: &str) -> Result<(), DockerError> {
        let Some(full_id) = self.owned_container(id, fleet).await? else {
            return Ok(());
        };
        self.remove_checked_container(&full_id).await
    }

    /// Removes the container of `full_id`, which [`DockerWrite::owned_container`] has just
    /// proved fleet's (a container's id and labels never change: one inspection is enough).
    pub async fn remove_checked_container(&self, full_id: &str) -> Result<(), DockerError> {
        let id = full_id;
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let path = self.segment(|| format!("remove container {}", short(id)), full_id)?;
        match self
            .host
            .docker
            .remove_container(&path, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.failed(format!("remove container {}", short(id)), &e)),
        }
    }

    /// Asks the container whose id is `id` to stop, if [`DockerWrite::owned_container`] says it
    /// is the fleet's: SIGTERM (through its init process, to the runner, which ends its session
    /// and saves its state), then up to `timeout` for it to exit. Docker counts it as stopped by
    /// hand, so a restart policy does not start it again. One already stopped or gone is
    /// [`Stop::Stopped`]; the caller decides what to do with one still running.
    pub async fn stop_owned_container(
        &self,
        id: &str,
        fleet: &str,
        timeout: std::time::Duration,
    ) -> Result<Stop, DockerError> {
        let Some(full_id) = self.owned_container(id, fleet).await? else {
            return Ok(Stop::Stopped);
        };
        self.stop_checked_container(&full_id, timeout).await
    }

    /// [`DockerWrite::stop_owned_container`] of a container that
    /// [`DockerWrite::owned_container`] has just proved fleet's.
    pub async fn stop_checked_container(
        &self,
        full_id: &str,
        timeout: std::time::Duration,
    ) -> Result<Stop, DockerError> {
        let id = full_id;
        let what = || format!("stop container {}", short(id));
        let options = KillContainerOptionsBuilder::new().signal("SIGTERM").build();
        match self
            .host
            .docker
            .kill_container(full_id, Some(options))
            .await
        {
            Ok(()) => {}
            // 409: not running.
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => return Ok(Stop::Stopped),
            Err(e) => return Err(self.failed(what(), &e)),
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Stop::StillRunning);
            }
            let options = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            let mut exits = self.host.docker.wait_container(full_id, Some(options));
            // In slices shorter than the client's per-request timeout.
            match tokio::time::timeout(left.min(WAIT_SLICE), exits.next()).await {
                Err(_) | Ok(Some(Err(BollardError::RequestTimeoutError))) => continue,
                // A non-zero exit code comes as an error of its own.
                Ok(
                    None | Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })),
                ) => return Ok(Stop::Stopped),
                Ok(Some(Err(e))) if status_of(&e) == Some(404) => return Ok(Stop::Stopped),
                Ok(Some(Err(e))) => return Err(self.failed(what(), &e)),
            }
        }
    }

    /// A write fleet refuses to make itself.
    /// `value` as a segment of a Docker API path (src/docker/api_path.rs); refused as `what`.
    fn segment(&self, what: impl FnOnce() -> String, value: &str) -> Result<String, DockerError> {
        api_path::segment(value).map_err(|message| self.refused(what(), message))
    }

    fn refused(&self, what: String, message: String) -> DockerError {
        DockerError::Write {
            host: self.host.name.clone(),
            what,
            status: None,
            message,
        }
    }
}

/// The longest single wait for a container to stop: below the client's per-request timeout
/// (src/docker/endpoint/).
const WAIT_SLICE: std::time::Duration = std::time::Duration::from_secs(50);

/// How a graceful stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The container is not running (any more).
    Stopped,
    /// It still runs after its stop timeout.
    StillRunning,
}

/// `id` if it is a container id (12 to 64 hex digits), for the writes that go by id only.
fn container_id(id: &str) -> Result<&str, String> {
    let hex = id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if hex && (12..=64).contains(&id.len()) {
        Ok(id)
    } else {
        Err(format!(
            "`{id}` is not a container id; fleet removes and starts containers only by the id it created or observed"
        ))
    }
}

/// The ownership rule (`contract::labels_owned`) on the labels Docker returns.
fn labels_owned(labels: &HashMap<String, String>, fleet: &str) -> bool {
    let labels: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    contract::labels_owned(&labels, fleet)
}

/// The first 12 digits of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn not_owned(kind: &str, what: &str, fleet: &str) -> String {
    format!(
        "{what} is not fleet `{fleet}`'s: it does not carry the label {}={fleet}, and fleet never removes a {kind} it cannot prove it created",
        labels::FLEET
    )
}
