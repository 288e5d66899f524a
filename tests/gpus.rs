//! GPUs on a machine without them: declared inventories, placement across runs, the
//! over-subscription error, what the engine does with a GPU request, and, through the stand-in
//! NVML library (`tests/nvml_stub/`), `fleet gpus`, `gpus: auto` placement, NVML's failures, a
//! lost GPU, and the GPU use `fleet status` and `fleet watch`'s metrics show per runner.
//!
//! The engine's NVIDIA support is read from `docker info`, and each test asserts what holds on
//! this engine, so the suite passes here (no NVIDIA support) and on an NVIDIA host.

mod common;
#[path = "support/watch.rs"]
mod watch_process;

use std::time::Duration;

use common::nvml::{EngineNvidia, NvmlStub, StubGpu, StubInit};
use common::{World, pool, stderr, stdout};
use watch_process::{WatchProcess, sample};

const GPUS: &str = "[GPU-aaaa-0001, GPU-aaaa-0002, GPU-aaaa-0003, GPU-aaaa-0004]";

/// A GPU pool on a host with declared GPUs, in `gpu_mode: env` (the container only gets
/// NVIDIA_VISIBLE_DEVICES, so it starts on an engine without NVIDIA support).
fn spec_env_mode(w: &World, count: u32) {
    let path = w.spec_with(
        &format!("{}    gpus: 1\n", pool("gpu", count, true)),
        "unix:///var/run/docker.sock",
        GPUS,
    );
    let text = std::fs::read_to_string(&path).expect("spec");
    std::fs::write(
        &path,
        text.replace("    gpus: [GPU", "    gpu_mode: env\n    gpus: [GPU"),
    )
    .expect("spec");
}

fn gpu_of(w: &World, name: &str) -> String {
    w.inspect(name)["Config"]["Labels"]["fleet.gpus"]
        .as_str()
        .expect("ledger label")
        .to_string()
}

#[test]
fn placement_survives_runs_and_scale_up_takes_the_free_gpus() {
    let engine = EngineNvidia::read();
    let w = World::new();
    spec_env_mode(&w, 1);
    let out = w.apply();
    // The plan warns exactly when the engine shows no NVIDIA support, and says how to fix it.
    assert_eq!(
        stdout(&out).contains("shows no NVIDIA support"),
        !engine.shown_to_fleet(),
        "{engine:?}: {}",
        stdout(&out)
    );
    if !engine.env_mode_starts() {
        // An `nvidia` runtime (which `gpu_mode: env` uses) refuses UUIDs the driver does not
        // know: the start fails and is rolled back. Placement across runs is then covered by
        // the planner's property tests and by this test on engines without that runtime.
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("cannot start container"),
            "{}",
            stderr(&out)
        );
        assert!(w.owned_containers().is_empty());
        assert!(w.owned_runner_names().is_empty());
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let first = w.container_names("gpu");
    let gpu = gpu_of(&w, &first[0]);
    assert_eq!(gpu, "GPU-aaaa-0001");
    assert!(
        w.env_of(&first[0])
            .contains(&"NVIDIA_VISIBLE_DEVICES=GPU-aaaa-0001".to_string())
    );

    // Run fleet again: the ledger lives in the container's labels, nothing moves.
    let out = w.fleet(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // Scale up: the new runners get the free GPUs, the first keeps its own.
    spec_env_mode(&w, 3);
    let out = w.apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let names = w.container_names("gpu");
    assert_eq!(names.len(), 3);
    let mut held: Vec<String> = names.iter().map(|n| gpu_of(&w, n)).collect();
    assert_eq!(gpu_of(&w, &first[0]), gpu);
    held.sort();
    assert_eq!(held, ["GPU-aaaa-0001", "GPU-aaaa-0002", "GPU-aaaa-0003"]);
}

#[test]
fn asking_more_gpus_than_are_free_is_a_plan_error_and_nothing_is_created() {
    let w = World::new();
    spec_env_mode(&w, 5);
    let before = w.docker_snapshot();
    for command in [&["plan"][..], &["apply", "--auto-approve"][..]] {
        let out = w.fleet(command);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stderr(&out).contains(
                "host `local`: pool `gpu` wants 5 GPU(s) for 5 new runner(s) (1 per runner); 4 of 4 are free"
            ),
            "{}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty());
    }
    assert_eq!(w.docker_snapshot(), before);
    assert_eq!(w.fake.jit_configs_issued(), 0);
}

#[test]
fn a_gpu_request_for_gpus_the_engine_cannot_give_fails_clearly_and_leaves_nothing() {
    let engine = EngineNvidia::read();
    let w = World::new();
    // The default mode: a device request for the nvidia driver, by UUID (made-up UUIDs, which
    // no engine can give, with or without NVIDIA support).
    w.spec_with(
        &format!("{}    gpus: 2\n", pool("gpu", 1, true)),
        "unix:///var/run/docker.sock",
        GPUS,
    );
    let out = w.apply();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot start container"), "{err}");
    if !engine.any() {
        // Docker without the toolkit has no driver for the request.
        assert!(
            err.contains("could not select device driver \"nvidia\" with capabilities: [[gpu]]"),
            "{err}"
        );
        assert!(err.contains("install nvidia-container-toolkit on the host, run `nvidia-ctk runtime configure --runtime=docker`, and restart Docker"), "{err}");
    }
    // Rolled back: no container, no registration.
    assert!(w.owned_containers().is_empty());
    assert!(w.owned_runner_names().is_empty());
}

#[test]
fn the_engine_keeps_the_device_request_by_uuid_never_by_count() {
    use fleet::contract::RunnerConfig;
    use fleet::contract::container::{Registration, RunnerContainer};
    use fleet::docker::DockerHost;
    use fleet::secret::Secret;

    let w = World::new();
    let path = w.spec_with(
        &format!("{}    gpus: 2\n", pool("gpu", 1, true)),
        "unix:///var/run/docker.sock",
        GPUS,
    );
    let spec = fleet::spec::load(&path).expect("spec");
    let resolved = spec.resolved_pools().remove(0);
    let config = RunnerConfig::for_pool(&w.run, &resolved);
    let name = format!("{}-gpu-inspect", w.run);
    let gpus = vec!["GPU-aaaa-0002".to_string(), "GPU-aaaa-0004".to_string()];
    let body = RunnerContainer {
        fleet: &w.run,
        pool: &resolved,
        config: &config,
        name: &name,
        gpus: &gpus,
        host_has_gpus: true,
        nvidia_runtime: false,
        registration: Registration::Jit(Secret::new("not-a-real-jit-config")),
    }
    .body();
    w.rt.block_on(async {
        let host = DockerHost::connect("local", None, &|_| None)
            .await
            .expect("docker");
        host.write()
            .create_container(&name, body)
            .await
            .expect("create");
    });
    let requests = w.inspect(&name)["HostConfig"]["DeviceRequests"].clone();
    assert_eq!(
        requests,
        serde_json::json!([{
            "Driver": "nvidia", "Count": 0, "DeviceIDs": ["GPU-aaaa-0002", "GPU-aaaa-0004"],
            "Capabilities": [["gpu"]], "Options": null
        }]),
    );
}

#[test]
fn fleet_gpus_with_the_default_library_lists_this_machines_gpus_or_says_there_are_none() {
    let w = World::new();
    let out = w.fleet(&["gpus"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    // On a machine with NVIDIA GPUs this lists them instead; CI has none.
    if !text.contains("UUID") {
        assert!(text.starts_with("no NVIDIA GPUs found: "), "{text}");
        assert!(text.contains("libnvidia-ml.so.1"), "{text}");
    }
    let out = w.fleet(&["gpus", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(value["gpus"].is_array());
    if value["gpus"].as_array().is_some_and(|a| a.is_empty()) {
        assert!(value["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
}

/// The stand-in's GPUs 0 and 1 as `fleet gpus --format json` shows them.
fn stand_in_json(gpus: &[StubGpu]) -> serde_json::Value {
    gpus.iter()
        .enumerate()
        .map(|(i, g)| {
            serde_json::json!({
                "index": i, "uuid": g.uuid, "name": g.name,
                "memory_total_bytes": g.memory_total_bytes, "memory_used_bytes": g.memory_used_bytes,
                "utilization_percent": g.utilization_percent,
                "temperature_celsius": g.temperature_celsius, "processes": g.processes,
                "health": "healthy", "health_reasons": [],
            })
        })
        .collect()
}

#[test]
fn fleet_gpus_shows_every_field_nvml_reports() {
    let w = World::new();
    let gpus = [StubGpu::numbered(0), StubGpu::numbered(1)];
    let stub = NvmlStub::new(w.dir.path(), &gpus);

    let out = w.fleet_nvml(&stub, &["gpus"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "INDEX", "UUID", "NAME", "MEMORY", "USED", "/", "TOTAL", "UTIL", "TEMP", "PROCS",
                "HEALTH"
            ],
            vec![
                "0",
                &gpus[0].uuid,
                "NVIDIA",
                "H200",
                "1.0",
                "/",
                "80.0",
                "GiB",
                "10%",
                "40°C",
                "0",
                "healthy"
            ],
            vec![
                "1",
                &gpus[1].uuid,
                "NVIDIA",
                "H200",
                "2.0",
                "/",
                "80.0",
                "GiB",
                "30%",
                "41°C",
                "1",
                "healthy"
            ],
        ],
        "{text}"
    );

    let out = w.fleet_nvml(&stub, &["gpus", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        value,
        serde_json::json!({ "gpus": stand_in_json(&gpus), "unreadable": [], "reason": null })
    );
}

#[test]
fn nvml_failures_are_clear_errors_with_exit_1() {
    let w = World::new();
    let gpus = [StubGpu::numbered(0), StubGpu::numbered(1)];
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    let cases = [
        (StubInit::DriverNotLoaded, "the NVIDIA driver is not loaded"),
        (
            StubInit::NoPermission,
            "no permission to the NVIDIA devices (/dev/nvidia*)",
        ),
    ];
    for (init, message) in cases {
        stub.write(init, &gpus);
        for format in ["text", "json"] {
            let out = w.fleet_nvml(&stub, &["gpus", "--format", format]);
            assert_eq!(out.status.code(), Some(1), "{init:?}: {}", stdout(&out));
            assert!(stdout(&out).is_empty(), "{}", stdout(&out));
            let err = stderr(&out);
            assert!(err.starts_with("error: NVML"), "{err}");
            assert!(err.contains(message), "{err}");
        }
    }

    // A library that FLEET_NVML_LIBRARY names but that is not there is an error, not "no GPUs".
    let missing = w.dir.path().join("nowhere/libnvidia-ml.so.1");
    let out = w.fleet_with_env(
        &["gpus"],
        &[("FLEET_NVML_LIBRARY", &missing.display().to_string())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the NVIDIA management library that FLEET_NVML_LIBRARY names ({}) cannot be loaded",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );

    // A lost GPU: the others are listed, the lost one is an error.
    let mut lost = gpus.clone();
    lost[0].lost = true;
    stub.write(StubInit::Ok, &lost);
    let out = w.fleet_nvml(&stub, &["gpus"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains(&gpus[1].uuid), "{}", stdout(&out));
    assert!(!stdout(&out).contains(&gpus[0].uuid), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("error: GPU 0 is lost: NVML says it has fallen off the bus"),
        "{}",
        stderr(&out)
    );
    let out = w.fleet_nvml(&stub, &["gpus", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut listed = stand_in_json(&gpus[1..]);
    listed[0]["index"] = 1.into();
    assert_eq!(value["gpus"], listed);
    assert_eq!(value["unreadable"][0]["index"], 0);
    assert_eq!(value["unreadable"][0]["lost"], true);
}

#[test]
fn gpus_auto_places_runners_on_the_gpus_nvml_reports() {
    let w = World::new();
    let gpus = [StubGpu::idle(0), StubGpu::idle(1), StubGpu::idle(2)];
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 2, true)));
    let out = w.fleet_nvml(&stub, &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // Changes are sorted by runner name, and names are random: compare the set.
    let mut assigned: Vec<String> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["gpus"].to_string())
        .collect();
    assigned.sort();
    assert_eq!(
        assigned,
        [
            serde_json::json!([gpus[0].uuid]).to_string(),
            serde_json::json!([gpus[1].uuid]).to_string()
        ],
        "{plan}"
    );

    // NVML failing on a `gpus: auto` host: nothing to place on, and the plan says why.
    stub.write(StubInit::DriverNotLoaded, &gpus);
    let out = w.fleet_nvml(&stub, &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "pool `gpu` wants 2 GPU(s) for 2 new runner(s) (1 per runner); 0 of 0 are free"
        ),
        "{err}"
    );
    assert!(err.contains("the NVIDIA driver is not loaded"), "{err}");
}

#[test]
fn a_gpu_lost_between_two_plans_replaces_its_runner() {
    let w = World::new();
    let mut gpus = vec![StubGpu::idle(0), StubGpu::idle(1), StubGpu::idle(2)];
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    let spec = w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 2, true)));
    let names = w.gpu_runners(&stub, &spec, 2);
    let holder = |uuid: &str| {
        names
            .iter()
            .find(|n| w.ledger(n) == uuid)
            .cloned()
            .expect("a runner holds the GPU")
    };
    let (keeper, victim) = (holder(&gpus[0].uuid), holder(&gpus[1].uuid));
    let out = w.fleet_nvml(&stub, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // GPU 1 falls off the bus: its runner is replaced onto the spare GPU, the other stays.
    gpus[1].lost = true;
    stub.write(StubInit::Ok, &gpus);
    let out = w.fleet_nvml(&stub, &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("GPU 1 is lost")
            && stderr(&out).contains("left out of this machine's GPU inventory"),
        "{}",
        stderr(&out)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let changes = plan["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{plan}");
    assert_eq!(changes[0]["action"], "replace");
    assert_eq!(changes[0]["name"], victim.as_str());
    assert_eq!(
        changes[0]["reasons"],
        serde_json::json!([format!(
            "GPU {} is lost: no longer in host `local`'s inventory, and NVML reports a GPU there fallen off the bus",
            gpus[1].uuid
        )])
    );
    assert_eq!(changes[0]["gpus"], serde_json::json!([gpus[2].uuid]));
    assert!(!plan.to_string().contains(&keeper));

    // With no GPU left to move to, the plan fails and says so: the runner stays as it is.
    gpus[2].lost = true;
    stub.write(StubInit::Ok, &gpus);
    let out = w.fleet_nvml(&stub, &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(
            "pool `gpu` wants 1 GPU(s) for 1 new runner(s) (1 per runner); 0 of 1 are free"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_and_watch_metrics_show_each_runners_gpu_use() {
    let w = World::new();
    let mut gpus = vec![StubGpu::numbered(0), StubGpu::numbered(1)];
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    let spec = w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 2, true)));
    let names = w.gpu_runners(&stub, &spec, 2);

    let out = w.fleet_nvml(&stub, &["status", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let runners = status["pools"][0]["runners"].as_array().expect("runners");
    assert_eq!(runners.len(), 2, "{status}");
    for r in runners {
        let held = &r["gpus"][0];
        let gpu = gpus
            .iter()
            .find(|g| held["uuid"] == g.uuid.as_str())
            .expect("a stand-in GPU");
        assert_eq!(
            held,
            &serde_json::json!({
                "uuid": gpu.uuid, "utilization_percent": gpu.utilization_percent,
                "memory_used_bytes": gpu.memory_used_bytes, "memory_total_bytes": gpu.memory_total_bytes,
            })
        );
    }
    let out = w.fleet_nvml(&stub, &["status"]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{} 10% 1.0/80.0GiB", gpus[0].uuid))
            && text.contains(&format!("{} 30% 2.0/80.0GiB", gpus[1].uuid)),
        "{text}"
    );

    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    let gpu_sample = |page: &str, metric: &str, gpu: &StubGpu| {
        let runner = names
            .iter()
            .find(|n| w.ledger(n) == gpu.uuid)
            .expect("holder");
        sample(
            page,
            metric,
            &[("host", "local"), ("uuid", &gpu.uuid), ("runner", runner)],
        )
    };
    watch.eventually(Duration::from_secs(30), "GPU gauges", || {
        gpu_sample(&watch.metrics(), "fleet_gpu_utilization_ratio", &gpus[1]) == Some(0.3)
    });
    let page = watch.metrics();
    assert_eq!(
        gpu_sample(&page, "fleet_gpu_utilization_ratio", &gpus[0]),
        Some(0.1)
    );
    for g in &gpus {
        assert_eq!(
            gpu_sample(&page, "fleet_gpu_memory_used_bytes", g),
            Some(g.memory_used_bytes as f64),
            "{page}"
        );
        assert_eq!(
            gpu_sample(&page, "fleet_gpu_memory_total_bytes", g),
            Some(g.memory_total_bytes as f64),
            "{page}"
        );
    }

    // NVML is read at every reconcile: a change shows at the next resync.
    gpus[0].utilization_percent = 95;
    stub.write(StubInit::Ok, &gpus);
    watch.eventually(Duration::from_secs(30), "the new utilization", || {
        gpu_sample(&watch.metrics(), "fleet_gpu_utilization_ratio", &gpus[0]) == Some(0.95)
    });
}
