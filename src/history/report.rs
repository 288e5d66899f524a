//! `fleet report`: what history says of a time range, per pool, host and GPU, with each
//! figure computed as docs/history.md says. Built from the read API (`query.rs`), rendered as
//! text, JSON (`format_version` "1"), CSV (one figure a row) or markdown.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::Connection;
use serde::Serialize;

use super::HistoryError;
use super::query::{self, ExitRow, JobRow, Span};

/// What to report on.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub from: f64,
    pub to: f64,
    pub pool: Option<String>,
    pub host: Option<String>,
    /// A GPU counts as busy in a sample whose utilization is above this (percent).
    pub busy_threshold: f64,
    /// How many repositories and workflows to list.
    pub top: usize,
}

/// The report as data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub format_version: &'static str,
    pub from: f64,
    pub to: f64,
    /// The first and last time history has anything for (over the whole database).
    pub history_from: Option<f64>,
    pub history_to: Option<f64>,
    pub pools: Vec<PoolReport>,
    pub hosts: Vec<HostReport>,
    pub gpus: Vec<GpuReport>,
    pub gpu_pools: Vec<GpuReport>,
    pub top_repositories: Vec<Usage>,
    pub top_workflows: Vec<Usage>,
}

/// One pool over the range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolReport {
    pub pool: String,
    pub hosts: Vec<String>,
    /// Runner-hours the spec wanted (its count, or an autoscaled pool's wanted runners).
    pub wanted_runner_hours: f64,
    /// Runner-hours online on GitHub (busy or idle), at most the wanted ones at each moment.
    pub online_runner_hours: f64,
    /// online / wanted.
    pub availability: Option<f64>,
    /// Of the time runner containers ran, the part they were online on GitHub.
    pub runner_uptime: Option<f64>,
    pub busy_runner_hours: f64,
    /// busy / (busy + idle).
    pub busy_fraction: Option<f64>,
    /// Jobs that finished in the range (autoscaled pools).
    pub jobs: usize,
    pub queue_wait_p50_seconds: Option<f64>,
    pub queue_wait_p95_seconds: Option<f64>,
    pub job_duration_p50_seconds: Option<f64>,
    pub job_duration_p95_seconds: Option<f64>,
    pub exits: ExitCounts,
}

/// Why runner containers ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExitCounts {
    /// Exit code 0, or an ephemeral runner fleet removed once its registration went after
    /// its job.
    pub job_done: usize,
    /// Killed by the kernel's OOM killer (Docker's `oom` event).
    pub oom: usize,
    /// Another exit code.
    pub crash: usize,
    /// Replaced because a GPU it held was lost.
    pub gpu_fault: usize,
    /// Removed (or replaced) by fleet while it ran: a spec change, a scale-down, destroy.
    pub removed: usize,
}

/// One host over the range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    pub host: String,
    /// Of the time watch observed, the part the host answered.
    pub up_fraction: Option<f64>,
    pub down_hours: f64,
    pub online_runner_hours: f64,
}

/// One GPU, or one pool's GPUs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuReport {
    /// `host/uuid`, or the pool.
    pub subject: String,
    pub sampled_hours: f64,
    /// Hours a runner held it.
    pub held_hours: f64,
    /// Held, and utilization above the threshold.
    pub busy_hours: f64,
    /// Held, and utilization at or below the threshold.
    pub idle_held_hours: f64,
    /// Mean utilization (percent) while busy.
    pub mean_utilization_busy: Option<f64>,
    /// Samples in which NVML could not read it, or reported it lost.
    pub health_incidents: usize,
}

/// GPU-hours by repository or workflow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub name: String,
    pub jobs: usize,
    pub gpu_hours: f64,
}

/// Builds the report from the database.
pub fn build(conn: &Connection, options: &ReportOptions) -> Result<Report, HistoryError> {
    let (from, to) = (options.from, options.to);
    let extent = query::extent(conn)?;
    let keep = |pool: Option<&str>, host: Option<&str>| {
        options.pool.as_deref().is_none_or(|p| pool == Some(p))
            && options.host.as_deref().is_none_or(|h| host == Some(h))
    };
    let runners: Vec<Span> = query::spans(conn, "runner", from, to)?
        .into_iter()
        .filter(|s| keep(s.pool.as_deref(), s.host.as_deref()))
        .collect();
    let wanted: Vec<Span> = query::spans(conn, "pool", from, to)?
        .into_iter()
        .filter(|s| {
            options
                .pool
                .as_deref()
                .is_none_or(|p| s.pool.as_deref() == Some(p))
        })
        .collect();
    let host_spans: Vec<Span> = query::spans(conn, "host", from, to)?
        .into_iter()
        .filter(|s| options.host.as_deref().is_none_or(|h| s.key == h))
        .collect();
    let jobs: Vec<JobRow> = query::jobs(conn, from, to)?
        .into_iter()
        .filter(|j| options.pool.as_deref().is_none_or(|p| j.pool == p))
        .collect();
    let exits: Vec<ExitRow> = query::exits(conn, from, to)?
        .into_iter()
        .filter(|e| keep(e.pool.as_deref(), e.host.as_deref()))
        .collect();
    let actions: Vec<query::EventRow> = query::events_of_kind(conn, Some("action"), from, to)?
        .into_iter()
        .filter(|e| keep(e.pool.as_deref(), e.host.as_deref()))
        .collect();
    let mut pools: BTreeSet<String> = wanted.iter().filter_map(|s| s.pool.clone()).collect();
    pools.extend(runners.iter().filter_map(|s| s.pool.clone()));
    pools.extend(jobs.iter().map(|j| j.pool.clone()));
    let pools = pools
        .into_iter()
        .map(|pool| {
            pool_report(
                &pool,
                (from, to),
                &runners,
                &wanted,
                &jobs,
                &exits,
                &actions,
            )
        })
        .collect();
    let hosts = host_reports((from, to), &host_spans, &runners);
    let gpu_reports = gpu_figures(conn, options, "host || '/' || uuid")?;
    let gpu_pools = gpu_figures(conn, options, "pool")?;
    let (top_repositories, top_workflows) = usage(conn, options)?;
    Ok(Report {
        format_version: "1",
        from,
        to,
        history_from: extent.map(|e| e.0),
        history_to: extent.map(|e| e.1),
        pools,
        hosts,
        gpus: gpu_reports,
        gpu_pools,
        top_repositories,
        top_workflows,
    })
}

/// The part of `[start, end]` inside `[from, to]`, in seconds. (Sums of these start from
/// `0.0` with a fold: an empty `f64` sum is `-0.0`, which would print as `-0.0`.)
fn overlap(start: f64, end: f64, (from, to): (f64, f64)) -> f64 {
    (end.min(to) - start.max(from)).max(0.0)
}

const HOUR: f64 = 3600.0;

fn pool_report(
    pool: &str,
    range: (f64, f64),
    runners: &[Span],
    wanted: &[Span],
    jobs: &[JobRow],
    exits: &[ExitRow],
    actions: &[query::EventRow],
) -> PoolReport {
    let mine: Vec<&Span> = runners
        .iter()
        .filter(|s| s.pool.as_deref() == Some(pool))
        .collect();
    let time_in = |states: &[&str]| -> f64 {
        mine.iter()
            .filter(|s| states.contains(&s.value.as_str()))
            .map(|s| overlap(s.start, s.end, range))
            .fold(0.0, |a, b| a + b)
    };
    let (busy, idle, offline) = (
        time_in(&["busy"]),
        time_in(&["idle"]),
        time_in(&["offline"]),
    );
    let pool_wanted: Vec<&Span> = wanted.iter().filter(|s| s.key == pool).collect();
    let (wanted_secs, online_secs) = availability(&pool_wanted, &mine, range);
    let hosts: BTreeSet<String> = mine.iter().filter_map(|s| s.host.clone()).collect();
    let my_jobs: Vec<&JobRow> = jobs.iter().filter(|j| j.pool == pool).collect();
    let finished: Vec<&&JobRow> = my_jobs
        .iter()
        .filter(|j| j.finished.is_some_and(|f| f >= range.0 && f < range.1))
        .filter(|j| j.started.is_some())
        .collect();
    let waits: Vec<f64> = my_jobs
        .iter()
        .filter_map(|j| Some(j.started? - j.queued?))
        .filter(|w| *w >= 0.0)
        .collect();
    let durations: Vec<f64> = finished
        .iter()
        .filter_map(|j| Some(j.finished? - j.started?))
        .filter(|d| *d >= 0.0)
        .collect();
    PoolReport {
        pool: pool.to_string(),
        hosts: hosts.into_iter().collect(),
        wanted_runner_hours: wanted_secs / HOUR,
        online_runner_hours: online_secs / HOUR,
        availability: ratio(online_secs, wanted_secs),
        runner_uptime: ratio(busy + idle, busy + idle + offline),
        busy_runner_hours: busy / HOUR,
        busy_fraction: ratio(busy, busy + idle),
        jobs: finished.len(),
        queue_wait_p50_seconds: percentile(&waits, 0.50),
        queue_wait_p95_seconds: percentile(&waits, 0.95),
        job_duration_p50_seconds: percentile(&durations, 0.50),
        job_duration_p95_seconds: percentile(&durations, 0.95),
        exits: exit_counts(pool, exits, actions),
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| (a / b).min(1.0))
}

/// Nearest-rank percentile; `None` without values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// Wanted runner-seconds, and online runner-seconds counted up to the wanted number at each
/// moment (a sweep over the spans' ends). Time with no wanted span (watch not running) counts
/// for neither.
fn availability(wanted: &[&Span], runners: &[&Span], range: (f64, f64)) -> (f64, f64) {
    // At one instant: ends before starts, so that adjoining spans do not count twice.
    #[derive(PartialEq, PartialOrd)]
    enum Point {
        RunnerEnd,
        WantEnd,
        WantStart(f64),
        RunnerStart,
    }
    let mut points: Vec<(f64, Point)> = Vec::new();
    for s in runners
        .iter()
        .filter(|s| s.value == "busy" || s.value == "idle")
    {
        let (a, b) = (s.start.max(range.0), s.end.min(range.1));
        if b > a {
            points.push((a, Point::RunnerStart));
            points.push((b, Point::RunnerEnd));
        }
    }
    for s in wanted {
        let (a, b) = (s.start.max(range.0), s.end.min(range.1));
        if b > a {
            let n = s.value.parse::<f64>().unwrap_or(0.0);
            points.push((a, Point::WantStart(n)));
            points.push((b, Point::WantEnd));
        }
    }
    points.sort_by(|x, y| {
        x.0.total_cmp(&y.0)
            .then_with(|| x.1.partial_cmp(&y.1).unwrap_or(std::cmp::Ordering::Equal))
    });
    let (mut online, mut want): (f64, Option<f64>) = (0.0, None);
    let (mut wanted_secs, mut online_secs, mut last) = (0.0, 0.0, range.0);
    for (t, point) in points {
        if let Some(w) = want {
            let dt = t - last;
            wanted_secs += w * dt;
            online_secs += online.min(w) * dt;
        }
        last = t;
        match point {
            Point::RunnerStart => online += 1.0,
            Point::RunnerEnd => online -= 1.0,
            Point::WantStart(n) => want = Some(n),
            Point::WantEnd => want = None,
        }
    }
    (wanted_secs, online_secs)
}

fn exit_counts(pool: &str, exits: &[ExitRow], actions: &[query::EventRow]) -> ExitCounts {
    let mut counts = ExitCounts::default();
    let exited: BTreeSet<&str> = exits
        .iter()
        .filter(|e| e.pool.as_deref() == Some(pool))
        .map(|e| e.runner.as_str())
        .collect();
    for e in exits.iter().filter(|e| e.pool.as_deref() == Some(pool)) {
        match (e.oom, e.exit_code) {
            (true, _) => counts.oom += 1,
            (false, Some(0)) => counts.job_done += 1,
            _ => counts.crash += 1,
        }
    }
    for a in actions.iter().filter(|a| a.pool.as_deref() == Some(pool)) {
        let field = |k: &str| a.detail.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let removes = matches!(field("action"), "destroy" | "replace");
        let runner = a.runner.as_deref().unwrap_or_default();
        if !removes || field("outcome") != "done" || exited.contains(runner) {
            continue;
        }
        match field("cause") {
            "exited" => {}
            "job_done" => counts.job_done += 1,
            "gpu_fault" => counts.gpu_fault += 1,
            _ => counts.removed += 1,
        }
    }
    counts
}

fn host_reports(range: (f64, f64), hosts: &[Span], runners: &[Span]) -> Vec<HostReport> {
    let names: BTreeSet<&str> = hosts
        .iter()
        .map(|s| s.key.as_str())
        .chain(runners.iter().filter_map(|s| s.host.as_deref()))
        .collect();
    names
        .into_iter()
        .map(|host| {
            let time = |value: &str| -> f64 {
                hosts
                    .iter()
                    .filter(|s| s.key == host && s.value == value)
                    .map(|s| overlap(s.start, s.end, range))
                    .fold(0.0, |a, b| a + b)
            };
            let (up, down) = (time("up"), time("down"));
            let online: f64 = runners
                .iter()
                .filter(|s| s.host.as_deref() == Some(host))
                .filter(|s| s.value == "busy" || s.value == "idle")
                .map(|s| overlap(s.start, s.end, range))
                .fold(0.0, |a, b| a + b);
            HostReport {
                host: host.to_string(),
                up_fraction: ratio(up, up + down),
                down_hours: down / HOUR,
                online_runner_hours: online / HOUR,
            }
        })
        .collect()
}

/// The GPU figures of the range, grouped by `subject` (an SQL expression of `host`, `uuid`
/// and `pool`: the GPU, or its pool). Whole hours come from the hourly sums, the hours cut by
/// the range's ends (and every hour, with a busy threshold other than the sums') from the
/// samples: a month's report reads hundreds of rows, not a million.
fn gpu_figures(
    conn: &Connection,
    options: &ReportOptions,
    subject: &str,
) -> Result<Vec<GpuReport>, HistoryError> {
    let (from, to) = (options.from, options.to);
    let (mut h0, mut h1) = ((from / HOUR).ceil() * HOUR, (to / HOUR).floor() * HOUR);
    if h1 <= h0 || options.busy_threshold != super::writer::ROLLUP_BUSY_THRESHOLD {
        (h0, h1) = (to, to);
    }
    let sql = format!(
        "SELECT {subject} AS subject, SUM(sampled), SUM(held), SUM(busy), SUM(busy_utilization),
             SUM(incidents)
         FROM (
             SELECT host, uuid, NULLIF(pool, '') AS pool, sampled, held, busy, busy_utilization,
                 incidents
             FROM gpu_hourly WHERE hour >= ?3 AND hour < ?4
             UNION ALL
             SELECT host, uuid, pool, seconds,
                 CASE WHEN runner IS NOT NULL THEN seconds ELSE 0 END,
                 CASE WHEN runner IS NOT NULL AND utilization > ?5 THEN seconds ELSE 0 END,
                 CASE WHEN runner IS NOT NULL AND utilization > ?5 THEN utilization * seconds
                     ELSE 0 END,
                 health <> 'ok'
             FROM gpu_samples
             WHERE (ts >= ?1 AND ts < ?3) OR (ts >= ?4 AND ts < ?2)
         )
         WHERE (?6 IS NULL OR host = ?6) AND (?7 IS NULL OR pool = ?7)
         GROUP BY subject HAVING subject IS NOT NULL ORDER BY subject"
    );
    let params = rusqlite::params![
        from,
        to,
        h0,
        h1,
        options.busy_threshold,
        options.host,
        options.pool
    ];
    query::rows(conn, &sql, params, "read GPU samples", |r| {
        let (sampled, held, busy, busy_util): (f64, f64, f64, f64) =
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        Ok(GpuReport {
            subject: r.get(0)?,
            sampled_hours: sampled / HOUR,
            held_hours: held / HOUR,
            busy_hours: busy / HOUR,
            idle_held_hours: (held - busy) / HOUR,
            mean_utilization_busy: (busy > 0.0).then(|| busy_util / busy),
            health_incidents: r.get::<_, i64>(5)? as usize,
        })
    })
}

/// GPU-hours of the jobs known (their runner and times), by repository and by workflow: the
/// samples of each job's runner between its start and finish (within the range).
fn usage(
    conn: &Connection,
    options: &ReportOptions,
) -> Result<(Vec<Usage>, Vec<Usage>), HistoryError> {
    let params = rusqlite::params![options.from, options.to, options.pool, options.host];
    let jobs = query::rows(
        conn,
        "SELECT j.repository, j.workflow_ref, COALESCE(j.gpu_seconds,
             (SELECT COALESCE(SUM(g.seconds), 0) FROM gpu_samples g
              WHERE g.runner = j.runner AND g.ts >= MAX(j.started, ?1)
                AND g.ts <= MIN(COALESCE(j.finished, ?2), ?2)
                AND (?4 IS NULL OR g.host = ?4)))
         FROM jobs j
         WHERE j.runner IS NOT NULL AND j.started IS NOT NULL
           AND COALESCE(j.finished, j.started) >= ?1 AND j.started < ?2
           AND (?3 IS NULL OR j.pool = ?3)",
        params,
        "read GPU use",
        |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, f64>(2)?,
            ))
        },
    )?;
    let mut by_repo: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let mut by_workflow: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (repo, workflow, seconds) in jobs {
        let unknown = || "(unknown)".to_string();
        for (map, key) in [
            (&mut by_repo, repo.unwrap_or_else(unknown)),
            (&mut by_workflow, workflow.unwrap_or_else(unknown)),
        ] {
            let entry = map.entry(key).or_default();
            entry.0 += 1;
            entry.1 += seconds / HOUR;
        }
    }
    let rank = |map: BTreeMap<String, (usize, f64)>| {
        let mut rows: Vec<Usage> = map
            .into_iter()
            .map(|(name, (jobs, gpu_hours))| Usage {
                name,
                jobs,
                gpu_hours,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.gpu_hours
                .total_cmp(&a.gpu_hours)
                .then(b.jobs.cmp(&a.jobs))
        });
        rows.truncate(options.top);
        rows
    };
    Ok((rank(by_repo), rank(by_workflow)))
}

/// Output formats of `fleet report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Csv,
    Markdown,
}

/// The report in `format`.
pub fn render(report: &Report, format: ReportFormat) -> String {
    match format {
        ReportFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(report).unwrap_or_default()
        ),
        ReportFormat::Csv => csv(report),
        ReportFormat::Text => tables(report, false),
        ReportFormat::Markdown => tables(report, true),
    }
}

fn time(t: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn hours(h: f64) -> String {
    // No `-0.0` for a sum of nothing.
    let h = if h == 0.0 { 0.0 } else { h };
    format!("{h:.1}")
}

fn percent(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| {
        if s < 120.0 {
            format!("{s:.0}s")
        } else {
            format!("{:.1}m", s / 60.0)
        }
    })
}

/// Title and rows of each table of the report.
/// A table of the report: its title, header and rows.
type Section = (&'static str, Vec<&'static str>, Vec<Vec<String>>);

fn sections(report: &Report) -> Vec<Section> {
    let pools = report
        .pools
        .iter()
        .map(|p| {
            let e = &p.exits;
            vec![
                p.pool.clone(),
                p.hosts.join(","),
                hours(p.wanted_runner_hours),
                hours(p.online_runner_hours),
                percent(p.availability),
                percent(p.runner_uptime),
                percent(p.busy_fraction),
                p.jobs.to_string(),
                format!(
                    "{} / {}",
                    seconds(p.queue_wait_p50_seconds),
                    seconds(p.queue_wait_p95_seconds)
                ),
                format!(
                    "{} / {}",
                    seconds(p.job_duration_p50_seconds),
                    seconds(p.job_duration_p95_seconds)
                ),
                format!(
                    "{}/{}/{}/{}/{}",
                    e.job_done, e.oom, e.crash, e.gpu_fault, e.removed
                ),
            ]
        })
        .collect();
    let hosts = report
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                percent(h.up_fraction),
                hours(h.down_hours),
                hours(h.online_runner_hours),
            ]
        })
        .collect();
    let gpu_rows = |gpus: &[GpuReport]| -> Vec<Vec<String>> {
        gpus.iter()
            .map(|g| {
                vec![
                    g.subject.clone(),
                    hours(g.held_hours),
                    hours(g.busy_hours),
                    hours(g.idle_held_hours),
                    g.mean_utilization_busy
                        .map_or("-".into(), |u| format!("{u:.0}%")),
                    g.health_incidents.to_string(),
                ]
            })
            .collect()
    };
    let usage_rows = |rows: &[Usage]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|u| {
                vec![
                    u.name.clone(),
                    u.jobs.to_string(),
                    format!("{:.2}", u.gpu_hours),
                ]
            })
            .collect()
    };
    let gpu_header = vec![
        "GPU",
        "HELD h",
        "BUSY h",
        "IDLE HELD h",
        "UTIL BUSY",
        "INCIDENTS",
    ];
    vec![
        (
            "Pools",
            vec![
                "POOL",
                "HOSTS",
                "WANTED h",
                "ONLINE h",
                "AVAILABILITY",
                "UPTIME",
                "BUSY",
                "JOBS",
                "QUEUE WAIT p50 / p95",
                "JOB p50 / p95",
                "EXITS done/oom/crash/gpu/removed",
            ],
            pools,
        ),
        (
            "Hosts",
            vec!["HOST", "UP", "DOWN h", "RUNNER h ONLINE"],
            hosts,
        ),
        ("GPUs", gpu_header.clone(), gpu_rows(&report.gpus)),
        (
            "GPUs by pool",
            {
                let mut h = gpu_header;
                h[0] = "POOL";
                h
            },
            gpu_rows(&report.gpu_pools),
        ),
        (
            "Top repositories by GPU-hours",
            vec!["REPOSITORY", "JOBS", "GPU h"],
            usage_rows(&report.top_repositories),
        ),
        (
            "Top workflows by GPU-hours",
            vec!["WORKFLOW", "JOBS", "GPU h"],
            usage_rows(&report.top_workflows),
        ),
    ]
}

fn tables(report: &Report, markdown: bool) -> String {
    let mut out = String::new();
    let span = match (report.history_from, report.history_to) {
        (Some(a), Some(b)) => format!("history exists from {} to {}", time(a), time(b)),
        _ => "history is empty".to_string(),
    };
    if markdown {
        out.push_str(&format!(
            "### fleet report, {} to {}\n\n_{span}_\n",
            time(report.from),
            time(report.to)
        ));
    } else {
        out.push_str(&format!(
            "fleet report, {} to {} ({span})\n",
            time(report.from),
            time(report.to)
        ));
    }
    for (title, header, rows) in sections(report) {
        if rows.is_empty() {
            continue;
        }
        out.push('\n');
        if markdown {
            out.push_str(&format!("#### {title}\n\n"));
            out.push_str(&markdown_table(&header, &rows));
        } else {
            out.push_str(&format!("{title}\n"));
            out.push_str(&text_table(&header, &rows));
        }
    }
    if report.pools.is_empty() && report.gpus.is_empty() {
        out.push_str("\nnothing recorded in this range\n");
    }
    out
}

fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!(" {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    // A cell's `|` would end it early.
    let cell = |c: &str| c.replace('|', "\\|");
    let mut out = format!(
        "| {} |\n|{}|\n",
        header.join(" | "),
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// One figure a row: `section,subject,figure,value`, for a spreadsheet's pivot table.
fn csv(report: &Report) -> String {
    let mut out = String::from("section,subject,figure,value\n");
    let mut row = |section: &str, subject: &str, figure: &str, value: String| {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        out.push_str(&format!(
            "{section},{},{figure},{}\n",
            quote(subject),
            quote(&value)
        ));
    };
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    row("range", "", "from", time(report.from));
    row("range", "", "to", time(report.to));
    row(
        "range",
        "",
        "history_from",
        report.history_from.map(time).unwrap_or_default(),
    );
    row(
        "range",
        "",
        "history_to",
        report.history_to.map(time).unwrap_or_default(),
    );
    for p in &report.pools {
        let s = p.pool.as_str();
        row(
            "pool",
            s,
            "wanted_runner_hours",
            format!("{:.4}", p.wanted_runner_hours),
        );
        row(
            "pool",
            s,
            "online_runner_hours",
            format!("{:.4}", p.online_runner_hours),
        );
        row("pool", s, "availability", opt(p.availability));
        row("pool", s, "runner_uptime", opt(p.runner_uptime));
        row(
            "pool",
            s,
            "busy_runner_hours",
            format!("{:.4}", p.busy_runner_hours),
        );
        row("pool", s, "busy_fraction", opt(p.busy_fraction));
        row("pool", s, "jobs", p.jobs.to_string());
        row(
            "pool",
            s,
            "queue_wait_p50_seconds",
            opt(p.queue_wait_p50_seconds),
        );
        row(
            "pool",
            s,
            "queue_wait_p95_seconds",
            opt(p.queue_wait_p95_seconds),
        );
        row(
            "pool",
            s,
            "job_duration_p50_seconds",
            opt(p.job_duration_p50_seconds),
        );
        row(
            "pool",
            s,
            "job_duration_p95_seconds",
            opt(p.job_duration_p95_seconds),
        );
        let e = &p.exits;
        for (k, v) in [
            ("exits_job_done", e.job_done),
            ("exits_oom", e.oom),
            ("exits_crash", e.crash),
            ("exits_gpu_fault", e.gpu_fault),
            ("exits_removed", e.removed),
        ] {
            row("pool", s, k, v.to_string());
        }
    }
    for h in &report.hosts {
        row("host", &h.host, "up_fraction", opt(h.up_fraction));
        row(
            "host",
            &h.host,
            "down_hours",
            format!("{:.4}", h.down_hours),
        );
        row(
            "host",
            &h.host,
            "online_runner_hours",
            format!("{:.4}", h.online_runner_hours),
        );
    }
    for (section, gpus) in [("gpu", &report.gpus), ("gpu_pool", &report.gpu_pools)] {
        for g in gpus {
            let s = g.subject.as_str();
            row(section, s, "held_hours", format!("{:.4}", g.held_hours));
            row(section, s, "busy_hours", format!("{:.4}", g.busy_hours));
            row(
                section,
                s,
                "idle_held_hours",
                format!("{:.4}", g.idle_held_hours),
            );
            row(
                section,
                s,
                "mean_utilization_busy",
                opt(g.mean_utilization_busy),
            );
            row(
                section,
                s,
                "health_incidents",
                g.health_incidents.to_string(),
            );
        }
    }
    for (section, rows) in [
        ("repository", &report.top_repositories),
        ("workflow", &report.top_workflows),
    ] {
        for u in rows {
            row(section, &u.name, "jobs", u.jobs.to_string());
            row(section, &u.name, "gpu_hours", format!("{:.4}", u.gpu_hours));
        }
    }
    out
}

/// `fleet report`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Report on the last DURATION (7d, 24h).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["from", "to"])]
    pub since: Option<std::time::Duration>,
    /// Start of the range (2026-12-01, 2026-12-01T08:00:00Z); with --to.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<f64>,
    /// End of the range (default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<f64>,
    /// Only this pool.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Only this host.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    /// The history database (default: the one `fleet watch` writes for the fleet of -f).
    #[arg(long = "history", value_name = "PATH")]
    pub path: Option<std::path::PathBuf>,
    /// A GPU sample counts as busy above this utilization (percent).
    #[arg(long, default_value_t = 10.0)]
    pub busy_threshold: f64,
    /// How many repositories and workflows to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

/// A time as RFC 3339 (`Z` optional) or a date (midnight UTC), in seconds since the epoch.
fn parse_time(s: &str) -> Result<f64, String> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .map(super::epoch)
        .map_err(|e| format!("{s:?} is not a time like 2026-12-01 or 2026-12-01T08:00:00Z: {e}"))
}

/// Runs `fleet report` for the spec `file`: the report's text, or why there is none.
pub fn command(file: &std::path::Path, args: &ReportArgs) -> Result<String, String> {
    let path = match &args.path {
        Some(path) => path.clone(),
        None => {
            let spec = crate::spec::load(file).map_err(|e| {
                format!(
                    "{}\n(fleet report reads the history of the fleet of -f; or name the database with --history PATH)",
                    e.render()
                )
            })?;
            let env = |name: &str| std::env::var(name).ok();
            super::default_path(&spec.name, &env, super::running_as_root())
                .map_err(|e| e.to_string())?
        }
    };
    let conn = super::open_read_only(&path).map_err(|e| e.to_string())?;
    let to = args.to.unwrap_or_else(super::now);
    let from = match (args.from, args.since) {
        (Some(from), _) => from,
        (None, Some(since)) => to - since.as_secs_f64(),
        (None, None) => to - 7.0 * 86_400.0,
    };
    if from >= to {
        return Err("--from must be before --to".into());
    }
    let options = ReportOptions {
        from,
        to,
        pool: args.pool.clone(),
        host: args.host.clone(),
        busy_threshold: args.busy_threshold,
        top: args.top,
    };
    let report = build(&conn, &options).map_err(|e| e.to_string())?;
    Ok(render(&report, args.format))
}
