//! GPU health through the stand-in NVML library (`tests/nvml_stub/`): what `fleet gpus` shows
//! for each signal, and that `plan` gives no new runner a GPU that is unhealthy, dirty, unknown
//! or disabled, and says which pool runs short (docs/gpu-health.md).

mod common;

use common::nvml::{NvmlStub, StubGpu, StubInit};
use common::{World, pool, stderr, stdout};

fn four_gpus() -> Vec<StubGpu> {
    (0..4).map(StubGpu::idle).collect()
}

#[test]
fn fleet_gpus_shows_each_gpus_health_and_why() {
    let w = World::new();
    let gpus = four_gpus();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    let extra = format!(
        "health {} remapped_pending=1\nevent 1 {} xid 79\nevent 2 {} xid 13\nhealth {} fail=ecc\nhealth {} throttle=40\n",
        gpus[0].uuid, gpus[1].uuid, gpus[2].uuid, gpus[3].uuid, gpus[2].uuid
    );
    stub.write_with(StubInit::Ok, &gpus, &extra);
    let out = w.fleet_nvml(&stub, &["gpus", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let health = |i: usize| value["gpus"][i]["health"].as_str().unwrap_or("?").to_string();
    let reasons = |i: usize| value["gpus"][i]["health_reasons"].to_string();
    assert_eq!(health(0), "unhealthy", "{value}");
    assert!(reasons(0).contains("memory rows pending remapping"), "{value}");
    assert_eq!(health(1), "unhealthy", "{value}");
    assert!(reasons(1).contains("critical Xid 79"), "{value}");
    // An application Xid is the job's fault: the GPU stays usable (degraded only by its
    // thermal slowdown).
    assert_eq!(health(2), "degraded", "{value}");
    assert!(reasons(2).contains("hw_thermal_slowdown"), "{value}");
    // A driver that answers garbage: unknown, never healthy.
    assert_eq!(health(3), "unknown", "{value}");
    assert!(reasons(3).contains("corrected ECC errors"), "{value}");

    let out = w.fleet_nvml(&stub, &["gpus"]);
    let text = stdout(&out);
    assert!(text.contains("HEALTH"), "{text}");
    assert!(
        text.contains("unhealthy: critical Xid 79 reported by the driver"),
        "{text}"
    );
}

#[test]
fn plan_places_no_runner_on_an_unhealthy_dirty_or_disabled_gpu() {
    let w = World::new();
    let gpus = four_gpus();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    // GPU 0: a critical Xid; GPU 1: a process left by a job that no runner holds; GPU 3: the
    // spec takes it out of service. Only GPU 2 is fit.
    let extra = format!(
        "event 1 {} xid 79\nprocess {} 4242 2147483648\n",
        gpus[0].uuid, gpus[1].uuid
    );
    stub.write_with(StubInit::Ok, &gpus, &extra);
    let spec = w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 2, true)));
    let text = std::fs::read_to_string(&spec).expect("spec");
    std::fs::write(
        &spec,
        text.replace(
            "    gpu_mode: env\n",
            &format!("    gpu_mode: env\n    gpus_disabled: [{}]\n", gpus[3].uuid),
        ),
    )
    .expect("spec");

    let out = w.fleet_nvml(&stub, &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let changes = plan["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{plan}");
    assert_eq!(changes[0]["gpus"], serde_json::json!([gpus[2].uuid]));
    let warnings = plan["warnings"].to_string();
    for expected in [
        format!(
            "host `local`: GPU {} is unhealthy (critical Xid 79 reported by the driver): no new runner gets it",
            gpus[0].uuid
        ),
        format!("GPU {} is dirty (1 compute process(es)", gpus[1].uuid),
        "PID 4242 using 2048 MiB".to_string(),
        format!(
            "GPU {} is disabled (taken out of service in hosts.local.gpus_disabled)",
            gpus[3].uuid
        ),
        "pool `gpu` runs 1 runner(s) short on host `local` because of GPU health".to_string(),
    ] {
        assert!(warnings.contains(&expected), "{expected}\n{warnings}");
    }

    // The leaked process ends: the GPU is clean again and the pool is whole.
    let extra = format!("event 1 {} xid 79\n", gpus[0].uuid);
    stub.write_with(StubInit::Ok, &gpus, &extra);
    let out = w.fleet_nvml(&stub, &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut placed: Vec<String> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["gpus"][0].as_str().unwrap_or_default().to_string())
        .collect();
    placed.sort();
    assert_eq!(placed, [gpus[1].uuid.clone(), gpus[2].uuid.clone()], "{plan}");
}
