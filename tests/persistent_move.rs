//! Moving a persistent runner to another host with its state volume, as docs/operations.md
//! says: the state volume copied into a volume with fleet's labels on the new host, the old
//! container and volume removed, then the pool's `host` changed. The second host is an extra
//! Docker engine on this machine (tests/common/engines.rs).

mod common;

use std::process::{Command, Stdio};

use common::engines::{Engine, Listen, RunDir};
use common::{RUN_LABEL, World, assert_ok, docker_ok, pool, stderr, stdout};

/// The main engine (`local`) and an extra one (`other`), with the test image loaded.
struct TwoHosts {
    other: Engine,
    hosts: String,
}

impl TwoHosts {
    fn start(run: &std::sync::Arc<RunDir>) -> TwoHosts {
        let other = Engine::start(run, "other", Listen::Unix);
        other.load_image(common::test_image());
        let hosts = format!(
            "  local:\n    docker: unix:///var/run/docker.sock\n    gpus: none\n  other:\n    docker: {}\n    gpus: none\n",
            other.unix_url()
        );
        TwoHosts { other, hosts }
    }

    /// The spec with one persistent runner on `host`.
    fn spec(&self, w: &World, host: &str) {
        w.spec_hosts(
            &self.hosts,
            &format!("{}    host: {host}\n", pool("per", 1, false)),
        );
    }
}

/// A persistent runner on `local`, registered, with a marker file in its state volume, then
/// stopped (idle) for the move. Returns its name and registration id.
fn runner_to_move(w: &World, hosts: &TwoHosts) -> (String, u64) {
    hosts.spec(w, "local");
    assert_ok(&w.apply());
    let name = format!("{}-per-0", w.run);
    let id = w.config_sh(&name).expect("registered");
    docker_ok(&[
        "exec",
        &name,
        "sh",
        "-c",
        "echo moved-state > /var/lib/fleet-runner/marker",
    ]);
    docker_ok(&["stop", "-t", "0", &name]);
    assert!(
        w.fake
            .set_runner_state_by_name(&w.scope, &name, false, false)
    );
    (name, id)
}

/// `docker run --rm -v VOLUME:/from:ro IMAGE tar -cf - .` on the main engine piped into
/// `docker run --rm -i -v VOLUME:/to IMAGE tar -xf -` on the other one.
fn copy_volume(w: &World, other: &Engine, volume: &str) {
    let image = common::test_image();
    let label = format!("{RUN_LABEL}={}", w.run);
    let mut from = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--label", &label])
        .args(["-v", &format!("{volume}:/from:ro"), image])
        .args(["busybox", "tar", "-C", "/from", "-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker run tar -c");
    let tar = from.stdout.take().expect("tar's stdout");
    let to = Command::new("docker")
        .args(["--host", &other.unix_url()])
        .args(["run", "--rm", "-i", "--network", "none"])
        .args(["-v", &format!("{volume}:/to"), image])
        .args(["busybox", "tar", "-C", "/to", "-xf", "-"])
        .stdin(Stdio::from(tar))
        .output()
        .expect("docker run tar -x");
    let sent = from.wait().expect("wait for tar -c");
    assert!(
        sent.success() && to.status.success(),
        "copying {volume} failed: {}",
        String::from_utf8_lossy(&to.stderr)
    );
}

#[test]
fn a_runner_moved_with_its_labelled_state_volume_comes_back_as_itself_on_the_new_host() {
    let w = World::new();
    let run = RunDir::new();
    let hosts = TwoHosts::start(&run);
    let (name, id) = runner_to_move(&w, &hosts);
    let volume = format!("{name}-state");

    // The volume on the new host carries fleet's labels, with the runner's name.
    hosts.other.docker_ok(&[
        "volume",
        "create",
        "--label",
        &format!("fleet.name={}", w.run),
        "--label",
        "fleet.pool=per",
        "--label",
        &format!("fleet.runner={name}"),
        &volume,
    ]);
    copy_volume(&w, &hosts.other, &volume);
    // Off the old host by hand, so that fleet does not retire the runner there.
    docker_ok(&["rm", &name]);
    docker_ok(&["volume", "rm", &volume]);

    hosts.spec(&w, "other");
    let out = w.fleet(&["plan"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("# host other, pool per"), "{text}");
    assert!(text.contains(&format!("+ runner {name}\n")), "{text}");
    assert!(
        text.contains("reason: container missing; registration and state kept"),
        "{text}"
    );
    assert!(
        text.contains(&format!("state:  volume {volume} (kept)")),
        "{text}"
    );
    assert!(!text.contains("- registration"), "{text}");
    assert_ok(&w.apply());

    let env = hosts
        .other
        .docker_ok(&["inspect", "--format", "{{json .Config.Env}}", &name]);
    assert!(env.contains("FLEET_REGISTRATION=restore"), "{env}");
    assert!(!env.contains("ACTIONS_RUNNER_INPUT_TOKEN"), "{env}");
    assert_eq!(
        hosts.other.docker_ok(&[
            "exec",
            &name,
            "busybox",
            "cat",
            "/var/lib/fleet-runner/marker"
        ]),
        "moved-state"
    );
    assert_eq!(w.runner_id(&name), Some(id), "the same registration");
    assert_eq!(w.fake.registration_tokens_issued(), 1, "no new token");
    assert!(
        w.container_names("per").is_empty(),
        "nothing on the old host"
    );
    let out = w.fleet(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// The same move with the volume made by hand without fleet's labels. fleet never uses a volume
/// it did not create: it must not mount it as the runner's state, and must say why.
#[test]
fn a_state_volume_without_fleets_labels_is_never_used_and_the_plan_says_so() {
    let w = World::new();
    let run = RunDir::new();
    let hosts = TwoHosts::start(&run);
    let (name, _) = runner_to_move(&w, &hosts);
    let volume = format!("{name}-state");
    hosts.other.docker_ok(&["volume", "create", &volume]);
    copy_volume(&w, &hosts.other, &volume);
    docker_ok(&["rm", &name]);
    docker_ok(&["volume", "rm", &volume]);

    hosts.spec(&w, "other");
    let plan = w.fleet(&["plan"]);
    let apply = w.apply();
    let said = format!(
        "{}{}{}{}",
        stdout(&plan),
        stderr(&plan),
        stdout(&apply),
        stderr(&apply)
    );
    let mounts = hosts.other.docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Name}} {{end}}",
        &name,
    ]);
    let mounted = String::from_utf8_lossy(&mounts.stdout).contains(&volume);
    assert!(
        !mounted,
        "fleet mounted the volume {volume}, which it did not create, as the runner's state \
         (its environment: {}); plan and apply said:\n{said}",
        hosts
            .other
            .docker_ok(&["inspect", "--format", "{{json .Config.Env}}", &name])
    );
    assert!(
        said.lines()
            .any(|l| l.contains(&volume) && l.contains("not created by fleet")),
        "the plan does not say why the runner's state volume is not used:\n{said}"
    );
    // The volume is left as it is.
    assert_eq!(
        hosts
            .other
            .docker_ok(&["volume", "inspect", "--format", "{{json .Labels}}", &volume]),
        "null"
    );
}

/// The pool's `host` changes and nothing is moved by hand. The runner is still wanted (only its
/// host changed), so it keeps its registration (docs/apply.md, "Persistent runners"): the old
/// container goes, and the runner registers again under its name on the new host, with a fresh
/// state volume; `config.sh --replace` takes over the registration it finds.
#[test]
fn changing_a_persistent_pools_host_keeps_its_registration() {
    let w = World::new();
    let run = RunDir::new();
    let hosts = TwoHosts::start(&run);
    let (name, id) = runner_to_move(&w, &hosts);

    hosts.spec(&w, "other");
    let plan = w.fleet(&["plan"]);
    assert_ok(&plan);
    let apply = w.apply();
    assert_ok(&apply);
    let said = format!("{}{}", stdout(&plan), stdout(&apply));
    assert!(w.container_names("per").is_empty(), "{said}");
    let env = hosts
        .other
        .docker_ok(&["inspect", "--format", "{{json .Config.Env}}", &name]);
    assert!(env.contains("FLEET_REGISTRATION=register"), "{env}");
    let mut env: Vec<String> = serde_json::from_str(&env).expect("environment");
    let host = format!("unix://{}", hosts.other.socket().display());
    env.extend(common::secret_inputs(&["-H", &host, "exec", &name], &env));
    w.config_sh_with(&name, &env).expect("registered");
    assert_eq!(
        w.runner_id(&name),
        Some(id),
        "the runner lost its registration when its pool changed host; plan and apply said:\n{said}"
    );
}
