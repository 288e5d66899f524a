//! Which job each busy runner of a fixed pool runs, for history and the status page. A busy
//! runner whose job is not known is looked up in the repository's in-progress workflow runs,
//! whose jobs name the runner that took them (`runner_name`). Within a request budget
//! (docs/benchmarks.md, "Fixed pools' jobs"): nothing is read while every busy runner's job is
//! known; a look-up sends the runs list and the jobs of at most `MAX_REQUESTS - 1` runs, each
//! run's jobs read once for the runners that turned busy before (cached by run); it runs in
//! its own task, so a reconcile never waits for it. Organization-scoped fleets are not looked
//! up (their runs are spread over every repository).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::github::{GithubClient, GithubError, WorkflowJob, WorkflowRun};
use crate::history::{Event, JobRecord, JobSource, Recorder, epoch, now};
use crate::status::{FleetStatus, RunnerJob, RunnerState};

/// The most requests one look-up sends: the runs list, then the jobs of up to 3 runs. The
/// runs it does not reach are read by the next look-up (the next reconcile).
pub const MAX_REQUESTS: usize = 4;
/// A run's jobs read longer ago than this are read again for a runner still unmatched (its
/// job may have been given its runner after the read).
const REREAD_AFTER: f64 = 60.0;
/// A runner busy this long with no job found is not looked up any more (until its next job).
const GIVE_UP_AFTER: f64 = 600.0;

/// The matches, shared by the watch loop and the look-up task.
#[derive(Clone, Default)]
pub struct FixedJobs {
    matches: Arc<Mutex<Matches>>,
    /// A look-up is under way: no second one starts.
    looking: Arc<AtomicBool>,
}

#[derive(Default)]
struct Matches {
    /// The job of each busy runner, by runner name.
    current: BTreeMap<String, Matched>,
    /// Busy runners whose job is not known: their pool, and since when they are seen busy.
    unknown: BTreeMap<String, Waiting>,
    /// The jobs of in-progress runs, as last read, by run id.
    runs: BTreeMap<u64, RunJobs>,
}

struct Waiting {
    pool: String,
    since: f64,
}

struct RunJobs {
    run: WorkflowRun,
    jobs: Vec<WorkflowJob>,
    /// When the request was sent: it shows every job that had its runner by then.
    read_at: f64,
}

#[derive(Clone)]
struct Matched {
    record: JobRecord,
    shown: RunnerJob,
}

impl FixedJobs {
    /// After a reconcile: records the jobs of runners no longer busy as finished, shows each
    /// busy runner's known job in `status` (`pools[].runners[].job`), and starts a
    /// look-up when a busy runner's job is not known.
    pub fn observed(&self, status: &mut FleetStatus, github: &GithubClient, history: &Recorder) {
        let Some(repository) = github.repository() else {
            return;
        };
        let busy = busy_fixed_runners(status);
        let at = now();
        let look = {
            let mut matches = self.lock();
            matches.update(&busy, at, history);
            matches.match_cached(&repository, history);
            matches.show(status);
            matches.wanted(at)
        };
        if look && !self.looking.swap(true, Ordering::SeqCst) {
            let this = self.clone();
            let (github, history) = (github.clone(), history.clone());
            tokio::spawn(async move {
                if let Err(e) = this.look_up(&github, &repository, &history).await {
                    tracing::debug!("the jobs of {repository}'s busy runners: {e}");
                }
                this.looking.store(false, Ordering::SeqCst);
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Matches> {
        self.matches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the in-progress runs, then the jobs of the runs not read since the unmatched
    /// runners turned busy (newest first), until every runner is matched or the budget is
    /// spent.
    async fn look_up(
        &self,
        github: &GithubClient,
        repository: &str,
        history: &Recorder,
    ) -> Result<(), GithubError> {
        let runs = github.in_progress_runs().await?;
        let to_read = self.lock().runs_to_read(runs, now());
        for run in to_read.into_iter().take(MAX_REQUESTS - 1) {
            let read_at = now();
            let jobs = github.run_jobs(run.id).await?;
            let mut matches = self.lock();
            matches.runs.insert(run.id, RunJobs { run, jobs, read_at });
            matches.match_cached(repository, history);
            if !matches.wanted(now()) {
                break;
            }
        }
        Ok(())
    }
}

impl Matches {
    /// Ends the jobs of runners no longer busy, and notes the runners newly busy.
    fn update(&mut self, busy: &BTreeMap<String, String>, at: f64, history: &Recorder) {
        let ended: Vec<String> = self
            .current
            .keys()
            .filter(|name| !busy.contains_key(*name))
            .cloned()
            .collect();
        for name in ended {
            if let Some(matched) = self.current.remove(&name) {
                history.send(Event::Job(JobRecord {
                    finished: Some(at),
                    ..matched.record
                }));
            }
        }
        self.unknown.retain(|name, _| busy.contains_key(name));
        for (name, pool) in busy {
            if !self.current.contains_key(name) {
                self.unknown.entry(name.clone()).or_insert(Waiting {
                    pool: pool.clone(),
                    since: at,
                });
            }
        }
    }

    /// Whether a runner's job is still to be looked up.
    fn wanted(&self, at: f64) -> bool {
        self.unknown.values().any(|w| at - w.since < GIVE_UP_AFTER)
    }

    /// Forgets the runs no longer in progress; returns those whose jobs are to be read: not
    /// read since the first unmatched runner turned busy, or read a while ago.
    fn runs_to_read(&mut self, runs: Vec<WorkflowRun>, at: f64) -> Vec<WorkflowRun> {
        let in_progress: std::collections::BTreeSet<u64> = runs.iter().map(|r| r.id).collect();
        self.runs.retain(|id, _| in_progress.contains(id));
        let Some(oldest) = self
            .unknown
            .values()
            .filter(|w| at - w.since < GIVE_UP_AFTER)
            .map(|w| w.since)
            .reduce(f64::min)
        else {
            return Vec::new();
        };
        runs.into_iter()
            .filter(|run| {
                self.runs
                    .get(&run.id)
                    .is_none_or(|read| read.read_at < oldest || at - read.read_at > REREAD_AFTER)
            })
            .collect()
    }

    /// Matches unmatched runners with the jobs of runs read after they turned busy; records
    /// each match.
    fn match_cached(&mut self, repository: &str, history: &Recorder) {
        let mut found = Vec::new();
        for (name, waiting) in &self.unknown {
            let job = self
                .runs
                .values()
                .filter(|read| read.read_at >= waiting.since)
                .find_map(|read| {
                    read.jobs
                        .iter()
                        .find(|j| {
                            j.runner_name.as_deref() == Some(name.as_str())
                                && j.status.as_deref() != Some("completed")
                        })
                        .map(|j| (&read.run, j))
                });
            if let Some((run, job)) = job {
                found.push((
                    name.clone(),
                    matched(repository, &waiting.pool, run, job, waiting.since),
                ));
            }
        }
        for (name, m) in found {
            self.unknown.remove(&name);
            history.send(Event::Job(m.record.clone()));
            self.current.insert(name, m);
        }
    }

    fn show(&self, status: &mut FleetStatus) {
        for runner in status.pools.iter_mut().flat_map(|p| p.runners.iter_mut()) {
            if let Some(m) = self.current.get(&runner.name) {
                runner.job = Some(m.shown.clone());
            }
        }
    }
}

/// The busy runners of the fixed pools (not autoscaled), with their pool.
fn busy_fixed_runners(status: &FleetStatus) -> BTreeMap<String, String> {
    let autoscaled: Vec<&str> = status.autoscale.iter().map(|a| a.pool.as_str()).collect();
    status
        .pools
        .iter()
        .filter(|p| !autoscaled.contains(&p.name.as_str()))
        .flat_map(|p| {
            p.runners
                .iter()
                .filter(|r| r.state == RunnerState::Busy)
                .map(|r| (r.name.clone(), p.name.clone()))
        })
        .collect()
}

/// The record and the status page's view of `job` of `run`, run by a runner of `pool` seen
/// busy since `since`.
fn matched(
    repository: &str,
    pool: &str,
    run: &WorkflowRun,
    job: &WorkflowJob,
    since: f64,
) -> Matched {
    let started = job
        .started_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .map(epoch)
        .unwrap_or(since);
    let record = JobRecord {
        job_id: format!("github-job-{}", job.id),
        pool: pool.to_string(),
        repository: Some(repository.to_string()),
        workflow_ref: workflow_ref(repository, run),
        job_name: Some(job.name.clone()),
        run_id: Some(run.id),
        runner: job.runner_name.clone(),
        started: Some(started),
        source: JobSource::Runs,
        ..JobRecord::default()
    };
    let workflow = job
        .workflow_name
        .clone()
        .or_else(|| run.name.clone())
        .or_else(|| run.path.clone())
        .unwrap_or_default();
    let shown = RunnerJob {
        repository: repository.to_string(),
        workflow,
        job_name: job.name.clone(),
        run_id: Some(run.id),
        started_at: job.started_at.as_deref().and_then(epoch_seconds),
        url: job.html_url.clone(),
    };
    Matched { record, shown }
}

/// Seconds since the epoch of GitHub's RFC 3339 time (`None`: not one).
fn epoch_seconds(rfc3339: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_secs()).ok()
}

/// `owner/repo/.github/workflows/ci.yml@refs/heads/main`, as the scale set's messages name a
/// workflow (so the report's top workflows read the same for both kinds of pools).
fn workflow_ref(repository: &str, run: &WorkflowRun) -> Option<String> {
    let path = run.path.as_deref().filter(|p| !p.is_empty())?;
    Some(match (path.contains('@'), run.head_branch.as_deref()) {
        (false, Some(branch)) => format!("{repository}/{path}@refs/heads/{branch}"),
        _ => format!("{repository}/{path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: u64) -> WorkflowRun {
        WorkflowRun {
            id,
            name: Some("CI".into()),
            path: Some(".github/workflows/ci.yml".into()),
            head_branch: Some("main".into()),
            status: Some("in_progress".into()),
            created_at: None,
        }
    }

    fn job(id: u64, run_id: u64, runner: &str) -> WorkflowJob {
        WorkflowJob {
            id,
            run_id,
            name: "test".into(),
            status: Some("in_progress".into()),
            conclusion: None,
            started_at: Some("2026-12-01T10:00:00Z".into()),
            completed_at: None,
            runner_name: Some(runner.into()),
            workflow_name: Some("CI".into()),
            html_url: None,
        }
    }

    fn busy(names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| (n.to_string(), "gpu".to_string()))
            .collect()
    }

    #[test]
    fn a_run_read_before_the_runner_turned_busy_is_read_again_and_then_matches() {
        let history = Recorder::off();
        let mut m = Matches::default();
        m.runs.insert(
            7,
            RunJobs {
                run: run(7),
                jobs: vec![],
                read_at: 50.0,
            },
        );
        m.update(&busy(&["r1"]), 100.0, &history);
        // Read at 50, before r1 turned busy at 100: read again.
        assert_eq!(m.runs_to_read(vec![run(7), run(8)], 101.0).len(), 2);
        m.runs.insert(
            7,
            RunJobs {
                run: run(7),
                jobs: vec![job(70, 7, "r1")],
                read_at: 101.0,
            },
        );
        m.match_cached("zq/app", &history);
        let matched = &m.current["r1"];
        assert_eq!(matched.record.run_id, Some(7));
        assert_eq!(
            matched.record.workflow_ref.as_deref(),
            Some("zq/app/.github/workflows/ci.yml@refs/heads/main")
        );
        assert_eq!(matched.record.source, JobSource::Runs);
        assert!(!m.wanted(102.0));
        // Read since r1 turned busy: no request while nobody else waits.
        assert!(m.runs_to_read(vec![run(7)], 102.0).is_empty());
    }

    #[test]
    fn a_finished_job_ends_when_its_runner_is_no_longer_busy_and_runs_gone_are_forgotten() {
        let history = Recorder::off();
        let mut m = Matches::default();
        m.update(&busy(&["r1"]), 100.0, &history);
        m.runs.insert(
            7,
            RunJobs {
                run: run(7),
                jobs: vec![job(70, 7, "r1")],
                read_at: 100.0,
            },
        );
        m.match_cached("zq/app", &history);
        assert!(m.current.contains_key("r1"));
        m.update(&busy(&[]), 200.0, &history);
        assert!(m.current.is_empty() && m.unknown.is_empty());
        m.update(&busy(&["r2"]), 300.0, &history);
        assert!(m.runs_to_read(vec![], 301.0).is_empty());
        assert!(m.runs.is_empty(), "run 7 is no longer in progress");
        // r2 given up on after 10 minutes: no more requests.
        assert!(m.wanted(301.0));
        assert!(!m.wanted(300.0 + GIVE_UP_AFTER + 1.0));
    }
}
