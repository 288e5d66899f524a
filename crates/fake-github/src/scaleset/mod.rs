//! GitHub's runner scale set service, faked: the registration exchange on the API
//! (`POST /actions/runner-registration` with `RemoteAuth`), and the Actions service it points
//! to, served on the same port under `/_pipelines/{tenant}/` (scale sets, runner groups,
//! sessions, job acquisition, JIT configs, runners) and `/_queue/{tenant}/` (the long-polled
//! message queue). Jobs are queued, started and completed through the control API, as the
//! real runner cannot talk to the fake. See the crate README.

mod control;
mod jobs;
mod queue;
mod service;
mod world;

use std::time::Duration;

use serde::Serialize;

pub(crate) use control::router as control_router;
pub(crate) use service::{registration_exchange, router};
pub(crate) use world::ScaleSets;

/// How the fake scale set service behaves.
#[derive(Clone, Debug)]
pub struct ScaleSetConfig {
    /// How long a poll of an empty queue is held before it is answered 202 (GitHub: ~50 s).
    pub long_poll: Duration,
    /// A delivered message that is not acknowledged within this is delivered again.
    pub redelivery: Duration,
    /// A session not polled for this long is gone, and another may be opened (until then a
    /// new session gets 409).
    pub session_timeout: Duration,
    /// Lifetime of an admin token (the JWT's `exp` says the same).
    pub admin_token_ttl: Duration,
    /// Lifetime of a session's message queue token.
    pub queue_token_ttl: Duration,
    /// How jobs reach a scale set.
    pub delivery: JobDelivery,
    /// Number each session's messages from 1 (a new session starts its own numbering) instead
    /// of across sessions: a listener must not take a new session's message for one it
    /// handled in an earlier session.
    pub message_ids_per_session: bool,
    /// Keep only a scale set's name as its label (created or updated), as GitHub Enterprise
    /// Server versions that drop extra labels do.
    pub drop_extra_labels: bool,
}

impl Default for ScaleSetConfig {
    fn default() -> Self {
        ScaleSetConfig {
            long_poll: Duration::from_secs(50),
            redelivery: Duration::from_secs(60),
            session_timeout: Duration::from_secs(120),
            admin_token_ttl: Duration::from_secs(3600),
            queue_token_ttl: Duration::from_secs(3600),
            delivery: JobDelivery::AutoAssign,
            message_ids_per_session: false,
            drop_extra_labels: false,
        }
    }
}

/// How a queued job becomes assigned to a scale set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobDelivery {
    /// github.com today: the service assigns matching jobs itself, up to the capacity the
    /// listener advertised (`JobAssigned` messages only).
    AutoAssign,
    /// The older flow (and GitHub Enterprise Server): the service offers each job
    /// (`JobAvailable`), and the listener acquires it (`acquirejobs`), within its capacity.
    Acquire,
}

/// Which requests of the scale set service a [`ScaleSetFault`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleSetEndpoint {
    Any,
    RunnerGroups,
    ScaleSets,
    Sessions,
    GetMessage,
    DeleteMessage,
    AcquireJobs,
    GenerateJitConfig,
    Runners,
}

impl ScaleSetEndpoint {
    /// `runner_groups`, `get_message`, ... (the control API's names).
    pub fn parse(text: &str) -> Option<ScaleSetEndpoint> {
        Some(match text {
            "any" => ScaleSetEndpoint::Any,
            "runner_groups" => ScaleSetEndpoint::RunnerGroups,
            "scale_sets" => ScaleSetEndpoint::ScaleSets,
            "sessions" => ScaleSetEndpoint::Sessions,
            "get_message" => ScaleSetEndpoint::GetMessage,
            "delete_message" => ScaleSetEndpoint::DeleteMessage,
            "acquire_jobs" => ScaleSetEndpoint::AcquireJobs,
            "generate_jit_config" => ScaleSetEndpoint::GenerateJitConfig,
            "runners" => ScaleSetEndpoint::Runners,
            _ => return None,
        })
    }

    fn covers(self, endpoint: ScaleSetEndpoint) -> bool {
        self == ScaleSetEndpoint::Any || self == endpoint
    }
}

/// A failure to inflict on scale set service requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScaleSetFault {
    /// Answer with this status and an Actions exception body.
    Status(u16),
    /// Answer normally, after this delay.
    Slow(Duration),
    /// Answer a message acknowledgement 204 but keep the message, as if the acknowledgement
    /// were lost: the message is delivered again after `ScaleSetConfig::redelivery`.
    LoseAcknowledgement,
}

/// A scale set's counts, as the service reports them on sessions and messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSetStatistics {
    pub total_available_jobs: u32,
    pub total_acquired_jobs: u32,
    pub total_assigned_jobs: u32,
    pub total_running_jobs: u32,
    pub total_registered_runners: u32,
    pub total_busy_runners: u32,
    pub total_idle_runners: u32,
}

/// A scale set as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScaleSetInfo {
    pub id: u64,
    pub scope: String,
    pub name: String,
    pub runner_group_id: u64,
    pub labels: Vec<String>,
    /// `RunnerSetting.disableUpdate`: its runners keep the runner they have.
    pub disable_update: bool,
    /// The open session's id and owner.
    pub session: Option<(String, String)>,
    /// Polls of the session held right now.
    pub polls_held: u32,
    /// The last `X-ScaleSetMaxCapacity` a poll sent; `None` before any poll said one.
    pub capacity: Option<u32>,
    /// Messages created and not acknowledged yet.
    pub unacknowledged_messages: usize,
}

/// Where a job is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Assigned,
    Running,
    Completed { result: String },
}

/// A job as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    pub job_id: String,
    /// The current attempt's request id (a reassigned job gets a new one).
    pub request_id: u64,
    pub scope: String,
    pub labels: Vec<String>,
    pub state: JobState,
    pub scale_set_id: Option<u64>,
    pub runner_name: Option<String>,
    /// Times the job was assigned and taken back.
    pub reassignments: u32,
}

/// Jobs to queue: `count` jobs of `scope` asking for `labels` (all must be labels of a scale
/// set for it to get them).
#[derive(Clone, Debug)]
pub struct QueueJobs {
    pub scope: crate::Scope,
    pub labels: Vec<String>,
    pub count: usize,
}
