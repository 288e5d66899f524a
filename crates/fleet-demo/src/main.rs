//! fleet's offline demo. No GitHub account, no registry, no network beyond 127.0.0.1:
//!
//! 1. starts the fake GitHub on 127.0.0.1;
//! 2. builds (or reuses) a tiny runner image from the host's static busybox;
//! 3. derives a demo fleet from fleet.example.yaml (GPU pools keep their GPUs when this machine
//!    has NVIDIA GPUs and Docker support for them, and become CPU pools otherwise);
//! 4. runs `fleet validate`, `plan` and `apply` exactly as an operator would;
//! 5. shows the runners, lets one take a job and finish it, and applies again: the ephemeral
//!    runner is replaced under a new name;
//! 6. runs `fleet watch`, the always-on loop: a runner that exits is healed without a command,
//!    and an autoscaled pool added to the spec grows with queued jobs and shrinks after them;
//! 7. cleans up with `fleet destroy --volumes`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;
use std::time::{Duration, Instant};

use fake_github::{Config, FakeGithub, NewRunner, ScaleSetConfig, Scope};
use fleet::cli::Cli;
use fleet::contract::RunnerConfig;
use fleet::spec::{GpuRequest, HostGpus, Spec};

/// The demo fleet's name: every container, volume and runner it makes starts with it.
const FLEET: &str = "fleet-demo";
/// The image the demo's runners run.
const IMAGE: &str = fake_github::image::RUNNER_IMAGE;

#[derive(Parser)]
#[command(
    about = "Run fleet's offline demo: plan and apply a fleet against a fake GitHub and the local Docker engine"
)]
struct Args {
    /// The spec the demo fleet is derived from.
    #[arg(long, default_value = "fleet.example.yaml")]
    example: PathBuf,
    /// Leave the demo runners running at the end (remove them later with the printed command).
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    fleet::cli::init_logging(0);
    // The fake's token and address, handed to fleet through the environment as an operator
    // would: the machine, not fleet.yaml, says which GitHub API gets the credentials.
    let token = format!("demo-token-{}", std::process::id());
    let fake_addr = match free_loopback_addr() {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("\ndemo failed: {message}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: no other thread exists yet: the runtime and the fake start below.
    unsafe {
        std::env::set_var("GITHUB_TOKEN", &token);
        std::env::set_var("GITHUB_API_URL", format!("http://{fake_addr}"));
    }
    match run(&args, &token, fake_addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("\ndemo failed: {message}");
            ExitCode::FAILURE
        }
    }
}

fn banner(step: &str) {
    println!("\n\x1b[1m==> {step}\x1b[0m\n");
}

/// Runs a fleet command in this process, exactly as the `fleet` binary would.
fn fleet(args: &[&str]) -> u8 {
    let mut argv = vec!["fleet"];
    argv.extend_from_slice(args);
    println!("$ {}", argv.join(" "));
    fleet::cli::run(Cli::parse_from(argv))
}

fn fleet_ok(args: &[&str]) -> Result<(), String> {
    match fleet(args) {
        0 => Ok(()),
        code => Err(format!("`fleet {}` exited with {code}", args.join(" "))),
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds the runner image from a static busybox, unless it is there already.
fn runner_image() -> Result<(), String> {
    let image = fake_github::image::ensure_runner_image()?;
    println!(
        "{image}: FROM scratch plus this machine's static busybox, built here (no registry needed)."
    );
    Ok(())
}

/// Whether Docker on this machine can hand out NVIDIA GPUs.
fn docker_has_nvidia() -> bool {
    docker(&["info", "--format", "{{json .Runtimes}}"]).is_ok_and(|r| r.contains("nvidia"))
}

/// The demo fleet: the example's pools, on this machine, with the demo image.
fn demo_spec(example: &Path) -> Result<(Spec, Vec<String>), String> {
    let mut spec = fleet::spec::load(example).map_err(|e| e.render())?;
    let mut notes = Vec::new();
    spec.name = FLEET.to_string();
    // The API is the machine's (GITHUB_API_URL, set above), never the spec's.
    spec.github.api_url = None;
    spec.github.auth = None;
    let (gpus, _lost) = fleet::observe::gpu::nvml_uuids().unwrap_or_default();
    let use_gpus = !gpus.is_empty() && docker_has_nvidia();
    if let Some(hosts) = spec.hosts.as_mut() {
        for host in hosts.values_mut() {
            host.docker = None; // $DOCKER_HOST or the local socket
            host.gpus = if use_gpus {
                HostGpus::Declared(gpus.clone())
            } else {
                HostGpus::None
            };
        }
    }
    if use_gpus {
        notes.push(format!(
            "This machine has {} NVIDIA GPU(s): GPU pools get them by UUID.",
            gpus.len()
        ));
    } else {
        notes.push(
            "No NVIDIA GPU with Docker support here: GPU pools run as CPU pools (gpus: 0).".into(),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut wanted_gpus = 0;
    for pool in spec.pools.values_mut() {
        pool.image = Some(IMAGE.into());
        pool.pull = Some(fleet::spec::PullPolicy::Never);
        pool.network = Some("none".into());
        pool.memory = None;
        pool.cpus = pool.cpus.map(|c| c.min(cores));
        if let Some(volumes) = pool.volumes.as_mut() {
            // Host paths of the example may not exist here; named volumes get the demo's prefix
            // so that a real volume of the same name is never mounted.
            volumes.retain(|v| !v.is_bind());
            for v in volumes.iter_mut() {
                v.source = format!("{FLEET}-{}", v.source);
            }
        }
        let count = pool.count.unwrap_or(0) as usize;
        match pool.gpus {
            Some(GpuRequest::All) if !use_gpus => pool.gpus = Some(GpuRequest::Count(0)),
            Some(GpuRequest::Count(n)) if n > 0 => {
                let need = n as usize * count;
                if use_gpus && wanted_gpus + need <= gpus.len() {
                    wanted_gpus += need;
                } else {
                    pool.gpus = Some(GpuRequest::Count(0));
                }
            }
            _ => {}
        }
    }
    Ok((spec, notes))
}

/// Plays GitHub's part for the runners the demo image cannot: connects them.
fn runners_come_online(fake: &FakeGithub, scope: &Scope, spec: &Spec) -> Result<(), String> {
    let containers = docker(&[
        "ps",
        "--filter",
        &format!("label=fleet.name={FLEET}"),
        "--format",
        "{{.Names}}",
    ])?;
    // Each persistent pool's name prefix and the labels its runners register with.
    let persistent: Vec<(String, Vec<String>)> = spec
        .resolved_pools()
        .into_iter()
        .filter(|p| !p.ephemeral)
        .map(|p| {
            let labels = RunnerConfig::for_pool(FLEET, &p).labels;
            (format!("{FLEET}-{}-", p.name), labels)
        })
        .collect();
    for name in containers.lines() {
        let pool = persistent
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix));
        if !fake.set_runner_state_by_name(scope, name, true, false)
            && let Some((_, labels)) = pool
        {
            // A persistent runner registers itself with config.sh, the token fleet gave it and
            // the labels fleet passed it: its pool's and the mark of its host (so that the next
            // plan finds nothing to change).
            let labels = config_labels(name).unwrap_or_else(|| labels.clone());
            fake.add_runner(
                scope,
                NewRunner {
                    name: name.to_string(),
                    labels,
                    status_online: true,
                    busy: false,
                    ..NewRunner::default()
                },
            );
        }
    }
    Ok(())
}

/// The labels container `name` passes to config.sh (`ACTIONS_RUNNER_INPUT_LABELS`).
fn config_labels(name: &str) -> Option<Vec<String>> {
    let env = docker(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        name,
    ])
    .ok()?;
    env.lines()
        .find_map(|l| l.strip_prefix("ACTIONS_RUNNER_INPUT_LABELS="))
        .map(|l| l.split(',').map(str::to_string).collect())
}

fn show_runners(fake: &FakeGithub, scope: &Scope) -> Result<(), String> {
    println!(
        "{}",
        docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=fleet.name={FLEET}"),
            "--format",
            "table {{.Names}}\t{{.Status}}\t{{.Label \"fleet.pool\"}}",
        ])?
    );
    println!("\nGitHub (the fake) sees these runners:");
    for r in fake.runners(scope) {
        println!(
            "  {:<28} {:<8} {}",
            r.name,
            r.status,
            if r.busy { "busy" } else { "idle" }
        );
    }
    Ok(())
}

/// A free port on 127.0.0.1 for the fake (the probe is closed again; the fake binds it next).
fn free_loopback_addr() -> Result<std::net::SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

fn run(args: &Args, token: &str, fake_addr: std::net::SocketAddr) -> Result<(), String> {
    docker(&["info", "--format", "{{.ServerVersion}}"])
        .map_err(|e| format!("the Docker engine does not answer ({e}); start it first"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;

    banner("Starting the fake GitHub on 127.0.0.1");
    let fake = rt
        .block_on(FakeGithub::start_on(
            Config {
                token: token.to_string(),
                // Quick answers to idle polls, so that the autoscaled pool follows jobs at once.
                scaleset: ScaleSetConfig {
                    long_poll: Duration::from_millis(500),
                    ..ScaleSetConfig::default()
                },
                ..Config::default()
            },
            fake_addr,
        ))
        .map_err(|e| format!("cannot start the fake GitHub: {e}"))?;
    println!(
        "The fake GitHub API answers at {} (runner endpoints, JIT configs, tokens).",
        fake.url()
    );

    banner("Building the runner image");
    runner_image()?;

    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let (spec, notes) = demo_spec(&args.example)?;
    // JSON is YAML: the spec fleet reads is written as JSON.
    let path = dir.path().join("fleet.yaml");
    let text = serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let file = path
        .to_str()
        .ok_or("temporary path is not UTF-8")?
        .to_string();
    let repo = spec.github.repo.clone().unwrap_or_default();
    let (owner, name) = repo.split_once('/').unwrap_or(("acme", "zquic"));
    let scope = Scope::repo(owner, name);

    banner(&format!(
        "The demo fleet, derived from {}",
        args.example.display()
    ));
    for note in notes {
        println!("{note}");
    }
    println!(
        "It runs {IMAGE} with `network: none`, so nothing leaves this machine. Spec: {file}\n"
    );
    let cleanup = Cleanup {
        file: file.clone(),
        keep: args.keep,
    };
    fleet_ok(&["-f", &file, "validate"])?;

    banner("fleet plan: what would change (read-only)");
    fleet_ok(&["-f", &file, "plan"])?;

    banner("fleet apply: create the runners");
    fleet_ok(&["-f", &file, "apply", "--auto-approve"])?;
    runners_come_online(&fake, &scope, &spec)?;

    banner("The runners");
    show_runners(&fake, &scope)?;

    banner("fleet plan right after apply: no changes");
    if fleet(&["-f", &file, "plan", "--detailed-exitcode"]) != 0 {
        return Err("the plan right after apply is not empty".into());
    }

    banner("A job runs on an ephemeral runner, and ends");
    let gpu_prefix = format!("{FLEET}-gpu-");
    let runner = fake
        .runners(&scope)
        .into_iter()
        .find(|r| r.name.starts_with(&gpu_prefix))
        .ok_or("no ephemeral runner of pool `gpu` was registered")?;
    fake.set_runner_state(&scope, runner.id, true, true);
    println!("{} picked up a job (GitHub: online, busy).", runner.name);
    fleet_ok(&["-f", &file, "plan"])?;
    println!("\nThe job ends: the runner exits and GitHub forgets its one-job registration.");
    fake.remove_runner(&scope, runner.id);
    // SIGKILL: the stub runner cannot finish a job by itself, and through the container's init
    // process a stop's SIGTERM ends it with 143 or 137 at random; a kill is always 137.
    docker(&["kill", &runner.name])?;

    banner("fleet plan: the exited runner is replaced under a new name");
    fleet_ok(&["-f", &file, "plan"])?;
    banner("fleet apply");
    fleet_ok(&["-f", &file, "apply", "--auto-approve"])?;
    runners_come_online(&fake, &scope, &spec)?;
    show_runners(&fake, &scope)?;

    banner("fleet apply again: nothing to do");
    fleet_ok(&["-f", &file, "apply", "--auto-approve"])?;

    watch_phase(&fake, &scope, &path, spec)?;

    drop(cleanup);
    if args.keep {
        println!(
            "\nThe runners are still there; the fake GitHub stops with this demo, so remove them with:"
        );
        println!(
            "  docker rm -f $(docker ps -aq --filter label=fleet.name={FLEET}); docker volume rm $(docker volume ls -q --filter label=fleet.name={FLEET})"
        );
    } else {
        println!(
            "\nDemo complete: fleet planned, applied, replaced a finished runner, and cleaned up."
        );
    }
    Ok(())
}

/// Waits up to a minute for `done`, polling.
fn wait_for(
    what: &str,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Result<Duration, String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if done()? {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("gave up waiting for {what}"))
}

/// Running containers of pool `pool`.
fn running(pool: &str) -> Result<Vec<String>, String> {
    let names = docker(&[
        "ps",
        "--filter",
        &format!("label=fleet.name={FLEET}"),
        "--filter",
        &format!("label=fleet.pool={pool}"),
        "--format",
        "{{.Names}}",
    ])?;
    Ok(names.lines().map(str::to_string).collect())
}

/// `fleet watch` in a thread of its own, as the daemon would run; stopped on drop.
struct Watch {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(file: &Path) -> Result<Watch, String> {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let file = file.to_path_buf();
        let options = fleet::watch::WatchOptions {
            resync: Duration::from_secs(10),
            listen: Default::default(),
            lock_timeout: Duration::from_secs(60),
            parallelism: 10,
            shutdown_grace: Duration::from_secs(8),
            host_timeout: Duration::from_secs(30),
        };
        let env: fleet::watch::Env = std::sync::Arc::new(|name: &str| std::env::var(name).ok());
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("cannot start fleet watch: {e}"),
            };
            if let Err(e) = rt.block_on(fleet::watch::run(file, options, env, stop_rx)) {
                eprintln!("fleet watch stopped: {e}");
            }
        });
        Ok(Watch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `fleet watch` heals an exited runner on its own, and follows an autoscaled pool's jobs.
fn watch_phase(
    fake: &FakeGithub,
    scope: &Scope,
    file: &Path,
    mut spec: Spec,
) -> Result<(), String> {
    banner("fleet watch: the always-on loop");
    println!("$ fleet -f {} watch    (in the background)", file.display());
    let watch = Watch::start(file)?;
    let before = running("gpu")?;
    let gone = before
        .first()
        .ok_or("no runner of pool `gpu` runs")?
        .clone();
    println!("A job ends on {gone}: its runner exits, and nobody runs fleet apply.");
    if let Some(r) = fake.runners(scope).into_iter().find(|r| r.name == gone) {
        fake.remove_runner(scope, r.id);
    }
    docker(&["kill", &gone])?;
    let took = wait_for("watch to replace the runner", || {
        let now = running("gpu")?;
        Ok(now.len() == before.len() && !now.contains(&gone))
    })?;
    println!("fleet watch replaced {gone} in {:.1}s.", took.as_secs_f64());

    banner("An autoscaled pool: runners on demand");
    let mut burst = spec.pools.get("cpu").cloned().unwrap_or_default();
    burst.count = None;
    burst.ephemeral = Some(true);
    burst.autoscale = Some(fleet::spec::Autoscale {
        min_idle: 0,
        max: 3,
        scale_set: None,
    });
    spec.pools.insert("burst".into(), burst);
    let text = serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())?;
    std::fs::write(file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    println!(
        "fleet.yaml gains pool `burst` with `autoscale: {{ min_idle: 0, max: 3 }}`; watch picks it up."
    );
    let set_name = format!("{FLEET}-burst");
    let mut set_id = 0;
    wait_for("the scale set and its listener", || {
        let found = fake
            .scale_sets(Some(scope))
            .into_iter()
            .find(|s| s.name == set_name && s.session.is_some());
        set_id = found.as_ref().map_or(0, |s| s.id);
        Ok(found.is_some())
    })?;
    println!(
        "Scale set {set_name} registered; its listener long-polls for jobs. No runner yet (min_idle 0)."
    );
    fake.queue_jobs_for_scale_set(set_id, 3)
        .ok_or("the fake has no such scale set")?;
    println!("Three jobs are queued for `runs-on: {set_name}`.");
    let took = wait_for("three runners", || Ok(running("burst")?.len() == 3))?;
    println!(
        "autoscaled pool `burst`: 3 runners for 3 jobs, {:.1}s after they were queued.",
        took.as_secs_f64()
    );
    for runner in running("burst")? {
        if fake.start_job(set_id, &runner).is_ok() {
            let _ = fake.complete_job(set_id, &runner, "succeeded");
        }
        docker(&["kill", &runner])?;
    }
    println!("The three jobs run and end; their runners exit.");
    wait_for("the pool to shrink", || Ok(running("burst")?.is_empty()))?;
    println!("autoscaled pool `burst`: 0 runners after the jobs.");
    drop(watch);
    println!("fleet watch stopped (SIGTERM); runners are left as they are.");
    Ok(())
}

/// Removes everything the demo made, also when it fails half-way.
struct Cleanup {
    file: String,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        banner("fleet destroy --volumes: clean up");
        if fleet(&["-f", &self.file, "destroy", "--auto-approve", "--volumes"]) != 0 {
            // The fake may be gone; remove what is left directly.
            let filter = format!("label=fleet.name={FLEET}");
            if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
                for id in ids.split_whitespace() {
                    let _ = docker(&["rm", "-f", id]);
                }
            }
            if let Ok(vols) = docker(&["volume", "ls", "-q", "--filter", &filter]) {
                for v in vols.split_whitespace() {
                    let _ = docker(&["volume", "rm", "-f", v]);
                }
            }
        }
    }
}
