//! Prometheus metrics of `fleet watch`, served as text on `/metrics` by the listener of
//! src/web/.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::gha_metrics::AutoscaleMetrics;
use super::gpu_metrics::GpuHealthMetrics;
use crate::github::RequestStats;
use crate::status::{FleetStatus, HostStatus, RunnerStatus};

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    runners: Family<Labels, Gauge>,
    desired: Family<Labels, Gauge>,
    uptime: Family<Labels, Gauge>,
    gpu_utilization: Family<Labels, Gauge<f64, AtomicU64>>,
    gpu_memory: Family<Labels, Gauge<i64, AtomicI64>>,
    gpu_memory_total: Family<Labels, Gauge<i64, AtomicI64>>,
    reconciles: Family<Labels, Counter>,
    last_reconcile: Gauge<f64, AtomicU64>,
    reconcile_duration: Histogram,
    actions: Family<Labels, Counter>,
    replacement_latency: Histogram,
    github_requests: Family<Labels, Counter>,
    rate_limit_remaining: Gauge,
    /// Autoscaled pools (`gha_*`).
    pub autoscale: AutoscaleMetrics,
    /// Quarantines, dirty time, Xid and ECC counts, pools short for GPU health.
    pub gpu: GpuHealthMetrics,
    host_up: Family<Labels, Gauge>,
    host_gpus: Family<Labels, Gauge>,
    scale_sets_up: Gauge,
    gpu_health: Family<Labels, Gauge>,
    start_failures: Family<Labels, Gauge>,
    backoff: Family<Labels, Gauge>,
    /// Events history dropped, batches it could not write, a database it could not open.
    pub history_errors: Counter,
    job_queue: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            runners: Family::default(),
            desired: Family::default(),
            uptime: Family::default(),
            gpu_utilization: Family::default(),
            gpu_memory: Family::default(),
            gpu_memory_total: Family::default(),
            reconciles: Family::default(),
            last_reconcile: Gauge::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            actions: Family::default(),
            replacement_latency: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            github_requests: Family::default(),
            rate_limit_remaining: Gauge::default(),
            autoscale: AutoscaleMetrics::register(&mut registry),
            gpu: GpuHealthMetrics::register(&mut registry),
            host_up: Family::default(),
            host_gpus: Family::default(),
            scale_sets_up: Gauge::default(),
            gpu_health: Family::default(),
            start_failures: Family::default(),
            backoff: Family::default(),
            history_errors: Counter::default(),
            job_queue: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.5, 2.0, 14))
            }),
            registry: Registry::default(),
        };
        registry.register(
            "fleet_gpu_health",
            "1 for each GPU's health state (healthy, degraded, dirty, unknown, unhealthy), 0 for the others, by host and GPU UUID; GPUs whose health is not read (declared) have none",
            m.gpu_health.clone(),
        );
        registry.register(
            "fleet_pool_start_failures",
            "Runners of an ephemeral pool that exited in a row without taking a job (its current configuration), by pool",
            m.start_failures.clone(),
        );
        registry.register(
            "fleet_pool_backoff_seconds",
            "Seconds before an ephemeral pool whose runners cannot start makes a runner again (0: not backing off), by pool",
            m.backoff.clone(),
        );
        registry.register(
            "fleet_runners",
            "Runner containers by pool, state (busy, idle, offline, exited) and host",
            m.runners.clone(),
        );
        registry.register(
            "fleet_desired_runners",
            "Runners fleet.yaml asks for, by pool (all its hosts together)",
            m.desired.clone(),
        );
        registry.register(
            "fleet_runner_uptime_seconds",
            "Seconds since each runner's container was created, by pool, runner and host",
            m.uptime.clone(),
        );
        registry.register(
            "fleet_gpu_utilization_ratio",
            "GPU utilization (0..1) of the GPUs runners hold, from NVML on this machine",
            m.gpu_utilization.clone(),
        );
        registry.register(
            "fleet_gpu_memory_used_bytes",
            "GPU memory used on the GPUs runners hold, from NVML on this machine",
            m.gpu_memory.clone(),
        );
        registry.register(
            "fleet_gpu_memory_total_bytes",
            "GPU memory of the GPUs runners hold, from NVML on this machine",
            m.gpu_memory_total.clone(),
        );
        registry.register(
            "fleet_reconcile",
            "Reconciles by trigger (start, spec, docker, resync, retry, autoscale, host, gpu) and result (ok, failed, invalid_spec, error)",
            m.reconciles.clone(),
        );
        registry.register(
            "fleet_reconcile_duration_seconds",
            "Duration of one observe, plan and apply",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "fleet_last_reconcile_timestamp_seconds",
            "When the last reconcile ended (any result), in seconds since the epoch",
            m.last_reconcile.clone(),
        );
        registry.register(
            "fleet_apply_actions",
            "Plan steps carried out, by action and result (done, deferred, failed)",
            m.actions.clone(),
        );
        registry.register(
            "fleet_replacement_latency_seconds",
            "From a runner container's exit to its replacement running",
            m.replacement_latency.clone(),
        );
        registry.register(
            "fleet_github_requests",
            "GitHub API requests by endpoint and HTTP status (0: no answer)",
            m.github_requests.clone(),
        );
        registry.register(
            "fleet_github_rate_limit_remaining",
            "The last x-ratelimit-remaining GitHub sent",
            m.rate_limit_remaining.clone(),
        );
        registry.register(
            "fleet_host_up",
            "Whether each Docker host of the spec answered at the last observation (1) or not (0)",
            m.host_up.clone(),
        );
        registry.register(
            "fleet_host_gpus",
            "Each observed host's GPUs by state: held by a runner, or free",
            m.host_gpus.clone(),
        );
        registry.register(
            "fleet_scale_set_service_up",
            "Whether the runner scale sets could be read at the last observation that read them (1) or not (0)",
            m.scale_sets_up.clone(),
        );
        registry.register(
            "fleet_history_errors",
            "History events dropped or not written, and databases that could not be opened",
            m.history_errors.clone(),
        );
        registry.register(
            "fleet_job_queue_seconds",
            "How long each job of an autoscaled pool waited for a runner: from its queue time to a runner taking it",
            m.job_queue.clone(),
        );
        Metrics { registry, ..m }
    }

    /// `fleet_scale_set_service_up`: `Some(up)` after an observation that read (or failed to
    /// read) the scale sets; `None` leaves the last value.
    pub fn scale_sets_read(&self, up: Option<bool>) {
        if let Some(up) = up {
            self.scale_sets_up.set(i64::from(up));
        }
    }

    /// A job of `pool` waited `seconds` for a runner.
    pub fn job_queued(&self, pool: &str, seconds: f64) {
        self.job_queue
            .get_or_create(&labels([("pool", pool)]))
            .observe(seconds);
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Prometheus's classic text format (version 0.0.4), for scrapers and tools that do not
    /// read OpenMetrics (`promtool check metrics` among them).
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }

    /// Runner and host gauges from a status (cleared first: runners come and go).
    /// `host_of_gpus` is the host whose GPUs NVML on this machine reads: GPU use is exported for
    /// the runners on it.
    pub fn observe_status(&self, status: &FleetStatus, host_of_gpus: &str) {
        self.runners.clear();
        self.desired.clear();
        self.uptime.clear();
        self.gpu_utilization.clear();
        self.gpu_memory.clear();
        self.gpu_memory_total.clear();
        // A pool appears once with every host it lists, and once more per host it has runners
        // left on (desired 0 there); its desired count is the spec's.
        let mut desired: std::collections::BTreeMap<&str, i64> = Default::default();
        for pool in &status.pools {
            *desired.entry(pool.name.as_str()).or_default() += i64::from(pool.desired);
            for host in &pool.hosts {
                for state in ["busy", "idle", "offline", "exited"] {
                    let n = pool
                        .runners
                        .iter()
                        .filter(|r| &r.host == host && r.state.as_str() == state)
                        .count();
                    self.runners
                        .get_or_create(&labels([
                            ("pool", &pool.name),
                            ("state", state),
                            ("host", host),
                        ]))
                        .set(n as i64);
                }
            }
            for r in &pool.runners {
                self.uptime
                    .get_or_create(&labels([
                        ("pool", &pool.name),
                        ("runner", &r.name),
                        ("host", &r.host),
                    ]))
                    .set(r.uptime_seconds);
                if r.host == host_of_gpus {
                    self.observe_gpus(r, host_of_gpus);
                }
            }
        }
        for (pool, n) in desired {
            self.desired.get_or_create(&labels([("pool", pool)])).set(n);
        }
        self.observe_start_failures(status);
        self.observe_hosts(status);
    }

    /// `fleet_pool_start_failures` and `fleet_pool_backoff_seconds`: 0 for every pool of the
    /// status without a run of start failures.
    fn observe_start_failures(&self, status: &FleetStatus) {
        self.start_failures.clear();
        self.backoff.clear();
        for pool in &status.pools {
            let run = status.start_failures.iter().find(|p| p.pool == pool.name);
            let pool_labels = labels([("pool", pool.name.as_str())]);
            self.start_failures
                .get_or_create(&pool_labels)
                .set(run.map_or(0, |r| i64::from(r.failures)));
            let left = run
                .and_then(|r| r.backoff.as_ref())
                .map_or(0, |b| b.retry_in_secs);
            self.backoff.get_or_create(&pool_labels).set(left);
        }
    }

    /// `fleet_host_up` for every host of the spec; `fleet_host_gpus` for the observed ones (an
    /// unobserved host keeps no GPU series: its use is unknown).
    fn observe_hosts(&self, status: &FleetStatus) {
        self.host_up.clear();
        self.host_gpus.clear();
        self.gpu_health.clear();
        for host in &status.hosts {
            self.host_up
                .get_or_create(&labels([("host", &host.name)]))
                .set(i64::from(host.observed));
            if host.observed {
                let free = host.free();
                for (state, n) in [("free", free), ("held", host.gpus.len() - free)] {
                    self.host_gpus
                        .get_or_create(&labels([("host", &host.name), ("state", state)]))
                        .set(n as i64);
                }
                self.observe_health(host);
            }
        }
    }

    fn observe_health(&self, host: &HostStatus) {
        use crate::observe::state::HealthState;
        const STATES: [HealthState; 5] = [
            HealthState::Healthy,
            HealthState::Degraded,
            HealthState::Dirty,
            HealthState::Unknown,
            HealthState::Unhealthy,
        ];
        for g in &host.gpus {
            let Some(current) = g.health else { continue };
            for state in STATES {
                self.gpu_health
                    .get_or_create(&labels([
                        ("host", &host.name),
                        ("uuid", &g.uuid),
                        ("state", state.as_str()),
                    ]))
                    .set(i64::from(state == current));
            }
        }
    }

    fn observe_gpus(&self, runner: &RunnerStatus, host: &str) {
        for g in &runner.gpus {
            let key = labels([("host", host), ("uuid", &g.uuid), ("runner", &runner.name)]);
            if let Some(u) = g.utilization_percent {
                self.gpu_utilization
                    .get_or_create(&key)
                    .set(f64::from(u) / 100.0);
            }
            if let Some(used) = g.memory_used_bytes {
                self.gpu_memory.get_or_create(&key).set(used as i64);
            }
            if let Some(total) = g.memory_total_bytes {
                self.gpu_memory_total.get_or_create(&key).set(total as i64);
            }
        }
    }

    pub fn reconciled(&self, trigger: &str, result: &str, seconds: f64) {
        self.reconciles
            .get_or_create(&labels([("trigger", trigger), ("result", result)]))
            .inc();
        self.reconcile_duration.observe(seconds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_reconcile.set(now);
    }

    pub fn action(&self, action: &str, result: &str) {
        self.actions
            .get_or_create(&labels([("action", action), ("result", result)]))
            .inc();
    }

    pub fn replaced_after(&self, seconds: f64) {
        self.replacement_latency.observe(seconds);
    }

    /// GitHub request counts, from the client's running totals.
    pub fn github(&self, stats: &RequestStats) {
        for ((endpoint, status), count) in stats.by_endpoint() {
            let counter = self.github_requests.get_or_create(&labels([
                ("endpoint", &endpoint),
                ("status", &status.to_string()),
            ]));
            let current = counter.get();
            if count > current {
                counter.inc_by(count - current);
            }
        }
        let remaining = stats.rate_limit_remaining();
        if remaining >= 0 {
            self.rate_limit_remaining.set(remaining);
        }
    }
}

/// What a scraper asked for in its `Accept` header: OpenMetrics, or else Prometheus's classic
/// text format (what `curl` and `promtool check metrics` get).
fn wants_openmetrics(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` route (served by the status page's listener, src/web/). It answers in
/// OpenMetrics when the scraper asks for it (Prometheus does), else in the classic text format.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new().route(
        "/metrics",
        get(move |headers: http::HeaderMap| {
            let metrics = metrics.clone();
            async move {
                if wants_openmetrics(&headers) {
                    (
                        [(http::header::CONTENT_TYPE, OPENMETRICS)],
                        metrics.encode(),
                    )
                } else {
                    (
                        [(http::header::CONTENT_TYPE, PROMETHEUS_TEXT)],
                        metrics.encode_prometheus_text(),
                    )
                }
            }
        }),
    )
}

/// OpenMetrics text to Prometheus's classic text format (0.0.4): a counter's `HELP` and `TYPE`
/// name its `_total` samples, and there is no `# UNIT` or `# EOF`.
fn openmetrics_to_prometheus_text(page: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(page.len());
    for line in page.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {rest}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::ContainerStatus;
    use crate::status::{GpuUse, HostGpu, HostStatus, PoolStatus, RunnerState, Totals};

    fn runner(name: &str, host: &str, state: RunnerState, gpus: Vec<GpuUse>) -> RunnerStatus {
        RunnerStatus {
            name: name.into(),
            host: host.into(),
            state,
            container: ContainerStatus::Running,
            uptime_seconds: 42,
            exit_code: None,
            github: None,
            gpus,
            job: None,
        }
    }

    #[test]
    fn runner_and_gpu_gauges_carry_the_host_and_a_pool_on_two_hosts_keeps_its_desired_count() {
        let gpu = GpuUse {
            uuid: "GPU-a".into(),
            utilization_percent: Some(87),
            memory_used_bytes: Some(2 << 30),
            memory_total_bytes: Some(80 << 30),
        };
        let status = FleetStatus {
            fleet: "zq".into(),
            pools: vec![
                PoolStatus {
                    name: "gpu".into(),
                    host: "bare".into(),
                    hosts: vec!["bare".into(), "vm".into()],
                    desired: 2,
                    runners: vec![
                        runner("zq-gpu-a", "bare", RunnerState::Busy, vec![gpu]),
                        runner("zq-gpu-c", "vm", RunnerState::Idle, vec![]),
                    ],
                },
                // Runners left on a host the pool no longer uses: desired 0 there.
                PoolStatus {
                    name: "gpu".into(),
                    host: "old".into(),
                    hosts: vec!["old".into()],
                    desired: 0,
                    runners: vec![runner("zq-gpu-b", "old", RunnerState::Idle, vec![])],
                },
            ],
            orphan_registrations: vec![],
            totals: Totals::default(),
            autoscale: vec![],
            scale_set_error: None,
            start_failures: vec![],
            hosts: vec![
                HostStatus {
                    name: "bare".into(),
                    observed: true,
                    reason: None,
                    gpu_source: "nvml".into(),
                    gpu_note: None,
                    gpus: ["GPU-a", "GPU-b", "GPU-c"]
                        .map(|uuid| HostGpu {
                            uuid: uuid.into(),
                            name: None,
                            memory_total_bytes: None,
                            held_by: (uuid == "GPU-a").then(|| "zq-gpu-a".into()),
                            health: (uuid == "GPU-c")
                                .then_some(crate::observe::state::HealthState::Unhealthy),
                            health_reasons: vec![],
                            quarantined: false,
                        })
                        .to_vec(),
                },
                HostStatus {
                    name: "vm".into(),
                    observed: false,
                    reason: Some("did not answer".into()),
                    gpu_source: "unknown".into(),
                    gpu_note: None,
                    gpus: vec![],
                },
            ],
        };
        let metrics = Metrics::new();
        metrics.observe_status(&status, "bare");
        metrics.reconciled("start", "ok", 0.5);
        let page = metrics.encode();
        for line in [
            "fleet_desired_runners{pool=\"gpu\"} 2",
            "fleet_runners{pool=\"gpu\",state=\"busy\",host=\"bare\"} 1",
            "fleet_runners{pool=\"gpu\",state=\"idle\",host=\"old\"} 1",
            "fleet_runners{pool=\"gpu\",state=\"idle\",host=\"bare\"} 0",
            "fleet_runners{pool=\"gpu\",state=\"idle\",host=\"vm\"} 1",
            "fleet_host_up{host=\"bare\"} 1",
            "fleet_host_up{host=\"vm\"} 0",
            "fleet_host_gpus{host=\"bare\",state=\"free\"} 2",
            "fleet_host_gpus{host=\"bare\",state=\"held\"} 1",
            "fleet_gpu_health{host=\"bare\",uuid=\"GPU-c\",state=\"unhealthy\"} 1",
            "fleet_gpu_health{host=\"bare\",uuid=\"GPU-c\",state=\"healthy\"} 0",
            "fleet_runner_uptime_seconds{pool=\"gpu\",runner=\"zq-gpu-b\",host=\"old\"} 42",
            "fleet_gpu_utilization_ratio{host=\"bare\",uuid=\"GPU-a\",runner=\"zq-gpu-a\"} 0.87",
            "fleet_gpu_memory_used_bytes{host=\"bare\",uuid=\"GPU-a\",runner=\"zq-gpu-a\"} 2147483648",
            "fleet_gpu_memory_total_bytes{host=\"bare\",uuid=\"GPU-a\",runner=\"zq-gpu-a\"} 85899345920",
            "fleet_reconcile_total{trigger=\"start\",result=\"ok\"} 1",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in\n{page}");
        }
        let last = page
            .lines()
            .find_map(|l| l.strip_prefix("fleet_last_reconcile_timestamp_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("the last reconcile's time");
        assert!(last > 1.7e9, "{last}");
        // An unobserved host has no GPU series.
        assert!(!page.contains("fleet_host_gpus{host=\"vm\""), "{page}");
    }

    #[test]
    fn the_classic_text_format_names_counters_by_their_samples() {
        let metrics = Metrics::new();
        metrics.reconciled("start", "ok", 0.5);
        let text = metrics.encode_prometheus_text();
        assert!(
            text.contains("# TYPE fleet_reconcile_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP fleet_reconcile_total Reconciles by"),
            "{text}"
        );
        assert!(text.contains("\nfleet_reconcile_total{trigger=\"start\",result=\"ok\"} 1\n"));
        assert!(text.contains("# TYPE fleet_reconcile_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF"), "{text}");
        let mut headers = http::HeaderMap::new();
        assert!(!wants_openmetrics(&headers));
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            ),
        );
        assert!(wants_openmetrics(&headers));
    }
}
