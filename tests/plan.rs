//! `fleet plan` and `fleet show` against the fake GitHub and the real Docker engine.

mod common;

use common::{World, stderr, stdout};
use fake_github::Fault;

const CPU_POOL: &str =
    "  cpu:\n    count: 2\n    image: fleet-busybox-runner:2\n    network: none\n";

#[test]
fn empty_host_plans_a_create_per_runner() {
    let w = World::new();
    w.spec(&format!(
        "{CPU_POOL}  gpu:\n    count: 1\n    image: fleet-busybox-runner:2\n    gpus: 1\n    network: none\n    volumes: [{{ source: {}-cache, target: /cache }}]\n",
        w.run
    ));
    let out = w.fleet(&["plan", "--detailed-exitcode"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}{}", stderr(&out));
    assert_eq!(text.matches("  + runner ").count(), 3, "{text}");
    assert!(
        text.contains(&format!("+ volume {}-cache", w.run)),
        "{text}"
    );
    assert!(text.contains("gpus:   GPU-aaaa-0001"), "{text}");
    assert!(
        text.contains("Plan: 3 to create, 0 to replace, 0 to destroy, 0 registrations to remove."),
        "{text}"
    );
}

#[test]
fn converged_fleet_has_no_changes() {
    let w = World::new();
    let spec = w.spec(CPU_POOL);
    let cfg = w.config(&spec, "cpu");
    for suffix in ["aaaaaa", "bbbbbb"] {
        let name = format!("{}-cpu-{suffix}", w.run);
        w.add_container(&name, "cpu", &cfg, &[], true);
        w.register(&name, true, true, false);
    }
    let out = w.fleet(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out), "No changes. The fleet matches fleet.yaml.\n");
}

#[test]
fn changed_image_replaces_with_a_diff() {
    let w = World::new();
    let spec = w.spec(CPU_POOL);
    let mut old = w.config(&spec, "cpu");
    old.image = "fleet-test-busybox:0".into();
    let name = format!("{}-cpu-aaaaaa", w.run);
    w.add_container(&name, "cpu", &old, &[], true);
    w.register(&name, true, true, false);
    let cfg = w.config(&spec, "cpu");
    let other = format!("{}-cpu-bbbbbb", w.run);
    w.add_container(&other, "cpu", &cfg, &[], true);
    w.register(&other, true, true, false);

    let out = w.fleet(&["plan"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "-/+ runner {name} (runner id 1) -> {}-cpu-",
            w.run
        )),
        "{text}"
    );
    assert!(
        text.contains("reason: configuration changed: image"),
        "{text}"
    );
    assert!(
        text.contains("~ image: \"fleet-test-busybox:0\" -> \"fleet-busybox-runner:2\""),
        "{text}"
    );
    assert!(
        text.contains("Plan: 0 to create, 1 to replace, 0 to destroy"),
        "{text}"
    );
}

#[test]
fn lower_count_destroys_the_idle_runner_and_spares_the_busy_one() {
    let w = World::new();
    let spec =
        w.spec("  cpu:\n    count: 1\n    image: fleet-busybox-runner:2\n    network: none\n");
    let cfg = w.config(&spec, "cpu");
    let (busy, idle, extra) = (
        format!("{}-cpu-aaaaaa", w.run),
        format!("{}-cpu-bbbbbb", w.run),
        format!("{}-cpu-cccccc", w.run),
    );
    for name in [&busy, &idle, &extra] {
        w.add_container(name, "cpu", &cfg, &[], true);
    }
    w.register(&busy, true, true, true);
    w.register(&idle, true, true, false);
    w.register(&extra, true, true, true);

    let out = w.fleet(&["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json plan");
    let changes = plan["changes"].as_array().expect("changes");
    let by_name = |n: &str| changes.iter().find(|c| c["name"] == n).cloned();
    assert_eq!(by_name(&idle).expect("idle")["action"], "destroy");
    // One busy runner fills the one slot; the other busy one waits for its job to end.
    assert!(by_name(&busy).is_none(), "{plan}");
    let deferred = by_name(&extra).expect("extra");
    assert_eq!(deferred["action"], "defer");
    assert_eq!(deferred["deferred"], "destroy");
    assert_eq!(plan["summary"]["destroy"], 1);
    assert_eq!(plan["summary"]["defer"], 1);
}

#[test]
fn orphan_registration_is_deregistered_and_exited_container_replaced() {
    let w = World::new();
    let spec =
        w.spec("  cpu:\n    count: 1\n    image: fleet-busybox-runner:2\n    network: none\n");
    let cfg = w.config(&spec, "cpu");
    let exited = format!("{}-cpu-aaaaaa", w.run);
    w.add_container(&exited, "cpu", &cfg, &[], true);
    w.exit_container(&exited);
    let orphan = format!("{}-cpu-gone01", w.run);
    let orphan_id = w.register(&orphan, true, false, false);

    let out = w.fleet(&["plan"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains(&format!("-/+ runner {exited} -> ")), "{text}");
    assert!(
        text.contains("reason: container exited with code 137"),
        "{text}"
    );
    assert!(
        text.contains(&format!("- registration {orphan} (runner id {orphan_id})")),
        "{text}"
    );
    assert!(text.contains("1 registration to remove"), "{text}");
}

#[test]
fn foreign_resources_are_left_alone_and_plan_is_read_only() {
    let w = World::new();
    let spec = w.spec(&format!(
        "  cpu:\n    count: 1\n    image: fleet-busybox-runner:2\n    network: none\n    volumes: [{{ source: {}-vol, target: /v }}]\n",
        w.run
    ));
    let cfg = w.config(&spec, "cpu");
    // Ours: one exited container (to be replaced), one orphan registration.
    let ours = format!("{}-cpu-aaaaaa", w.run);
    w.add_container(&ours, "cpu", &cfg, &[], true);
    w.exit_container(&ours);
    w.register(&format!("{}-cpu-orphan", w.run), true, false, false);
    // Not ours: a container with our name prefix but no label, a runner with our prefix
    // and no ownership label, a runner with the label and another prefix.
    let foreign = format!("{}-cpu-handmade", w.run);
    w.add_foreign_container(&foreign);
    w.register(&format!("{}-cpu-manual", w.run), false, false, false);
    w.register("someone-elses-runner", true, false, false);

    let before = w.docker_snapshot();
    let runners_before = w.fake.runners(&w.scope);
    w.fake.clear_requests();
    let out = w.fleet(&["plan", "--out", "plan.json"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        !text.contains("handmade") && !text.contains("manual") && !text.contains("someone-elses"),
        "{text}"
    );

    // Read-only, proven: only GETs reached GitHub, and nothing changed on Docker or GitHub.
    let requests = w.fake.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.method, "GET", "plan sent {} {}", r.method, r.path);
    }
    assert_eq!(w.fake.jit_configs_issued(), 0);
    assert_eq!(w.fake.registration_tokens_issued(), 0);
    assert_eq!(w.docker_snapshot(), before);
    assert_eq!(w.fake.runners(&w.scope).len(), runners_before.len());

    // The saved plan shows the same, and holds no secret.
    let saved = std::fs::read_to_string(w.dir.path().join("plan.json")).expect("saved plan");
    assert!(!saved.contains(&w.fake.token()));
    let shown = w.fleet(&["show", "plan.json"]);
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    assert_eq!(
        stdout(&shown),
        text.split("\nSaved the plan").next().expect("text")
    );
    let json = w.fleet(&["show", "plan.json", "--format", "json"]);
    assert_eq!(stdout(&json), saved);
}

#[test]
fn markdown_plan_for_a_pull_request() {
    let w = World::new();
    w.spec(CPU_POOL);
    let out = w.fleet(&["plan", "--format", "markdown"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.starts_with(&format!("### fleet plan for `{}`", w.run)),
        "{text}"
    );
    assert!(text.contains("| create | 2 |"), "{text}");
    assert!(
        text.contains("<details>") && text.contains("```diff"),
        "{text}"
    );
}

#[test]
fn show_refuses_what_is_not_a_plan() {
    let w = World::new();
    std::fs::write(w.dir.path().join("notes.txt"), "hello").expect("write");
    let out = w.fleet(&["show", "notes.txt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("notes.txt is not a fleet plan"),
        "{}",
        stderr(&out)
    );
    std::fs::write(w.dir.path().join("other.json"), "{\"a\": 1}").expect("write");
    let out = w.fleet(&["show", "other.json"]);
    assert!(
        stderr(&out).contains("other.json is not a fleet plan: it has no format_version"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn docker_unreachable_is_one_line_with_a_hint() {
    let w = World::new();
    w.spec_with(CPU_POOL, "unix:///nonexistent/docker.sock", "none");
    let out = w.fleet(&["plan"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: host `local`: the Docker engine at unix:///nonexistent/docker.sock does not answer: Socket not found: /nonexistent/docker.sock\n"), "{err}");
    assert!(err.contains("hint: start the Docker engine"), "{err}");
    // With one host there is no other host to plan: --exclude-host is not suggested.
    assert!(!err.contains("--exclude-host"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn github_failures_stop_the_plan_with_a_cause() {
    let w = World::new();
    w.spec(CPU_POOL);

    let out = w.fleet_with_env(&["plan"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error: GITHUB_TOKEN is not set"),
        "{}",
        stderr(&out)
    );

    let out = w.fleet_with_env(&["plan"], &[("GITHUB_TOKEN", "wrong")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("GitHub rejected the credentials (401 Bad credentials)"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("wrong"), "the token was printed");

    w.fake.fail_next(
        Fault::Forbidden {
            accepted_permissions: "administration=write".into(),
        },
        1,
    );
    let out = w.fleet(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the credentials need the permission(s) administration=write"),
        "{}",
        stderr(&out)
    );

    w.fake.fail_next(
        Fault::Status {
            status: 404,
            retry_after: None,
        },
        1,
    );
    let out = w.fleet(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("GitHub answered 404"),
        "{}",
        stderr(&out)
    );

    w.fake.fail_next(
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        10,
    );
    let out = w.fleet(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("GitHub answered 502") && stderr(&out).contains("after 4 attempts"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "no plan on a partial view");
    w.fake.clear_faults();

    // A passing fault is retried through.
    w.fake.fail_next(
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        2,
    );
    let out = w.fleet(&["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    w.fake
        .fail_next(Fault::SecondaryRateLimit { retry_after: 1 }, 1);
    let out = w.fleet(&["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// What Docker would refuse at apply is said at plan time: a user network the engine does not
/// have. What exists is not warned about. A bind-mount source missing on this machine is said
/// only in the log (`-v`): the plan (a pull-request comment) must not tell which paths exist
/// (docs/security.md, "Files the spec names").
#[test]
fn the_plan_warns_of_a_missing_network_and_logs_a_missing_bind_source() {
    let w = World::new();
    let made = format!("{}-net", w.run);
    common::docker_ok(&[
        "network",
        "create",
        "--internal",
        "--label",
        &format!("{}={}", common::RUN_LABEL, w.run),
        &made,
    ]);
    let missing_net = format!("{}-no-such-net", w.run);
    let gone = w.dir.path().join("gone");
    let there = w.dir.path().display().to_string();
    w.spec(&format!(
        "  a:\n    count: 1\n    image: fleet-busybox-runner:2\n    network: {missing_net}\n    volumes: [{{ source: {}, target: /gone }}, {{ source: {there}, target: /there }}]\n  b:\n    count: 1\n    image: fleet-busybox-runner:2\n    network: {made}\n",
        gone.display()
    ));
    let out = w.fleet(&["plan"]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "network `{missing_net}` does not exist on host `local`"
        )),
        "{said}"
    );
    assert!(!said.contains(&gone.display().to_string()), "{said}");
    let out = w.fleet(&["-v", "plan"]);
    let logged = stderr(&out);
    assert!(
        logged.contains(&format!(
            "host `local`: bind-mount source {} does not exist",
            gone.display()
        )),
        "{logged}"
    );
    assert!(
        !said.contains(&format!("`{made}` does not exist")),
        "{said}"
    );
    assert!(
        !said.contains(&format!("`{there}` does not exist")),
        "{said}"
    );
}

/// Removes a test's image, even when the test fails.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = common::docker(&["rmi", "-f", &self.0]);
    }
}

/// An image whose `org.opencontainers.image.version` names a runner older than the one GitHub
/// offers for download is warned about, unless the pool's runners update themselves.
#[test]
fn an_image_with_an_older_runner_than_github_offers_is_warned_about() {
    let w = World::new();
    let image = format!("fleet-test-old-runner:{}", w.run);
    let _guard = ImageGuard(image.clone());
    let dir = tempfile::tempdir().expect("build context");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {}\n", common::test_image()),
    )
    .expect("Dockerfile");
    let label = format!("{}={}", common::RUN_LABEL, w.run);
    common::docker_ok(&[
        "build",
        "-q",
        "--network",
        "none",
        "--label",
        &label,
        "--label",
        "org.opencontainers.image.version=2.330.0",
        "-t",
        &image,
        dir.path().to_str().expect("UTF-8 path"),
    ]);
    w.fake.set_runner_version("2.336.0");
    let pool = |update: &str| {
        format!(
            "  cpu:\n    count: 1\n    image: {image}\n    pull: never\n    network: none\n    runner_update: {update}\n"
        )
    };
    w.spec(&pool("disabled"));
    let out = w.fleet(&["plan"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "pool `cpu`: image {image} on host `local` carries runner 2.330.0, older than 2.336.0, which GitHub offers"
        )),
        "{text}"
    );
    w.spec(&pool("enabled"));
    let text = stdout(&w.fleet(&["plan"]));
    assert!(!text.contains("older than"), "{text}");
}
