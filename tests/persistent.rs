//! Persistent runners keep their identity (index name, state volume, registration) through
//! everything that happens to their containers, on the real engine with the fake GitHub. The
//! runner's own part (config.sh registering it, the runner connecting) is played by
//! `World::config_sh`, from what fleet put in the container's environment.

mod common;

use common::{World, assert_ok, docker, docker_ok, plan_is_empty, pool, stdout};
use fake_github::Scope;

fn plan_text(w: &World) -> String {
    let out = w.fleet(&["plan"]);
    assert_ok(&out);
    stdout(&out)
}

/// The plan's changes as (action, name), from its JSON document.
fn plan_actions(w: &World) -> Vec<(String, String)> {
    let out = w.fleet(&["plan", "--format", "json"]);
    assert_ok(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    doc["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap_or_default().to_string(),
                c["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn container_id(w: &World, name: &str) -> String {
    w.inspect(name)["Id"].as_str().expect("id").to_string()
}

/// Writes `content` into the state volume through the runner's container, as the runner's
/// registration files would be.
fn write_state(name: &str, content: &str) {
    docker_ok(&[
        "exec",
        name,
        "sh",
        "-c",
        &format!("echo {content} > /var/lib/fleet-runner/marker"),
    ]);
}

fn read_state(name: &str) -> String {
    docker_ok(&[
        "exec",
        name,
        "busybox",
        "cat",
        "/var/lib/fleet-runner/marker",
    ])
}

/// A persistent pool of `count` runners, applied, each registered by its config.sh.
fn registered_pool(w: &World, count: u32) -> Vec<(String, u64)> {
    w.spec(&pool("per", count, false));
    assert_ok(&w.apply());
    (0..count)
        .map(|i| {
            let name = format!("{}-per-{i}", w.run);
            let id = w.config_sh(&name).expect("config.sh registered it");
            (name, id)
        })
        .collect()
}

#[test]
fn a_removed_container_comes_back_under_its_name_with_its_registration_and_state() {
    let w = World::new();
    let runners = registered_pool(&w, 1);
    let (name, id) = runners[0].clone();
    let state = format!("{name}-state");
    assert_eq!(w.state_mount(&name).as_deref(), Some(state.as_str()));
    assert_eq!(w.fake.registration_tokens_issued(), 1);
    write_state(&name, "registered-once");
    plan_is_empty(&w);

    docker_ok(&["rm", "-f", &name]);
    let text = plan_text(&w);
    assert!(text.contains(&format!("+ runner {name}\n")), "{text}");
    assert!(
        text.contains("reason: container missing; registration and state kept"),
        "{text}"
    );
    assert!(
        text.contains(&format!("state:  volume {state} (kept)")),
        "{text}"
    );
    assert_eq!(plan_actions(&w), [("create".to_string(), name.clone())]);

    assert_ok(&w.apply());
    assert_eq!(w.container_names("per"), std::slice::from_ref(&name));
    assert_eq!(w.owned_containers()[0].1, "running");
    assert_eq!(w.runner_id(&name), Some(id), "the same registration");
    assert_eq!(w.fake.registration_tokens_issued(), 1, "no new token");
    assert_eq!(
        w.env_value(&name, "FLEET_REGISTRATION").as_deref(),
        Some("restore")
    );
    assert_eq!(w.token_of(&name), None);
    assert_eq!(w.state_mount(&name).as_deref(), Some(state.as_str()));
    assert_eq!(read_state(&name), "registered-once", "the same volume");
    assert_eq!(w.config_sh(&name), Some(id));
    plan_is_empty(&w);

    // A container that stopped (not removed) is made again the same way.
    docker_ok(&["stop", "-t", "0", &name]);
    let text = plan_text(&w);
    assert!(text.contains(&format!("-/+ runner {name}")), "{text}");
    assert!(
        text.contains("reason: container exited with code"),
        "{text}"
    );
    assert_ok(&w.apply());
    assert_eq!(w.runner_id(&name), Some(id));
    assert_eq!(w.fake.registration_tokens_issued(), 1);
    assert_eq!(read_state(&name), "registered-once");
    plan_is_empty(&w);
}

#[test]
fn lowering_the_count_retires_the_highest_index_with_its_registration_and_volume() {
    let w = World::new();
    let runners = registered_pool(&w, 2);
    let (keep, keep_id) = runners[0].clone();
    let (retired, retired_id) = runners[1].clone();
    let keep_container = container_id(&w, &keep);

    w.spec(&pool("per", 1, false));
    let text = plan_text(&w);
    assert!(
        text.contains(&format!("- runner {retired} (runner id {retired_id})")),
        "{text}"
    );
    assert!(
        text.contains("reason: pool has 2 runners, 1 wanted"),
        "{text}"
    );
    assert!(
        text.contains(&format!("state:  volume {retired}-state (removed with it)")),
        "{text}"
    );
    assert!(!text.contains(&keep), "{text}");

    assert_ok(&w.apply());
    assert_eq!(w.container_names("per"), std::slice::from_ref(&keep));
    assert_eq!(container_id(&w, &keep), keep_container);
    assert_eq!(w.owned_runner_names(), std::slice::from_ref(&keep));
    assert_eq!(w.runner_id(&keep), Some(keep_id));
    assert_eq!(w.owned_volumes(), [format!("{keep}-state")]);
    plan_is_empty(&w);
}

#[test]
fn a_registration_deleted_while_the_container_is_stopped_is_registered_again_on_its_volume() {
    let w = World::new();
    let runners = registered_pool(&w, 1);
    let (name, id) = runners[0].clone();
    write_state(&name, "kept");
    docker_ok(&["stop", "-t", "0", &name]);
    // Removed by hand, or by GitHub after 14 days offline.
    assert!(w.fake.remove_runner(&w.scope, id));

    let text = plan_text(&w);
    assert!(text.contains(&format!("-/+ runner {name}")), "{text}");
    assert!(
        text.contains(
            "reason: re-register: the registration is gone from GitHub; the state volume is kept"
        ),
        "{text}"
    );
    assert!(
        !plan_actions(&w).iter().any(|(a, _)| a == "destroy-volume"),
        "{text}"
    );
    assert_ok(&w.apply());
    assert_eq!(w.container_names("per"), std::slice::from_ref(&name));
    assert_eq!(
        w.env_value(&name, "FLEET_REGISTRATION").as_deref(),
        Some("register")
    );
    assert!(w.token_of(&name).is_some());
    assert_eq!(w.fake.registration_tokens_issued(), 2);
    assert_eq!(
        w.state_mount(&name).as_deref(),
        Some(format!("{name}-state").as_str())
    );
    assert_eq!(read_state(&name), "kept", "the same volume");
    // Until config.sh has run, the new container is left to register.
    plan_is_empty(&w);
    let new_id = w.config_sh(&name).expect("registered again");
    assert_ne!(new_id, id);
    assert_eq!(w.owned_runner_names(), std::slice::from_ref(&name));
    plan_is_empty(&w);
}

#[test]
fn a_lost_state_volume_registers_the_runner_again_under_its_name() {
    let w = World::new();
    let runners = registered_pool(&w, 1);
    let (name, id) = runners[0].clone();
    docker_ok(&["rm", "-f", &name]);
    docker_ok(&["volume", "rm", &format!("{name}-state")]);

    let text = plan_text(&w);
    assert!(text.contains(&format!("+ runner {name}")), "{text}");
    assert!(
        text.contains("reason: re-register: the state volume is gone"),
        "{text}"
    );
    assert_ok(&w.apply());
    assert_eq!(
        w.env_value(&name, "FLEET_REGISTRATION").as_deref(),
        Some("register")
    );
    assert_eq!(w.fake.registration_tokens_issued(), 2);
    assert_eq!(w.owned_volumes(), [format!("{name}-state")]);
    // config.sh --replace takes over the registration of that name (actions/runner keeps its id).
    assert_eq!(w.config_sh(&name), Some(id));
    plan_is_empty(&w);
}

/// A second tag of the test image, removed again when dropped (also when the test fails).
struct ImageTag(String);

impl ImageTag {
    fn new(run: &str) -> ImageTag {
        let tag = format!("fleet-busybox-runner:{run}");
        docker_ok(&["tag", common::test_image(), &tag]);
        ImageTag(tag)
    }
}

impl Drop for ImageTag {
    fn drop(&mut self) {
        let _ = docker(&["rmi", &self.0]);
    }
}

#[test]
fn an_image_change_replaces_the_container_and_keeps_the_registration() {
    let w = World::new();
    let runners = registered_pool(&w, 1);
    let (name, id) = runners[0].clone();
    let old_container = container_id(&w, &name);
    write_state(&name, "kept");
    let tag = ImageTag::new(&w.run);

    w.spec(&pool("per", 1, false).replace(common::TEST_IMAGE, &tag.0));
    let text = plan_text(&w);
    assert!(
        text.contains(&format!("-/+ runner {name} (runner id {id})")),
        "{text}"
    );
    assert!(text.contains("configuration changed: image"), "{text}");
    assert!(
        text.contains(&format!("image: {:?} -> {:?}", common::TEST_IMAGE, tag.0)),
        "{text}"
    );
    assert!(
        text.contains(&format!("state:  volume {name}-state (kept)")),
        "{text}"
    );
    assert_ok(&w.apply());
    assert_ne!(container_id(&w, &name), old_container);
    assert_eq!(w.inspect(&name)["Config"]["Image"], tag.0.as_str());
    assert_eq!(w.runner_id(&name), Some(id));
    assert_eq!(w.fake.registration_tokens_issued(), 1, "no new token");
    assert_eq!(w.token_of(&name), None);
    assert_eq!(read_state(&name), "kept");
    assert_eq!(w.config_sh(&name), Some(id));
    plan_is_empty(&w);
}

/// The custom labels of registration `name` on the fake.
fn registered_labels(w: &World, name: &str) -> Vec<String> {
    let mut labels: Vec<String> = w
        .fake
        .runners(&w.scope)
        .into_iter()
        .find(|r| r.name == name)
        .expect("registered")
        .labels
        .into_iter()
        .filter(|l| !["self-hosted", "Linux", "X64"].contains(&l.as_str()))
        .collect();
    labels.sort();
    labels
}

#[test]
fn a_label_change_reaches_the_registration_and_recreates_nothing() {
    let w = World::new();
    let runners = registered_pool(&w, 2);
    let containers: Vec<String> = runners.iter().map(|(n, _)| container_id(&w, n)).collect();
    let own = fleet::contract::ownership_label(&w.run);
    // The runner registered with fleet's host mark besides the ownership label.
    let mark = fleet::contract::host_label(&w.run, "local");
    let mut fleets = vec![own.clone(), mark.clone()];
    fleets.sort();
    assert_eq!(registered_labels(&w, &runners[0].0), fleets);
    let tokens = w.fake.registration_tokens_issued();

    w.spec(&format!(
        "{}    labels: [cuda-12, big]\n",
        pool("per", 2, false)
    ));
    let text = plan_text(&w);
    for (name, id) in &runners {
        assert!(
            text.contains(&format!("~ registration {name} (runner id {id})")),
            "{text}"
        );
    }
    assert!(
        text.contains("reason: the registration's labels differ from the pool's"),
        "{text}"
    );
    assert!(text.contains("+ cuda-12"), "{text}");
    assert!(
        !text.contains("-/+ runner"),
        "no container is replaced:\n{text}"
    );
    w.fake.clear_requests();
    let out = w.apply();
    assert_ok(&out);

    for ((name, id), container) in runners.iter().zip(&containers) {
        assert_eq!(&container_id(&w, name), container, "{name} was recreated");
        assert_eq!(w.runner_id(name), Some(*id));
        // The update keeps the host mark.
        let mut want = vec![
            "big".to_string(),
            "cuda-12".into(),
            own.clone(),
            mark.clone(),
        ];
        want.sort();
        assert_eq!(registered_labels(&w, name), want);
    }
    let writes: Vec<(String, String)> = w
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| (r.method, r.path))
        .collect();
    assert!(
        writes
            .iter()
            .all(|(m, p)| m == "PUT" && p.ends_with("/labels")),
        "{writes:?}"
    );
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert_eq!(w.fake.registration_tokens_issued(), tokens, "no new token");
    plan_is_empty(&w);
}

#[test]
fn at_organization_scope_a_runner_group_change_moves_the_registration() {
    let w = World::at_org();
    let gpu = w.fake.add_runner_group(&w.run, "gpu");
    w.spec_at_org(&pool("per", 1, false));
    assert_ok(&w.apply());
    let name = format!("{}-per-0", w.run);
    let id = w.config_sh(&name).expect("registered");
    let group_of = |w: &World| {
        w.fake
            .runners(&w.scope)
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.runner_group_id)
    };
    assert_eq!(group_of(&w), Some(1), "registered in Default");
    let container = container_id(&w, &name);
    plan_is_empty(&w);

    w.spec_at_org(&format!(
        "{}    runner_group: gpu\n    labels: [cuda-12]\n",
        pool("per", 1, false)
    ));
    let text = plan_text(&w);
    assert!(
        text.contains(&format!("~ registration {name} (runner id {id})")),
        "{text}"
    );
    assert!(
        text.contains("runner_group: \"Default\" -> \"gpu\""),
        "{text}"
    );
    assert!(
        text.contains("reason: the registration's labels and runner_group differ from the pool's"),
        "{text}"
    );
    assert_ok(&w.apply());
    assert_eq!(group_of(&w), Some(gpu));
    assert_eq!(w.runner_id(&name), Some(id));
    assert!(registered_labels(&w, &name).contains(&"cuda-12".to_string()));
    assert_eq!(container_id(&w, &name), container, "nothing recreated");
    plan_is_empty(&w);

    // A container made now (the old one lost) registers in the new group by itself.
    assert_eq!(
        w.env_value(&name, "ACTIONS_RUNNER_INPUT_RUNNERGROUP"),
        None,
        "the running container still has the environment it was made with"
    );
    docker_ok(&["rm", "-f", &name]);
    assert_ok(&w.apply());
    assert_eq!(
        w.env_value(&name, "ACTIONS_RUNNER_INPUT_RUNNERGROUP")
            .as_deref(),
        Some("gpu")
    );
    assert_eq!(w.runner_id(&name), Some(id));
    plan_is_empty(&w);
    assert!(matches!(w.scope, Scope::Org(_)));
}

#[test]
fn destroy_and_removing_the_pool_leave_no_state_volume_behind() {
    let w = World::new();
    w.spec(&format!(
        "{}{}",
        pool("per", 2, false),
        pool("keep", 1, false)
    ));
    assert_ok(&w.apply());
    let per: Vec<String> = (0..2).map(|i| format!("{}-per-{i}", w.run)).collect();
    let kept = format!("{}-keep-0", w.run);
    for name in per.iter().chain([&kept]) {
        w.config_sh(name).expect("registered");
    }
    assert_eq!(w.owned_volumes().len(), 3);

    // The pool leaves the spec: its runners go with registrations and state volumes; one of
    // them had lost its container already (GitHub shows it offline).
    docker_ok(&["rm", "-f", &per[1]]);
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &per[1], false, false)
    );
    w.spec(&pool("keep", 1, false));
    let text = plan_text(&w);
    assert!(
        text.contains(&format!(
            "state:  volume {}-state (removed with it)",
            per[0]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("- volume {}-state", per[1])),
        "{text}"
    );
    assert_ok(&w.apply());
    assert_eq!(w.owned_volumes(), [format!("{kept}-state")]);
    assert_eq!(w.owned_runner_names(), std::slice::from_ref(&kept));
    assert_eq!(w.container_names("per"), Vec::<String>::new());
    plan_is_empty(&w);

    // destroy (without --volumes): the persistent runner's state volume goes with it; there is
    // nothing else labelled with the run.
    let out = w.fleet(&["destroy", "--auto-approve"]);
    assert_ok(&out);
    assert!(w.owned_containers().is_empty());
    assert!(w.owned_runner_names().is_empty());
    assert_eq!(w.owned_volumes(), Vec::<String>::new());
    let by_run = format!("label=fleet.name={}", w.run);
    assert_eq!(docker_ok(&["volume", "ls", "-q", "--filter", &by_run]), "");
}

/// A proxy on a Unix socket in front of the engine that records the request line of every
/// Docker API request that goes through it (`METHOD /path?query`).
struct CountingProxy {
    socket: std::path::PathBuf,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CountingProxy {
    fn start(dir: &std::path::Path) -> CountingProxy {
        use std::os::unix::net::{UnixListener, UnixStream};
        let socket = dir.join("counting-docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the proxy");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else {
                    return;
                };
                let (mut to_engine, mut from_engine) = (engine.try_clone().expect("clone"), engine);
                let mut to_client = client.try_clone().expect("clone");
                let mut from_client = client;
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_engine, &mut to_client);
                });
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 || to_engine.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]);
                        for line in text.split("\r\n") {
                            let method = ["GET /", "POST /", "PUT /", "DELETE /", "HEAD /"];
                            if method.iter().any(|m| line.starts_with(m))
                                && line.ends_with(" HTTP/1.1")
                            {
                                let request = line.trim_end_matches(" HTTP/1.1").to_string();
                                log.lock().expect("log").push(request);
                            }
                        }
                    }
                    let _ = to_engine.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CountingProxy { socket, seen }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().expect("log"))
    }
}

#[test]
fn a_persistent_replace_looks_its_runner_up_once() {
    let w = World::new();
    let proxy = CountingProxy::start(w.dir.path());
    let endpoint = format!("unix://{}", proxy.socket.display());
    let gpus = "none";
    w.spec_with(&pool("per", 3, false), &endpoint, gpus);
    assert_ok(&w.apply());
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            w.config_sh(&format!("{}-per-{i}", w.run))
                .expect("registered")
        })
        .collect();
    // A configuration change: each of the three is replaced under its registration.
    let changed = format!("{}    env: {{ REPLACED: \"1\" }}\n", pool("per", 3, false));
    w.spec_with(&changed, &endpoint, gpus);
    proxy.take();
    w.fake.clear_requests();
    assert_ok(&w.apply());
    let docker = proxy.take();
    let github = w.fake.requests();
    let lookups = github
        .iter()
        .filter(|r| {
            r.method == "GET" && r.path.ends_with("/actions/runners") && r.query.contains("name=")
        })
        .count();
    eprintln!(
        "persistent replace of 3 runners: {} Docker requests {docker:#?}\n{} GitHub requests {:#?}",
        docker.len(),
        github.len(),
        github
            .iter()
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect::<Vec<_>>()
    );
    assert_eq!(lookups, 3, "one lookup per runner");
    // The image the observation saw is not inspected again; each container's ownership is
    // checked once (docs/benchmarks.md).
    let count = |prefix: &str, suffix: &str| {
        docker
            .iter()
            .filter(|r| r.starts_with(prefix) && r.ends_with(suffix))
            .count()
    };
    assert_eq!(count("GET /images/", "/json"), 1, "{docker:#?}");
    assert_eq!(count("GET /containers/", "/json"), 3, "{docker:#?}");
    assert_eq!(docker.len(), 5 + 3 * 7, "{docker:#?}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(w.runner_id(&format!("{}-per-{i}", w.run)), Some(*id));
    }
    assert_eq!(w.fake.registration_tokens_issued(), 3, "no new token");
}
