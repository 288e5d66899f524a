//! GPU health metrics of `fleet watch` beside `fleet_gpu_health`: quarantined GPUs, how long
//! each GPU has been dirty and the grace it is allowed, Xid and ECC counts by GPU, and pools
//! short because of GPU health (docs/monitoring.md).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::observe::nvml_events;
use crate::observe::nvml_reader;
use crate::observe::state::Observed;

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The GPU health families, registered once.
pub struct GpuHealthMetrics {
    quarantined: Family<Labels, Gauge>,
    dirty_seconds: Family<Labels, Gauge>,
    dirty_grace: Gauge,
    xids: Family<Labels, Counter>,
    ecc: Family<Labels, Gauge>,
    short: Family<Labels, Gauge>,
}

impl GpuHealthMetrics {
    pub fn register(registry: &mut Registry) -> GpuHealthMetrics {
        let m = GpuHealthMetrics {
            quarantined: Family::default(),
            dirty_seconds: Family::default(),
            dirty_grace: Gauge::default(),
            xids: Family::default(),
            ecc: Family::default(),
            short: Family::default(),
        };
        registry.register(
            "fleet_gpu_quarantined",
            "1 for each GPU a quarantine record of fleet holds back, by host and GPU UUID",
            m.quarantined.clone(),
        );
        registry.register(
            "fleet_gpu_dirty_seconds",
            "How long each dirty GPU has been dirty, as far as this watch saw, by host and GPU UUID",
            m.dirty_seconds.clone(),
        );
        registry.register(
            "fleet_gpu_dirty_grace_seconds",
            "gpu_health.dirty_grace: how long a GPU may stay dirty before fleet reports it",
            m.dirty_grace.clone(),
        );
        registry.register(
            "fleet_gpu_xid_errors",
            "Xid errors NVML reported on this machine's GPUs since watch started, by host, GPU UUID and Xid",
            m.xids.clone(),
        );
        registry.register(
            "fleet_gpu_ecc_errors",
            "Volatile ECC error counts NVML reports on this machine's GPUs (since the last reset), by host, GPU UUID and type (corrected, uncorrected)",
            m.ecc.clone(),
        );
        registry.register(
            "fleet_pool_short_for_gpu_health",
            "Runners a pool lacks on a host because GPUs there are held back (unhealthy, dirty, unknown, disabled)",
            m.short.clone(),
        );
        m
    }

    /// From an observation: quarantines and dirty time of every observed host; Xid and ECC
    /// counts of `local`, the host whose GPUs NVML on this machine reads.
    pub fn observed(&self, observed: &Observed, local: &str, grace: Duration) {
        self.quarantined.clear();
        self.dirty_seconds.clear();
        self.dirty_grace.set(grace.as_secs() as i64);
        for (host, state) in &observed.hosts {
            for (uuid, health) in &state.gpus.health {
                let key = labels([("host", host), ("uuid", uuid)]);
                if health.quarantined {
                    self.quarantined.get_or_create(&key).set(1);
                }
                if let Some(seconds) = health.dirty_seconds {
                    self.dirty_seconds.get_or_create(&key).set(seconds as i64);
                }
            }
        }
        if local.is_empty() {
            return;
        }
        for (uuid, xid, count) in nvml_events::xid_counts() {
            let counter = self.xids.get_or_create(&labels([
                ("host", local),
                ("uuid", &uuid),
                ("xid", &xid.to_string()),
            ]));
            counter.inc_by(count.saturating_sub(counter.get()));
        }
        self.observe_ecc(local);
    }

    /// The volatile ECC counts of the latest NVML reading (NVML is not called again).
    fn observe_ecc(&self, local: &str) {
        self.ecc.clear();
        let Some(Ok(reading)) = nvml_reader::reader().latest() else {
            return;
        };
        for (uuid, signals) in &reading.signals {
            for (kind, count) in [
                ("corrected", signals.ecc_corrected_volatile),
                ("uncorrected", signals.ecc_uncorrected_volatile),
            ] {
                if let Some(count) = count {
                    self.ecc
                        .get_or_create(&labels([("host", local), ("uuid", uuid), ("type", kind)]))
                        .set(count as i64);
                }
            }
        }
    }

    /// From a plan: the pools short because of GPU health.
    pub fn planned(&self, plan: &crate::plan::Plan) {
        self.short.clear();
        for (pool, host, runners) in plan
            .warnings
            .iter()
            .filter_map(|w| crate::plan::health_shortage(w))
        {
            self.short
                .get_or_create(&labels([("pool", pool), ("host", host)]))
                .set(runners as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::{GpuHealth, HealthState, HostState};

    #[test]
    fn quarantines_dirty_time_and_the_grace_are_exported_by_host_and_gpu() {
        let mut registry = Registry::default();
        let m = GpuHealthMetrics::register(&mut registry);
        let mut observed = Observed::default();
        let mut host = HostState::default();
        host.gpus.health.insert(
            "GPU-q".into(),
            GpuHealth {
                state: HealthState::Unhealthy,
                quarantined: true,
                ..GpuHealth::default()
            },
        );
        host.gpus.health.insert(
            "GPU-d".into(),
            GpuHealth {
                state: HealthState::Dirty,
                dirty_seconds: Some(130),
                ..GpuHealth::default()
            },
        );
        observed.hosts.insert("box".into(), host);
        m.observed(&observed, "", Duration::from_secs(120));
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).expect("encode");
        for line in [
            "fleet_gpu_quarantined{host=\"box\",uuid=\"GPU-q\"} 1",
            "fleet_gpu_dirty_seconds{host=\"box\",uuid=\"GPU-d\"} 130",
            "fleet_gpu_dirty_grace_seconds 120",
        ] {
            assert!(page.contains(line), "{line}\n{page}");
        }
        assert!(!page.contains("uuid=\"GPU-q\"} 0"), "{page}");
    }
}
