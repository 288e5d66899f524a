//! The listener's bookkeeping, without the network: which messages were handled already, which
//! jobs are assigned to the scale set and which runners are busy, how many runners to want, and
//! the capacity to tell GitHub. The loop that polls and acts lives with the executor; everything
//! here is data in, data out, so it is tested without a server.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::message::{JobInfo, JobMessage, ScaleSetMessage};
use super::types::Statistics;

/// How many handled message ids are remembered to recognise a message the queue sends again.
const REMEMBERED_MESSAGES: usize = 1024;

/// A job the scale set holds: assigned, and perhaps started on a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedJob {
    pub job_id: String,
    /// The attempt the job is assigned under; a reassigned job gets a new one.
    pub request_id: u64,
    /// The runner that took it, once started.
    pub runner: Option<String>,
    /// What the latest message about it said (repository, workflow, name, run).
    pub info: JobInfo,
}

impl TrackedJob {
    fn new(job: &JobInfo) -> TrackedJob {
        TrackedJob {
            job_id: job.job_id.clone(),
            request_id: job.runner_request_id,
            runner: None,
            info: job.clone(),
        }
    }
}

/// What one message asks of the listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The message was handled before (the queue sent it again because its acknowledgement was
    /// lost): acknowledge it again and do nothing else.
    pub duplicate: bool,
    /// Job requests to acquire (`acquire_jobs`), without repeats.
    pub to_acquire: Vec<u64>,
    /// Runners that took a job: they are busy and must not be stopped.
    pub started: Vec<String>,
    /// Runners whose job finished: an ephemeral runner leaves on its own.
    pub finished: Vec<String>,
}

/// The scale set as its messages describe it.
#[derive(Debug, Clone, Default)]
pub struct JobTracker {
    handled: BTreeSet<u64>,
    handled_order: VecDeque<u64>,
    last_message_id: Option<u64>,
    statistics: Option<Statistics>,
    /// Assigned jobs by job id: a job offered again after a cancelled assignment is one job.
    jobs: BTreeMap<String, TrackedJob>,
    /// Job requests asked for already, so a repeated `JobAvailable` is not acquired twice.
    acquiring: BTreeSet<u64>,
}

impl JobTracker {
    pub fn new() -> JobTracker {
        JobTracker::default()
    }

    /// Takes the statistics a new session starts with. A session numbers its messages on its
    /// own, as actions/scaleset's listener assumes (it starts each session from message 0):
    /// the ids of an earlier session's messages say nothing about this one's.
    pub fn start_session(&mut self, statistics: Statistics) {
        self.statistics = Some(statistics);
        self.last_message_id = None;
        self.handled.clear();
        self.handled_order.clear();
    }

    /// The message could not be handled (acquiring its jobs failed): it is not acknowledged,
    /// so the service sends it again, and then it is handled anew and its jobs acquired.
    pub fn handle_again(&mut self, message_id: u64, requests: &[u64]) {
        self.handled.remove(&message_id);
        self.handled_order.retain(|id| *id != message_id);
        for request in requests {
            self.acquiring.remove(request);
        }
    }

    /// Takes in one message: returns what to do about it.
    pub fn observe(&mut self, message: &ScaleSetMessage) -> Observation {
        if self.handled.contains(&message.id) {
            return Observation {
                duplicate: true,
                ..Observation::default()
            };
        }
        self.remember(message.id);
        if let Some(statistics) = message.statistics {
            self.statistics = Some(statistics);
        }
        let mut observation = Observation::default();
        for job in &message.jobs {
            self.apply(job, &mut observation);
        }
        observation
    }

    fn remember(&mut self, id: u64) {
        self.handled.insert(id);
        self.handled_order.push_back(id);
        if self.handled_order.len() > REMEMBERED_MESSAGES
            && let Some(oldest) = self.handled_order.pop_front()
        {
            self.handled.remove(&oldest);
        }
        self.last_message_id = Some(self.last_message_id.map_or(id, |last| last.max(id)));
    }

    fn apply(&mut self, message: &JobMessage, observation: &mut Observation) {
        let job = message.job();
        match message {
            JobMessage::Available(_) => {
                if self.acquiring.insert(job.runner_request_id) {
                    observation.to_acquire.push(job.runner_request_id);
                }
            }
            JobMessage::Assigned(_) => {
                self.acquiring.remove(&job.runner_request_id);
                let tracked = self
                    .jobs
                    .entry(job.job_id.clone())
                    .or_insert_with(|| TrackedJob::new(job));
                // A reassignment arrives under a new request id: the job is the same one.
                tracked.request_id = job.runner_request_id;
                tracked.info = job.clone();
            }
            JobMessage::Started { runner_name, .. } => {
                let tracked = self
                    .jobs
                    .entry(job.job_id.clone())
                    .or_insert_with(|| TrackedJob::new(job));
                tracked.request_id = job.runner_request_id;
                tracked.runner = Some(runner_name.clone());
                tracked.info = job.clone();
                observation.started.push(runner_name.clone());
            }
            JobMessage::Completed { runner_name, .. } => {
                self.acquiring.remove(&job.runner_request_id);
                // A completion of an earlier attempt (cancelled before the job was offered
                // again) must not drop the current assignment.
                let current = self
                    .jobs
                    .get(&job.job_id)
                    .is_some_and(|t| t.request_id == job.runner_request_id);
                if current {
                    self.jobs.remove(&job.job_id);
                }
                if !runner_name.is_empty() {
                    observation.finished.push(runner_name.clone());
                }
            }
        }
    }

    /// The id to send as `lastMessageId` on the next poll.
    pub fn last_message_id(&self) -> Option<u64> {
        self.last_message_id
    }

    /// The latest statistics the service sent.
    pub fn statistics(&self) -> Option<Statistics> {
        self.statistics
    }

    /// Jobs assigned to the scale set, waiting or running: the service's count when it sent
    /// one (it is authoritative: a batch holds at most 50 events), else the jobs tracked.
    pub fn assigned_jobs(&self) -> u32 {
        match self.statistics {
            Some(statistics) => statistics.total_assigned_jobs,
            None => u32::try_from(self.jobs.len()).unwrap_or(u32::MAX),
        }
    }

    /// The assigned jobs the messages told of, by job id.
    pub fn jobs(&self) -> impl Iterator<Item = &TrackedJob> {
        self.jobs.values()
    }

    /// Runners running a job, by name.
    pub fn busy_runners(&self) -> BTreeSet<String> {
        self.jobs
            .values()
            .filter_map(|j| j.runner.clone())
            .collect()
    }

    /// The jobs running now, by the name of the runner that took each.
    pub fn running_jobs(&self) -> BTreeMap<String, JobInfo> {
        self.jobs
            .values()
            .filter_map(|j| Some((j.runner.clone()?, j.info.clone())))
            .collect()
    }

    pub fn is_runner_busy(&self, name: &str) -> bool {
        self.jobs
            .values()
            .any(|j| j.runner.as_deref() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaleset::message::JobInfo;

    fn info(job_id: &str, request_id: u64) -> JobInfo {
        JobInfo {
            job_id: job_id.into(),
            runner_request_id: request_id,
            ..JobInfo::default()
        }
    }

    fn message(id: u64, assigned: u32, jobs: Vec<JobMessage>) -> ScaleSetMessage {
        ScaleSetMessage {
            id,
            statistics: Some(Statistics {
                total_assigned_jobs: assigned,
                ..Statistics::default()
            }),
            jobs,
            skipped: Vec::new(),
        }
    }

    fn started(job: &str, request: u64, runner: &str) -> JobMessage {
        JobMessage::Started {
            job: info(job, request),
            runner_id: 1,
            runner_name: runner.into(),
        }
    }

    fn completed(job: &str, request: u64, result: &str, runner: &str) -> JobMessage {
        JobMessage::Completed {
            job: info(job, request),
            result: result.into(),
            runner_id: 1,
            runner_name: runner.into(),
        }
    }

    #[test]
    fn a_redelivered_message_is_only_acknowledged_again() {
        let mut tracker = JobTracker::new();
        let first = message(5, 1, vec![JobMessage::Available(info("a", 10))]);
        let seen = tracker.observe(&first);
        assert!(!seen.duplicate);
        assert_eq!(seen.to_acquire, [10]);
        let again = tracker.observe(&first);
        assert!(again.duplicate);
        assert!(again.to_acquire.is_empty());
        assert_eq!(tracker.last_message_id(), Some(5));
    }

    #[test]
    fn a_job_offered_twice_is_acquired_once() {
        let mut tracker = JobTracker::new();
        let seen = tracker.observe(&message(
            1,
            0,
            vec![
                JobMessage::Available(info("a", 10)),
                JobMessage::Available(info("a", 10)),
                JobMessage::Available(info("b", 11)),
            ],
        ));
        assert_eq!(seen.to_acquire, [10, 11]);
        let later = tracker.observe(&message(2, 0, vec![JobMessage::Available(info("a", 10))]));
        assert!(later.to_acquire.is_empty());
    }

    #[test]
    fn a_reassigned_job_counts_once_and_survives_its_stale_cancellation() {
        let mut tracker = JobTracker::new();
        tracker.observe(&message(1, 1, vec![JobMessage::Assigned(info("a", 10))]));
        // GitHub cancels the first assignment and assigns the job again under a new request.
        let seen = tracker.observe(&message(
            2,
            1,
            vec![
                completed("a", 10, "canceled", ""),
                JobMessage::Assigned(info("a", 11)),
            ],
        ));
        assert!(seen.finished.is_empty(), "no runner had it");
        assert_eq!(tracker.jobs().count(), 1);
        assert_eq!(tracker.jobs().next().map(|j| j.request_id), Some(11));
        // The same events in the other order: the old attempt's completion comes last.
        let mut other = JobTracker::new();
        other.observe(&message(
            1,
            1,
            vec![
                JobMessage::Assigned(info("a", 10)),
                JobMessage::Assigned(info("a", 11)),
                completed("a", 10, "canceled", ""),
            ],
        ));
        assert_eq!(other.jobs().map(|j| j.request_id).collect::<Vec<_>>(), [11]);
    }

    #[test]
    fn runners_are_busy_from_start_to_completion() {
        let mut tracker = JobTracker::new();
        tracker.observe(&message(
            1,
            2,
            vec![
                JobMessage::Assigned(info("a", 10)),
                JobMessage::Assigned(info("b", 11)),
            ],
        ));
        let seen = tracker.observe(&message(2, 2, vec![started("a", 10, "zq-gpu-1")]));
        assert_eq!(seen.started, ["zq-gpu-1"]);
        assert!(tracker.is_runner_busy("zq-gpu-1"));
        assert!(!tracker.is_runner_busy("zq-gpu-2"));
        let seen = tracker.observe(&message(
            3,
            1,
            vec![completed("a", 10, "succeeded", "zq-gpu-1")],
        ));
        assert_eq!(seen.finished, ["zq-gpu-1"]);
        assert!(tracker.busy_runners().is_empty());
        assert_eq!(
            tracker
                .jobs()
                .map(|j| j.job_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn assigned_jobs_come_from_the_statistics_when_there_are_some() {
        let mut tracker = JobTracker::new();
        assert_eq!(tracker.assigned_jobs(), 0);
        tracker.observe(&ScaleSetMessage {
            id: 1,
            statistics: None,
            jobs: vec![JobMessage::Assigned(info("a", 1))],
            skipped: Vec::new(),
        });
        assert_eq!(
            tracker.assigned_jobs(),
            1,
            "tracked jobs without statistics"
        );
        // More jobs are assigned than one batch told of: the service's count wins.
        tracker.observe(&message(2, 7, Vec::new()));
        assert_eq!(tracker.assigned_jobs(), 7);
        tracker.start_session(Statistics {
            total_assigned_jobs: 3,
            ..Statistics::default()
        });
        assert_eq!(tracker.assigned_jobs(), 3);
    }

    #[test]
    fn a_new_session_numbers_its_messages_anew() {
        let mut tracker = JobTracker::new();
        tracker.observe(&message(1, 1, vec![JobMessage::Available(info("a", 10))]));
        tracker.start_session(Statistics::default());
        assert_eq!(tracker.last_message_id(), None, "polled from the start");
        let seen = tracker.observe(&message(1, 1, vec![JobMessage::Assigned(info("b", 11))]));
        assert!(!seen.duplicate, "message 1 of the new session is new");
    }

    #[test]
    fn a_message_whose_acquisition_failed_is_handled_again() {
        let mut tracker = JobTracker::new();
        let offer = message(3, 0, vec![JobMessage::Available(info("a", 10))]);
        assert_eq!(tracker.observe(&offer).to_acquire, [10]);
        tracker.handle_again(3, &[10]);
        let again = tracker.observe(&offer);
        assert!(!again.duplicate);
        assert_eq!(again.to_acquire, [10], "acquired again, not lost");
    }

    #[test]
    fn forgets_only_the_oldest_of_many_messages() {
        let mut tracker = JobTracker::new();
        for id in 1..=(REMEMBERED_MESSAGES as u64 + 1) {
            tracker.observe(&message(id, 0, Vec::new()));
        }
        assert!(tracker.observe(&message(2, 0, Vec::new())).duplicate);
        assert!(!tracker.observe(&message(1, 0, Vec::new())).duplicate);
    }
}
