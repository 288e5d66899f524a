//! Docker labels fleet puts on everything it creates (the runner contract's keys,
//! `contract/mod.rs`). A leaf: it uses nothing of the crate, so that the observation's data
//! types (`state.rs`) can read a label without depending on the contract.

/// The fleet that owns the container or volume.
pub const FLEET: &str = "fleet.name";
/// The pool a container or volume belongs to.
pub const POOL: &str = "fleet.pool";
/// Hash of the pool's effective runner configuration when the container was made.
pub const CONFIG_HASH: &str = "fleet.config-hash";
/// That configuration itself (canonical JSON, no secrets), for attribute-level diffs.
pub const CONFIG: &str = "fleet.config";
/// The GPU ledger: the UUIDs assigned to the container, comma-separated.
pub const GPUS: &str = "fleet.gpus";
/// On a persistent runner's state volume: the runner it belongs to.
pub const RUNNER: &str = "fleet.runner";
/// On a persistent runner's container: `register` when it was made with a registration
/// token (it configures itself when it starts), `restore` when it restores a registration.
pub const REGISTRATION: &str = "fleet.registration";
/// On the record of a runner scale set fleet made (an empty volume): the scale set's name.
/// It lets `apply` know, without reading GitHub, that there are scale sets to look after.
pub const SCALE_SET: &str = "fleet.scale-set";
/// On the quarantine record of a GPU (an empty volume on its host): the GPU's UUID.
pub const GPU_QUARANTINE: &str = "fleet.gpu-quarantine";
/// Why it was quarantined (the health reasons at the time).
pub const GPU_QUARANTINE_REASON: &str = "fleet.gpu-quarantine.reason";
/// When, seconds since the epoch.
pub const GPU_QUARANTINE_SINCE: &str = "fleet.gpu-quarantine.since";
/// `true` when the quarantine ends by itself once NVML reports the reset done (pages
/// pending retirement, rows pending remapping); `false`: the operator releases it.
pub const GPU_QUARANTINE_UNTIL_RESET: &str = "fleet.gpu-quarantine.until-reset";
/// On a runner container: how many of its pool's runners in a row had exited without
/// taking a job when it was made (absent: none). Not part of the configuration hash
/// (src/plan/crashloop.rs).
pub const START_FAILURES: &str = "fleet.start-failures";
