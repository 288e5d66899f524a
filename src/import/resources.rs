//! What a runner service gets from its host: GPUs, volumes (and the Docker socket), network,
//! CPU and memory limits.

use serde_json::{Map, Value};

use super::compose::ComposeFile;
use super::env::{self, Interpolated};
use super::report::Tag;
use super::service::Draft;
use crate::spec::{GpuRequest, Volume};

/// Where the GPUs of a service came from, and how many each container got (`None`: all).
struct GpuSource {
    what: String,
    count: Option<u32>,
    /// What compose did with it, for the comment.
    meaning: &'static str,
}

const ALL_GPUS: &str = "compose gave every container all of the host's GPUs";
const LISTED_GPUS: &str = "compose gave every container the GPUs it listed";
const FIRST_GPUS: &str = "compose's count: N meant the first N GPUs (0..N-1) for every container";
const PINNED_GPUS: &str = "compose pinned containers to GPUs by device_ids, which are not kept";

impl GpuSource {
    fn new(what: &str, count: Option<u32>, meaning: &'static str) -> GpuSource {
        GpuSource {
            what: what.to_string(),
            count,
            meaning,
        }
    }
}

/// One device request (`gpus:` list item or `deploy.resources.reservations.devices` item):
/// `Some` when it asks for GPUs.
fn device_request(entry: &Value, what: &str, d: &mut Draft) -> Option<GpuSource> {
    let capabilities = entry
        .get("capabilities")
        .map(Value::to_string)
        .unwrap_or_default();
    let driver = entry.get("driver").and_then(Value::as_str);
    if !capabilities.contains("\"gpu\"") && driver != Some("nvidia") {
        d.leave_out(
            format!("{what} {entry}"),
            "not a GPU: fleet hands out GPUs only",
        );
        return None;
    }
    let as_count = |n: u64| u32::try_from(n).unwrap_or(64);
    let ids = entry.get("device_ids").and_then(Value::as_array);
    Some(match (entry.get("count"), ids) {
        (Some(Value::Number(n)), _) => GpuSource::new(what, n.as_u64().map(as_count), FIRST_GPUS),
        (_, Some(ids)) => {
            let shown: Vec<String> = ids.iter().filter_map(env::scalar_text).collect();
            d.find(
                Tag::Decided,
                format!(
                    "{what} device_ids {}: not kept; fleet chooses each runner's GPUs by UUID (declare hosts.<name>.gpus to limit which)",
                    shown.join(", ")
                ),
            );
            GpuSource::new(what, Some(as_count(ids.len() as u64)), PINNED_GPUS)
        }
        _ => GpuSource::new(what, None, ALL_GPUS),
    })
}

/// NVIDIA_VISIBLE_DEVICES as a source: `all` is every GPU, `none`/`void` none, a list its length.
fn visible_devices(what: &str, value: &str) -> GpuSource {
    match value.trim() {
        "all" => GpuSource::new(what, None, ALL_GPUS),
        "" | "none" | "void" => GpuSource::new(what, Some(0), LISTED_GPUS),
        list => {
            let n = list.split(',').filter(|s| !s.trim().is_empty()).count();
            GpuSource::new(what, Some(u32::try_from(n).unwrap_or(64)), LISTED_GPUS)
        }
    }
}

/// GPUs per runner from `gpus:`, device reservations, `runtime: nvidia`,
/// NVIDIA_VISIBLE_DEVICES and `/dev/nvidiaN` devices.
pub fn gpus(d: &mut Draft, service: &Map<String, Value>, nvidia_visible: Option<&str>) {
    let mut sources = Vec::new();
    match service.get("gpus") {
        Some(Value::String(s)) if s == "all" => {
            sources.push(GpuSource::new("gpus: all", None, ALL_GPUS));
        }
        Some(Value::Array(items)) => {
            sources.extend(items.iter().filter_map(|e| device_request(e, "gpus", d)));
        }
        Some(other) => d.leave_out(
            format!("gpus: {other}"),
            "expected `all` or a list of device requests",
        ),
        None => {}
    }
    let reserved = service
        .get("deploy")
        .and_then(|v| v.pointer("/resources/reservations/devices"))
        .and_then(Value::as_array);
    for entry in reserved.into_iter().flatten() {
        let what = "deploy.resources.reservations.devices";
        sources.extend(device_request(entry, what, d));
    }
    let runtime = service.get("runtime").and_then(Value::as_str);
    match (runtime, nvidia_visible) {
        (Some("nvidia"), Some(visible)) => {
            sources.push(visible_devices(
                "runtime: nvidia with NVIDIA_VISIBLE_DEVICES",
                visible,
            ));
        }
        (Some("nvidia"), None) => sources.push(GpuSource::new("runtime: nvidia", None, ALL_GPUS)),
        (Some(other), _) => d.leave_out(
            format!("runtime: {other}"),
            "fleet runs containers on the engine's default runtime",
        ),
        (None, Some(visible)) => sources.push(visible_devices("NVIDIA_VISIBLE_DEVICES", visible)),
        (None, None) => {}
    }
    nvidia_devices(d, service, &mut sources);
    decide_gpus(d, &sources);
}

/// `devices: [/dev/nvidia0, ...]`: the GPUs passed by hand.
fn nvidia_devices(d: &mut Draft, service: &Map<String, Value>, sources: &mut Vec<GpuSource>) {
    let mut gpus = 0u32;
    let devices = service.get("devices").and_then(Value::as_array);
    for device in devices.into_iter().flatten() {
        let text = env::scalar_text(device).unwrap_or_default();
        let host_path = text.split(':').next().unwrap_or_default();
        match host_path.strip_prefix("/dev/nvidia") {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => gpus += 1,
            Some(_) => d.find(
                Tag::Consumed,
                format!("device {host_path}: the NVIDIA container toolkit mounts it for a runner with GPUs"),
            ),
            None => d.leave_out(format!("device {host_path}"), "fleet passes no devices but GPUs"),
        }
    }
    if gpus > 0 {
        sources.push(GpuSource::new(
            "devices /dev/nvidiaN",
            Some(gpus),
            LISTED_GPUS,
        ));
    }
}

fn decide_gpus(d: &mut Draft, sources: &[GpuSource]) {
    let whats: Vec<&str> = sources.iter().map(|s| s.what.as_str()).collect();
    let explicit = sources
        .iter()
        .filter(|s| s.count.is_some())
        .max_by_key(|s| s.count);
    let (n, source) = match (explicit, sources.first()) {
        (Some(s), _) => (s.count.unwrap_or(1), s),
        (None, Some(first)) => (1, first),
        (None, None) => return,
    };
    if n == 0 {
        d.find(Tag::Decided, format!("{}: no GPUs", whats.join(", ")));
        return;
    }
    let gpus = if n == 1 {
        "a GPU".to_string()
    } else {
        format!("{n} GPUs")
    };
    let mut note = format!(
        "From {}: {}; fleet gives each runner {gpus} of its own, by UUID, that no other runner holds.",
        whats.join(" and "),
        source.meaning
    );
    if source.count.is_none() {
        note.push_str(" `gpus: all` would share every GPU again, never exclusively.");
    }
    d.pool.gpus = Some(GpuRequest::Count(n));
    d.find(Tag::Decided, format!("gpus: {n} per runner. {note}"));
    d.note("gpus", note);
}

/// One entry of a service's `volumes`.
struct Mount {
    /// How the compose file writes it.
    shown: String,
    kind: &'static str,
    source: String,
    target: String,
    read_only: bool,
}

const DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];

fn parse_mount(entry: &Value) -> Result<Mount, (String, String)> {
    match entry {
        Value::String(raw) => {
            let text = match env::interpolate(raw) {
                Interpolated::FromShell { vars } => {
                    return Err((
                        raw.clone(),
                        format!(
                            "its path comes from ${{{}}} in the shell or .env",
                            vars.join("}, ${")
                        ),
                    ));
                }
                other => other.value().unwrap_or(raw).to_string(),
            };
            let parts: Vec<&str> = text.splitn(3, ':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [target] => ("", *target, ""),
                [source, target] => (*source, *target, ""),
                [source, target, mode] => (*source, *target, *mode),
                _ => ("", "", ""),
            };
            let kind = if source.is_empty() {
                "anonymous"
            } else if source.starts_with(['/', '.', '~']) {
                "bind"
            } else {
                "volume"
            };
            Ok(Mount {
                shown: raw.clone(),
                kind,
                source: source.into(),
                target: target.into(),
                read_only: mode.split(',').any(|m| m == "ro"),
            })
        }
        Value::Object(map) => {
            let text = |k: &str| {
                map.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (source, target) = (text("source"), text("target"));
            let kind = match map.get("type").and_then(Value::as_str).unwrap_or("volume") {
                "bind" => "bind",
                "volume" if source.is_empty() => "anonymous",
                "volume" => "volume",
                "tmpfs" => "tmpfs",
                _ => "other",
            };
            let read_only = map
                .get("read_only")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Ok(Mount {
                shown: format!("{source}:{target}"),
                kind,
                source,
                target,
                read_only,
            })
        }
        other => Err((other.to_string(), "not a volume entry".into())),
    }
}

/// The runner's own folder: its install, configuration or work folder.
fn is_runner_folder(target: &str, runner_dirs: &[String]) -> bool {
    let t = target.trim_end_matches('/');
    let last = t.rsplit('/').next().unwrap_or_default();
    matches!(last, "runner" | "actions-runner" | "_work" | ".runner")
        || runner_dirs.iter().any(|dir| {
            let dir = dir.trim_end_matches('/');
            t == dir || t.starts_with(&format!("{dir}/")) || dir.starts_with(&format!("{t}/"))
        })
}

/// Maps the service's volumes; returns the runner folder it kept, if any (the pool is then
/// persistent).
pub fn volumes(
    d: &mut Draft,
    file: &ComposeFile,
    service: &Map<String, Value>,
    runner_dirs: &[String],
) -> Option<String> {
    let mut state_folder = None;
    let mut kept: Vec<Volume> = Vec::new();
    for entry in service
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mount = match parse_mount(entry) {
            Ok(m) => m,
            Err((shown, why)) => {
                d.leave_out(format!("volume {shown}"), why);
                continue;
            }
        };
        let shown = mount.shown.clone();
        if DOCKER_SOCKETS.contains(&mount.source.as_str())
            || DOCKER_SOCKETS.contains(&mount.target.as_str())
        {
            d.pool.docker_socket = Some(true);
            d.note("docker_socket", format!("From the volume {shown}. Root on the host: any job can control the host's Docker engine and every container on it; `fleet plan` warns about it."));
            d.find(
                Tag::Decided,
                format!("volume {shown}: docker_socket: true (root on the host; the plan warns)"),
            );
        } else if matches!(mount.kind, "bind" | "volume")
            && is_runner_folder(&mount.target, runner_dirs)
        {
            d.find(Tag::Consumed, format!("volume {shown}: the runner's own folder; fleet keeps each persistent runner's registration in a volume of its own (<runner>-state), and the old folder's registration belongs to the old runner"));
            state_folder = Some(shown);
        } else if let Some(volume) = keep_mount(d, file, &mount, kept.len()) {
            if kept.iter().any(|v| v.target == volume.target) {
                d.leave_out(
                    format!("volume {shown}"),
                    "a second mount on the same target",
                );
            } else {
                kept.push(volume);
            }
        }
    }
    if !kept.is_empty() {
        d.pool.volumes = Some(kept);
    }
    state_folder
}

/// A bind or named volume as fleet mounts it; `None` (and a report line) when it cannot be.
fn keep_mount(d: &mut Draft, file: &ComposeFile, mount: &Mount, index: usize) -> Option<Volume> {
    let shown = &mount.shown;
    if !mount.target.starts_with('/') {
        d.leave_out(
            format!("volume {shown}"),
            "its target is not an absolute path",
        );
        return None;
    }
    let source = match mount.kind {
        "bind" if mount.source.starts_with('/') => mount.source.clone(),
        "bind" => {
            let joined = file.dir.join(&mount.source);
            let absolute = std::path::absolute(&joined).unwrap_or(joined);
            d.leave_out(
                format!("volume {shown}"),
                format!(
                    "a relative bind: fleet needs an absolute path; compose would have mounted {}",
                    absolute.display()
                ),
            );
            return None;
        }
        "volume" => {
            let name = file.volume_name(&mount.source);
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                d.leave_out(
                    format!("volume {shown}"),
                    format!("{name:?} is not a volume name Docker accepts"),
                );
                return None;
            }
            d.note(&format!("volumes/{index}"), format!("compose's volume `{}` is the Docker volume {name}: mounted as it is, with its data (fleet did not create it, and the plan says so).", mount.source));
            name
        }
        kind => {
            d.leave_out(
                format!("volume {shown}"),
                format!("a {kind} mount: fleet mounts named volumes and absolute host paths"),
            );
            return None;
        }
    };
    Some(Volume {
        source,
        target: mount.target.clone(),
        read_only: mount.read_only,
    })
}

/// `network_mode` or `networks` as the pool's `network`.
pub fn network(d: &mut Draft, file: &ComposeFile, service: &Map<String, Value>) {
    if let Some(mode) = service.get("network_mode").and_then(Value::as_str) {
        if matches!(mode, "host" | "none" | "bridge") {
            d.pool.network = Some(mode.to_string());
        } else {
            d.leave_out(
                format!("network_mode: {mode}"),
                "fleet joins a runner to bridge, host, none or a named network",
            );
        }
        return;
    }
    let names: Vec<String> = match service.get("networks") {
        Some(Value::Array(items)) => items.iter().filter_map(env::scalar_text).collect(),
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => vec![],
    };
    let mut names = names.into_iter().filter(|n| n != "default");
    let Some(first) = names.next() else { return };
    let name = file.network_name(&first);
    d.note("network", format!("compose's network `{first}` is the Docker network {name}: fleet creates no networks, so it must exist (`docker network create {name}`)."));
    d.pool.network = Some(name);
    for other in names {
        d.leave_out(
            format!("network {other}"),
            "fleet joins a runner to one network",
        );
    }
}

/// A memory size as fleet writes it (`[0-9]+[bkmg]?`), from compose's forms (`32g`, `1.5GB`,
/// `512m`, a number of bytes).
pub fn memory(raw: &str) -> Option<String> {
    let s = raw.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim().trim_end_matches('b').trim_end_matches('i');
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    if let Ok(n) = number.parse::<u64>()
        && shift <= 30
    {
        let unit = if unit.is_empty() { "" } else { unit };
        return Some(format!("{n}{unit}"));
    }
    let value: f64 = number.parse().ok()?;
    let bytes = (value * (1u64 << shift) as f64) as u64;
    if bytes == 0 {
        return None;
    }
    let (n, unit) = [(30, "g"), (20, "m"), (10, "k")]
        .into_iter()
        .find(|(s, _)| bytes.is_multiple_of(1u64 << s))
        .map_or((bytes, ""), |(s, u)| (bytes >> s, u));
    Some(format!("{n}{unit}"))
}

fn cpus_value(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    (f > 0.0 && f.is_finite()).then_some(f)
}

/// `cpus`, `mem_limit` and `deploy.resources.limits` as the pool's limits.
pub fn limits(d: &mut Draft, service: &Map<String, Value>) {
    let limits = service
        .get("deploy")
        .and_then(|v| v.pointer("/resources/limits"));
    let cpus = [
        ("cpus", service.get("cpus")),
        (
            "deploy.resources.limits.cpus",
            limits.and_then(|l| l.get("cpus")),
        ),
    ];
    for (what, value) in cpus {
        let Some(value) = value else { continue };
        match (cpus_value(value), d.pool.cpus) {
            (Some(c), None) => d.pool.cpus = Some(c),
            (Some(c), Some(kept)) if c != kept => d.leave_out(
                format!("{what}: {value}"),
                format!("cpus: {kept} was taken from the first setting"),
            ),
            (Some(_), Some(_)) => {}
            (None, _) => d.leave_out(format!("{what}: {value}"), "not a number of CPUs"),
        }
    }
    let memory_values = [
        ("mem_limit", service.get("mem_limit")),
        (
            "deploy.resources.limits.memory",
            limits.and_then(|l| l.get("memory")),
        ),
    ];
    for (what, value) in memory_values {
        let Some(value) = value else { continue };
        let raw = env::scalar_text(value).unwrap_or_default();
        match (memory(&raw), &d.pool.memory) {
            (Some(m), None) => {
                if m != raw {
                    d.note(
                        "memory",
                        format!("{what}: {raw}, written as fleet writes sizes."),
                    );
                }
                d.pool.memory = Some(m);
            }
            (Some(m), Some(kept)) if &m != kept => d.leave_out(
                format!("{what}: {raw}"),
                format!("memory: {kept} was taken from the first setting"),
            ),
            (Some(_), Some(_)) => {}
            (None, _) => d.leave_out(format!("{what}: {raw}"), "not a memory size fleet can read"),
        }
    }
    if let Some(limits) = limits.and_then(Value::as_object) {
        for key in limits
            .keys()
            .filter(|k| !matches!(k.as_str(), "cpus" | "memory"))
        {
            d.leave_out(
                format!("deploy.resources.limits.{key}"),
                "fleet limits CPUs and memory only",
            );
        }
    }
    deploy_leftovers(d, service);
}

fn deploy_leftovers(d: &mut Draft, service: &Map<String, Value>) {
    let Some(deploy) = service.get("deploy").and_then(Value::as_object) else {
        return;
    };
    for (key, value) in deploy {
        match key.as_str() {
            "replicas" | "mode" => {}
            "restart_policy" | "update_config" | "rollback_config" => d.find(Tag::Handled, format!("deploy.{key}: fleet replaces runners that exit, and replaces a changed runner only when it is idle")),
            "resources" => {
                let reservations = value.get("reservations").and_then(Value::as_object);
                for key in reservations.into_iter().flat_map(|r| r.keys()).filter(|k| *k != "devices") {
                    d.leave_out(format!("deploy.resources.reservations.{key}"), "fleet reserves GPUs only; it limits CPUs and memory");
                }
            }
            _ => d.leave_out(format!("deploy.{key}"), "fleet has no such setting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        for (raw, want) in [
            ("32g", Some("32g")),
            ("32G", Some("32g")),
            ("16GB", Some("16g")),
            ("512m", Some("512m")),
            ("1.5g", Some("1536m")),
            ("1073741824", Some("1073741824")),
            ("2t", Some("2048g")),
            ("1GiB", Some("1g")),
            ("lots", None),
        ] {
            assert_eq!(memory(raw).as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn runner_folders() {
        assert!(is_runner_folder("/runner", &[]));
        assert!(is_runner_folder("/home/runner/actions-runner/", &[]));
        assert!(is_runner_folder("/home/runner/_work", &[]));
        assert!(is_runner_folder("/tmp/gh", &["/tmp/gh/work".into()]));
        assert!(!is_runner_folder("/ccache", &["/tmp/gh/work".into()]));
    }

    #[test]
    fn visible_devices_counts() {
        let count = |v: &str| visible_devices("x", v).count;
        assert_eq!(count("all"), None);
        assert_eq!(count("0,1"), Some(2));
        assert_eq!(count("none"), Some(0));
        assert_eq!(count("GPU-a"), Some(1));
    }
}
