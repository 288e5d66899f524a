//! Several Docker hosts in one fleet, with real engines on this machine: the main engine over
//! its Unix socket, an extra engine over TLS on 127.0.0.1, and one behind the test's own sshd
//! (`ssh://`, with the test's ssh client config through FLEET_SSH_CONFIG). The fleet binary
//! drives them all from one fleet.yaml against the fake GitHub. Everything the tests start
//! (engines, sshd, containers) is stopped and removed afterwards, also when a test fails
//! (tests/common/engines.rs and `World`).

mod common;
#[path = "support/watch.rs"]
mod watch_process;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::engines::{Certificates, Engine, Listen, RunDir, Sshd};
use common::{TEST_IMAGE, World, engine_with_image, stderr, stdout, tls_listener};
use watch_process::{WatchProcess, sample};

/// The extra engines and sshd of one test; dropped (stopped, removed) with the test.
struct Farm {
    tower: Engine,
    vm: Option<Engine>,
    sshd: Option<Sshd>,
    certs: Certificates,
    cert_dir: std::path::PathBuf,
    _run: Arc<RunDir>,
}

impl Farm {
    /// A TLS engine (`tower`), and with `ssh` an engine behind the test's sshd (`pve-vm`); both
    /// hold the test image.
    fn start(ssh: bool) -> Farm {
        common::test_image();
        let run = RunDir::new();
        let (listen, certs, cert_dir) = tls_listener(&run);
        let tower = engine_with_image(&run, "tower", listen);
        let (vm, sshd) = if ssh {
            let vm = engine_with_image(&run, "vm", Listen::Unix);
            let sshd = Sshd::start(&run, &vm.unix_url());
            (Some(vm), Some(sshd))
        } else {
            (None, None)
        };
        Farm {
            tower,
            vm,
            sshd,
            certs,
            cert_dir,
            _run: run,
        }
    }

    fn sshd(&self) -> &Sshd {
        self.sshd.as_ref().expect("sshd")
    }

    fn vm(&self) -> &Engine {
        self.vm.as_ref().expect("vm engine")
    }

    /// FLEET_SSH_CONFIG for fleet: the test's ssh client config (or the one with a wrong
    /// known host key).
    fn ssh_env(&self, wrong_host_key: bool) -> Vec<(&'static str, String)> {
        let Some(sshd) = &self.sshd else {
            return vec![];
        };
        let config = if wrong_host_key {
            &sshd.wrong_host_key_config
        } else {
            &sshd.client_config
        };
        vec![("FLEET_SSH_CONFIG", config.display().to_string())]
    }
}

/// How `hosts:` is written for one run of fleet.
struct Hosts<'a> {
    farm: &'a Farm,
    ca: &'a Path,
    key: &'a Path,
    /// `gpus:` of pve-vm.
    vm_gpus: &'a str,
}

impl<'a> Hosts<'a> {
    fn new(farm: &'a Farm) -> Hosts<'a> {
        Hosts {
            farm,
            ca: &farm.certs.ca,
            key: &farm.certs.client_key,
            vm_gpus: "none",
        }
    }

    fn yaml(&self) -> String {
        let tower = self.farm.tower.tcp_url().expect("a TCP port");
        let mut yaml = format!(
            "hosts:\n  bare:\n    docker: unix:///var/run/docker.sock\n    gpus: [GPU-bare-0]\n    gpu_mode: env\n  \
             tower:\n    docker: {tower}\n    tls: {{ ca: {}, cert: {}, key: {} }}\n    gpus: [GPU-tower-0, GPU-tower-1]\n    gpu_mode: env\n",
            self.ca.display(),
            self.farm.certs.client_cert.display(),
            self.key.display()
        );
        if let Some(sshd) = &self.farm.sshd {
            yaml.push_str(&format!(
                "  pve-vm:\n    docker: {}\n    gpus: {}\n",
                sshd.url(),
                self.vm_gpus
            ));
        }
        yaml
    }
}

/// Writes fleet.yaml with `hosts` and `pools`.
fn write_spec(w: &World, hosts: &Hosts, pools: &str) {
    let text = format!(
        "version: 1\nname: {run}\ngithub:\n  repo: acme/{run}\n  api_url: {url}\n{hosts}pools:\n{pools}",
        run = w.run,
        url = w.fake.url(),
        hosts = hosts.yaml(),
    );
    std::fs::write(w.dir.path().join("fleet.yaml"), text).expect("write fleet.yaml");
}

/// A busybox pool on `hosts` (a YAML list), `count` runners, with `extra` settings.
fn pool_on(name: &str, hosts: &str, count: u32, extra: &str) -> String {
    format!(
        "  {name}:\n    host: {hosts}\n    count: {count}\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n{extra}"
    )
}

fn fleet(w: &World, farm: &Farm, args: &[&str], wrong_host_key: bool) -> std::process::Output {
    let mut env: Vec<(&str, String)> = vec![("GITHUB_TOKEN", w.fake.token())];
    env.extend(farm.ssh_env(wrong_host_key));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    w.fleet_with_env(args, &env)
}

fn ok(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// Runner containers of `pool` on an engine (`docker ps` output of `engine`), by name.
fn runners_on(listing: &str, run: &str, pool: &str) -> Vec<String> {
    let prefix = format!("{run}-{pool}-");
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// `<id> <name> <state> <labels>` of the fleet's containers on the main engine.
fn main_engine_listing(w: &World) -> String {
    common::docker_ok(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=fleet.name={}", w.run),
        "--format",
        "{{.ID}} {{.Names}} {{.State}} {{.Labels}}",
    ])
}

/// Every engine's containers, to compare before and after something that must change nothing.
fn everything(w: &World, farm: &Farm) -> BTreeMap<&'static str, String> {
    let mut all = BTreeMap::from([
        ("bare", main_engine_listing(w)),
        ("tower", farm.tower.containers()),
    ]);
    if let Some(vm) = &farm.vm {
        all.insert("pve-vm", vm.containers());
    }
    all
}

/// The GPUs fleet recorded on each runner container of `pool` on the engine `listing` comes
/// from, by its `fleet.gpus` label.
fn gpu_labels(engine: impl Fn(&[&str]) -> String, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            engine(&[
                "inspect",
                "--format",
                "{{index .Config.Labels \"fleet.gpus\"}}",
                n,
            ])
        })
        .collect()
}

#[test]
fn one_fleet_drives_three_engines_and_places_runners_by_the_rule() {
    let farm = Farm::start(true);
    let w = World::new();
    let hosts = Hosts::new(&farm);
    let pools = format!(
        "{}{}{}",
        pool_on("spread", "[bare, tower]", 3, ""),
        pool_on("gpu", "[bare, tower]", 3, "    gpus: 1\n"),
        pool_on("vm", "pve-vm", 1, "    ephemeral: false\n"),
    );
    write_spec(&w, &hosts, &pools);
    let plan = ok(&fleet(&w, &farm, &["plan", "--format", "json"], false));
    let plan: serde_json::Value = serde_json::from_str(&plan).expect("plan JSON");
    assert_eq!(plan["summary"]["create"], 7, "{plan:#}");
    ok(&fleet(&w, &farm, &["apply", "--auto-approve"], false));

    // Fewest runners first, ties to the host listed first: bare, tower, bare.
    let bare = main_engine_listing(&w);
    let tower = farm.tower.containers();
    let vm = farm.vm().containers();
    assert_eq!(runners_on(&bare, &w.run, "spread").len(), 2, "{bare}");
    assert_eq!(runners_on(&tower, &w.run, "spread").len(), 1, "{tower}");
    // Most free GPUs first: tower (2 free), then a tie (1, 1) to bare, then tower.
    let gpu_bare = runners_on(&bare, &w.run, "gpu");
    let gpu_tower = runners_on(&tower, &w.run, "gpu");
    assert_eq!(gpu_bare.len(), 1, "{bare}");
    assert_eq!(gpu_tower.len(), 2, "{tower}");
    assert_eq!(gpu_labels(common::docker_ok, &gpu_bare), ["GPU-bare-0"]);
    let mut on_tower = gpu_labels(|a| farm.tower.docker_ok(a), &gpu_tower);
    on_tower.sort();
    assert_eq!(on_tower, ["GPU-tower-0", "GPU-tower-1"]);
    assert_eq!(runners_on(&vm, &w.run, "vm"), [format!("{}-vm-0", w.run)]);
    // Each engine holds only its own runners, all running.
    for listing in [&bare, &tower, &vm] {
        assert!(
            listing.lines().all(|l| l.contains(" running ")),
            "{listing}"
        );
    }

    // Converged: nothing to do, and status shows every host with its GPUs.
    let again = ok(&fleet(&w, &farm, &["plan", "--detailed-exitcode"], false));
    assert!(again.contains("No changes"), "{again}");
    let status = ok(&fleet(&w, &farm, &["status"], false));
    assert!(
        status.contains("pool spread on hosts bare, tower: 3 of 3 runners"),
        "{status}"
    );
    assert!(
        status.contains("host tower: 0 of 2 GPUs free (declared)"),
        "{status}"
    );
    assert!(
        status.contains("host pve-vm: no GPUs (gpus: none)"),
        "{status}"
    );
    let gpus = ok(&fleet(&w, &farm, &["gpus", "--host", "bare"], false));
    assert!(gpus.contains("GPU-bare-0"), "{gpus}");
    assert!(gpus.contains(&gpu_bare[0]), "held by its runner: {gpus}");
}

#[test]
fn broken_endpoints_are_clear_errors_that_change_nothing_and_exclude_host_works_around_them() {
    let farm = Farm::start(true);
    let w = World::new();
    let pools = format!(
        "{}{}",
        pool_on("spread", "[bare, tower]", 2, ""),
        pool_on("vm", "pve-vm", 1, ""),
    );
    write_spec(&w, &Hosts::new(&farm), &pools);
    ok(&fleet(&w, &farm, &["apply", "--auto-approve"], false));
    let before = everything(&w, &farm);
    let registrations = w.owned_runner_names();
    let tower_url = farm.tower.tcp_url().expect("a TCP port");

    // A wrong CA: the engine's certificate is refused.
    let wrong_ca = Hosts {
        ca: &farm.certs.wrong_ca,
        ..Hosts::new(&farm)
    };
    write_spec(&w, &wrong_ca, &pools);
    let out = fleet(&w, &farm, &["apply", "--auto-approve"], false);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("error: host `tower`: the TLS handshake with the Docker engine at {tower_url} failed: invalid peer certificate: UnknownIssuer (the engine's certificate is not signed by the CA in `tls.ca`)")),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("`--exclude-host NAME` plans and applies the other hosts"),
        "{}",
        stderr(&out)
    );
    assert_eq!(everything(&w, &farm), before, "nothing changed");

    // With that host excluded, the others are planned and healed; its runners stay. The
    // runner on bare took a job and finished it (GitHub dropped its registration).
    let spread = runners_on(&before["bare"], &w.run, "spread");
    w.finish_job(&spread[0]);
    let out = fleet(
        &w,
        &farm,
        &["apply", "--auto-approve", "--exclude-host", "tower"],
        false,
    );
    ok(&out);
    assert!(
        stderr(&out).contains("note: host `tower` is excluded"),
        "{}",
        stderr(&out)
    );
    let bare_now = main_engine_listing(&w);
    let replaced = runners_on(&bare_now, &w.run, "spread");
    assert_eq!(replaced.len(), 1, "{bare_now}");
    assert_ne!(replaced[0], spread[0], "{bare_now}");
    assert!(bare_now.contains(" running "), "{bare_now}");
    assert_eq!(farm.tower.containers(), before["tower"], "tower untouched");
    let tower_runner = runners_on(&before["tower"], &w.run, "spread");
    let names = w.owned_runner_names();
    assert!(
        names.contains(&tower_runner[0]),
        "its registration stays: {names:?}"
    );
    write_spec(&w, &Hosts::new(&farm), &pools);
    ok(&fleet(&w, &farm, &["apply", "--auto-approve"], false));
    let before = everything(&w, &farm);

    // A missing client key: named, before anything is contacted.
    let missing = farm.cert_dir.join("missing-key.pem");
    let no_key = Hosts {
        key: &missing,
        ..Hosts::new(&farm)
    };
    write_spec(&w, &no_key, &pools);
    let out = fleet(&w, &farm, &["apply", "--auto-approve"], false);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the TLS client key file")
            && err.contains("is not usable")
            && err.contains("missing-key.pem"),
        "{err}"
    );
    assert_eq!(everything(&w, &farm), before, "nothing changed");

    // An SSH host key that does not match known_hosts: ssh's own words.
    write_spec(&w, &Hosts::new(&farm), &pools);
    let out = fleet(&w, &farm, &["apply", "--auto-approve"], true);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    let url = farm.sshd().url();
    assert!(
        err.contains(&format!(
            "error: host `pve-vm`: ssh could not connect to {url}; ssh said:\n"
        )),
        "{err}"
    );
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    assert!(err.contains("Host key verification failed."), "{err}");
    assert_eq!(everything(&w, &farm), before, "nothing changed");
    assert_eq!(
        w.owned_runner_names().len(),
        registrations.len(),
        "no registration came or went"
    );
}

#[test]
fn gpus_auto_on_an_engine_without_nvidia_support_says_so_and_leaves_nothing() {
    let farm = Farm::start(true);
    let w = World::new();
    let hosts = Hosts {
        vm_gpus: "auto",
        ..Hosts::new(&farm)
    };
    write_spec(&w, &hosts, &pool_on("gpu", "pve-vm", 1, "    gpus: 1\n"));
    // Without the operator's probe image, nothing runs: the pool's image is never used.
    let out = fleet(&w, &farm, &["plan"], false);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("set FLEET_GPU_PROBE_IMAGE"), "{err}");
    assert_eq!(farm.vm().docker_ok(&["ps", "-a", "-q"]), "");
    // With it, the probe runs and the engine says it has no NVIDIA support.
    let fleet = |w: &World, farm: &Farm, args: &[&str], wrong_host_key: bool| {
        let mut env: Vec<(&str, String)> = vec![
            ("GITHUB_TOKEN", w.fake.token()),
            ("FLEET_GPU_PROBE_IMAGE", TEST_IMAGE.to_string()),
        ];
        env.extend(farm.ssh_env(wrong_host_key));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.fleet_with_env(args, &env)
    };
    let out = fleet(&w, &farm, &["plan"], false);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "has no NVIDIA support (it cannot give a container GPUs: could not select device driver \"nvidia\" with capabilities: [[utility]]); install the NVIDIA driver and nvidia-container-toolkit on host `pve-vm`, or declare its GPU UUIDs in hosts.pve-vm.gpus"
        ),
        "{err}"
    );
    let out = fleet(&w, &farm, &["gpus", "--host", "pve-vm"], false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("host pve-vm: GPUs unknown: the Docker engine at ssh://"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("the GPUs of host `pve-vm` cannot be read"),
        "{}",
        stderr(&out)
    );
    // The probe's containers are gone; nothing else was made.
    assert_eq!(farm.vm().docker_ok(&["ps", "-a", "-q"]), "");
}

#[test]
fn a_host_that_stops_answering_mid_watch_is_left_alone_while_the_other_heals() {
    let farm = Farm::start(false);
    let w = World::new();
    write_spec(
        &w,
        &Hosts::new(&farm),
        &pool_on("spread", "[bare, tower]", 4, ""),
    );
    let watch = WatchProcess::start(&w, &["--resync", "1s", "--host-timeout", "3s"], &[]);
    let runners = |listing: &str| runners_on(listing, &w.run, "spread");
    let running = |listing: &str| {
        listing
            .lines()
            .filter(|l| l.contains(" running "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    watch.eventually(Duration::from_secs(90), "two runners on each host", || {
        running(&main_engine_listing(&w)).len() == 2 && running(&farm.tower.containers()).len() == 2
    });
    let up = |host: &str| sample(&watch.metrics(), "fleet_host_up", &[("host", host)]);
    watch.eventually(Duration::from_secs(30), "tower up", || {
        up("tower") == Some(1.0)
    });
    assert_eq!(
        sample(
            &watch.metrics(),
            "fleet_host_gpus",
            &[("host", "tower"), ("state", "free")]
        ),
        Some(2.0)
    );
    let tower_before = farm.tower.containers();
    let tower_runners = runners(&tower_before);
    let registered = |names: &[String]| {
        let all = w.owned_runner_names();
        names.iter().all(|n| all.contains(n))
    };
    assert!(registered(&tower_runners));

    // tower stops answering; a runner on bare exits and is replaced all the same.
    farm.tower.pause();
    watch.eventually(Duration::from_secs(60), "tower down", || {
        up("tower") == Some(0.0)
    });
    let bare = runners(&main_engine_listing(&w));
    common::docker_ok(&["kill", &bare[0]]);
    watch.eventually(Duration::from_secs(60), "a replacement on bare", || {
        let now = running(&main_engine_listing(&w));
        now.len() == 2 && !now.contains(&bare[0])
    });
    assert_eq!(up("bare"), Some(1.0));
    assert!(
        registered(&tower_runners),
        "the registrations of tower's runners are kept"
    );
    assert!(
        watch.log().contains("host `tower` is left out"),
        "{}",
        watch.log()
    );

    // tower answers again: its runners were left as they were, and the fleet converges.
    farm.tower.resume();
    watch.eventually(Duration::from_secs(90), "tower up again", || {
        up("tower") == Some(1.0)
    });
    assert_eq!(
        farm.tower.containers(),
        tower_before,
        "tower's runners untouched"
    );
    farm.tower.docker_ok(&["kill", &tower_runners[0]]);
    watch.eventually(Duration::from_secs(60), "a replacement on tower", || {
        let now = running(&farm.tower.containers());
        now.len() == 2 && !now.contains(&tower_runners[0])
    });
    drop(watch);
    let plan = ok(&fleet(&w, &farm, &["plan", "--detailed-exitcode"], false));
    assert!(plan.contains("No changes"), "{plan}");
}

#[test]
fn a_runner_removed_behind_fleets_back_is_replaced_while_another_host_is_away() {
    let farm = Farm::start(false);
    let w = World::new();
    write_spec(
        &w,
        &Hosts::new(&farm),
        &pool_on("spread", "[bare, tower]", 4, ""),
    );
    let watch = WatchProcess::start(&w, &["--resync", "1s", "--host-timeout", "3s"], &[]);
    let runners = |listing: &str| runners_on(listing, &w.run, "spread");
    watch.eventually(Duration::from_secs(90), "two runners on each host", || {
        runners(&main_engine_listing(&w)).len() == 2 && runners(&farm.tower.containers()).len() == 2
    });
    let up = |host: &str| sample(&watch.metrics(), "fleet_host_up", &[("host", host)]);
    let running = |listing: &str| listing.lines().filter(|l| l.contains(" running ")).count();
    watch.eventually(
        Duration::from_secs(90),
        "all four running, tower up",
        || {
            running(&main_engine_listing(&w)) == 2
                && running(&farm.tower.containers()) == 2
                && up("tower") == Some(1.0)
        },
    );
    let tower_runners = runners(&farm.tower.containers());
    farm.tower.pause();
    watch.eventually(Duration::from_secs(60), "tower down", || {
        up("tower") == Some(0.0)
    });
    // A runner of bare disappears with its container (an OOM kill and a cleanup script):
    // its registration says it was made on bare, which answers, so it is lost, not away.
    let bare = runners(&main_engine_listing(&w));
    common::docker_ok(&["rm", "-f", &bare[0]]);
    watch.eventually(Duration::from_secs(60), "a replacement on bare", || {
        let now = runners(&main_engine_listing(&w));
        now.len() == 2 && !now.contains(&bare[0])
    });
    watch.eventually(
        Duration::from_secs(30),
        "the lost runner's registration removed",
        || !w.owned_runner_names().contains(&bare[0]),
    );
    let names = w.owned_runner_names();
    assert!(
        tower_runners.iter().all(|n| names.contains(n)),
        "tower's registrations are kept: {names:?}"
    );
    farm.tower.resume();
}

/// The environment of container `name` on `engine`.
fn env_on(engine: &Engine, name: &str) -> Vec<String> {
    let json = engine.docker_ok(&["inspect", "--format", "{{json .Config.Env}}", name]);
    serde_json::from_str(json.trim()).expect("env JSON")
}

#[test]
fn a_lost_persistent_runner_is_made_again_while_another_host_is_away() {
    let farm = Farm::start(false);
    let w = World::new();
    let pools = pool_on(
        "per",
        "[bare, tower]",
        4,
        "    ephemeral: false\n    secrets: env\n",
    );
    write_spec(&w, &Hosts::new(&farm), &pools);
    ok(&fleet(&w, &farm, &["apply", "--auto-approve"], false));
    let bare = runners_on(&main_engine_listing(&w), &w.run, "per");
    let tower = runners_on(&farm.tower.containers(), &w.run, "per");
    assert_eq!((bare.len(), tower.len()), (2, 2), "{bare:?} {tower:?}");
    // Each runner registers as config.sh does, with the labels fleet passed: its pool's and
    // the mark of the host it was made on.
    for name in &bare {
        w.config_sh(name).expect("registered");
    }
    for name in &tower {
        w.config_sh_with(name, &env_on(&farm.tower, name))
            .expect("registered");
    }
    let mark = |host: &str| format!("fleet.{}.host.{host}", w.run);
    let registered = w.fake.runners(&w.scope);
    for (names, host) in [(&bare, "bare"), (&tower, "tower")] {
        for name in names.iter() {
            let runner = registered
                .iter()
                .find(|r| &r.name == name)
                .expect("registered");
            assert!(runner.labels.contains(&mark(host)), "{:?}", runner.labels);
        }
    }
    // The mark is fleet's own: a plan right after sees nothing to change.
    let plan = ok(&fleet(&w, &farm, &["plan", "--detailed-exitcode"], false));
    assert!(plan.contains("No changes"), "{plan}");

    // tower goes away; a runner of bare loses its container and its state (a wiped disk).
    farm.tower.pause();
    let tower_before = w
        .fake
        .runners(&w.scope)
        .into_iter()
        .filter(|r| tower.contains(&r.name))
        .map(|r| (r.name, r.id))
        .collect::<Vec<_>>();
    common::docker_ok(&["rm", "-f", &bare[0]]);
    common::docker_ok(&["volume", "rm", &format!("{}-state", bare[0])]);
    let excluded = ["--exclude-host", "tower"];
    let out = fleet(
        &w,
        &farm,
        &[&["apply", "--auto-approve"][..], &excluded].concat(),
        false,
    );
    ok(&out);
    let now = runners_on(&main_engine_listing(&w), &w.run, "per");
    assert_eq!(now.len(), 2, "made again on bare: {now:?}");
    assert!(now.contains(&bare[0]), "under its own name: {now:?}");
    assert!(
        w.token_of(&bare[0]).is_some(),
        "it registers again (its state is gone)"
    );
    // Nothing that may be tower's was touched.
    let tower_after = w
        .fake
        .runners(&w.scope)
        .into_iter()
        .filter(|r| tower.contains(&r.name))
        .map(|r| (r.name, r.id))
        .collect::<Vec<_>>();
    assert_eq!(tower_after, tower_before);
    w.config_sh(&bare[0]).expect("registered again");
    let plan = fleet(
        &w,
        &farm,
        &[&["plan", "--detailed-exitcode"][..], &excluded].concat(),
        false,
    );
    assert!(stdout(&plan).contains("No changes"), "{}", stdout(&plan));
    farm.tower.resume();
    assert_eq!(runners_on(&farm.tower.containers(), &w.run, "per"), tower);
}
