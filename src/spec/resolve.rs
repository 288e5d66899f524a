//! Effective configuration: hosts with their defaults, pools merged with `defaults`.

use std::collections::BTreeMap;

use super::model::{
    DEFAULT_HOST, DEFAULT_PIDS_LIMIT, DEFAULT_STOP_TIMEOUT_SECS, DEFAULT_WORK_DIR, GpuMode,
    GpuRequest, Host, HostGpus, Pool, PullPolicy, RunnerUpdate, SecretDelivery, Security, Spec,
    Volume, parse_stop_timeout,
};

/// Labels GitHub gives a self-hosted Linux x64 runner unless `no_default_labels` is set.
pub const DEFAULT_RUNNER_LABELS: &[&str] = &["self-hosted", "Linux", "X64"];

/// A pool with every field decided: the pool's own value, else `defaults`, else the built-in default.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPool {
    pub name: String,
    /// The first of `hosts`: the pool's only host unless it lists several.
    pub host: String,
    /// For a fixed-size pool, its `count`; for an autoscaled pool, `autoscale.min_idle` (what
    /// the fixed-count code paths keep until they learn about scale sets).
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
    /// How the pool's host hands GPUs to containers (of `host`, the first listed).
    pub gpu_mode: GpuMode,
    /// Every host the pool may run on, in the order written; `[host]` for a single host.
    pub hosts: Vec<String>,
    /// The pool scales through a GitHub runner scale set.
    pub autoscale: Option<ResolvedAutoscale>,
    /// How runners receive their JIT config or registration token.
    pub secrets: SecretDelivery,
    /// Container hardening.
    pub security: ResolvedSecurity,
    /// Whether the runners update themselves.
    pub runner_update: RunnerUpdate,
    /// Seconds between SIGTERM and SIGKILL when fleet stops a runner's container.
    pub stop_timeout_secs: u32,
    /// The host directory of the runners' work folders (used with `docker_socket`).
    pub work_dir: String,
}

/// A pool's autoscaling with its scale set's name decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAutoscale {
    pub min_idle: u32,
    pub max: u32,
    /// The pool's `scale_set`, else `<fleet>-<pool>`.
    pub scale_set: String,
}

/// A pool's container hardening with every default applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedSecurity {
    /// Run with `no-new-privileges`.
    pub no_new_privileges: bool,
    /// The pids limit; `None`: no limit (`pids_limit: 0`).
    pub pids_limit: Option<u32>,
    /// Keep the NET_RAW capability; false: drop it.
    pub net_raw: bool,
}

impl Default for ResolvedSecurity {
    /// The hardening a pool gets when it says nothing.
    fn default() -> Self {
        ResolvedSecurity {
            no_new_privileges: true,
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            net_raw: false,
        }
    }
}

impl ResolvedSecurity {
    /// `own` over `defaults` field by field, over the built-in defaults.
    pub fn resolve(own: Option<&Security>, defaults: Option<&Security>) -> ResolvedSecurity {
        let field = |get: fn(&Security) -> Option<u32>| {
            own.and_then(get).or_else(|| defaults.and_then(get))
        };
        let flag = |get: fn(&Security) -> Option<bool>| {
            own.and_then(get).or_else(|| defaults.and_then(get))
        };
        let built_in = ResolvedSecurity::default();
        ResolvedSecurity {
            no_new_privileges: flag(|s| s.no_new_privileges).unwrap_or(built_in.no_new_privileges),
            pids_limit: match field(|s| s.pids_limit) {
                Some(0) => None,
                Some(n) => Some(n),
                None => built_in.pids_limit,
            },
            net_raw: flag(|s| s.net_raw).unwrap_or(built_in.net_raw),
        }
    }
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
                    tls: None,
                    insecure: None,
                    gpus: HostGpus::Auto,
                    gpu_mode: None,
                    gpus_disabled: Vec::new(),
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

    /// The host a pool runs on: the first of [`Spec::pool_hosts`].
    pub fn pool_host(&self, pool: &Pool) -> Option<String> {
        self.pool_hosts(pool)?.into_iter().next()
    }

    /// The hosts a pool may run on: its own or the default's `host` (one or a list), else the
    /// only host there is.
    pub fn pool_hosts(&self, pool: &Pool) -> Option<Vec<String>> {
        if let Some(hosts) = self.pool_field(pool, |p| p.host.as_ref()) {
            return (!hosts.names().is_empty()).then(|| hosts.names().to_vec());
        }
        let hosts = self.effective_hosts();
        if hosts.len() == 1 {
            Some(hosts.into_keys().collect())
        } else {
            None
        }
    }

    /// The scale set name of an autoscaled pool: its own, else `<fleet>-<pool>`.
    pub fn scale_set_name(&self, pool_name: &str, autoscale: &super::model::Autoscale) -> String {
        autoscale
            .scale_set
            .clone()
            .unwrap_or_else(|| format!("{}-{pool_name}", self.name))
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
        let hosts = self.pool_hosts(pool)?;
        let host = hosts.first()?.clone();
        let gpu_mode = self
            .effective_hosts()
            .get(&host)
            .and_then(|h| h.gpu_mode)
            .unwrap_or_default();
        // Autoscale is per pool: `defaults` cannot set it, and a pool with it ignores the
        // `count` of `defaults`.
        let autoscale = pool.autoscale.as_ref().map(|a| ResolvedAutoscale {
            min_idle: a.min_idle,
            max: a.max,
            scale_set: self.scale_set_name(name, a),
        });
        let count = match &autoscale {
            Some(a) => a.min_idle,
            None => *self.pool_field(pool, |p| p.count.as_ref())?,
        };
        Some(ResolvedPool {
            name: name.to_string(),
            host,
            hosts,
            gpu_mode,
            count,
            autoscale,
            secrets: self
                .pool_field(pool, |p| p.secrets.as_ref())
                .copied()
                .unwrap_or_default(),
            security: ResolvedSecurity::resolve(
                pool.security.as_ref(),
                self.defaults.as_ref().and_then(|d| d.security.as_ref()),
            ),
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
            runner_update: self
                .pool_field(pool, |p| p.runner_update.as_ref())
                .copied()
                .unwrap_or_default(),
            stop_timeout_secs: self
                .pool_field(pool, |p| p.stop_timeout.as_ref())
                .and_then(|t| parse_stop_timeout(t))
                .unwrap_or(DEFAULT_STOP_TIMEOUT_SECS),
            work_dir: self
                .pool_field(pool, |p| p.work_dir.as_ref())
                .map_or(DEFAULT_WORK_DIR, String::as_str)
                .trim_end_matches('/')
                .to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn pools(yaml: &str) -> Vec<ResolvedPool> {
        let text = format!("version: 1\nname: zq\ngithub: {{ repo: a/b }}\n{yaml}");
        match crate::spec::parse_str(&text, Path::new(".")) {
            Ok(spec) => spec.resolved_pools(),
            Err(problems) => panic!("{problems:#?}"),
        }
    }

    #[test]
    fn a_single_host_and_a_list_of_hosts() {
        let resolved = pools(
            "hosts:\n  bare: { gpus: none }\n  vm: { docker: 'ssh://ci@vm', gpus: none }\n\
             pools:\n  one: { host: vm, count: 1, image: x }\n  many: { host: [vm, bare], count: 1, image: x }\n",
        );
        assert_eq!(resolved[0].name, "many");
        assert_eq!(resolved[0].host, "vm");
        assert_eq!(resolved[0].hosts, ["vm", "bare"]);
        assert_eq!(resolved[1].host, "vm");
        assert_eq!(resolved[1].hosts, ["vm"]);
        let implicit = pools("pools:\n  cpu: { count: 1, image: x }\n");
        assert_eq!(implicit[0].hosts, ["local"]);
    }

    #[test]
    fn an_autoscaled_pool_counts_its_min_idle_and_ignores_the_default_count() {
        let resolved = pools(
            "defaults: { count: 5, image: x }\npools:\n  \
             auto: { autoscale: { min_idle: 2, max: 8 } }\n  \
             named: { autoscale: { max: 3, scale_set: gpu-set } }\n  fixed: {}\n",
        );
        let by_name = |n: &str| resolved.iter().find(|p| p.name == n).expect(n);
        let auto = by_name("auto");
        assert_eq!(auto.count, 2);
        assert_eq!(
            auto.autoscale,
            Some(ResolvedAutoscale {
                min_idle: 2,
                max: 8,
                scale_set: "zq-auto".into()
            })
        );
        let named = by_name("named");
        assert_eq!(named.count, 0);
        assert_eq!(
            named.autoscale.as_ref().map(|a| a.scale_set.as_str()),
            Some("gpu-set")
        );
        assert_eq!(by_name("fixed").count, 5);
        assert_eq!(by_name("fixed").autoscale, None);
    }

    #[test]
    fn secrets_and_security_defaults() {
        let resolved = pools("pools:\n  cpu: { count: 1, image: x }\n");
        assert_eq!(resolved[0].secrets, SecretDelivery::Stdin);
        assert_eq!(
            resolved[0].security,
            ResolvedSecurity {
                no_new_privileges: true,
                pids_limit: Some(DEFAULT_PIDS_LIMIT),
                net_raw: false,
            }
        );
    }

    #[test]
    fn security_merges_field_by_field_and_zero_means_no_pids_limit() {
        let resolved = pools(
            "defaults:\n  secrets: env\n  security: { pids_limit: 0, net_raw: true }\n\
             pools:\n  a: { count: 1, image: x, security: { no_new_privileges: false } }\n  \
             b: { count: 1, image: x, secrets: file, security: { pids_limit: 512 } }\n",
        );
        assert_eq!(resolved[0].secrets, SecretDelivery::Env);
        assert_eq!(
            resolved[0].security,
            ResolvedSecurity {
                no_new_privileges: false,
                pids_limit: None,
                net_raw: true,
            }
        );
        assert_eq!(resolved[1].secrets, SecretDelivery::File);
        assert_eq!(
            resolved[1].security,
            ResolvedSecurity {
                no_new_privileges: true,
                pids_limit: Some(512),
                net_raw: true,
            }
        );
    }
}
