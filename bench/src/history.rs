//! `history`: a synthetic load for fleet's history database. Days of a fleet of N runners on
//! H hosts of G GPUs each, with J jobs a day, recorded through fleet's own writer as `fleet
//! watch` records them (a snapshot of every runner, host and pool each resync, a reconcile and
//! an action per job, an exit per job, a GPU sample of every GPU every 10 s, the job's
//! messages), with retention and downsampling run once a simulated hour; then the file's size
//! and the time `fleet report --since <days>d` takes on it.

use std::time::Instant;

use fleet::history::report::{self, ReportOptions};
use fleet::history::{
    Event, GpuSample, JobRecord, Recorder, SpanEntry, SpanKind, WriterOptions, now,
};

/// The load: sizes of the fleet and its work.
pub struct Load {
    /// Keep the database here (else a temporary directory).
    pub out: Option<std::path::PathBuf>,
    pub days: u32,
    pub runners: u32,
    pub hosts: u32,
    pub gpus_per_host: u32,
    pub jobs_per_day: u32,
}

/// A small deterministic generator (no dependency): the same load every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One runner slot: the job it runs until when, and its current name (each job's runner is
/// a new ephemeral one).
struct Slot {
    busy_until: f64,
    name: String,
    generation: u64,
}

const RESYNC: f64 = 30.0;
const GPU_EVERY: f64 = 10.0;

pub fn run(load: &Load) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = load.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let path = dir.join("bench.db");
    let recorder = Recorder::start(&path, WriterOptions::default(), Default::default());
    if !recorder.is_on() {
        return Err(format!("cannot open {}", path.display()));
    }
    let gpus = load.hosts * load.gpus_per_host;
    let mut rng = Lcg(42);
    let end = now().floor();
    let start = end - f64::from(load.days) * 86_400.0;
    let mut slots: Vec<Slot> = (0..load.runners)
        .map(|i| Slot {
            busy_until: 0.0,
            name: format!("bench-gpu-{i:04}-0"),
            generation: 0,
        })
        .collect();
    // Jobs arrive as a Poisson process; each runs 5 to 30 minutes.
    let rate = f64::from(load.jobs_per_day) / 86_400.0;
    let mut next_job = start + exp(&mut rng, rate);
    let mut job_id = 0u64;
    let started = Instant::now();
    let mut t = start;
    let mut last_gpu = start;
    let mut hour = start;
    let mut day = start;
    while t < end {
        let mut events = Vec::new();
        while next_job < t + RESYNC {
            job_id += 1;
            if let Some(slot) = slots.iter_mut().find(|s| s.busy_until <= next_job) {
                let length = 300.0 + rng.next() * 1500.0;
                let queued = next_job - 2.0 - rng.next() * 20.0;
                slot.busy_until = next_job + length;
                events.push(Event::Job(JobRecord {
                    job_id: format!("job-{job_id}"),
                    pool: "gpu".into(),
                    repository: Some(format!("acme/repo-{}", job_id % 7)),
                    workflow_ref: Some(format!(
                        "acme/repo-{}/.github/workflows/ci-{}.yml@refs/heads/main",
                        job_id % 7,
                        job_id % 3
                    )),
                    job_name: Some(format!("test {}", job_id % 11)),
                    run_id: Some(job_id),
                    runner: Some(slot.name.clone()),
                    queued: Some(queued),
                    assigned: Some(queued + 1.0),
                    started: Some(next_job),
                    finished: Some(next_job + length),
                    result: Some("succeeded".into()),
                    ..JobRecord::default()
                }));
            }
            next_job += exp(&mut rng, rate);
        }
        // Runners whose job ended exit and are replaced: an exit, a replace action, a reconcile.
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.busy_until > 0.0 && slot.busy_until <= t {
                events.push(Event::Exit {
                    at: t,
                    container_id: format!("{}-c", slot.name),
                    runner: slot.name.clone(),
                    pool: Some("gpu".into()),
                    host: format!("host-{}", i as u32 % load.hosts),
                    exit_code: Some(0),
                });
                slot.generation += 1;
                let new = format!("bench-gpu-{i:04}-{}", slot.generation);
                events.push(Event::Action {
                    at: t,
                    source: fleet::history::Source::Watch,
                    action: "replace".into(),
                    name: slot.name.clone(),
                    pool: Some("gpu".into()),
                    host: Some(format!("host-{}", i as u32 % load.hosts)),
                    outcome: "done".into(),
                    why: "container exited with code 0".into(),
                    seconds: 0.3,
                    runner: Some(new.clone()),
                    cause: "exited".into(),
                });
                events.push(Event::Reconcile {
                    at: t,
                    trigger: "docker".into(),
                    result: "ok".into(),
                    seconds: 0.3,
                });
                slot.name = new;
                slot.busy_until = 0.0;
            }
        }
        events.push(Event::Reconcile {
            at: t,
            trigger: "resync".into(),
            result: "ok".into(),
            seconds: 0.05,
        });
        events.extend(snapshots(t, &slots, load));
        while last_gpu + GPU_EVERY <= t + RESYNC {
            last_gpu += GPU_EVERY;
            events.push(gpu_samples(last_gpu, &slots, load, gpus, &mut rng));
        }
        for event in events {
            recorder.send(event);
        }
        t += RESYNC;
        if t - hour >= 3600.0 {
            hour = t;
            // Keeps the writer's queue short (it drops what does not fit).
            recorder.flush();
        }
        if t - day >= 86_400.0 {
            day = t;
            // Retention and downsampling, which watch runs every hour: the rows are the same.
            recorder.maintain_now();
        }
    }
    recorder.maintain_now();
    recorder.close();
    let wrote = started.elapsed();
    let size: u64 = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("bench.db"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let conn = fleet::history::open_read_only(&path).map_err(|e| e.to_string())?;
    let options = ReportOptions {
        from: end - f64::from(load.days) * 86_400.0,
        to: end,
        pool: None,
        host: None,
        busy_threshold: 10.0,
        top: 10,
    };
    let mut times = Vec::new();
    let mut jobs = 0;
    for _ in 0..3 {
        let timer = Instant::now();
        let built = report::build(&conn, &options).map_err(|e| e.to_string())?;
        let text = report::render(&built, report::ReportFormat::Text);
        times.push(timer.elapsed());
        jobs = built.pools.iter().map(|p| p.jobs).sum::<usize>();
        std::hint::black_box(text);
    }
    times.sort();
    println!(
        "| days | runners | hosts x GPUs | jobs/day | jobs in the report | database (with -wal) | writing it (simulated) | `fleet report --since {}d` (median of 3) |",
        load.days
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} x {} | {} | {} | {:.1} MB | {:.0} s | {:.2} s |",
        load.days,
        load.runners,
        load.hosts,
        load.gpus_per_host,
        load.jobs_per_day,
        jobs,
        size as f64 / 1e6,
        wrote.as_secs_f64(),
        times[1].as_secs_f64()
    );
    Ok(())
}

fn exp(rng: &mut Lcg, rate: f64) -> f64 {
    -(1.0 - rng.next()).ln() / rate
}

fn snapshots(t: f64, slots: &[Slot], load: &Load) -> Vec<Event> {
    let runners = slots
        .iter()
        .enumerate()
        .map(|(i, s)| SpanEntry {
            key: s.name.clone(),
            pool: Some("gpu".into()),
            host: Some(format!("host-{}", i as u32 % load.hosts)),
            value: if s.busy_until > t { "busy" } else { "idle" }.into(),
        })
        .collect();
    let hosts = (0..load.hosts)
        .map(|h| SpanEntry {
            key: format!("host-{h}"),
            pool: None,
            host: Some(format!("host-{h}")),
            value: "up".into(),
        })
        .collect();
    let pools = vec![SpanEntry {
        key: "gpu".into(),
        pool: Some("gpu".into()),
        host: None,
        value: load.runners.to_string(),
    }];
    vec![
        Event::Snapshot {
            at: t,
            kind: SpanKind::Runner,
            entries: runners,
        },
        Event::Snapshot {
            at: t,
            kind: SpanKind::Host,
            entries: hosts,
        },
        Event::Snapshot {
            at: t,
            kind: SpanKind::Pool,
            entries: pools,
        },
    ]
}

/// Every GPU: held by the runner of its slot (runners beyond the GPUs hold none), busy (60 to
/// 100 %) while the runner's job runs.
fn gpu_samples(t: f64, slots: &[Slot], load: &Load, gpus: u32, rng: &mut Lcg) -> Event {
    let samples = (0..gpus)
        .map(|g| {
            let slot = slots.get(g as usize);
            let busy = slot.is_some_and(|s| s.busy_until > t);
            GpuSample {
                host: format!("host-{}", g % load.hosts),
                uuid: format!("GPU-bench-{g:04}"),
                runner: slot.map(|s| s.name.clone()),
                pool: slot.map(|_| "gpu".to_string()),
                utilization: Some(if busy { 60.0 + rng.next() * 40.0 } else { 0.0 }),
                memory_used: Some(if busy { 40 << 30 } else { 1 << 28 }),
                memory_total: Some(80 << 30),
                temperature: Some(if busy { 70.0 } else { 35.0 }),
                health: "ok".into(),
            }
        })
        .collect();
    Event::Gpus {
        at: t,
        every: GPU_EVERY,
        samples,
    }
}
