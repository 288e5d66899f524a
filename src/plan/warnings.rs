//! What the plan warns about: risky pool settings (the Docker socket, bind mounts of the host's
//! system or home directories, the host's network), GPU pools on engines without NVIDIA support,
//! images that cannot be had, and runner groups that do not exist.

use crate::observe::state::{HostState, Observed};
use crate::spec::{GpuRequest, ResolvedPool};

/// Host directories whose contents give away the host: credentials and configuration (`/etc`),
/// root's and the users' homes (SSH keys, `~/.docker/config.json`, tokens). A bind mount of one
/// of them or of anything under it is warned about: a subdirectory is only less obviously
/// dangerous (`/etc/ssh`, `/home/ci/.ssh`). `/` is warned about as itself (everything is under
/// it).
const SENSITIVE_TREES: &[&str] = &["/etc", "/root", "/home"];

/// Where the Docker socket lives, and the directories that hold it: a bind mount of any of
/// them hands the jobs the Docker API, which is root on the host (read-only or not: a socket is
/// connected to, not written).
const DOCKER_SOCKET_PATHS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run",
    "/run",
    "/var",
];

/// Warnings about the pools as the observation shows them.
pub(super) fn pool_warnings(pools: &[ResolvedPool], observed: &Observed) -> Vec<String> {
    let mut warnings = Vec::new();
    for pool in pools {
        // Every host the pool may run on: `a` or `a`, `b`.
        let hosts = pool.hosts.join("`, `");
        if pool.docker_socket {
            warnings.push(format!(
                "pool `{}` mounts /var/run/docker.sock: its jobs are root on host `{hosts}`",
                pool.name
            ));
        }
        warnings.extend(exposure_warnings(pool));
        if pool.gpus == GpuRequest::All && pool.count > 0 {
            warnings.push(format!(
                "pool `{}` uses `gpus: all`: its runners share every GPU of host `{hosts}` with each other and with any other job",
                pool.name
            ));
            for host in &pool.hosts {
                let exclusive_here = pools.iter().any(|other| {
                    other.hosts.contains(host)
                        && matches!(other.gpus, GpuRequest::Count(n) if n > 0)
                        && other.count > 0
                });
                if exclusive_here {
                    warnings.push(format!(
                        "host `{host}` mixes `gpus: all` (pool `{}`) with pools that hold GPUs exclusively: the shared runners see the exclusive runners' GPUs",
                        pool.name
                    ));
                }
            }
        }
        for name in &pool.hosts {
            if let Some(host) = observed.hosts.get(name) {
                warnings.extend(engine_warnings(pool, name, host));
                warnings.extend(runner_version_warning(pool, name, host, observed));
            }
        }
    }
    warnings
}

/// A pool whose image carries a runner older than the one GitHub offers for download, while
/// its runners may not update themselves: GitHub stops giving them jobs about 30 days after
/// a newer release. The image's version is its `org.opencontainers.image.version` label.
fn runner_version_warning(
    pool: &ResolvedPool,
    host_name: &str,
    host: &crate::observe::state::HostState,
    observed: &Observed,
) -> Option<String> {
    if pool.runner_update == crate::spec::RunnerUpdate::Enabled {
        return None;
    }
    let offered = observed.github.runner_version.as_deref()?;
    let carried = host.image_versions.get(&pool.image)?;
    (older_version(carried, offered)?).then(|| {
        format!(
            "pool `{}`: image {} on host `{host_name}` carries runner {carried}, older than {offered}, which GitHub offers: runners that do not update themselves get no jobs about 30 days after a newer release; rebuild the image (docs/operations.md, \"Updating the runner\")",
            pool.name, pool.image
        )
    })
}

/// Whether version `a` (`2.330.0`, a leading `v` allowed) is older than `b`; `None` when
/// either is not three numbers.
pub(super) fn older_version(a: &str, b: &str) -> Option<bool> {
    let parse = |v: &str| -> Option<[u64; 3]> {
        let mut parts = v
            .trim()
            .trim_start_matches('v')
            .split('.')
            .map(|p| p.parse().ok());
        let version = [parts.next()??, parts.next()??, parts.next()??];
        parts.next().is_none().then_some(version)
    };
    Some(parse(a)? < parse(b)?)
}

/// What host `name`'s engine would refuse or lack for `pool`'s runners, as the observation
/// shows it: NVIDIA support, a `pull: never` image, a user network.
fn engine_warnings(pool: &ResolvedPool, name: &str, host: &HostState) -> Vec<String> {
    let mut warnings = Vec::new();
    if pool.count == 0 {
        return warnings;
    }
    let wants_gpus = pool.gpus != GpuRequest::Count(0);
    if wants_gpus && !host.engine.nvidia_runtime && host.engine.cdi_devices.is_empty() {
        warnings.push(format!(
            "pool `{}` needs GPUs but the Docker engine on host `{name}` shows no NVIDIA support (no `nvidia` runtime, no CDI devices): install nvidia-container-toolkit on the host, run `nvidia-ctk runtime configure --runtime=docker`, and restart Docker",
            pool.name
        ));
    }
    if pool.pull == crate::spec::PullPolicy::Never && host.images.get(&pool.image) == Some(&false) {
        warnings.push(format!(
            "pool `{}`: image `{}` is not on host `{name}` and `pull: never`: creating its runners will fail",
            pool.name, pool.image
        ));
    }
    if host.networks.get(&pool.network) == Some(&false) {
        warnings.push(format!(
            "pool `{}`: network `{}` does not exist on host `{name}`: creating its runners will fail (create it with `docker network create {}`, or fix `network`)",
            pool.name, pool.network, pool.network
        ));
    }
    // Whether a bind-mount source exists is not said here: the spec names the path, and the
    // plan (a pull-request comment) must not tell what exists on the control machine. The
    // operator's log says it (src/observe/mod.rs, `bind_sources`).
    warnings
}

/// Bind mounts that expose the host's system, its users or its Docker socket, and the host's
/// network.
fn exposure_warnings(pool: &ResolvedPool) -> Vec<String> {
    let mut warnings = Vec::new();
    let host = pool.hosts.join("`, `");
    for volume in pool.volumes.iter().filter(|v| v.is_bind()) {
        let path = normalize(&volume.source);
        let access = if volume.read_only {
            "read-only"
        } else {
            "read-write"
        };
        let what = if DOCKER_SOCKET_PATHS.contains(&path.as_str()) {
            format!("the Docker socket: its jobs are root on host `{host}`")
        } else if path == "/" {
            format!("the whole filesystem of host `{host}`")
        } else if let Some(tree) = SENSITIVE_TREES.iter().find(|t| is_within(&path, t)) {
            format!(
                "{tree} of host `{host}`: its jobs can read the credentials and keys kept there"
            )
        } else {
            continue;
        };
        warnings.push(format!(
            "pool `{}` bind-mounts {} ({access}) at {}, which exposes {what}",
            pool.name, volume.source, volume.target
        ));
    }
    if pool.network == "host" {
        warnings.push(format!(
            "pool `{}` uses `network: host`: its jobs share host `{host}`'s network, reach every service listening on it (127.0.0.1 included) and can listen on its ports",
            pool.name
        ));
    }
    warnings
}

/// `path` with `.`, `..` and repeated or trailing slashes resolved lexically (the host's
/// symbolic links are not known here).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether `path` is `tree` or under it (`/etc/ssh`, not `/etcetera`).
fn is_within(path: &str, tree: &str) -> bool {
    path == tree
        || path
            .strip_prefix(tree)
            .is_some_and(|rest| rest.starts_with('/'))
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
            if crate::github::find_group(groups, group).is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Spec, Volume};

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(older_version("2.330.0", "2.336.0"), Some(true));
        assert_eq!(older_version("2.99.0", "2.336.0"), Some(true));
        assert_eq!(older_version("v2.336.0", "2.336.0"), Some(false));
        assert_eq!(older_version("2.337.1", "2.336.0"), Some(false));
        assert_eq!(older_version("latest", "2.336.0"), None);
        assert_eq!(older_version("2.336", "2.336.0"), None);
    }

    #[test]
    fn an_image_with_an_older_runner_is_warned_about_unless_runners_update_themselves() {
        let mut pool = pool(&[], "bridge");
        let mut host = crate::observe::state::HostState::default();
        host.image_versions.insert("r:1".into(), "2.330.0".into());
        let mut observed = Observed::default();
        observed.hosts.insert("local".into(), host);
        let warnings = |pool: &ResolvedPool, observed: &Observed| {
            pool_warnings(std::slice::from_ref(pool), observed)
                .into_iter()
                .filter(|w| w.contains("runner"))
                .collect::<Vec<_>>()
        };
        assert!(
            warnings(&pool, &observed).is_empty(),
            "GitHub's version not read"
        );
        observed.github.runner_version = Some("2.336.0".into());
        assert_eq!(
            warnings(&pool, &observed),
            [
                "pool `a`: image r:1 on host `local` carries runner 2.330.0, older than 2.336.0, which GitHub offers: runners that do not update themselves get no jobs about 30 days after a newer release; rebuild the image (docs/operations.md, \"Updating the runner\")"
            ]
        );
        pool.runner_update = crate::spec::RunnerUpdate::Enabled;
        assert!(warnings(&pool, &observed).is_empty(), "it updates itself");
        pool.runner_update = crate::spec::RunnerUpdate::Disabled;
        observed.github.runner_version = Some("2.330.0".into());
        assert!(warnings(&pool, &observed).is_empty(), "the same version");
    }

    fn pool(volumes: &[(&str, bool)], network: &str) -> ResolvedPool {
        let spec: Spec = crate::spec::parse_str(
            "version: 1\nname: zq\ngithub:\n  repo: acme/zq\npools:\n  a:\n    count: 1\n    image: r:1\n",
            std::path::Path::new("."),
        )
        .expect("spec");
        let mut pool = spec.resolved_pools().remove(0);
        pool.network = network.to_string();
        pool.volumes = volumes
            .iter()
            .enumerate()
            .map(|(i, (source, read_only))| Volume {
                source: source.to_string(),
                target: format!("/m{i}"),
                read_only: *read_only,
            })
            .collect();
        pool
    }

    fn warned(pool: &ResolvedPool) -> String {
        pool_warnings(std::slice::from_ref(pool), &Observed::default()).join("\n")
    }

    #[test]
    fn bind_mounts_of_the_host_system_homes_and_docker_socket_are_warned_about() {
        for (source, exposes) in [
            ("/", "the whole filesystem"),
            ("/etc", "/etc of host"),
            ("/etc/ssh/", "/etc of host"),
            ("/srv/../etc/shadow", "/etc of host"),
            ("/root", "/root of host"),
            ("/home/ci/.ssh", "/home of host"),
            ("/var/run/docker.sock", "the Docker socket"),
            ("/run", "the Docker socket"),
            ("/var", "the Docker socket"),
        ] {
            let text = warned(&pool(&[(source, true)], "none"));
            assert!(
                text.contains(&format!("bind-mounts {source} (read-only)"))
                    && text.contains(exposes),
                "{source}: {text}"
            );
        }
    }

    #[test]
    fn other_bind_mounts_named_volumes_and_other_networks_are_not() {
        let quiet = pool(
            &[
                ("/srv/ccache", false),
                ("/etcetera", false),
                ("/homes", false),
                ("/opt/toolchains", true),
                ("cache", false),
            ],
            "bridge",
        );
        assert_eq!(warned(&quiet), "");
    }

    #[test]
    fn the_host_network_is_warned_about() {
        let text = warned(&pool(&[], "host"));
        assert!(text.contains("uses `network: host`"), "{text}");
    }

    #[test]
    fn what_the_engine_would_refuse_is_warned_about_on_each_host() {
        let mut pool = pool(&[("/srv/ccache", false), ("/srv/gone", false)], "ci-net");
        pool.hosts = vec!["a".into(), "b".into()];
        let mut observed = Observed::default();
        let host = |network: bool| HostState {
            networks: [("ci-net".to_string(), network)].into(),
            bind_sources: [
                ("/srv/ccache".to_string(), true),
                ("/srv/gone".to_string(), false),
            ]
            .into(),
            ..HostState::default()
        };
        observed.hosts.insert("a".into(), host(true));
        observed.hosts.insert("b".into(), host(false));
        let text = pool_warnings(std::slice::from_ref(&pool), &observed).join("\n");
        assert!(
            text.contains("network `ci-net` does not exist on host `b`"),
            "{text}"
        );
        assert!(
            !text.contains("network `ci-net` does not exist on host `a`"),
            "{text}"
        );
        // A missing bind-mount source is the operator's log's business, not the plan's: the
        // plan would tell a pull request which paths exist on the control machine.
        assert!(
            !text.contains("/srv/gone") && !text.contains("/srv/ccache"),
            "{text}"
        );
        // A pool of no runners creates nothing that could fail.
        pool.count = 0;
        let text = pool_warnings(std::slice::from_ref(&pool), &observed).join("\n");
        assert!(!text.contains("does not exist"), "{text}");
    }

    #[test]
    fn gpus_all_mixed_with_exclusive_gpus_is_found_on_any_shared_host() {
        let mut shared = pool(&[], "none");
        shared.name = "shared".into();
        shared.gpus = GpuRequest::All;
        shared.hosts = vec!["a".into(), "b".into()];
        let mut exclusive = pool(&[], "none");
        exclusive.name = "exclusive".into();
        exclusive.gpus = GpuRequest::Count(1);
        exclusive.hosts = vec!["b".into()];
        let text = pool_warnings(&[shared, exclusive], &Observed::default()).join("\n");
        assert!(
            text.contains("every GPU of host `a`, `b`")
                && text.contains("host `b` mixes `gpus: all` (pool `shared`)")
                && !text.contains("host `a` mixes"),
            "{text}"
        );
    }
}
