//! `fleet apply` and `fleet destroy` end to end: the real Docker engine, the local busybox
//! image and the fake GitHub, simulating each runner's life (online, busy, exit).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{World, assert_ok, plan_is_empty, pool, stderr, stdout};
use fake_github::{Fault, decode_jit_config};

/// What a container's secret file holds, read as root (the test image leaves it in place).
/// The secret line container `name` was given (the test image keeps it in its secret file,
/// whatever the delivery).
fn secret_file(name: &str) -> String {
    let env = common::docker_ok(&["inspect", "--format", "{{json .Config.Env}}", name]);
    let env: Vec<String> = serde_json::from_str(&env).expect("environment");
    common::secret_inputs(&["exec", name], &env).join("\n")
}

/// Mode, owner and group of a path in a container, as `stat` prints them.
fn stat(name: &str, path: &str) -> String {
    common::docker_ok(&["exec", name, "/bin/busybox", "stat", "-c", "%a %u %g", path])
}

#[test]
fn converges_from_empty_and_a_second_apply_writes_nothing() {
    let w = World::new();
    let volume = format!("{}-cache", w.run);
    w.spec(&format!(
        "{}    volumes: [{{ source: {volume}, target: /cache }}]\n    env: {{ CCACHE_DIR: /cache }}\n{}",
        pool("eph", 2, true),
        pool("per", 1, false)
    ));
    let out = w.apply();
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains(": Creating...") && text.contains(": Created ("),
        "{text}"
    );
    assert!(text.contains("Apply complete: 3 created"), "{text}");

    let eph = w.container_names("eph");
    assert_eq!(eph.len(), 2);
    assert_eq!(w.container_names("per"), [format!("{}-per-0", w.run)]);
    assert!(w.owned_containers().iter().all(|(_, s)| s == "running"));
    // Ephemeral runners were registered with a JIT config; the persistent one got a token.
    assert_eq!(w.owned_runner_names(), eph);
    assert_eq!(w.fake.jit_configs_issued(), 2);
    assert_eq!(w.fake.registration_tokens_issued(), 1);

    // The container contract. The JIT config came on standard input (the test image keeps it
    // in a root-only file), never in the environment.
    let env = w.env_of(&eph[0]);
    assert!(env.contains(&"FLEET_SECRET_STDIN=1".to_string()), "{env:?}");
    assert!(
        !env.iter()
            .any(|e| e.starts_with("ACTIONS_RUNNER_INPUT_JITCONFIG=")),
        "{env:?}"
    );
    let inspect = w.inspect(&eph[0]);
    assert_eq!(inspect["Config"]["OpenStdin"], true);
    assert_eq!(inspect["Config"]["StdinOnce"], true);
    let secret = common::secret_inputs(&["exec", &eph[0]], &env).join("\n");
    let jit = secret
        .strip_prefix("ACTIONS_RUNNER_INPUT_JITCONFIG=")
        .expect("the JIT config in the secret file");
    assert_eq!(decode_jit_config(jit).expect("a JIT config").name, eph[0]);
    assert_eq!(stat(&eph[0], "/run/fleet/registration"), "600 0 0");
    assert_eq!(stat(&eph[0], "/run/fleet"), "700 0 0");
    assert!(env.contains(&format!("RUNNER_NAME={}", eph[0])));
    assert!(env.contains(&"FLEET_POOL=eph".to_string()));
    assert!(env.contains(&"CCACHE_DIR=/cache".to_string()));
    assert!(
        env.iter()
            .any(|e| e.starts_with("RUNNER_LABELS=self-hosted,Linux,X64,"))
    );
    let inspect = w.inspect(&eph[0]);
    assert_eq!(inspect["HostConfig"]["RestartPolicy"]["Name"], "no");
    // Hardened by default.
    assert_eq!(
        inspect["HostConfig"]["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(inspect["HostConfig"]["PidsLimit"], 16384);
    assert_eq!(
        inspect["HostConfig"]["CapDrop"],
        serde_json::json!(["NET_RAW"])
    );
    assert_eq!(inspect["Config"]["Labels"]["fleet.pool"], "eph");
    assert!(
        inspect["Mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["Name"] == volume.as_str())
    );

    let per = format!("{}-per-0", w.run);
    let env = w.env_of(&per);
    assert!(
        !env.iter()
            .any(|e| e.starts_with("ACTIONS_RUNNER_INPUT_TOKEN=")),
        "{env:?}"
    );
    assert!(env.contains(&"FLEET_SECRET_STDIN=1".to_string()));
    assert!(secret_file(&per).starts_with("ACTIONS_RUNNER_INPUT_TOKEN="));
    assert!(env.contains(&format!("ACTIONS_RUNNER_INPUT_NAME={per}")));
    assert!(env.contains(&"FLEET_STATE_DIR=/var/lib/fleet-runner".to_string()));
    let inspect = w.inspect(&per);
    assert_eq!(
        inspect["HostConfig"]["RestartPolicy"]["Name"],
        "unless-stopped"
    );
    assert!(
        inspect["Mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["Name"] == format!("{per}-state").as_str()
                && m["Destination"] == "/var/lib/fleet-runner")
    );

    // Second apply: nothing to do, no write request, no container touched.
    let before = w.docker_snapshot();
    w.fake.clear_requests();
    let out = w.apply();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("No changes. The fleet matches fleet.yaml."),
        "{}",
        stdout(&out)
    );
    assert!(
        w.fake.requests().iter().all(|r| r.method == "GET"),
        "{:#?}",
        w.fake.requests()
    );
    assert_eq!(w.docker_snapshot(), before);
}

#[test]
fn a_drifted_pool_is_replaced_and_only_it() {
    let w = World::new();
    w.spec(&format!("{}{}", pool("a", 1, true), pool("b", 1, true)));
    assert_ok(&w.apply());
    let (a, b) = (w.container_names("a"), w.container_names("b"));
    let b_id = w.inspect(&b[0])["Id"].clone();

    w.spec(&format!(
        "{}    env: {{ NEW: \"1\" }}\n{}",
        pool("a", 1, true),
        pool("b", 1, true)
    ));
    let out = w.apply();
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("{}: Replaced by ", a[0])),
        "{}",
        stdout(&out)
    );
    let a2 = w.container_names("a");
    assert_eq!(a2.len(), 1);
    assert_ne!(a2, a, "an ephemeral runner comes back under a new name");
    assert!(w.env_of(&a2[0]).contains(&"NEW=1".to_string()));
    assert_eq!(w.container_names("b"), b);
    assert_eq!(w.inspect(&b[0])["Id"], b_id, "pool b was not touched");
    let mut expected = vec![a2[0].clone(), b[0].clone()];
    expected.sort();
    assert_eq!(w.owned_runner_names(), expected);
    plan_is_empty(&w);
}

#[test]
fn scale_down_removes_idle_runners_and_keeps_busy_ones() {
    let w = World::new();
    w.spec(&pool("eph", 3, true));
    assert_ok(&w.apply());
    let names = w.container_names("eph");
    let busy = names[1].clone();
    assert!(w.fake.set_runner_state_by_name(&w.scope, &busy, true, true));
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &names[0], true, false)
    );

    w.spec(&pool("eph", 1, true));
    let out = w.apply();
    assert_ok(&out);
    assert_eq!(w.container_names("eph"), std::slice::from_ref(&busy));
    assert_eq!(w.owned_runner_names(), std::slice::from_ref(&busy));

    // To zero: the busy runner waits for its job.
    w.spec(&pool("eph", 0, true));
    let out = w.apply();
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("~ runner {busy}")),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("Nothing to do now: 1 change(s) wait for busy runners"),
        "{}",
        stdout(&out)
    );
    assert_eq!(w.container_names("eph"), std::slice::from_ref(&busy));

    // The job ends: now it goes.
    w.finish_job(&busy);
    assert_ok(&w.apply());
    assert!(w.container_names("eph").is_empty());
}

#[test]
fn an_exited_ephemeral_runner_is_replaced_under_a_new_name() {
    let w = World::new();
    w.spec(&pool("eph", 1, true));
    assert_ok(&w.apply());
    let first = w.container_names("eph");
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &first[0], true, true)
    );
    w.finish_job(&first[0]);

    let out = w.apply();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("reason: container exited with code 137"),
        "{}",
        stdout(&out)
    );
    let second = w.container_names("eph");
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);
    assert_eq!(w.owned_runner_names(), second);
    assert_eq!(w.owned_containers()[0].1, "running");
}

#[test]
fn orphan_registrations_go_and_foreign_resources_stay() {
    let w = World::new();
    w.spec(&pool("eph", 1, true));
    let orphan = format!("{}-eph-orphan", w.run);
    w.register(&orphan, true, false, false);
    let foreign_container = format!("{}-eph-handmade", w.run);
    w.add_foreign_container(&foreign_container);
    let foreign_runner = format!("{}-eph-manual", w.run);
    w.register(&foreign_runner, false, false, false);
    w.register("someone-else-0", true, false, false);

    let out = w.apply();
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("{orphan}: Registration removed")),
        "{}",
        stdout(&out)
    );
    let names: Vec<String> = w
        .fake
        .runners(&w.scope)
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(!names.contains(&orphan));
    assert!(names.contains(&foreign_runner) && names.contains(&"someone-else-0".to_string()));
    assert_eq!(w.inspect(&foreign_container)["State"]["Status"], "running");
    plan_is_empty(&w);
}

#[test]
fn a_persistent_runner_recreated_on_its_state_volume_is_not_registered_again() {
    let w = World::new();
    w.spec(&pool("per", 1, false));
    assert_ok(&w.apply());
    let name = format!("{}-per-0", w.run);
    assert_eq!(w.fake.registration_tokens_issued(), 1);
    // The runner's config.sh registers it (the test image has no runner: play its part).
    let id = w.register(&name, true, true, false);
    let old_id = w.inspect(&name)["Id"].clone();

    w.spec(&format!(
        "{}    env: {{ CHANGED: \"yes\" }}\n",
        pool("per", 1, false)
    ));
    let out = w.apply();
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("{name}: Replaced (")),
        "{}",
        stdout(&out)
    );
    // Same name, same state volume, same registration, no new token.
    assert_ne!(w.inspect(&name)["Id"], old_id);
    assert_eq!(w.fake.registration_tokens_issued(), 1);
    assert!(
        !w.env_of(&name)
            .iter()
            .any(|e| e.starts_with("ACTIONS_RUNNER_INPUT_TOKEN="))
    );
    let runner = w
        .fake
        .runners(&w.scope)
        .into_iter()
        .find(|r| r.name == name)
        .expect("still registered");
    assert_eq!(runner.id, id);
    assert!(
        w.inspect(&name)["Mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["Name"] == format!("{name}-state").as_str())
    );
}

#[test]
fn destroy_spares_busy_runners_and_keeps_volumes_unless_asked() {
    let w = World::new();
    let volume = format!("{}-cache", w.run);
    w.spec(&format!(
        "{}    volumes: [{{ source: {volume}, target: /cache }}]\n",
        pool("eph", 2, true)
    ));
    assert_ok(&w.apply());
    let names = w.container_names("eph");
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &names[0], true, true)
    );

    let out = w.fleet(&["destroy", "--auto-approve"]);
    assert_ok(&out);
    assert_eq!(
        w.container_names("eph"),
        [names[0].clone()],
        "the busy runner stays"
    );
    assert_eq!(w.owned_runner_names(), [names[0].clone()]);
    assert!(
        common::docker(&["volume", "inspect", &volume])
            .status
            .success(),
        "volume kept"
    );

    w.finish_job(&names[0]);
    let out = w.fleet(&["destroy", "--auto-approve", "--volumes"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("{volume}: Volume destroyed")),
        "{}",
        stdout(&out)
    );
    assert!(w.owned_containers().is_empty());
    assert!(w.owned_runner_names().is_empty());
    assert!(
        !common::docker(&["volume", "inspect", &volume])
            .status
            .success(),
        "volume removed"
    );
}

#[test]
fn apply_without_a_terminal_needs_auto_approve() {
    let w = World::new();
    w.spec(&pool("eph", 1, true));
    let out = w.fleet(&["apply"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("pass --auto-approve"),
        "{}",
        stderr(&out)
    );
    assert!(w.owned_containers().is_empty());
    assert_eq!(w.fake.jit_configs_issued(), 0);
}

#[test]
fn a_saved_plan_is_applied_unless_it_is_stale() {
    let w = World::new();
    w.spec(&pool("eph", 1, true));
    assert_ok(&w.fleet(&["plan", "--out", "plan.json"]));
    let out = w.fleet(&["apply", "plan.json"]);
    assert_ok(&out);
    assert_eq!(w.container_names("eph").len(), 1);

    // The world changes after the plan: refused, nothing done.
    w.spec(&pool("eph", 2, true));
    assert_ok(&w.fleet(&["plan", "--out", "plan2.json"]));
    let name = w.container_names("eph")[0].clone();
    w.fake.set_runner_state_by_name(&w.scope, &name, true, true);
    let before = w.docker_snapshot();
    let out = w.fleet(&["apply", "plan2.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is stale: containers or GitHub runners changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.docker_snapshot(), before);

    // The spec changes after the plan: refused too.
    assert_ok(&w.fleet(&["plan", "--out", "plan3.json"]));
    w.spec(&pool("eph", 3, true));
    let out = w.fleet(&["apply", "plan3.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is stale: the spec changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.docker_snapshot(), before);
}

#[test]
fn two_applies_never_overlap() {
    let w = World::new();
    w.spec(&pool("eph", 3, true));
    // Slow enough that the first apply holds the lock for several seconds.
    w.fake.set_latency(Duration::from_millis(1500));
    let first = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .current_dir(w.dir.path())
        .args(["apply", "--auto-approve"])
        .env("GITHUB_TOKEN", w.fake.token())
        .env("GITHUB_API_URL", w.fake.url())
        .env("FLEET_LOCK_DIR", w.dir.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(300));
    let second = w.fleet(&["apply", "--auto-approve", "--lock-timeout", "1s"]);
    assert_eq!(second.status.code(), Some(1), "{}", stdout(&second));
    assert!(
        stderr(&second).contains(&format!(
            "fleet `{}` is locked by fleet apply (pid {})",
            w.run,
            first.id()
        )),
        "{}",
        stderr(&second)
    );
    let first = first.wait_with_output().expect("first apply");
    assert_ok(&first);
    w.fake.set_latency(Duration::ZERO);
    // A waiting apply goes on once the lock is free, and finds nothing to do.
    let third = w.fleet(&["apply", "--auto-approve", "--lock-timeout", "30s"]);
    assert_ok(&third);
    assert_eq!(w.container_names("eph").len(), 3);
}

#[test]
fn kill_9_at_any_moment_leaves_a_state_the_next_apply_converges_from() {
    for delay_ms in [150u64, 500, 1100, 2000] {
        let w = World::new();
        // One runner is busy before the crash; it must survive everything.
        w.spec(&pool("eph", 1, true));
        assert_ok(&w.apply());
        let busy = w.container_names("eph")[0].clone();
        w.fake.set_runner_state_by_name(&w.scope, &busy, true, true);
        let busy_id = w.inspect(&busy)["Id"].clone();

        w.spec(&format!(
            "{}    env: {{ V: \"2\" }}\n{}",
            pool("eph", 3, true),
            pool("per", 2, false)
        ));
        w.fake.set_latency(Duration::from_millis(150));
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleet"))
            .current_dir(w.dir.path())
            .args(["apply", "--auto-approve"])
            .env("GITHUB_TOKEN", w.fake.token())
            .env("GITHUB_API_URL", w.fake.url())
            .env("FLEET_LOCK_DIR", w.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        w.fake.set_latency(Duration::ZERO);

        let out = w.apply();
        assert_ok(&out);
        // Converged: the busy runner is still there (deferred), and everything else matches.
        let plan = w.fleet(&["plan", "--format", "json"]);
        let value: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("json");
        let left: Vec<&serde_json::Value> = value["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["action"] != "defer")
            .collect();
        assert!(
            left.is_empty(),
            "delay {delay_ms} ms: not converged: {left:#?}"
        );
        assert_eq!(
            w.inspect(&busy)["Id"],
            busy_id,
            "delay {delay_ms} ms: the busy runner was touched"
        );
        let eph = w.container_names("eph");
        assert_eq!(eph.len(), 3, "delay {delay_ms} ms: {eph:?}");
        assert_eq!(w.container_names("per").len(), 2);
        // No registration without its container.
        let containers: Vec<String> = w.owned_containers().into_iter().map(|(n, _)| n).collect();
        for runner in w.owned_runner_names() {
            assert!(
                containers.contains(&runner),
                "delay {delay_ms} ms: leaked registration {runner}"
            );
        }
    }
}

#[test]
fn converges_within_two_applies_when_github_fails_30_percent_of_requests() {
    let w = World::new();
    w.spec(&format!(
        "{}{}",
        pool("eph", 5, true),
        pool("per", 2, false)
    ));
    w.fake.inject_fault_mix(vec![
        (
            Fault::Status {
                status: 502,
                retry_after: None,
            },
            0.25,
        ),
        (
            Fault::Status {
                status: 429,
                retry_after: Some(1),
            },
            0.05,
        ),
    ]);
    let _ = w.apply();
    let _ = w.apply();
    w.fake.clear_faults();
    plan_is_empty(&w);
    let eph = w.container_names("eph");
    assert_eq!(eph.len(), 5);
    let mut unique = eph.clone();
    unique.dedup();
    assert_eq!(unique.len(), 5, "duplicate names: {eph:?}");
    // No leaked registration: every owned registration has its container.
    assert_eq!(w.owned_runner_names(), eph);
}

#[test]
fn no_secret_reaches_output_logs_plans_or_labels() {
    let w = World::new();
    w.spec(&format!(
        "{}{}",
        pool("eph", 2, true),
        pool("per", 1, false)
    ));
    assert_ok(&w.fleet(&["plan", "--out", "plan.json"]));
    let out = w.fleet_with_env(
        &["-vv", "apply", "plan.json"],
        &[("GITHUB_TOKEN", &w.fake.token()), ("RUST_LOG", "trace")],
    );
    assert_ok(&out);
    let mut secrets = vec![w.fake.token()];
    let mut everything = format!("{}{}", stdout(&out), stderr(&out));
    everything.push_str(&std::fs::read_to_string(w.dir.path().join("plan.json")).expect("plan"));
    for (name, _) in w.owned_containers() {
        let file = secret_file(&name);
        for key in [
            "ACTIONS_RUNNER_INPUT_JITCONFIG=",
            "ACTIONS_RUNNER_INPUT_TOKEN=",
        ] {
            if let Some(secret) = file.strip_prefix(key) {
                secrets.push(secret.to_string());
            }
        }
        everything.push_str(&w.inspect(&name)["Config"]["Labels"].to_string());
        // Nor is any in the container's configuration.
        everything.push_str(&w.inspect(&name)["Config"].to_string());
    }
    assert_eq!(
        secrets.len(),
        1 + 2 + 1,
        "the token, two JIT configs, one registration token"
    );
    assert!(stderr(&out).len() > 1000, "trace logs were written");
    for secret in &secrets {
        assert!(!everything.contains(secret.as_str()), "a secret leaked");
    }
}

#[test]
fn a_jit_name_conflict_frees_our_idle_holder_and_takes_a_new_name() {
    use fleet::apply::{Executor, Outcome, Quiet};
    use fleet::github::RetryPolicy;
    use fleet::observe::Observers;

    let w = World::new();
    let path = w.spec(&pool("eph", 1, true));
    let spec = fleet::spec::load(&path).expect("spec");
    let (token, api_url) = (w.fake.token(), w.fake.url());
    let env = move |k: &str| match k {
        "GITHUB_TOKEN" => Some(token.clone()),
        "GITHUB_API_URL" => Some(api_url.clone()),
        _ => None,
    };
    let report = w.rt.block_on(async {
        let observers = Observers::connect(&spec, w.dir.path(), &env, RetryPolicy::default())
            .await
            .expect("connect");
        let observed = observers.observe(&spec).await.expect("observe");
        let plan = fleet::plan::plan(&spec, &observed).expect("plan");
        let planned = plan.changes[0].name().to_string();
        // GitHub has the planned name already: an earlier attempt registered it, then crashed.
        let stale = w.register(&planned, true, false, false);
        let report = Executor::new(&spec, &observers, &observed, 4)
            .apply(&plan, &Quiet)
            .await;
        (planned, stale, report)
    });
    let (planned, stale, report) = report;
    let step = &report.steps[0];
    assert_eq!(step.outcome, Outcome::Done, "{step:?}");
    let runner = step.runner.clone().expect("a runner");
    assert_ne!(runner, planned, "registered under a new name");
    assert!(
        w.fake.runners(&w.scope).iter().all(|r| r.id != stale),
        "the stale holder was removed"
    );
    assert_eq!(w.owned_runner_names(), std::slice::from_ref(&runner));
    assert_eq!(w.container_names("eph"), [runner]);
}

/// Runs fleet under a pseudo-terminal (util-linux `script`), typing `answer`.
fn on_a_terminal(w: &World, args: &str, answer: &str) -> std::process::Output {
    let fleet = env!("CARGO_BIN_EXE_fleet");
    let mut child = Command::new("script")
        .args(["-qec", &format!("{fleet} {args}"), "/dev/null"])
        .current_dir(w.dir.path())
        .env("GITHUB_TOKEN", w.fake.token())
        .env("GITHUB_API_URL", w.fake.url())
        .env("FLEET_LOCK_DIR", w.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) runs fleet on a terminal");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(format!("{answer}\n").as_bytes());
    }
    child.wait_with_output().expect("script")
}

#[test]
fn on_a_terminal_apply_asks_and_only_yes_applies() {
    let w = World::new();
    w.spec(&pool("eph", 2, true));
    let out = on_a_terminal(&w, "apply", "no");
    let text = stdout(&out);
    assert!(
        text.contains("Do you want to apply these changes?"),
        "{text}"
    );
    assert!(text.contains("Cancelled; nothing was changed."), "{text}");
    assert!(w.owned_containers().is_empty());

    let out = on_a_terminal(&w, "apply", "yes");
    let text = stdout(&out);
    assert!(text.contains("Apply complete: 2 created"), "{text}");
    // The progress bar draws on a terminal.
    assert!(text.contains("2/2 steps"), "{text}");
    assert_eq!(w.container_names("eph").len(), 2);
}

#[test]
fn a_missing_image_with_pull_never_is_warned_about_and_fails_its_steps_cleanly() {
    let w = World::new();
    // `pull: never`: nothing is pulled (no registry is reachable from tests, nor contacted).
    let missing = format!("fleet-test-missing-{}:0", w.run);
    w.spec(&format!(
        "  eph:\n    count: 1\n    image: {missing}\n    pull: never\n    network: none\n"
    ));
    let out = w.apply();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!(
            "image `{missing}` is not on host `local` and `pull: never`"
        )),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains(&format!(
            "image {missing} is not on host `local` and the pool says `pull: never`"
        )),
        "{}",
        stderr(&out)
    );
    assert!(w.owned_containers().is_empty());
    assert_eq!(
        w.fake.jit_configs_issued(),
        0,
        "nothing registered for a runner that cannot start"
    );
}

#[test]
fn secrets_env_and_security_opt_outs_are_honoured() {
    let w = World::new();
    w.spec(&format!(
        "{}    secrets: env\n    security: {{ no_new_privileges: false, pids_limit: 0, net_raw: true }}\n{}    secrets: env\n",
        pool("eph", 1, true),
        pool("per", 1, false)
    ));
    assert_ok(&w.apply());
    let eph = w.container_names("eph");
    let env = w.env_of(&eph[0]);
    let jit = env
        .iter()
        .find_map(|e| e.strip_prefix("ACTIONS_RUNNER_INPUT_JITCONFIG="))
        .expect("JIT config in the environment");
    assert_eq!(decode_jit_config(jit).expect("a JIT config").name, eph[0]);
    assert!(!env.iter().any(|e| e.starts_with("FLEET_SECRET_FILE=")));
    let no_file = common::docker(&["exec", &eph[0], "/bin/busybox", "test", "-e", "/run/fleet"]);
    assert!(
        !no_file.status.success(),
        "no secret file with `secrets: env`"
    );
    let host = w.inspect(&eph[0])["HostConfig"].clone();
    assert_eq!(host["SecurityOpt"], serde_json::Value::Null);
    assert!(
        matches!(host["PidsLimit"].as_i64(), None | Some(0) | Some(-1)),
        "{host}"
    );
    assert_eq!(host["CapDrop"], serde_json::Value::Null);

    let per = format!("{}-per-0", w.run);
    assert!(
        w.env_of(&per)
            .iter()
            .any(|e| e.starts_with("ACTIONS_RUNNER_INPUT_TOKEN="))
    );
    // The other pool keeps the default hardening.
    let host = w.inspect(&per)["HostConfig"].clone();
    assert_eq!(host["CapDrop"], serde_json::json!(["NET_RAW"]));
    plan_is_empty(&w);
}
