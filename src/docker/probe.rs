//! The GPU probe: how `gpus: auto` reads the GPUs of an engine that does not run on this
//! machine. It is read-side work that needs a write: one short-lived container of fleet's own,
//! asking for every GPU with the `utility` capability only, so that the NVIDIA container toolkit
//! mounts the host's `nvidia-smi` into it; its output is the inventory. The container is
//! created, started, read and removed here, and nothing else is touched (docs/hosts.md, "GPU
//! inventory of a remote engine", says why `plan` may do this).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions,
};
use futures_util::StreamExt;

use super::{DockerHost, api_path};
use crate::state::GpuInfo;
use crate::state::{GpuSignals, throttle_names};

/// The label of a probe container: its value is the fleet. Not `fleet.name`, so that no
/// planner ever takes a probe for a runner.
pub const PROBE_LABEL: &str = "fleet.gpu-probe";

/// How long the probe container may run (`nvidia-smi` answers in well under a second).
const PROBE_LIMIT: Duration = Duration::from_secs(30);

/// A probe container older than this is a leftover of a fleet that was killed mid-probe.
const LEFTOVER_AGE: Duration = Duration::from_secs(300);

/// Where the NVIDIA container toolkit mounts the host's `nvidia-smi` (over whatever the image
/// has there): run by this path, never looked up on the image's `PATH`.
pub const NVIDIA_SMI_PATH: &str = "/usr/bin/nvidia-smi";

/// The probe's user: `nobody`, not the image's (often root).
const PROBE_USER: &str = "65534:65534";

/// The query: one CSV line per GPU, memory in MiB, then the health fields in
/// [`HEALTH_FIELDS`]' order.
const NVIDIA_SMI_ARGS: [&str; 2] = [
    "--query-gpu=index,uuid,name,memory.total,memory.used,temperature.gpu,ecc.errors.uncorrected.volatile.total,ecc.errors.corrected.volatile.total,retired_pages.pending,remapped_rows.pending,remapped_rows.failure,clocks_throttle_reasons.active",
    "--format=csv,noheader,nounits",
];

/// The health fields after `memory.total`, as the query names them.
const HEALTH_FIELDS: [&str; 8] = [
    "memory.used",
    "temperature.gpu",
    "ecc.errors.uncorrected.volatile.total",
    "ecc.errors.corrected.volatile.total",
    "retired_pages.pending",
    "remapped_rows.pending",
    "remapped_rows.failure",
    "clocks_throttle_reasons.active",
];

/// One GPU as the probe read it: what it is, and its health signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedGpu {
    pub info: GpuInfo,
    pub signals: GpuSignals,
}

/// Why the probe gave no inventory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The engine cannot hand GPUs to containers: no NVIDIA container toolkit there.
    #[error(
        "the Docker engine at {endpoint} has no NVIDIA support (it cannot give a container GPUs: {message}); install the NVIDIA driver and nvidia-container-toolkit on host `{host}`, or declare its GPU UUIDs in hosts.{host}.gpus"
    )]
    NoNvidia {
        host: String,
        endpoint: String,
        message: String,
    },
    /// The image to probe with is not on the host; the probe never pulls.
    #[error(
        "host `{host}`: cannot ask the engine for its GPUs: image {image} is not on the host (the GPU probe never pulls); load it there, name another image in FLEET_GPU_PROBE_IMAGE, or declare the GPU UUIDs in hosts.{host}.gpus"
    )]
    ImageMissing { host: String, image: String },
    /// Anything else: the step and the engine's or the command's words.
    #[error("host `{host}`: the GPU probe could not {step}: {message}")]
    Failed {
        host: String,
        step: &'static str,
        message: String,
    },
}

impl DockerHost {
    /// Runs the GPU probe on this host with `image` (which must already be on the host): creates
    /// a container labelled [`PROBE_LABEL`]`=<fleet>` that runs only the host's `nvidia-smi`
    /// (no network, no capabilities, read-only root, no new privileges), reads its output and
    /// removes it, also when a step fails. Probe containers of this fleet left by a killed
    /// fleet (older than five minutes) are removed first.
    pub async fn run_gpu_probe(
        &self,
        fleet: &str,
        image: &str,
    ) -> Result<Vec<ProbedGpu>, ProbeError> {
        let failed = |step: &'static str| {
            let host = self.name.clone();
            move |e: bollard::errors::Error| ProbeError::Failed {
                host,
                step,
                message: e.to_string(),
            }
        };
        self.remove_probe_leftovers(fleet).await;
        let image_env = self.probe_image_env(image).await?;
        let name = probe_name(fleet);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        self.docker
            .create_container(Some(options), probe_body(fleet, image, &image_env))
            .await
            .map_err(failed("create its container"))?;
        let result = tokio::time::timeout(PROBE_LIMIT, self.start_and_read(&name)).await;
        let removed = self.remove_probe(&name).await;
        let output = match result {
            Ok(output) => output?,
            Err(_) => {
                return Err(ProbeError::Failed {
                    host: self.name.clone(),
                    step: "finish",
                    message: format!("nvidia-smi did not exit within {}s", PROBE_LIMIT.as_secs()),
                });
            }
        };
        removed.map_err(failed("remove its container"))?;
        parse_nvidia_smi(&output).map_err(|message| ProbeError::Failed {
            host: self.name.clone(),
            step: "read nvidia-smi's answer",
            message,
        })
    }

    /// The names of the environment variables `image` sets (the probe blanks each); an image
    /// not on the host is [`ProbeError::ImageMissing`].
    async fn probe_image_env(&self, image: &str) -> Result<Vec<String>, ProbeError> {
        let failed = |message: String| ProbeError::Failed {
            host: self.name.clone(),
            step: "inspect its image",
            message,
        };
        let path = api_path::segment(image).map_err(failed)?;
        match self.docker.inspect_image(&path).await {
            Ok(found) => Ok(found
                .config
                .and_then(|c| c.env)
                .unwrap_or_default()
                .iter()
                .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.to_string()))
                .collect()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(ProbeError::ImageMissing {
                host: self.name.clone(),
                image: image.to_string(),
            }),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// Starts the probe, waits for it and returns its stdout; a non-zero exit is an error with
    /// its stderr.
    async fn start_and_read(&self, name: &str) -> Result<String, ProbeError> {
        let name = &api_path::segment(name).map_err(|message| ProbeError::Failed {
            host: self.name.clone(),
            step: "start its container",
            message,
        })?;
        if let Err(e) = self
            .docker
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            return Err(self.start_error(e));
        }
        let exit = self.docker.wait_container(name, None).next().await;
        let (stdout, stderr) = self.probe_logs(name).await;
        match exit {
            Some(Ok(_)) => Ok(stdout),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Err(ProbeError::Failed {
                    host: self.name.clone(),
                    step: "run nvidia-smi",
                    message: format!("it exited with status {code}: {}", stderr.trim()),
                })
            }
            Some(Err(e)) => Err(ProbeError::Failed {
                host: self.name.clone(),
                step: "wait for nvidia-smi",
                message: e.to_string(),
            }),
            None => Err(ProbeError::Failed {
                host: self.name.clone(),
                step: "wait for nvidia-smi",
                message: "the engine ended the wait without an exit status".into(),
            }),
        }
    }

    /// The engine refuses to start a container that asks for GPUs when it has no NVIDIA
    /// toolkit ("could not select device driver ... with capabilities: [[utility]]").
    fn start_error(&self, e: bollard::errors::Error) -> ProbeError {
        let message = match &e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let no_driver = message.contains("could not select device driver")
            || message.contains("nvidia-container-cli")
            || message.contains("unknown or invalid runtime name: nvidia");
        if no_driver {
            ProbeError::NoNvidia {
                host: self.name.clone(),
                endpoint: self.endpoint.clone(),
                message,
            }
        } else {
            ProbeError::Failed {
                host: self.name.clone(),
                step: "start its container",
                message,
            }
        }
    }

    async fn probe_logs(&self, name: &str) -> (String, String) {
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let mut logs = self.docker.logs(name, Some(options));
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some(Ok(chunk)) = logs.next().await {
            match chunk {
                bollard::container::LogOutput::StdErr { message } => {
                    stderr.push_str(&String::from_utf8_lossy(&message))
                }
                other => stdout.push_str(&other.to_string()),
            }
        }
        (stdout, stderr)
    }

    async fn remove_probe(&self, name: &str) -> Result<(), bollard::errors::Error> {
        // `v`: with its anonymous volumes (an image's `VOLUME`s), which would outlive it.
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        // A name fleet made, or an id the engine gave: never `..`, so never refused.
        let Ok(name) = api_path::segment(name) else {
            return Ok(());
        };
        match self.docker.remove_container(&name, Some(options)).await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Removes this fleet's probe containers older than [`LEFTOVER_AGE`] (a probe in flight in
    /// another fleet process is younger).
    async fn remove_probe_leftovers(&self, fleet: &str) {
        let filters = HashMap::from([("label", vec![format!("{PROBE_LABEL}={fleet}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let Ok(found) = self.docker.list_containers(Some(options)).await else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for container in found {
            let old = now - container.created.unwrap_or(now) > LEFTOVER_AGE.as_secs() as i64;
            let labelled = container
                .labels
                .as_ref()
                .and_then(|l| l.get(PROBE_LABEL))
                .is_some_and(|v| v == fleet);
            if let (true, true, Some(id)) = (old, labelled, container.id) {
                tracing::info!("host `{}`: removing a leftover GPU probe {id}", self.name);
                let _ = self.remove_probe(&id).await;
            }
        }
    }
}

/// `fleet-gpu-probe-<fleet>-<nonce>`: unique, so that two fleet processes can probe at once.
fn probe_name(fleet: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "fleet-gpu-probe-{fleet}-{:x}{nanos:08x}",
        std::process::id()
    )
}

/// The probe container: the host's `nvidia-smi` by its absolute path as entrypoint (whatever
/// the image's own is, and whatever its `PATH` says), as `nobody`, with every variable the image
/// sets blanked (`LD_PRELOAD=` and the like: Docker cannot drop an image's variables, only
/// override them), every GPU with the `utility` capability only (no compute), and nothing else.
fn probe_body(fleet: &str, image: &str, image_env: &[String]) -> ContainerCreateBody {
    let mut env: Vec<String> = image_env.iter().map(|name| format!("{name}=")).collect();
    env.sort();
    env.dedup();
    ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec![NVIDIA_SMI_PATH.to_string()]),
        user: Some(PROBE_USER.to_string()),
        env: Some(env),
        cmd: Some(NVIDIA_SMI_ARGS.iter().map(|a| a.to_string()).collect()),
        labels: Some(HashMap::from([(
            PROBE_LABEL.to_string(),
            fleet.to_string(),
        )])),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            device_requests: Some(vec![DeviceRequest {
                driver: Some("nvidia".into()),
                count: Some(-1),
                capabilities: Some(vec![vec!["utility".into()]]),
                ..Default::default()
            }]),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(true),
            pids_limit: Some(64),
            memory: Some(256 << 20),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reads `index, uuid, name, memory.total [MiB]` lines followed by the health fields; a line
/// without its identity is an error that quotes it (nvidia-smi prints no secrets). A health
/// field that does not read as expected makes that GPU's health unknown, never healthy.
pub fn parse_nvidia_smi(output: &str) -> Result<Vec<ProbedGpu>, String> {
    let mut gpus = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed = match fields.as_slice() {
            [index, uuid, rest @ ..]
                if uuid.starts_with("GPU-") && rest.len() >= 2 + HEALTH_FIELDS.len() =>
            {
                let (name, tail) = rest.split_at(rest.len() - HEALTH_FIELDS.len() - 1);
                let (memory, health) = (tail[0], &tail[1..]);
                index
                    .parse::<u32>()
                    .ok()
                    .zip(memory.parse::<u64>().ok())
                    .map(|(index, mib)| ProbedGpu {
                        info: GpuInfo {
                            index,
                            uuid: uuid.to_string(),
                            name: name.join(","),
                            memory_total_bytes: mib << 20,
                        },
                        signals: health_signals(uuid, health),
                    })
            }
            _ => None,
        };
        match parsed {
            Some(gpu) => gpus.push(gpu),
            None => {
                let shown: String = line.chars().take(200).collect();
                return Err(format!(
                    "expected `index, GPU-uuid, name, memory MiB` and {} health fields, found `{shown}`",
                    HEALTH_FIELDS.len()
                ));
            }
        }
    }
    gpus.sort_by_key(|g| g.info.index);
    Ok(gpus)
}

/// nvidia-smi's words for a value it does not have: the GPU lacks the counter.
fn absent(text: &str) -> bool {
    let t = text.trim_matches(|c| c == '[' || c == ']');
    t.eq_ignore_ascii_case("N/A") || t.eq_ignore_ascii_case("Not Supported")
}

/// The health signals of one GPU from the query's health fields (in [`HEALTH_FIELDS`] order).
fn health_signals(uuid: &str, fields: &[&str]) -> GpuSignals {
    let mut s = GpuSignals {
        uuid: uuid.to_string(),
        ..GpuSignals::default()
    };
    let mut unreadable = Vec::new();
    let mut read = |i: usize, parse: &dyn Fn(&str) -> Option<u64>| -> Option<u64> {
        let text = fields.get(i).copied().unwrap_or("");
        if absent(text) {
            return None;
        }
        let value = parse(text);
        if value.is_none() {
            let shown: String = text.chars().take(40).collect();
            unreadable.push(format!("nvidia-smi's {} is `{shown}`", HEALTH_FIELDS[i]));
        }
        value
    };
    let number = |t: &str| t.parse::<u64>().ok();
    let yes_no = |t: &str| match t {
        "Yes" => Some(1),
        "No" => Some(0),
        _ => None,
    };
    let hex = |t: &str| {
        t.strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
    };
    s.memory_used_bytes = read(0, &number).map(|mib| mib << 20);
    s.temperature_celsius = read(1, &number).and_then(|t| u32::try_from(t).ok());
    s.ecc_uncorrected_volatile = read(2, &number);
    s.ecc_corrected_volatile = read(3, &number);
    s.retired_pages_pending = read(4, &yes_no).map(|v| v == 1);
    s.remapped_rows_pending = read(5, &yes_no).map(|v| v == 1);
    s.remapped_rows_failure = read(6, &yes_no).map(|v| v == 1);
    s.throttle = read(7, &hex).map(throttle_names).unwrap_or_default();
    s.unreadable = unreadable;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nvidia-smi` prints for the probe's query (recorded from the query's documented
    /// output format: `--format=csv,noheader,nounits`).
    const RECORDED: &str = "\
1, GPU-8c2f1b7e-0000-0000-0000-000000000002, NVIDIA H200, 143771, 2048, 88, 0, 12, No, Yes, No, 0x0000000000000040
0, GPU-8c2f1b7e-0000-0000-0000-000000000001, NVIDIA H200, 143771, 0, 34, 0, 0, No, No, No, 0x0000000000000001

";

    #[test]
    fn nvidia_smi_lines_become_gpus_in_index_order() {
        let gpus = parse_nvidia_smi(RECORDED).expect("parsed");
        assert_eq!(gpus.len(), 2);
        let first = &gpus[0].info;
        assert_eq!(first.index, 0);
        assert_eq!(first.uuid, "GPU-8c2f1b7e-0000-0000-0000-000000000001");
        assert_eq!(first.name, "NVIDIA H200");
        assert_eq!(first.memory_total_bytes, 143771 << 20);
        assert_eq!(parse_nvidia_smi(""), Ok(vec![]));
    }

    #[test]
    fn the_health_fields_become_signals() {
        let gpus = parse_nvidia_smi(RECORDED).expect("parsed");
        let idle = &gpus[0].signals;
        assert_eq!(idle.memory_used_bytes, Some(0));
        assert_eq!(idle.retired_pages_pending, Some(false));
        assert!(idle.throttle.is_empty(), "GPU idle is no slowdown");
        assert!(idle.unreadable.is_empty());
        let sick = &gpus[1].signals;
        assert_eq!(sick.uuid, "GPU-8c2f1b7e-0000-0000-0000-000000000002");
        assert_eq!(sick.memory_used_bytes, Some(2048 << 20));
        assert_eq!(sick.temperature_celsius, Some(88));
        assert_eq!(sick.ecc_corrected_volatile, Some(12));
        assert_eq!(sick.remapped_rows_pending, Some(true));
        assert_eq!(sick.throttle, ["hw_thermal_slowdown"]);
        // The probe lists no processes: a remote GPU is dirty by its memory alone.
        assert_eq!(sick.processes, None);
    }

    #[test]
    fn counters_a_gpu_lacks_are_absent_and_garbage_is_unknown() {
        let line =
            "0, GPU-a, Tesla T4, 15360, 0, 30, [N/A], [N/A], [N/A], [Not Supported], [N/A], 0x0";
        let gpu = &parse_nvidia_smi(line).expect("parsed")[0];
        assert_eq!(gpu.signals.ecc_uncorrected_volatile, None);
        assert_eq!(gpu.signals.remapped_rows_pending, None);
        assert!(gpu.signals.unreadable.is_empty(), "{:?}", gpu.signals);
        let line = "0, GPU-a, Tesla T4, 15360, 0, 30, 0, 0, Maybe, No, No, 0x0";
        let gpu = &parse_nvidia_smi(line).expect("parsed")[0];
        assert_eq!(
            gpu.signals.unreadable,
            ["nvidia-smi's retired_pages.pending is `Maybe`"]
        );
    }

    #[test]
    fn a_name_with_a_comma_is_kept_and_other_text_is_refused() {
        let gpus =
            parse_nvidia_smi("0, GPU-a, Tesla T4, rev. 2, 15360, 0, 30, 0, 0, No, No, No, 0x0")
                .expect("parsed");
        assert_eq!(gpus[0].info.name, "Tesla T4,rev. 2");
        let e = parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate")
            .expect_err("refused");
        assert!(e.contains("found `NVIDIA-SMI has failed"), "{e}");
        assert!(parse_nvidia_smi("x, GPU-a, T4, 1, 0, 30, 0, 0, No, No, No, 0x0").is_err());
        // The query without its health fields (an older fleet's) is refused, not half-read.
        assert!(parse_nvidia_smi("0, GPU-a, T4, 15360").is_err());
    }

    #[test]
    fn the_probe_runs_only_nvidia_smi_without_network_or_privileges() {
        let image_env = ["PATH".to_string(), "LD_PRELOAD".to_string()];
        let body = probe_body("zq", "runner:1", &image_env);
        // The host's tool by its path, not the image's by its PATH; not root; the image's
        // variables (LD_PRELOAD) blanked.
        assert_eq!(
            body.entrypoint,
            Some(vec!["/usr/bin/nvidia-smi".to_string()])
        );
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(
            body.env,
            Some(vec!["LD_PRELOAD=".to_string(), "PATH=".to_string()])
        );
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.readonly_rootfs, Some(true));
        let request = &host.device_requests.expect("a device request")[0];
        assert_eq!(request.count, Some(-1));
        assert_eq!(
            request.capabilities,
            Some(vec![vec!["utility".to_string()]])
        );
        assert_eq!(
            body.labels.and_then(|l| l.get(PROBE_LABEL).cloned()),
            Some("zq".to_string())
        );
        assert!(probe_name("zq").starts_with("fleet-gpu-probe-zq-"));
    }
}
