//! Benchmarks of a fleet on two engines: this machine's engine over its socket and an extra
//! engine over TLS on 127.0.0.1 (started here with the tests' harness, tests/common/engines.rs,
//! and removed afterwards).
//!
//! - `hosts-converge`: N runners on each engine from nothing, fleet apply's library path (one
//!   pool listing both hosts, placed half and half, each host's part applied at once) against
//!   the ceiling of both engines: the same containers created and started through each API, 10
//!   at once per engine, both engines at once.
//! - `dead-host`: under `fleet watch`, the time from a runner's exit on the healthy engine to
//!   its replacement's start, with both engines answering, then right after the other engine
//!   stops answering (dockerd frozen with SIGSTOP), then once that engine is known to be down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    EventsOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
};
use fake_github::{Config, FakeGithub};
use futures_util::StreamExt;

#[allow(dead_code)]
#[path = "../../tests/common/engines.rs"]
mod engines;

use super::watch_thread::{self, WatchThread};
use super::{median, percentile, raw_creates, remove_labelled};
use engines::{Certificates, Engine, Listen, RunDir, free_port};

/// The second engine of a bench: TLS on 127.0.0.1, with the runner image loaded.
struct Second {
    engine: Engine,
    certs: Certificates,
    _run: Arc<RunDir>,
}

impl Second {
    fn start(image: &str) -> Second {
        let run = RunDir::new();
        let cert_dir = run.path().join("certs");
        let made = std::fs::create_dir(&cert_dir);
        assert!(made.is_ok(), "certificate directory: {made:?}");
        let certs = Certificates::make(&cert_dir);
        let listen = Listen::Tls {
            port: free_port(),
            certs: certs.clone(),
        };
        let engine = Engine::start(&run, "second", listen);
        engine.load_image(image);
        Second {
            engine,
            certs,
            _run: run,
        }
    }

    fn endpoint(&self) -> fleet::docker::endpoint::Endpoint {
        fleet::docker::endpoint::Endpoint {
            tls: Some(self.certs.client_files()),
            ..fleet::docker::endpoint::Endpoint::new(self.engine.tcp_url().unwrap_or_default())
        }
    }

    fn hosts_yaml(&self) -> String {
        let files = self.certs.client_files();
        format!(
            "hosts:\n  local:\n    gpus: none\n  second:\n    docker: {}\n    tls: {{ ca: {}, cert: {}, key: {} }}\n    gpus: none\n",
            self.engine.tcp_url().unwrap_or_default(),
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        )
    }
}

/// A fleet on both engines: the fake GitHub, its spec, and a client per engine.
struct TwoHosts {
    fleet: String,
    fake: FakeGithub,
    _dir: tempfile::TempDir,
    spec: PathBuf,
    local: Docker,
    second: Docker,
}

impl TwoHosts {
    async fn new(kind: &str, second: &Second, per_host: u32, image: &str) -> Result<Self, String> {
        let token = format!("bench-token-{}", std::process::id());
        let fake = FakeGithub::start(Config {
            token,
            ..Config::default()
        })
        .await
        .map_err(|e| format!("fake GitHub: {e}"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let fleet = format!("bench-{kind}-{}", nanos % 100_000);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let spec = dir.path().join("fleet.yaml");
        std::fs::write(
            &spec,
            format!(
                "version: 1\nname: {fleet}\ngithub:\n  repo: acme/bench\n  api_url: {}\n{}pools:\n  eph:\n    host: [local, second]\n    count: {}\n    image: {image}\n    pull: never\n    network: none\n",
                fake.url(),
                second.hosts_yaml(),
                per_host * 2
            ),
        )
        .map_err(|e| e.to_string())?;
        let (local, second) = connect_both(second).await?;
        Ok(TwoHosts {
            fleet,
            fake,
            _dir: dir,
            spec,
            local,
            second,
        })
    }

    /// The machine's environment as fleet reads it: the token, and the fake as GitHub's API
    /// (the spec's `api_url` must agree with it).
    fn env(&self) -> fleet::watch::Env {
        let (token, api_url) = (self.fake.token(), self.fake.url());
        Arc::new(move |k: &str| match k {
            "GITHUB_TOKEN" => Some(token.clone()),
            "GITHUB_API_URL" => Some(api_url.clone()),
            _ => None,
        })
    }

    fn label(&self) -> String {
        format!("fleet.name={}", self.fleet)
    }

    /// As `fleet apply --auto-approve` does: connect, observe, plan, apply host by host.
    async fn converge(&self) -> Result<(), String> {
        let spec = fleet::spec::load(&self.spec).map_err(|e| e.render())?;
        let base = self.spec.parent().map(PathBuf::from).unwrap_or_default();
        let observers = fleet::observe::Observers::connect(
            &spec,
            &base,
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

    async fn running(docker: &Docker, label: &str) -> Result<Vec<String>, String> {
        let filters = HashMap::from([
            ("label", vec![label.to_string()]),
            ("status", vec!["running".to_string()]),
        ]);
        let options = ListContainersOptionsBuilder::new()
            .filters(&filters)
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some(c.names?.first()?.trim_start_matches('/').to_string()))
            .collect())
    }

    /// Waits until `per_host` runners run on each engine.
    async fn wait_running(&self, per_host: usize, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        let label = self.label();
        while started.elapsed() < limit {
            let local = Self::running(&self.local, &label).await?.len();
            let second = Self::running(&self.second, &label).await?.len();
            if local == per_host && second == per_host {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{per_host} runners per host were not running after {limit:?}"
        ))
    }

    async fn cleanup(&self) {
        remove_labelled(&self.local, &self.label()).await;
        remove_labelled(&self.second, &self.label()).await;
    }
}

async fn time_fleet(second: &Second, per_host: u32, image: &str) -> Result<f64, String> {
    let setup = TwoHosts::new("hosts", second, per_host, image).await?;
    let started = Instant::now();
    let result = async {
        setup.converge().await?;
        setup
            .wait_running(per_host as usize, Duration::from_secs(300))
            .await
    }
    .await;
    let seconds = started.elapsed().as_secs_f64();
    setup.cleanup().await;
    result.map(|()| seconds)
}

/// Both engines' ceiling: `per_host` containers created and started through each API, 10 at
/// once per engine, both engines at once.
async fn time_ceiling(
    local: &Docker,
    second: &Docker,
    image: &str,
    label: &str,
    per_host: u32,
) -> Result<f64, String> {
    let started = Instant::now();
    let (a, b) = futures_util::join!(
        raw_creates(local, "local", image, label, per_host),
        raw_creates(second, "second", image, label, per_host)
    );
    let seconds = started.elapsed().as_secs_f64();
    remove_labelled(local, label).await;
    remove_labelled(second, label).await;
    a.and(b).map(|()| seconds)
}

async fn connect_both(second: &Second) -> Result<(Docker, Docker), String> {
    let local = fleet::docker::endpoint::connect(
        "local",
        &fleet::docker::endpoint::Endpoint::new(fleet::docker::DEFAULT_DOCKER_ENDPOINT),
    )
    .await
    .map_err(|e| e.to_string())?;
    let remote = fleet::docker::endpoint::connect("second", &second.endpoint())
        .await
        .map_err(|e| e.to_string())?;
    Ok((local, remote))
}

pub async fn converge(per_host: u32, rounds: usize) -> Result<(), String> {
    let image = fake_github::image::ensure_runner_image()?;
    let second = Second::start(image);
    let (local, remote) = connect_both(&second).await?;
    let label = format!("fleet-bench.run={}", std::process::id());
    let mut fleet_times = Vec::new();
    let mut ceiling_times = Vec::new();
    for round in 0..rounds.max(1) {
        for way in [round % 2, (round + 1) % 2] {
            let t = match way {
                0 => time_fleet(&second, per_host, image).await?,
                _ => time_ceiling(&local, &remote, image, &label, per_host).await?,
            };
            eprintln!(
                "{per_host} runners per host, round {}, {}: {t:.2} s",
                round + 1,
                ["fleet", "ceiling"][way]
            );
            [&mut fleet_times, &mut ceiling_times][way].push(t);
        }
    }
    let (fleet_s, ceiling_s) = (median(fleet_times), median(ceiling_times));
    println!(
        "| runners per host | fleet apply (both hosts) | both engines' ceiling (API, 10 at once each) | fleet/ceiling |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {per_host} | {fleet_s:.2} s | {ceiling_s:.2} s | {:.2} |",
        fleet_s / ceiling_s
    );
    Ok(())
}

/// Starts `fleet watch` on `setup` in its own thread and runtime.
fn watch(setup: &TwoHosts, host_timeout: Duration) -> WatchThread {
    let options = watch_thread::options(Duration::from_secs(30), host_timeout);
    WatchThread::start(setup.spec.clone(), options, setup.env())
}

type Events = tokio::sync::mpsc::UnboundedReceiver<
    Result<bollard::models::EventMessage, bollard::errors::Error>,
>;

/// Kills one runner on `docker` and returns the seconds from its `die` to the next runner's
/// `start` there (Docker's event times).
async fn time_replacement(
    docker: &Docker,
    label: &str,
    events: &mut Events,
) -> Result<f64, String> {
    let victims = TwoHosts::running(docker, label).await?;
    let victim = victims.first().ok_or("no runner to kill")?.clone();
    docker
        .kill_container(
            &victim,
            Some(KillContainerOptionsBuilder::new().signal("KILL").build()),
        )
        .await
        .map_err(|e| format!("kill {victim}: {e}"))?;
    let mut died = None;
    loop {
        let event = match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(e))) => return Err(format!("Docker's event stream failed: {e}")),
            Ok(None) => return Err("Docker's event stream ended".to_string()),
            Err(_) => return Err("no Docker event within 120 s".to_string()),
        };
        let name = event
            .actor
            .and_then(|a| a.attributes)
            .and_then(|a| a.get("name").cloned())
            .unwrap_or_default();
        let at = event.time_nano.unwrap_or_default() as f64 / 1e9;
        match (event.action.as_deref(), died) {
            (Some("die"), _) if name == victim => died = Some(at),
            (Some("start"), Some(d)) if name != victim => return Ok(at - d),
            _ => {}
        }
    }
}

/// The events of the fleet's containers on `docker`, read from now on in a task.
fn follow(docker: &Docker, label: &str) -> (Events, tokio::task::JoinHandle<()>) {
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("label", vec![label.to_string()]),
        ("event", vec!["die".to_string(), "start".to_string()]),
    ]);
    let mut stream = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    (rx, reader)
}

pub async fn dead_host(per_host: u32, exits: usize, host_timeout: Duration) -> Result<(), String> {
    let image = fake_github::image::ensure_runner_image()?;
    let second = Second::start(image);
    let setup = TwoHosts::new("dead", &second, per_host, image).await?;
    let outcome = async {
        let stop = watch(&setup, host_timeout);
        setup
            .wait_running(per_host as usize, Duration::from_secs(120))
            .await?;
        let label = setup.label();
        let (mut events, reader) = follow(&setup.local, &label);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut both_up = Vec::new();
        for _ in 0..exits {
            both_up.push(time_replacement(&setup.local, &label, &mut events).await?);
            eprintln!("both engines up: {:.3} s", both_up.last().copied().unwrap_or(f64::NAN));
        }
        second.engine.pause();
        let first = time_replacement(&setup.local, &label, &mut events).await?;
        eprintln!("first exit after the second engine froze: {first:.3} s");
        let mut known_down = Vec::new();
        for _ in 0..exits {
            known_down.push(time_replacement(&setup.local, &label, &mut events).await?);
            eprintln!("second engine known down: {:.3} s", known_down.last().copied().unwrap_or(f64::NAN));
        }
        second.engine.resume();
        stop.stop().await;
        reader.abort();
        both_up.sort_by(f64::total_cmp);
        known_down.sort_by(f64::total_cmp);
        println!("| replacement on the healthy engine | p50 | max |");
        println!("|---|---|---|");
        println!(
            "| both engines answer ({} exits) | {:.3} s | {:.3} s |",
            both_up.len(),
            percentile(&both_up, 50.0),
            both_up.last().copied().unwrap_or(f64::NAN)
        );
        println!(
            "| first exit after the other engine froze (host timeout {} s) | {first:.3} s | {first:.3} s |",
            host_timeout.as_secs()
        );
        println!(
            "| the other engine known down ({} exits) | {:.3} s | {:.3} s |",
            known_down.len(),
            percentile(&known_down, 50.0),
            known_down.last().copied().unwrap_or(f64::NAN)
        );
        Ok::<(), String>(())
    }
    .await;
    second.engine.resume();
    setup.cleanup().await;
    outcome
}
