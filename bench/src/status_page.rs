//! `status-page`: the status page of `fleet watch --listen` with a fleet of N runners (a
//! status made in memory: the page serves watch's last observation, so Docker and GitHub play
//! no part). Times `/api/v1/status` (p50, p95 of sequential GETs), the page's first full render
//! in headless chromium (through chromedriver), and the memory of this process while 10
//! browsers poll the page.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::observe::state::ContainerStatus;
use fleet::status::{
    FleetStatus, GithubView, GpuUse, HostGpu, HostStatus, PoolStatus, RunnerJob, RunnerState,
    RunnerStatus, Totals,
};
use fleet::web::{Board, ListenArgs};

#[path = "../../tests/support/webdriver.rs"]
#[allow(dead_code)] // The screenshot and log calls serve the tests.
mod webdriver;

/// A fleet of `runners` on 8 hosts of 8 GPUs each; one GPU per runner up to 64.
fn fleet_status(runners: usize) -> FleetStatus {
    let hosts: Vec<String> = (0..8).map(|h| format!("gpu-host-{h}")).collect();
    let mut pools = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let mine: Vec<RunnerStatus> = (0..runners)
            .filter(|i| i % hosts.len() == h)
            .map(|i| RunnerStatus {
                name: format!("bench-gpu-{i:05x}"),
                host: host.clone(),
                state: if i % 3 == 0 {
                    RunnerState::Busy
                } else {
                    RunnerState::Idle
                },
                container: ContainerStatus::Running,
                uptime_seconds: 600 + i as i64,
                exit_code: None,
                github: Some(GithubView {
                    id: i as u64 + 1,
                    online: true,
                    busy: i % 3 == 0,
                }),
                gpus: if i / hosts.len() < 8 {
                    vec![GpuUse {
                        uuid: format!("GPU-{h:02}-{:02}", i / hosts.len()),
                        utilization_percent: Some((i * 7 % 100) as u32),
                        memory_used_bytes: Some(4 << 30),
                        memory_total_bytes: Some(80 << 30),
                    }]
                } else {
                    vec![]
                },
                job: (i % 3 == 0).then(|| RunnerJob {
                    repository: "acme/bench".into(),
                    workflow: "acme/bench/.github/workflows/ci.yml@refs/heads/main".into(),
                    job_name: format!("test (shard {})", i % 16),
                    run_id: Some(90_000 + i as u64),
                    started_at: Some(1_765_000_000 + i as i64),
                    url: None,
                }),
            })
            .collect();
        pools.push(PoolStatus {
            name: "gpu".into(),
            host: host.clone(),
            hosts: vec![host.clone()],
            desired: mine.len() as u32,
            runners: mine,
        });
    }
    let host_status = hosts
        .iter()
        .enumerate()
        .map(|(h, name)| HostStatus {
            name: name.clone(),
            observed: true,
            reason: None,
            gpu_source: "declared".into(),
            gpu_note: None,
            gpus: (0..8)
                .map(|g| HostGpu {
                    uuid: format!("GPU-{h:02}-{g:02}"),
                    name: Some("NVIDIA H100".into()),
                    memory_total_bytes: Some(80 << 30),
                    health: None,
                    health_reasons: vec![],
                    quarantined: false,
                    held_by: (g * hosts.len() + h < runners)
                        .then(|| format!("bench-gpu-{:05x}", g * hosts.len() + h)),
                })
                .collect(),
        })
        .collect();
    FleetStatus {
        fleet: "bench".into(),
        pools,
        orphan_registrations: vec![],
        totals: Totals {
            desired: runners as u32,
            containers: runners,
            ..Totals::default()
        },
        hosts: host_status,
        autoscale: vec![],
        scale_set_error: None,
        start_failures: vec![],
    }
}

fn get(addr: SocketAddr, path: &str) -> Result<usize, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    if !out.starts_with(b"HTTP/1.0 200") && !out.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "{path}: {}",
            String::from_utf8_lossy(&out[..out.len().min(80)])
        ));
    }
    Ok(out.len())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Milliseconds from navigation to every runner row drawn (median, max), and the serving
/// process's peak memory.
struct PageTimes {
    wall: (f64, f64),
    own: (f64, f64),
    peak_mib: f64,
}

pub async fn status_page(runners: usize, gets: usize) -> Result<(), String> {
    let board = Arc::new(Board::new());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // A day of samples, one every 5 minutes, then the status the page shows.
    let status = fleet_status(runners);
    for k in (1..=288).rev() {
        board.observed(status.clone(), now - k * 300);
    }
    board.observed(status, now);
    let args = ListenArgs {
        listen: Some("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?),
        ..ListenArgs::default()
    };
    let listen = args
        .prepare()
        .map_err(|e| e.to_string())?
        .ok_or("no listener")?;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let addr = listen
        .start(
            board,
            fleet::watch::metrics::router(Arc::new(fleet::watch::metrics::Metrics::new())),
            stopped,
        )
        .await
        .map_err(|e| e.to_string())?;

    let (times, size) = tokio::task::spawn_blocking(move || {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..gets {
            let started = Instant::now();
            size = get(addr, "/api/v1/status")?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok::<_, String>((times, size))
    })
    .await
    .map_err(|e| e.to_string())??;

    let render = tokio::task::spawn_blocking(move || -> Result<PageTimes, String> {
        let url = format!("http://{addr}/");
        let browser = webdriver::Browser::start();
        let mut renders = Vec::new();
        let mut own = Vec::new();
        for _ in 0..5 {
            browser.goto("about:blank");
            let started = Instant::now();
            browser.goto(&url);
            loop {
                let n =
                    browser.script("return document.querySelectorAll('tr[data-runner]').length;");
                if n.as_u64() == Some(runners as u64) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return Err("the page did not render every runner in 30 s".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            renders.push(started.elapsed().as_secs_f64() * 1000.0);
            // The page marks its first full draw: the browser's own time from navigation start,
            // without the WebDriver round trips of the loop above.
            let mark = browser.script(
                "const m = performance.getEntriesByName('runners-drawn')[0]; return m ? m.startTime : null;",
            );
            own.push(mark.as_f64().ok_or("the page set no runners-drawn mark")?);
        }
        renders.sort_by(f64::total_cmp);
        own.sort_by(f64::total_cmp);
        // Ten browsers polling the page (every 3 s) for 30 s: this process's memory.
        let before = rss_mib();
        let others: Vec<webdriver::Browser> = (0..9).map(|_| webdriver::Browser::start()).collect();
        for b in &others {
            b.goto(&url);
        }
        browser.goto(&url);
        let mut peak = before;
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            peak = peak.max(rss_mib());
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(PageTimes {
            wall: (percentile(&renders, 0.5), *renders.last().unwrap_or(&0.0)),
            own: (percentile(&own, 0.5), *own.last().unwrap_or(&0.0)),
            peak_mib: peak,
        })
    })
    .await
    .map_err(|e| e.to_string())??;

    println!("| measure | value |\n|---|---|");
    println!(
        "| `/api/v1/status`, {runners} runners: body | {:.0} KiB |",
        size as f64 / 1024.0
    );
    println!(
        "| `/api/v1/status`, {runners} runners: p50 / p95 of {gets} GETs | {:.1} ms / {:.1} ms |",
        percentile(&times, 0.5),
        percentile(&times, 0.95)
    );
    println!(
        "| page with {runners} runners, navigation to every row drawn (WebDriver's clock): median / max of 5 | {:.0} ms / {:.0} ms |",
        render.wall.0, render.wall.1
    );
    println!(
        "| the same, the browser's own clock (navigation start to the page's `runners-drawn` mark): median / max of 5 | {:.0} ms / {:.0} ms |",
        render.own.0, render.own.1
    );
    println!(
        "| resident memory of the serving process, peak while 10 browsers poll for 30 s | {:.1} MiB |",
        render.peak_mib
    );
    Ok(())
}

/// Requests a client sent through the proxy: request lines seen, by their `HTTP/1.1` ending.
type Counter = Arc<std::sync::atomic::AtomicUsize>;

/// A Unix-socket proxy in front of the engine that counts the requests through it.
async fn docker_proxy(path: std::path::PathBuf, counter: Counter) -> Result<(), String> {
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| format!("proxy: {e}"))?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(engine) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_engine, mut to_engine) = engine.into_split();
                let up = async {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    while let Ok(n) = from_client.read(&mut buf).await {
                        if n == 0 || to_engine.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        tail.extend_from_slice(&buf[..n]);
                        let seen = tail.windows(10).filter(|w| w == b"HTTP/1.1\r\n").count();
                        counter.fetch_add(seen, std::sync::atomic::Ordering::Relaxed);
                        let keep = tail.len().saturating_sub(9);
                        tail.drain(..keep);
                    }
                    let _ = to_engine.shutdown().await;
                };
                let down = tokio::io::copy(&mut from_engine, &mut to_client);
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok(())
}

/// Resident memory now and at its peak (VmRSS, VmHWM) of process `pid`, in MiB.
fn rss_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What happened in one window of `seconds`: GitHub and Docker requests, peak RSS of watch.
struct Window {
    github: usize,
    docker: usize,
    rss_peak: f64,
}

async fn window(
    setup: &crate::Setup,
    docker: &Counter,
    pid: u32,
    seconds: u64,
    browsers: usize,
    url: &str,
) -> Result<Window, String> {
    setup.fake.clear_requests();
    docker.store(0, std::sync::atomic::Ordering::Relaxed);
    let url = url.to_string();
    let opened = tokio::task::spawn_blocking(move || {
        let all: Vec<webdriver::Browser> =
            (0..browsers).map(|_| webdriver::Browser::start()).collect();
        for b in &all {
            b.goto(&url);
        }
        all
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut rss_peak: f64 = 0.0;
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        rss_peak = rss_peak.max(rss_of(pid).0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rendered = opened
        .iter()
        .filter(|b| {
            b.script("return document.querySelectorAll('tr[data-runner]').length;")
                .as_u64()
                .unwrap_or(0)
                > 0
        })
        .count();
    if rendered != browsers {
        return Err(format!(
            "{rendered} of {browsers} browsers drew the runners"
        ));
    }
    drop(opened);
    Ok(Window {
        github: setup.fake.requests().len(),
        docker: docker.load(std::sync::atomic::Ordering::Relaxed),
        rss_peak,
    })
}

/// `status-page-watch`: the `fleet` binary's `watch --listen` of `runners` real containers
/// (the busybox runner image) with the fake GitHub, its Docker requests counted by a proxy in
/// front of the engine: 30 s with no browser, then 30 s with 10 browsers polling the page.
pub async fn page_watch(runners: u32, seconds: u64) -> Result<(), String> {
    let setup = crate::Setup::new("page", runners).await?;
    let outcome = page_watch_in(&setup, runners, seconds).await;
    setup.cleanup().await;
    outcome
}

async fn page_watch_in(setup: &crate::Setup, runners: u32, seconds: u64) -> Result<(), String> {
    let sock = setup._dir.path().join("docker.sock");
    let docker: Counter = Arc::default();
    docker_proxy(sock.clone(), docker.clone()).await?;
    let spec = std::fs::read_to_string(&setup.spec).map_err(|e| e.to_string())?;
    let spec = spec.replace(
        "  local:\n",
        &format!("  local:\n    docker: unix://{}\n", sock.display()),
    );
    std::fs::write(&setup.spec, spec).map_err(|e| e.to_string())?;
    setup.converge().await?;
    setup
        .wait_running(runners as usize, Duration::from_secs(120))
        .await?;
    let scope = fake_github::Scope::repo("acme", "bench");
    for r in setup.fake.runners(&scope) {
        setup.fake.set_runner_state(&scope, r.id, true, false);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = setup
        .fleet_command(&[
            "watch",
            "--listen",
            &listen,
            "--resync",
            "10m",
            "--no-history",
        ])?
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let addr: SocketAddr = listen.parse().map_err(|e| format!("{e}"))?;
    let started = Instant::now();
    while get(addr, "/api/v1/status").is_err() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            return Err("watch served no status in 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let url = format!("http://{listen}/");
    let quiet = window(setup, &docker, pid, seconds, 0, &url).await;
    let busy = window(setup, &docker, pid, seconds, 10, &url).await;
    let hwm = rss_of(pid).1;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let (quiet, busy) = (quiet?, busy?);
    println!(
        "| `fleet watch --listen` of {runners} runners, {seconds} s | no browser | 10 browsers polling |\n|---|---|---|"
    );
    println!("| GitHub requests | {} | {} |", quiet.github, busy.github);
    println!("| Docker requests | {} | {} |", quiet.docker, busy.docker);
    println!(
        "| resident memory of watch, peak (VmRSS) | {:.1} MiB | {:.1} MiB |",
        quiet.rss_peak, busy.rss_peak
    );
    println!("\nVmHWM of watch over its whole run: {hwm:.1} MiB");
    Ok(())
}
