//! GPU health: the signals read from a GPU (NVML here, `nvidia-smi` through the GPU probe on a
//! remote engine) and the state they make (docs/gpu-health.md). Reading is in `gpu.rs` and
//! `docker/probe.rs`; deciding is here, pure, so that the rules are tested without a GPU.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::spec::GpuHealthSettings;
use crate::state::{GpuHealth, GpuInventory, HealthState};
pub use crate::state::{GpuProcess, GpuSignals, THROTTLE_REASONS, throttle_names};

use super::holder::ProcessHolder;

/// The state of a GPU from its signals. `held`: a running runner container of this fleet holds
/// the GPU, so its processes and memory are that runner's own.
pub fn classify(signals: &GpuSignals, settings: &GpuHealthSettings, held: bool) -> GpuHealth {
    let unhealthy = unhealthy_reasons(signals, settings);
    let until_reset = !unhealthy.is_empty() && only_pending(signals, settings);
    let (state, reasons) = if !unhealthy.is_empty() {
        (HealthState::Unhealthy, unhealthy)
    } else if !signals.unreadable.is_empty() {
        let reasons = signals
            .unreadable
            .iter()
            .map(|r| format!("health unknown: {r}"))
            .collect();
        (HealthState::Unknown, reasons)
    } else if let Some(dirty) = (!held)
        .then(|| dirty_reasons(signals, settings))
        .filter(|r| !r.is_empty())
    {
        (HealthState::Dirty, dirty)
    } else {
        let degraded = degraded_reasons(signals, settings);
        let state = if degraded.is_empty() {
            HealthState::Healthy
        } else {
            HealthState::Degraded
        };
        (state, degraded)
    };
    GpuHealth {
        state,
        reasons,
        application_xids: signals
            .fresh_xids
            .iter()
            .copied()
            .filter(|x| settings.application_xids.contains(x))
            .collect(),
        until_reset,
        quarantined: false,
        dirty_seconds: None,
        leftovers: vec![],
        leftovers_new: false,
    }
}

/// What a running runner left on the GPU it holds: processes of its own container (`own`:
/// the ids of the runner containers that hold it), device memory above the dirty threshold.
/// Only an idle runner is made again for them (the planner knows which are idle).
pub fn leftovers(signals: &GpuSignals, settings: &GpuHealthSettings, own: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mine: Vec<String> = signals
        .processes
        .iter()
        .flatten()
        .filter(|p| {
            p.holder
                .as_ref()
                .and_then(ProcessHolder::container_id)
                .is_some_and(|id| own.contains(&id))
        })
        .map(|p| format!("PID {}", p.pid))
        .collect();
    if !mine.is_empty() {
        found.push(format!(
            "compute process(es) of its own container ({})",
            mine.join(", ")
        ));
    }
    if let Some(used) = signals
        .memory_used_bytes
        .filter(|used| *used > settings.dirty_memory_bytes)
    {
        found.push(format!("{} MiB of device memory", used >> 20));
    }
    found
}

/// When each idle runner was first seen leaving something on its GPU, by host, GPU and
/// runner name: the planner makes it again once, and a runner made again (same name) that
/// still leaves it is reported past the dirty grace instead of being made again and again.
static LEFTOVERS_SINCE: Mutex<BTreeMap<(String, String, String), Instant>> =
    Mutex::new(BTreeMap::new());

/// Marks the leftovers first seen on an idle persistent runner's GPU (`leftovers_new`) and
/// times them (`dirty_seconds`); a busy runner's GPU holds its job's processes and is not
/// timed, and an ephemeral runner's leftovers are dropped (it has run no job yet).
pub fn stamp_leftovers(observed: &mut super::state::Observed) {
    let now = Instant::now();
    let mut since = LEFTOVERS_SINCE
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut seen = Vec::new();
    for (host, state) in observed.hosts.iter_mut() {
        for (uuid, health) in state.gpus.health.iter_mut() {
            if health.leftovers.is_empty() {
                continue;
            }
            // Only a persistent runner (made with a registration of its own) keeps its
            // container between jobs; an ephemeral one has run no job yet and leaves after one.
            let runner = state.containers.iter().find(|c| {
                !c.status.is_finished()
                    && c.gpus().contains(uuid)
                    && c.label(crate::contract::labels::REGISTRATION).is_some()
            });
            let Some(runner) = runner else {
                health.leftovers.clear();
                continue;
            };
            let busy = observed
                .github
                .runners
                .iter()
                .any(|r| r.name == runner.name && r.busy);
            if busy {
                continue;
            }
            let key = (host.clone(), uuid.clone(), runner.name.clone());
            health.leftovers_new = !since.contains_key(&key);
            let first = *since.entry(key.clone()).or_insert(now);
            health.dirty_seconds = Some(now.duration_since(first).as_secs());
            seen.push(key);
        }
    }
    let observed_hosts: Vec<&String> = observed.hosts.keys().collect();
    since.retain(|key, _| seen.contains(key) || !observed_hosts.contains(&&key.0));
}

/// When each GPU was first seen dirty, by host and UUID, for this process's life.
static DIRTY_SINCE: Mutex<BTreeMap<(String, String), Instant>> = Mutex::new(BTreeMap::new());

/// Sets how long each dirty GPU of `host` has been dirty (since this process first saw it so);
/// a GPU that is clean again starts over.
pub fn time_dirty(host: &str, inventory: &mut GpuInventory) {
    let now = Instant::now();
    let mut since = DIRTY_SINCE.lock().unwrap_or_else(PoisonError::into_inner);
    since.retain(|(h, uuid), _| {
        h != host
            || inventory
                .health
                .get(uuid)
                .is_some_and(|g| g.state == HealthState::Dirty)
    });
    for (uuid, health) in inventory.health.iter_mut() {
        if health.state == HealthState::Dirty {
            let first = since.entry((host.to_string(), uuid.clone())).or_insert(now);
            health.dirty_seconds = Some(now.duration_since(*first).as_secs());
        }
    }
}

/// Whether every fault the signals show ends with a GPU reset (pages pending retirement, rows
/// pending remapping): a quarantine for those ends when NVML reports them done.
fn only_pending(s: &GpuSignals, settings: &GpuHealthSettings) -> bool {
    let pending = s.retired_pages_pending == Some(true) || s.remapped_rows_pending == Some(true);
    let critical_xid = s
        .xids
        .iter()
        .any(|x| !settings.application_xids.contains(x));
    pending
        && !critical_xid
        && !s.ecc_error_event
        && s.ecc_uncorrected_volatile.unwrap_or(0) == 0
        && s.remapped_rows_failure != Some(true)
}

fn unhealthy_reasons(s: &GpuSignals, settings: &GpuHealthSettings) -> Vec<String> {
    let mut critical: Vec<u64> = s
        .xids
        .iter()
        .copied()
        .filter(|x| !settings.application_xids.contains(x))
        .collect();
    critical.dedup();
    let mut reasons: Vec<String> = critical
        .iter()
        .map(|xid| format!("critical Xid {xid} reported by the driver"))
        .collect();
    if s.ecc_error_event {
        reasons.push("an uncorrectable ECC error event".into());
    }
    if let Some(n) = s.ecc_uncorrected_volatile.filter(|n| *n > 0) {
        reasons.push(format!("{n} uncorrected volatile ECC error(s)"));
    }
    if s.retired_pages_pending == Some(true) {
        reasons.push("memory pages pending retirement (a GPU reset is needed)".into());
    }
    if s.remapped_rows_pending == Some(true) {
        reasons.push("memory rows pending remapping (a GPU reset is needed)".into());
    }
    if s.remapped_rows_failure == Some(true) {
        reasons.push("row remapping failed".into());
    }
    reasons
}

fn dirty_reasons(s: &GpuSignals, settings: &GpuHealthSettings) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(processes) = s.processes.as_ref().filter(|p| !p.is_empty()) {
        let listed: Vec<String> = processes
            .iter()
            .map(|p| {
                let used = match p.used_memory_bytes {
                    Some(bytes) => format!("PID {} using {} MiB", p.pid, bytes >> 20),
                    None => format!("PID {}", p.pid),
                };
                match &p.holder {
                    Some(holder) => format!("{used}, {}", holder.describe()),
                    None => used,
                }
            })
            .collect();
        reasons.push(format!(
            "{} compute process(es) and no runner holds the GPU: {}",
            processes.len(),
            listed.join(", ")
        ));
    }
    if let Some(used) = s
        .memory_used_bytes
        .filter(|used| *used > settings.dirty_memory_bytes)
    {
        reasons.push(format!(
            "{} MiB of device memory in use and no runner holds the GPU (more than {} MiB)",
            used >> 20,
            settings.dirty_memory_bytes >> 20
        ));
    }
    reasons
}

fn degraded_reasons(s: &GpuSignals, settings: &GpuHealthSettings) -> Vec<String> {
    let mut reasons: Vec<String> = s
        .throttle
        .iter()
        .map(|t| format!("clocks slowed down: {t}"))
        .collect();
    if let Some(t) = s
        .temperature_celsius
        .filter(|t| *t >= settings.temperature_warn)
    {
        reasons.push(format!(
            "temperature {t} °C, at or above {} °C",
            settings.temperature_warn
        ));
    }
    if s.ecc_corrected_rising {
        let count = s.ecc_corrected_volatile.unwrap_or(0);
        reasons.push(format!(
            "correctable ECC errors rising ({count} since the last reset)"
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> GpuSignals {
        GpuSignals {
            uuid: "GPU-a".into(),
            memory_used_bytes: Some(0),
            temperature_celsius: Some(40),
            processes: Some(vec![]),
            ..GpuSignals::default()
        }
    }

    fn state(s: &GpuSignals, held: bool) -> HealthState {
        classify(s, &GpuHealthSettings::default(), held).state
    }

    #[test]
    fn each_hardware_fault_makes_the_gpu_unhealthy_held_or_not() {
        let faults: [fn(&mut GpuSignals); 6] = [
            |s| s.xids = vec![79],
            |s| s.ecc_error_event = true,
            |s| s.ecc_uncorrected_volatile = Some(1),
            |s| s.retired_pages_pending = Some(true),
            |s| s.remapped_rows_pending = Some(true),
            |s| s.remapped_rows_failure = Some(true),
        ];
        for fault in faults {
            let mut s = clean();
            fault(&mut s);
            // Even a signal that could not be read does not hide a known fault.
            s.unreadable = vec!["temperature: Unknown Error".into()];
            assert_eq!(state(&s, false), HealthState::Unhealthy, "{s:?}");
            assert_eq!(state(&s, true), HealthState::Unhealthy, "{s:?}");
        }
        assert_eq!(state(&clean(), false), HealthState::Healthy);
    }

    #[test]
    fn processes_or_memory_make_a_gpu_no_runner_holds_dirty() {
        let mut s = clean();
        s.processes = Some(vec![
            GpuProcess {
                pid: 4242,
                used_memory_bytes: Some(300 << 20),
                holder: Some(ProcessHolder::Host),
            },
            GpuProcess {
                pid: 4343,
                used_memory_bytes: None,
                holder: Some(ProcessHolder::Container {
                    id: "ab".repeat(32),
                    name: Some("ci-gpu-1".into()),
                }),
            },
        ]);
        let health = classify(&s, &GpuHealthSettings::default(), false);
        assert_eq!(health.state, HealthState::Dirty);
        assert!(
            health.reasons[0].contains("PID 4242 using 300 MiB, a host process"),
            "{health:?}"
        );
        assert!(
            health.reasons[0].contains("PID 4343, in container `ci-gpu-1` (abababababab)"),
            "{health:?}"
        );
        // The runner that holds it owns its processes.
        assert_eq!(state(&s, true), HealthState::Healthy);

        let mut s = clean();
        s.memory_used_bytes = Some(2 << 30);
        assert_eq!(state(&s, false), HealthState::Dirty);
        s.memory_used_bytes = Some(1 << 30);
        assert_eq!(state(&s, false), HealthState::Healthy, "at the threshold");
    }

    #[test]
    fn a_dirty_gpu_is_timed_from_when_it_was_first_seen_dirty_and_starts_over_when_clean() {
        let mut inventory = GpuInventory::default();
        let dirty = GpuHealth {
            state: HealthState::Dirty,
            ..GpuHealth::default()
        };
        inventory.health.insert("GPU-t".into(), dirty.clone());
        time_dirty("timed", &mut inventory);
        assert_eq!(inventory.health["GPU-t"].dirty_seconds, Some(0));
        inventory
            .health
            .insert("GPU-t".into(), GpuHealth::default());
        time_dirty("timed", &mut inventory);
        assert_eq!(inventory.health["GPU-t"].dirty_seconds, None);
        assert!(
            !DIRTY_SINCE
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&("timed".to_string(), "GPU-t".to_string()))
        );
    }

    #[test]
    fn heat_throttling_and_rising_corrected_errors_degrade() {
        let mut s = clean();
        s.temperature_celsius = Some(85);
        assert_eq!(state(&s, false), HealthState::Degraded);
        let mut s = clean();
        s.throttle = throttle_names(0x40 | 0x1);
        assert_eq!(s.throttle, ["hw_thermal_slowdown"]);
        assert_eq!(state(&s, false), HealthState::Degraded);
        let mut s = clean();
        s.ecc_corrected_rising = true;
        assert_eq!(state(&s, false), HealthState::Degraded);
    }

    #[test]
    fn a_signal_that_cannot_be_read_is_unknown_never_healthy() {
        let mut s = clean();
        s.unreadable = vec!["memory: Unknown Error".into()];
        let health = classify(&s, &GpuHealthSettings::default(), true);
        assert_eq!(health.state, HealthState::Unknown);
        assert!(!health.state.placeable());
        assert_eq!(health.reasons, ["health unknown: memory: Unknown Error"]);
    }

    #[test]
    fn application_xids_stay_with_the_runner() {
        let mut s = clean();
        s.xids = vec![13];
        s.fresh_xids = vec![13];
        let health = classify(&s, &GpuHealthSettings::default(), true);
        assert_eq!(health.state, HealthState::Healthy);
        assert_eq!(health.application_xids, [13]);
        // 109 is critical by default (docs/gpu-health.md); the list is the operator's.
        s.xids = vec![13, 109];
        assert_eq!(state(&s, true), HealthState::Unhealthy);
        let mut settings = GpuHealthSettings::default();
        settings.application_xids.insert(109);
        assert_eq!(classify(&s, &settings, true).state, HealthState::Healthy);
    }
}
