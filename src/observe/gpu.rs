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

/// One GPU as NVML reports it (`fleet gpus`, `fleet status`, metrics).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// GPU utilization in percent over the last sample period; `None` when NVML cannot tell.
    pub utilization_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    /// Compute and graphics processes running on it.
    pub processes: Option<u32>,
}

/// Why NVML gave no device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlProblem {
    /// No NVIDIA library on this machine: no NVIDIA GPUs, and nothing wrong.
    Absent(String),
    /// The library is there but fails: a driver or permission problem worth an error.
    Failed(String),
}

/// This machine's GPUs with their current use, through NVML (loaded at run time).
pub fn nvml_devices() -> Result<Vec<GpuDevice>, NvmlProblem> {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    use nvml_wrapper::error::NvmlError;

    let nvml = nvml_wrapper::Nvml::init().map_err(|e| match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound | NvmlError::FailedToLoadSymbol(_) => {
            NvmlProblem::Absent(format!("the NVIDIA management library (libnvidia-ml.so.1) cannot be loaded: {e}"))
        }
        NvmlError::DriverNotLoaded => NvmlProblem::Failed(
            "NVML is installed but the NVIDIA driver is not loaded (is the kernel module in? `lsmod | grep nvidia`)".into(),
        ),
        NvmlError::NoPermission => NvmlProblem::Failed(
            "NVML refused access: no permission to the NVIDIA devices (/dev/nvidia*)".into(),
        ),
        other => NvmlProblem::Failed(format!("NVML failed to start: {other}")),
    })?;
    let count = nvml
        .device_count()
        .map_err(|e| NvmlProblem::Failed(format!("NVML cannot count the GPUs: {e}")))?;
    let mut devices = Vec::new();
    for i in 0..count {
        let device = nvml
            .device_by_index(i)
            .map_err(|e| NvmlProblem::Failed(format!("NVML cannot open GPU {i}: {e}")))?;
        let uuid = device.uuid().map_err(|e| {
            NvmlProblem::Failed(format!("NVML cannot read the UUID of GPU {i}: {e}"))
        })?;
        let memory = device.memory_info().ok();
        let processes = match (
            device.running_compute_processes_count(),
            device.running_graphics_processes_count(),
        ) {
            (Ok(c), Ok(g)) => Some(c + g),
            (Ok(c), Err(_)) => Some(c),
            _ => None,
        };
        devices.push(GpuDevice {
            index: device.index().unwrap_or(i),
            uuid,
            name: device.name().unwrap_or_else(|_| "unknown".into()),
            memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
            memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
            utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
            temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
            processes,
        });
    }
    Ok(devices)
}
