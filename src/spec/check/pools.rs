//! Checks of pools and `defaults`: required fields, hosts and GPUs, labels, volumes, env,
//! memory and autoscaling.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Checker, MAX_RUNNER_LABELS, MAX_RUNNER_NAME, RESERVED_ENV, RESERVED_ENV_PREFIX,
    RUNNER_SUFFIX_LEN, escape_pointer, max_runner_name_len,
};
use crate::spec::diag::quote;
use crate::spec::memory::memory_problem;
use crate::spec::model::{
    GpuRequest, Host, HostGpus, MAX_SCALE_SET_NAME, MAX_STOP_TIMEOUT_SECS, Pool, PoolHosts,
    parse_stop_timeout,
};
use crate::spec::reference::check_reference;
use crate::spec::resolve::DEFAULT_RUNNER_LABELS;

/// Docker labels and runner labels with this prefix mark what fleet owns.
const RESERVED_LABEL_PREFIX: &str = "fleet.";
/// Fleet names a runner's GPUs in this variable; a pool with GPUs cannot set it.
const GPU_ENV: &str = "NVIDIA_VISIBLE_DEVICES";

pub(super) fn check_pool(c: &mut Checker, name: &str, pool: &Pool) {
    let pool_ptr = format!("/pools/{}", escape_pointer(name));
    check_pool_values(c, &pool_ptr, pool);
    check_required(c, name, &pool_ptr, pool);
    let hosts = check_pool_hosts(c, name, &pool_ptr, pool);
    check_gpus_fit(c, name, pool, &hosts);
    check_gpu_env(c, name, pool);
    if let Some(autoscale) = &pool.autoscale {
        check_autoscale(c, name, &pool_ptr, pool, autoscale);
    }
    check_runner_identity(c, name, &pool_ptr, pool);
}

/// `count` (or `autoscale`) and `image`, here or in `defaults`.
fn check_required(c: &mut Checker, name: &str, pool_ptr: &str, pool: &Pool) {
    let spec = c.spec;
    let sized = pool.autoscale.is_some() || spec.pool_field(pool, |p| p.count.as_ref()).is_some();
    if !sized && !c.set_aside(name, "count") && !c.set_aside(name, "autoscale") {
        c.at_key(
            pool_ptr,
            "missing required field `count` (here or in `defaults`)",
        )
        .help("or give the pool `autoscale: { min_idle: N, max: M }` to scale with the queue");
    }
    if spec.pool_field(pool, |p| p.image.as_ref()).is_none() && !c.set_aside(name, "image") {
        c.at_key(
            pool_ptr,
            "missing required field `image` (here or in `defaults`)",
        );
    }
}

/// The declared hosts a pool may run on (every name in its `host` checked), or the only one.
fn check_pool_hosts(
    c: &mut Checker,
    name: &str,
    pool_ptr: &str,
    pool: &Pool,
) -> Vec<(String, Host)> {
    let spec = c.spec;
    let declared = spec.effective_hosts();
    let declared_names = || declared.keys().cloned().collect::<Vec<_>>().join(", ");
    match spec.pool_field(pool, |p| p.host.as_ref()) {
        Some(listed) => {
            let ptr = c.origin(name, "host", pool.host.is_some());
            let mut found = Vec::new();
            for (i, host) in listed.names().iter().enumerate() {
                match declared.get(host) {
                    Some(h) => found.push((host.clone(), h.clone())),
                    None => {
                        let at = match listed {
                            PoolHosts::One(_) => ptr.clone(),
                            PoolHosts::Many(_) => format!("{ptr}/{i}"),
                        };
                        c.at_value(
                            &at,
                            format!(
                                "expected a host declared in `hosts` ({}), found {}",
                                declared_names(),
                                quote(host)
                            ),
                        );
                    }
                }
            }
            found
        }
        None if declared.len() == 1 => declared.into_iter().collect(),
        None if c.set_aside(name, "host") || c.scope.set_aside.contains("/hosts") => Vec::new(),
        None => {
            c.at_key(
                pool_ptr,
                format!(
                    "missing field `host`: {} hosts are declared ({})",
                    declared.len(),
                    declared_names()
                ),
            )
            .help("say which host the pool runs on with `host:` (a name or a list)");
            Vec::new()
        }
    }
}

/// A runner's GPUs come from one host: some host the pool may run on must have enough.
fn check_gpus_fit(c: &mut Checker, name: &str, pool: &Pool, hosts: &[(String, Host)]) {
    let Some(gpus) = c.spec.pool_field(pool, |p| p.gpus.as_ref()).copied() else {
        return;
    };
    let wants = match gpus {
        GpuRequest::Count(0) => return,
        GpuRequest::Count(n) => n as usize,
        GpuRequest::All => 1,
    };
    // `auto` hosts are discovered at plan time: they may have enough.
    let fits = |host: &Host| match &host.gpus {
        HostGpus::Auto => true,
        HostGpus::None => false,
        HostGpus::Declared(uuids) => uuids.len() >= wants,
    };
    if hosts.is_empty() || hosts.iter().any(|(_, h)| fits(h)) {
        return;
    }
    let ptr = c.origin(name, "gpus", pool.gpus.is_some());
    let asks = match gpus {
        GpuRequest::All => "asks for GPUs".to_string(),
        GpuRequest::Count(n) => format!("asks for {n} GPUs per runner"),
    };
    let has = |(host, h): &(String, Host)| match &h.gpus {
        HostGpus::Declared(uuids) => format!("host `{host}` declares only {}", uuids.len()),
        _ => format!("host `{host}` is declared `gpus: none`"),
    };
    let message = match hosts {
        [(host, h)] if h.gpus == HostGpus::None => {
            format!("pool `{name}` asks for GPUs, but host `{host}` is declared `gpus: none`")
        }
        [one] => format!("pool `{name}` {asks}, but {}", has(one)),
        _ => format!(
            "pool `{name}` {asks}, but no host it may run on has that many (a runner's GPUs come from one host): {}",
            hosts.iter().map(has).collect::<Vec<_>>().join(", ")
        ),
    };
    c.at_value(&ptr, message);
}

/// Fleet sets NVIDIA_VISIBLE_DEVICES to the GPUs it assigns a runner.
fn check_gpu_env(c: &mut Checker, name: &str, pool: &Pool) {
    let spec = c.spec;
    let has_gpus = spec
        .pool_field(pool, |p| p.gpus.as_ref())
        .is_some_and(|g| *g != GpuRequest::Count(0));
    let own = pool.env.as_ref().is_some_and(|e| e.contains_key(GPU_ENV));
    let inherited = spec
        .defaults
        .as_ref()
        .and_then(|d| d.env.as_ref())
        .is_some_and(|e| e.contains_key(GPU_ENV));
    if has_gpus && (own || inherited) {
        let ptr = format!("{}/{GPU_ENV}", c.origin(name, "env", own));
        c.at_key(
            &ptr,
            format!("`{GPU_ENV}` is set by fleet for a pool with GPUs (the GPUs it assigns each runner); pool `{name}` cannot set it"),
        );
    }
}

fn check_autoscale(
    c: &mut Checker,
    name: &str,
    pool_ptr: &str,
    pool: &Pool,
    autoscale: &crate::spec::model::Autoscale,
) {
    let ptr = format!("{pool_ptr}/autoscale");
    if pool.count.is_some() {
        c.at_key(
            &format!("{pool_ptr}/count"),
            "expected either `count` or `autoscale`, found both",
        )
        .help("an autoscaled pool keeps between autoscale.min_idle and autoscale.max runners");
    }
    if autoscale.max < autoscale.min_idle {
        c.at_value(
            &format!("{ptr}/max"),
            format!(
                "expected `max` >= `min_idle` ({}), found {}",
                autoscale.min_idle, autoscale.max
            ),
        );
    }
    if let Some(false) = c.spec.pool_field(pool, |p| p.ephemeral.as_ref()) {
        let at = c.origin(name, "ephemeral", pool.ephemeral.is_some());
        c.at_value(
            &at,
            format!("pool `{name}` autoscales: its runners must be ephemeral (one job each), found `ephemeral: false`"),
        );
    }
    let scale_set = c.spec.scale_set_name(name, autoscale);
    if scale_set
        .get(..RESERVED_LABEL_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_LABEL_PREFIX))
    {
        // A scale set's name is one of its labels, and `fleet.<fleet>` marks what a fleet owns
        // (src/contract/mod.rs): `fleet.prod` would be taken, and deleted, by fleet `prod`.
        let at = if autoscale.scale_set.is_some() {
            format!("{ptr}/scale_set")
        } else {
            ptr.clone()
        };
        c.at_value(
            &at,
            format!("scale set name {scale_set:?} starts with `{RESERVED_LABEL_PREFIX}`, the prefix of fleet's ownership labels: expected a name that does not"),
        );
    }
    if autoscale.scale_set.is_none() {
        let default = c.spec.scale_set_name(name, autoscale);
        if !is_scale_set_name(&default) {
            c.at_key(
                &ptr,
                format!("the default scale set name {default:?} (`<fleet>-<pool>`) is not a valid one: expected at most {MAX_SCALE_SET_NAME} letters, digits, '_', '.' and '-', not starting with '.' or '-'"),
            )
            .help("name the scale set with `autoscale.scale_set`");
        }
    }
}

/// Scale set names are unique (GitHub compares them without case).
pub(super) fn check_scale_set_names(c: &mut Checker) {
    let spec = c.spec;
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (name, pool) in &spec.pools {
        let Some(autoscale) = &pool.autoscale else {
            continue;
        };
        let scale_set = spec.scale_set_name(name, autoscale);
        if let Some(first) = seen.insert(scale_set.to_lowercase(), name) {
            let ptr = format!("/pools/{}/autoscale", escape_pointer(name));
            let at = if autoscale.scale_set.is_some() {
                format!("{ptr}/scale_set")
            } else {
                ptr
            };
            c.at_value(
                &at,
                format!("scale set name {scale_set:?} is also pool `{first}`'s: expected names distinct without regard to case"),
            );
        }
    }
}

/// The rule of [`SCALE_SET_NAME_PATTERN`], for names fleet makes itself.
fn is_scale_set_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.chars().count() <= MAX_SCALE_SET_NAME
        && matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Runner names within GitHub's limit; labels within GitHub's count; runner groups.
fn check_runner_identity(c: &mut Checker, name: &str, pool_ptr: &str, pool: &Pool) {
    let spec = c.spec;
    let longest = max_runner_name_len(&spec.name, name);
    if longest > MAX_RUNNER_NAME {
        c.at_key(
            pool_ptr,
            format!(
                "runner names would be up to {longest} characters (`{}-{name}-` plus a {RUNNER_SUFFIX_LEN}-character suffix); GitHub allows {MAX_RUNNER_NAME}",
                spec.name
            ),
        );
    }
    let no_defaults = spec
        .pool_field(pool, |p| p.no_default_labels.as_ref())
        .copied()
        .unwrap_or(false);
    let labels = spec.pool_field(pool, |p| p.labels.as_ref());
    let own = labels.map_or(0, Vec::len)
        + if no_defaults {
            0
        } else {
            DEFAULT_RUNNER_LABELS.len()
        };
    // Every runner also carries fleet's ownership label (`fleet.<fleet>`): GitHub counts it.
    let count = if own == 0 { 0 } else { own + 1 };
    if count == 0 {
        c.at_key(
            pool_ptr,
            "expected at least one runner label, found none (`no_default_labels: true` and no `labels`)",
        )
        .help("a runner without labels can never be chosen by a workflow");
    } else if count > MAX_RUNNER_LABELS {
        let ptr = c.origin(name, "labels", pool.labels.is_some());
        c.at_value(
            &ptr,
            format!("expected at most {MAX_RUNNER_LABELS} labels per runner (GitHub's limit), found {count} with fleet's ownership label"),
        );
    }
    if let Some(group) = spec.pool_field(pool, |p| p.runner_group.as_ref())
        && spec.github.repo.is_some()
        && group != "Default"
    {
        let ptr = c.origin(name, "runner_group", pool.runner_group.is_some());
        c.at_value(
            &ptr,
            format!("expected `Default` at repository scope (runner groups belong to organizations), found {}", quote(group)),
        );
    }
}

/// Checks of values that hold wherever they are written, in a pool or in `defaults`.
pub(super) fn check_pool_values(c: &mut Checker, base: &str, pool: &Pool) {
    if let Some(image) = &pool.image
        && let Err(why) = check_reference(image)
    {
        // The image goes into Docker API paths: only the reference grammar gets there.
        c.at_value(
            &format!("{base}/image"),
            format!("image {}: {why}", quote(image)),
        )
        .help("write a reference such as ghcr.io/acme/runner:2.321.0 or runner@sha256:...");
    }
    if let Some(labels) = &pool.labels {
        check_labels(c, base, labels);
    }
    if let Some(volumes) = &pool.volumes {
        check_volumes(c, base, volumes);
    }
    if let Some(env) = &pool.env {
        for key in env.keys() {
            if RESERVED_ENV.contains(&key.as_str()) || key.starts_with(RESERVED_ENV_PREFIX) {
                c.at_key(
                    &format!("{base}/env/{}", escape_pointer(key)),
                    format!("`{key}` is set by fleet itself (the container contract); a pool cannot set it"),
                );
            }
        }
    }
    if let Some(network) = &pool.network {
        let name = network.strip_prefix("container:").unwrap_or(network);
        if !is_volume_name(name) {
            c.at_value(
                &format!("{base}/network"),
                format!(
                    "expected `bridge`, `host`, `none`, a network name of letters, digits, '_', '.' and '-', or `container:NAME`, found {}",
                    quote(network)
                ),
            );
        }
    }
    if let Some(memory) = &pool.memory
        && let Some(problem) = memory_problem(memory)
    {
        c.at_value(&format!("{base}/memory"), problem)
            .help("leave `memory` out for no limit");
    }
    if let Some(dir) = &pool.work_dir
        && (dir.trim_end_matches('/').is_empty()
            || dir.split('/').any(|part| part == ".." || part == "."))
    {
        c.at_value(
            &format!("{base}/work_dir"),
            format!(
                "expected an absolute directory below `/` without `.` or `..`, found {}",
                quote(dir)
            ),
        );
    }
    if let Some(timeout) = &pool.stop_timeout
        && parse_stop_timeout(timeout).is_none()
    {
        c.at_value(
            &format!("{base}/stop_timeout"),
            format!(
                "expected seconds or minutes such as 30s or 2m, of at most {MAX_STOP_TIMEOUT_SECS}s, found {}",
                quote(timeout)
            ),
        );
    }
}

fn check_labels(c: &mut Checker, base: &str, labels: &[String]) {
    let mut seen = BTreeSet::new();
    for (i, label) in labels.iter().enumerate() {
        let ptr = format!("{base}/labels/{i}");
        if !seen.insert(label.to_lowercase()) {
            c.at_value(
                &ptr,
                format!(
                    "duplicate label {} (GitHub labels are case-insensitive)",
                    quote(label)
                ),
            );
        }
        let prefix = label.get(..RESERVED_LABEL_PREFIX.len());
        if prefix.is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_LABEL_PREFIX)) {
            c.at_value(
                &ptr,
                format!("expected a label without the `fleet.` prefix (fleet reserves it for its ownership marks), found {}", quote(label)),
            );
        }
    }
}

fn check_volumes(c: &mut Checker, base: &str, volumes: &[crate::spec::model::Volume]) {
    let mut targets = BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let vptr = format!("{base}/volumes/{i}");
        if !volume.target.starts_with('/') {
            c.at_value(
                &format!("{vptr}/target"),
                format!(
                    "expected an absolute path inside the container, found {}",
                    quote(&volume.target)
                ),
            );
        } else if !targets.insert(volume.target.trim_end_matches('/').to_string()) {
            c.at_value(
                &format!("{vptr}/target"),
                format!("duplicate mount target {}", quote(&volume.target)),
            );
        }
        let source = &volume.source;
        if volume.is_bind() {
            continue;
        }
        let looks_like_path =
            source.contains('/') || source.starts_with('.') || source.starts_with('~');
        if looks_like_path {
            c.at_value(
                &format!("{vptr}/source"),
                format!("expected a named volume or an absolute host path, found the relative path {}", quote(source)),
            )
            .help("bind mounts need an absolute path (Docker would read a relative one as a volume name)");
        } else if !is_volume_name(source) {
            c.at_value(
                &format!("{vptr}/source"),
                format!(
                    "expected a volume name of letters, digits, '_', '.' and '-', found {}",
                    quote(source)
                ),
            );
        }
    }
}

fn is_volume_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        assert!(is_volume_name("zquic-cache"));
        assert!(is_volume_name("a.b_c"));
        assert!(!is_volume_name("-x"));
        assert!(!is_volume_name("a b"));
    }

    #[test]
    fn scale_set_names_follow_the_schema_pattern() {
        let pattern = schema_pattern_accepts;
        for name in ["zquic-ci-gpu", "A_b.c-1", "_x", "9", &"a".repeat(45)] {
            assert!(is_scale_set_name(name), "{name}");
            assert!(pattern(name), "{name}");
        }
        for name in ["", "-x", ".x", "a b", "a/b", "é", &"a".repeat(46)] {
            assert!(!is_scale_set_name(name), "{name}");
            assert!(!pattern(name), "{name}");
        }
    }

    /// The schema's pattern as jsonschema reads it, to keep it and [`is_scale_set_name`] equal.
    fn schema_pattern_accepts(name: &str) -> bool {
        let pattern = crate::spec::model::SCALE_SET_NAME_PATTERN;
        let schema = serde_json::json!({ "type": "string", "pattern": pattern });
        jsonschema::is_valid(&schema, &serde_json::json!(name))
    }
}
