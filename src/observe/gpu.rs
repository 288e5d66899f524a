//! A host's GPU inventory: declared in the spec, or read through NVML on this machine (a remote
//! engine's is read by the GPU probe, `inventory.rs`).
//!
//! NVML (`libnvidia-ml.so.1`) is loaded at run time, so fleet builds and runs where there is
//! none; `gpus: auto` then yields an empty inventory with the loader's reason. `FLEET_NVML_LIBRARY`
//! names another file to load (a driver library in an unusual place, or the tests' stand-in; see
//! `docs/gpus.md`).

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use super::health::{GpuProcess, GpuSignals, throttle_names};
use super::state::{GpuInventory, GpuSource};
use crate::spec::HostGpus;

/// The environment variable that names the NVML library to load instead of the default
/// `libnvidia-ml.so.1` (found through the dynamic loader's search path).
pub const LIBRARY_ENV: &str = "FLEET_NVML_LIBRARY";

/// The inventory of a host. `local` says whether the host's Docker engine runs on this machine
/// (only then can NVML here speak for it).
pub fn inventory(host_name: &str, gpus: &HostGpus, local: bool) -> GpuInventory {
    match gpus {
        HostGpus::None => GpuInventory {
            source: GpuSource::None,
            ..GpuInventory::default()
        },
        HostGpus::Declared(uuids) => GpuInventory {
            uuids: uuids.clone(),
            source: GpuSource::Declared,
            ..GpuInventory::default()
        },
        HostGpus::Auto if !local => GpuInventory {
            source: GpuSource::Unavailable(format!(
                "`gpus: auto` reads NVML on this machine, and host `{host_name}` is a remote engine"
            )),
            ..GpuInventory::default()
        },
        HostGpus::Auto => match nvml_uuids() {
            Ok((uuids, lost)) => GpuInventory {
                uuids,
                source: GpuSource::Nvml,
                lost,
                ..GpuInventory::default()
            },
            Err(reason) => GpuInventory {
                source: GpuSource::Unavailable(reason),
                ..GpuInventory::default()
            },
        },
    }
}

/// UUIDs of this machine's usable GPUs, in NVML's index order, and how many GPUs are lost.
pub fn nvml_uuids() -> Result<(Vec<String>, u32), String> {
    uuids_of(nvml_report())
}

/// The inventory a reading makes: its usable GPUs, in NVML's index order, and how many are lost.
///
/// A GPU that NVML reports lost (fallen off the bus) is left out, with a warning in the log:
/// it can run nothing, so the runner that holds it is replaced (its GPU is no longer in the
/// inventory). Any other failure to read a GPU fails the whole inventory: fleet does not plan on
/// a partial view.
pub fn uuids_of(report: Result<NvmlReport, NvmlProblem>) -> Result<(Vec<String>, u32), String> {
    let report = report.map_err(|problem| match problem {
        NvmlProblem::Absent(reason) => format!("NVML is not available: {reason}"),
        NvmlProblem::Failed(reason) => reason,
    })?;
    if let Some(broken) = report.unreadable.iter().find(|g| !g.lost) {
        return Err(broken.reason.clone());
    }
    for lost in &report.unreadable {
        tracing::warn!(
            "{}; it is left out of this machine's GPU inventory",
            lost.reason
        );
    }
    let lost = report.unreadable.len() as u32;
    Ok((report.devices.into_iter().map(|d| d.uuid).collect(), lost))
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

/// A GPU that NVML counts but cannot read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnreadableGpu {
    pub index: u32,
    /// NVML says the GPU is lost (`NVML_ERROR_GPU_IS_LOST`): fallen off the bus or otherwise
    /// inaccessible until the machine is reset.
    pub lost: bool,
    pub reason: String,
}

/// What NVML says of this machine's GPUs: those it can read, and those it cannot.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NvmlReport {
    pub devices: Vec<GpuDevice>,
    pub unreadable: Vec<UnreadableGpu>,
}

/// This machine's readable GPUs with their current use, through NVML (loaded at run time).
/// A GPU NVML cannot read is left out (see [`nvml_report`] for those).
pub fn nvml_devices() -> Result<Vec<GpuDevice>, NvmlProblem> {
    nvml_report().map(|report| report.devices)
}

/// Every GPU NVML counts on this machine: the readable ones with their use, and the others with
/// NVML's reason.
pub fn nvml_report() -> Result<NvmlReport, NvmlProblem> {
    report_of(&open()?)
}

/// Every GPU an open NVML counts (see [`nvml_report`]).
pub fn report_of(nvml: &Nvml) -> Result<NvmlReport, NvmlProblem> {
    let count = nvml
        .device_count()
        .map_err(|e| NvmlProblem::Failed(format!("NVML cannot count the GPUs: {e}")))?;
    let mut report = NvmlReport::default();
    for index in 0..count {
        match read_device(nvml, index) {
            Ok(device) => report.devices.push(device),
            Err(NvmlError::GpuLost) => report.unreadable.push(UnreadableGpu {
                index,
                lost: true,
                reason: format!(
                    "GPU {index} is lost: NVML says it has fallen off the bus or is otherwise inaccessible (NVML_ERROR_GPU_IS_LOST); the kernel log (`dmesg`, Xid errors) tells why, and the machine usually needs a reset"
                ),
            }),
            Err(e) => report.unreadable.push(UnreadableGpu {
                index,
                lost: false,
                reason: format!("NVML cannot read GPU {index}: {e}"),
            }),
        }
    }
    Ok(report)
}

/// Loads and initializes NVML: the library `FLEET_NVML_LIBRARY` names, else the default one.
pub fn open() -> Result<Nvml, NvmlProblem> {
    match std::env::var_os(LIBRARY_ENV).filter(|path| !path.is_empty()) {
        None => Nvml::init().map_err(|e| init_problem(e, None)),
        Some(path) => Nvml::builder()
            .lib_path(&path)
            .init()
            .map_err(|e| init_problem(e, Some(&path.to_string_lossy()))),
    }
}

/// What a failed initialization means. A library missing from its default place means no NVIDIA
/// GPUs; one the operator named that cannot be loaded is an error.
fn init_problem(error: NvmlError, named: Option<&str>) -> NvmlProblem {
    let loading = matches!(
        error,
        NvmlError::LibloadingError(_)
            | NvmlError::LibraryNotFound
            | NvmlError::FailedToLoadSymbol(_)
    );
    match (error, named) {
        (e, None) if loading => NvmlProblem::Absent(format!(
            "the NVIDIA management library (libnvidia-ml.so.1) cannot be loaded: {e}"
        )),
        (e, Some(path)) if loading => NvmlProblem::Failed(format!(
            "the NVIDIA management library that {LIBRARY_ENV} names ({path}) cannot be loaded: {e}"
        )),
        (NvmlError::DriverNotLoaded, _) => NvmlProblem::Failed(
            "NVML is installed but the NVIDIA driver is not loaded (NVML_ERROR_DRIVER_NOT_LOADED; is the kernel module in? `lsmod | grep nvidia`)".into(),
        ),
        (NvmlError::NoPermission, _) => NvmlProblem::Failed(
            "NVML refused access (NVML_ERROR_NO_PERMISSION): no permission to the NVIDIA devices (/dev/nvidia*); run fleet as a user that may open them".into(),
        ),
        (other, _) => NvmlProblem::Failed(format!("NVML failed to start: {other}")),
    }
}

/// One GPU's identity and use. Its handle and UUID must be read; the rest is best effort
/// (`None` or 0 when NVML cannot tell), except a lost GPU, which fails at its first call.
fn read_device(nvml: &Nvml, index: u32) -> Result<GpuDevice, NvmlError> {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

    let device = nvml.device_by_index(index)?;
    let uuid = device.uuid()?;
    let memory = match device.memory_info() {
        Err(NvmlError::GpuLost) => return Err(NvmlError::GpuLost),
        other => other.ok(),
    };
    let processes = match (
        device.running_compute_processes_count(),
        device.running_graphics_processes_count(),
    ) {
        (Ok(c), Ok(g)) => Some(c + g),
        (Ok(c), Err(_)) => Some(c),
        _ => None,
    };
    Ok(GpuDevice {
        index: device.index().unwrap_or(index),
        uuid,
        name: device.name().unwrap_or_else(|_| "unknown".into()),
        memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
        memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
        utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
        temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
        processes,
    })
}

/// The health signals NVML gives for one GPU (events aside: `nvml_reader.rs` adds those). A
/// counter the GPU does not have (`NotSupported`) is `None`; any other failure is recorded in
/// `unreadable`, so that the GPU is unknown, never healthy.
pub fn health_signals(device: &nvml_wrapper::Device<'_>, uuid: &str) -> GpuSignals {
    use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};

    let mut s = GpuSignals {
        uuid: uuid.to_string(),
        ..GpuSignals::default()
    };
    let mut problems = Vec::new();
    s.memory_used_bytes = optional("memory", device.memory_info(), &mut problems).map(|m| m.used);
    s.temperature_celsius = optional(
        "temperature",
        device.temperature(TemperatureSensor::Gpu),
        &mut problems,
    );
    s.ecc_uncorrected_volatile = optional(
        "uncorrected ECC errors",
        device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        &mut problems,
    );
    s.ecc_corrected_volatile = optional(
        "corrected ECC errors",
        device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
        &mut problems,
    );
    s.retired_pages_pending = optional(
        "pages pending retirement",
        device.are_pages_pending_retired(),
        &mut problems,
    );
    s.throttle = optional(
        "throttle reasons",
        device.current_throttle_reasons().map(|r| r.bits()),
        &mut problems,
    )
    .map(throttle_names)
    .unwrap_or_default();
    s.processes = optional(
        "compute processes",
        device.running_compute_processes(),
        &mut problems,
    )
    .map(|list| {
        list.into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory_bytes: match p.used_gpu_memory {
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
                    nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                },
                // NVML answers this machine's PIDs: its process table says whose they are.
                holder: Some(super::holder::holder_of(
                    p.pid,
                    std::path::Path::new("/proc"),
                )),
            })
            .collect()
    });
    let (pending, failure) = remapped_rows(device, &mut problems);
    s.remapped_rows_pending = pending;
    s.remapped_rows_failure = failure;
    s.unreadable = problems;
    s
}

/// NVML's remapped-row fields (nvml-wrapper has no call of its own for them).
fn remapped_rows(
    device: &nvml_wrapper::Device<'_>,
    problems: &mut Vec<String>,
) -> (Option<bool>, Option<bool>) {
    use nvml_wrapper::enums::device::SampleValue;
    use nvml_wrapper::structs::device::FieldId;
    use nvml_wrapper::sys_exports::field_id::{
        NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
    };

    let ids = [
        FieldId(NVML_FI_DEV_REMAPPED_PENDING),
        FieldId(NVML_FI_DEV_REMAPPED_FAILURE),
    ];
    let Some(samples) = optional("remapped rows", device.field_values_for(&ids), problems) else {
        return (None, None);
    };
    let mut values = [None, None];
    for (slot, sample) in values.iter_mut().zip(samples) {
        let value = sample.and_then(|s| s.value);
        *slot = optional("remapped rows", value, problems).and_then(|v| match v {
            SampleValue::U32(n) => Some(n != 0),
            SampleValue::U64(n) => Some(n != 0),
            SampleValue::I64(n) => Some(n != 0),
            SampleValue::F64(_) => {
                problems.push("remapped rows: NVML answered a fractional value".into());
                None
            }
        });
    }
    (values[0], values[1])
}

/// A reading that may be missing: `NotSupported` (and an old driver without the call) is no
/// fault; anything else is recorded.
fn optional<T>(what: &str, read: Result<T, NvmlError>, problems: &mut Vec<String>) -> Option<T> {
    match read {
        Ok(value) => Some(value),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => None,
        Err(e) => {
            problems.push(format!("NVML cannot read its {what}: {e}"));
            None
        }
    }
}

/// The text view of `fleet gpus`: a table of the readable GPUs, each with its health (`health`
/// in the same order; `None`: not read).
pub fn devices_table(devices: &[GpuDevice], health: &[Option<super::state::GpuHealth>]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header([
        "INDEX",
        "UUID",
        "NAME",
        "MEMORY USED / TOTAL",
        "UTIL",
        "TEMP",
        "PROCS",
        "HEALTH",
    ]);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let opt = |v: Option<u32>, unit: &str| v.map_or("-".to_string(), |v| format!("{v}{unit}"));
    for (i, d) in devices.iter().enumerate() {
        let health = match health.get(i).and_then(Option::as_ref) {
            None => "-".to_string(),
            Some(h) if h.reasons.is_empty() => h.state.as_str().to_string(),
            Some(h) => format!("{}: {}", h.state.as_str(), h.reasons.join("; ")),
        };
        table.add_row([
            d.index.to_string(),
            d.uuid.clone(),
            d.name.clone(),
            format!(
                "{:.1} / {:.1} GiB",
                gib(d.memory_used_bytes),
                gib(d.memory_total_bytes)
            ),
            opt(d.utilization_percent, "%"),
            opt(d.temperature_celsius, "°C"),
            opt(d.processes, ""),
            health,
        ]);
    }
    format!("{table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_default_library_means_no_gpus_but_a_named_one_is_an_error() {
        let absent = init_problem(NvmlError::LibraryNotFound, None);
        assert!(
            matches!(&absent, NvmlProblem::Absent(r) if r.contains("libnvidia-ml.so.1")),
            "{absent:?}"
        );
        let named = init_problem(
            NvmlError::LibraryNotFound,
            Some("/opt/nvidia/libnvidia-ml.so.1"),
        );
        assert!(
            matches!(&named, NvmlProblem::Failed(r)
                if r.contains("FLEET_NVML_LIBRARY names (/opt/nvidia/libnvidia-ml.so.1)")),
            "{named:?}"
        );
        // The driver's answers mean the same wherever the library came from.
        for path in [None, Some("/x/libnvidia-ml.so.1")] {
            assert!(matches!(
                init_problem(NvmlError::DriverNotLoaded, path),
                NvmlProblem::Failed(r) if r.contains("driver is not loaded")
            ));
            assert!(matches!(
                init_problem(NvmlError::NoPermission, path),
                NvmlProblem::Failed(r) if r.contains("no permission")
            ));
        }
    }
}
