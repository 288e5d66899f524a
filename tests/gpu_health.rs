//! GPU health through the stand-in NVML library (`tests/nvml_stub/`): what `fleet gpus` shows
//! for each signal, and that `plan` gives no new runner a GPU that is unhealthy, dirty, unknown
//! or disabled, and says which pool runs short (docs/gpu-health.md).

mod common;
#[path = "support/watch.rs"]
mod watch_process;

use std::time::Duration;

use common::nvml::{EngineNvidia, NvmlStub, StubGpu, StubInit};
use common::{World, pool, stderr, stdout};
use watch_process::WatchProcess;

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
    let health = |i: usize| {
        value["gpus"][i]["health"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    };
    let reasons = |i: usize| value["gpus"][i]["health_reasons"].to_string();
    assert_eq!(health(0), "unhealthy", "{value}");
    assert!(
        reasons(0).contains("memory rows pending remapping"),
        "{value}"
    );
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
    let changes: Vec<&serde_json::Value> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] == "create")
        .collect();
    assert_eq!(changes.len(), 1, "{plan}");
    assert_eq!(changes[0]["gpus"], serde_json::json!([gpus[2].uuid]));
    // The unhealthy GPU would be quarantined by an apply.
    assert!(
        plan["changes"]
            .to_string()
            .contains(&format!("quarantine GPU {}: critical Xid 79", gpus[0].uuid)),
        "{plan}"
    );
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
        .filter(|c| c["action"] == "create")
        .map(|c| c["gpus"][0].as_str().unwrap_or_default().to_string())
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [gpus[1].uuid.clone(), gpus[2].uuid.clone()],
        "{plan}"
    );
}

/// The labels of the GPU quarantine records of this run, by GPU.
fn quarantine_records(w: &World) -> Vec<(String, serde_json::Value)> {
    w.owned_volumes()
        .into_iter()
        .filter_map(|name| {
            let out = common::docker_ok(&["volume", "inspect", &name]);
            let value: serde_json::Value = serde_json::from_str(&out).expect("volume JSON");
            let labels = value[0]["Labels"].clone();
            labels["fleet.gpu-quarantine"]
                .as_str()
                .map(|uuid| (uuid.to_string(), labels.clone()))
        })
        .collect()
}

#[test]
fn a_critical_xid_quarantines_the_gpu_until_the_operator_releases_it() {
    let w = World::new();
    let gpus = four_gpus();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    // A pool that asks for GPUs but no runner: only the quarantine is applied.
    w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 0, true)));
    stub.write_with(
        StubInit::Ok,
        &gpus,
        &format!("event 1 {} xid 79\n", gpus[0].uuid),
    );
    let out = w.fleet_nvml(&stub, &["apply", "--auto-approve"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(&format!("quarantine GPU {}: critical Xid 79", gpus[0].uuid)),
        "{}",
        stdout(&out)
    );
    let records = quarantine_records(&w);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].0, gpus[0].uuid);
    assert_eq!(records[0].1["fleet.gpu-quarantine.until-reset"], "false");
    assert!(
        records[0].1["fleet.gpu-quarantine.since"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );

    // The Xid is not reported again (a new process, a new event set): the record holds the
    // GPU back, and nothing more is planned.
    stub.write(StubInit::Ok, &gpus);
    let out = w.fleet_nvml(&stub, &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(plan["changes"], serde_json::json!([]), "{plan}");
    assert!(
        plan["warnings"].to_string().contains(&format!(
            "GPU {} is unhealthy (quarantined (critical Xid 79 reported by the driver), until `fleet gpus --release {}`)",
            gpus[0].uuid, gpus[0].uuid
        )),
        "{plan}"
    );

    // Released by the operator, who is told what was released.
    let out = w.fleet_nvml(&stub, &["gpus", "--release", &gpus[0].uuid]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!(
            "released the quarantine of GPU {} on host `local` (quarantined since ",
            gpus[0].uuid
        )),
        "{}",
        stdout(&out)
    );
    assert!(quarantine_records(&w).is_empty());
    let out = w.fleet_nvml(&stub, &["plan", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        !plan["warnings"].to_string().contains(&gpus[0].uuid),
        "{plan}"
    );
    // Nothing left to release: an error, and nothing changed.
    let out = w.fleet_nvml(
        &stub,
        &["gpus", "--release", &gpus[0].uuid, "--host", "local"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("has no quarantine record of fleet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_quarantine_for_pending_remapping_ends_when_nvml_reports_the_reset_done() {
    let w = World::new();
    let gpus = four_gpus();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 0, true)));
    stub.write_with(
        StubInit::Ok,
        &gpus,
        &format!("health {} remapped_pending=1\n", gpus[1].uuid),
    );
    let out = w.fleet_nvml(&stub, &["apply", "--auto-approve"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let records = quarantine_records(&w);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].1["fleet.gpu-quarantine.until-reset"], "true");

    // The GPU is reset: the record goes with the next apply.
    stub.write(StubInit::Ok, &gpus);
    let out = w.fleet_nvml(&stub, &["apply", "--auto-approve"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(&format!(
            "GPU {} was reset: NVML no longer reports memory pending retirement or remapping",
            gpus[1].uuid
        )),
        "{}",
        stdout(&out)
    );
    assert!(quarantine_records(&w).is_empty());
}

#[test]
fn under_watch_a_critical_xid_moves_the_idle_runner_and_the_quarantine_outlives_a_restart() {
    let w = World::new();
    let gpus: Vec<StubGpu> = (0..2).map(StubGpu::idle).collect();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    let spec = w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 1, true)));
    let runner = w.gpu_runners(&stub, &spec, 1).remove(0);
    let (sick, spare) = if w.ledger(&runner) == gpus[0].uuid {
        (&gpus[0], &gpus[1])
    } else {
        (&gpus[1], &gpus[0])
    };
    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    // The driver reports an Xid 79 on the idle runner's GPU while watch runs.
    stub.write_with(
        StubInit::Ok,
        &gpus,
        &format!("event 1 {} xid 79\n", sick.uuid),
    );
    watch.eventually(Duration::from_secs(30), "the quarantine record", || {
        quarantine_records(&w)
            .iter()
            .any(|(uuid, _)| uuid == &sick.uuid)
    });
    if EngineNvidia::read().env_mode_starts() {
        // The idle runner leaves the GPU for the healthy one.
        moved_to(&w, &watch, &runner, &spare.uuid);
    }
    drop(watch);

    // A new watch (the event is not reported again) keeps the GPU quarantined: nothing moves.
    stub.write(StubInit::Ok, &gpus);
    let before = w.container_names("gpu");
    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    watch.eventually(Duration::from_secs(30), "a reconcile", || {
        watch_process::sample(
            &watch.metrics(),
            "fleet_reconcile_total",
            &[("trigger", "resync"), ("result", "ok")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    assert_eq!(w.container_names("gpu"), before);
    assert_eq!(quarantine_records(&w).len(), 1);
    assert_eq!(
        watch_process::sample(
            &watch.metrics(),
            "fleet_gpu_health",
            &[("uuid", &sick.uuid), ("state", "unhealthy")]
        ),
        Some(1.0),
        "{}",
        watch.metrics()
    );
    drop(watch);

    let out = w.fleet_nvml(&stub, &["gpus", "--release", &sick.uuid, "--host", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(quarantine_records(&w).is_empty());
}

#[test]
fn an_application_xid_quarantines_nothing() {
    let w = World::new();
    let gpus = four_gpus();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 0, true)));
    stub.write_with(
        StubInit::Ok,
        &gpus,
        &format!("event 1 {} xid 13\n", gpus[2].uuid),
    );
    let out = w.fleet_nvml(&stub, &["apply", "--auto-approve"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(&format!(
            "application Xid 13 on GPU {}, held by no runner: a fault of its job, not of the GPU",
            gpus[2].uuid
        )),
        "{}",
        stdout(&out)
    );
    assert!(quarantine_records(&w).is_empty());
}

/// Reconciles `fleet watch` made for NVML events, finished without error.
fn gpu_reconciles(watch: &WatchProcess) -> f64 {
    watch_process::sample(
        &watch.metrics(),
        "fleet_reconcile_total",
        &[("trigger", "gpu"), ("result", "ok")],
    )
    .unwrap_or(0.0)
}

/// Writes an Xid 79 on `gpu` (with every earlier event line, so the serials stay delivered
/// once) and returns how long until the reconcile it wakes has ended.
fn xid_to_reconcile(
    watch: &WatchProcess,
    stub: &NvmlStub,
    gpus: &[StubGpu],
    events: &mut String,
    gpu: &StubGpu,
) -> Duration {
    let serial = events.lines().count() + 1;
    events.push_str(&format!("event {serial} {} xid 79\n", gpu.uuid));
    let before = gpu_reconciles(watch);
    let at = std::time::Instant::now();
    stub.write_with(StubInit::Ok, gpus, events);
    while gpu_reconciles(watch) <= before {
        assert!(
            at.elapsed() < Duration::from_secs(20),
            "no reconcile for the Xid on {}; watch log:\n{}",
            gpu.uuid,
            watch.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    at.elapsed()
}

#[test]
fn under_watch_an_xid_wakes_a_reconcile_at_once_the_event_thread_survives_the_driver_and_stops_with_watch()
 {
    let w = World::new();
    let gpus: Vec<StubGpu> = (0..8).map(StubGpu::idle).collect();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 0, true)));
    // No resync within the test: only the events start reconciles.
    let mut watch = WatchProcess::start(&w, &["--resync", "1h"], &stub.env());
    watch.eventually(Duration::from_secs(30), "the event thread", || {
        watch.log().contains("NVML: waiting for Xid and ECC events")
            && watch_process::sample(
                &watch.metrics(),
                "fleet_reconcile_total",
                &[("trigger", "start")],
            )
            .is_some()
    });

    // Idle, the event thread sleeps in the driver's wait.
    let idle_from = watch
        .thread_cpu_ticks("fleet-nvml-evts")
        .expect("the thread");
    std::thread::sleep(Duration::from_secs(5));
    let idle_ticks = watch
        .thread_cpu_ticks("fleet-nvml-evts")
        .expect("the thread")
        - idle_from;
    eprintln!("event thread CPU while idle: {idle_ticks} tick(s) in 5 s");
    assert!(idle_ticks <= 5, "{idle_ticks} ticks in 5 s");

    let mut events = String::new();
    let mut latencies = Vec::new();
    for gpu in &gpus[..5] {
        latencies.push(xid_to_reconcile(&watch, &stub, &gpus, &mut events, gpu));
    }
    assert_eq!(quarantine_records(&w).len(), 5, "{}", watch.log());

    // The driver goes away and comes back: the thread opens NVML and waits again.
    stub.write_with(StubInit::DriverNotLoaded, &gpus, &events);
    watch.eventually(Duration::from_secs(10), "the failed wait", || {
        watch.log().contains("NVML's event wait failed")
    });
    stub.write_with(StubInit::Ok, &gpus, &events);
    watch.eventually(Duration::from_secs(20), "the set made again", || {
        watch
            .log()
            .matches("NVML: waiting for Xid and ECC events")
            .count()
            == 2
    });
    // Its GPUs read unknown meanwhile: the set made again wakes a reconcile of its own.
    watch.eventually(
        Duration::from_secs(20),
        "the reconcile after NVML came back",
        || gpu_reconciles(&watch) >= 6.0,
    );
    latencies.push(xid_to_reconcile(
        &watch,
        &stub,
        &gpus,
        &mut events,
        &gpus[5],
    ));
    eprintln!("Xid to reconcile ended: {latencies:?}");
    latencies.sort();
    assert!(
        latencies[latencies.len() / 2] < Duration::from_secs(1),
        "{latencies:?}"
    );
    assert_eq!(quarantine_records(&w).len(), 6, "{}", watch.log());

    // The thread stops with watch.
    let stopping = std::time::Instant::now();
    let status = watch.terminate();
    assert!(status.success(), "{status:?}\n{}", watch.log());
    assert!(stopping.elapsed() < Duration::from_secs(10));
    for gpu in &gpus[..6] {
        let out = w.fleet_nvml(&stub, &["gpus", "--release", &gpu.uuid, "--host", "local"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
}

/// The id of container `name`; empty while there is none (between removal and creation).
fn container_id(name: &str) -> String {
    let out = common::docker(&["inspect", "--format", "{{.Id}}", name]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn under_watch_an_idle_persistent_runner_left_dirty_is_made_again_in_place_once() {
    if !EngineNvidia::read().env_mode_starts() {
        eprintln!("skipped: this engine's nvidia runtime refuses the stand-in's GPUs");
        return;
    }
    let w = World::new();
    let mut gpus: Vec<StubGpu> = (0..2).map(StubGpu::idle).collect();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    let spec = w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 1, false)));
    let runner = w.gpu_runners(&stub, &spec, 1).remove(0);
    // The runner registers itself on its state volume, as config.sh does.
    let registration = w.config_sh(&runner).expect("registered");
    let held = w.ledger(&runner);
    let before = container_id(&runner);
    let state = w.state_mount(&runner);

    // A killed job left 3 GiB on the idle runner's GPU.
    for g in gpus.iter_mut().filter(|g| g.uuid == held) {
        g.memory_used_bytes = 3 << 30;
    }
    stub.write(StubInit::Ok, &gpus);
    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    watch.eventually(Duration::from_secs(60), "the runner made again", || {
        let now = container_id(&runner);
        !now.is_empty() && now != before
    });
    // In place: same name, GPU, state volume and registration.
    assert_eq!(w.ledger(&runner), held);
    assert_eq!(w.state_mount(&runner), state);
    assert_eq!(w.runner_id(&runner), Some(registration));
    // The memory stays held (something outside the container): not made again and again.
    let after = container_id(&runner);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(container_id(&runner), after, "{}", watch.log());
}

/// The GPU ledger label of container `name`; `None` once it is gone (watch may remove it
/// between a listing and this look).
fn ledger_of(name: &str) -> Option<String> {
    let format = "{{index .Config.Labels \"fleet.gpus\"}}";
    let out = common::docker(&["inspect", "--format", format, name]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until pool `gpu` has one runner other than `old`, running on GPU `uuid` (so that the
/// apply that made it is done); returns its name.
fn moved_to(w: &World, watch: &WatchProcess, old: &str, uuid: &str) -> String {
    let mut found = String::new();
    watch.eventually(
        Duration::from_secs(60),
        "the runner on the other GPU",
        || {
            let running: Vec<String> = w
                .owned_containers()
                .into_iter()
                .filter(|(_, state)| state == "running")
                .map(|(name, _)| name)
                .collect();
            let names = w.container_names("gpu");
            let moved = names.len() == 1
                && names[0] != old
                && running.contains(&names[0])
                && ledger_of(&names[0]).is_some_and(|l| l == uuid);
            if moved {
                found = names[0].clone();
            }
            moved
        },
    );
    found
}

/// A pool `gpu` of one ephemeral runner on one of two stand-in GPUs, applied; returns the
/// GPUs, the stand-in, the runner and which GPU it holds (`None` where this engine cannot
/// start `gpu_mode: env` containers).
fn one_gpu_runner(w: &World) -> Option<(Vec<StubGpu>, NvmlStub, String, usize)> {
    if !EngineNvidia::read().env_mode_starts() {
        eprintln!("skipped: this engine's nvidia runtime refuses the stand-in's GPUs");
        return None;
    }
    let gpus: Vec<StubGpu> = (0..2).map(StubGpu::idle).collect();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    let spec = w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 1, true)));
    let runner = w.gpu_runners(&stub, &spec, 1).remove(0);
    let held = usize::from(w.ledger(&runner) != gpus[0].uuid);
    Some((gpus, stub, runner, held))
}

#[test]
fn under_watch_a_process_leaked_by_an_ephemeral_runner_keeps_its_gpu_until_it_ends() {
    let w = World::new();
    let Some((gpus, stub, runner, held)) = one_gpu_runner(&w) else {
        return;
    };
    let (dirty, clean) = (&gpus[held], &gpus[1 - held]);
    // The job's process outlives the runner: this test's own PID, a host process.
    let leak = format!("process {} {} 2147483648\n", dirty.uuid, std::process::id());
    stub.write_with(StubInit::Ok, &gpus, &leak);
    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    w.finish_job(&runner);
    let replacement = moved_to(&w, &watch, &runner, &clean.uuid);
    let out = w.fleet_nvml(&stub, &["plan", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        plan["warnings"].to_string().contains(&format!(
            "PID {} using 2048 MiB, a host process",
            std::process::id()
        )),
        "{plan}"
    );
    let health = |state: &str| {
        watch_process::sample(
            &watch.metrics(),
            "fleet_gpu_health",
            &[("uuid", &dirty.uuid), ("state", state)],
        )
    };
    watch.eventually(Duration::from_secs(30), "the GPU dirty", || {
        health("dirty") == Some(1.0)
    });
    // The process ends: the GPU is clean again, and the runner stays where it is.
    stub.write(StubInit::Ok, &gpus);
    watch.eventually(Duration::from_secs(30), "the GPU healthy again", || {
        health("healthy") == Some(1.0)
    });
    assert_eq!(w.container_names("gpu"), [replacement]);
}

#[test]
fn under_watch_a_gpu_disabled_in_the_spec_is_left_by_its_idle_runner() {
    let w = World::new();
    let Some((gpus, stub, runner, held)) = one_gpu_runner(&w) else {
        return;
    };
    let spec = w.dir.path().join("fleet.yaml");
    let text = std::fs::read_to_string(&spec).expect("spec");
    let disabled = format!(
        "    gpu_mode: env\n    gpus_disabled: [{}]\n",
        gpus[held].uuid
    );
    std::fs::write(&spec, text.replace("    gpu_mode: env\n", &disabled)).expect("spec");
    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    moved_to(&w, &watch, &runner, &gpus[1 - held].uuid);
    assert!(
        quarantine_records(&w).is_empty(),
        "disabled is not quarantined"
    );
}

#[test]
fn under_watch_a_busy_runner_whose_gpu_fails_finishes_its_job_and_is_not_replaced_there() {
    let w = World::new();
    let Some((gpus, stub, runner, held)) = one_gpu_runner(&w) else {
        return;
    };
    let id = w.runner_id(&runner).expect("registered");
    w.fake.set_runner_state(&w.scope, id, true, true);
    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    let mut events = String::new();
    xid_to_reconcile(&watch, &stub, &gpus, &mut events, &gpus[held]);
    watch.eventually(Duration::from_secs(30), "the quarantine record", || {
        quarantine_records(&w).len() == 1
    });
    // Busy: never stopped, whatever its GPU says.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.container_names("gpu"), std::slice::from_ref(&runner));
    assert_eq!(
        common::docker_ok(&["inspect", "--format", "{{.State.Running}}", &runner]).trim(),
        "true"
    );
    // Its job ends: the replacement goes to the healthy GPU.
    w.finish_job(&runner);
    moved_to(&w, &watch, &runner, &gpus[1 - held].uuid);
}

#[test]
fn under_watch_an_application_xid_quarantines_nothing_and_moves_nothing() {
    let w = World::new();
    let Some((gpus, stub, runner, held)) = one_gpu_runner(&w) else {
        return;
    };
    let watch = WatchProcess::start(&w, &["--resync", "1h"], &stub.env());
    watch.eventually(Duration::from_secs(30), "the event thread", || {
        watch.log().contains("NVML: waiting for Xid and ECC events")
    });
    let before = gpu_reconciles(&watch);
    stub.write_with(
        StubInit::Ok,
        &gpus,
        &format!("event 1 {} xid 13\n", gpus[held].uuid),
    );
    watch.eventually(Duration::from_secs(20), "the reconcile for the Xid", || {
        gpu_reconciles(&watch) > before
    });
    assert!(quarantine_records(&w).is_empty());
    assert_eq!(w.container_names("gpu"), [runner]);
    assert_eq!(
        watch_process::sample(
            &watch.metrics(),
            "fleet_gpu_xid_errors_total",
            &[("uuid", &gpus[held].uuid), ("xid", "13")]
        ),
        Some(1.0),
        "{}",
        watch.metrics()
    );
}

/// A volume made for a test outside fleet's labels, removed when dropped (also on failure).
struct ForeignVolume(String);

impl Drop for ForeignVolume {
    fn drop(&mut self) {
        let _ = common::docker(&["volume", "rm", "-f", &self.0]);
    }
}

#[test]
fn a_malformed_quarantine_record_makes_its_gpu_unknown_and_a_foreign_one_is_left_alone() {
    let w = World::new();
    let gpus = four_gpus();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    w.spec_gpus_auto(&format!("{}    gpus: 1\n", pool("gpu", 0, true)));
    let record = |fleet: &str, uuid: &str, since: &str| {
        let name = format!("{fleet}-gpu-quarantine.{uuid}");
        common::docker_ok(&[
            "volume",
            "create",
            "--label",
            &format!("fleet.name={fleet}"),
            "--label",
            &format!("fleet.gpu-quarantine={uuid}"),
            "--label",
            "fleet.gpu-quarantine.reason=critical Xid 79 reported by the driver",
            "--label",
            &format!("fleet.gpu-quarantine.since={since}"),
            "--label",
            "fleet.gpu-quarantine.until-reset=maybe",
            &name,
        ]);
        name
    };
    let malformed = record(&w.run, &gpus[0].uuid, "yesterday");
    let other_fleet = format!("{}-other", w.run);
    let foreign = ForeignVolume(record(&other_fleet, &gpus[1].uuid, "1"));

    let out = w.fleet_nvml(&stub, &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "host `local`: GPU {} is unknown (its quarantine record is malformed",
            gpus[0].uuid
        )),
        "{warnings}"
    );
    // Another fleet's record is that fleet's business: not read, not touched.
    assert!(!warnings.contains(&gpus[1].uuid), "{warnings}");
    let out = w.fleet_nvml(&stub, &["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let volumes = common::docker_ok(&["volume", "ls", "-q"]);
    assert!(volumes.contains(&malformed), "nothing removed: {volumes}");
    assert!(volumes.contains(&foreign.0), "nothing removed: {volumes}");

    // The operator removes the malformed one.
    let out = w.fleet_nvml(&stub, &["gpus", "--release", &gpus[0].uuid]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!common::docker_ok(&["volume", "ls", "-q"]).contains(&malformed));
    let out = w.fleet_nvml(&stub, &["gpus", "--release", &gpus[1].uuid]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(common::docker_ok(&["volume", "ls", "-q"]).contains(&foreign.0));
}

/// The capacity scale set `id`'s listener last offered GitHub (`X-ScaleSetMaxCapacity`), as
/// the fake scale set service recorded it from the poll.
fn offered_capacity(w: &World, id: u64) -> Option<u32> {
    w.fake
        .scale_sets(Some(&w.scope))
        .into_iter()
        .find(|s| s.id == id)
        .and_then(|s| s.capacity)
}

#[test]
fn under_watch_an_autoscaled_pools_capacity_drops_with_a_quarantine() {
    let w = World::with_quick_scale_sets(|_| {});
    let gpus: Vec<StubGpu> = (0..3).map(StubGpu::idle).collect();
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    // Up to 8 runners of one GPU each: the 3 GPUs bound the capacity.
    w.spec_gpus_auto(&common::autoscaled("auto", 1, 8));
    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    let id = watch_process::listening_scale_set(&w, &watch, "auto");
    watch.eventually(Duration::from_secs(30), "capacity 3 on the poll", || {
        offered_capacity(&w, id) == Some(3)
    });
    // An Xid 79 on one GPU: quarantined, and GitHub is offered one job fewer.
    stub.write_with(
        StubInit::Ok,
        &gpus,
        &format!("event 1 {} xid 79\n", gpus[1].uuid),
    );
    watch.eventually(Duration::from_secs(30), "capacity 2 on the poll", || {
        offered_capacity(&w, id) == Some(2)
    });
    let quarantined: Vec<String> = quarantine_records(&w).into_iter().map(|(u, _)| u).collect();
    assert_eq!(quarantined, [gpus[1].uuid.clone()]);
    // The quarantine outlives the event: the capacity stays down.
    stub.write(StubInit::Ok, &gpus);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(offered_capacity(&w, id), Some(2));
}
