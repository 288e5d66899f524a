//! Shared by the integration tests: a fake GitHub on 127.0.0.1, the real Docker engine, a small
//! local test image, and a run id on everything created so that it is removed afterwards, even
//! when a test fails.

#![allow(dead_code)]

pub mod engines;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use engines::{Certificates, Engine, Listen, RunDir};
use fake_github::{Config, FakeGithub, NewRunner, ScaleSetConfig, Scope};
use fleet::contract::{RunnerConfig, ownership_label};

pub mod nvml;

/// The image test containers run: `FROM scratch` plus Debian's static busybox.
pub const TEST_IMAGE: &str = fake_github::image::RUNNER_IMAGE;
/// Label on everything a test creates by hand (fleet's own resources carry `fleet.name`).
pub const RUN_LABEL: &str = "fleet-test.run";

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

/// Runs the docker CLI and returns its stdout; a failure fails the test.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds the test image once (no registry can be reached, so it is built from local files).
pub fn test_image() -> &'static str {
    match fake_github::image::ensure_runner_image() {
        Ok(image) => image,
        Err(e) => panic!("cannot build the test image: {e}"),
    }
}

/// One test's world: a fake GitHub, a spec directory, and a unique fleet name as run id.
pub struct World {
    pub run: String,
    pub rt: tokio::runtime::Runtime,
    pub fake: FakeGithub,
    pub dir: tempfile::TempDir,
    pub scope: Scope,
}

impl World {
    pub fn new() -> World {
        World::with_fake(Config::default())
    }

    /// A world whose fake GitHub is configured by `config` (scale set timings, say).
    pub fn with_fake(config: Config) -> World {
        test_image();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let fake = rt
            .block_on(FakeGithub::start(config))
            .expect("start the fake GitHub");
        // Unique per test: fleet names are [a-z0-9-]{1,24}.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let run = format!("t{:x}-{}", std::process::id(), nanos % 1_000_000_000);
        let scope = Scope::Repo {
            owner: "acme".into(),
            repo: run.clone(),
        };
        World {
            run,
            rt,
            fake,
            dir: tempfile::tempdir().expect("tempdir"),
            scope,
        }
    }

    /// A world whose fake scale set service answers an empty poll quickly and lets a session
    /// lapse soon, so that a test sees capacity changes and restarts within seconds; `change`
    /// adjusts it further.
    pub fn with_quick_scale_sets(change: impl FnOnce(&mut ScaleSetConfig)) -> World {
        let mut scaleset = ScaleSetConfig {
            long_poll: std::time::Duration::from_millis(300),
            session_timeout: std::time::Duration::from_secs(3),
            ..ScaleSetConfig::default()
        };
        change(&mut scaleset);
        World::with_fake(Config {
            scaleset,
            ..Config::default()
        })
    }

    /// Writes fleet.yaml with `pools` (YAML, indented by two spaces) and returns its path.
    pub fn spec(&self, pools: &str) -> PathBuf {
        self.spec_with(
            pools,
            "unix:///var/run/docker.sock",
            "[GPU-aaaa-0001, GPU-aaaa-0002]",
        )
    }

    pub fn spec_with(&self, pools: &str, docker_endpoint: &str, gpus: &str) -> PathBuf {
        let path = self.dir.path().join("fleet.yaml");
        let text = format!(
            "version: 1\nname: {run}\ngithub:\n  repo: acme/{run}\n  api_url: {url}\nhosts:\n  local:\n    docker: {docker_endpoint}\n    gpus: {gpus}\npools:\n{pools}",
            run = self.run,
            url = self.fake.url(),
        );
        std::fs::write(&path, text).expect("write spec");
        path
    }

    /// Runs the fleet binary with the fake's token, the fake as the API this machine trusts
    /// (`GITHUB_API_URL`; the spec's `api_url` names the same).
    pub fn fleet(&self, args: &[&str]) -> Output {
        self.fleet_with_env(args, &[("GITHUB_TOKEN", &self.fake.token())])
    }

    pub fn fleet_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet"));
        cmd.current_dir(self.dir.path())
            .args(args)
            .env_remove("GITHUB_TOKEN")
            .env("GITHUB_API_URL", self.fake.url())
            .env_remove("DOCKER_HOST")
            .env("NO_COLOR", "1")
            .env("FLEET_LOCK_DIR", self.dir.path())
            .env("STATE_DIRECTORY", self.dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run fleet")
    }

    /// The desired configuration of a pool, as fleet computes it.
    pub fn config(&self, spec: &Path, pool: &str) -> RunnerConfig {
        let spec = fleet::spec::load(spec).expect("spec loads");
        let resolved = spec
            .resolved_pools()
            .into_iter()
            .find(|p| p.name == pool)
            .expect("pool");
        RunnerConfig::for_pool(&self.run, &resolved)
    }

    /// Creates (and starts, when `running`) a container as fleet would have made it.
    pub fn add_container(
        &self,
        name: &str,
        pool: &str,
        config: &RunnerConfig,
        gpus: &[&str],
        running: bool,
    ) -> String {
        let fleet_label = format!("fleet.name={}", self.run);
        let pool_label = format!("fleet.pool={pool}");
        let hash_label = format!("fleet.config-hash={}", config.hash());
        let config_label = format!("fleet.config={}", config.to_label());
        let gpus_label = format!("fleet.gpus={}", gpus.join(","));
        let run_label = format!("{RUN_LABEL}={}", self.run);
        let id = docker_ok(&[
            "create",
            "--name",
            name,
            "--network",
            "none",
            "--label",
            &fleet_label,
            "--label",
            &pool_label,
            "--label",
            &hash_label,
            "--label",
            &config_label,
            "--label",
            &gpus_label,
            "--label",
            &run_label,
            test_image(),
        ]);
        if running {
            docker_ok(&["start", name]);
        }
        id
    }

    /// A container fleet does not own (no fleet label), with a name that looks like fleet's.
    pub fn add_foreign_container(&self, name: &str) -> String {
        let run_label = format!("{RUN_LABEL}={}", self.run);
        let id = docker_ok(&[
            "create",
            "--name",
            name,
            "--network",
            "none",
            "--label",
            &run_label,
            test_image(),
        ]);
        docker_ok(&["start", name]);
        id
    }

    /// Stops a container with the given exit code: the runner finished its job.
    pub fn exit_container(&self, name: &str) {
        docker_ok(&["stop", "-t", "0", name]);
    }

    /// Registers a runner on the fake GitHub, with fleet's ownership label when `owned`.
    pub fn register(&self, name: &str, owned: bool, online: bool, busy: bool) -> u64 {
        let mut labels = vec!["self-hosted".to_string(), "Linux".into(), "X64".into()];
        if owned {
            labels.push(ownership_label(&self.run));
        }
        self.fake.add_runner(
            &self.scope,
            NewRunner {
                name: name.to_string(),
                labels,
                status_online: online,
                busy,
                ..NewRunner::default()
            },
        )
    }

    /// Id, name, state, start and finish times, exit code and labels of every container and volume of this run, to compare.
    pub fn docker_snapshot(&self) -> String {
        let by_fleet = format!("label=fleet.name={}", self.run);
        let by_run = format!("label={RUN_LABEL}={}", self.run);
        let mut out = String::new();
        for filter in [&by_fleet, &by_run] {
            // Start and finish times and the exit code, not `docker ps`'s Status: that one says
            // how long ago, and so changes by itself.
            let ids = docker_ok(&["ps", "-a", "-q", "--no-trunc", "--filter", filter]);
            for id in ids.lines() {
                out.push_str(&docker_ok(&[
                    "inspect",
                    "--format",
                    "{{.Id}} {{.Name}} {{.State.Status}} {{.State.StartedAt}} {{.State.FinishedAt}} {{.State.ExitCode}} {{.Config.Labels}}",
                    id,
                ]));
                out.push('\n');
            }
            out.push('\n');
            out.push_str(&docker_ok(&[
                "volume",
                "ls",
                "--filter",
                filter,
                "--format",
                "{{.Name}}",
            ]));
            out.push('\n');
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Runs on failure too: remove everything this run made.
        for filter in [
            format!("label=fleet.name={}", self.run),
            format!("label={RUN_LABEL}={}", self.run),
        ] {
            let ids = docker(&["ps", "-aq", "--filter", &filter]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = docker(&["rm", "-f", "-v", id]);
            }
            let vols = docker(&["volume", "ls", "-q", "--filter", &filter]);
            for v in String::from_utf8_lossy(&vols.stdout).split_whitespace() {
                let _ = docker(&["volume", "rm", "-f", v]);
            }
            let networks = docker(&["network", "ls", "-q", "--filter", &filter]);
            for n in String::from_utf8_lossy(&networks.stdout).split_whitespace() {
                let _ = docker(&["network", "rm", n]);
            }
        }
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that fleet exited 0, showing what it printed otherwise.
pub fn assert_ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// Asserts that `fleet plan --detailed-exitcode` finds nothing to change.
pub fn plan_is_empty(w: &World) {
    let out = w.fleet(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "not converged:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// The running containers of `pool`, by name.
pub fn running(w: &World, pool: &str) -> Vec<String> {
    let prefix = format!("{}-{pool}-", w.run);
    w.owned_containers()
        .into_iter()
        .filter(|(n, state)| n.starts_with(&prefix) && state == "running")
        .map(|(n, _)| n)
        .collect()
}

/// A busybox pool autoscaled from zero to `max` runners of `gpus` GPUs each.
pub fn autoscaled(name: &str, gpus: u32, max: u32) -> String {
    format!(
        "  {name}:\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    gpus: {gpus}\n    autoscale: {{ min_idle: 0, max: {max} }}\n"
    )
}

/// A busybox pool of `count` runners (`ephemeral` or persistent) for apply tests.
pub fn pool(name: &str, count: u32, ephemeral: bool) -> String {
    format!(
        "  {name}:\n    count: {count}\n    ephemeral: {ephemeral}\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n"
    )
}

impl World {
    /// `(name, state)` of the containers fleet owns in this run, sorted by name.
    pub fn owned_containers(&self) -> Vec<(String, String)> {
        let filter = format!("label=fleet.name={}", self.run);
        let out = docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            "{{.Names}} {{.State}}",
        ]);
        let mut list: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        list.sort();
        list
    }

    pub fn container_names(&self, pool: &str) -> Vec<String> {
        let prefix = format!("{}-{pool}-", self.run);
        self.owned_containers()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// Names of the registrations fleet owns, sorted.
    pub fn owned_runner_names(&self) -> Vec<String> {
        let own = ownership_label(&self.run);
        let mut names: Vec<String> = self
            .fake
            .runners(&self.scope)
            .into_iter()
            .filter(|r| r.labels.contains(&own) && r.name.starts_with(&format!("{}-", self.run)))
            .map(|r| r.name)
            .collect();
        names.sort();
        names
    }

    /// `docker inspect` of one container, as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = docker_ok(&["inspect", name]);
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("inspect JSON");
        all.remove(0)
    }

    pub fn env_of(&self, name: &str) -> Vec<String> {
        self.inspect(name)["Config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The runner took a job and finished it: GitHub removes an ephemeral registration, the
    /// container exits.
    pub fn finish_job(&self, name: &str) {
        if let Some(r) = self
            .fake
            .runners(&self.scope)
            .into_iter()
            .find(|r| r.name == name)
        {
            self.fake.remove_runner(&self.scope, r.id);
        }
        // SIGKILL: exit code 137 whether or not an init process forwards a SIGTERM first.
        docker_ok(&["kill", "-s", "KILL", name]);
    }

    /// Applies with approval, in this run's lock directory.
    pub fn apply(&self) -> Output {
        self.fleet(&["apply", "--auto-approve"])
    }
}

/// Where the test image keeps the secret line fleet sends on standard input (`secrets: stdin`).
pub const STDIN_SECRET_FILE: &str = "/run/fleet/registration";

/// The lines of a container's secret file (`FLEET_SECRET_FILE`), read as root with
/// `docker <exec...> busybox cat`; none when its environment names no such file or the file is
/// gone. With `secrets: stdin` (fleet's default) the test image's entrypoint writes the file from
/// the line fleet sent it as it started: it is waited for, a few seconds at most.
pub fn secret_inputs(exec: &[&str], env: &[String]) -> Vec<String> {
    let from_stdin = env.iter().any(|e| e == "FLEET_SECRET_STDIN=1");
    let Some(path) = env
        .iter()
        .find_map(|e| e.strip_prefix("FLEET_SECRET_FILE="))
        .or(from_stdin.then_some(STDIN_SECRET_FILE))
    else {
        return vec![];
    };
    let mut args: Vec<&str> = exec.to_vec();
    args.extend(["/bin/busybox", "cat", path]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = docker(&args);
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !lines.is_empty() || !from_stdin || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Persistent runners: their registration as the runner's `config.sh` makes it, their state
/// volume, and a fleet at organization scope.
impl World {
    /// The value of `key` in container `name`'s environment.
    pub fn env_value(&self, name: &str, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.env_of(name)
            .into_iter()
            .find_map(|e| e.strip_prefix(&prefix).map(str::to_string))
    }

    /// The registration token container `name` was given, in its secret file or (with
    /// `secrets: env`) its environment.
    pub fn token_of(&self, name: &str) -> Option<String> {
        let env = self.env_of(name);
        secret_inputs(&["exec", name], &env)
            .iter()
            .chain(&env)
            .find_map(|e| e.strip_prefix("ACTIONS_RUNNER_INPUT_TOKEN="))
            .map(str::to_string)
    }

    /// Plays a persistent runner's entrypoint once its container runs: with
    /// `FLEET_REGISTRATION=register` and a token it registers as `config.sh --unattended
    /// --replace` does, with the container's name, labels and runner group; with `restore` it
    /// uses the registration its state volume holds. Either way the runner then connects
    /// (online). Returns the registration's id, `None` when there is none to use.
    pub fn config_sh(&self, name: &str) -> Option<u64> {
        let mut inputs = self.env_of(name);
        inputs.extend(secret_inputs(&["exec", name], &inputs));
        self.config_sh_with(name, &inputs)
    }

    /// [`World::config_sh`] for a container whose environment `env` was read elsewhere (on
    /// another engine).
    pub fn config_sh_with(&self, name: &str, env: &[String]) -> Option<u64> {
        let value = |key: &str| {
            let prefix = format!("{key}=");
            env.iter()
                .find_map(|e| e.strip_prefix(&prefix).map(str::to_string))
        };
        let id = match (
            value("FLEET_REGISTRATION").as_deref(),
            value("ACTIONS_RUNNER_INPUT_TOKEN"),
        ) {
            (Some("register"), Some(token)) => {
                let labels = value("ACTIONS_RUNNER_INPUT_LABELS").unwrap_or_default();
                let config = fake_github::RunnerConfiguration {
                    token,
                    name: name.to_string(),
                    labels: labels.split(',').map(str::to_string).collect(),
                    runner_group: value("ACTIONS_RUNNER_INPUT_RUNNERGROUP"),
                    replace: true,
                };
                match self.fake.configure_runner(&config) {
                    Ok(runner) => runner.id,
                    Err(e) => panic!("config.sh of {name} failed: {e}"),
                }
            }
            _ => self.runner_id(name)?,
        };
        self.fake.set_runner_state(&self.scope, id, true, false);
        Some(id)
    }

    /// The id of the registration named `name`, if GitHub has one.
    pub fn runner_id(&self, name: &str) -> Option<u64> {
        self.fake
            .runners(&self.scope)
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.id)
    }

    /// The volume mounted at the persistent runner's state directory in container `name`.
    pub fn state_mount(&self, name: &str) -> Option<String> {
        self.inspect(name)["Mounts"]
            .as_array()?
            .iter()
            .find(|m| m["Destination"] == "/var/lib/fleet-runner")
            .and_then(|m| m["Name"].as_str().map(str::to_string))
    }

    /// Names of the volumes labelled with this run's fleet, sorted.
    pub fn owned_volumes(&self) -> Vec<String> {
        let filter = format!("label=fleet.name={}", self.run);
        let out = docker_ok(&["volume", "ls", "-q", "--filter", &filter]);
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    /// A world whose fleet registers its runners in organization `<run>` (which has the
    /// runner groups the fake was given), not in a repository.
    pub fn at_org() -> World {
        let mut w = World::new();
        w.scope = Scope::Org(w.run.clone());
        w
    }

    /// Writes fleet.yaml for an organization-scope world (see [`World::at_org`]).
    pub fn spec_at_org(&self, pools: &str) -> PathBuf {
        let path = self.dir.path().join("fleet.yaml");
        let text = format!(
            "version: 1\nname: {run}\ngithub:\n  org: {run}\n  api_url: {url}\nhosts:\n  local:\n    docker: unix:///var/run/docker.sock\n    gpus: none\npools:\n{pools}",
            run = self.run,
            url = self.fake.url(),
        );
        std::fs::write(&path, text).expect("write spec");
        path
    }
}

impl World {
    /// Writes fleet.yaml with `hosts` and `pools` (YAML, each indented by two spaces).
    pub fn spec_hosts(&self, hosts: &str, pools: &str) -> PathBuf {
        let path = self.dir.path().join("fleet.yaml");
        let text = format!(
            "version: 1\nname: {run}\ngithub:\n  repo: acme/{run}\n  api_url: {url}\nhosts:\n{hosts}pools:\n{pools}",
            run = self.run,
            url = self.fake.url(),
        );
        std::fs::write(&path, text).expect("write spec");
        path
    }
}

/// Certificates made in `run`'s `certs` folder, and a TLS listener on a free port that uses them.
pub fn tls_listener(run: &RunDir) -> (Listen, Certificates, PathBuf) {
    let cert_dir = run.path().join("certs");
    std::fs::create_dir(&cert_dir).expect("certificate directory");
    let certs = Certificates::make(&cert_dir);
    let listen = Listen::Tls {
        port: engines::free_port(),
        certs: certs.clone(),
    };
    (listen, certs, cert_dir)
}

/// Starts an engine and loads the test image into it, saying how long each took.
pub fn engine_with_image(run: &std::sync::Arc<RunDir>, name: &str, listen: Listen) -> Engine {
    let image = test_image();
    let engine = Engine::start(run, name, listen);
    let loading = engine.load_image(image);
    eprintln!(
        "engine `{name}`: answered {:.2}s after start; test image loaded in {:.2}s",
        engine.startup.as_secs_f64(),
        loading.as_secs_f64()
    );
    engine
}
