//! The plan as data: typed changes with typed reasons, and the changes that wait for busy
//! runners as their own list. `document.rs` turns it into the JSON plan (format_version "1").

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a change does, as the JSON plan names it (`action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    CreateVolume,
    Destroy,
    Replace,
    Create,
    Defer,
    Deregister,
    /// Volumes that `fleet destroy --volumes` removes, and state volumes no runner needs.
    DestroyVolume,
    /// A persistent runner's registration gets its labels or runner group set on GitHub.
    UpdateRegistration,
    /// An autoscaled pool's runner scale set is registered on GitHub.
    CreateScaleSet,
    /// A scale set's labels or runner group are set to the pool's.
    UpdateScaleSet,
    /// A scale set fleet made is removed (its pool left the spec or stopped autoscaling).
    DeleteScaleSet,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateVolume => "create-volume",
            Action::Destroy => "destroy",
            Action::Replace => "replace",
            Action::Create => "create",
            Action::Defer => "defer",
            Action::Deregister => "deregister",
            Action::DestroyVolume => "destroy-volume",
            Action::UpdateRegistration => "update-registration",
            Action::CreateScaleSet => "create-scale-set",
            Action::UpdateScaleSet => "update-scale-set",
            Action::DeleteScaleSet => "delete-scale-set",
        }
    }
}

/// One attribute that differs between a container and its pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeChange {
    pub attribute: String,
    /// `None` when the old container's configuration could not be read.
    pub before: Option<String>,
    pub after: String,
}

/// Why a change is in the plan. `Display` is the sentence the plan prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The pool has fewer runners than it wants.
    PoolShort { kept: usize, wanted: u32 },
    /// The pool has more runners than it wants.
    PoolOver { total: usize, wanted: usize },
    /// The container's configuration differs from its pool's (the attributes that differ).
    ConfigChanged { attributes: Vec<String> },
    /// An apply stopped between creating and starting the container.
    NeverStarted,
    /// The container exited (`None`: it is dead).
    Exited { code: Option<i64> },
    /// An ephemeral runner's container still runs, but its registration is gone: its job is
    /// done (or it was removed on GitHub), and it is leaving.
    Unregistered,
    /// A GPU the runner holds left its host's inventory.
    /// `lost`: NVML reports a GPU of the host lost (fallen off the bus), which is why it left.
    GpuGone {
        uuid: String,
        host: String,
        lost: bool,
    },
    /// A GPU the runner holds may run no more jobs: unhealthy, or disabled in the spec
    /// (`why` says which, with the driver's reasons).
    GpuUnfit {
        uuid: String,
        host: String,
        why: String,
    },
    /// An idle runner's GPU still holds what a job left (processes of the runner's own
    /// container, or device memory): its container is made again in place, under the same
    /// name, on the same state volume, registration and GPU.
    GpuLeftovers {
        uuid: String,
        host: String,
        what: String,
    },
    /// A GPU turned unhealthy: it is quarantined on its host until released (or reset).
    GpuQuarantine { uuid: String, why: String },
    /// A quarantined GPU whose fault a reset clears reads healthy again.
    GpuResetDone { uuid: String },
    /// The runner holds another number of GPUs than its pool gives.
    GpuCount { held: usize, wanted: usize },
    /// Another runner that stays holds the same GPU.
    GpuShared { uuid: String, other: String },
    /// The container's pool left the spec.
    PoolRemoved { pool: String },
    /// The container's pool runs on another host now.
    PoolMoved { pool: String, host: String },
    /// A volume a pool mounts does not exist yet.
    MountedBy { pool: String, target: String },
    /// An owned registration that no container runs, offline and idle.
    OrphanRegistration,
    /// A persistent runner the pool wants has no container: it is made again on its state
    /// volume, and keeps its registration.
    ContainerMissing,
    /// A persistent runner's registration is gone from GitHub (removed by hand, or after 14
    /// days offline): it registers again on its state volume.
    RegistrationGone,
    /// A persistent runner's state volume is gone: it registers again under the same name.
    StateLost,
    /// A state volume whose runner no pool wants any more.
    StateUnused { runner: String },
    /// A persistent registration's labels or runner group differ from the pool's.
    RegistrationDrift { attributes: Vec<String> },
    /// An autoscaled pool has no scale set on GitHub yet.
    ScaleSetMissing { pool: String },
    /// A scale set's labels or runner group differ from its pool's.
    ScaleSetDrift { attributes: Vec<String> },
    /// A scale set fleet made whose pool no longer autoscales.
    ScaleSetUnused,
    /// `fleet destroy` removes it.
    FleetDestroy,
    /// `fleet destroy --volumes` removes it.
    FleetDestroyVolumes,
    /// The runner is busy: `then` happens after its job.
    Busy { then: Action },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::PoolShort { kept, wanted } => write!(f, "pool has {kept} of {wanted} runners"),
            Reason::PoolOver { total, wanted } => {
                write!(f, "pool has {total} runners, {wanted} wanted")
            }
            Reason::ConfigChanged { attributes } if attributes.is_empty() => {
                f.write_str("configuration changed")
            }
            Reason::ConfigChanged { attributes } => {
                write!(f, "configuration changed: {}", attributes.join(", "))
            }
            Reason::NeverStarted => f.write_str("container was created but never started"),
            Reason::Exited { code: Some(code) } => {
                write!(f, "container exited with code {code}")?;
                match crate::contract::container::exit_meaning(*code) {
                    Some(meaning) => write!(f, " ({meaning})"),
                    None => Ok(()),
                }
            }
            Reason::Exited { code: None } => f.write_str("container is dead"),
            Reason::Unregistered => f.write_str(
                "its registration is gone (the runner finished its job, or was removed on GitHub)",
            ),
            Reason::GpuGone {
                uuid,
                host,
                lost: false,
            } => write!(f, "GPU {uuid} is no longer in host `{host}`'s inventory"),
            Reason::GpuGone { uuid, host, .. } => write!(
                f,
                "GPU {uuid} is lost: no longer in host `{host}`'s inventory, and NVML reports a GPU there fallen off the bus"
            ),
            Reason::GpuUnfit { uuid, host, why } => {
                write!(f, "GPU {uuid} on host `{host}` is {why}")
            }
            Reason::GpuLeftovers { uuid, host, what } => write!(
                f,
                "GPU {uuid} on host `{host}` still holds {what} while its runner is idle: the container is made again in place (same name, state volume, registration and GPU)"
            ),
            Reason::GpuQuarantine { uuid, why } => {
                write!(f, "quarantine GPU {uuid}: {why}")
            }
            Reason::GpuResetDone { uuid } => write!(
                f,
                "GPU {uuid} was reset: NVML no longer reports memory pending retirement or remapping"
            ),
            Reason::GpuCount { held, wanted } => {
                write!(f, "holds {held} GPUs, the pool gives {wanted}")
            }
            Reason::GpuShared { uuid, other } => {
                write!(f, "GPU {uuid} is also held by runner `{other}`")
            }
            Reason::PoolRemoved { pool } => write!(f, "pool `{pool}` is no longer in the spec"),
            Reason::PoolMoved { pool, host } => {
                write!(f, "pool `{pool}` now runs on host `{host}`")
            }
            Reason::MountedBy { pool, target } => write!(f, "pool `{pool}` mounts it at {target}"),
            Reason::OrphanRegistration => {
                f.write_str("registered on GitHub, offline, and no container runs it")
            }
            Reason::ContainerMissing => {
                f.write_str("container missing; registration and state kept")
            }
            Reason::RegistrationGone => f.write_str(
                "re-register: the registration is gone from GitHub; the state volume is kept",
            ),
            Reason::StateLost => f.write_str(
                "re-register: the state volume is gone; the registration is replaced under the same name",
            ),
            Reason::StateUnused { runner } => {
                write!(f, "state volume of runner `{runner}`, which no pool wants any more")
            }
            Reason::RegistrationDrift { attributes } => {
                write!(f, "the registration's {} differ from the pool's", attributes.join(" and "))
            }
            Reason::ScaleSetMissing { pool } => {
                write!(f, "pool `{pool}` autoscales and GitHub has no scale set of that name")
            }
            Reason::ScaleSetDrift { attributes } => {
                write!(f, "the scale set's {} differ from the pool's", attributes.join(" and "))
            }
            Reason::ScaleSetUnused => {
                f.write_str("no pool of the spec autoscales with this scale set any more")
            }
            Reason::FleetDestroy => f.write_str("fleet destroy"),
            Reason::FleetDestroyVolumes => f.write_str("fleet destroy --volumes"),
            Reason::Busy {
                then: Action::Destroy,
            } => f.write_str("the runner is busy: removed after its job"),
            Reason::Busy { .. } => f.write_str("the runner is busy: replaced after its job"),
        }
    }
}

/// What happens to a runner (its container, and its registration where it goes too).
#[derive(Debug, Clone, PartialEq)]
pub enum RunnerOp {
    Create,
    /// The container is removed and made anew; an ephemeral runner gets a new name.
    Replace {
        replacement: Option<String>,
        diff: Vec<AttributeChange>,
    },
    /// Registration first, then the container (and a persistent runner's state volume).
    Destroy,
}

/// A change to one runner.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerChange {
    pub op: RunnerOp,
    pub pool: String,
    pub host: String,
    /// The runner (= container) name.
    pub name: String,
    pub reasons: Vec<Reason>,
    /// GPU UUIDs the new runner gets (create, replace), or holds (destroy, deferred).
    pub gpus: Vec<String>,
    pub container_id: Option<String>,
    pub runner_id: Option<u64>,
    /// A persistent runner's state volume: used (create, replace) or removed with it (destroy).
    pub state_volume: Option<String>,
    /// A destroy that leaves the registration: the pool still wants this persistent runner,
    /// on another host, where it registers again under the same name.
    pub registration_kept: bool,
    /// For the runner it makes (create, replace of an ephemeral runner): its pool's runners
    /// in a row that exited without taking a job, written in its `fleet.start-failures` label.
    pub start_failures: u32,
}

impl RunnerChange {
    /// A change with no GPUs and no ids: the fields that apply are set after.
    pub fn new(op: RunnerOp, pool: &str, host: &str, name: &str, reasons: Vec<Reason>) -> Self {
        RunnerChange {
            op,
            pool: pool.to_string(),
            host: host.to_string(),
            name: name.to_string(),
            reasons,
            gpus: vec![],
            container_id: None,
            runner_id: None,
            state_volume: None,
            registration_kept: false,
            start_failures: 0,
        }
    }

    pub fn action(&self) -> Action {
        match self.op {
            RunnerOp::Create => Action::Create,
            RunnerOp::Replace { .. } => Action::Replace,
            RunnerOp::Destroy => Action::Destroy,
        }
    }
}

/// Whether a volume is made or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeOp {
    Create,
    Destroy,
}

/// A change to one named volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeChange {
    pub op: VolumeOp,
    pub host: String,
    pub name: String,
    /// The pool it is made for; `None` for volumes `fleet destroy --volumes` removes.
    pub pool: Option<String>,
    pub reasons: Vec<Reason>,
    /// For the quarantine record of a GPU: what it records (its time is the apply's).
    pub quarantine: Option<crate::observe::state::QuarantineRecord>,
}

/// What happens to a registration.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrationOp {
    /// Removed: no container runs it, and no pool wants it.
    Remove,
    /// A persistent runner's labels or runner group set on GitHub; nothing is recreated.
    Update {
        /// The custom labels it gets (GitHub's own labels stay).
        labels: Option<Vec<String>>,
        /// The runner group it moves to (organization scope).
        group: Option<u64>,
        diff: Vec<AttributeChange>,
    },
}

/// A change to a GitHub registration alone.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationChange {
    pub op: RegistrationOp,
    pub runner_id: u64,
    pub name: String,
    /// The pool its name belongs to, when it still is in the spec.
    pub pool: Option<String>,
    /// The host of its runner, when it has one.
    pub host: Option<String>,
    pub reasons: Vec<Reason>,
}

/// What happens to a runner scale set.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleSetOp {
    Create,
    Update {
        diff: Vec<AttributeChange>,
    },
    /// Runners of the scale set that still run a job keep it from being removed: the step is
    /// then deferred by GitHub's answer, and done on a later apply.
    Delete,
}

/// A change to an autoscaled pool's runner scale set.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSetChange {
    pub op: ScaleSetOp,
    /// The pool it is for; `None` for one to delete whose pool is gone.
    pub pool: Option<String>,
    pub name: String,
    /// Its id on GitHub, when it exists.
    pub id: Option<u64>,
    /// The labels it gets (create, update), its name first.
    pub labels: Vec<String>,
    /// The runner group it belongs in (`None`: the default group).
    pub runner_group: Option<String>,
    /// The (host, volume) that records it: made with it, removed with it.
    pub record: Option<(String, String)>,
    pub reasons: Vec<Reason>,
}

/// One change apply makes now.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Runner(RunnerChange),
    Volume(VolumeChange),
    Registration(RegistrationChange),
    ScaleSet(ScaleSetChange),
}

impl Change {
    pub fn action(&self) -> Action {
        match self {
            Change::Runner(r) => r.action(),
            Change::Volume(v) if v.op == VolumeOp::Create => Action::CreateVolume,
            Change::Volume(_) => Action::DestroyVolume,
            Change::Registration(r) if r.op == RegistrationOp::Remove => Action::Deregister,
            Change::Registration(_) => Action::UpdateRegistration,
            Change::ScaleSet(s) => match s.op {
                ScaleSetOp::Create => Action::CreateScaleSet,
                ScaleSetOp::Update { .. } => Action::UpdateScaleSet,
                ScaleSetOp::Delete => Action::DeleteScaleSet,
            },
        }
    }

    /// The runner, volume or registration the change is about.
    pub fn name(&self) -> &str {
        match self {
            Change::Runner(r) => &r.name,
            Change::Volume(v) => &v.name,
            Change::Registration(r) => &r.name,
            Change::ScaleSet(s) => &s.name,
        }
    }

    /// The pool, or `""` when there is none.
    pub fn pool(&self) -> &str {
        match self {
            Change::Runner(r) => &r.pool,
            Change::Volume(v) => v.pool.as_deref().unwrap_or_default(),
            Change::Registration(r) => r.pool.as_deref().unwrap_or_default(),
            Change::ScaleSet(s) => s.pool.as_deref().unwrap_or_default(),
        }
    }
}

/// A change held back because its runner is busy: it happens after the job. `change` is a
/// replace or a destroy.
#[derive(Debug, Clone, PartialEq)]
pub struct Deferral {
    pub change: RunnerChange,
}

impl Deferral {
    /// Why it waits: the runner is busy, and what happens after its job.
    pub fn busy(&self) -> Reason {
        Reason::Busy {
            then: self.change.action(),
        }
    }
}

/// How many changes of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub replace: usize,
    pub destroy: usize,
    pub deregister: usize,
    pub volumes: usize,
    #[serde(default)]
    pub defer: usize,
    /// Volumes removed: by `fleet destroy --volumes`, or state volumes no runner needs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub destroy_volumes: usize,
    /// Registrations whose labels or runner group are set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub update: usize,
    /// Runner scale sets created, updated or deleted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scale_sets: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Why jobs of an autoscaled pool wait for a runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    /// Its hosts have no free GPU for another runner.
    NoFreeGpu,
    /// It has `max` runners.
    AtMax,
    /// The pool has room (runners below `max`, GPUs free): the job is available and being
    /// acquired or assigned, or its runner is starting. Not a reason to act.
    Acquiring,
}

impl Waiting {
    /// Every reason, in the order metrics export them.
    pub const ALL: [Waiting; 3] = [Waiting::NoFreeGpu, Waiting::AtMax, Waiting::Acquiring];

    pub fn as_str(self) -> &'static str {
        match self {
            Waiting::NoFreeGpu => "no_free_gpu",
            Waiting::AtMax => "at_max",
            Waiting::Acquiring => "acquiring",
        }
    }
}

/// An autoscaled pool as this plan leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscalePool {
    pub pool: String,
    pub scale_set: String,
    pub min_idle: u32,
    pub max: u32,
    /// Jobs assigned to its scale set (`None`: not known, outside `fleet watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<u32>,
    /// Runners it wants: `min(max, min_idle + assigned)`, or its current count kept between
    /// `min_idle` and `max` when demand is not known.
    pub wanted: u32,
    /// Runners it has once the plan is applied (capped by free GPUs).
    pub runners: u32,
    /// More runners its hosts' free GPUs could take after this plan (`None`: no GPUs asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_slots: Option<u32>,
    /// Jobs that wait for a runner, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<(u32, Waiting)>,
}

impl AutoscalePool {
    /// `X-ScaleSetMaxCapacity`: the most jobs GitHub may assign to the scale set at once, so
    /// that it never assigns more than fleet can start.
    pub fn capacity(&self) -> u32 {
        match self.free_slots {
            Some(free) => self.max.min(self.runners.saturating_add(free)),
            None => self.max,
        }
    }
}

/// A plan: what `apply` would do, as data that can be printed, saved and compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub fleet: String,
    /// What apply does now.
    pub changes: Vec<Change>,
    /// What waits for busy runners.
    pub deferred: Vec<Deferral>,
    pub warnings: Vec<String>,
    /// What each autoscaled pool wants now, and what holds it back.
    pub autoscale: Vec<AutoscalePool>,
    /// Pools that make no runner now because their runners exit without taking a job.
    pub backoff: Vec<super::crashloop::PoolBackoff>,
    /// SHA-256 of the spec the plan was made from.
    pub spec_hash: String,
    /// SHA-256 of everything observed; a saved plan is stale once this changes.
    pub observed_fingerprint: String,
}

impl Plan {
    /// No change to make (deferred changes wait on busy runners: they are not "nothing").
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.deferred.is_empty()
    }

    /// Changes and deferrals together.
    pub fn len(&self) -> usize {
        self.changes.len() + self.deferred.len()
    }

    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            defer: self.deferred.len(),
            ..Summary::default()
        };
        for change in &self.changes {
            match change.action() {
                Action::Create => summary.create += 1,
                Action::Replace => summary.replace += 1,
                Action::Destroy => summary.destroy += 1,
                Action::Deregister => summary.deregister += 1,
                Action::CreateVolume => summary.volumes += 1,
                Action::DestroyVolume => summary.destroy_volumes += 1,
                Action::UpdateRegistration => summary.update += 1,
                Action::CreateScaleSet | Action::UpdateScaleSet | Action::DeleteScaleSet => {
                    summary.scale_sets += 1
                }
                Action::Defer => summary.defer += 1,
            }
        }
        summary
    }
}
