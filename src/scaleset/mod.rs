//! GitHub's runner scale sets: the protocol behind pools that scale with queued jobs
//! (`autoscale: { min_idle, max }`).
//!
//! A scale set is a named group of ephemeral runners GitHub assigns jobs to. A listener keeps
//! one message session open on it and long-polls its queue; each message carries job events
//! and the scale set's statistics, and the listener answers by starting runners (each with a
//! just-in-time config from [`ScaleSetClient::generate_jit_config`]). The protocol, as
//! implemented here and in the fake GitHub, is described in docs/autoscale-protocol.md.
//!
//! - [`ScaleSetClient`]: the calls. Each retries what may succeed on a second try (no answer,
//!   429, 5xx), exchanges the admin token again when it expires or is refused, and refreshes a
//!   session whose queue token expired.
//! - [`listener`]: the pure part of a listener (duplicates, reassigned jobs, busy runners and
//!   the desired-runner rule).

mod client;
mod error;
mod http;
pub mod listener;
mod message;
mod token;
mod types;

use std::time::Duration;

pub use client::{ClientConfig, MAX_CAPACITY_HEADER, ScaleSetClient, config_url};
pub use error::ScaleSetError;
pub use http::RetryPolicy;
pub use message::{JOB_MESSAGES, JobInfo, JobMessage, ScaleSetMessage};
pub use token::RegistrationTokenSource;
pub use types::{
    DEFAULT_RUNNER_GROUP_ID, JitConfig, LABEL_TYPE_SYSTEM, Label, RunnerGroup, RunnerReference,
    RunnerScaleSet, RunnerSetting, ScaleSetSpec, Scope, Session, Statistics,
};

/// One long poll of a session's message queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    /// The last message handled, if any (`lastMessageId`).
    pub last_message_id: Option<u64>,
    /// `X-ScaleSetMaxCapacity`: the most jobs the scale set can hold at once.
    pub max_capacity: u32,
    /// How long fleet waits for the answer ([`LONG_POLL`] in the listener); the client gives
    /// up a little after that with [`ScaleSetError::Timeout`].
    pub timeout: Duration,
}

/// How long a listener's long poll may last: the service answers an idle one after about
/// 50 s, and GitHub's own clients wait up to 5 minutes; fleet waits a little under that (the
/// client adds a few seconds for the answer to arrive), so a slow service is not taken for a
/// dead one.
pub const LONG_POLL: Duration = Duration::from_secs(290);

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
