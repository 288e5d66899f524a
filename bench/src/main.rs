//! fleet's benchmarks, on the real Docker engine with the fake GitHub on 127.0.0.1. Each prints
//! a markdown table for docs/benchmarks.md. Figures from one run on one machine are compared
//! with each other (ratios), never with a fixed time: shared machines are noisy.
//!
//! - `replacement`: `fleet watch` replaces runners whose container exits; the time from the
//!   container's `die` to its replacement's `start` (Docker's own event times), p50 and p95.
//! - `api-budget`: the GitHub requests `fleet watch` makes per resync with N runners, split into
//!   those that count against the rate limit and conditional ones (304), projected per hour.
//! - `replacement-gpu-health`: `replacement` with one-GPU runners over 8 GPUs, declared and
//!   read through the stand-in NVML with their health (`gpu_health.rs`).
//! - `hosts-converge`, `dead-host`: a fleet on two engines (`hosts.rs`).
//! - `status-page`: `/api/v1/status` and the page in chromium with N runners (`status_page.rs`).

mod hosts;

mod autoscale;

mod gpu_health;
mod history;
mod status_page;
mod watch_thread;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    EventsOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use clap::{Parser, Subcommand};
use fake_github::{Config, FakeGithub, Scope};
use futures_util::StreamExt;
use watch_thread::WatchThread;

#[derive(Parser)]
#[command(about = "fleet benchmarks against the real Docker engine and the fake GitHub")]
struct Args {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The status page with N runners: `/api/v1/status` times, the page's render in headless
    /// chromium, and memory while 10 browsers poll it.
    StatusPage {
        #[arg(long, default_value_t = 1000)]
        runners: usize,
        /// Sequential GETs of `/api/v1/status` to time.
        #[arg(long, default_value_t = 200)]
        gets: usize,
    },
    /// A real `fleet watch --listen` of N runners: GitHub and Docker requests and its memory,
    /// with no browser and with 10 browsers polling the page.
    StatusPageWatch {
        #[arg(long, default_value_t = 100)]
        runners: u32,
        /// Length of each window, in seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Replacement latency under `fleet watch`: kill runners one by one, time each replacement.
    Replacement {
        /// Runner exits to time.
        #[arg(long, default_value_t = 20)]
        exits: usize,
        /// Runners in the pool.
        #[arg(long, default_value_t = 3)]
        runners: u32,
        /// Record history (into a file in the bench's directory), as `fleet watch` does by
        /// default; without it, `--no-history`.
        #[arg(long)]
        history: bool,
    },
    /// Replacement latency under `fleet watch` with runners of one GPU each over N GPUs: the
    /// GPUs declared in the spec (no NVML, no health), then read through the stand-in NVML
    /// library with their health (`bench/src/gpu_health.rs`); needs `cc`.
    ReplacementGpuHealth {
        #[arg(long, default_value_t = 20)]
        exits: usize,
        #[arg(long, default_value_t = 3)]
        runners: u32,
        #[arg(long, default_value_t = 8)]
        gpus: u32,
    },
    /// Converging N runners from empty: fleet apply against a `docker run` loop, docker compose
    /// and the engine's ceiling (a raw parallel create-and-start through the API).
    Converge {
        /// Sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "30,100")]
        runners: Vec<u32>,
        /// Rounds per size; the median is reported, and the order of the four ways rotates
        /// from round to round so that none always runs first.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// `fleet plan` (the binary) on a converged fleet of 100, and on a fake GitHub holding
    /// 1,000 and 10,000 owned runners: wall time and GitHub requests.
    Plan {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        registrations: Vec<u32>,
    },
    /// The timeline of JIT registrations while fleet creates N runners: POSTs a second and the
    /// most points spent in any minute (GitHub's secondary limit: 900 per endpoint, 5 a POST).
    JitTimeline {
        #[arg(long, default_value_t = 100)]
        runners: u32,
    },
    /// Peak memory (VmHWM) of `fleet apply` and `fleet watch` (the binary) at N runners.
    Memory {
        #[arg(long, default_value_t = 100)]
        runners: u32,
        /// watch records history (into a file in the bench's directory) instead of
        /// `--no-history`.
        #[arg(long)]
        history: bool,
    },
    /// An autoscaled pool under `fleet watch`: job queued to runner started (p50, p95), a burst
    /// of jobs from zero runners against the engine's ceiling, GitHub requests per job.
    Autoscale {
        /// Single jobs to time.
        #[arg(long, default_value_t = 20)]
        jobs: usize,
        /// Jobs queued at once.
        #[arg(long, default_value_t = 50)]
        burst: u32,
        /// How runners get their JIT config: `stdin` (fleet's default), `file` (one more Docker
        /// request per container, between create and start) or `env`.
        #[arg(long, default_value = "stdin")]
        secrets: String,
    },
    /// N runners on each of two engines (this machine's and a TLS engine on 127.0.0.1) from
    /// empty: fleet apply against both engines' ceiling driven at once.
    HostsConverge {
        /// Runners per engine.
        #[arg(long, default_value_t = 30)]
        runners: u32,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Under `fleet watch`, runner replacements on one engine while the other answers, just
    /// after it stops answering, and once it is known to be down.
    DeadHost {
        /// Runners per engine.
        #[arg(long, default_value_t = 3)]
        runners: u32,
        /// Exits timed in each state.
        #[arg(long, default_value_t = 5)]
        exits: usize,
        /// watch's --host-timeout, in seconds.
        #[arg(long, default_value_t = 30)]
        host_timeout: u64,
    },
    /// The history database under a synthetic load: its size after DAYS, and `fleet report`'s
    /// time on it (no Docker, no GitHub: events as `fleet watch` sends them).
    History {
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long, default_value_t = 100)]
        runners: u32,
        #[arg(long, default_value_t = 4)]
        hosts: u32,
        #[arg(long, default_value_t = 8)]
        gpus_per_host: u32,
        #[arg(long, default_value_t = 2000)]
        jobs_per_day: u32,
        /// Keep the database in this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// GitHub requests of `fleet watch` in steady state, per resync and projected per hour.
    ApiBudget {
        #[arg(long, default_value_t = 100)]
        runners: u32,
        /// Resyncs to count (one a second here; projected to one every 30 s).
        #[arg(long, default_value_t = 20)]
        resyncs: u32,
    },
}

fn main() {
    let args = Args::parse();
    // Quiet unless RUST_LOG asks (fleet's own log, as `fleet` would write it).
    if std::env::var_os("RUST_LOG").is_some() {
        fleet::cli::init_logging(0);
    }
    // The stand-in NVML is set up while this is the only thread (it sets the environment).
    let stand_in = match &args.command {
        Bench::ReplacementGpuHealth { gpus, .. } => match gpu_health::prepare(*gpus) {
            Ok(stand_in) => Some(stand_in),
            Err(e) => {
                eprintln!("bench failed: {e}");
                std::process::exit(1);
            }
        },
        _ => None,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match args.command {
            Bench::StatusPage { runners, gets } => status_page::status_page(runners, gets).await,
            Bench::StatusPageWatch { runners, seconds } => {
                status_page::page_watch(runners, seconds).await
            }
            Bench::Replacement {
                exits,
                runners,
                history,
            } => replacement(exits, runners, history).await,
            Bench::ReplacementGpuHealth { exits, runners, .. } => match &stand_in {
                Some(stand_in) => gpu_health::replacement(stand_in, exits, runners).await,
                None => Err("the NVML stand-in is not set up".to_string()),
            },
            Bench::ApiBudget { runners, resyncs } => api_budget(runners, resyncs).await,
            Bench::Converge { runners, rounds } => converge(&runners, rounds).await,
            Bench::Plan { registrations } => plan_bench(&registrations).await,
            Bench::Memory { runners, history } => memory(runners, history).await,
            Bench::JitTimeline { runners } => jit_timeline(runners).await,
            Bench::Autoscale {
                jobs,
                burst,
                secrets,
            } => autoscale::autoscale(jobs, burst, &secrets).await,
            Bench::HostsConverge { runners, rounds } => hosts::converge(runners, rounds).await,
            Bench::History {
                days,
                runners,
                hosts,
                gpus_per_host,
                jobs_per_day,
                out,
            } => history::run(&history::Load {
                out,
                days,
                runners,
                hosts,
                gpus_per_host,
                jobs_per_day,
            }),
            Bench::DeadHost {
                runners,
                exits,
                host_timeout,
            } => hosts::dead_host(runners, exits, Duration::from_secs(host_timeout)).await,
        }
    });
    if let Err(e) = result {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

/// A bench fleet: the fake GitHub, a spec, a unique fleet name; removed on drop.
struct Setup {
    fleet: String,
    fake: FakeGithub,
    _dir: tempfile::TempDir,
    spec: PathBuf,
    docker: Docker,
}

impl Setup {
    async fn new(kind: &str, runners: u32) -> Result<Setup, String> {
        Setup::with_gpus(kind, runners, None).await
    }

    /// A bench fleet whose host has `gpus` (`auto` or a list of UUIDs; `None`: no GPUs), each
    /// runner holding one of them (`gpu_mode: env`, so that no NVIDIA runtime is needed).
    async fn with_gpus(kind: &str, runners: u32, gpus: Option<&str>) -> Result<Setup, String> {
        let (host_gpus, pool_gpus) = match gpus {
            Some(gpus) => (format!("{gpus}\n    gpu_mode: env"), "    gpus: 1\n"),
            None => ("none".to_string(), ""),
        };
        let image = fake_github::image::ensure_runner_image()?;
        let token = format!("bench-token-{}", std::process::id());
        let fake = FakeGithub::start(Config {
            token,
            ..Config::default()
        })
        .await
        .map_err(|e| format!("fake GitHub: {e}"))?;
        let fleet = format!("bench-{kind}-{}", std::process::id() % 100_000);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let spec = dir.path().join("fleet.yaml");
        std::fs::write(
            &spec,
            format!(
                "version: 1\nname: {fleet}\ngithub:\n  repo: acme/bench\n  api_url: {}\nhosts:\n  local:\n    gpus: {host_gpus}\npools:\n  eph:\n    count: {runners}\n    image: {image}\n    pull: never\n    network: none\n{pool_gpus}",
                fake.url()
            ),
        )
        .map_err(|e| e.to_string())?;
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| e.to_string())?
            .negotiate_version()
            .await
            .map_err(|e| format!("Docker: {e}"))?;
        Ok(Setup {
            fleet,
            fake,
            _dir: dir,
            spec,
            docker,
        })
    }

    fn env(&self) -> fleet::watch::Env {
        let (token, api_url) = (self.fake.token(), self.fake.url());
        Arc::new(move |k: &str| match k {
            "GITHUB_TOKEN" => Some(token.clone()),
            "GITHUB_API_URL" => Some(api_url.clone()),
            _ => None,
        })
    }

    /// Starts `fleet watch` in this process.
    fn watch(&self, resync: Duration) -> WatchThread {
        self.watch_recording(resync, false)
    }

    /// [`Setup::watch`], recording history into `history.db` in the bench's directory when
    /// `history`.
    fn watch_recording(&self, resync: Duration, history: bool) -> WatchThread {
        let history = history.then(|| fleet::history::HistoryArgs {
            path: Some(self._dir.path().join("history.db")),
            no_history: false,
            history_retention: Duration::from_secs(90 * 86_400),
            history_gpu_every: Duration::from_secs(10),
        });
        let options = watch_thread::options(resync, Duration::from_secs(30));
        WatchThread::start_recording(self.spec.clone(), options, history, self.env())
    }

    async fn running(&self) -> Result<Vec<String>, String> {
        let filters = HashMap::from([
            ("label", vec![format!("fleet.name={}", self.fleet)]),
            ("status", vec!["running".to_string()]),
        ]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                c.names?
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
            })
            .collect())
    }

    async fn wait_running(&self, n: usize, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.running().await?.len() == n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{n} runners were not running after {limit:?}"))
    }

    async fn cleanup(&self) {
        remove_labelled(&self.docker, &format!("fleet.name={}", self.fleet)).await;
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn replacement(exits: usize, runners: u32, history: bool) -> Result<(), String> {
    let setup = Setup::new("latency", runners).await?;
    let outcome = time_replacements(&setup, exits, runners, history).await;
    setup.cleanup().await;
    let latencies = outcome?;
    println!("| measure | value |\n|---|---|");
    println!("| runner exits timed | {} |", latencies.len());
    println!(
        "| replacement latency p50 | {:.3} s |",
        percentile(&latencies, 50.0)
    );
    println!(
        "| replacement latency p95 | {:.3} s |",
        percentile(&latencies, 95.0)
    );
    println!(
        "| replacement latency max | {:.3} s |",
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Kills `exits` runners of `setup`'s pool of `runners` one by one under `fleet watch`; the
/// sorted seconds from each container's `die` to its replacement's `start`.
async fn time_replacements(
    setup: &Setup,
    exits: usize,
    runners: u32,
    history: bool,
) -> Result<Vec<f64>, String> {
    let stop = setup.watch_recording(Duration::from_secs(30), history);
    setup
        .wait_running(runners as usize, Duration::from_secs(60))
        .await?;
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("label", vec![format!("fleet.name={}", setup.fleet)]),
        ("event", vec!["die".to_string(), "start".to_string()]),
    ]);
    // Docker sends events only once the stream is polled: read it from now on, in a task.
    let mut stream = setup
        .docker
        .events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if events_tx.send(event).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for i in 0..exits {
        let victims = setup.running().await?;
        let victim = victims.first().ok_or("no runner to kill")?.clone();
        setup
            .docker
            .kill_container(
                &victim,
                Some(KillContainerOptionsBuilder::new().signal("KILL").build()),
            )
            .await
            .map_err(|e| format!("kill {victim}: {e}"))?;
        let mut died = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let event = match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(e))) => return Err(format!("Docker's event stream failed: {e}")),
                Ok(None) => return Err("Docker's event stream ended".to_string()),
                Err(_) => return Err("no Docker event within 30 s".to_string()),
            };
            let name = event
                .actor
                .and_then(|a| a.attributes)
                .and_then(|a| a.get("name").cloned())
                .unwrap_or_default();
            let at = event.time_nano.unwrap_or_default() as f64 / 1e9;
            match event.action.as_deref() {
                Some("die") if name == victim => died = Some(at),
                Some("start") if name != victim => {
                    if let Some(d) = died {
                        latencies.push(at - d);
                        break;
                    }
                }
                _ => {}
            }
        }
        setup
            .wait_running(runners as usize, Duration::from_secs(30))
            .await?;
        eprintln!(
            "exit {}/{exits}: {:.3}s",
            i + 1,
            latencies.last().copied().unwrap_or(f64::NAN)
        );
    }
    stop.stop().await;
    reader.abort();
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

async fn api_budget(runners: u32, resyncs: u32) -> Result<(), String> {
    let setup = Setup::new("budget", runners).await?;
    let outcome = async {
        // Converge first (these requests are the one-off cost of creating the runners).
        setup.converge().await?;
        let scope = Scope::repo("acme", "bench");
        for r in setup.fake.runners(&scope) {
            setup.fake.set_runner_state(&scope, r.id, true, false);
        }

        // Steady state: `resyncs` resyncs a second apart, nothing changing.
        setup.fake.clear_requests();
        let stop = setup.watch(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(u64::from(resyncs))).await;
        let elapsed = started.elapsed().as_secs_f64();
        let requests = setup.fake.requests();

        // Churn: runners finish jobs (GitHub drops the registration, the container exits) and
        // watch replaces them; what does one replacement cost?
        setup.fake.clear_requests();
        let jobs = 5usize;
        for name in setup.running().await?.into_iter().take(jobs) {
            if let Some(r) = setup
                .fake
                .runners(&scope)
                .into_iter()
                .find(|r| r.name == name)
            {
                setup.fake.remove_runner(&scope, r.id);
            }
            setup
                .docker
                .kill_container(
                    &name,
                    Some(KillContainerOptionsBuilder::new().signal("KILL").build()),
                )
                .await
                .map_err(|e| format!("kill {name}: {e}"))?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        setup
            .wait_running(runners as usize, Duration::from_secs(60))
            .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.stop().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let churn = setup.fake.requests();
        let churn_counted = churn.iter().filter(|r| r.status != 304).count();
        let per_job = churn_counted as f64 / jobs as f64;

        let counted = requests.iter().filter(|r| r.status != 304).count();
        let conditional = requests.len() - counted;
        let cycles = elapsed.max(1.0); // one reconcile a second
        let per_resync = counted as f64 / cycles;
        let per_hour_30s = per_resync * 120.0;
        println!("| measure | value |\n|---|---|");
        println!("| runners | {runners} |");
        println!("| reconciles observed (1 s resync) | {cycles:.0} |");
        println!("| requests counted against the limit | {counted} |");
        println!("| conditional requests answered 304 (free) | {conditional} |");
        println!("| counted requests per resync | {per_resync:.2} |");
        println!("| projected per hour at a 30 s resync, steady state | {per_hour_30s:.0} |");
        println!("| counted requests per finished job (replacement, 1 s resync) | {per_job:.1} |");
        Ok::<(), String>(())
    }
    .await;
    setup.cleanup().await;
    outcome
}

/// The `fleet` binary built beside this one.
fn fleet_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let fleet = exe.with_file_name("fleet");
    if fleet.exists() {
        Ok(fleet)
    } else {
        Err(format!(
            "{} is missing: build the workspace (cargo build --release --locked --workspace)",
            fleet.display()
        ))
    }
}

impl Setup {
    /// Runs the `fleet` binary on this setup's spec.
    fn fleet_command(&self, args: &[&str]) -> Result<std::process::Command, String> {
        let mut cmd = std::process::Command::new(fleet_binary()?);
        cmd.arg("-f")
            .arg(&self.spec)
            .args(args)
            .env("GITHUB_TOKEN", self.fake.token())
            .env("GITHUB_API_URL", self.fake.url())
            .env("FLEET_LOCK_DIR", self._dir.path())
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Ok(cmd)
    }

    /// Converges with the library, as `fleet apply --auto-approve` does.
    async fn converge(&self) -> Result<(), String> {
        let spec = fleet::spec::load(&self.spec).map_err(|e| e.render())?;
        let observers = fleet::observe::Observers::connect(
            &spec,
            Path::new("."),
            &*self.env(),
            fleet::github::RetryPolicy::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let observed = observers.observe(&spec).await.map_err(|e| e.to_string())?;
        let plan = fleet::plan::plan(&spec, &observed).map_err(|e| e.to_string())?;
        let report = fleet::fanout::apply_by_host(
            &spec,
            &observers,
            &observed,
            &plan,
            10,
            &fleet::apply::Quiet,
        )
        .await;
        match report.failed().next() {
            None => Ok(()),
            Some(_) => Err(report.summary(fleet::apply::Run::Apply)),
        }
    }
}

/// Removes every container and volume carrying `label=value` (an autoscaled pool's scale set
/// record is a volume).
pub(crate) async fn remove_labelled(docker: &Docker, label: &str) {
    let filters = HashMap::from([("label", vec![label.to_string()])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    if let Ok(list) = docker.list_containers(Some(options)).await {
        let removals = list.into_iter().filter_map(|c| c.id).map(|id| {
            let docker = docker.clone();
            async move {
                let _ = docker
                    .remove_container(
                        &id,
                        Some(
                            RemoveContainerOptionsBuilder::new()
                                .force(true)
                                .v(true)
                                .build(),
                        ),
                    )
                    .await;
            }
        });
        futures_util::stream::iter(removals)
            .buffer_unordered(10)
            .collect::<Vec<_>>()
            .await;
    }
    // The volumes too: an autoscaled pool's scale set record, for one.
    let options = bollard::query_parameters::ListVolumesOptionsBuilder::new()
        .filters(&filters)
        .build();
    if let Ok(list) = docker.list_volumes(Some(options)).await {
        for volume in list.volumes.unwrap_or_default() {
            let _ = docker
                .remove_volume(
                    &volume.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
    }
}

fn compose_command() -> Option<Vec<&'static str>> {
    let works = |cmd: &[&str]| {
        std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["docker", "compose"]) {
        Some(vec!["docker", "compose"])
    } else if works(&["docker-compose"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn time_fleet(n: u32) -> Result<f64, String> {
    let setup = Setup::new("converge", n).await?;
    let started = Instant::now();
    let result = async {
        setup.converge().await?;
        setup
            .wait_running(n as usize, Duration::from_secs(300))
            .await
    }
    .await;
    let seconds = started.elapsed().as_secs_f64();
    setup.cleanup().await;
    result.map(|()| seconds)
}

async fn time_run_loop(docker: &Docker, image: &str, label: &str, n: u32) -> Result<f64, String> {
    let started = Instant::now();
    let mut result = Ok(());
    for i in 0..n {
        let name = format!("fleet-bench-loop-{}-{i}", std::process::id());
        match std::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "none",
                "--label",
                label,
                image,
            ])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                result = Err(String::from_utf8_lossy(&out.stderr).to_string());
                break;
            }
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    remove_labelled(docker, label).await;
    result.map(|()| seconds)
}

async fn time_compose(
    docker: &Docker,
    compose: &[&str],
    image: &str,
    label: &str,
    n: u32,
) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (key, value) = label.split_once('=').unwrap_or((label, ""));
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        format!(
            "version: \"2.4\"\nservices:\n  runner:\n    image: {image}\n    network_mode: none\n    labels:\n      {key}: \"{value}\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let project = format!("fleetbench{}", std::process::id());
    let started = Instant::now();
    let out = std::process::Command::new(compose[0])
        .args(&compose[1..])
        .args([
            "-p",
            &project,
            "up",
            "-d",
            "--scale",
            &format!("runner={n}"),
        ])
        .current_dir(dir.path())
        .output()
        .map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::process::Command::new(compose[0])
        .args(&compose[1..])
        .args(["-p", &project, "down", "-t", "0"])
        .current_dir(dir.path())
        .output();
    remove_labelled(docker, label).await;
    if out.status.success() {
        Ok(seconds)
    } else {
        Err(format!("compose: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The engine's ceiling: create and start through the API, 10 at once (fleet's default).
pub(crate) async fn time_ceiling(
    docker: &Docker,
    image: &str,
    label: &str,
    n: u32,
) -> Result<f64, String> {
    let started = Instant::now();
    let made = raw_creates(docker, "ceiling", image, label, n).await;
    let seconds = started.elapsed().as_secs_f64();
    remove_labelled(docker, label).await;
    made.map(|()| seconds)
}

/// Creates and starts `n` labelled containers through `docker`, 10 at once.
pub(crate) async fn raw_creates(
    docker: &Docker,
    tag: &str,
    image: &str,
    label: &str,
    n: u32,
) -> Result<(), String> {
    let (key, value) = label.split_once('=').unwrap_or((label, ""));
    let creates = (0..n).map(|i| async move {
        let name = format!("fleet-bench-raw-{tag}-{}-{i}", std::process::id());
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_string()),
            labels: Some(HashMap::from([(key.to_string(), value.to_string())])),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = bollard::query_parameters::CreateContainerOptionsBuilder::new()
            .name(&name)
            .build();
        docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| e.to_string())?;
        docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| e.to_string())
    });
    let results: Vec<Result<(), String>> = futures_util::stream::iter(creates)
        .buffer_unordered(10)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn converge(sizes: &[u32], rounds: usize) -> Result<(), String> {
    let image = fake_github::image::ensure_runner_image()?;
    let compose = compose_command().ok_or(
        "neither `docker compose` nor `docker-compose` works: install Debian's docker-compose",
    )?;
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| e.to_string())?
        .negotiate_version()
        .await
        .map_err(|e| e.to_string())?;
    let label = format!("fleet-bench.run={}", std::process::id());
    println!(
        "| runners | fleet apply | docker run loop | docker compose --scale | engine ceiling (API, 10 at once) | fleet/compose | fleet/loop | fleet/ceiling |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        let mut times: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds.max(1) {
            for k in 0..4 {
                let way = (k + round) % 4;
                let t = match way {
                    0 => time_fleet(n).await?,
                    1 => time_run_loop(&docker, image, &label, n).await?,
                    2 => time_compose(&docker, &compose, image, &label, n).await?,
                    _ => time_ceiling(&docker, image, &label, n).await?,
                };
                eprintln!("{n} runners, round {}, way {way}: {t:.2} s", round + 1);
                times[way].push(t);
            }
        }
        let [fleet_s, loop_s, compose_s, ceiling_s] = times.map(median);
        println!(
            "| {n} | {fleet_s:.2} s | {loop_s:.2} s | {compose_s:.2} s | {ceiling_s:.2} s | {:.2} | {:.2} | {:.2} |",
            fleet_s / compose_s,
            fleet_s / loop_s,
            fleet_s / ceiling_s
        );
    }
    Ok(())
}

async fn plan_bench(registrations: &[u32]) -> Result<(), String> {
    println!(
        "| world | fleet plan wall time | GitHub requests | list requests | writes | goal: lists |"
    );
    println!("|---|---|---|---|---|---|");
    // A converged fleet of 100.
    let setup = Setup::new("plan", 100).await?;
    setup.converge().await?;
    let scope = Scope::repo("acme", "bench");
    for r in setup.fake.runners(&scope) {
        setup.fake.set_runner_state(&scope, r.id, true, false);
    }
    let mut worlds = vec![("converged fleet of 100 runners".to_string(), setup)];
    for &n in registrations {
        let setup = Setup::new("plan", 0).await?;
        let label = fleet::contract::ownership_label(&setup.fleet);
        for i in 0..n {
            setup.fake.add_runner(
                &scope,
                fake_github::NewRunner {
                    name: format!("{}-eph-r{i:05}", setup.fleet),
                    labels: vec!["self-hosted".into(), label.clone()],
                    status_online: true,
                    ..fake_github::NewRunner::default()
                },
            );
        }
        worlds.push((format!("fake GitHub holding {n} owned runners"), setup));
    }
    for (what, setup) in &worlds {
        setup.fake.clear_requests();
        let started = Instant::now();
        let status = setup
            .fleet_command(&["plan"])?
            .status()
            .map_err(|e| e.to_string())?;
        let wall = started.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!("fleet plan failed on the {what}"));
        }
        let requests = setup.fake.requests();
        let lists = requests
            .iter()
            .filter(|r| r.path.ends_with("/actions/runners"))
            .count();
        let writes = requests.iter().filter(|r| r.method != "GET").count();
        let held = setup.fake.runners(&scope).len();
        println!(
            "| {what} | {wall:.3} s | {} | {lists} | {writes} | {} |",
            requests.len(),
            held.div_ceil(100).max(1)
        );
    }
    for (_, setup) in &worlds {
        setup.cleanup().await;
    }
    Ok(())
}

/// Peak resident memory of a running process, from /proc (VmHWM), in MiB.
fn peak_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

async fn memory(runners: u32, history: bool) -> Result<(), String> {
    let setup = Setup::new("memory", runners).await?;
    let outcome = async {
        // apply: follow VmHWM until the process ends.
        let mut child = setup
            .fleet_command(&["apply", "--auto-approve"])?
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut apply_peak: f64 = 0.0;
        loop {
            if let Some(p) = peak_mib(child.id()) {
                apply_peak = apply_peak.max(p);
            }
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        setup
            .wait_running(runners as usize, Duration::from_secs(60))
            .await?;
        // watch: run a few resyncs with all runners, then read VmHWM and stop it. Without
        // history: the figure stays comparable with earlier ones, and nothing is written to
        // /var/lib/fleet when the bench runs as root.
        let database = setup._dir.path().join("history.db");
        let database = database.to_string_lossy();
        let recording = if history {
            ["--history", database.as_ref()]
        } else {
            ["--no-history", ""]
        };
        let args: Vec<&str> = ["watch", "--resync", "1s"]
            .into_iter()
            .chain(recording.into_iter().filter(|a| !a.is_empty()))
            .collect();
        let mut child = setup
            .fleet_command(&args)?
            .spawn()
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let watch_peak = peak_mib(child.id()).unwrap_or(f64::NAN);
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        println!("| process ({runners} runners) | peak memory (VmHWM) |\n|---|---|");
        println!("| fleet apply, from empty | {apply_peak:.1} MiB |");
        let recorded = if history {
            "history on"
        } else {
            "--no-history"
        };
        println!("| fleet watch, 8 s at a 1 s resync, {recorded} | {watch_peak:.1} MiB |");
        Ok::<(), String>(())
    }
    .await;
    setup.cleanup().await;
    outcome
}

async fn jit_timeline(runners: u32) -> Result<(), String> {
    let setup = Setup::new("jit", runners).await?;
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let sink = times.clone();
    setup.fake.on_request(move |r| {
        if r.method == "POST"
            && r.path.ends_with("/generate-jitconfig")
            && let Ok(mut t) = sink.lock()
        {
            t.push(started.elapsed().as_secs_f64());
        }
    });
    let outcome = setup.converge().await;
    setup.cleanup().await;
    outcome?;
    let times = times.lock().map(|t| t.clone()).unwrap_or_default();
    let last = times.iter().copied().fold(0.0, f64::max);
    println!("| second | JIT POSTs | points |\n|---|---|---|");
    for second in 0..=(last as usize) {
        let n = times.iter().filter(|t| **t as usize == second).count();
        if n > 0 {
            println!("| {second} | {n} | {} |", n * 5);
        }
    }
    let worst_minute = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t < start + 60.0)
                .count()
                * 5
        })
        .max()
        .unwrap_or(0);
    println!(
        "\n{} JIT registrations in {last:.1} s; at most {worst_minute} points in any minute (limit 900).",
        times.len()
    );
    Ok(())
}
