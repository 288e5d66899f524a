//! Fleet touches only what it can prove is its own (docs/security.md, "Never touch what is not
//! proven owned"): containers by the id it created or observed with its labels, never by name;
//! state volumes only with its labels; registrations only with its ownership label. The real
//! Docker engine and the fake GitHub; everything a test makes carries its run id and is removed
//! afterwards, failed or not.

mod common;

use std::process::Output;

use common::{RUN_LABEL, TEST_IMAGE, World, assert_ok, docker, docker_ok, pool, stderr, stdout};
use fleet::apply::{ApplyReport, Executor, Outcome, Quiet};
use fleet::github::RetryPolicy;
use fleet::observe::Observers;
use fleet::plan::{Change, Plan};

fn assert_failed(out: &Output) -> String {
    let text = format!("{}{}", stdout(out), stderr(out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    text
}

/// Plans in-process, lets `edit` change the plan or the world, then applies that plan.
fn apply_in_process(w: &World, edit: impl FnOnce(&mut Plan)) -> ApplyReport {
    apply_spec_in_process(w, &w.dir.path().join("fleet.yaml"), |_| {}, edit)
}

/// Observes, lets `prepare` change the observation (to play a plan made earlier), plans, lets
/// `edit` change the plan or the world, then applies that plan.
fn apply_spec_in_process(
    w: &World,
    path: &std::path::Path,
    prepare: impl FnOnce(&mut fleet::observe::state::Observed),
    edit: impl FnOnce(&mut Plan),
) -> ApplyReport {
    let spec = fleet::spec::load(path).expect("spec");
    let token = w.fake.token();
    let api = w.fake.url();
    let env = move |k: &str| match k {
        "GITHUB_TOKEN" => Some(token.clone()),
        "GITHUB_API_URL" => Some(api.clone()),
        _ => None,
    };
    w.rt.block_on(async {
        let observers = Observers::connect(&spec, w.dir.path(), &env, RetryPolicy::default())
            .await
            .expect("connect");
        let mut observed = observers.observe(&spec).await.expect("observe");
        prepare(&mut observed);
        let mut plan = fleet::plan::plan(&spec, &observed).expect("plan");
        edit(&mut plan);
        Executor::new(&spec, &observers, &observed, 4)
            .apply(&plan, &Quiet)
            .await
    })
}

fn container_id(name: &str) -> Option<String> {
    let out = docker(&["inspect", "--format", "{{.Id}}", name]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn volume_labels(name: &str) -> Option<String> {
    let out = docker(&["volume", "inspect", "--format", "{{json .Labels}}", name]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_foreign_container_holding_a_persistent_runners_name_is_never_removed() {
    let w = World::new();
    w.spec(&pool("per", 1, false));
    let name = format!("{}-per-0", w.run);
    let foreign = w.add_foreign_container(&name);

    let text = assert_failed(&w.apply());
    assert!(
        text.contains(&format!("container {name} already exists"))
            && text.contains("rename or remove it"),
        "{text}"
    );
    assert_eq!(container_id(&name).as_deref(), Some(foreign.as_str()));
    assert_eq!(w.inspect(&name)["State"]["Status"], "running");
    assert!(w.owned_containers().is_empty());
    // The state volume this step made for the runner went with it.
    assert_eq!(volume_labels(&format!("{name}-state")), None);
}

#[test]
fn a_foreign_container_holding_a_planned_ephemeral_name_stays_and_the_runner_takes_another() {
    let w = World::new();
    w.spec(&pool("eph", 1, true));
    let mut planned = String::new();
    let mut foreign = String::new();
    let report = apply_in_process(&w, |plan| {
        planned = plan.changes[0].name().to_string();
        foreign = w.add_foreign_container(&planned);
    });
    let step = &report.steps[0];
    assert_eq!(step.outcome, Outcome::Done, "{step:?}");
    let runner = step.runner.clone().expect("a runner");
    assert_ne!(runner, planned, "the runner took another name");
    assert_eq!(container_id(&planned).as_deref(), Some(foreign.as_str()));
    assert_eq!(w.inspect(&planned)["State"]["Status"], "running");
    // Registration and container carry the same name; the registration made for the name that
    // could not be used is gone.
    assert_eq!(w.owned_runner_names(), std::slice::from_ref(&runner));
    assert_eq!(w.container_names("eph"), [runner]);
    assert!(w.fake.runners(&w.scope).iter().all(|r| r.name != planned));
}

#[test]
fn a_destroy_goes_by_the_observed_id_and_never_by_name() {
    let w = World::new();
    let path = w.spec(&pool("eph", 1, true));
    let config = w.config(&path, "eph");
    let owned = format!("{}-eph-aaaaaa", w.run);
    w.add_container(&owned, "eph", &config, &[], true);
    let foreign = format!("{}-eph-bbbbbb", w.run);
    let foreign_id = w.add_foreign_container(&foreign);
    w.spec(&pool("eph", 0, true));

    // A destroy without an id, naming a foreign container: refused, nothing removed.
    let report = apply_in_process(&w, |plan| {
        let Change::Runner(r) = &mut plan.changes[0] else {
            panic!("a runner change: {plan:?}");
        };
        r.name = foreign.clone();
        r.container_id = None;
    });
    assert!(
        matches!(&report.steps[0].outcome, Outcome::Failed(why) if why.contains("no container id")),
        "{:?}",
        report.steps
    );
    assert_eq!(container_id(&foreign).as_deref(), Some(foreign_id.as_str()));
    assert!(container_id(&owned).is_some());

    // A destroy carrying the id of a container without the fleet's labels: refused too.
    let report = apply_in_process(&w, |plan| {
        let Change::Runner(r) = &mut plan.changes[0] else {
            panic!("a runner change: {plan:?}");
        };
        r.container_id = Some(foreign_id.clone());
    });
    assert!(
        matches!(&report.steps[0].outcome, Outcome::Failed(why) if why.contains("not fleet")),
        "{:?}",
        report.steps
    );
    assert_eq!(container_id(&foreign).as_deref(), Some(foreign_id.as_str()));
    assert!(container_id(&owned).is_some());

    // The plan as made: the owned container goes, by its id.
    let report = apply_in_process(&w, |_| {});
    assert_eq!(report.steps[0].outcome, Outcome::Done, "{:?}", report.steps);
    assert_eq!(container_id(&owned), None);
    assert_eq!(container_id(&foreign).as_deref(), Some(foreign_id.as_str()));
}

#[test]
fn a_foreign_volume_with_a_state_volumes_name_is_neither_mounted_nor_removed() {
    let w = World::new();
    w.spec(&pool("per", 1, false));
    let volume = format!("{}-per-0-state", w.run);
    let run_label = format!("{RUN_LABEL}={}", w.run);
    docker_ok(&["volume", "create", "--label", &run_label, &volume]);
    let labels = volume_labels(&volume);

    // The plan refuses it before anything is done.
    let text = assert_failed(&w.fleet(&["plan"]));
    assert!(
        text.contains(&format!("volume `{volume}`")) && text.contains("fleet.name"),
        "{text}"
    );
    let text = assert_failed(&w.apply());
    assert!(text.contains(&format!("volume `{volume}`")), "{text}");
    assert!(w.owned_containers().is_empty(), "no container mounts it");
    assert_eq!(w.fake.registration_tokens_issued(), 0);
    assert_eq!(volume_labels(&volume), labels, "the volume is as it was");

    // Destroy, with --volumes too, leaves it alone.
    assert_ok(&w.fleet(&["destroy", "--auto-approve", "--volumes"]));
    assert_eq!(volume_labels(&volume), labels);
}

/// Two fleets whose generated names collide: `<run>` with pool `gpu-x` and `<run>-gpu` with pool
/// `x` both name their first persistent runner `<run>-gpu-x-0` (the shape of fleets `ci` and
/// `ci-gpu`; the run id keeps concurrent test runs apart on the shared engine).
struct Collision<'w> {
    w: &'w World,
    short: Fleet,
    long: Fleet,
    runner: String,
    volume: String,
}

struct Fleet {
    name: String,
    spec: String,
}

impl<'w> Collision<'w> {
    fn new(w: &'w World) -> Collision<'w> {
        let fleet = |name: String, pool: &str| {
            let dir = w.dir.path().join(&name);
            std::fs::create_dir_all(&dir).expect("spec dir");
            let spec = dir.join("fleet.yaml");
            let text = format!(
                "version: 1\nname: {name}\ngithub:\n  repo: acme/{run}\n  api_url: {url}\nhosts:\n  local:\n    docker: unix:///var/run/docker.sock\n    gpus: none\npools:\n  {pool}:\n    count: 1\n    ephemeral: false\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n",
                run = w.run,
                url = w.fake.url(),
            );
            std::fs::write(&spec, text).expect("write spec");
            Fleet {
                name,
                spec: spec.to_string_lossy().into_owned(),
            }
        };
        let runner = format!("{}-gpu-x-0", w.run);
        Collision {
            short: fleet(w.run.clone(), "gpu-x"),
            long: fleet(format!("{}-gpu", w.run), "x"),
            volume: format!("{runner}-state"),
            runner,
            w,
        }
    }

    fn run(&self, fleet: &Fleet, args: &[&str]) -> Output {
        let mut all = vec!["-f", fleet.spec.as_str()];
        all.extend_from_slice(args);
        self.w.fleet(&all)
    }

    fn apply(&self, fleet: &Fleet) -> Output {
        self.run(fleet, &["apply", "--auto-approve"])
    }

    fn destroy(&self, fleet: &Fleet) -> Output {
        self.run(fleet, &["destroy", "--auto-approve", "--volumes"])
    }

    /// What `fleet` has of the contested name: its container's id, its volume's labels, its
    /// registration's id.
    fn holdings(&self, fleet: &Fleet) -> (Option<String>, Option<String>, Option<u64>) {
        let container = container_id(&self.runner).filter(|id| {
            docker_ok(&[
                "inspect",
                "--format",
                "{{index .Config.Labels \"fleet.name\"}}",
                id,
            ]) == fleet.name
        });
        let volume = volume_labels(&self.volume)
            .filter(|labels| labels.contains(&format!("\"fleet.name\":\"{}\"", fleet.name)));
        let own = fleet::contract::ownership_label(&fleet.name);
        let registration = self
            .w
            .fake
            .runners(&self.w.scope)
            .into_iter()
            .find(|r| r.name == self.runner && r.labels.contains(&own))
            .map(|r| r.id);
        (container, volume, registration)
    }

    /// Plays the runner's config.sh: registers the runner with `fleet`'s ownership label.
    fn register(&self, fleet: &Fleet) -> u64 {
        self.w.fake.add_runner(
            &self.w.scope,
            fake_github::NewRunner {
                name: self.runner.clone(),
                labels: vec![
                    "self-hosted".into(),
                    "Linux".into(),
                    "X64".into(),
                    fleet::contract::ownership_label(&fleet.name),
                ],
                status_online: true,
                ..fake_github::NewRunner::default()
            },
        )
    }

    /// `loser` cannot take what `holder` has, and leaves it exactly as it was.
    fn contest(&self, holder: &Fleet, loser: &Fleet, expected: &str) {
        let before = self.holdings(holder);
        let tokens = self.w.fake.registration_tokens_issued();
        let text = assert_failed(&self.apply(loser));
        assert!(
            text.contains(&self.runner) && text.contains(expected),
            "{expected:?} not in:\n{text}"
        );
        assert_eq!(
            self.holdings(holder),
            before,
            "{} was disturbed",
            holder.name
        );
        assert_eq!(self.holdings(loser), (None, None, None));
        assert_eq!(
            self.w.fake.registration_tokens_issued(),
            tokens,
            "no token for a name another fleet holds"
        );
        self.destroy_leaves(loser, holder);
    }

    /// `loser` applies and succeeds under the next index: the planner sees the holder's name
    /// taken on GitHub. The holder is left exactly as it was.
    fn sidestep(&self, holder: &Fleet, loser: &Fleet) {
        let before = self.holdings(holder);
        assert_ok(&self.apply(loser));
        assert_eq!(
            self.holdings(holder),
            before,
            "{} was disturbed",
            holder.name
        );
        let next = self.runner.replace("-x-0", "-x-1");
        let filter = format!("label=fleet.name={}", loser.name);
        let names = docker_ok(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
        assert_eq!(names, next, "{} took the next index", loser.name);
        self.destroy_leaves(loser, holder);
        let names = docker_ok(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
        assert_eq!(names, "", "{} destroyed its own runner", loser.name);
    }

    /// Destroying `fleet` (volumes too) leaves `other`'s holdings as they were.
    fn destroy_leaves(&self, fleet: &Fleet, other: &Fleet) {
        let before = self.holdings(other);
        assert_ok(&self.destroy(fleet));
        assert_eq!(self.holdings(other), before, "{} was disturbed", other.name);
    }
}

impl Drop for Collision<'_> {
    fn drop(&mut self) {
        // World removes the short fleet's resources; these are the long one's. Runs on failure.
        let filter = format!("label=fleet.name={}", self.long.name);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
        let volumes = docker(&["volume", "ls", "-q", "--filter", &filter]);
        for v in String::from_utf8_lossy(&volumes.stdout).split_whitespace() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
    }
}

#[test]
fn two_fleets_whose_names_collide_never_disturb_each_other() {
    let w = World::new();
    let c = Collision::new(&w);
    let (short, long) = (&c.short, &c.long);

    // The short fleet takes the name; its runner has not registered yet.
    assert_ok(&c.apply(short));
    let (container, volume, _) = c.holdings(short);
    assert!(container.is_some() && volume.is_some());
    // The long fleet meets the short one's state volume.
    c.contest(short, long, "fleet.name");

    // The short fleet's runner registers while the long fleet applies a plan made before:
    // the long fleet asks no token for a name GitHub has as a runner it does not own.
    let tokens = w.fake.registration_tokens_issued();
    let long_spec = std::path::PathBuf::from(&long.spec);
    // The long fleet's plan was made before the short fleet's state volume existed.
    let before_the_volume = |observed: &mut fleet::observe::state::Observed| {
        for host in observed.hosts.values_mut() {
            host.volumes.retain(|v| v.owned);
        }
    };
    let report = apply_spec_in_process(&w, &long_spec, before_the_volume, |plan| {
        assert_eq!(plan.changes[0].name(), c.runner, "{plan:?}");
        c.register(short);
    });
    assert!(
        matches!(&report.steps[0].outcome, Outcome::Failed(why) if why.contains(&format!("GitHub has a runner named {}", c.runner))),
        "{:?}",
        report.steps
    );
    assert_eq!(w.fake.registration_tokens_issued(), tokens);
    let held = c.holdings(short);
    assert!(held.0.is_some() && held.1.is_some() && held.2.is_some());
    // Planned again, the long fleet sees the name taken and uses the next index.
    c.sidestep(short, long);
    let out = c.run(short, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // The roles swap.
    assert_ok(&c.destroy(short));
    assert_eq!(c.holdings(short), (None, None, None));
    assert_ok(&c.apply(long));
    c.contest(long, short, "fleet.name");
    c.register(long);
    c.sidestep(long, short);
    assert_ok(&c.destroy(long));
    assert_eq!(c.holdings(long), (None, None, None));
}

/// `plan.json` with the destroy's `container_id` replaced by `id`, saved as `name`; returns the
/// destroyed runner's name.
fn edit_saved_destroy(w: &World, name: &str, id: &str) -> String {
    let text = std::fs::read_to_string(w.dir.path().join("plan.json")).expect("saved plan");
    let mut plan: serde_json::Value = serde_json::from_str(&text).expect("plan JSON");
    let change = plan["changes"]
        .as_array_mut()
        .expect("changes")
        .iter_mut()
        .find(|c| c["action"] == "destroy")
        .expect("a destroy");
    assert_ne!(change["container_id"], id, "an edit");
    change["container_id"] = serde_json::Value::from(id);
    let runner = change["name"].as_str().expect("a name").to_string();
    std::fs::write(w.dir.path().join(name), plan.to_string()).expect("write plan");
    runner
}

#[test]
fn a_saved_plan_whose_destroy_names_another_container_is_refused() {
    let w = World::new();
    let path = w.spec(&pool("eph", 2, true));
    let config = w.config(&path, "eph");
    let first = format!("{}-eph-aaaaaa", w.run);
    let second = format!("{}-eph-bbbbbb", w.run);
    let ids = [
        w.add_container(&first, "eph", &config, &[], true),
        w.add_container(&second, "eph", &config, &[], true),
    ];
    // Ephemeral runners register before their containers start: both are healthy and idle.
    w.register(&first, true, true, false);
    w.register(&second, true, true, false);
    let foreign = w.add_foreign_container(&format!("{}-eph-cccccc", w.run));
    // One of the two owned runners goes.
    w.spec(&pool("eph", 1, true));
    assert_ok(&w.fleet(&["plan", "--out", "plan.json"]));
    let before = w.docker_snapshot();

    let planned = std::fs::read_to_string(w.dir.path().join("plan.json")).expect("plan");
    let destroyed = if planned.contains(ids[0].as_str()) {
        0
    } else {
        1
    };
    let kept_id = &ids[1 - destroyed];
    for (file, id) in [("owned.json", kept_id), ("foreign.json", &foreign)] {
        let runner = edit_saved_destroy(&w, file, id);
        let text = assert_failed(&w.fleet(&["apply", file]));
        assert!(
            text.contains(&format!(
                "change 1 differs in `container_id` (saved: destroy {runner:?}; planned now: destroy {runner:?})"
            )) && text.contains("Nothing was changed"),
            "{file}: {text}"
        );
        assert_eq!(w.docker_snapshot(), before, "{file}: something changed");
    }
    // The plan as saved is applied.
    assert_ok(&w.fleet(&["apply", "plan.json"]));
    assert_eq!(container_id([&first, &second][destroyed]), None);
    assert!(container_id(&foreign).is_some());
}
