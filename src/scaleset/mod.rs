//! GitHub's runner scale sets: the protocol behind pools that scale with queued jobs
//! (`autoscale: { min_idle, max }`).
//!
//! A scale set is a named group of ephemeral runners GitHub assigns jobs to. A listener keeps
//! one message session open on it and long-polls its queue; each message carries job events
//! and the scale set's statistics, and the listener answers by starting runners (each with a
//! just-in-time config from [`ScaleSetApi::generate_jit_config`]). The protocol, as implemented
//! here and in the fake GitHub, is described in docs/autoscale-protocol.md.
//!
//! - [`ScaleSetApi`]: the calls, behind a trait so the listener can be tested with a stand-in;
//!   [`ScaleSetClient`] is the real one.
//! - [`listener`]: the pure part of a listener (duplicates, reassigned jobs, busy runners, the
//!   desired-runner rule and the capacity to advertise).

mod client;
mod error;
mod http;
pub mod listener;
mod message;
mod token;
mod types;

use std::future::Future;
use std::time::Duration;

pub use client::{ClientConfig, MAX_CAPACITY_HEADER, ScaleSetClient, config_url};
pub use error::ScaleSetError;
pub use http::RetryPolicy;
pub use message::{JOB_MESSAGES, JobInfo, JobMessage, ScaleSetMessage};
pub use token::{RegistrationTokenSource, TokenRegistration};
pub use types::{
    DEFAULT_RUNNER_GROUP_ID, JitConfig, LABEL_TYPE_SYSTEM, Label, RunnerGroup, RunnerReference,
    RunnerScaleSet, RunnerSetting, ScaleSetSpec, Scope, Session, Statistics,
};

/// One long poll of a session's message queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    /// The last message handled, if any (`lastMessageId`).
    pub last_message_id: Option<u64>,
    /// `X-ScaleSetMaxCapacity`: the most jobs the scale set can hold at once
    /// (see [`listener::capacity`]).
    pub max_capacity: u32,
    /// How long the service may hold the poll (GitHub holds an idle one about 50 s); the client
    /// gives up a little after that with [`ScaleSetError::Timeout`].
    pub timeout: Duration,
}

/// A scale set found by name, or created because there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    Existing(RunnerScaleSet),
    Created(RunnerScaleSet),
}

impl Ensured {
    pub fn scale_set(&self) -> &RunnerScaleSet {
        match self {
            Ensured::Existing(set) | Ensured::Created(set) => set,
        }
    }

    pub fn into_scale_set(self) -> RunnerScaleSet {
        match self {
            Ensured::Existing(set) | Ensured::Created(set) => set,
        }
    }
}

/// The calls of the scale set service. Each retries what may succeed on a second try (no
/// answer, 429, 5xx), exchanges the admin token again when it expires or is refused, and
/// refreshes a session whose queue token expired.
pub trait ScaleSetApi: Send + Sync {
    /// A runner group by name; `None` or "default" is the default group (no request).
    fn runner_group(
        &self,
        name: Option<&str>,
    ) -> impl Future<Output = Result<RunnerGroup, ScaleSetError>> + Send;

    /// The scale set of this name in this runner group, if there is one.
    fn find_scale_set(
        &self,
        runner_group_id: u64,
        name: &str,
    ) -> impl Future<Output = Result<Option<RunnerScaleSet>, ScaleSetError>> + Send;

    /// Every scale set of the scope, in every runner group (to find those of pools that left
    /// the spec).
    fn list_scale_sets(
        &self,
    ) -> impl Future<Output = Result<Vec<RunnerScaleSet>, ScaleSetError>> + Send;

    /// The scale set `spec` names in its runner group, created (with its labels) if missing.
    /// An existing one is returned as it is: comparing and updating is the planner's decision.
    fn get_or_create_scale_set(
        &self,
        spec: &ScaleSetSpec,
    ) -> impl Future<Output = Result<Ensured, ScaleSetError>> + Send;

    /// Sets a scale set's name, runner group, labels and runner settings to `spec`'s.
    fn update_scale_set(
        &self,
        id: u64,
        spec: &ScaleSetSpec,
    ) -> impl Future<Output = Result<RunnerScaleSet, ScaleSetError>> + Send;

    fn delete_scale_set(&self, id: u64) -> impl Future<Output = Result<(), ScaleSetError>> + Send;

    /// Opens the scale set's message session. [`ScaleSetError::SessionConflict`] when another
    /// is open (a second listener, or one that stopped without closing it and has not timed
    /// out yet).
    fn create_session(
        &self,
        scale_set_id: u64,
        owner: &str,
    ) -> impl Future<Output = Result<Session, ScaleSetError>> + Send;

    /// Closes a session, so the next listener need not wait for it to time out.
    fn delete_session(
        &self,
        session: &Session,
    ) -> impl Future<Output = Result<(), ScaleSetError>> + Send;

    /// Long-polls the queue: the next unacknowledged message, or `None` when the service had
    /// nothing to say within its hold time. [`ScaleSetError::NotFound`] when the session is
    /// gone (closed, or timed out and replaced): open a new one.
    fn get_message(
        &self,
        session: &Session,
        poll: &Poll,
    ) -> impl Future<Output = Result<Option<ScaleSetMessage>, ScaleSetError>> + Send;

    /// Acknowledges a message; unacknowledged ones come back.
    fn delete_message(
        &self,
        session: &Session,
        message_id: u64,
    ) -> impl Future<Output = Result<(), ScaleSetError>> + Send;

    /// Acquires offered jobs (`JobAvailable` request ids); returns those acquired.
    fn acquire_jobs(
        &self,
        session: &Session,
        request_ids: &[u64],
    ) -> impl Future<Output = Result<Vec<u64>, ScaleSetError>> + Send;

    /// Registers an ephemeral runner of the scale set and returns its id and just-in-time
    /// config. [`ScaleSetError::RunnerExists`] when the name is taken (also after a retry whose
    /// first attempt registered it: remove that runner, or pick another name). `work_folder`:
    /// the runner's work folder, relative to its install directory or absolute.
    fn generate_jit_config(
        &self,
        scale_set_id: u64,
        runner_name: &str,
        work_folder: &str,
    ) -> impl Future<Output = Result<JitConfig, ScaleSetError>> + Send;

    fn get_runner_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<RunnerReference>, ScaleSetError>> + Send;

    /// Removes a runner's registration. [`ScaleSetError::RunnerBusy`] while it runs a job.
    fn remove_runner(
        &self,
        runner_id: u64,
    ) -> impl Future<Output = Result<(), ScaleSetError>> + Send;
}

/// The owner a scale set's message session is opened under: `fleet-<fleet>@<host>`, so that a
/// session conflict names the machine that holds the session.
pub fn session_owner(fleet: &str) -> String {
    format!("fleet-{fleet}@{}", crate::this_machine::hostname())
}

#[cfg(test)]
mod owner_tests {
    #[test]
    fn the_session_owner_names_the_fleet_and_this_host() {
        let owner = super::session_owner("zq");
        let host = crate::this_machine::hostname();
        assert_eq!(owner, format!("fleet-zq@{host}"));
        assert!(!host.is_empty());
    }
}
