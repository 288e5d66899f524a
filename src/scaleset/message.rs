//! Messages of a scale set's message queue: a batch of job events and the scale set's current
//! statistics. The queue answers `{messageId, messageType, body, statistics}` where `body` is a
//! JSON *string* holding an array of job messages, each tagged by `messageType`.

use serde::{Deserialize, Deserializer};

use super::types::Statistics;

/// The one message type the queue sends today.
pub const JOB_MESSAGES: &str = "RunnerScaleSetJobMessages";

/// The queue's answer as it arrives.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawMessage {
    pub message_id: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub body: String,
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

/// One batch from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSetMessage {
    /// Acknowledge it (`delete_message`) once handled; until then the queue sends it again.
    pub id: u64,
    /// The scale set's counts when the service sent the message.
    pub statistics: Option<Statistics>,
    /// Job events, in the order the service wrote them.
    pub jobs: Vec<JobMessage>,
    /// What could not be read (an unknown message type, an entry of the wrong shape), for the
    /// log. The message is still acknowledged: refusing it would bring it back forever.
    pub skipped: Vec<String>,
}

/// Details every job message carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JobInfo {
    /// Identifies one attempt to place the job; a job offered again gets a new one.
    pub runner_request_id: u64,
    /// Identifies the job across attempts.
    pub job_id: String,
    pub repository_name: String,
    pub owner_name: String,
    pub job_workflow_ref: String,
    pub job_display_name: String,
    pub workflow_run_id: u64,
    pub event_name: String,
    pub request_labels: Vec<String>,
    pub queue_time: Option<String>,
    pub scale_set_assign_time: Option<String>,
    pub runner_assign_time: Option<String>,
    pub finish_time: Option<String>,
}

/// A job event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobMessage {
    /// The job may be taken: acquire it (`acquire_jobs`) to have it assigned.
    Available(JobInfo),
    /// The job is assigned to the scale set and waits for one of its runners.
    Assigned(JobInfo),
    /// A runner of the scale set took the job.
    Started {
        job: JobInfo,
        runner_id: u64,
        runner_name: String,
    },
    /// The job finished on a runner, or its assignment was cancelled before any runner took
    /// it (`result` "canceled", no runner); a cancelled job may be assigned again.
    Completed {
        job: JobInfo,
        result: String,
        runner_id: u64,
        runner_name: String,
    },
}

impl JobMessage {
    pub fn job(&self) -> &JobInfo {
        match self {
            JobMessage::Available(job) | JobMessage::Assigned(job) => job,
            JobMessage::Started { job, .. } | JobMessage::Completed { job, .. } => job,
        }
    }
}

/// The fields only some job messages have.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RunnerFields {
    runner_id: u64,
    runner_name: String,
    result: String,
}

/// Reads the queue's answer. Unknown message types and unreadable entries are listed in
/// `skipped` rather than failing the whole batch.
pub(crate) fn parse(raw: RawMessage) -> ScaleSetMessage {
    let mut skipped = Vec::new();
    let entries: Vec<serde_json::Value> = if raw.message_type != JOB_MESSAGES {
        skipped.push(format!("message type {:?}", raw.message_type));
        Vec::new()
    } else if raw.body.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&raw.body).unwrap_or_else(|e| {
            skipped.push(format!("a body that is not a JSON array ({e})"));
            Vec::new()
        })
    };
    let jobs = entries
        .iter()
        .filter_map(|entry| match parse_entry(entry) {
            Ok(job) => Some(job),
            Err(why) => {
                skipped.push(why);
                None
            }
        })
        .collect();
    ScaleSetMessage {
        id: raw.message_id,
        statistics: raw.statistics,
        jobs,
        skipped,
    }
}

/// `null` read as the type's default: the service writes `null` where it has no value.
fn null_as_default<'de, D, T>(from: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(from)?.unwrap_or_default())
}

/// `entry` without its `null` members, which then take their defaults (a `null` string or list
/// would otherwise fail the entry, and its job would be lost).
fn without_nulls(entry: &serde_json::Value) -> serde_json::Value {
    match entry {
        serde_json::Value::Object(members) => serde_json::Value::Object(
            members
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn parse_entry(entry: &serde_json::Value) -> Result<JobMessage, String> {
    let entry = &without_nulls(entry);
    let kind = entry
        .get("messageType")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let job = JobInfo::deserialize(entry).map_err(|e| format!("a {kind} entry: {e}"))?;
    let runner = RunnerFields::deserialize(entry).map_err(|e| format!("a {kind} entry: {e}"))?;
    match kind {
        "JobAvailable" => Ok(JobMessage::Available(job)),
        "JobAssigned" => Ok(JobMessage::Assigned(job)),
        "JobStarted" => Ok(JobMessage::Started {
            job,
            runner_id: runner.runner_id,
            runner_name: runner.runner_name,
        }),
        "JobCompleted" => Ok(JobMessage::Completed {
            job,
            result: runner.result,
            runner_id: runner.runner_id,
            runner_name: runner.runner_name,
        }),
        other => Err(format!("job message type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_take_the_defaults_instead_of_losing_the_job() {
        let body = serde_json::json!([{
            "messageType": "JobAssigned", "runnerRequestId": 5, "jobId": "j",
            "repositoryName": null, "requestLabels": null, "ownerName": null,
            "queueTime": null
        }])
        .to_string();
        let message = parse(raw(&body));
        assert!(message.skipped.is_empty(), "{:?}", message.skipped);
        assert_eq!(message.jobs.len(), 1);
        assert_eq!(message.jobs[0].job().runner_request_id, 5);
        assert!(message.jobs[0].job().request_labels.is_empty());
        let null_body: RawMessage = serde_json::from_value(serde_json::json!({
            "messageId": 3, "messageType": null, "body": null, "statistics": null
        }))
        .expect("a message with nulls");
        assert_eq!(null_body.message_id, 3);
        assert!(null_body.body.is_empty());
    }

    /// A batch shaped like the service's: the body is a string of JSON, times are RFC 3339 with
    /// Go's zero time where a step has not happened.
    fn raw(body: &str) -> RawMessage {
        serde_json::from_value(serde_json::json!({
            "messageId": 17,
            "messageType": "RunnerScaleSetJobMessages",
            "body": body,
            "statistics": {
                "totalAvailableJobs": 0, "totalAcquiredJobs": 1, "totalAssignedJobs": 2,
                "totalRunningJobs": 1, "totalRegisteredRunners": 2, "totalBusyRunners": 1,
                "totalIdleRunners": 1
            }
        }))
        .expect("raw message")
    }

    const BATCH: &str = r#"[
        {"messageType":"JobAvailable","acquireJobUrl":"https://x/acquire","runnerRequestId":101,
         "repositoryName":"zquic","ownerName":"acme","jobId":"8e1b-1","jobWorkflowRef":"acme/zquic/.github/workflows/ci.yml@refs/heads/main",
         "jobDisplayName":"test (gpu)","workflowRunId":991,"eventName":"push","requestLabels":["zq-gpu"],
         "queueTime":"2025-03-01T10:00:00.123Z","scaleSetAssignTime":"0001-01-01T00:00:00Z",
         "runnerAssignTime":"0001-01-01T00:00:00Z","finishTime":"0001-01-01T00:00:00Z"},
        {"messageType":"JobAssigned","runnerRequestId":101,"jobId":"8e1b-1","requestLabels":["zq-gpu"]},
        {"messageType":"JobStarted","runnerRequestId":100,"jobId":"77aa-0","runnerId":12,"runnerName":"zq-gpu-abc"},
        {"messageType":"JobCompleted","runnerRequestId":99,"jobId":"5f00-9","result":"succeeded","runnerId":11,"runnerName":"zq-gpu-xyz"}
    ]"#;

    #[test]
    fn reads_a_batch_of_every_job_message() {
        let message = parse(raw(BATCH));
        assert_eq!(message.id, 17);
        assert!(message.skipped.is_empty(), "{:?}", message.skipped);
        assert_eq!(
            message
                .statistics
                .map(|s| (s.total_assigned_jobs, s.total_busy_runners)),
            Some((2, 1))
        );
        let [available, assigned, started, completed] = message.jobs.as_slice() else {
            panic!("four jobs expected: {:?}", message.jobs);
        };
        let JobMessage::Available(job) = available else {
            panic!("{available:?}")
        };
        assert_eq!(job.runner_request_id, 101);
        assert_eq!(job.job_id, "8e1b-1");
        assert_eq!(job.request_labels, ["zq-gpu"]);
        assert_eq!(job.workflow_run_id, 991);
        assert_eq!(job.queue_time.as_deref(), Some("2025-03-01T10:00:00.123Z"));
        assert!(matches!(assigned, JobMessage::Assigned(j) if j.runner_request_id == 101));
        assert_eq!(
            started,
            &JobMessage::Started {
                job: started.job().clone(),
                runner_id: 12,
                runner_name: "zq-gpu-abc".into()
            }
        );
        let JobMessage::Completed {
            result,
            runner_name,
            ..
        } = completed
        else {
            panic!("{completed:?}")
        };
        assert_eq!(
            (result.as_str(), runner_name.as_str()),
            ("succeeded", "zq-gpu-xyz")
        );
    }

    #[test]
    fn an_empty_body_is_a_batch_of_nothing() {
        let message = parse(raw(""));
        assert!(message.jobs.is_empty() && message.skipped.is_empty());
        assert!(message.statistics.is_some());
    }

    #[test]
    fn what_cannot_be_read_is_skipped_not_fatal() {
        let body = r#"[
            {"messageType":"JobStarted","runnerRequestId":"not a number"},
            {"messageType":"SomethingNew","runnerRequestId":3},
            {"messageType":"JobAssigned","runnerRequestId":4,"jobId":"j4"}
        ]"#;
        let message = parse(raw(body));
        assert_eq!(message.jobs.len(), 1);
        assert_eq!(message.jobs[0].job().job_id, "j4");
        assert_eq!(message.skipped.len(), 2, "{:?}", message.skipped);

        let mut other = raw("[]");
        other.message_type = "RunnerScaleSetUpgrade".into();
        let message = parse(other);
        assert!(message.jobs.is_empty());
        assert_eq!(message.skipped.len(), 1);

        let message = parse(raw("{not json"));
        assert!(message.jobs.is_empty());
        assert!(message.skipped[0].contains("not a JSON array"));
    }
}
