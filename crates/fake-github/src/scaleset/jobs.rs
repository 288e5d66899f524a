//! Jobs and the message queue: queued jobs reach scale sets (assigned, or offered and
//! acquired) within the capacity their listener advertised; runners take them and finish them;
//! each step becomes a job message in the scale set's queue, delivered with fresh statistics
//! and delivered again until acknowledged.

use std::time::Instant;

use http::StatusCode;
use serde_json::{Value, json};

use super::world::{QueuedMessage, ScaleSet, ServiceError};
use super::{JobDelivery, JobInfo, JobState, QueueJobs, ScaleSetStatistics};
use crate::state::State;
use crate::{NewRunner, Scope, util};

/// At most this many job messages go in one queue message, as on GitHub.
const BATCH: usize = 50;
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub job_id: String,
    pub request_id: u64,
    pub scope: Scope,
    pub labels: Vec<String>,
    pub state: JobState,
    pub scale_set_id: Option<u64>,
    pub runner: Option<(u64, String)>,
    pub reassignments: u32,
    pub workflow_run_id: u64,
    pub queued_at: u64,
    pub assigned_at: Option<u64>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
}

impl Job {
    pub fn info(&self) -> JobInfo {
        JobInfo {
            job_id: self.job_id.clone(),
            request_id: self.request_id,
            scope: self.scope.to_string(),
            labels: self.labels.clone(),
            state: self.state.clone(),
            scale_set_id: self.scale_set_id,
            runner_name: self.runner.as_ref().map(|(_, name)| name.clone()),
            reassignments: self.reassignments,
        }
    }

    fn holds(&self, set: u64) -> bool {
        self.scale_set_id == Some(set)
            && matches!(self.state, JobState::Assigned | JobState::Running)
    }

    /// A job message of type `kind`, with the fields GitHub's carry.
    fn entry(&self, kind: &str) -> Value {
        let time = |t: Option<u64>| t.map_or_else(|| GO_ZERO_TIME.to_owned(), util::rfc3339);
        let (owner, repository) = match &self.scope {
            Scope::Repo { owner, repo } => (owner.clone(), repo.clone()),
            Scope::Org(org) => (org.clone(), "jobs".to_owned()),
        };
        let mut entry = json!({
            "messageType": kind,
            "runnerRequestId": self.request_id,
            "repositoryName": repository,
            "ownerName": owner,
            "jobId": self.job_id,
            "jobWorkflowRef": format!("{owner}/{repository}/.github/workflows/ci.yml@refs/heads/main"),
            "jobDisplayName": format!("job {}", self.job_id),
            "workflowRunId": self.workflow_run_id,
            "eventName": "push",
            "requestLabels": self.labels,
            "queueTime": time(Some(self.queued_at)),
            "scaleSetAssignTime": time(self.assigned_at),
            "runnerAssignTime": time(self.started_at),
            "finishTime": time(self.finished_at),
        });
        if let (Some(fields), Some((id, name))) = (entry.as_object_mut(), &self.runner) {
            fields.insert("runnerId".into(), json!(id));
            fields.insert("runnerName".into(), json!(name));
        }
        entry
    }
}

/// What a poll of the queue finds.
pub(crate) enum PollStep {
    /// A message to answer with.
    Deliver(Value),
    /// Nothing yet; look again at `until` (a redelivery falls due), or when woken.
    Wait { until: Option<Instant> },
    /// The session is gone (deleted, replaced, or its scale set deleted).
    Gone,
}

impl State {
    pub(crate) fn statistics(&self, set: &ScaleSet) -> ScaleSetStatistics {
        let count = |f: &dyn Fn(&Job) -> bool| {
            let n = self.scalesets.jobs.values().filter(|j| f(j)).count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        let runners: Vec<_> = self
            .runners(&set.scope)
            .into_iter()
            .filter(|r| r.scale_set_id == Some(set.id))
            .collect();
        let registered = u32::try_from(runners.len()).unwrap_or(u32::MAX);
        let busy = u32::try_from(runners.iter().filter(|r| r.busy).count()).unwrap_or(u32::MAX);
        ScaleSetStatistics {
            total_available_jobs: count(&|j| {
                j.state == JobState::Queued && set.matches(&j.scope, &j.labels)
            }),
            total_acquired_jobs: count(&|j| {
                j.scale_set_id == Some(set.id) && j.state == JobState::Assigned
            }),
            total_assigned_jobs: count(&|j| j.holds(set.id)),
            total_running_jobs: count(&|j| {
                j.scale_set_id == Some(set.id) && j.state == JobState::Running
            }),
            total_registered_runners: registered,
            total_busy_runners: busy,
            total_idle_runners: registered - busy,
        }
    }

    pub(crate) fn queue_jobs(&mut self, request: &QueueJobs) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..request.count {
            let seq = self.scalesets.next_job;
            self.scalesets.next_job += 1;
            let request_id = self.next_request_id();
            let job_id = util::uuid(&self.secret(32));
            self.scalesets.jobs.insert(
                seq,
                Job {
                    job_id: job_id.clone(),
                    request_id,
                    scope: request.scope.clone(),
                    labels: request.labels.clone(),
                    state: JobState::Queued,
                    scale_set_id: None,
                    runner: None,
                    reassignments: 0,
                    workflow_run_id: 9000 + seq,
                    queued_at: util::now_epoch(),
                    assigned_at: None,
                    started_at: None,
                    finished_at: None,
                },
            );
            ids.push(job_id);
        }
        self.dispatch();
        ids
    }

    /// `count` jobs asking for the labels of scale set `set`; `None` if there is no such set.
    pub(crate) fn queue_jobs_for_scale_set(
        &mut self,
        set: u64,
        count: usize,
    ) -> Option<Vec<String>> {
        let scale_set = self.scalesets.sets.get(&set)?;
        let request = QueueJobs {
            scope: scale_set.scope.clone(),
            labels: scale_set.labels.clone(),
            count,
        };
        Some(self.queue_jobs(&request))
    }

    fn next_request_id(&mut self) -> u64 {
        let id = self.scalesets.next_request_id;
        self.scalesets.next_request_id += 1;
        id
    }

    fn push_event(&mut self, set: u64, entry: Value) {
        if let Some(set) = self.scalesets.sets.get_mut(&set) {
            set.outbox.push(entry);
        }
    }

    /// Brings queued jobs to the scale sets that can take them: assigned within the advertised
    /// capacity (auto-assign), or offered once per attempt (acquire).
    pub(crate) fn dispatch(&mut self) {
        let sets: Vec<u64> = self.scalesets.sets.keys().copied().collect();
        for set in sets {
            match self.scalesets.config.delivery {
                JobDelivery::AutoAssign => {
                    while let Some(seq) = self.next_queued_for(set) {
                        if self.room(set) == 0 {
                            break;
                        }
                        self.assign(seq, set);
                    }
                }
                JobDelivery::Acquire => self.offer(set),
            }
        }
    }

    /// Jobs the scale set may still be assigned: its capacity less what it holds.
    fn room(&self, set: u64) -> u32 {
        let Some(capacity) = self.scalesets.sets.get(&set).and_then(|s| s.capacity) else {
            return 0;
        };
        let held = self
            .scalesets
            .jobs
            .values()
            .filter(|j| j.holds(set))
            .count();
        capacity.saturating_sub(u32::try_from(held).unwrap_or(u32::MAX))
    }

    fn next_queued_for(&self, set: u64) -> Option<u64> {
        let scale_set = self.scalesets.sets.get(&set)?;
        self.scalesets
            .jobs
            .iter()
            .find(|(_, j)| j.state == JobState::Queued && scale_set.matches(&j.scope, &j.labels))
            .map(|(seq, _)| *seq)
    }

    fn assign(&mut self, seq: u64, set: u64) {
        let Some(job) = self.scalesets.jobs.get_mut(&seq) else {
            return;
        };
        job.state = JobState::Assigned;
        job.scale_set_id = Some(set);
        job.assigned_at = Some(util::now_epoch());
        let entry = job.entry("JobAssigned");
        self.push_event(set, entry);
    }

    fn offer(&mut self, set: u64) {
        let Some(scale_set) = self.scalesets.sets.get(&set) else {
            return;
        };
        let offers: Vec<Value> = self
            .scalesets
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued && scale_set.matches(&j.scope, &j.labels))
            .filter(|j| !scale_set.offered.contains(&j.request_id))
            .map(|j| {
                let mut entry = j.entry("JobAvailable");
                if let Some(fields) = entry.as_object_mut() {
                    fields.insert(
                        "acquireJobUrl".into(),
                        json!(format!("acquirejobs/{}", j.request_id)),
                    );
                }
                entry
            })
            .collect();
        if let Some(scale_set) = self.scalesets.sets.get_mut(&set) {
            for entry in offers {
                if let Some(id) = entry.get("runnerRequestId").and_then(Value::as_u64) {
                    scale_set.offered.insert(id);
                }
                scale_set.outbox.push(entry);
            }
        }
    }

    /// `POST .../acquirejobs`: assigns those of `request_ids` still queued for this scale set,
    /// within its room; returns them.
    pub(crate) fn acquire(&mut self, set: u64, request_ids: &[u64]) -> Vec<u64> {
        let mut acquired = Vec::new();
        for id in request_ids {
            let Some(scale_set) = self.scalesets.sets.get(&set) else {
                break;
            };
            let found = self.scalesets.jobs.iter().find(|(_, j)| {
                j.request_id == *id
                    && j.state == JobState::Queued
                    && scale_set.matches(&j.scope, &j.labels)
            });
            let Some((seq, _)) = found.map(|(seq, j)| (*seq, j)) else {
                continue;
            };
            if self.room(set) == 0 {
                break;
            }
            self.assign(seq, set);
            acquired.push(*id);
        }
        acquired
    }

    /// One look at the queue of scale set `set` for session `session_id`.
    pub(crate) fn poll_step(
        &mut self,
        set: u64,
        session_id: &str,
        capacity: Option<u32>,
        now: Instant,
    ) -> PollStep {
        let redelivery = self.scalesets.config.redelivery;
        {
            let Some(scale_set) = self.scalesets.sets.get_mut(&set) else {
                return PollStep::Gone;
            };
            let Some(session) = scale_set.session.as_mut().filter(|s| s.id == session_id) else {
                return PollStep::Gone;
            };
            session.last_seen = now;
            if capacity.is_some() {
                scale_set.capacity = capacity;
            }
        }
        self.dispatch();
        let due = |m: &QueuedMessage| m.delivered_at.is_none_or(|at| at + redelivery <= now);
        let Some(scale_set) = self.scalesets.sets.get(&set) else {
            return PollStep::Gone;
        };
        let position = scale_set.queue.iter().position(due);
        let sealable = !scale_set.outbox.is_empty();
        let until = scale_set
            .queue
            .iter()
            .filter_map(|m| m.delivered_at.map(|at| at + redelivery))
            .min();
        match (position, sealable) {
            (Some(position), _) => self.deliver(set, position, now),
            (None, true) => {
                let position = self.seal_message(set);
                self.deliver(set, position, now)
            }
            (None, false) => PollStep::Wait { until },
        }
    }

    /// Puts up to `BATCH` outbox events in a new message; returns its queue position.
    fn seal_message(&mut self, set: u64) -> usize {
        let per_session = self.scalesets.config.message_ids_per_session;
        let Some(scale_set) = self.scalesets.sets.get_mut(&set) else {
            return 0;
        };
        let id = match scale_set.session.as_mut().filter(|_| per_session) {
            Some(session) => {
                session.next_message_id += 1;
                session.next_message_id - 1
            }
            None => {
                self.scalesets.next_message_id += 1;
                self.scalesets.next_message_id - 1
            }
        };
        let take = scale_set.outbox.len().min(BATCH);
        let events: Vec<Value> = scale_set.outbox.drain(..take).collect();
        scale_set.queue.push_back(QueuedMessage {
            id,
            body: Value::Array(events).to_string(),
            delivered_at: None,
        });
        scale_set.queue.len() - 1
    }

    fn deliver(&mut self, set: u64, position: usize, now: Instant) -> PollStep {
        let statistics = match self.scalesets.sets.get(&set) {
            Some(scale_set) => self.statistics(scale_set),
            None => return PollStep::Gone,
        };
        let Some(message) = self
            .scalesets
            .sets
            .get_mut(&set)
            .and_then(|s| s.queue.get_mut(position))
        else {
            return PollStep::Gone;
        };
        message.delivered_at = Some(now);
        PollStep::Deliver(json!({
            "messageId": message.id,
            "messageType": "RunnerScaleSetJobMessages",
            "body": message.body,
            "statistics": statistics,
        }))
    }

    /// `DELETE {queue}/{id}`: false when there is no such message.
    pub(crate) fn acknowledge(&mut self, set: u64, message_id: u64) -> bool {
        let Some(scale_set) = self.scalesets.sets.get_mut(&set) else {
            return false;
        };
        let before = scale_set.queue.len();
        scale_set.queue.retain(|m| m.id != message_id);
        scale_set.queue.len() < before
    }

    /// `POST .../generatejitconfig`: an ephemeral runner of the scale set, with its scale set's
    /// labels and group, and the config to start it.
    pub(crate) fn generate_scale_set_jit(
        &mut self,
        scope: &Scope,
        set: u64,
        name: &str,
        work_folder: &str,
    ) -> Result<Value, ServiceError> {
        let scale_set = self.scale_set(scope, set)?;
        let (labels, group) = (scale_set.labels.clone(), scale_set.group_id);
        if name.trim().is_empty() {
            return Err(ServiceError::new(
                StatusCode::BAD_REQUEST,
                "ArgumentException",
                "The runner name is required.",
            ));
        }
        if self.runner_id_by_name(scope, name).is_some() {
            return Err(ServiceError::new(
                StatusCode::CONFLICT,
                "AgentExistsException",
                format!("A runner with the name {name} already exists."),
            ));
        }
        let id = self.insert_runner(
            scope,
            NewRunner {
                name: name.to_owned(),
                labels,
                runner_group_id: group,
                ephemeral: true,
                ..NewRunner::default()
            },
        );
        let runner = self
            .runner_mut(scope, id)
            .map(|r| {
                r.scale_set_id = Some(set);
                r.clone()
            })
            .ok_or_else(|| ServiceError::no_scale_set(set))?;
        self.jit_configs_issued += 1;
        let group_name = self.group_name(scope, group).unwrap_or_default();
        let encoded = crate::api::encode_jit_config(self, scope, &runner, &group_name, work_folder);
        Ok(json!({
            "runner": {"id": id, "name": name, "runnerScaleSetId": set},
            "encodedJITConfig": encoded,
        }))
    }

    /// A runner of `scope` as the service's runner endpoints show it.
    pub(crate) fn agent_json(&self, scope: &Scope, id: u64) -> Option<Value> {
        let runner = self.runner(scope, id)?;
        Some(json!({
            "id": runner.id,
            "name": runner.name,
            "runnerScaleSetId": runner.scale_set_id.unwrap_or(0),
        }))
    }

    /// `DELETE .../agents/{id}`: refused while the runner runs a job.
    pub(crate) fn remove_agent(&mut self, scope: &Scope, id: u64) -> Result<(), ServiceError> {
        let runner = self.runner(scope, id).ok_or_else(|| {
            ServiceError::new(
                StatusCode::NOT_FOUND,
                "AgentNotFoundException",
                format!("No runner found with identifier {id}."),
            )
        })?;
        if runner.busy {
            return Err(ServiceError::new(
                StatusCode::BAD_REQUEST,
                "JobStillRunningException",
                format!("Runner {} is still running a job.", runner.name),
            ));
        }
        self.remove_runner(scope, id);
        Ok(())
    }

    /// Assigned jobs of a deleted scale set go back to the queue as new attempts.
    pub(crate) fn requeue_jobs_of(&mut self, set: u64) {
        let seqs: Vec<u64> = self
            .scalesets
            .jobs
            .iter()
            .filter(|(_, j)| j.scale_set_id == Some(set) && j.state == JobState::Assigned)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in seqs {
            let request_id = self.next_request_id();
            if let Some(job) = self.scalesets.jobs.get_mut(&seq) {
                job.state = JobState::Queued;
                job.scale_set_id = None;
                job.assigned_at = None;
                job.request_id = request_id;
            }
        }
    }

    fn set_of_runner(&self, set: u64, runner_name: &str) -> Result<(Scope, u64), String> {
        let scale_set = self
            .scalesets
            .sets
            .get(&set)
            .ok_or_else(|| format!("no scale set {set}"))?;
        let scope = scale_set.scope.clone();
        let id = self
            .runner_id_by_name(&scope, runner_name)
            .filter(|id| self.runner(&scope, *id).and_then(|r| r.scale_set_id) == Some(set))
            .ok_or_else(|| format!("no runner {runner_name} in scale set {set}"))?;
        Ok((scope, id))
    }

    /// The runner takes the oldest job assigned to its scale set.
    pub(crate) fn start_job(&mut self, set: u64, runner_name: &str) -> Result<JobInfo, String> {
        let (scope, runner_id) = self.set_of_runner(set, runner_name)?;
        if self.runner(&scope, runner_id).is_some_and(|r| r.busy) {
            return Err(format!("runner {runner_name} is already running a job"));
        }
        let seq = self
            .scalesets
            .jobs
            .iter()
            .find(|(_, j)| j.scale_set_id == Some(set) && j.state == JobState::Assigned)
            .map(|(seq, _)| *seq)
            .ok_or_else(|| format!("no job is waiting in scale set {set}"))?;
        self.set_runner_state(&scope, runner_id, true, true);
        let job = self
            .scalesets
            .jobs
            .get_mut(&seq)
            .ok_or_else(|| format!("job {seq} vanished"))?;
        job.state = JobState::Running;
        job.runner = Some((runner_id, runner_name.to_owned()));
        job.started_at = Some(util::now_epoch());
        let (entry, info) = (job.entry("JobStarted"), job.info());
        self.push_event(set, entry);
        Ok(info)
    }

    /// The runner's job ends with `result`; the runner, ephemeral, is removed.
    pub(crate) fn complete_job(
        &mut self,
        set: u64,
        runner_name: &str,
        result: &str,
    ) -> Result<JobInfo, String> {
        let (scope, runner_id) = self.set_of_runner(set, runner_name)?;
        let job = self
            .scalesets
            .jobs
            .values_mut()
            .find(|j| {
                j.state == JobState::Running && j.runner.as_ref().is_some_and(|r| r.0 == runner_id)
            })
            .ok_or_else(|| format!("runner {runner_name} is not running a job"))?;
        job.state = JobState::Completed {
            result: result.to_owned(),
        };
        job.finished_at = Some(util::now_epoch());
        let mut entry = job.entry("JobCompleted");
        if let Some(fields) = entry.as_object_mut() {
            fields.insert("result".into(), json!(result));
        }
        let info = job.info();
        self.push_event(set, entry);
        self.remove_runner(&scope, runner_id);
        self.dispatch();
        Ok(info)
    }

    /// GitHub takes an assigned job back (no runner took it in time): the scale set is told the
    /// assignment was cancelled, and the job is queued again as a new attempt.
    pub(crate) fn reassign_job(&mut self, job_id: &str) -> Result<JobInfo, String> {
        let request_id = self.next_request_id();
        let job = self
            .scalesets
            .jobs
            .values_mut()
            .find(|j| j.job_id == job_id)
            .ok_or_else(|| format!("no job {job_id}"))?;
        let (JobState::Assigned, Some(set)) = (&job.state, job.scale_set_id) else {
            return Err(format!("job {job_id} is not waiting in a scale set"));
        };
        let mut entry = job.entry("JobCompleted");
        if let Some(fields) = entry.as_object_mut() {
            fields.insert("result".into(), json!("canceled"));
        }
        job.state = JobState::Queued;
        job.scale_set_id = None;
        job.assigned_at = None;
        job.request_id = request_id;
        job.reassignments += 1;
        let info = job.info();
        self.push_event(set, entry);
        self.dispatch();
        Ok(info)
    }

    pub(crate) fn job_infos(&self) -> Vec<JobInfo> {
        self.scalesets.jobs.values().map(Job::info).collect()
    }
}
