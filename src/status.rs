//! `fleet status`: what runs, since when, what GitHub says of it, and what its GPUs are doing.
//! Built purely from an observation (plus NVML readings of the local GPUs); rendered as text or
//! JSON, and read by the metrics of `fleet watch`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::contract::{self, labels};
use crate::observe::gpu::GpuDevice;
use crate::observe::state::{ContainerStatus, GpuSource, HealthState, Observed};
use crate::spec::{GpuRequest, Spec};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetStatus {
    pub fleet: String,
    pub pools: Vec<PoolStatus>,
    /// Registrations fleet owns that no container runs.
    pub orphan_registrations: Vec<String>,
    pub totals: Totals,
    /// Each host of the spec: whether it was observed, and its GPUs and who holds them.
    pub hosts: Vec<HostStatus>,
    /// Autoscaled pools: their scale set, and the runners they want and have.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub autoscale: Vec<AutoscaleStatus>,
    /// Why the runner scale sets could not be read (the scale set service failed): the
    /// autoscaled pools are left as they are meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_set_error: Option<String>,
    /// Ephemeral pools' runs of runners that exited without taking a job, and their backoff
    /// (src/plan/crashloop.rs); pools without such a run are left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub start_failures: Vec<crate::plan::PoolStartFailures>,
}

/// An autoscaled pool as the planner sees it now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaleStatus {
    pub pool: String,
    pub scale_set: String,
    /// The scale set's id on GitHub (`None`: not made yet, or not read).
    pub scale_set_id: Option<u64>,
    pub min_idle: u32,
    pub max: u32,
    /// Runners it wants now; outside `fleet watch` the jobs assigned are not known, so this
    /// is its count kept between `min_idle` and `max`.
    pub wanted: u32,
    /// More runners its hosts' free GPUs could take (`None`: the pool asks no GPUs).
    pub free_slots: Option<u32>,
}

/// One host: observed or not (and why), its GPU inventory and its use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostStatus {
    pub name: String,
    /// Read in this observation; false: left out (`--exclude-host`) or not answering.
    pub observed: bool,
    /// Why it was not observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where its GPU list comes from: `declared`, `nvml`, `probe`, `none` or `unavailable`.
    pub gpu_source: String,
    /// Why there is no GPU list (`gpus: auto` that could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_note: Option<String>,
    pub gpus: Vec<HostGpu>,
}

impl HostStatus {
    /// GPUs no runner holds.
    pub fn free(&self) -> usize {
        self.gpus.iter().filter(|g| g.held_by.is_none()).count()
    }
}

/// One GPU of a host and the runner that holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostGpu {
    pub uuid: String,
    /// What NVML or the host's nvidia-smi calls it (unknown for a declared GPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// The runner whose container holds it exclusively.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// Its health where it was read (docs/gpu-health.md); absent for declared GPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthState>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub health_reasons: Vec<String>,
    /// A quarantine record on the host holds it (docs/gpu-health.md); absent when not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub desired: u32,
    pub containers: usize,
    pub busy: usize,
    pub idle: usize,
    pub offline: usize,
    pub exited: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolStatus {
    pub name: String,
    /// The first of `hosts`.
    pub host: String,
    /// Every host the pool runs on (for containers left on a host the pool no longer lists:
    /// that host alone, with `desired` 0).
    pub hosts: Vec<String>,
    pub desired: u32,
    pub runners: Vec<RunnerStatus>,
}

/// What a runner is doing, from Docker's and GitHub's views together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerState {
    /// Running a job.
    Busy,
    /// Online and waiting for a job.
    Idle,
    /// The container runs but GitHub does not see the runner online (starting, or lost).
    Offline,
    /// The container has stopped (an ephemeral runner after its job).
    Exited,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Busy => "busy",
            RunnerState::Idle => "idle",
            RunnerState::Offline => "offline",
            RunnerState::Exited => "exited",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerStatus {
    pub name: String,
    /// The host its container is on.
    pub host: String,
    pub state: RunnerState,
    /// Docker's state of the container.
    pub container: ContainerStatus,
    /// Seconds since the container was created.
    pub uptime_seconds: i64,
    pub exit_code: Option<i64>,
    pub github: Option<GithubView>,
    pub gpus: Vec<GpuUse>,
    /// The job it runs, where known: `fleet watch` learns an autoscaled pool's jobs from its
    /// scale set's messages, and a fixed pool's (repository-scoped fleet) from the repository's
    /// in-progress workflow runs (`watch/fixed_jobs.rs`). Absent when not known (always in
    /// `fleet status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<RunnerJob>,
}

/// The job a runner runs, as GitHub described it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunnerJob {
    /// `owner/name`.
    pub repository: String,
    /// The workflow file and ref (`owner/name/.github/workflows/ci.yml@refs/heads/main`).
    pub workflow: String,
    pub job_name: String,
    /// The workflow run (`None`: not told).
    pub run_id: Option<u64>,
    /// When the runner took the job, seconds since the epoch (`None`: not told).
    pub started_at: Option<i64>,
    /// The job's page on GitHub, where GitHub gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GithubView {
    pub id: u64,
    pub online: bool,
    pub busy: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuUse {
    pub uuid: String,
    /// From NVML when the GPU is on this machine.
    pub utilization_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
}

/// The status of `spec`'s fleet in `observed`; `devices` are this machine's GPUs (empty when
/// NVML is not there); `now` is seconds since the epoch.
pub fn build(spec: &Spec, observed: &Observed, devices: &[GpuDevice], now: i64) -> FleetStatus {
    let recorded = observed.recorded_scale_sets();
    let registrations: BTreeMap<&str, GithubView> = observed
        .github
        .runners
        .iter()
        .filter(|r| contract::registration_owned_with(r, &spec.name, &recorded))
        .map(|r| {
            (
                r.name.as_str(),
                GithubView {
                    id: r.id,
                    online: r.online,
                    busy: r.busy,
                },
            )
        })
        .collect();
    let by_uuid: BTreeMap<&str, &GpuDevice> =
        devices.iter().map(|d| (d.uuid.as_str(), d)).collect();
    let mut totals = Totals::default();
    let mut seen = Vec::new();
    let mut pools = Vec::new();
    // Pools of the spec, then pools that only live on in containers on a host they do not list.
    let mut names: Vec<(String, Vec<String>, u32)> = spec
        .resolved_pools()
        .into_iter()
        .map(|p| (p.name, p.hosts, p.count))
        .collect();
    for (host, state) in &observed.hosts {
        for c in state
            .containers
            .iter()
            .filter(|c| contract::container_owned(c, &spec.name))
        {
            let pool = c.label(labels::POOL).unwrap_or_default().to_string();
            if !names.iter().any(|(n, h, _)| n == &pool && h.contains(host)) {
                names.push((pool, vec![host.clone()], 0));
            }
        }
    }
    for (pool, hosts, desired) in names {
        let mut runners = Vec::new();
        for host in &hosts {
            let Some(state) = observed.hosts.get(host) else {
                continue;
            };
            for c in state.containers.iter().filter(|c| {
                contract::container_owned(c, &spec.name)
                    && c.label(labels::POOL) == Some(pool.as_str())
            }) {
                seen.push(c.name.clone());
                let runner = runner_status(c, host, &registrations, &by_uuid, now);
                totals.count(runner.state);
                runners.push(runner);
            }
        }
        totals.desired += desired;
        pools.push(PoolStatus {
            name: pool,
            host: hosts.first().cloned().unwrap_or_default(),
            hosts,
            desired,
            runners,
        });
    }
    let orphan_registrations = registrations
        .keys()
        .filter(|n| !seen.iter().any(|s| s == *n))
        .map(|n| n.to_string())
        .collect();
    FleetStatus {
        fleet: spec.name.clone(),
        pools,
        orphan_registrations,
        totals,
        hosts: host_statuses(spec, observed, devices),
        // Filled by `fleet status` only: the watch daemon has the plan's own figures.
        autoscale: vec![],
        scale_set_error: observed.github.scale_set_error.clone(),
        start_failures: crate::plan::start_failures(spec, observed)
            .into_iter()
            .filter(|p| p.failures > 0)
            .collect(),
    }
}

/// What the planner decides for each autoscaled pool (nothing when the spec cannot be planned:
/// `fleet plan` says why).
pub fn autoscale_statuses(spec: &Spec, observed: &Observed) -> Vec<AutoscaleStatus> {
    let Ok(plan) = crate::plan::plan(spec, observed) else {
        return vec![];
    };
    let sets = observed.github.scale_sets.as_deref().unwrap_or_default();
    plan.autoscale
        .into_iter()
        .map(|a| AutoscaleStatus {
            scale_set_id: sets
                .iter()
                .find(|s| contract::same_scale_set_name(&s.name, &a.scale_set))
                .map(|s| s.id),
            pool: a.pool,
            scale_set: a.scale_set,
            min_idle: a.min_idle,
            max: a.max,
            wanted: a.wanted,
            free_slots: a.free_slots,
        })
        .collect()
}

/// The autoscaled pools' section of `fleet status`.
fn autoscale_text(pools: &[AutoscaleStatus]) -> String {
    if pools.is_empty() {
        return String::new();
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header([
        "POOL",
        "SCALE SET",
        "ID",
        "WANTED",
        "MIN IDLE",
        "MAX",
        "FREE GPU SLOTS",
    ]);
    for a in pools {
        table.add_row([
            a.pool.clone(),
            a.scale_set.clone(),
            a.scale_set_id
                .map_or("not made".into(), |id| id.to_string()),
            a.wanted.to_string(),
            a.min_idle.to_string(),
            a.max.to_string(),
            a.free_slots.map_or("-".into(), |n| n.to_string()),
        ]);
    }
    format!(
        "\nautoscaled pools (jobs assigned and waiting are known to `fleet watch`: fleet_autoscale_jobs_waiting)\n{table}\n"
    )
}

impl Totals {
    fn count(&mut self, state: RunnerState) {
        match state {
            RunnerState::Busy => self.busy += 1,
            RunnerState::Idle => self.idle += 1,
            RunnerState::Offline => self.offline += 1,
            RunnerState::Exited => self.exited += 1,
        }
        self.containers += 1;
    }
}

fn runner_status(
    c: &crate::observe::state::ContainerState,
    host: &str,
    registrations: &BTreeMap<&str, GithubView>,
    by_uuid: &BTreeMap<&str, &GpuDevice>,
    now: i64,
) -> RunnerStatus {
    let github = registrations.get(c.name.as_str()).cloned();
    let state = if c.status.is_finished() {
        RunnerState::Exited
    } else {
        match &github {
            Some(g) if g.busy => RunnerState::Busy,
            Some(g) if g.online => RunnerState::Idle,
            _ => RunnerState::Offline,
        }
    };
    RunnerStatus {
        name: c.name.clone(),
        host: host.to_string(),
        state,
        container: c.status,
        uptime_seconds: (now - c.created).max(0),
        exit_code: c.exit_code,
        github,
        job: None,
        gpus: c
            .gpus()
            .into_iter()
            .map(|uuid| {
                let d = by_uuid.get(uuid.as_str());
                GpuUse {
                    utilization_percent: d.and_then(|d| d.utilization_percent),
                    memory_used_bytes: d.map(|d| d.memory_used_bytes),
                    memory_total_bytes: d.map(|d| d.memory_total_bytes),
                    uuid,
                }
            })
            .collect(),
    }
}

/// Each host of the spec: observed or not, its GPUs, and the runner holding each. A GPU is held
/// by a running container of this fleet whose pool holds GPUs exclusively (not `gpus: all`).
fn host_statuses(spec: &Spec, observed: &Observed, devices: &[GpuDevice]) -> Vec<HostStatus> {
    let shared: Vec<String> = spec
        .resolved_pools()
        .into_iter()
        .filter(|p| p.gpus == GpuRequest::All)
        .map(|p| p.name)
        .collect();
    spec.effective_hosts()
        .into_keys()
        .map(|name| {
            let Some(state) = observed.hosts.get(&name) else {
                return HostStatus {
                    name,
                    observed: false,
                    reason: Some("not observed".into()),
                    gpu_source: "unknown".into(),
                    gpu_note: None,
                    gpus: vec![],
                };
            };
            let mut holders: BTreeMap<String, String> = BTreeMap::new();
            for c in state.containers.iter().filter(|c| {
                contract::container_owned(c, &spec.name)
                    && !c.status.is_finished()
                    && !c
                        .label(labels::POOL)
                        .is_some_and(|p| shared.iter().any(|s| s == p))
            }) {
                for uuid in c.gpus() {
                    holders.entry(uuid).or_insert_with(|| c.name.clone());
                }
            }
            let describe = |uuid: &str| {
                let probed = state.gpus.devices.iter().find(|d| d.uuid == uuid);
                let local = devices.iter().find(|d| d.uuid == uuid);
                match (probed, local, &state.gpus.source) {
                    (Some(d), _, _) => (Some(d.name.clone()), Some(d.memory_total_bytes)),
                    (None, Some(d), GpuSource::Nvml) => {
                        (Some(d.name.clone()), Some(d.memory_total_bytes))
                    }
                    _ => (None, None),
                }
            };
            let (gpu_source, gpu_note) = match &state.gpus.source {
                GpuSource::None => ("none", None),
                GpuSource::Declared => ("declared", None),
                GpuSource::Nvml => ("nvml", None),
                GpuSource::Probe => ("probe", None),
                GpuSource::Unavailable(why) => ("unavailable", Some(why.clone())),
            };
            HostStatus {
                gpus: state
                    .gpus
                    .uuids
                    .iter()
                    .map(|uuid| {
                        let (gpu_name, memory) = describe(uuid);
                        let health = state.gpus.health.get(uuid);
                        HostGpu {
                            uuid: uuid.clone(),
                            name: gpu_name,
                            memory_total_bytes: memory,
                            held_by: holders.get(uuid).cloned(),
                            health: health.map(|h| h.state),
                            health_reasons: health.map(|h| h.reasons.clone()).unwrap_or_default(),
                            quarantined: health.is_some_and(|h| h.quarantined),
                        }
                    })
                    .collect(),
                name,
                observed: true,
                reason: None,
                gpu_source: gpu_source.into(),
                gpu_note,
            }
        })
        .collect()
}

impl FleetStatus {
    /// Says why `host` was not observed (excluded, or the error it gave).
    pub fn note_unobserved(&mut self, host: &str, reason: String) {
        if let Some(h) = self.hosts.iter_mut().find(|h| h.name == host) {
            h.reason = Some(reason);
        }
    }
}

/// A host's line, and its GPUs with the runner holding each. Names and reasons come from the
/// spec, GitHub, Docker and the GPUs: escaped (src/escape.rs).
pub fn host_text(host: &HostStatus) -> String {
    crate::escape::escaped_lines(&host_text_unescaped(host)).into_owned()
}

fn host_text_unescaped(host: &HostStatus) -> String {
    if !host.observed {
        let why = host.reason.as_deref().unwrap_or("not observed");
        return format!("\nhost {}: not observed: {why}\n", host.name);
    }
    let gpus = match (host.gpu_source.as_str(), &host.gpu_note) {
        (_, Some(note)) => return format!("\nhost {}: GPUs unknown: {note}\n", host.name),
        ("none", _) => return format!("\nhost {}: no GPUs (gpus: none)\n", host.name),
        (source, _) => format!(
            "{} of {} GPUs free ({source})",
            host.free(),
            host.gpus.len()
        ),
    };
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(["UUID", "NAME", "MEMORY", "HELD BY", "HEALTH"]);
    for g in &host.gpus {
        let health = match (&g.health, g.health_reasons.as_slice()) {
            (None, _) => "-".to_string(),
            (Some(h), []) => h.as_str().to_string(),
            (Some(h), reasons) => format!("{}: {}", h.as_str(), reasons.join("; ")),
        };
        table.add_row([
            g.uuid.clone(),
            g.name.clone().unwrap_or_else(|| "-".into()),
            g.memory_total_bytes.map_or("-".into(), |b| {
                format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64)
            }),
            g.held_by.clone().unwrap_or_else(|| "-".into()),
            health,
        ]);
    }
    format!("\nhost {}: {gpus}\n{table}\n", host.name)
}

fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A pool's run of runners that exited without taking a job, and its backoff.
fn start_failures_line(run: &crate::plan::PoolStartFailures) -> String {
    match &run.backoff {
        Some(backoff) => format!("  backing off: {}\n", backoff.line()),
        None => format!(
            "  {} runner(s) in a row exited without taking a job (backoff from {})\n",
            run.failures,
            crate::plan::START_FAILURES_BEFORE_BACKOFF
        ),
    }
}

/// The text view: a table per pool, then totals.
pub fn text(status: &FleetStatus) -> String {
    crate::escape::escaped_lines(&text_unescaped(status)).into_owned()
}

fn text_unescaped(status: &FleetStatus) -> String {
    let mut out = format!("fleet `{}`\n", status.fleet);
    for pool in &status.pools {
        let actual = pool
            .runners
            .iter()
            .filter(|r| r.state != RunnerState::Exited)
            .count();
        let on = match pool.hosts.as_slice() {
            [one] => format!("host {one}"),
            many => format!("hosts {}", many.join(", ")),
        };
        out.push_str(&format!(
            "\npool {} on {on}: {actual} of {} runners\n",
            pool.name, pool.desired
        ));
        if let Some(run) = status.start_failures.iter().find(|p| p.pool == pool.name) {
            out.push_str(&start_failures_line(run));
        }
        if pool.runners.is_empty() {
            continue;
        }
        let several = pool.hosts.len() > 1;
        let mut table = comfy_table::Table::new();
        table.load_style(comfy_table::presets::NOTHING);
        let mut header = vec!["RUNNER"];
        if several {
            header.push("HOST");
        }
        header.extend(["STATE", "CONTAINER", "UPTIME", "GITHUB", "GPUS", "EXIT"]);
        table.set_header(header);
        for r in &pool.runners {
            let github = github_cell(r.github.as_ref());
            let gpus = gpus_cell(&r.gpus);
            let mut row = vec![r.name.clone()];
            if several {
                row.push(r.host.clone());
            }
            row.extend([
                r.state.as_str().to_string(),
                format!("{:?}", r.container).to_lowercase(),
                duration(r.uptime_seconds),
                github,
                if gpus.is_empty() { "-".into() } else { gpus },
                r.exit_code.map_or("-".into(), |c| c.to_string()),
            ]);
            table.add_row(row);
        }
        out.push_str(&format!("{table}\n"));
    }
    out.push_str(&autoscale_text(&status.autoscale));
    if let Some(error) = &status.scale_set_error {
        out.push_str(&format!(
            "\nrunner scale sets: cannot be read ({error}); autoscaled pools are left as they are until the service answers again\n"
        ));
    }
    for host in &status.hosts {
        out.push_str(&host_text(host));
    }
    if !status.orphan_registrations.is_empty() {
        out.push_str(&format!(
            "\nregistered on GitHub without a container: {}\n",
            status.orphan_registrations.join(", ")
        ));
    }
    let t = &status.totals;
    out.push_str(&format!(
        "\nTotal: {} of {} runners ({} busy, {} idle, {} offline), {} exited.\n",
        t.containers - t.exited,
        t.desired,
        t.busy,
        t.idle,
        t.offline,
        t.exited
    ));
    out
}

/// The GITHUB cell of a runner's row.
fn github_cell(github: Option<&GithubView>) -> String {
    match github {
        Some(g) => format!(
            "{} {}, id {}",
            if g.online { "online" } else { "offline" },
            if g.busy { "busy" } else { "idle" },
            g.id
        ),
        None => "not registered".into(),
    }
}

/// The GPUS cell of a runner's row: each GPU with its use when NVML tells it.
fn gpus_cell(gpus: &[GpuUse]) -> String {
    gpus.iter()
        .map(|g| {
            match (
                g.utilization_percent,
                g.memory_used_bytes,
                g.memory_total_bytes,
            ) {
                (Some(u), Some(used), Some(total)) => format!(
                    "{} {u}% {:.1}/{:.1}GiB",
                    g.uuid,
                    used as f64 / (1u64 << 30) as f64,
                    total as f64 / (1u64 << 30) as f64
                ),
                _ => g.uuid.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{add_runner, empty_world, set_busy, with_pools};

    #[test]
    fn states_totals_and_gpus() {
        let spec = with_pools("  gpu:\n    count: 3\n    image: r:1\n    gpus: 1\n");
        let mut world = empty_world();
        add_runner(&mut world, &spec, "gpu", "zq-gpu-aaaaaa", &["GPU-a"]);
        add_runner(&mut world, &spec, "gpu", "zq-gpu-bbbbbb", &["GPU-b"]);
        set_busy(&mut world, "zq-gpu-bbbbbb");
        world.github.runners.retain(|r| r.name != "zq-gpu-aaaaaa");
        let device = GpuDevice {
            index: 1,
            uuid: "GPU-b".into(),
            name: "H200".into(),
            memory_total_bytes: 8 << 30,
            memory_used_bytes: 2 << 30,
            utilization_percent: Some(87),
            temperature_celsius: Some(60),
            processes: Some(1),
        };
        let status = build(&spec, &world, &[device], 1100);
        let pool = &status.pools[0];
        assert_eq!(pool.desired, 3);
        assert_eq!(pool.runners[0].state, RunnerState::Offline);
        assert_eq!(pool.runners[1].state, RunnerState::Busy);
        assert_eq!(pool.runners[1].uptime_seconds, 99);
        assert_eq!(pool.runners[1].gpus[0].utilization_percent, Some(87));
        assert_eq!(status.totals.busy, 1);
        assert_eq!(status.totals.offline, 1);
        let text = text(&status);
        assert!(
            text.contains("pool gpu on host local: 2 of 3 runners"),
            "{text}"
        );
        assert!(text.contains("GPU-b 87% 2.0/8.0GiB"), "{text}");
        // What Docker, GitHub and the GPUs say reaches the terminal escaped.
        let mut status = status;
        status.hosts[0].observed = false;
        status.note_unobserved("local", "engine said \u{1b}]0;owned\u{7}\u{1b}[2J".into());
        let shown = super::text(&status);
        assert!(shown.contains("engine said \\u{1b}]0;owned"), "{shown}");
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown:?}"
        );
        assert!(
            text.contains("Total: 2 of 3 runners (1 busy, 0 idle, 1 offline), 0 exited."),
            "{text}"
        );
    }

    #[test]
    fn a_pool_on_two_hosts_and_each_hosts_gpus_with_their_holders() {
        use crate::observe::state::{GpuInventory, GpuSource, HostState};
        let spec = crate::plan::tests::spec(
            "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n  a:\n    gpus: [GPU-a, GPU-b]\n  b:\n    gpus: none\n  c:\n    gpus: auto\n\
             pools:\n  gpu:\n    host: [a, c]\n    count: 2\n    image: r:1\n    gpus: 1\n  cpu:\n    host: [a, b]\n    count: 2\n    image: r:1\n",
        );
        let mut world = empty_world();
        world.hosts.clear();
        let declared = GpuInventory {
            uuids: vec!["GPU-a".into(), "GPU-b".into()],
            source: GpuSource::Declared,
            ..GpuInventory::default()
        };
        world.hosts.insert("local".into(), HostState::default());
        add_runner(&mut world, &spec, "gpu", "zq-gpu-aaaaaa", &["GPU-b"]);
        add_runner(&mut world, &spec, "cpu", "zq-cpu-aaaaaa", &[]);
        let mut a = world.hosts.remove("local").expect("host");
        a.gpus = declared;
        world.hosts.insert("a".into(), a);
        let b = HostState {
            containers: world.hosts["a"]
                .containers
                .iter()
                .filter(|c| c.name == "zq-cpu-aaaaaa")
                .cloned()
                .map(|mut c| {
                    c.name = "zq-cpu-bbbbbb".into();
                    c
                })
                .collect(),
            ..HostState::default()
        };
        world.hosts.insert("b".into(), b);
        world.unobserved.insert("c".into());
        let mut status = build(&spec, &world, &[], 1100);
        status.note_unobserved("c", "excluded with --exclude-host".into());
        let cpu = status.pools.iter().find(|p| p.name == "cpu").expect("cpu");
        assert_eq!(cpu.hosts, ["a", "b"]);
        let hosts: Vec<(&str, &str)> = cpu
            .runners
            .iter()
            .map(|r| (r.name.as_str(), r.host.as_str()))
            .collect();
        assert_eq!(hosts, [("zq-cpu-aaaaaa", "a"), ("zq-cpu-bbbbbb", "b")]);
        let a = &status.hosts[0];
        assert_eq!((a.name.as_str(), a.free()), ("a", 1));
        assert_eq!(a.gpus[1].held_by.as_deref(), Some("zq-gpu-aaaaaa"));
        let text = text(&status);
        assert!(
            text.contains("pool cpu on hosts a, b: 2 of 2 runners"),
            "{text}"
        );
        assert!(
            text.contains("host a: 1 of 2 GPUs free (declared)"),
            "{text}"
        );
        assert!(text.contains("host b: no GPUs (gpus: none)"), "{text}");
        assert!(
            text.contains("host c: not observed: excluded with --exclude-host"),
            "{text}"
        );
    }
}
