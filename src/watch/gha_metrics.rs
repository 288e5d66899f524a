//! Metrics of autoscaled pools, under the names actions-runner-controller's listener exports
//! (`gha_*`, labelled with the scale set's name and scope) where the meaning is the same, plus
//! fleet's pool label and `fleet_autoscale_jobs_waiting` (docs/monitoring.md).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::plan::{AutoscalePool, Waiting};
use crate::scaleset::Statistics;

/// `name`, `organization`, `repository`, `enterprise` and `pool` of one scale set.
pub type ScaleSetLabels = Vec<(String, String)>;

/// The labels of pool `pool`'s scale set `name` at a scope (`owner/repo` or an organization).
pub fn scale_set_labels(
    name: &str,
    repository: Option<&str>,
    organization: &str,
    pool: &str,
) -> ScaleSetLabels {
    vec![
        ("name".into(), name.into()),
        ("organization".into(), organization.into()),
        ("repository".into(), repository.unwrap_or_default().into()),
        ("enterprise".into(), String::new()),
        ("pool".into(), pool.into()),
    ]
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 14))
}

/// The autoscaling metric families.
pub struct AutoscaleMetrics {
    assigned: Family<ScaleSetLabels, Gauge>,
    running: Family<ScaleSetLabels, Gauge>,
    registered: Family<ScaleSetLabels, Gauge>,
    busy: Family<ScaleSetLabels, Gauge>,
    idle: Family<ScaleSetLabels, Gauge>,
    min: Family<ScaleSetLabels, Gauge>,
    max: Family<ScaleSetLabels, Gauge>,
    desired: Family<ScaleSetLabels, Gauge>,
    started: Family<ScaleSetLabels, Counter>,
    completed: Family<ScaleSetLabels, Counter>,
    startup: Family<ScaleSetLabels, Histogram>,
    execution: Family<ScaleSetLabels, Histogram>,
    waiting: Family<Vec<(String, String)>, Gauge>,
}

impl AutoscaleMetrics {
    pub fn register(registry: &mut Registry) -> AutoscaleMetrics {
        let m = AutoscaleMetrics {
            assigned: Family::default(),
            running: Family::default(),
            registered: Family::default(),
            busy: Family::default(),
            idle: Family::default(),
            min: Family::default(),
            max: Family::default(),
            desired: Family::default(),
            started: Family::default(),
            completed: Family::default(),
            startup: Family::new_with_constructor(duration_histogram),
            execution: Family::new_with_constructor(duration_histogram),
            waiting: Family::default(),
        };
        let gauges = [
            (
                "gha_assigned_jobs",
                "Jobs assigned to the scale set, waiting or running",
                &m.assigned,
            ),
            (
                "gha_running_jobs",
                "Jobs running on the scale set's runners",
                &m.running,
            ),
            (
                "gha_registered_runners",
                "Runners registered in the scale set",
                &m.registered,
            ),
            (
                "gha_busy_runners",
                "Runners of the scale set running a job",
                &m.busy,
            ),
            (
                "gha_idle_runners",
                "Runners of the scale set waiting for a job",
                &m.idle,
            ),
            ("gha_min_runners", "The pool's min_idle", &m.min),
            ("gha_max_runners", "The pool's max", &m.max),
            (
                "gha_desired_runners",
                "Runners the pool wants now, capped by free GPUs",
                &m.desired,
            ),
        ];
        for (name, help, family) in gauges {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "gha_started_jobs",
            "Jobs a runner of the scale set started",
            m.started.clone(),
        );
        registry.register(
            "gha_completed_jobs",
            "Jobs that finished on the scale set, by job_result",
            m.completed.clone(),
        );
        registry.register(
            "gha_job_startup_duration_seconds",
            "From a job's assignment to the scale set to a runner taking it",
            m.startup.clone(),
        );
        registry.register(
            "gha_job_execution_duration_seconds",
            "From a runner taking a job to the job's end",
            m.execution.clone(),
        );
        registry.register(
            "fleet_autoscale_jobs_waiting",
            "Jobs of an autoscaled pool waiting for a runner, by reason (no_free_gpu, at_max, acquiring)",
            m.waiting.clone(),
        );
        m
    }

    /// The counts the scale set service sent with its last message or session.
    pub fn statistics(&self, labels: &ScaleSetLabels, s: &Statistics) {
        let set = |family: &Family<ScaleSetLabels, Gauge>, value: u32| {
            family.get_or_create(labels).set(i64::from(value));
        };
        set(&self.assigned, s.total_assigned_jobs);
        set(&self.running, s.total_running_jobs);
        set(&self.registered, s.total_registered_runners);
        set(&self.busy, s.total_busy_runners);
        set(&self.idle, s.total_idle_runners);
    }

    /// What the last plan made of an autoscaled pool.
    pub fn planned(&self, labels: &ScaleSetLabels, pool: &AutoscalePool) {
        self.min.get_or_create(labels).set(i64::from(pool.min_idle));
        self.max.get_or_create(labels).set(i64::from(pool.max));
        self.desired
            .get_or_create(labels)
            .set(i64::from(pool.runners));
        for reason in Waiting::ALL {
            let jobs = match pool.waiting {
                Some((jobs, why)) if why == reason => jobs,
                _ => 0,
            };
            let key = vec![
                ("pool".to_string(), pool.pool.clone()),
                ("reason".to_string(), reason.as_str().to_string()),
            ];
            self.waiting.get_or_create(&key).set(i64::from(jobs));
        }
    }

    pub fn job_started(&self, labels: &ScaleSetLabels) {
        self.started.get_or_create(labels).inc();
    }

    pub fn job_completed(&self, labels: &ScaleSetLabels, result: &str) {
        let mut key = labels.clone();
        key.push(("job_result".into(), result.into()));
        self.completed.get_or_create(&key).inc();
    }

    pub fn job_startup(&self, labels: &ScaleSetLabels, seconds: f64) {
        self.startup.get_or_create(labels).observe(seconds);
    }

    pub fn job_execution(&self, labels: &ScaleSetLabels, seconds: f64) {
        self.execution.get_or_create(labels).observe(seconds);
    }
}
