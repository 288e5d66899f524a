//! GPU health: the signals read from a GPU (NVML here, `nvidia-smi` through the GPU probe on a
//! remote engine) and the state they make (docs/gpu-health.md). Reading is in `gpu.rs` and
//! `docker/probe.rs`; deciding is here, pure, so that the rules are tested without a GPU.

use crate::spec::GpuHealthSettings;
use crate::state::{GpuHealth, HealthState};
pub use crate::state::{GpuProcess, GpuSignals, THROTTLE_REASONS, throttle_names};

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
            .map(|p| match p.used_memory_bytes {
                Some(bytes) => format!("PID {} using {} MiB", p.pid, bytes >> 20),
                None => format!("PID {}", p.pid),
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
        s.processes = Some(vec![GpuProcess {
            pid: 4242,
            used_memory_bytes: Some(300 << 20),
        }]);
        let health = classify(&s, &GpuHealthSettings::default(), false);
        assert_eq!(health.state, HealthState::Dirty);
        assert!(
            health.reasons[0].contains("PID 4242 using 300 MiB"),
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
