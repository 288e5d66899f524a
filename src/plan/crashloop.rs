//! Pools whose runners exit without taking a job (docs/apply.md, "Runners that cannot start").
//!
//! The rule is pure: everything it needs is in the observation. Each runner container carries
//! `fleet.start-failures`, the pool's run of start failures when it was made; an exited
//! container of the pool's current configuration that failed at start adds one to it. From
//! `START_FAILURES_BEFORE_BACKOFF` failures in a row the pool backs off: its failed container
//! stays (the record, and the operator's `docker logs`) and no runner is made, so no
//! registration is spent, until its exit is `backoff_delay` old. A runner seen busy, or one
//! that ended normally, ends the run; so does a change of the pool's configuration, since only
//! containers of the current configuration count.

use serde::{Deserialize, Serialize};

use crate::contract::labels;
use crate::observe::state::{ContainerState, ContainerStatus};

/// Start failures in a row from which a pool backs off.
pub const START_FAILURES_BEFORE_BACKOFF: u32 = 3;
/// A runner that exits after running this long (seconds) did start: its exit ends the run.
pub const START_WINDOW_SECS: i64 = 600;
/// The first delay, doubled with each further failure, up to `MAX_DELAY_SECS`.
pub const FIRST_DELAY_SECS: i64 = 30;
pub const MAX_DELAY_SECS: i64 = 900;

/// What one container says about its pool's run of start failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took a job (busy now), or ended normally, or ran past the start window.
    Started,
    /// It exited with a failure code within the start window.
    FailedAtStart,
    /// Still running and idle, stopped by a signal, or dead: it says nothing.
    Unknown,
}

/// Exit codes of a stop or a kill (SIGTERM, SIGKILL): fleet's own stops, the OOM killer.
const STOPPED: [i64; 2] = [137, 143];

/// What `c` says about its pool's start failures; `busy`: GitHub says its runner is busy.
pub fn outcome(c: &ContainerState, busy: bool) -> Outcome {
    if busy {
        return Outcome::Started;
    }
    if c.status != ContainerStatus::Exited {
        return Outcome::Unknown;
    }
    let ran = c.finished.map(|f| f - c.created);
    match c.exit_code {
        Some(0) => Outcome::Started,
        Some(code) if STOPPED.contains(&code) => Outcome::Unknown,
        Some(_) if ran.is_some_and(|secs| secs > START_WINDOW_SECS) => Outcome::Started,
        Some(_) => Outcome::FailedAtStart,
        None => Outcome::Unknown,
    }
}

/// The run of start failures recorded on a container when it was made.
pub fn recorded(c: &ContainerState) -> u32 {
    c.label(labels::START_FAILURES)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A pool's run of start failures, from its containers of the current configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run {
    pub failures: u32,
    /// When the last failed container exited (seconds since the epoch), and its code.
    pub last_exit: Option<i64>,
    pub last_code: Option<i64>,
}

/// The run of `containers` (the pool's, of its current configuration, with whether each one's
/// runner is busy).
pub fn run_of(containers: &[(&ContainerState, bool)]) -> Run {
    let outcomes: Vec<Outcome> = containers.iter().map(|(c, b)| outcome(c, *b)).collect();
    if outcomes.contains(&Outcome::Started) {
        return Run::default();
    }
    let mut run = Run {
        failures: containers
            .iter()
            .map(|(c, _)| recorded(c))
            .max()
            .unwrap_or(0),
        ..Run::default()
    };
    for ((c, _), o) in containers.iter().zip(&outcomes) {
        if *o != Outcome::FailedAtStart {
            continue;
        }
        run.failures = run.failures.saturating_add(1);
        let exit = c.finished.unwrap_or(c.created);
        if run.last_exit.is_none_or(|last| exit >= last) {
            run.last_exit = Some(exit);
            run.last_code = c.exit_code;
        }
    }
    run
}

/// How long a pool with `failures` start failures in a row waits after the last one before it
/// makes another runner; `None` below the threshold.
pub fn backoff_delay(failures: u32) -> Option<i64> {
    let over = failures.checked_sub(START_FAILURES_BEFORE_BACKOFF)?;
    let factor = 1i64.checked_shl(over.min(20)).unwrap_or(i64::MAX);
    Some(FIRST_DELAY_SECS.saturating_mul(factor).min(MAX_DELAY_SECS))
}

/// A pool that backs off, as the plan says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolBackoff {
    pub pool: String,
    /// Runners that exited without taking a job, in a row.
    pub failures: u32,
    /// The last one's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i64>,
    /// The delay after the last failure (seconds), and what is left of it.
    pub delay_secs: i64,
    pub retry_in_secs: i64,
}

impl PoolBackoff {
    /// One line for the plan and `status`.
    pub fn line(&self) -> String {
        let code = self
            .last_exit_code
            .map(|c| {
                let meaning = crate::contract::container::exit_meaning(c)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                format!(", the last with code {c}{meaning}")
            })
            .unwrap_or_default();
        format!(
            "pool `{}`: {} runners in a row exited without taking a job{code}; no new runner (and no registration) for {} s more (backing off {} s)",
            self.pool, self.failures, self.retry_in_secs, self.delay_secs
        )
    }
}

/// Whether a pool with `run` backs off at `now` (seconds since the epoch; `None`: not known,
/// taken as the moment of the last failure), and for how long.
pub fn backoff(pool: &str, run: &Run, now: Option<i64>) -> Option<PoolBackoff> {
    let delay = backoff_delay(run.failures)?;
    let last = run.last_exit?;
    let left = last.saturating_add(delay) - now.unwrap_or(last);
    (left > 0).then(|| PoolBackoff {
        pool: pool.to_string(),
        failures: run.failures,
        last_exit_code: run.last_code,
        delay_secs: delay,
        retry_in_secs: left,
    })
}

/// A pool's run of start failures and its backoff, as `status` and the metrics show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStartFailures {
    pub pool: String,
    pub failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<PoolBackoff>,
}

/// The run of start failures of every ephemeral pool of `spec` on its observed hosts, by the
/// same rule as the plan's.
pub fn start_failures(
    spec: &crate::spec::Spec,
    observed: &crate::observe::state::Observed,
) -> Vec<PoolStartFailures> {
    let fleet = spec.name.as_str();
    let recorded = observed.recorded_scale_sets();
    let busy = |name: &str| {
        observed.github.runners.iter().any(|r| {
            r.name == name
                && r.busy
                && crate::contract::registration_owned_with(r, fleet, &recorded)
        })
    };
    let mut out = Vec::new();
    for pool in spec.resolved_pools().iter().filter(|p| p.ephemeral) {
        let hash = crate::contract::RunnerConfig::for_pool(fleet, pool).hash();
        let current: Vec<(&ContainerState, bool)> = pool
            .hosts
            .iter()
            .filter_map(|h| observed.hosts.get(h))
            .flat_map(|h| &h.containers)
            .filter(|c| crate::contract::container_owned(c, fleet))
            .filter(|c| c.label(labels::POOL) == Some(pool.name.as_str()))
            .filter(|c| c.label(labels::CONFIG_HASH) == Some(hash.as_str()))
            .map(|c| (c, !c.status.is_finished() && busy(&c.name)))
            .collect();
        let run = run_of(&current);
        out.push(PoolStartFailures {
            pool: pool.name.clone(),
            failures: run.failures,
            backoff: backoff(&pool.name, &run, observed.now),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn container(
        status: ContainerStatus,
        code: Option<i64>,
        ran: i64,
        recorded: u32,
    ) -> ContainerState {
        let mut labels = BTreeMap::new();
        if recorded > 0 {
            labels.insert(labels::START_FAILURES.to_string(), recorded.to_string());
        }
        ContainerState {
            id: "id".into(),
            name: "zq-cpu-aaaaaa".into(),
            labels,
            status,
            exit_code: code,
            created: 1000,
            finished: (status == ContainerStatus::Exited).then_some(1000 + ran),
        }
    }

    #[test]
    fn outcome_table() {
        use ContainerStatus::*;
        let cases = [
            (Exited, Some(0), 5, false, Outcome::Started, "a job done"),
            (
                Exited,
                Some(1),
                5,
                false,
                Outcome::FailedAtStart,
                "refused credentials",
            ),
            (
                Exited,
                Some(5),
                5,
                false,
                Outcome::FailedAtStart,
                "session conflict",
            ),
            (
                Exited,
                Some(7),
                5,
                false,
                Outcome::FailedAtStart,
                "deprecated version",
            ),
            (
                Exited,
                Some(78),
                5,
                false,
                Outcome::FailedAtStart,
                "not set up",
            ),
            (
                Exited,
                Some(75),
                5,
                false,
                Outcome::FailedAtStart,
                "nothing to register with",
            ),
            (
                Exited,
                Some(1),
                601,
                false,
                Outcome::Started,
                "ran past the window",
            ),
            (Exited, Some(137), 5, false, Outcome::Unknown, "killed"),
            (Exited, Some(143), 5, false, Outcome::Unknown, "stopped"),
            (Exited, None, 5, false, Outcome::Unknown, "no code"),
            (Dead, Some(1), 5, false, Outcome::Unknown, "dead"),
            (Running, None, 0, false, Outcome::Unknown, "idle"),
            (Running, None, 0, true, Outcome::Started, "busy"),
        ];
        for (status, code, ran, busy, want, what) in cases {
            let c = container(status, code, ran, 0);
            assert_eq!(outcome(&c, busy), want, "{what}");
        }
    }

    #[test]
    fn run_table() {
        use ContainerStatus::*;
        let failed = |recorded| (container(Exited, Some(1), 5, recorded), false);
        let idle = |recorded| (container(Running, None, 0, recorded), false);
        let busy = |recorded| (container(Running, None, 0, recorded), true);
        let done = (container(Exited, Some(0), 5, 4), false);
        type Case = (Vec<(ContainerState, bool)>, u32, &'static str);
        let cases: Vec<Case> = vec![
            (vec![], 0, "no container"),
            (vec![failed(0)], 1, "a first failure"),
            (vec![failed(2)], 3, "the third in a row"),
            (vec![failed(0), failed(0)], 2, "two at once"),
            (
                vec![failed(3), idle(3)],
                4,
                "an idle runner of the same run",
            ),
            (vec![idle(5)], 5, "an idle runner carries its run"),
            (vec![failed(5), busy(5)], 0, "a runner took a job"),
            (vec![failed(5), done.clone()], 0, "a runner ended normally"),
        ];
        for (containers, want, what) in cases {
            let refs: Vec<(&ContainerState, bool)> =
                containers.iter().map(|(c, b)| (c, *b)).collect();
            assert_eq!(run_of(&refs).failures, want, "{what}");
        }
    }

    #[test]
    fn delay_grows_to_a_cap_from_the_threshold() {
        let delays: Vec<Option<i64>> = (0..=10).map(backoff_delay).collect();
        assert_eq!(
            delays,
            [
                None,
                None,
                None,
                Some(30),
                Some(60),
                Some(120),
                Some(240),
                Some(480),
                Some(900),
                Some(900),
                Some(900)
            ]
        );
        assert_eq!(backoff_delay(u32::MAX), Some(900));
    }

    #[test]
    fn backoff_ends_when_the_delay_has_passed() {
        let run = Run {
            failures: 4,
            last_exit: Some(1000),
            last_code: Some(1),
        };
        let b = backoff("cpu", &run, Some(1010)).expect("backing off");
        assert_eq!((b.delay_secs, b.retry_in_secs), (60, 50));
        assert!(b.line().contains("4 runners in a row"), "{}", b.line());
        assert!(backoff("cpu", &run, Some(1060)).is_none());
        // Unknown time: the whole delay is left.
        assert_eq!(
            backoff("cpu", &run, None).map(|b| b.retry_in_secs),
            Some(60)
        );
        let below = Run { failures: 2, ..run };
        assert!(backoff("cpu", &below, Some(1000)).is_none());
    }
}
