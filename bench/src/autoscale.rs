//! `autoscale`: an autoscaled pool under `fleet watch`, on the fake GitHub's scale set service
//! and the real engine.
//!
//! - latency: one job at a time is queued for the scale set; the time from queueing it (the
//!   fake assigns it at the listener's next poll) to its runner's container `start` event,
//!   p50 and p95;
//! - burst: N jobs queued at once from zero runners, to N runners running, against the
//!   engine's ceiling for N containers (a raw parallel create-and-start) in the same run;
//! - GitHub requests per job (REST and scale set service together) over the burst.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use fake_github::{Config, FakeGithub, ScaleSetConfig};
use futures_util::StreamExt;

use crate::watch_thread::{self, WatchThread};
use crate::{percentile, remove_labelled, time_ceiling};

struct Autoscaled {
    fleet: String,
    fake: FakeGithub,
    _dir: tempfile::TempDir,
    spec: std::path::PathBuf,
    docker: Docker,
}

impl Autoscaled {
    async fn new(max: u32, secrets: &str) -> Result<Autoscaled, String> {
        let image = fake_github::image::ensure_runner_image()?;
        let fake = FakeGithub::start(Config {
            token: format!("bench-token-{}", std::process::id()),
            scaleset: ScaleSetConfig {
                // A real service holds an idle poll for 50 s and answers at once when a job
                // comes; the fake answers an idle one after 100 ms, which costs more polls
                // but not latency.
                long_poll: Duration::from_millis(100),
                ..ScaleSetConfig::default()
            },
            ..Config::default()
        })
        .await
        .map_err(|e| format!("fake GitHub: {e}"))?;
        let fleet = format!("bench-auto-{}", std::process::id() % 100_000);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let spec = dir.path().join("fleet.yaml");
        std::fs::write(
            &spec,
            format!(
                "version: 1\nname: {fleet}\ngithub:\n  repo: acme/bench\nhosts:\n  local:\n    gpus: none\npools:\n  burst:\n    image: {image}\n    pull: never\n    network: none\n    secrets: {secrets}\n    autoscale: {{ min_idle: 0, max: {max} }}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| e.to_string())?
            .negotiate_version()
            .await
            .map_err(|e| format!("Docker: {e}"))?;
        Ok(Autoscaled {
            fleet,
            fake,
            _dir: dir,
            spec,
            docker,
        })
    }

    /// `fleet watch` on a thread and runtime of its own, as in its own process.
    fn watch(&self) -> WatchThread {
        let options = watch_thread::options(Duration::from_secs(30), Duration::from_secs(30));
        let (token, api_url) = (self.fake.token(), self.fake.url());
        let env: fleet::watch::Env = Arc::new(move |k: &str| match k {
            "GITHUB_TOKEN" => Some(token.clone()),
            "GITHUB_API_URL" => Some(api_url.clone()),
            _ => None,
        });
        WatchThread::start(self.spec.clone(), options, env)
    }

    async fn running(&self) -> Result<Vec<String>, String> {
        let filters = HashMap::from([
            ("label", vec![format!("fleet.name={}", self.fleet)]),
            ("status", vec!["running".to_string()]),
        ]);
        let options = ListContainersOptionsBuilder::new()
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
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

    /// Waits until watch has removed every container of the fleet, exited ones included: a
    /// burst then starts from nothing, with no removal of earlier runners in its way.
    async fn wait_for_none(&self, limit: Duration) -> Result<(), String> {
        let filters = HashMap::from([("label", vec![format!("fleet.name={}", self.fleet)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let started = Instant::now();
        while started.elapsed() < limit {
            let list = self
                .docker
                .list_containers(Some(options.clone()))
                .await
                .map_err(|e| e.to_string())?;
            if list.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "the fleet's containers were not removed after {limit:?}"
        ))
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.running().await?.len() == n {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("{n} runners were not running after {limit:?}"))
    }

    /// The scale set, once watch made it and listens on it.
    async fn scale_set(&self) -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(set) = self
                .fake
                .scale_sets(None)
                .into_iter()
                .find(|s| s.name.ends_with("-burst") && s.session.is_some())
            {
                return Ok(set.id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("watch never listened on the scale set".into())
    }

    /// Every running runner takes a job and finishes it; their containers exit.
    async fn finish_jobs(&self, set: u64) -> Result<(), String> {
        for runner in self.running().await? {
            if self.fake.start_job(set, &runner).is_ok() {
                self.fake.complete_job(set, &runner, "succeeded")?;
            }
            let _ = self.docker.stop_container(&runner, None).await;
        }
        self.wait_for(0, Duration::from_secs(60)).await.map(|_| ())
    }
}

/// Queue-to-start latency of `jobs` single jobs, then a burst of `burst` jobs at once.
pub async fn autoscale(jobs: usize, burst: u32, secrets: &str) -> Result<(), String> {
    let bench = Autoscaled::new(burst, secrets).await?;
    let label = format!("fleet.name={}", bench.fleet);
    let outcome = async {
        let stop = bench.watch();
        let set = bench.scale_set().await?;
        let latencies = single_jobs(&bench, set, jobs).await?;
        bench.wait_for_none(Duration::from_secs(120)).await?;
        let requests_before = bench.fake.requests().len();
        bench
            .fake
            .queue_jobs_for_scale_set(set, burst as usize)
            .ok_or("no scale set")?;
        let burst_time = bench
            .wait_for(burst as usize, Duration::from_secs(300))
            .await?;
        let requests = bench.fake.requests().len() - requests_before;
        bench.finish_jobs(set).await?;
        stop.stop().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let image = fake_github::image::RUNNER_IMAGE;
        let ceiling_label = format!("fleet-bench.ceiling={}", std::process::id());
        let ceiling = time_ceiling(&bench.docker, image, &ceiling_label, burst).await?;
        remove_labelled(&bench.docker, &ceiling_label).await;
        print_table(
            &latencies,
            burst,
            burst_time.as_secs_f64(),
            ceiling,
            requests,
        );
        Ok::<(), String>(())
    }
    .await;
    remove_labelled(&bench.docker, &label).await;
    outcome
}

/// Queues one job at a time; the time from queueing to its runner's container start.
async fn single_jobs(bench: &Autoscaled, set: u64, jobs: usize) -> Result<Vec<f64>, String> {
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("label", vec![format!("fleet.name={}", bench.fleet)]),
        ("event", vec!["start".to_string()]),
    ]);
    let mut stream = bench
        .docker
        .events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
    let (tx, mut starts) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(event)) = stream.next().await {
            if tx
                .send(event.time_nano.unwrap_or_default() as f64 / 1e9)
                .is_err()
            {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for i in 0..jobs {
        let queued = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        bench
            .fake
            .queue_jobs_for_scale_set(set, 1)
            .ok_or("no scale set")?;
        let started = tokio::time::timeout(Duration::from_secs(60), starts.recv())
            .await
            .map_err(|_| "no runner started within 60 s".to_string())?
            .ok_or("Docker's event stream ended")?;
        latencies.push(started - queued);
        eprintln!("job {}/{jobs}: {:.3}s", i + 1, started - queued);
        bench.finish_jobs(set).await?;
    }
    reader.abort();
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

fn print_table(latencies: &[f64], burst: u32, burst_secs: f64, ceiling: f64, requests: usize) {
    println!("| measure | value |\n|---|---|");
    println!("| single jobs timed | {} |", latencies.len());
    println!(
        "| job queued to runner container started, p50 | {:.3} s |",
        percentile(latencies, 50.0)
    );
    println!(
        "| job queued to runner container started, p95 | {:.3} s |",
        percentile(latencies, 95.0)
    );
    println!("| {burst} jobs at once, from 0 to {burst} runners running | {burst_secs:.2} s |");
    println!(
        "| engine ceiling, {burst} containers created and started in parallel | {ceiling:.2} s |"
    );
    println!("| ratio to the ceiling | {:.2}x |", burst_secs / ceiling);
    println!(
        "| GitHub requests per job in the burst (REST and scale set service) | {:.1} |",
        requests as f64 / f64::from(burst)
    );
}
