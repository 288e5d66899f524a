//! `gpu_health` with its defaults decided, and what is wrong with it.

use std::collections::BTreeSet;
use std::time::Duration;

use super::memory::parse_memory;
use super::model::{GpuHealthSpec, Spec};

/// Application Xids by default: faults of the job (a bad kernel, a page fault), not of the GPU,
/// as NVIDIA's Kubernetes device plugin treats them. 109 is not among them
/// (docs/gpu-health.md says why).
pub const DEFAULT_APPLICATION_XIDS: [u64; 5] = [13, 31, 43, 45, 68];
/// Memory in use on a GPU no runner holds above which it is dirty.
pub const DEFAULT_DIRTY_MEMORY: u64 = 1 << 30;
/// How long a GPU may stay dirty before fleet reports it.
pub const DEFAULT_DIRTY_GRACE: Duration = Duration::from_secs(120);
/// The temperature from which a GPU is degraded.
pub const DEFAULT_TEMPERATURE_WARN: u32 = 85;

/// The GPU health thresholds in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuHealthSettings {
    pub dirty_memory_bytes: u64,
    pub dirty_grace: Duration,
    pub application_xids: BTreeSet<u64>,
    pub temperature_warn: u32,
}

impl Default for GpuHealthSettings {
    fn default() -> Self {
        GpuHealthSettings {
            dirty_memory_bytes: DEFAULT_DIRTY_MEMORY,
            dirty_grace: DEFAULT_DIRTY_GRACE,
            application_xids: DEFAULT_APPLICATION_XIDS.into_iter().collect(),
            temperature_warn: DEFAULT_TEMPERATURE_WARN,
        }
    }
}

impl Spec {
    /// `gpu_health` with every field decided (a field that does not parse, which validation
    /// refuses, takes its default).
    pub fn gpu_health_settings(&self) -> GpuHealthSettings {
        let defaults = GpuHealthSettings::default();
        let Some(spec) = &self.gpu_health else {
            return defaults;
        };
        GpuHealthSettings {
            dirty_memory_bytes: spec
                .dirty_memory
                .as_deref()
                .and_then(parse_memory)
                .and_then(|b| u64::try_from(b).ok())
                .unwrap_or(defaults.dirty_memory_bytes),
            dirty_grace: spec
                .dirty_grace
                .as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
                .unwrap_or(defaults.dirty_grace),
            application_xids: spec
                .application_xids
                .as_ref()
                .map_or(defaults.application_xids, |x| x.iter().copied().collect()),
            temperature_warn: spec.temperature_warn.unwrap_or(defaults.temperature_warn),
        }
    }
}

/// What is wrong with `gpu_health`: (JSON pointer, message) pairs.
pub fn gpu_health_problems(spec: &GpuHealthSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(text) = &spec.dirty_memory
        && parse_memory(text).is_none()
    {
        problems.push((
            "/gpu_health/dirty_memory".into(),
            format!(
                "expected a size such as 512m or 1g, found {}",
                super::diag::quote(text)
            ),
        ));
    }
    if let Some(text) = &spec.dirty_grace
        && humantime::parse_duration(text).is_err()
    {
        problems.push((
            "/gpu_health/dirty_grace".into(),
            format!(
                "expected a duration such as 30s or 2m, found {}",
                super::diag::quote(text)
            ),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_field_by_field() {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "version": 1, "name": "zq", "github": {"repo": "a/b"}, "pools": {}
        }))
        .expect("spec");
        assert_eq!(spec.gpu_health_settings(), GpuHealthSettings::default());
        spec.gpu_health = Some(GpuHealthSpec {
            dirty_memory: Some("512m".into()),
            dirty_grace: Some("30s".into()),
            application_xids: Some(vec![13]),
            temperature_warn: None,
        });
        let settings = spec.gpu_health_settings();
        assert_eq!(settings.dirty_memory_bytes, 512 << 20);
        assert_eq!(settings.dirty_grace, Duration::from_secs(30));
        assert_eq!(settings.application_xids, BTreeSet::from([13]));
        assert_eq!(settings.temperature_warn, 85);
    }

    #[test]
    fn sizes_and_durations_that_do_not_parse_are_named() {
        let problems = gpu_health_problems(&GpuHealthSpec {
            dirty_memory: Some("lots".into()),
            dirty_grace: Some("soon".into()),
            ..GpuHealthSpec::default()
        });
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, "/gpu_health/dirty_memory");
        assert!(problems[1].1.contains("30s or 2m"), "{problems:?}");
    }
}
