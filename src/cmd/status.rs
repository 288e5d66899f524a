//! `fleet status`: every runner, its container, registration and GPUs.

use std::path::Path;

use super::{Done, Failure, HostSelection, env_var, observed_devices, print_stdout, runtime};
use crate::github::RetryPolicy;
use crate::observe::Observers;
use crate::spec;

/// Output formats of `fleet status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

pub fn run(file: &Path, format: StatusFormat, hosts: &HostSelection) -> Result<Done, Failure> {
    use crate::observe::ObserveOptions;
    use crate::observe::inventory::ProbeWhen;
    let spec = spec::load(file).map_err(Failure::Spec)?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let excluded = hosts.excluded();
    let (observation, mut failed) = runtime()?.block_on(async {
        let (observers, failed) = Observers::connect_available(
            &spec,
            base_dir,
            &env_var,
            RetryPolicy::default(),
            &excluded,
        )
        .await
        .map_err(Failure::Observe)?;
        let options = ObserveOptions {
            tolerate_down_hosts: true,
            probe: ProbeWhen::Always,
            ..ObserveOptions::default()
        };
        let mut observation = observers
            .observe_with(&spec, options)
            .await
            .map_err(Failure::Observe)?;
        observers
            .read_scale_sets(&spec, &mut observation.observed)
            .await;
        Ok::<_, Failure>((observation, failed))
    })?;
    failed.extend(observation.failed);
    let devices = observed_devices();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut status = crate::status::build(&spec, &observation.observed, &devices, now);
    status.autoscale = crate::status::autoscale_statuses(&spec, &observation.observed);
    for host in &excluded {
        status.note_unobserved(host, "excluded with --exclude-host".into());
    }
    for (host, e) in &failed {
        status.note_unobserved(host, e.to_string());
    }
    let text = match format {
        StatusFormat::Text => crate::status::text(&status),
        StatusFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        ),
    };
    let code = print_stdout(&text)?;
    if failed.is_empty() {
        return Ok(code);
    }
    Err(Failure::Other(format!(
        "{} host(s) did not answer: {}",
        failed.len(),
        failed.keys().cloned().collect::<Vec<_>>().join(", ")
    )))
}
