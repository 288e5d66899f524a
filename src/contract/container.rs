//! What a runner container is made of: the container contract (docs/apply.md, "What each step
//! does"), as a Docker create request. Pure, so it is tested without an engine.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType, RestartPolicy,
    RestartPolicyNameEnum,
};

use super::naming::state_volume;
use super::{RunnerConfig, labels};
use crate::secret::Secret;
use crate::spec::{GpuMode, GpuRequest, ResolvedPool};

/// Where a persistent runner keeps `.runner`, `.credentials` and `.credentials_rsaparams`.
pub const STATE_DIR: &str = "/var/lib/fleet-runner";

/// How the runner registers.
pub enum Registration {
    /// Ephemeral: a single-use JIT configuration.
    Jit(Secret),
    /// Persistent: `config.sh` inputs; the token only when the runner is not configured yet.
    Persistent { url: String, token: Option<Secret> },
}

impl Registration {
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

/// `16g` -> bytes. Units b, k, m, g (powers of 1024), as Docker reads them.
pub fn parse_memory(text: &str) -> Option<i64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 'b'),
    };
    let n: i64 = digits.parse().ok()?;
    let factor: i64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
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
        match &self.registration {
            Registration::Jit(jit) => {
                env.push((
                    "ACTIONS_RUNNER_INPUT_JITCONFIG".into(),
                    jit.expose().to_string(),
                ));
            }
            Registration::Persistent { url, token } => {
                env.push(("ACTIONS_RUNNER_INPUT_URL".into(), url.clone()));
                if let Some(token) = token {
                    env.push((
                        "ACTIONS_RUNNER_INPUT_TOKEN".into(),
                        token.expose().to_string(),
                    ));
                }
                env.push(("ACTIONS_RUNNER_INPUT_NAME".into(), self.name.to_string()));
                env.push(("ACTIONS_RUNNER_INPUT_LABELS".into(), labels));
                // config.sh reads it as --runnergroup (organization scope).
                if let Some(group) = &self.pool.runner_group {
                    env.push(("ACTIONS_RUNNER_INPUT_RUNNERGROUP".into(), group.clone()));
                }
                env.push(("FLEET_STATE_DIR".into(), STATE_DIR.into()));
                if let Some(mode) = self.registration.mode() {
                    env.push(("FLEET_REGISTRATION".into(), mode.to_string()));
                }
            }
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

    /// The create request.
    pub fn body(&self) -> ContainerCreateBody {
        let restart = if self.pool.ephemeral {
            RestartPolicyNameEnum::NO
        } else {
            RestartPolicyNameEnum::UNLESS_STOPPED
        };
        ContainerCreateBody {
            image: Some(self.pool.image.clone()),
            env: Some(self.env()),
            labels: Some(self.labels()),
            hostname: Some(self.name.chars().take(63).collect()),
            host_config: Some(HostConfig {
                network_mode: Some(self.pool.network.clone()),
                nano_cpus: self.pool.cpus.map(|c| (c * 1e9) as i64),
                memory: self.pool.memory.as_deref().and_then(parse_memory),
                restart_policy: Some(RestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                mounts: Some(self.mounts()),
                device_requests: self.device_requests(),
                runtime: self.runtime(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
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
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("16g"), Some(16 << 30));
        assert_eq!(parse_memory("512m"), Some(512 << 20));
        assert_eq!(parse_memory("1024"), Some(1024));
        assert_eq!(parse_memory("2K"), Some(2048));
        assert_eq!(parse_memory("x"), None);
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
        assert!(env.contains(&"ACTIONS_RUNNER_INPUT_JITCONFIG=JITSECRET".to_string()));
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
            },
        };
        let body = c.body();
        let env = body.env.clone().expect("env");
        for expected in [
            "ACTIONS_RUNNER_INPUT_URL=https://github.com/acme/zq",
            "ACTIONS_RUNNER_INPUT_TOKEN=REGTOKEN",
            "ACTIONS_RUNNER_INPUT_NAME=zq-cpu-0",
            "ACTIONS_RUNNER_INPUT_LABELS=self-hosted,Linux,X64,gpu,fleet.zq",
            "FLEET_STATE_DIR=/var/lib/fleet-runner",
            "ACTIONS_RUNNER_INPUT_RUNNERGROUP=gpu-builders",
            "NVIDIA_VISIBLE_DEVICES=void",
            "FLEET_REGISTRATION=register",
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
        let mounts = host.mounts.expect("mounts");
        let state = mounts.last().expect("state mount");
        assert_eq!(state.source.as_deref(), Some("zq-cpu-0-state"));
        assert_eq!(state.target.as_deref(), Some(STATE_DIR));
    }
}
