//! What the observers saw: plain data, the planner's only view of the world.
//!
//! Every list is sorted by the observers, so that the same world gives the same value (and the
//! same fingerprint, which a saved plan uses to notice that the world changed).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::labels;

impl Observed {
    /// The scale sets fleet's Docker records (on the observed hosts) say fleet made.
    pub fn recorded_scale_sets(&self) -> Vec<&str> {
        self.hosts
            .values()
            .flat_map(|h| &h.volumes)
            .filter(|v| v.owned)
            .filter_map(|v| v.scale_set.as_deref())
            .collect()
    }
}

/// Everything observed, per host and on GitHub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub hosts: BTreeMap<String, HostState>,
    pub github: GithubState,
    /// Hosts of the spec that were not observed: left out with `--exclude-host`, or, under
    /// `fleet watch`, not answering. The planner leaves what may live there alone
    /// (docs/hosts.md, "A host that goes away").
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unobserved: BTreeSet<String>,
    /// Jobs assigned to each autoscaled pool's scale set, as `fleet watch`'s listeners know
    /// them; a pool that is not here has no known demand (`plan` and `apply` from cron), and
    /// its runners are kept between `min_idle` and `max`. Decided at run time: not part of
    /// the fingerprint a saved plan is checked against.
    #[serde(skip)]
    pub demand: BTreeMap<String, PoolLoad>,
    /// When the observation was made, seconds since the epoch (`None`: not known). The
    /// planner has no clock: a pool's backoff after runners that could not start is timed
    /// with this (src/plan/crashloop.rs). Not part of the fingerprint.
    #[serde(skip)]
    pub now: Option<i64>,
}

/// The jobs of an autoscaled pool's scale set, as its listener knows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLoad {
    /// Jobs assigned to the scale set, waiting for a runner or running.
    pub assigned: u32,
    /// Jobs queued for it that GitHub has not assigned (it assigns no more than the capacity
    /// fleet advertises).
    pub queued: u32,
}

/// One Docker host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// Containers labelled `fleet.name=<this fleet>`, sorted by name.
    pub containers: Vec<ContainerState>,
    /// Volumes the spec names or fleet owns, sorted by name.
    pub volumes: Vec<VolumeState>,
    /// Each pool image of this host, and whether the engine has it.
    pub images: BTreeMap<String, bool>,
    pub gpus: GpuInventory,
    pub engine: EngineInfo,
    /// Each user network the pools of this host name, and whether the engine has it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, bool>,
    /// Each bind-mount source of the pools of this host, and whether it exists; read only for
    /// an engine on this machine (a Unix socket), whose files fleet can see.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bind_sources: BTreeMap<String, bool>,
    /// The runner version each pool image present on the host says it carries (its
    /// `org.opencontainers.image.version` label). Only a warning depends on it: not part of
    /// the fingerprint.
    #[serde(skip)]
    pub image_versions: BTreeMap<String, String>,
}

/// A container as Docker reports it. Its serialized form is what the observation's fingerprint
/// hashes (saved plans, seeded names): the labels are left out of it, since Docker fixes them
/// when the container is made and its id stands for them (hashing their JSON-in-JSON was most
/// of `plan()`'s time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing)]
    pub labels: BTreeMap<String, String>,
    pub status: ContainerStatus,
    pub exit_code: Option<i64>,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// When an exited container exited, seconds since the epoch (read for exited containers
    /// only). Left out of the fingerprint, as the labels.
    #[serde(default, skip_serializing)]
    pub finished: Option<i64>,
}

impl ContainerState {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The GPU UUIDs recorded in the container's ledger label.
    pub fn gpus(&self) -> Vec<String> {
        self.label(labels::GPUS)
            .map(|s| {
                s.split(',')
                    .filter(|u| !u.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Docker's container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl ContainerStatus {
    /// Whether the container is done: its runner will never take a job again.
    pub fn is_finished(self) -> bool {
        matches!(self, ContainerStatus::Exited | ContainerStatus::Dead)
    }
}

/// A Docker volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    pub name: String,
    /// Whether fleet created it (it carries `fleet.name=<this fleet>`).
    pub owned: bool,
    /// For an owned volume: the pool it was made for (`fleet.pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// For a persistent runner's state volume: its runner (`fleet.runner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// For the record of a runner scale set fleet made: its name (`fleet.scale-set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_set: Option<String>,
    /// For the quarantine record of a GPU (`fleet.gpu-quarantine`): what it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<QuarantineRecord>,
}

/// A GPU's quarantine, as its record on the host says (docs/gpu-health.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub uuid: String,
    pub reason: String,
    /// Seconds since the epoch; `None` when the record does not say (a malformed record).
    pub since: Option<i64>,
    /// It ends once NVML reports the reset done (pending retirement or remapping).
    pub until_reset: bool,
    /// What is wrong with the record, if anything: the GPU is then unknown, and the record is
    /// left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub malformed: Option<String>,
}

/// Where a host's GPU list came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInventory {
    /// GPU UUIDs, in the order NVML, the engine or the spec gives them.
    pub uuids: Vec<String>,
    pub source: GpuSource,
    /// What the engine said of each GPU, when the inventory came from the GPU probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<GpuInfo>,
    /// GPUs NVML reports lost (`NVML_ERROR_GPU_IS_LOST`): left out of `uuids`, since a lost
    /// GPU cannot even tell its UUID.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u32,
    /// Each GPU's health, by UUID, where it was read (NVML here, the GPU probe on a remote
    /// engine; docs/gpu-health.md). A GPU of the inventory that is not here was not read
    /// (declared UUIDs): placed as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health: BTreeMap<String, GpuHealth>,
}

/// A GPU's health and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuHealth {
    pub state: HealthState,
    /// Why, in words, one per signal (empty when healthy). Left out of the observation's
    /// fingerprint, like container labels: the driver's numbers (memory in use, degrees)
    /// change at every look, while a saved plan should be refused only when a state changes.
    #[serde(default, skip_serializing)]
    pub reasons: Vec<String>,
    /// Application Xids seen on the GPU (faults of the job that held it, not of the GPU).
    #[serde(default, skip_serializing)]
    pub application_xids: Vec<u64>,
    /// Unhealthy only until a reset: every fault is memory pending retirement or remapping.
    #[serde(default, skip_serializing)]
    pub until_reset: bool,
    /// A quarantine record on the host holds the GPU.
    #[serde(default)]
    pub quarantined: bool,
    /// How long the GPU has been dirty, as far as this process saw (`fleet watch`: since it
    /// first saw it dirty; a one-shot command: 0). Compared with `gpu_health.dirty_grace`.
    #[serde(default, skip_serializing)]
    pub dirty_seconds: Option<u64>,
    /// On a GPU a running runner holds: what it holds that an idle runner should not
    /// (processes of its own container, device memory above `gpu_health.dirty_memory`).
    #[serde(default, skip_serializing)]
    pub leftovers: Vec<String>,
    /// The leftovers were first seen in this observation (the planner acts on them once).
    #[serde(default, skip_serializing)]
    pub leftovers_new: bool,
}

/// How fit a GPU is for the next runner (docs/gpu-health.md).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    #[default]
    Healthy,
    /// Placement allowed, with a warning: throttling, heat, correctable ECC errors rising.
    Degraded,
    /// Transient: processes or memory left on a GPU that no runner holds.
    Dirty,
    /// Its health could not be read: never taken for healthy, so no new runner gets it.
    Unknown,
    /// A hardware fault: no runner gets it until it is reset or released.
    Unhealthy,
    /// Taken out of service in the spec (`hosts.NAME.gpus_disabled`); set by the planner,
    /// never observed.
    Disabled,
}

impl HealthState {
    /// Whether a new runner may get a GPU in this state.
    pub fn placeable(self) -> bool {
        matches!(self, HealthState::Healthy | HealthState::Degraded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Dirty => "dirty",
            HealthState::Unknown => "unknown",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Disabled => "disabled",
        }
    }

    /// Whether a runner that holds a GPU in this state must leave it (idle: replaced onto
    /// another GPU; busy: after its job). Unknown and dirty are not: nothing is removed on a
    /// GPU whose health cannot be read, and a GPU a runner holds is never dirty.
    pub fn evicts(self) -> bool {
        matches!(self, HealthState::Unhealthy | HealthState::Disabled)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One GPU as `nvidia-smi` on its host describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuSource {
    /// The spec says `gpus: none`.
    #[default]
    None,
    /// The spec lists the UUIDs.
    Declared,
    /// NVML on this machine.
    Nvml,
    /// The host's engine, through a one-shot container running the host's `nvidia-smi`.
    Probe,
    /// `gpus: auto`, but NVML could not be used; the reason.
    Unavailable(String),
}

/// What the engine offers for GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine has an `nvidia` runtime.
    pub nvidia_runtime: bool,
    /// CDI device names the engine discovered (`nvidia.com/gpu=...`).
    pub cdi_devices: Vec<String>,
}

/// GitHub's view of the runners of the repository or organization.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GithubState {
    /// Every runner registered at the scope, sorted by id; the planner decides what is owned.
    pub runners: Vec<GithubRunner>,
    /// Runner groups by name (organization scope only).
    pub groups: BTreeMap<String, u64>,
    /// The runner scale sets of the spec's autoscaled pools and those fleet owns, when they
    /// were read. Reading them needs a registration token, which `plan` never asks for: then
    /// `None`, and scale sets are compared with GitHub when `apply` runs. Not part of the
    /// fingerprint a saved plan is checked against, for the same reason.
    #[serde(skip)]
    pub scale_sets: Option<Vec<ScaleSetState>>,
    /// Why the scale sets could not be read (the scale set service failed: registration
    /// exchange, admin token, list). Autoscaled pools are then left as they are, and the other
    /// pools converge (docs/autoscale.md, "Failure modes").
    #[serde(skip)]
    pub scale_set_error: Option<String>,
    /// The runner version GitHub offers for download (`GET .../actions/runners/downloads`),
    /// when it was read. Only a warning depends on it: not part of the fingerprint.
    #[serde(skip)]
    pub runner_version: Option<String>,
}

/// A runner scale set as the Actions service describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleSetState {
    pub id: u64,
    pub name: String,
    pub runner_group_id: u64,
    pub runner_group: String,
    /// Its labels, its name first.
    pub labels: Vec<String>,
    /// Its runners are told not to update themselves (`RunnerSetting.disableUpdate`).
    pub disable_update: bool,
}

/// One runner registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GithubRunner {
    pub id: u64,
    pub name: String,
    pub online: bool,
    pub busy: bool,
    pub labels: Vec<String>,
    /// The runner group it is in (GitHub reports it at organization scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_group_id: Option<u64>,
}

/// One process holding a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// Device memory it uses; `None` when the driver cannot tell.
    pub used_memory_bytes: Option<u64>,
    /// Who it belongs to, from the host's process table (`observe/holder.rs`); `None` where
    /// that is not read (a remote host).
    pub holder: Option<ProcessHolder>,
}

/// Where a process that holds a GPU lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProcessHolder {
    /// A container (its full id); `name` when it is a container fleet observed.
    Container { id: String, name: Option<String> },
    /// A process of the host, in no container.
    Host,
    /// Not in this machine's process table (another PID namespace, or it has ended).
    Unseen,
}

impl ProcessHolder {
    /// The words the dirty reason gives.
    pub fn describe(&self) -> String {
        match self {
            ProcessHolder::Container {
                id,
                name: Some(name),
            } => {
                format!("in container `{name}` ({})", short(id))
            }
            ProcessHolder::Container { id, name: None } => format!(
                "in container {} (not fleet's: `docker ps --filter id={}`)",
                short(id),
                short(id)
            ),
            ProcessHolder::Host => "a host process".to_string(),
            ProcessHolder::Unseen => "not in this machine's process table".to_string(),
        }
    }

    pub fn container_id(&self) -> Option<&str> {
        match self {
            ProcessHolder::Container { id, .. } => Some(id),
            _ => None,
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// What one look at a GPU found. `None`: the driver does not have the counter (a GPU without
/// ECC, an older driver), which is no fault. A read that failed otherwise is in `unreadable`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GpuSignals {
    pub uuid: String,
    pub memory_used_bytes: Option<u64>,
    pub temperature_celsius: Option<u32>,
    /// Active clock slowdowns that point at the hardware: `hw_slowdown`, `hw_thermal_slowdown`,
    /// `hw_power_brake_slowdown`, `sw_thermal_slowdown`.
    pub throttle: Vec<&'static str>,
    pub ecc_uncorrected_volatile: Option<u64>,
    pub ecc_corrected_volatile: Option<u64>,
    /// Whether the correctable count grew since the last look (the reader remembers it).
    pub ecc_corrected_rising: bool,
    pub retired_pages_pending: Option<bool>,
    pub remapped_rows_pending: Option<bool>,
    pub remapped_rows_failure: Option<bool>,
    /// Compute processes on the GPU; `None` when not listed (the probe sees only memory).
    pub processes: Option<Vec<GpuProcess>>,
    /// Every Xid the driver reported for the GPU since fleet started watching it; those not
    /// in `gpu_health.application_xids` are critical.
    pub xids: Vec<u64>,
    /// The Xids that arrived since the previous look (application ones are reported once).
    pub fresh_xids: Vec<u64>,
    /// An uncorrectable (double-bit) ECC error event arrived.
    pub ecc_error_event: bool,
    /// Signals that could not be read, each with the driver's words.
    pub unreadable: Vec<String>,
}

/// The throttle reason names fleet treats as a sign of the hardware, in NVML's bit order.
pub const THROTTLE_REASONS: [(u64, &str); 4] = [
    (0x8, "hw_slowdown"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
];

/// The throttle reason names set in NVML's bit mask.
pub fn throttle_names(bits: u64) -> Vec<&'static str> {
    THROTTLE_REASONS
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}
