//! A host's GPU inventory as one observation reads it: declared in the spec, `none`, NVML when
//! the engine runs on this machine, or, for `gpus: auto` on a remote engine, the GPU probe
//! (`docker/probe.rs`): a one-shot container on that host running the host's `nvidia-smi`.
//!
//! The probe runs only where it is needed: for a host that a pool asking for GPUs may run on
//! (or when `fleet gpus --host` and `fleet status` ask for every host). Under `fleet watch` its
//! answer is kept for a while, so that a resync every 30 s does not start a container each time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::gpu;
use super::health::{GpuSignals, classify};
use super::nvml_reader::reader;
use super::state::{
    ContainerState, ContainerStatus, GpuHealth, GpuInventory, GpuSource, HealthState,
    QuarantineRecord, VolumeState,
};
use crate::docker::DockerHost;
use crate::spec::{GpuHealthSettings, GpuRequest, HostGpus, ResolvedPool};

/// The environment variable that names the image the GPU probe runs (it must be on each host
/// that is probed). The operator's choice only: a pool's image is the pull request's, and the
/// probe runs with every GPU's device nodes, so without it `gpus: auto` on a remote engine is
/// unavailable (declare the UUIDs instead).
pub const PROBE_IMAGE_ENV: &str = "FLEET_GPU_PROBE_IMAGE";

/// When to ask a remote engine for its GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeWhen {
    /// Only hosts that a pool asking for GPUs may run on (plan, apply, watch).
    Needed,
    /// Every `gpus: auto` host (status, `fleet gpus --host`).
    Always,
}

/// The GPU probe's settings and the answers it keeps.
pub struct GpuProbe {
    /// The operator's image for the probe ([`PROBE_IMAGE_ENV`]).
    image: Option<String>,
    /// How long an answer is kept; zero keeps none.
    keep: Duration,
    answers: Mutex<BTreeMap<String, (Instant, String, GpuRead)>>,
}

impl GpuProbe {
    /// `keep`: how long an inventory read through the probe is reused for the same host,
    /// endpoint and image.
    pub fn new(image: Option<String>, keep: Duration) -> GpuProbe {
        GpuProbe {
            image: image.filter(|i| !i.is_empty()),
            keep,
            answers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The inventory of `host` (connected as `connection`), as its spec entry says, with the
    /// health signals of each GPU where they were read.
    pub async fn inventory(
        &self,
        fleet: &str,
        host: &str,
        gpus: &HostGpus,
        connection: &DockerHost,
        pools: &[ResolvedPool],
        when: ProbeWhen,
    ) -> GpuRead {
        if *gpus == HostGpus::Auto && connection.is_local() {
            return local_inventory().await;
        }
        if *gpus != HostGpus::Auto {
            return gpu::inventory(host, gpus, connection.is_local()).into();
        }
        self.remote_inventory(fleet, host, connection, pools, when)
            .await
    }

    async fn remote_inventory(
        &self,
        fleet: &str,
        host: &str,
        connection: &DockerHost,
        pools: &[ResolvedPool],
        when: ProbeWhen,
    ) -> GpuRead {
        let on_host: Vec<&ResolvedPool> = pools
            .iter()
            .filter(|p| p.hosts.iter().any(|h| h == host))
            .collect();
        let wants_gpus = on_host
            .iter()
            .any(|p| p.gpus != GpuRequest::Count(0) && (p.count > 0 || p.autoscale.is_some()));
        if when == ProbeWhen::Needed && !wants_gpus {
            return unavailable(format!(
                "`gpus: auto` on host `{host}`, a remote engine, is read only while a pool that asks for GPUs runs there (`fleet gpus --host {host}` reads it)"
            ))
            .into();
        }
        let Some(image) = self.image.clone() else {
            return unavailable(no_probe_image(host)).into();
        };
        let key = format!("{}|{image}", connection.endpoint);
        if let Some(kept) = self.kept(host, &key) {
            return kept;
        }
        let read = match connection.run_gpu_probe(fleet, &image).await {
            Ok(gpus) => GpuRead {
                inventory: GpuInventory {
                    uuids: gpus.iter().map(|g| g.info.uuid.clone()).collect(),
                    source: GpuSource::Probe,
                    devices: gpus.iter().map(|g| g.info.clone()).collect(),
                    ..GpuInventory::default()
                },
                signals: gpus
                    .into_iter()
                    .map(|g| (g.info.uuid.clone(), g.signals))
                    .collect(),
            },
            Err(e) => return unavailable(e.to_string()).into(),
        };
        self.keep(host, key, &read);
        read
    }

    fn kept(&self, host: &str, key: &str) -> Option<GpuRead> {
        let answers = self.answers.lock().ok()?;
        let (at, kept_key, inventory) = answers.get(host)?;
        (kept_key == key && at.elapsed() < self.keep).then(|| inventory.clone())
    }

    fn keep(&self, host: &str, key: String, inventory: &GpuRead) {
        if self.keep.is_zero() {
            return;
        }
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(host.to_string(), (Instant::now(), key, inventory.clone()));
        }
    }
}

/// Why there is no probe: no operator's image. A pool's image is never used (it is the pull
/// request's, and would run with every GPU's device nodes).
fn no_probe_image(host: &str) -> String {
    format!(
        "`gpus: auto` on host `{host}` is read by running the host's nvidia-smi in a container of the image the control machine names in {PROBE_IMAGE_ENV}, and it names none (a pool's image is never used: it comes from the spec): set {PROBE_IMAGE_ENV} to an image on that host (such as nvidia/cuda:12.4.1-base-ubuntu22.04), or declare the GPU UUIDs in hosts.{host}.gpus"
    )
}

/// A host's GPU inventory and, where they were read, its GPUs' health signals by UUID.
#[derive(Debug, Clone, Default)]
pub struct GpuRead {
    pub inventory: GpuInventory,
    pub signals: BTreeMap<String, GpuSignals>,
}

impl From<GpuInventory> for GpuRead {
    fn from(inventory: GpuInventory) -> GpuRead {
        GpuRead {
            inventory,
            signals: BTreeMap::new(),
        }
    }
}

impl GpuRead {
    /// The inventory with each GPU's health decided: `fleet` owns the runner containers in
    /// `containers`, and a GPU one of them holds while running is that runner's.
    pub fn classified(
        self,
        settings: &GpuHealthSettings,
        containers: &[ContainerState],
        volumes: &[VolumeState],
    ) -> GpuInventory {
        let mut inventory = self.inventory;
        for uuid in &inventory.uuids {
            let record = volumes
                .iter()
                .filter(|v| v.owned)
                .filter_map(|v| v.quarantine.as_ref())
                .find(|q| q.uuid == *uuid);
            let own: Vec<&str> = containers
                .iter()
                .filter(|c| {
                    matches!(
                        c.status,
                        ContainerStatus::Running
                            | ContainerStatus::Paused
                            | ContainerStatus::Restarting
                    ) && c.gpus().contains(uuid)
                })
                .map(|c| c.id.as_str())
                .collect();
            let held = !own.is_empty();
            let read = self.signals.get(uuid).map(|s| {
                let mut health = classify(&named_holders(s, containers), settings, held);
                if held {
                    health.leftovers = super::health::leftovers(s, settings, &own);
                }
                health
            });
            let Some(health) = quarantined(read, record) else {
                continue;
            };
            if !health.state.placeable() {
                // The plan warns; the log keeps it for debugging (it repeats every resync).
                tracing::debug!(
                    "GPU {uuid} is {}: {}",
                    health.state.as_str(),
                    health.reasons.join("; ")
                );
            }
            inventory.health.insert(uuid.clone(), health);
        }
        inventory
    }
}

/// The signals with the name of each process's container where it is one fleet observed (a
/// runner of this fleet), so that the dirty reason names it.
fn named_holders(signals: &GpuSignals, containers: &[ContainerState]) -> GpuSignals {
    let mut signals = signals.clone();
    for process in signals.processes.iter_mut().flatten() {
        if let Some(super::holder::ProcessHolder::Container { id, name }) = &mut process.holder {
            *name = containers
                .iter()
                .find(|c| c.id == *id)
                .map(|c| c.name.clone());
        }
    }
    signals
}

/// A GPU's health with its quarantine record, if it has one: the record holds the GPU
/// unhealthy until it is released, or, for a fault that a reset clears, until NVML reports the
/// reset done (the health read then says so, and the planner lifts the record). A malformed
/// record makes the GPU unknown.
fn quarantined(read: Option<GpuHealth>, record: Option<&QuarantineRecord>) -> Option<GpuHealth> {
    let Some(record) = record else { return read };
    if let Some(why) = &record.malformed {
        return Some(GpuHealth {
            state: HealthState::Unknown,
            reasons: vec![format!(
                "its quarantine record is malformed ({why}); fleet leaves it alone: remove it with `fleet gpus --release {}`",
                record.uuid
            )],
            ..read.unwrap_or_default()
        });
    }
    let reset_done = record.until_reset
        && read.as_ref().is_some_and(|h| {
            matches!(
                h.state,
                HealthState::Healthy | HealthState::Degraded | HealthState::Dirty
            )
        });
    if reset_done {
        return read;
    }
    let mut health = read.unwrap_or_default();
    let mut reasons = Vec::new();
    if health.state == HealthState::Unhealthy {
        reasons.append(&mut health.reasons);
    }
    let ends = if record.until_reset {
        "until NVML reports the reset done".to_string()
    } else {
        format!("until `fleet gpus --release {}`", record.uuid)
    };
    reasons.push(format!("quarantined ({}), {ends}", record.reason));
    Some(GpuHealth {
        state: HealthState::Unhealthy,
        reasons,
        quarantined: true,
        until_reset: record.until_reset,
        ..health
    })
}

/// This machine's GPUs through the NVML reader (off the async runtime).
async fn local_inventory() -> GpuRead {
    let answer = reader().read().await;
    let signals = answer
        .as_ref()
        .map(|r| r.signals.clone())
        .unwrap_or_default();
    let report = answer.map(|r| r.report.clone());
    match gpu::uuids_of(report) {
        Ok((uuids, lost)) => GpuRead {
            inventory: GpuInventory {
                uuids,
                source: GpuSource::Nvml,
                lost,
                ..GpuInventory::default()
            },
            signals,
        },
        Err(reason) => unavailable(reason).into(),
    }
}

fn unavailable(reason: String) -> GpuInventory {
    GpuInventory {
        uuids: vec![],
        source: GpuSource::Unavailable(reason),
        devices: vec![],
        lost: 0,
        health: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(until_reset: bool, malformed: Option<&str>) -> QuarantineRecord {
        QuarantineRecord {
            uuid: "GPU-a".into(),
            reason: "critical Xid 79".into(),
            since: Some(1),
            until_reset,
            malformed: malformed.map(str::to_string),
        }
    }

    fn read(state: HealthState) -> Option<GpuHealth> {
        Some(GpuHealth {
            state,
            ..GpuHealth::default()
        })
    }

    #[test]
    fn a_record_holds_the_gpu_unhealthy_until_released_or_reset() {
        let held =
            quarantined(read(HealthState::Healthy), Some(&record(false, None))).expect("health");
        assert_eq!(
            (held.state, held.quarantined),
            (HealthState::Unhealthy, true)
        );
        assert_eq!(
            held.reasons,
            ["quarantined (critical Xid 79), until `fleet gpus --release GPU-a`"]
        );
        // Declared GPUs have no health read, but a record still holds them.
        let declared = quarantined(None, Some(&record(false, None))).expect("health");
        assert_eq!(declared.state, HealthState::Unhealthy);
        // A reset clears a pending-only fault: the read health stands (the plan lifts it).
        let reset =
            quarantined(read(HealthState::Healthy), Some(&record(true, None))).expect("health");
        assert_eq!(
            (reset.state, reset.quarantined),
            (HealthState::Healthy, false)
        );
        // Unknown health does not lift it.
        let unknown =
            quarantined(read(HealthState::Unknown), Some(&record(true, None))).expect("health");
        assert_eq!(unknown.state, HealthState::Unhealthy);
        assert_eq!(quarantined(None, None), None);
    }

    #[test]
    fn a_malformed_record_makes_the_gpu_unknown_and_is_left_alone() {
        let health = quarantined(
            read(HealthState::Healthy),
            Some(&record(false, Some("no time"))),
        )
        .expect("health");
        assert_eq!(health.state, HealthState::Unknown);
        assert!(
            health.reasons[0].contains("malformed (no time)"),
            "{health:?}"
        );
        assert!(!health.quarantined);
    }
}
