//! GPUs on a machine without them: declared inventories, placement across runs, the
//! over-subscription error, what the engine does with a GPU request, and `fleet gpus`.

mod common;

use common::{World, pool, stderr, stdout};

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
    let w = World::new();
    spec_env_mode(&w, 1);
    let out = w.apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // The engine here has no NVIDIA support: the plan says so and how to fix it.
    assert!(
        stdout(&out).contains("shows no NVIDIA support"),
        "{}",
        stdout(&out)
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
fn a_gpu_request_on_an_engine_without_nvidia_fails_clearly_and_leaves_nothing() {
    let w = World::new();
    // The default mode: a device request for the nvidia driver, by UUID.
    w.spec_with(
        &format!("{}    gpus: 2\n", pool("gpu", 1, true)),
        "unix:///var/run/docker.sock",
        GPUS,
    );
    let out = w.apply();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("could not select device driver \"nvidia\" with capabilities: [[gpu]]"),
        "{err}"
    );
    assert!(err.contains("install nvidia-container-toolkit on the host, run `nvidia-ctk runtime configure --runtime=docker`, and restart Docker"), "{err}");
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
fn fleet_gpus_without_nvidia_says_so_and_exits_0() {
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
