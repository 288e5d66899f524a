//! `fleet status`: what runs, since when, what GitHub says of it, and what its GPUs are doing.
//! Built purely from an observation (plus NVML readings of the local GPUs); rendered as text or
//! JSON, and read by the metrics of `fleet watch`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::contract::{self, labels};
use crate::observe::gpu::GpuDevice;
use crate::observe::state::{ContainerStatus, Observed};
use crate::spec::Spec;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetStatus {
    pub fleet: String,
    pub pools: Vec<PoolStatus>,
    /// Registrations fleet owns that no container runs.
    pub orphan_registrations: Vec<String>,
    pub totals: Totals,
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
    pub host: String,
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
    pub state: RunnerState,
    /// Docker's state of the container.
    pub container: ContainerStatus,
    /// Seconds since the container was created.
    pub uptime_seconds: i64,
    pub exit_code: Option<i64>,
    pub github: Option<GithubView>,
    pub gpus: Vec<GpuUse>,
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
    let registrations: BTreeMap<&str, GithubView> = observed
        .github
        .runners
        .iter()
        .filter(|r| contract::registration_owned(r, &spec.name))
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
    let resolved = spec.resolved_pools();
    // Pools of the spec, then pools that only live on in containers.
    let mut names: Vec<(String, String, u32)> = resolved
        .iter()
        .map(|p| (p.name.clone(), p.host.clone(), p.count))
        .collect();
    for (host, state) in &observed.hosts {
        for c in state
            .containers
            .iter()
            .filter(|c| contract::container_owned(c, &spec.name))
        {
            let pool = c.label(labels::POOL).unwrap_or_default().to_string();
            if !names.iter().any(|(n, h, _)| n == &pool && h == host) {
                names.push((pool, host.clone(), 0));
            }
        }
    }
    for (pool, host, desired) in names {
        let mut runners = Vec::new();
        if let Some(state) = observed.hosts.get(&host) {
            for c in state.containers.iter().filter(|c| {
                contract::container_owned(c, &spec.name)
                    && c.label(labels::POOL) == Some(pool.as_str())
            }) {
                seen.push(c.name.clone());
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
                match state {
                    RunnerState::Busy => totals.busy += 1,
                    RunnerState::Idle => totals.idle += 1,
                    RunnerState::Offline => totals.offline += 1,
                    RunnerState::Exited => totals.exited += 1,
                }
                totals.containers += 1;
                runners.push(RunnerStatus {
                    name: c.name.clone(),
                    state,
                    container: c.status,
                    uptime_seconds: (now - c.created).max(0),
                    exit_code: c.exit_code,
                    github,
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
                });
            }
        }
        totals.desired += desired;
        pools.push(PoolStatus {
            name: pool,
            host,
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
    }
}

fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The text view: a table per pool, then totals.
pub fn text(status: &FleetStatus) -> String {
    let mut out = format!("fleet `{}`\n", status.fleet);
    for pool in &status.pools {
        let actual = pool
            .runners
            .iter()
            .filter(|r| r.state != RunnerState::Exited)
            .count();
        out.push_str(&format!(
            "\npool {} on host {}: {actual} of {} runners\n",
            pool.name, pool.host, pool.desired
        ));
        if pool.runners.is_empty() {
            continue;
        }
        let mut table = comfy_table::Table::new();
        table.load_style(comfy_table::presets::NOTHING);
        table.set_header([
            "RUNNER",
            "STATE",
            "CONTAINER",
            "UPTIME",
            "GITHUB",
            "GPUS",
            "EXIT",
        ]);
        for r in &pool.runners {
            let github = match &r.github {
                Some(g) => format!(
                    "{} {}, id {}",
                    if g.online { "online" } else { "offline" },
                    if g.busy { "busy" } else { "idle" },
                    g.id
                ),
                None => "not registered".into(),
            };
            let gpus = r
                .gpus
                .iter()
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
                .join(", ");
            table.add_row([
                r.name.clone(),
                r.state.as_str().to_string(),
                format!("{:?}", r.container).to_lowercase(),
                duration(r.uptime_seconds),
                github,
                if gpus.is_empty() { "-".into() } else { gpus },
                r.exit_code.map_or("-".into(), |c| c.to_string()),
            ]);
        }
        out.push_str(&format!("{table}\n"));
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
        assert!(
            text.contains("Total: 2 of 3 runners (1 busy, 0 idle, 1 offline), 0 exited."),
            "{text}"
        );
    }
}
