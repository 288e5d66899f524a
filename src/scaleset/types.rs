//! The values the scale set service sends and receives, in its field names (camelCase, as the
//! Actions service writes them; see docs/autoscale-protocol.md).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::Secret;

/// The runner group every scope has; a repository has no other.
pub const DEFAULT_RUNNER_GROUP_ID: u64 = 1;
/// Label type the service gives labels created through this API.
pub const LABEL_TYPE_SYSTEM: &str = "System";

/// Where a scale set lives: the GitHub client's scope type.
pub use crate::github::GithubScope as Scope;

/// What fleet wants a scale set to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSetSpec {
    /// Unique within its runner group; the label workflows target unless `labels` say more.
    pub name: String,
    /// A runner group by name; `None` (or "default", any case) is the default group.
    pub runner_group: Option<String>,
    /// Labels besides the name; empty means the name is the only label.
    pub labels: Vec<String>,
    /// Keeps runners from updating themselves (the image pins the runner version).
    pub disable_update: bool,
}

impl ScaleSetSpec {
    pub fn new(name: impl Into<String>) -> ScaleSetSpec {
        ScaleSetSpec {
            name: name.into(),
            runner_group: None,
            labels: Vec::new(),
            disable_update: true,
        }
    }

    /// The labels the service should hold: the name first, then the others, without repeats
    /// (compared without case, as GitHub matches labels).
    pub fn wire_labels(&self) -> Vec<Label> {
        let mut labels: Vec<Label> = vec![Label::system(&self.name)];
        for name in &self.labels {
            if !labels.iter().any(|l| l.name.eq_ignore_ascii_case(name)) {
                labels.push(Label::system(name));
            }
        }
        labels
    }

    /// Whether the spec names the default runner group.
    pub fn wants_default_group(&self) -> bool {
        self.runner_group
            .as_deref()
            .is_none_or(|g| g.eq_ignore_ascii_case("default"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl Label {
    pub fn system(name: &str) -> Label {
        Label {
            name: name.to_owned(),
            kind: LABEL_TYPE_SYSTEM.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunnerSetting {
    pub ephemeral: bool,
    pub disable_update: bool,
}

/// A scale set as the service holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerScaleSet {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub runner_group_id: u64,
    #[serde(default)]
    pub runner_group_name: String,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(rename = "RunnerSetting", default)]
    pub runner_setting: RunnerSetting,
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

impl RunnerScaleSet {
    /// The label names, in the service's order.
    pub fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }
}

/// The body of a create or update request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScaleSetBody {
    pub name: String,
    pub runner_group_id: u64,
    pub labels: Vec<Label>,
    #[serde(rename = "RunnerSetting")]
    pub runner_setting: RunnerSetting,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerGroup {
    pub id: u64,
    pub name: String,
    #[serde(default, rename = "isDefaultGroup")]
    pub is_default: bool,
}

/// A runner the service knows, as its runner endpoints and JIT answers describe it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerReference {
    pub id: u64,
    pub name: String,
    /// 0 for a runner that belongs to no scale set.
    #[serde(default)]
    pub runner_scale_set_id: u64,
}

/// A just-in-time runner configuration: the runner it registered, and the config to start it
/// with (`ACTIONS_RUNNER_INPUT_JITCONFIG`), which is a secret until the runner has used it.
#[derive(Debug, Clone)]
pub struct JitConfig {
    pub runner: RunnerReference,
    pub encoded: Secret,
}

/// `{ "count": n, "value": [...] }`, the service's list shape.
#[derive(Debug, Deserialize)]
pub(crate) struct ListOf<T> {
    #[serde(default)]
    pub count: usize,
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
}

/// Job and runner counts of a scale set. `total_assigned_jobs` (waiting or running) is what
/// runners are needed for; GitHub keeps it current, unlike a count of messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Statistics {
    #[serde(deserialize_with = "count")]
    pub total_available_jobs: u32,
    #[serde(deserialize_with = "count")]
    pub total_acquired_jobs: u32,
    #[serde(deserialize_with = "count")]
    pub total_assigned_jobs: u32,
    #[serde(deserialize_with = "count")]
    pub total_running_jobs: u32,
    #[serde(deserialize_with = "count")]
    pub total_registered_runners: u32,
    #[serde(deserialize_with = "count")]
    pub total_busy_runners: u32,
    #[serde(deserialize_with = "count")]
    pub total_idle_runners: u32,
}

/// Reads a count the way the service may send it (a JSON integer, never negative in practice)
/// without failing the whole message on an odd value: below 0 reads as 0, above `u32::MAX` as
/// `u32::MAX`.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = i64::deserialize(deserializer)?;
    Ok(u32::try_from(value.max(0)).unwrap_or(u32::MAX))
}

/// A session as the service answers its creation or refresh.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionWire {
    pub session_id: String,
    #[serde(default)]
    pub owner_name: String,
    pub message_queue_url: String,
    pub message_queue_access_token: String,
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

/// An open message session of a scale set. Clones share the queue credentials, which the
/// client replaces when the service says they expired.
#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub scale_set_id: u64,
    pub owner: String,
    /// The statistics the service sent when the session opened.
    pub statistics: Statistics,
    queue: Arc<Mutex<QueueAccess>>,
}

/// Where the session's messages are, and the token that reads them.
#[derive(Clone)]
pub(crate) struct QueueAccess {
    pub url: String,
    pub token: Secret,
}

impl Session {
    pub(crate) fn from_wire(scale_set_id: u64, wire: SessionWire) -> Session {
        Session {
            id: wire.session_id,
            scale_set_id,
            owner: wire.owner_name,
            statistics: wire.statistics.unwrap_or_default(),
            queue: Arc::new(Mutex::new(QueueAccess {
                url: wire.message_queue_url,
                token: Secret::new(wire.message_queue_access_token),
            })),
        }
    }

    pub(crate) fn queue(&self) -> QueueAccess {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Installs the queue credentials of a refreshed session, unless another caller already
    /// replaced `expired`.
    pub(crate) fn replace_queue(&self, expired: &Secret, fresh: QueueAccess) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.token == *expired {
            *queue = fresh;
        }
    }

    /// The message queue URL (it carries no credential).
    pub fn queue_url(&self) -> String {
        self.queue().url
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("scale_set_id", &self.scale_set_id)
            .field("owner", &self.owner)
            .field("statistics", &self.statistics)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_start_with_the_name_and_do_not_repeat() {
        let spec = ScaleSetSpec {
            labels: vec!["gpu".into(), "GPU".into(), "zq-gpu".into(), "a100".into()],
            ..ScaleSetSpec::new("zq-gpu")
        };
        let names: Vec<String> = spec.wire_labels().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["zq-gpu", "gpu", "a100"]);
        assert!(spec.wire_labels().iter().all(|l| l.kind == "System"));
    }

    #[test]
    fn default_group_spellings() {
        let mut spec = ScaleSetSpec::new("s");
        assert!(spec.wants_default_group());
        spec.runner_group = Some("Default".into());
        assert!(spec.wants_default_group());
        spec.runner_group = Some("gpu-hosts".into());
        assert!(!spec.wants_default_group());
    }

    #[test]
    fn statistics_read_odd_counts_without_failing() {
        let stats: Statistics = serde_json::from_str(
            r#"{"totalAssignedJobs": -2, "totalRunningJobs": 99999999999, "totalIdleRunners": 3}"#,
        )
        .expect("statistics");
        assert_eq!(stats.total_assigned_jobs, 0);
        assert_eq!(stats.total_running_jobs, u32::MAX);
        assert_eq!(stats.total_idle_runners, 3);
        assert_eq!(stats.total_available_jobs, 0);
    }

    #[test]
    fn a_session_never_prints_its_queue_token() {
        let wire: SessionWire = serde_json::from_str(
            r#"{"sessionId": "5a7c", "ownerName": "host-1",
                "messageQueueUrl": "https://broker.example/queue",
                "messageQueueAccessToken": "queue-secret-123",
                "statistics": {"totalAssignedJobs": 2}}"#,
        )
        .expect("session");
        let session = Session::from_wire(7, wire);
        let printed = format!("{session:?}");
        assert!(printed.contains("5a7c") && printed.contains("host-1"));
        assert!(!printed.contains("queue-secret-123"));
        assert_eq!(session.statistics.total_assigned_jobs, 2);
        assert_eq!(session.queue_url(), "https://broker.example/queue");
    }

    #[test]
    fn a_refresh_replaces_only_the_expired_token() {
        let wire: SessionWire = serde_json::from_str(
            r#"{"sessionId": "s", "messageQueueUrl": "u1", "messageQueueAccessToken": "t1"}"#,
        )
        .expect("session");
        let session = Session::from_wire(1, wire);
        let fresh = |url: &str, token: &str| QueueAccess {
            url: url.into(),
            token: Secret::new(token),
        };
        session.replace_queue(&Secret::new("t1"), fresh("u2", "t2"));
        assert_eq!(session.queue().token.expose(), "t2");
        // A second caller that saw t1 expire finds t2 already there and leaves it.
        session.replace_queue(&Secret::new("t1"), fresh("u3", "t3"));
        assert_eq!(session.queue_url(), "u2");
    }
}
