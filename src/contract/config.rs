//! The configuration a pool's runner containers should have, its hash, and its attributes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hash::short_hash;
use super::ownership_label;
use crate::spec::{GpuMode, GpuRequest, ResolvedPool, ResolvedSecurity, SecretDelivery};

/// Everything about a runner container that comes from the spec. Two containers with the same
/// `RunnerConfig` are interchangeable; a change in any field means the container is replaced.
/// Stored (as canonical JSON) in a container label, so it holds no secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerConfig {
    pub image: String,
    /// Every label the runner registers with, ownership label included.
    pub labels: Vec<String>,
    pub ephemeral: bool,
    /// `0`, a number, or `all`.
    pub gpus: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_group: Option<String>,
    pub env: BTreeMap<String, String>,
    /// `source:target` or `source:target:ro`.
    pub volumes: Vec<String>,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub docker_socket: bool,
    /// How the host hands the GPUs over, when the pool has GPUs and the mode is not the
    /// default `nvidia` (so that other pools' hashes do not depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_mode: Option<String>,
    /// The container hardening, when it is not the default (so that pools that say nothing
    /// keep the hash they had before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// `file` or `env`: how the registration secret is handed over, when not the default
    /// (`stdin`, left out for the same reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<String>,
}

impl RunnerConfig {
    pub fn for_pool(fleet: &str, pool: &ResolvedPool) -> RunnerConfig {
        let mut labels = pool.runner_labels();
        labels.push(ownership_label(fleet));
        RunnerConfig {
            image: pool.image.clone(),
            labels,
            ephemeral: pool.ephemeral,
            gpus: match pool.gpus {
                GpuRequest::Count(n) => n.to_string(),
                GpuRequest::All => "all".into(),
            },
            runner_group: pool.runner_group.clone(),
            env: pool.env.clone(),
            volumes: pool
                .volumes
                .iter()
                .map(|v| {
                    let ro = if v.read_only { ":ro" } else { "" };
                    format!("{}:{}{ro}", v.source, v.target)
                })
                .collect(),
            network: pool.network.clone(),
            cpus: pool.cpus,
            memory: pool.memory.clone(),
            docker_socket: pool.docker_socket,
            gpu_mode: (pool.gpus != GpuRequest::Count(0) && pool.gpu_mode != GpuMode::Nvidia)
                .then(|| pool.gpu_mode.as_str().to_string()),
            security: (pool.security != ResolvedSecurity::default())
                .then(|| security_text(&pool.security)),
            secrets: match pool.secrets {
                SecretDelivery::Stdin => None,
                SecretDelivery::File => Some("file".into()),
                SecretDelivery::Env => Some("env".into()),
            },
        }
    }

    /// Canonical JSON: the value of the `fleet.config` label.
    pub fn to_label(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_label(label: &str) -> Option<RunnerConfig> {
        serde_json::from_str(label).ok()
    }

    /// The value of the `fleet.config-hash` label: 16 hex digits of SHA-256. A persistent
    /// runner's labels and runner group live on its registration (set through GitHub's API
    /// when they drift), so they are left out of its container's hash: changing them
    /// recreates nothing.
    pub fn hash(&self) -> String {
        if self.ephemeral {
            return short_hash(self.to_label().as_bytes());
        }
        let container_part = RunnerConfig {
            labels: vec![],
            runner_group: None,
            ..self.clone()
        };
        short_hash(container_part.to_label().as_bytes())
    }

    /// The attributes as printable text, in a fixed order; lists and maps one item a line.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let lines = |items: Vec<String>| {
            if items.is_empty() {
                "(none)".to_string()
            } else {
                items.join("\n")
            }
        };
        vec![
            ("image", self.image.clone()),
            ("labels", lines(self.labels.clone())),
            ("ephemeral", self.ephemeral.to_string()),
            ("gpus", self.gpus.clone()),
            ("runner_group", opt(&self.runner_group)),
            (
                "env",
                lines(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            ),
            ("volumes", lines(self.volumes.clone())),
            ("network", self.network.clone()),
            (
                "cpus",
                self.cpus
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "(none)".into()),
            ),
            ("memory", opt(&self.memory)),
            ("docker_socket", self.docker_socket.to_string()),
            ("gpu_mode", opt(&self.gpu_mode)),
            (
                "security",
                self.security
                    .clone()
                    .unwrap_or_else(|| security_text(&ResolvedSecurity::default())),
            ),
            (
                "secrets",
                self.secrets.clone().unwrap_or_else(|| "stdin".into()),
            ),
        ]
    }
}

/// The hardening as one line: `no_new_privileges=true pids_limit=4096 net_raw=false`.
fn security_text(security: &ResolvedSecurity) -> String {
    let pids = security
        .pids_limit
        .map_or_else(|| "none".to_string(), |n| n.to_string());
    format!(
        "no_new_privileges={} pids_limit={pids} net_raw={}",
        security.no_new_privileges, security.net_raw
    )
}
