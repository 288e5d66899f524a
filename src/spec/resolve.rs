//! Effective configuration: hosts with their defaults, pools merged with `defaults`.

use std::collections::BTreeMap;

use super::model::{
    DEFAULT_HOST, GpuMode, GpuRequest, Host, HostGpus, Pool, PullPolicy, Spec, Volume,
};

/// Labels GitHub gives a self-hosted Linux x64 runner unless `no_default_labels` is set.
pub const DEFAULT_RUNNER_LABELS: &[&str] = &["self-hosted", "Linux", "X64"];

/// A pool with every field decided: the pool's own value, else `defaults`, else the built-in default.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPool {
    pub name: String,
    pub host: String,
    pub count: u32,
    pub labels: Vec<String>,
    pub no_default_labels: bool,
    pub ephemeral: bool,
    pub gpus: GpuRequest,
    pub runner_group: Option<String>,
    pub image: String,
    pub pull: PullPolicy,
    pub volumes: Vec<Volume>,
    pub env: BTreeMap<String, String>,
    pub network: String,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub docker_socket: bool,
    /// How the pool's host hands GPUs to containers.
    pub gpu_mode: GpuMode,
}

impl ResolvedPool {
    /// Every label the runner registers with, default labels first.
    pub fn runner_labels(&self) -> Vec<String> {
        let mut all: Vec<String> = if self.no_default_labels {
            Vec::new()
        } else {
            DEFAULT_RUNNER_LABELS
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        for label in &self.labels {
            if !all.contains(label) {
                all.push(label.clone());
            }
        }
        all
    }
}

impl Spec {
    /// The declared hosts, or the single default host `local`.
    pub fn effective_hosts(&self) -> BTreeMap<String, Host> {
        match &self.hosts {
            Some(hosts) => hosts.clone(),
            None => BTreeMap::from([(
                DEFAULT_HOST.to_string(),
                Host {
                    docker: None,
                    gpus: HostGpus::Auto,
                    gpu_mode: None,
                },
            )]),
        }
    }

    /// A pool field: the pool's own value, else the one in `defaults`.
    pub fn pool_field<'a, T: ?Sized>(
        &'a self,
        pool: &'a Pool,
        get: impl Fn(&'a Pool) -> Option<&'a T>,
    ) -> Option<&'a T> {
        get(pool).or_else(|| self.defaults.as_ref().and_then(&get))
    }

    /// The host a pool runs on: its own or the default's `host`, else the only host there is.
    pub fn pool_host(&self, pool: &Pool) -> Option<String> {
        if let Some(host) = self.pool_field(pool, |p| p.host.as_ref()) {
            return Some(host.clone());
        }
        let hosts = self.effective_hosts();
        if hosts.len() == 1 {
            hosts.keys().next().cloned()
        } else {
            None
        }
    }

    /// Every pool resolved, in name order. Call on a validated spec: a pool whose count,
    /// image or host cannot be decided (which validation rejects) is left out.
    pub fn resolved_pools(&self) -> Vec<ResolvedPool> {
        self.pools
            .iter()
            .filter_map(|(name, pool)| self.resolve_pool(name, pool))
            .collect()
    }

    fn resolve_pool(&self, name: &str, pool: &Pool) -> Option<ResolvedPool> {
        let mut env = self
            .defaults
            .as_ref()
            .and_then(|d| d.env.clone())
            .unwrap_or_default();
        env.extend(pool.env.clone().unwrap_or_default());
        let host = self.pool_host(pool)?;
        let gpu_mode = self
            .effective_hosts()
            .get(&host)
            .and_then(|h| h.gpu_mode)
            .unwrap_or_default();
        Some(ResolvedPool {
            name: name.to_string(),
            host,
            gpu_mode,
            count: *self.pool_field(pool, |p| p.count.as_ref())?,
            labels: self
                .pool_field(pool, |p| p.labels.as_ref())
                .cloned()
                .unwrap_or_default(),
            no_default_labels: self
                .pool_field(pool, |p| p.no_default_labels.as_ref())
                .copied()
                .unwrap_or(false),
            ephemeral: self
                .pool_field(pool, |p| p.ephemeral.as_ref())
                .copied()
                .unwrap_or(true),
            gpus: self
                .pool_field(pool, |p| p.gpus.as_ref())
                .copied()
                .unwrap_or_default(),
            runner_group: self.pool_field(pool, |p| p.runner_group.as_ref()).cloned(),
            image: self.pool_field(pool, |p| p.image.as_ref())?.clone(),
            pull: self
                .pool_field(pool, |p| p.pull.as_ref())
                .copied()
                .unwrap_or_default(),
            volumes: self
                .pool_field(pool, |p| p.volumes.as_ref())
                .cloned()
                .unwrap_or_default(),
            env,
            network: self
                .pool_field(pool, |p| p.network.as_ref())
                .cloned()
                .unwrap_or_else(|| "bridge".to_string()),
            cpus: self.pool_field(pool, |p| p.cpus.as_ref()).copied(),
            memory: self.pool_field(pool, |p| p.memory.as_ref()).cloned(),
            docker_socket: self
                .pool_field(pool, |p| p.docker_socket.as_ref())
                .copied()
                .unwrap_or(false),
        })
    }
}
