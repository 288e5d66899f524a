//! A host's GPU inventory: declared in the spec, or read through NVML on this machine.
//!
//! NVML (`libnvidia-ml.so`) is loaded at run time, so fleet builds and runs where there is
//! none; `gpus: auto` then yields an empty inventory with the loader's reason.

use super::state::{GpuInventory, GpuSource};
use crate::spec::HostGpus;

/// The inventory of a host. `local` says whether the host's Docker engine runs on this machine
/// (only then can NVML here speak for it).
pub fn inventory(host_name: &str, gpus: &HostGpus, local: bool) -> GpuInventory {
    match gpus {
        HostGpus::None => GpuInventory {
            uuids: vec![],
            source: GpuSource::None,
        },
        HostGpus::Declared(uuids) => GpuInventory {
            uuids: uuids.clone(),
            source: GpuSource::Declared,
        },
        HostGpus::Auto if !local => GpuInventory {
            uuids: vec![],
            source: GpuSource::Unavailable(format!(
                "`gpus: auto` reads NVML on this machine, and host `{host_name}` is a remote engine"
            )),
        },
        HostGpus::Auto => match nvml_uuids() {
            Ok(uuids) => GpuInventory {
                uuids,
                source: GpuSource::Nvml,
            },
            Err(reason) => GpuInventory {
                uuids: vec![],
                source: GpuSource::Unavailable(reason),
            },
        },
    }
}

/// UUIDs of this machine's GPUs, in NVML's index order.
pub fn nvml_uuids() -> Result<Vec<String>, String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("NVML is not available: {e}"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML cannot count devices: {e}"))?;
    (0..count)
        .map(|i| {
            nvml.device_by_index(i)
                .and_then(|d| d.uuid())
                .map_err(|e| format!("NVML cannot read GPU {i}: {e}"))
        })
        .collect()
}
