//! What a runner container is made of: the container contract (docs/apply.md, "The container
//! contract"), as a Docker create request, and the registration secret as fleet hands it over:
//! a line on standard input (`secrets: stdin`) or a file written into the container before it
//! starts (`secrets: file`). Pure, so it is tested without an engine.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType, RestartPolicy,
    RestartPolicyNameEnum,
};

use super::naming::state_volume;
use super::{RunnerConfig, labels};
use crate::secret::Secret;
use crate::spec::{GpuMode, GpuRequest, ResolvedPool, SecretDelivery, parse_memory};

/// Where a persistent runner keeps `.runner`, `.credentials` and `.credentials_rsaparams`.
pub const STATE_DIR: &str = "/var/lib/fleet-runner";

/// Where fleet writes a runner's JIT config or registration token (`secrets: file`): a file
/// owned by root with mode 0600, in a directory owned by root with mode 0700.
pub const SECRET_FILE: &str = "/run/fleet/registration";
/// The variable that tells the container where [`SECRET_FILE`] is. Not a secret.
pub const SECRET_FILE_ENV: &str = "FLEET_SECRET_FILE";
/// Set to `1` with `secrets: stdin`: the secret line comes on standard input as the container
/// first starts, then standard input closes. Not a secret.
pub const SECRET_STDIN_ENV: &str = "FLEET_SECRET_STDIN";
/// The variable that holds the JIT config: in the secret file, or (`secrets: env`) in the
/// container's environment.
pub const JIT_CONFIG_VAR: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";
/// The variable that holds the registration token, as [`JIT_CONFIG_VAR`].
pub const TOKEN_VAR: &str = "ACTIONS_RUNNER_INPUT_TOKEN";

/// Why the secret file could not be made. Never holds the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("the {0} GitHub returned holds a line break: it cannot be one line of the secret file")]
    LineBreak(&'static str),
    #[error("cannot build the archive of the secret file: {0}")]
    Archive(String),
}

/// How the registration secret reaches a new container.
pub enum SecretHandover {
    /// `secrets: file`: an archive written into it before it starts.
    Archive(Vec<u8>),
    /// `secrets: stdin`: a line written to its standard input as it starts.
    Stdin(Secret),
}

/// How the runner registers.
pub enum Registration {
    /// Ephemeral: a single-use JIT configuration.
    Jit(Secret),
    /// Persistent: `config.sh` inputs; the token only when the runner is not configured yet;
    /// `host_mark`, the label that tells on which host the registration was made
    /// ([`crate::contract::host_label`]): `config.sh` registers with it besides the pool's labels.
    Persistent {
        url: String,
        token: Option<Secret>,
        host_mark: String,
    },
}

impl Registration {
    /// The secret and the variable that carries it, if this registration has one.
    fn secret(&self) -> Option<(&'static str, &Secret)> {
        match self {
            Registration::Jit(jit) => Some((JIT_CONFIG_VAR, jit)),
            Registration::Persistent { token, .. } => token.as_ref().map(|t| (TOKEN_VAR, t)),
        }
    }

    /// For a persistent runner: `register` (configure with the token, discarding any
    /// registration saved in the state volume: GitHub does not know it, or the volume is new)
    /// or `restore` (run with the registration the state volume holds).
    pub fn mode(&self) -> Option<&'static str> {
        match self {
            Registration::Jit(_) => None,
            Registration::Persistent { token: Some(_), .. } => Some("register"),
            Registration::Persistent { token: None, .. } => Some("restore"),
        }
    }
}

/// Everything needed to make one runner's container.
pub struct RunnerContainer<'a> {
    pub fleet: &'a str,
    pub pool: &'a ResolvedPool,
    pub config: &'a RunnerConfig,
    pub name: &'a str,
    pub gpus: &'a [String],
    /// The host has GPUs (then GPU-less runners are fenced off them).
    pub host_has_gpus: bool,
    /// The engine has a runtime named `nvidia` (used by `gpu_mode: env`).
    pub nvidia_runtime: bool,
    pub registration: Registration,
}

impl RunnerContainer<'_> {
    /// The labels of the container: ownership, pool, configuration and GPU ledger; for a
    /// persistent runner, whether it registers or restores its registration.
    pub fn labels(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            (labels::FLEET.to_string(), self.fleet.to_string()),
            (labels::POOL.to_string(), self.pool.name.clone()),
            (labels::CONFIG_HASH.to_string(), self.config.hash()),
            (labels::CONFIG.to_string(), self.config.to_label()),
            (labels::GPUS.to_string(), self.gpus.join(",")),
        ]);
        if let Some(mode) = self.registration.mode() {
            map.insert(labels::REGISTRATION.to_string(), mode.to_string());
        }
        map
    }

    /// The environment: the pool's, then the contract's (which wins).
    pub fn env(&self) -> Vec<String> {
        let mut env: Vec<(String, String)> = self
            .pool
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let labels = self.config.labels.join(",");
        env.push(("RUNNER_NAME".into(), self.name.to_string()));
        env.push(("RUNNER_LABELS".into(), labels.clone()));
        env.push(("FLEET_POOL".into(), self.pool.name.clone()));
        match (self.registration.secret(), self.pool.secrets) {
            (Some((var, secret)), SecretDelivery::Env) => {
                env.push((var.into(), secret.expose().to_string()));
            }
            (Some(_), SecretDelivery::File) => {
                env.push((SECRET_FILE_ENV.into(), SECRET_FILE.into()));
            }
            (Some(_), SecretDelivery::Stdin) => {
                env.push((SECRET_STDIN_ENV.into(), "1".into()));
            }
            (None, _) => {}
        }
        match &self.registration {
            Registration::Jit(_) => {}
            Registration::Persistent { url, host_mark, .. } => {
                env.push(("ACTIONS_RUNNER_INPUT_URL".into(), url.clone()));
                env.push(("ACTIONS_RUNNER_INPUT_NAME".into(), self.name.to_string()));
                env.push((
                    "ACTIONS_RUNNER_INPUT_LABELS".into(),
                    format!("{labels},{host_mark}"),
                ));
                // config.sh reads it as --runnergroup (organization scope).
                if let Some(group) = &self.pool.runner_group {
                    env.push(("ACTIONS_RUNNER_INPUT_RUNNERGROUP".into(), group.clone()));
                }
                env.push(("FLEET_STATE_DIR".into(), STATE_DIR.into()));
                // The entrypoint passes --no-default-labels from this, not from the label list.
                let no_defaults = if self.pool.no_default_labels {
                    "1"
                } else {
                    "0"
                };
                env.push(("FLEET_NO_DEFAULT_LABELS".into(), no_defaults.into()));
                env.push((
                    "FLEET_RUNNER_UPDATE".into(),
                    self.pool.runner_update.as_str().into(),
                ));
                if let Some(mode) = self.registration.mode() {
                    env.push(("FLEET_REGISTRATION".into(), mode.to_string()));
                }
            }
        }
        if let Some(work) = runner_work_dir(self.pool, self.name) {
            env.push((WORK_DIR_ENV.into(), work));
        }
        // A CUDA image with NVIDIA_VISIBLE_DEVICES=all baked in would otherwise see every GPU
        // when nvidia is the engine's default runtime.
        if self.host_has_gpus && self.pool.gpus == GpuRequest::Count(0) {
            env.push(("NVIDIA_VISIBLE_DEVICES".into(), "void".into()));
        }
        if self.pool.gpu_mode == GpuMode::Env && !self.gpus.is_empty() {
            env.push(("NVIDIA_VISIBLE_DEVICES".into(), self.gpus.join(",")));
            if !self.pool.env.contains_key("NVIDIA_DRIVER_CAPABILITIES") {
                env.push((
                    "NVIDIA_DRIVER_CAPABILITIES".into(),
                    "compute,utility".into(),
                ));
            }
        }
        env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    fn mounts(&self) -> Vec<Mount> {
        let mut mounts: Vec<Mount> = self
            .pool
            .volumes
            .iter()
            .map(|v| Mount {
                target: Some(v.target.clone()),
                source: Some(v.source.clone()),
                typ: Some(if v.is_bind() {
                    MountType::BIND
                } else {
                    MountType::VOLUME
                }),
                read_only: Some(v.read_only),
                ..Default::default()
            })
            .collect();
        if matches!(self.registration, Registration::Persistent { .. }) {
            mounts.push(Mount {
                target: Some(STATE_DIR.into()),
                source: Some(state_volume(self.name)),
                typ: Some(MountType::VOLUME),
                read_only: Some(false),
                ..Default::default()
            });
        }
        if self.pool.docker_socket {
            mounts.push(Mount {
                target: Some("/var/run/docker.sock".into()),
                source: Some("/var/run/docker.sock".into()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            });
        }
        mounts
    }

    /// The work folder of a `docker_socket` pool's runner, at the identical path. A bind in
    /// `Binds`, not a mount: Docker makes a missing host directory for a bind (root's; the
    /// entrypoint gives it to the runner user), and a mount's `CreateMountpoint` needs API 1.42.
    fn binds(&self) -> Option<Vec<String>> {
        runner_work_dir(self.pool, self.name).map(|work| vec![format!("{work}:{work}")])
    }

    /// GPUs by UUID, never by count (Docker's `count: N` always means GPUs 0..N-1).
    fn device_requests(&self) -> Option<Vec<DeviceRequest>> {
        if self.gpus.is_empty() {
            return None;
        }
        match self.pool.gpu_mode {
            GpuMode::Nvidia => Some(vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(self.gpus.to_vec()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]),
            GpuMode::Cdi => Some(vec![DeviceRequest {
                driver: Some("cdi".into()),
                device_ids: Some(
                    self.gpus
                        .iter()
                        .map(|uuid| format!("nvidia.com/gpu={uuid}"))
                        .collect(),
                ),
                ..Default::default()
            }]),
            // The runtime reads NVIDIA_VISIBLE_DEVICES (see `env`).
            GpuMode::Env => None,
        }
    }

    /// `gpu_mode: env` on an engine with an `nvidia` runtime that is not its default.
    fn runtime(&self) -> Option<String> {
        (self.pool.gpu_mode == GpuMode::Env && !self.gpus.is_empty() && self.nvidia_runtime)
            .then(|| "nvidia".to_string())
    }

    /// How the registration's secret reaches the container: with `secrets: stdin` the line
    /// written to its standard input as it starts, with `secrets: file` the tar archive that
    /// puts that line at [`SECRET_FILE`] (extracted at `/`: `run/fleet/` root 0700, the file
    /// root 0600). The line: `ACTIONS_RUNNER_INPUT_JITCONFIG=<config>` or
    /// `ACTIONS_RUNNER_INPUT_TOKEN=<token>`. `None` with `secrets: env` or without a secret.
    pub fn secret_handover(&self) -> Result<Option<SecretHandover>, SecretFileError> {
        let Some((var, secret)) = self.registration.secret() else {
            return Ok(None);
        };
        match self.pool.secrets {
            SecretDelivery::Stdin => {
                secret_line(var, secret).map(|l| Some(SecretHandover::Stdin(l)))
            }
            SecretDelivery::File => {
                secret_file_archive(var, secret).map(|a| Some(SecretHandover::Archive(a)))
            }
            SecretDelivery::Env => Ok(None),
        }
    }

    /// Whether the container's standard input is kept open for the secret line.
    fn secret_on_stdin(&self) -> bool {
        self.pool.secrets == SecretDelivery::Stdin && self.registration.secret().is_some()
    }

    /// The pool's `security`: no-new-privileges, the pids limit, NET_RAW dropped.
    fn harden(&self, host: &mut HostConfig) {
        let security = self.pool.security;
        if security.no_new_privileges {
            host.security_opt = Some(vec!["no-new-privileges:true".into()]);
        }
        host.pids_limit = security.pids_limit.map(i64::from);
        if !security.net_raw {
            host.cap_drop = Some(vec!["NET_RAW".into()]);
        }
    }

    /// The create request.
    pub fn body(&self) -> ContainerCreateBody {
        let restart = if self.pool.ephemeral {
            RestartPolicyNameEnum::NO
        } else {
            RestartPolicyNameEnum::UNLESS_STOPPED
        };
        let mut host = HostConfig {
            network_mode: Some(self.pool.network.clone()),
            nano_cpus: self.pool.cpus.map(|c| (c * 1e9) as i64),
            memory: self.pool.memory.as_deref().and_then(parse_memory),
            restart_policy: Some(RestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            mounts: Some(self.mounts()),
            binds: self.binds(),
            device_requests: self.device_requests(),
            runtime: self.runtime(),
            // An init process as PID 1 reaps the orphans a job leaves and passes signals on.
            init: Some(true),
            ..Default::default()
        };
        self.harden(&mut host);
        // Standard input open, for the secret line; closed once fleet has written it.
        let stdin = self.secret_on_stdin().then_some(true);
        ContainerCreateBody {
            image: Some(self.pool.image.clone()),
            env: Some(self.env()),
            labels: Some(self.labels()),
            hostname: Some(self.name.chars().take(63).collect()),
            host_config: Some(host),
            open_stdin: stdin,
            stdin_once: stdin,
            attach_stdin: stdin,
            // `docker stop` by hand and the engine's own shutdown give the runner as long as
            // fleet does.
            stop_timeout: Some(i64::from(self.pool.stop_timeout_secs)),
            ..Default::default()
        }
    }
}

/// The exit code of a persistent runner's container that has no registration saved and no token
/// to register with (ci/runner/entrypoint.sh): fleet makes it again with a registration token.
pub const EXIT_REGISTER_AGAIN: i64 = 75;

/// The variable that tells the entrypoint the runner's work folder.
pub const WORK_DIR_ENV: &str = "FLEET_WORK_DIR";

/// The work folder of runner `name` of `pool`, when the pool shares the host's Docker engine
/// (`docker_socket`): `<work_dir>/<name>`, bind-mounted at the identical path, because the
/// runner gives the host's engine the paths it sees (a `container:` job's workspace, a service
/// container's mounts), and the engine looks for them on the host. `None` otherwise (the
/// runner's own `_work`).
pub fn runner_work_dir(pool: &ResolvedPool, name: &str) -> Option<String> {
    pool.docker_socket
        .then(|| format!("{}/{name}", pool.work_dir))
}

/// The work folder a runner registers with: [`runner_work_dir`], else the runner's default.
pub fn registered_work_folder(pool: &ResolvedPool, name: &str) -> String {
    runner_work_dir(pool, name).unwrap_or_else(|| "_work".to_string())
}

/// What the reference entrypoint means by a failure exit code (docs/apply.md, "Exit codes");
/// `None` for 0 and codes it does not give.
pub fn exit_meaning(code: i64) -> Option<&'static str> {
    match code {
        1 => Some(
            "the runner stopped with an error: GitHub refused its credentials, its registration was deleted, or it could not start",
        ),
        5 => Some("session conflict: another listener holds this runner's session"),
        7 => Some("the runner's version is deprecated: rebuild the image with a newer runner"),
        EXIT_REGISTER_AGAIN => Some("nothing to restore and no token: it registers again"),
        78 => Some(
            "the container is not set up as fleet's container contract says, or config.sh failed",
        ),
        _ => None,
    }
}

/// The secret's one line, `<var>=<secret>` and a line break.
fn secret_line(var: &'static str, secret: &Secret) -> Result<Secret, SecretFileError> {
    let value = secret.expose();
    if value.contains(['\n', '\r']) {
        return Err(SecretFileError::LineBreak(var));
    }
    Ok(Secret::new(format!("{var}={value}\n")))
}

/// The tar archive of the secret file, one line `<var>=<secret>`: see
/// [`RunnerContainer::secret_archive`].
pub fn secret_file_archive(var: &'static str, secret: &Secret) -> Result<Vec<u8>, SecretFileError> {
    let line = secret_line(var, secret)?;
    let contents = line.expose();
    let dir = SECRET_FILE.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut archive = tar::Builder::new(Vec::new());
    let mut entry = |path: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(if data.is_empty() {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(data.len() as u64);
        archive.append_data(&mut header, path.trim_start_matches('/'), data)
    };
    // tar's errors name paths and sizes, never the data.
    entry(dir, 0o700, &[])
        .and_then(|()| entry(SECRET_FILE, 0o600, contents.as_bytes()))
        .and_then(|()| archive.into_inner())
        .map_err(|e| SecretFileError::Archive(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{PullPolicy, Volume};

    fn pool(ephemeral: bool, gpus: GpuRequest) -> ResolvedPool {
        ResolvedPool {
            name: "gpu".into(),
            host: "local".into(),
            count: 1,
            labels: vec!["gpu".into()],
            no_default_labels: false,
            ephemeral,
            gpus,
            runner_group: None,
            image: "runner:1".into(),
            pull: PullPolicy::IfMissing,
            volumes: vec![
                Volume {
                    source: "cache".into(),
                    target: "/cache".into(),
                    read_only: false,
                },
                Volume {
                    source: "/srv/ro".into(),
                    target: "/ro".into(),
                    read_only: true,
                },
            ],
            env: BTreeMap::from([("CCACHE_DIR".into(), "/cache".into())]),
            network: "none".into(),
            cpus: Some(2.5),
            memory: Some("16g".into()),
            docker_socket: false,
            gpu_mode: GpuMode::Nvidia,
            hosts: vec!["local".into()],
            autoscale: None,
            secrets: crate::spec::SecretDelivery::File,
            security: crate::spec::ResolvedSecurity::default(),
            runner_update: crate::spec::RunnerUpdate::Disabled,
            stop_timeout_secs: 30,
            work_dir: "/var/lib/fleet-work".into(),
        }
    }

    #[test]
    fn ephemeral_gpu_runner_follows_the_contract() {
        let pool = pool(true, GpuRequest::Count(1));
        let config = RunnerConfig::for_pool("zq", &pool);
        let gpus = vec!["GPU-b".to_string()];
        let c = RunnerContainer {
            fleet: "zq",
            pool: &pool,
            config: &config,
            name: "zq-gpu-abc123",
            gpus: &gpus,
            host_has_gpus: true,
            nvidia_runtime: false,
            registration: Registration::Jit(Secret::new("JITSECRET")),
        };
        let body = c.body();
        let env = body.env.clone().expect("env");
        assert!(env.contains(&"FLEET_SECRET_FILE=/run/fleet/registration".to_string()));
        assert!(
            env.iter().all(|e| !e.contains("JITSECRET")),
            "the JIT config is not in the environment"
        );
        assert!(env.contains(&"RUNNER_NAME=zq-gpu-abc123".to_string()));
        assert!(env.contains(&"RUNNER_LABELS=self-hosted,Linux,X64,gpu,fleet.zq".to_string()));
        assert!(env.contains(&"FLEET_POOL=gpu".to_string()));
        assert!(env.contains(&"CCACHE_DIR=/cache".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES")));
        let labels = body.labels.clone().expect("labels");
        assert_eq!(labels["fleet.gpus"], "GPU-b");
        assert!(
            labels.values().all(|v| !v.contains("JITSECRET")),
            "a secret in a label"
        );
        let host = body.host_config.expect("host config");
        let request = &host.device_requests.expect("device requests")[0];
        assert_eq!(request.driver.as_deref(), Some("nvidia"));
        assert_eq!(request.device_ids, Some(gpus.clone()));
        assert_eq!(request.count, None, "never count");
        assert_eq!(request.capabilities, Some(vec![vec!["gpu".to_string()]]));
        assert_eq!(host.nano_cpus, Some(2_500_000_000));
        assert_eq!(host.memory, Some(16 << 30));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(
            host.restart_policy.and_then(|r| r.name),
            Some(RestartPolicyNameEnum::NO)
        );
        assert_eq!(
            host.init,
            Some(true),
            "an init process reaps a job's orphans"
        );
        assert_eq!(body.stop_timeout, Some(30), "the pool's stop timeout");
        let mounts = host.mounts.expect("mounts");
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].typ, Some(MountType::BIND));
        assert_eq!(mounts[1].read_only, Some(true));
    }

    #[test]
    fn cdi_and_env_modes() {
        let gpus = vec!["GPU-a".to_string(), "GPU-b".to_string()];
        let mut cdi = pool(true, GpuRequest::Count(2));
        cdi.gpu_mode = GpuMode::Cdi;
        let config = RunnerConfig::for_pool("zq", &cdi);
        assert_eq!(config.gpu_mode.as_deref(), Some("cdi"));
        let c = RunnerContainer {
            fleet: "zq",
            pool: &cdi,
            config: &config,
            name: "zq-gpu-a",
            gpus: &gpus,
            host_has_gpus: true,
            nvidia_runtime: true,
            registration: Registration::Jit(Secret::new("x")),
        };
        let host = c.body().host_config.expect("host config");
        let request = &host.device_requests.expect("device requests")[0];
        assert_eq!(request.driver.as_deref(), Some("cdi"));
        assert_eq!(
            request.device_ids,
            Some(vec![
                "nvidia.com/gpu=GPU-a".to_string(),
                "nvidia.com/gpu=GPU-b".to_string()
            ])
        );
        assert_eq!(host.runtime, None);

        let mut env_pool = pool(true, GpuRequest::Count(2));
        env_pool.gpu_mode = GpuMode::Env;
        let config = RunnerConfig::for_pool("zq", &env_pool);
        for nvidia_runtime in [true, false] {
            let c = RunnerContainer {
                fleet: "zq",
                pool: &env_pool,
                config: &config,
                name: "zq-gpu-a",
                gpus: &gpus,
                host_has_gpus: true,
                nvidia_runtime,
                registration: Registration::Jit(Secret::new("x")),
            };
            let body = c.body();
            let env = body.env.expect("env");
            assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b".to_string()));
            assert!(env.contains(&"NVIDIA_DRIVER_CAPABILITIES=compute,utility".to_string()));
            let host = body.host_config.expect("host config");
            assert!(host.device_requests.is_none());
            assert_eq!(host.runtime.is_some(), nvidia_runtime);
        }
    }

    #[test]
    fn a_docker_socket_runner_gets_its_work_folder_at_the_same_path() {
        let mut pool = pool(true, GpuRequest::Count(0));
        fn body_of(pool: &ResolvedPool) -> ContainerCreateBody {
            let config = RunnerConfig::for_pool("zq", pool);
            RunnerContainer {
                fleet: "zq",
                pool,
                config: &config,
                name: "zq-gpu-abc123",
                gpus: &[],
                host_has_gpus: false,
                nvidia_runtime: false,
                registration: Registration::Jit(Secret::new("x")),
            }
            .body()
        }
        let body = body_of(&pool);
        assert_eq!(body.host_config.and_then(|h| h.binds), None);
        assert_eq!(registered_work_folder(&pool, "zq-gpu-abc123"), "_work");
        pool.docker_socket = true;
        pool.work_dir = "/srv/work".into();
        let body = body_of(&pool);
        assert!(
            body.env
                .expect("env")
                .contains(&"FLEET_WORK_DIR=/srv/work/zq-gpu-abc123".to_string())
        );
        assert_eq!(
            body.host_config.and_then(|h| h.binds),
            Some(vec![
                "/srv/work/zq-gpu-abc123:/srv/work/zq-gpu-abc123".to_string()
            ])
        );
        assert_eq!(
            registered_work_folder(&pool, "zq-gpu-abc123"),
            "/srv/work/zq-gpu-abc123"
        );
    }

    #[test]
    fn persistent_runner_gets_config_inputs_and_a_state_volume() {
        let mut pool = pool(false, GpuRequest::Count(0));
        pool.runner_group = Some("gpu-builders".into());
        let config = RunnerConfig::for_pool("zq", &pool);
        let c = RunnerContainer {
            fleet: "zq",
            pool: &pool,
            config: &config,
            name: "zq-cpu-0",
            gpus: &[],
            host_has_gpus: true,
            nvidia_runtime: false,
            registration: Registration::Persistent {
                url: "https://github.com/acme/zq".into(),
                token: Some(Secret::new("REGTOKEN")),
                host_mark: "fleet.zq.host.local".into(),
            },
        };
        let body = c.body();
        let env = body.env.clone().expect("env");
        for expected in [
            "ACTIONS_RUNNER_INPUT_URL=https://github.com/acme/zq",
            "FLEET_SECRET_FILE=/run/fleet/registration",
            "ACTIONS_RUNNER_INPUT_NAME=zq-cpu-0",
            "ACTIONS_RUNNER_INPUT_LABELS=self-hosted,Linux,X64,gpu,fleet.zq,fleet.zq.host.local",
            "FLEET_STATE_DIR=/var/lib/fleet-runner",
            "ACTIONS_RUNNER_INPUT_RUNNERGROUP=gpu-builders",
            "NVIDIA_VISIBLE_DEVICES=void",
            "FLEET_REGISTRATION=register",
            "FLEET_NO_DEFAULT_LABELS=0",
            "FLEET_RUNNER_UPDATE=disabled",
        ] {
            assert!(
                env.contains(&expected.to_string()),
                "{expected} missing from {env:?}"
            );
        }
        let host = body.host_config.expect("host config");
        assert!(host.device_requests.is_none());
        assert_eq!(
            host.restart_policy.and_then(|r| r.name),
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        assert!(env.iter().all(|e| !e.contains("REGTOKEN")));
        let archive = c.secret_archive().expect("archive").expect("a secret file");
        assert_eq!(
            entries(&archive),
            [
                ("run/fleet".to_string(), 0o700, 0, 0, String::new()),
                (
                    "run/fleet/registration".to_string(),
                    0o600,
                    0,
                    0,
                    "ACTIONS_RUNNER_INPUT_TOKEN=REGTOKEN\n".to_string()
                ),
            ]
        );
        let mounts = host.mounts.expect("mounts");
        let state = mounts.last().expect("state mount");
        assert_eq!(state.source.as_deref(), Some("zq-cpu-0-state"));
        assert_eq!(state.target.as_deref(), Some(STATE_DIR));
    }

    /// Path, mode, uid, gid and contents of each entry of a tar archive.
    fn entries(archive: &[u8]) -> Vec<(String, u32, u64, u64, String)> {
        use std::io::Read;
        let mut archive = tar::Archive::new(archive);
        archive
            .entries()
            .expect("entries")
            .map(|entry| {
                let mut entry = entry.expect("entry");
                let header = entry.header().clone();
                let mut contents = String::new();
                entry.read_to_string(&mut contents).expect("contents");
                (
                    header.path().expect("path").display().to_string(),
                    header.mode().expect("mode"),
                    header.uid().expect("uid"),
                    header.gid().expect("gid"),
                    contents,
                )
            })
            .collect()
    }

    impl RunnerContainer<'_> {
        fn secret_archive(&self) -> Result<Option<Vec<u8>>, SecretFileError> {
            Ok(match self.secret_handover()? {
                Some(SecretHandover::Archive(archive)) => Some(archive),
                _ => None,
            })
        }

        fn secret_line(&self) -> Result<Option<Secret>, SecretFileError> {
            Ok(match self.secret_handover()? {
                Some(SecretHandover::Stdin(line)) => Some(line),
                _ => None,
            })
        }
    }

    fn jit_container<'a>(
        pool: &'a ResolvedPool,
        config: &'a RunnerConfig,
        jit: &str,
    ) -> RunnerContainer<'a> {
        RunnerContainer {
            fleet: "zq",
            pool,
            config,
            name: "zq-gpu-a",
            gpus: &[],
            host_has_gpus: false,
            nvidia_runtime: false,
            registration: Registration::Jit(Secret::new(jit)),
        }
    }

    #[test]
    fn the_secret_goes_in_a_root_only_file_unless_the_pool_says_env() {
        let mut pool = pool(true, GpuRequest::Count(0));
        let config = RunnerConfig::for_pool("zq", &pool);
        let c = jit_container(&pool, &config, "eyJJIT");
        let archive = c.secret_archive().expect("archive").expect("a file");
        let files = entries(&archive);
        assert_eq!(files[1].0, SECRET_FILE.trim_start_matches('/'));
        assert_eq!(files[1].4, "ACTIONS_RUNNER_INPUT_JITCONFIG=eyJJIT\n");
        assert!(
            c.env()
                .contains(&"FLEET_SECRET_FILE=/run/fleet/registration".to_string())
        );

        pool.secrets = SecretDelivery::Env;
        let c = jit_container(&pool, &config, "eyJJIT");
        assert!(c.secret_archive().expect("archive").is_none());
        let env = c.env();
        assert!(env.contains(&"ACTIONS_RUNNER_INPUT_JITCONFIG=eyJJIT".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("FLEET_SECRET_FILE=")));
    }

    #[test]
    fn with_stdin_the_secret_is_one_line_on_an_open_once_standard_input() {
        let mut pool = pool(true, GpuRequest::Count(0));
        pool.secrets = SecretDelivery::Stdin;
        let config = RunnerConfig::for_pool("zq", &pool);
        let c = jit_container(&pool, &config, "eyJJIT");
        assert!(c.secret_archive().expect("archive").is_none());
        let line = c.secret_line().expect("line").expect("a line");
        assert_eq!(line.expose(), "ACTIONS_RUNNER_INPUT_JITCONFIG=eyJJIT\n");
        let env = c.env();
        assert!(env.contains(&"FLEET_SECRET_STDIN=1".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("FLEET_SECRET_FILE=")));
        assert!(!env.iter().any(|e| e.contains("eyJJIT")));
        let body = c.body();
        assert_eq!(
            (body.open_stdin, body.stdin_once, body.attach_stdin),
            (Some(true), Some(true), Some(true))
        );
        // A runner that restores its registration gets no secret, and no open input.
        let restoring = RunnerContainer {
            registration: Registration::Persistent {
                url: "https://github.com/acme/zq".into(),
                token: None,
                host_mark: "fleet.zq.host.local".into(),
            },
            ..jit_container(&pool, &config, "x")
        };
        assert!(restoring.secret_line().expect("line").is_none());
        assert_eq!(restoring.body().open_stdin, None);
        assert!(
            !restoring
                .env()
                .iter()
                .any(|e| e.starts_with("FLEET_SECRET"))
        );
    }

    #[test]
    fn a_secret_with_a_line_break_is_refused_and_not_echoed() {
        let pool = pool(true, GpuRequest::Count(0));
        let config = RunnerConfig::for_pool("zq", &pool);
        let c = jit_container(&pool, &config, "eyJ\nFLEET_EVIL=1");
        let error = c.secret_archive().expect_err("refused").to_string();
        assert!(error.contains("line break"), "{error}");
        assert!(!error.contains("EVIL"), "{error}");
    }

    #[test]
    fn a_runner_restoring_its_registration_gets_no_secret_file() {
        let pool = pool(false, GpuRequest::Count(0));
        let config = RunnerConfig::for_pool("zq", &pool);
        let c = RunnerContainer {
            registration: Registration::Persistent {
                url: "https://github.com/acme/zq".into(),
                token: None,
                host_mark: "fleet.zq.host.local".into(),
            },
            ..jit_container(&pool, &config, "x")
        };
        assert!(c.secret_archive().expect("archive").is_none());
        assert!(!c.env().iter().any(|e| e.starts_with("FLEET_SECRET_FILE=")));
    }

    #[test]
    fn containers_are_hardened_as_the_pool_says() {
        let mut pool = pool(true, GpuRequest::Count(0));
        let config = RunnerConfig::for_pool("zq", &pool);
        let host = jit_container(&pool, &config, "x")
            .body()
            .host_config
            .expect("host config");
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_string()])
        );
        assert_eq!(host.pids_limit, Some(16384));
        assert_eq!(host.cap_drop, Some(vec!["NET_RAW".to_string()]));

        pool.security = crate::spec::ResolvedSecurity {
            no_new_privileges: false,
            pids_limit: None,
            net_raw: true,
        };
        let host = jit_container(&pool, &config, "x")
            .body()
            .host_config
            .expect("host config");
        assert_eq!(host.security_opt, None);
        assert_eq!(host.pids_limit, None);
        assert_eq!(host.cap_drop, None);
    }

    #[test]
    fn memory_is_read_by_the_specs_bounded_parser() {
        let mut pool = pool(true, GpuRequest::Count(0));
        let config = RunnerConfig::for_pool("zq", &pool);
        pool.memory = Some("512M".into());
        let host = jit_container(&pool, &config, "x").body().host_config;
        assert_eq!(host.and_then(|h| h.memory), Some(512 << 20));
        pool.memory = Some("99999999999999999999g".into());
        let host = jit_container(&pool, &config, "x").body().host_config;
        assert_eq!(host.and_then(|h| h.memory), None);
    }
}
