//! `fleet gpus`: this machine's GPUs, a host's (`--host`), or a quarantine released
//! (`--release`).

use std::path::Path;

use super::{Done, Failure, env_var, observed_devices, print_stdout, runtime};
use crate::spec;

/// Output formats of `fleet gpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpusFormat {
    Text,
    Json,
}

pub fn local(format: GpusFormat) -> Result<Done, Failure> {
    use crate::observe::gpu::{NvmlProblem, devices_table};
    use crate::observe::nvml_reader::{Reading, read_once};
    let (reading, reason) = match read_once() {
        Ok(reading) => (reading, None),
        Err(NvmlProblem::Absent(reason)) => (Reading::default(), Some(reason)),
        Err(NvmlProblem::Failed(message)) => {
            return Err(Failure::Other(format!(
                "{message}; `nvidia-smi` on this machine shows whether the driver works"
            )));
        }
    };
    let report = &reading.report;
    // Without a spec, fleet cannot tell a runner's processes from a leak: no GPU is called
    // dirty here (`fleet gpus --host NAME` tells).
    let settings = crate::spec::GpuHealthSettings::default();
    let health: Vec<_> = report
        .devices
        .iter()
        .map(|d| {
            reading
                .signals
                .get(&d.uuid)
                .map(|s| crate::observe::health::classify(s, &settings, true))
        })
        .collect();
    let text = match format {
        GpusFormat::Json => {
            let gpus: Vec<serde_json::Value> = report
                .devices
                .iter()
                .zip(&health)
                .map(|(device, health)| {
                    let mut value = serde_json::to_value(device).unwrap_or_default();
                    if let (Some(h), Some(map)) = (health, value.as_object_mut()) {
                        map.insert("health".into(), h.state.as_str().into());
                        map.insert("health_reasons".into(), h.reasons.clone().into());
                    }
                    value
                })
                .collect();
            let value = serde_json::json!({
                "gpus": gpus, "unreadable": report.unreadable, "reason": reason
            });
            format!(
                "{}\n",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            )
        }
        GpusFormat::Text if report.devices.is_empty() && report.unreadable.is_empty() => format!(
            "no NVIDIA GPUs found{}\n",
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ),
        GpusFormat::Text => devices_table(&report.devices, &health),
    };
    let code = print_stdout(&text)?;
    // A GPU NVML counts but cannot read (lost, most often) needs the operator: exit 1.
    match report.unreadable.as_slice() {
        [] => Ok(code),
        unreadable => Err(Failure::Other(
            unreadable
                .iter()
                .map(|g| g.reason.as_str())
                .collect::<Vec<_>>()
                .join("\nerror: "),
        )),
    }
}

/// `fleet gpus --release UUID [--host NAME]`: removes the quarantine records of GPU `uuid`
/// that fleet made, on `host` or on every host of the spec, and says what it released. A record
/// fleet did not make is never touched.
pub fn release(file: &Path, uuid: &str, only: Option<&str>) -> Result<Done, Failure> {
    use crate::docker::DockerHost;
    let spec = spec::load(file).map_err(Failure::Spec)?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let hosts = spec.effective_hosts();
    if let Some(name) = only.filter(|n| !hosts.contains_key(*n)) {
        return Err(Failure::Other(format!("the spec has no host `{name}`")));
    }
    let released = runtime()?.block_on(async {
        let mut released = Vec::new();
        for (name, host) in hosts.iter().filter(|(n, _)| only.is_none_or(|o| o == n.as_str())) {
            let connection = DockerHost::connect_host(name, host, base_dir, &env_var)
                .await
                .map_err(|e| Failure::Other(e.to_string()))?;
            let volumes = connection
                .read()
                .owned_volumes(&spec.name)
                .await
                .map_err(|e| Failure::Other(e.to_string()))?;
            for (volume, record) in volumes
                .iter()
                .filter_map(|v| v.quarantine.as_ref().map(|q| (v, q)))
                .filter(|(_, q)| q.uuid == uuid)
            {
                connection
                    .write()
                    .remove_owned_volume(&volume.name, &spec.name)
                    .await
                    .map_err(|e| Failure::Other(e.to_string()))?;
                let since = record.since.map_or("at an unknown time".to_string(), |s| {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.max(0) as u64);
                    format!("since {}", humantime::format_rfc3339_seconds(at))
                });
                released.push(format!(
                    "released the quarantine of GPU {uuid} on host `{name}` (quarantined {since}: {})",
                    record.reason
                ));
            }
        }
        Ok::<_, Failure>(released)
    })?;
    if released.is_empty() {
        let at = only.map_or("any host of the spec".to_string(), |h| {
            format!("host `{h}`")
        });
        return Err(Failure::Other(format!(
            "GPU {uuid} has no quarantine record of fleet `{}` on {at}; nothing was changed",
            spec.name
        )));
    }
    print_stdout(&format!("{}\n", released.join("\n")))
}

/// `fleet gpus --host NAME`: the GPUs of one host of the spec and the runners holding them.
pub fn host(file: &Path, host: &str, format: GpusFormat) -> Result<Done, Failure> {
    use crate::observe::state::GpuSource;
    let spec = spec::load(file).map_err(Failure::Spec)?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let observed = runtime()?
        .block_on(crate::observe::observe_one_host(
            &spec, host, base_dir, &env_var,
        ))
        .map_err(Failure::Observe)?;
    let devices = observed_devices();
    let status = crate::status::build(&spec, &observed, &devices, 0);
    let Some(view) = status.hosts.iter().find(|h| h.name == host) else {
        return Err(Failure::Other(format!("the spec has no host `{host}`")));
    };
    let text = match format {
        GpusFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(view).unwrap_or_default()
        ),
        GpusFormat::Text => crate::status::host_text(view).trim_start().to_string(),
    };
    let code = print_stdout(&text)?;
    let unreadable = observed
        .hosts
        .get(host)
        .is_some_and(|h| matches!(h.gpus.source, GpuSource::Unavailable(_)));
    if unreadable {
        return Err(Failure::Other(format!(
            "the GPUs of host `{host}` cannot be read (see above)"
        )));
    }
    Ok(code)
}
