//! What the plan warns about: risky pool settings, GPU pools on engines without NVIDIA support,
//! images that cannot be had, and runner groups that do not exist.

use crate::observe::state::Observed;
use crate::spec::{GpuRequest, ResolvedPool};

/// Warnings about the pools as the observation shows them.
pub(super) fn pool_warnings(pools: &[ResolvedPool], observed: &Observed) -> Vec<String> {
    let mut warnings = Vec::new();
    for pool in pools {
        if pool.docker_socket {
            warnings.push(format!(
                "pool `{}` mounts /var/run/docker.sock: its jobs are root on host `{}`",
                pool.name, pool.host
            ));
        }
        if pool.gpus == GpuRequest::All && pool.count > 0 {
            warnings.push(format!(
                "pool `{}` uses `gpus: all`: its runners share every GPU of host `{}` with each other and with any other job",
                pool.name, pool.host
            ));
            if pools.iter().any(|other| {
                other.host == pool.host
                    && matches!(other.gpus, GpuRequest::Count(n) if n > 0)
                    && other.count > 0
            }) {
                warnings.push(format!(
                    "host `{}` mixes `gpus: all` (pool `{}`) with pools that hold GPUs exclusively: the shared runners see the exclusive runners' GPUs",
                    pool.host, pool.name
                ));
            }
        }
        let Some(host) = observed.hosts.get(&pool.host) else {
            continue;
        };
        let wants_gpus = pool.gpus != GpuRequest::Count(0) && pool.count > 0;
        if wants_gpus && !host.engine.nvidia_runtime && host.engine.cdi_devices.is_empty() {
            warnings.push(format!(
                "pool `{}` needs GPUs but the Docker engine on host `{}` shows no NVIDIA support (no `nvidia` runtime, no CDI devices): install nvidia-container-toolkit on the host, run `nvidia-ctk runtime configure --runtime=docker`, and restart Docker",
                pool.name, pool.host
            ));
        }
        if pool.pull == crate::spec::PullPolicy::Never
            && host.images.get(&pool.image) == Some(&false)
            && pool.count > 0
        {
            warnings.push(format!(
                "pool `{}`: image `{}` is not on host `{}` and `pull: never`: creating its runners will fail",
                pool.name, pool.image, pool.host
            ));
        }
    }
    warnings
}

/// Organization scope: a pool's runner group must exist (GitHub always has `Default`).
pub(super) fn runner_group_problems(pools: &[ResolvedPool], observed: &Observed) -> Vec<String> {
    let groups = &observed.github.groups;
    if groups.is_empty() {
        return vec![];
    }
    pools
        .iter()
        .filter_map(|pool| {
            let group = pool.runner_group.as_ref()?;
            if groups.contains_key(group) {
                return None;
            }
            let known: Vec<&str> = groups.keys().map(String::as_str).collect();
            Some(format!(
                "pool `{}`: runner group `{group}` does not exist (the organization has: {})",
                pool.name,
                known.join(", ")
            ))
        })
        .collect()
}
