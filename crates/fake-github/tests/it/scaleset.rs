//! The runner scale set service, driven end to end through fleet's own client
//! (`fleet::scaleset`): scale sets, sessions, the long-polled queue, acquisition, JIT configs,
//! runners taking and finishing jobs, restarts, and faults.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::json;

use fake_github::{
    Config, FakeGithub, Fault, JobDelivery, JobState, QueueJobs, ScaleSetConfig, ScaleSetEndpoint,
    ScaleSetFault, decode_jit_config,
};
use fleet::scaleset::listener::{JobTracker, Observation};
use fleet::scaleset::{
    ClientConfig, Ensured, JobMessage, Poll, RetryPolicy, ScaleSetClient, ScaleSetError,
    ScaleSetMessage, ScaleSetSpec, Scope, Session,
};

use crate::common::Http;

const OWNER: &str = "acme";
const REPO: &str = "zquic";

fn fake_scope() -> fake_github::Scope {
    fake_github::Scope::repo(OWNER, REPO)
}

fn scope() -> Scope {
    Scope::Repo {
        owner: OWNER.into(),
        repo: REPO.into(),
    }
}

/// Short timings: tests wait for redeliveries and session timeouts in real time.
fn fast() -> ScaleSetConfig {
    ScaleSetConfig {
        long_poll: Duration::from_millis(300),
        redelivery: Duration::from_millis(400),
        session_timeout: Duration::from_millis(800),
        ..ScaleSetConfig::default()
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(20),
        max_wait: Duration::from_millis(200),
        request_timeout: Duration::from_secs(10),
        rate_limit_wait: Duration::from_millis(50),
    }
}

/// Registration tokens from fleet's GitHub client, as fleet buys them.
fn registration_source(api_url: &str, scope: &Scope, token: &str) -> fleet::github::GithubClient {
    fleet::github::GithubClient::new(
        api_url,
        scope.clone(),
        fleet::github::Credentials::Token(token.to_owned()),
        policy(),
    )
    .expect("registration source")
}

struct Rig {
    fake: FakeGithub,
    client: ScaleSetClient,
}

async fn rig(scaleset: ScaleSetConfig) -> Rig {
    rig_with(scaleset, Duration::from_secs(60)).await
}

async fn rig_with(scaleset: ScaleSetConfig, refresh_margin: Duration) -> Rig {
    let fake = FakeGithub::start(Config {
        scaleset,
        ..Config::default()
    })
    .await
    .expect("fake starts");
    let client = client_for(&fake, refresh_margin);
    Rig { fake, client }
}

fn client_for(fake: &FakeGithub, refresh_margin: Duration) -> ScaleSetClient {
    let registration = registration_source(&fake.url(), &scope(), &fake.token());
    let mut config = ClientConfig::new(&fake.url(), &scope());
    config.policy = policy();
    config.refresh_margin = refresh_margin;
    config.exchange_first_wait = Duration::from_millis(20);
    ScaleSetClient::new(config, Arc::new(registration)).expect("client")
}

fn spec() -> ScaleSetSpec {
    ScaleSetSpec {
        labels: vec!["gpu".into(), "a100".into()],
        ..ScaleSetSpec::new("zq-gpu")
    }
}

async fn scale_set(rig: &Rig) -> u64 {
    rig.client
        .get_or_create_scale_set(&spec())
        .await
        .expect("scale set")
        .scale_set()
        .id
}

fn poll(last: Option<u64>, max_capacity: u32) -> Poll {
    Poll {
        last_message_id: last,
        max_capacity,
        timeout: Duration::from_secs(5),
    }
}

/// One turn of a listener: poll, take in the message, acquire what it offers, acknowledge.
async fn turn(
    client: &ScaleSetClient,
    session: &Session,
    tracker: &mut JobTracker,
    max_capacity: u32,
) -> Option<(ScaleSetMessage, Observation)> {
    let message = client
        .get_message(session, &poll(tracker.last_message_id(), max_capacity))
        .await
        .expect("poll")?;
    let observation = tracker.observe(&message);
    if !observation.to_acquire.is_empty() {
        client
            .acquire_jobs(session, &observation.to_acquire)
            .await
            .expect("acquire");
    }
    client
        .delete_message(session, message.id)
        .await
        .expect("acknowledge");
    Some((message, observation))
}

/// Turns until a message arrives (a poll may end empty while the fake holds nothing).
async fn next_message(
    client: &ScaleSetClient,
    session: &Session,
    tracker: &mut JobTracker,
    max_capacity: u32,
) -> (ScaleSetMessage, Observation) {
    for _ in 0..20 {
        if let Some(seen) = turn(client, session, tracker, max_capacity).await {
            return seen;
        }
    }
    panic!("no message after 20 polls");
}

fn kinds(message: &ScaleSetMessage) -> Vec<&'static str> {
    message
        .jobs
        .iter()
        .map(|j| match j {
            JobMessage::Available(_) => "available",
            JobMessage::Assigned(_) => "assigned",
            JobMessage::Started { .. } => "started",
            JobMessage::Completed { .. } => "completed",
        })
        .collect()
}

#[tokio::test]
async fn scale_sets_are_found_by_name_or_created_once() {
    let rig = rig(fast()).await;
    let created = rig
        .client
        .get_or_create_scale_set(&spec())
        .await
        .expect("create");
    let Ensured::Created(set) = created else {
        panic!("expected a new scale set: {created:?}")
    };
    assert_eq!(set.name, "zq-gpu");
    assert_eq!(set.runner_group_id, 1);
    assert_eq!(set.runner_group_name, "Default");
    assert_eq!(set.label_names(), ["zq-gpu", "gpu", "a100"]);
    assert!(set.runner_setting.ephemeral && set.runner_setting.disable_update);

    let again = rig
        .client
        .get_or_create_scale_set(&spec())
        .await
        .expect("find");
    assert_eq!(again, Ensured::Existing(set.clone()));
    assert_eq!(rig.fake.scale_sets(Some(&fake_scope())).len(), 1);

    let mut changed = spec();
    changed.labels = vec!["h100".into()];
    let updated = rig
        .client
        .update_scale_set(set.id, &changed)
        .await
        .expect("update");
    assert_eq!(updated.label_names(), ["zq-gpu", "h100"]);

    let missing = rig.client.runner_group(Some("no-such-group")).await;
    assert!(
        matches!(missing, Err(ScaleSetError::NotFound { .. })),
        "{missing:?}"
    );
    rig.client.delete_scale_set(set.id).await.expect("delete");
    assert!(
        rig.client
            .find_scale_set(1, "zq-gpu")
            .await
            .expect("find")
            .is_none()
    );
    // One exchange served every call: the admin token is cached.
    assert_eq!(rig.fake.admin_token_exchanges(), 1);
}

#[tokio::test]
async fn organization_scale_sets_live_in_their_runner_group() {
    let fake = FakeGithub::start(Config {
        scaleset: fast(),
        ..Config::default()
    })
    .await
    .expect("fake starts");
    let group = fake.add_runner_group("acme", "gpu-hosts");
    let org = Scope::Org("acme".into());
    let registration = registration_source(&fake.url(), &org, &fake.token());
    let client = ScaleSetClient::new(ClientConfig::new(&fake.url(), &org), Arc::new(registration))
        .expect("client");
    let in_group = ScaleSetSpec {
        runner_group: Some("GPU-hosts".into()),
        ..ScaleSetSpec::new("zq-gpu")
    };
    let set = client
        .get_or_create_scale_set(&in_group)
        .await
        .expect("create")
        .into_scale_set();
    assert_eq!(set.runner_group_id, group);
    assert_eq!(set.runner_group_name, "gpu-hosts");
    // The same name in another group is another scale set.
    let default = client
        .get_or_create_scale_set(&ScaleSetSpec::new("zq-gpu"))
        .await
        .expect("create");
    assert!(matches!(&default, Ensured::Created(s) if s.runner_group_id == 1 && s.id != set.id));
}

#[tokio::test]
async fn jobs_flow_from_queue_to_runners_within_the_advertised_capacity() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    assert_eq!(session.statistics.total_assigned_jobs, 0);
    let mut tracker = JobTracker::new();
    tracker.start_session(session.statistics);
    rig.fake.queue_jobs_for_scale_set(set, 3).expect("jobs");

    // Two GPUs free (max 8, no runner yet): the listener can hold two jobs, and GitHub
    // assigns no more.
    let (message, _) = next_message(&rig.client, &session, &mut tracker, 2).await;
    assert_eq!(kinds(&message), ["assigned", "assigned"]);
    let stats = message.statistics.expect("statistics");
    assert_eq!(
        (stats.total_assigned_jobs, stats.total_available_jobs),
        (2, 1)
    );
    assert_eq!(tracker.assigned_jobs(), 2);

    // Start a runner for each assigned job (min_idle 0): each a JIT config of the scale set.
    let mut runners = Vec::new();
    for n in 0..tracker.assigned_jobs() {
        let name = format!("zq-gpu-{n}");
        let jit = rig
            .client
            .generate_jit_config(set, &name, "_work")
            .await
            .expect("jit config");
        assert_eq!(
            (jit.runner.name.as_str(), jit.runner.runner_scale_set_id),
            (name.as_str(), set)
        );
        assert!(!format!("{jit:?}").contains(jit.encoded.expose()));
        let settings = decode_jit_config(jit.encoded.expose()).expect("a config the fake issued");
        assert_eq!(settings.name, name);
        runners.push(name);
    }
    let listed = rig.fake.runners(&fake_scope());
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|r| r.scale_set_id == Some(set) && r.ephemeral)
    );
    assert_eq!(listed[0].labels, ["zq-gpu", "gpu", "a100"]);

    // A runner takes a job, then finishes it; GitHub removes the ephemeral runner, and the
    // freed capacity brings the third job.
    rig.fake.start_job(set, &runners[0]).expect("start");
    let (message, seen) = next_message(&rig.client, &session, &mut tracker, 2).await;
    assert_eq!(kinds(&message), ["started"]);
    assert_eq!(seen.started, [runners[0].clone()]);
    assert!(tracker.is_runner_busy(&runners[0]));
    let busy = rig
        .client
        .get_runner_by_name(&runners[0])
        .await
        .expect("lookup");
    let busy = busy.expect("registered");
    let refused = rig.client.remove_runner(busy.id).await;
    assert!(
        matches!(refused, Err(ScaleSetError::RunnerBusy { .. })),
        "{refused:?}"
    );

    rig.fake
        .complete_job(set, &runners[0], "succeeded")
        .expect("complete");
    let (message, seen) = next_message(&rig.client, &session, &mut tracker, 2).await;
    assert_eq!(kinds(&message), ["completed", "assigned"]);
    assert_eq!(seen.finished, [runners[0].clone()]);
    assert!(!tracker.is_runner_busy(&runners[0]));
    assert_eq!(message.statistics.map(|s| s.total_assigned_jobs), Some(2));
    assert!(
        rig.client
            .get_runner_by_name(&runners[0])
            .await
            .expect("lookup")
            .is_none()
    );
    assert_eq!(tracker.jobs().count(), 2);

    // The idle runner can go.
    let idle = rig
        .client
        .get_runner_by_name(&runners[1])
        .await
        .expect("lookup")
        .expect("registered");
    rig.client
        .remove_runner(idle.id)
        .await
        .expect("remove idle");
    let taken = rig
        .client
        .generate_jit_config(set, "zq-gpu-2", "_work")
        .await
        .expect("jit");
    assert!(taken.runner.id > idle.id);
    // Registered again under a name this scale set's idle runner holds: the old registration
    // goes (as with GitHub's own clients), the new one takes its name.
    let again = rig
        .client
        .generate_jit_config(set, "zq-gpu-2", "_work")
        .await
        .expect("the stale registration is replaced");
    assert!(again.runner.id > taken.runner.id);
    let registered = rig
        .client
        .get_runner_by_name("zq-gpu-2")
        .await
        .expect("lookup")
        .expect("registered");
    assert_eq!(registered.id, again.runner.id);
    // Another scale set's runner of that name is never removed.
    let other = rig
        .client
        .get_or_create_scale_set(&ScaleSetSpec::new("zq-other"))
        .await
        .expect("second scale set")
        .scale_set()
        .id;
    let refused = rig
        .client
        .generate_jit_config(other, "zq-gpu-2", "_work")
        .await;
    assert!(
        matches!(refused, Err(ScaleSetError::RunnerExists { .. })),
        "{refused:?}"
    );

    rig.client.delete_session(&session).await.expect("close");
    assert!(rig.fake.scale_sets(None)[0].session.is_none());
}

#[tokio::test]
async fn requests_name_fleet_its_version_and_the_scale_set() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-zq@host")
        .await
        .expect("session");
    rig.client.delete_session(&session).await.expect("close");
    let agents: Vec<String> = rig
        .fake
        .requests()
        .iter()
        .map(|r| r.user_agent.clone())
        .collect();
    let fleet = format!("fleet/{}", env!("CARGO_PKG_VERSION"));
    assert!(agents.iter().all(|a| a.starts_with(&fleet)), "{agents:?}");
    assert!(
        agents
            .iter()
            .any(|a| a.ends_with(&format!("(scale set {set})"))),
        "{agents:?}"
    );
}

#[tokio::test]
async fn offered_jobs_are_acquired_within_capacity() {
    let rig = rig(ScaleSetConfig {
        delivery: JobDelivery::Acquire,
        ..fast()
    })
    .await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    let mut tracker = JobTracker::new();
    rig.fake.queue_jobs_for_scale_set(set, 3).expect("jobs");

    let (message, seen) = next_message(&rig.client, &session, &mut tracker, 2).await;
    assert_eq!(kinds(&message), ["available", "available", "available"]);
    assert_eq!(
        seen.to_acquire.len(),
        3,
        "the tracker asks for each offer once"
    );
    // `turn` acquired them; the service assigned two, as many as the capacity.
    let (message, _) = next_message(&rig.client, &session, &mut tracker, 2).await;
    assert_eq!(kinds(&message), ["assigned", "assigned"]);
    let stats = rig.fake.scale_set_statistics(set).expect("statistics");
    assert_eq!(
        (
            stats.total_assigned_jobs,
            stats.total_acquired_jobs,
            stats.total_available_jobs
        ),
        (2, 2, 1)
    );
    // Acquiring the third now gets nothing: the scale set is full.
    let third = rig
        .fake
        .jobs()
        .into_iter()
        .find(|j| j.state == JobState::Queued)
        .expect("a queued job");
    let acquired = rig
        .client
        .acquire_jobs(&session, &[third.request_id])
        .await
        .expect("acquire");
    assert!(acquired.is_empty());
}

#[tokio::test]
async fn capacity_zero_assigns_nothing_and_an_idle_poll_ends_empty() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    rig.fake.queue_jobs_for_scale_set(set, 1).expect("jobs");
    let empty = rig
        .client
        .get_message(&session, &poll(None, 0))
        .await
        .expect("poll");
    assert_eq!(empty, None, "no room: the poll is held, then answered 202");
    let stats = rig.fake.scale_set_statistics(set).expect("statistics");
    assert_eq!(
        (stats.total_assigned_jobs, stats.total_available_jobs),
        (0, 1)
    );
    assert_eq!(rig.fake.scale_sets(None)[0].capacity, Some(0));
}

#[tokio::test]
async fn a_held_poll_answers_as_soon_as_a_job_arrives() {
    let rig = rig(ScaleSetConfig {
        long_poll: Duration::from_secs(20),
        ..fast()
    })
    .await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    let client = rig.client.clone();
    let held_session = session.clone();
    let poller =
        tokio::spawn(async move { client.get_message(&held_session, &poll(None, 4)).await });
    // Let the poll reach the fake and wait there, then queue a job.
    while rig.fake.scale_sets(None)[0].polls_held == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.fake.queue_jobs_for_scale_set(set, 1).expect("jobs");
    let message = poller
        .await
        .expect("poll task")
        .expect("poll")
        .expect("a message");
    assert_eq!(kinds(&message), ["assigned"]);
}

#[tokio::test]
async fn a_restarted_listener_waits_out_the_old_session() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let crashed = rig
        .client
        .create_session(set, "listener-1")
        .await
        .expect("session");
    // A second listener (or the first, restarted without closing its session).
    let restarted = client_for(&rig.fake, Duration::from_secs(60));
    let conflict = restarted.create_session(set, "listener-2").await;
    let Err(error) = conflict else {
        panic!("expected a conflict")
    };
    assert!(
        matches!(error, ScaleSetError::SessionConflict { scale_set_id, .. } if scale_set_id == set)
    );
    assert!(error.is_transient());
    assert!(
        error.to_string().contains("already has an active session"),
        "{error}"
    );
    // Nobody polls the old session: the service drops it, and the new listener gets one.
    let mut session = None;
    for _ in 0..40 {
        match restarted.create_session(set, "listener-2").await {
            Ok(opened) => {
                session = Some(opened);
                break;
            }
            Err(ScaleSetError::SessionConflict { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }
    let session = session.expect("a session once the old one timed out");
    assert_eq!(session.owner, "listener-2");
    // The replaced session is gone for its old owner.
    let gone = rig.client.get_message(&crashed, &poll(None, 1)).await;
    assert!(
        matches!(gone, Err(ScaleSetError::NotFound { .. })),
        "{gone:?}"
    );
    // A closed session frees the scale set at once.
    restarted.delete_session(&session).await.expect("close");
    rig.client
        .create_session(set, "listener-3")
        .await
        .expect("session");
}

#[tokio::test]
async fn an_unacknowledged_message_comes_back_and_is_recognised() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    let mut tracker = JobTracker::new();
    rig.fake.queue_jobs_for_scale_set(set, 1).expect("jobs");
    rig.fake.fail_next_scaleset(
        ScaleSetEndpoint::DeleteMessage,
        ScaleSetFault::LoseAcknowledgement,
        1,
    );
    let (first, seen) = next_message(&rig.client, &session, &mut tracker, 4).await;
    assert!(!seen.duplicate);
    assert_eq!(rig.fake.scale_sets(None)[0].unacknowledged_messages, 1);

    let (again, seen) = next_message(&rig.client, &session, &mut tracker, 4).await;
    assert_eq!(again.id, first.id);
    assert!(seen.duplicate, "the tracker has handled it already");
    assert_eq!(tracker.jobs().count(), 1);
    assert_eq!(rig.fake.scale_sets(None)[0].unacknowledged_messages, 0);
    assert_eq!(turn(&rig.client, &session, &mut tracker, 4).await, None);
}

#[tokio::test]
async fn a_reassigned_job_is_one_job() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    let mut tracker = JobTracker::new();
    let job = rig
        .fake
        .queue_jobs_for_scale_set(set, 1)
        .expect("jobs")
        .remove(0);
    let (message, _) = next_message(&rig.client, &session, &mut tracker, 4).await;
    let first_request = message.jobs[0].job().runner_request_id;

    let reassigned = rig.fake.reassign_job(&job).expect("reassign");
    assert_eq!(reassigned.reassignments, 1);
    let (message, seen) = next_message(&rig.client, &session, &mut tracker, 4).await;
    assert_eq!(kinds(&message), ["completed", "assigned"]);
    assert!(
        seen.finished.is_empty(),
        "the cancelled attempt had no runner"
    );
    let tracked: Vec<_> = tracker.jobs().collect();
    assert_eq!(tracked.len(), 1);
    assert_eq!(tracked[0].job_id, job);
    assert_ne!(tracked[0].request_id, first_request);
    assert_eq!(tracker.assigned_jobs(), 1);
}

#[tokio::test]
async fn expired_tokens_are_replaced() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    assert_eq!(rig.fake.admin_token_exchanges(), 1);

    // The admin token is refused: the client exchanges a new one and carries on.
    rig.fake.expire_scaleset_tokens(true, false);
    rig.fake.clear_requests();
    assert!(
        rig.client
            .find_scale_set(1, "zq-gpu")
            .await
            .expect("find")
            .is_some()
    );
    assert_eq!(rig.fake.admin_token_exchanges(), 2);
    let statuses: Vec<u16> = rig.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [401, 201, 200, 200],
        "refused, registration token, exchange, retry"
    );

    // The queue token is refused: the client refreshes the session and polls again.
    rig.fake.expire_scaleset_tokens(false, true);
    rig.fake.clear_requests();
    rig.fake.queue_jobs_for_scale_set(set, 1).expect("jobs");
    let message = rig
        .client
        .get_message(&session, &poll(None, 2))
        .await
        .expect("poll")
        .expect("message");
    assert_eq!(kinds(&message), ["assigned"]);
    let log: Vec<(String, u16)> = rig
        .fake
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        log,
        [
            ("GET".into(), 401),
            ("PATCH".into(), 200),
            ("GET".into(), 200)
        ]
    );
}

#[tokio::test]
async fn an_admin_token_is_exchanged_before_it_expires() {
    // Tokens live 4 s (their `exp` is in whole seconds: 3 to 4 s ahead when issued); the
    // client renews one with less than 2.5 s left.
    let rig = rig_with(
        ScaleSetConfig {
            admin_token_ttl: Duration::from_secs(4),
            ..fast()
        },
        Duration::from_millis(2500),
    )
    .await;
    scale_set(&rig).await;
    assert_eq!(rig.fake.admin_token_exchanges(), 1);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    rig.fake.clear_requests();
    rig.client.find_scale_set(1, "zq-gpu").await.expect("find");
    assert_eq!(rig.fake.admin_token_exchanges(), 2);
    assert!(
        rig.fake.requests().iter().all(|r| r.status != 401),
        "renewed before the service refused it"
    );
}

#[tokio::test]
async fn server_errors_and_slow_answers_are_retried() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    rig.fake.clear_requests();
    rig.fake
        .fail_next_scaleset(ScaleSetEndpoint::ScaleSets, ScaleSetFault::Status(503), 2);
    assert!(
        rig.client
            .find_scale_set(1, "zq-gpu")
            .await
            .expect("find")
            .is_some()
    );
    let statuses: Vec<u16> = rig.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200]);

    rig.fake.fail_next_scaleset(
        ScaleSetEndpoint::GenerateJitConfig,
        ScaleSetFault::Slow(Duration::from_millis(300)),
        1,
    );
    rig.client
        .generate_jit_config(set, "zq-gpu-slow", "_work")
        .await
        .expect("a slow answer is still an answer");

    rig.fake
        .fail_next_scaleset(ScaleSetEndpoint::Any, ScaleSetFault::Status(500), 10);
    let error = rig
        .client
        .find_scale_set(1, "zq-gpu")
        .await
        .expect_err("gives up");
    assert!(
        matches!(
            error,
            ScaleSetError::Unavailable {
                status: 500,
                attempts: 4,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient());
    rig.fake.clear_faults();

    // The GitHub side of the exchange is retried the same way.
    rig.fake.expire_scaleset_tokens(true, false);
    rig.fake.fail_next(
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        1,
    );
    assert!(
        rig.client
            .find_scale_set(1, "zq-gpu")
            .await
            .expect("find")
            .is_some()
    );
}

#[tokio::test]
async fn credentials_never_show() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    let jit = rig
        .client
        .generate_jit_config(set, "zq-gpu-0", "_work")
        .await
        .expect("jit");
    let printed = format!("{:?} {:?} {:?}", rig.client, session, jit);
    assert!(!printed.contains(rig.fake.token().as_str()));
    assert!(!printed.contains(jit.encoded.expose()));
    // No token travels in a URL: every path and query the fake saw is free of them.
    for request in rig.fake.requests() {
        let line = format!("{} {}", request.path, request.query);
        assert!(!line.contains(rig.fake.token().as_str()), "{line}");
        assert!(!line.contains("eyJ"), "no JWT in {line}");
    }
    // A refused credential is named, never quoted.
    rig.fake.expire_scaleset_tokens(true, true);
    rig.fake
        .fail_next_scaleset(ScaleSetEndpoint::Any, ScaleSetFault::Status(401), 10);
    let error = rig
        .client
        .find_scale_set(1, "x")
        .await
        .expect_err("refused");
    assert!(
        matches!(error, ScaleSetError::Unauthorized { .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("eyJ"), "{error}");
}

#[tokio::test]
async fn a_credential_never_goes_to_a_plain_http_host_elsewhere() {
    let client = ScaleSetClient::new(
        ClientConfig::new("http://10.1.2.3:8080", &scope()),
        Arc::new(registration_source("https://api.github.com", &scope(), "x")),
    );
    assert!(matches!(client, Err(ScaleSetError::InsecureUrl { .. })));
}

#[tokio::test]
async fn the_control_api_steers_the_service_over_http() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    let http = Http::new();
    let url = |path: &str| format!("{}{path}", rig.fake.url());

    let queued = http
        .send(
            Method::POST,
            &url("/_fake/jobs"),
            None,
            Some(&json!({"scale_set_id": set, "count": 1})),
        )
        .await;
    assert_eq!(queued.status, 201);
    let by_labels = http
        .send(
            Method::POST,
            &url("/_fake/jobs"),
            None,
            Some(&json!({"scope": "repo:acme/zquic", "labels": ["gpu"], "count": 1})),
        )
        .await;
    assert_eq!(by_labels.status, 201);
    let typo = http
        .send(
            Method::POST,
            &url("/_fake/jobs"),
            None,
            Some(&json!({"scale_set": set})),
        )
        .await;
    assert_eq!(typo.status, 400);

    let mut tracker = JobTracker::new();
    let (message, _) = next_message(&rig.client, &session, &mut tracker, 4).await;
    assert_eq!(kinds(&message), ["assigned", "assigned"]);
    rig.client
        .generate_jit_config(set, "zq-gpu-0", "_work")
        .await
        .expect("jit");

    let started = http
        .send(
            Method::POST,
            &url(&format!("/_fake/scalesets/{set}/runners/zq-gpu-0/start")),
            None,
            None,
        )
        .await;
    assert_eq!(started.status, 200, "{:?}", started.body);
    assert_eq!(started.body["state"], "running");
    let stats = http
        .send(
            Method::GET,
            &url(&format!("/_fake/scalesets/{set}/statistics")),
            None,
            None,
        )
        .await;
    assert_eq!(stats.body["totalRunningJobs"], 1);
    assert_eq!(stats.body["totalBusyRunners"], 1);
    let completed = http
        .send(
            Method::POST,
            &url(&format!("/_fake/scalesets/{set}/runners/zq-gpu-0/complete")),
            None,
            Some(&json!({"result": "failed"})),
        )
        .await;
    assert_eq!(
        completed.body["state"],
        json!({"completed": {"result": "failed"}})
    );

    let waiting = rig
        .fake
        .jobs()
        .into_iter()
        .find(|j| j.state == JobState::Assigned)
        .expect("an assigned job");
    let reassigned = http
        .send(
            Method::POST,
            &url(&format!("/_fake/jobs/{}/reassign", waiting.job_id)),
            None,
            None,
        )
        .await;
    assert_eq!(reassigned.body["reassignments"], 1);

    let listed = http
        .send(
            Method::GET,
            &url("/_fake/scalesets?scope=repo:acme/zquic"),
            None,
            None,
        )
        .await;
    assert_eq!(listed.body[0]["name"], "zq-gpu");
    assert_eq!(listed.body[0]["session"][1], "fleet-test");

    let fault = http
        .send(
            Method::POST,
            &url("/_fake/scaleset-faults"),
            None,
            Some(&json!({"endpoint": "scale_sets", "status": 503, "next": 1})),
        )
        .await;
    assert_eq!(fault.status, 204);
    rig.fake.clear_requests();
    rig.client
        .find_scale_set(1, "zq-gpu")
        .await
        .expect("retried");
    assert_eq!(rig.fake.requests()[0].status, 503);
    let expire = http
        .send(
            Method::POST,
            &url("/_fake/scaleset-tokens/expire"),
            None,
            Some(&json!({"admin": true})),
        )
        .await;
    assert_eq!(expire.status, 204);
    rig.client
        .find_scale_set(1, "zq-gpu")
        .await
        .expect("exchanged again");
    assert_eq!(rig.fake.admin_token_exchanges(), 2);
}

#[tokio::test]
async fn jobs_reach_only_scale_sets_with_all_their_labels() {
    let rig = rig(fast()).await;
    let set = scale_set(&rig).await;
    let session = rig
        .client
        .create_session(set, "fleet-test")
        .await
        .expect("session");
    let queue = |labels: &[&str]| QueueJobs {
        scope: fake_scope(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        count: 1,
    };
    rig.fake.queue_jobs(&queue(&["GPU", "a100"]));
    rig.fake.queue_jobs(&queue(&["gpu", "h100"]));
    rig.fake.queue_jobs(&QueueJobs {
        scope: fake_github::Scope::repo(OWNER, "other"),
        ..queue(&["gpu"])
    });
    let mut tracker = JobTracker::new();
    let (message, _) = next_message(&rig.client, &session, &mut tracker, 8).await;
    assert_eq!(kinds(&message), ["assigned"]);
    assert_eq!(message.jobs[0].job().request_labels, ["GPU", "a100"]);
    let stats = rig.fake.scale_set_statistics(set).expect("statistics");
    assert_eq!(
        (stats.total_assigned_jobs, stats.total_available_jobs),
        (1, 0)
    );
}

#[tokio::test]
async fn messages_can_be_numbered_per_session() {
    let rig = rig(ScaleSetConfig {
        message_ids_per_session: true,
        ..fast()
    })
    .await;
    let set = scale_set(&rig).await;
    let mut ids = Vec::new();
    for owner in ["listener-1", "listener-2"] {
        let session = rig
            .client
            .create_session(set, owner)
            .await
            .expect("session");
        let mut tracker = JobTracker::new();
        rig.fake.queue_jobs_for_scale_set(set, 1).expect("jobs");
        let (message, _) = next_message(&rig.client, &session, &mut tracker, 4).await;
        ids.push(message.id);
        rig.client.delete_session(&session).await.expect("close");
    }
    assert_eq!(ids, [1, 1], "each session starts its own numbering");
}

#[tokio::test]
async fn scale_set_names_are_compared_without_regard_to_case() {
    let rig = rig(fast()).await;
    let id = scale_set(&rig).await;
    let again = rig
        .client
        .get_or_create_scale_set(&ScaleSetSpec::new("ZQ-GPU"))
        .await
        .expect("found");
    assert_eq!(
        again.scale_set().id,
        id,
        "the same scale set, found by name"
    );
    assert_eq!(rig.fake.scale_sets(None).len(), 1);
}

#[tokio::test]
async fn a_service_that_drops_extra_labels_keeps_only_the_name() {
    let rig = rig(ScaleSetConfig {
        drop_extra_labels: true,
        ..fast()
    })
    .await;
    scale_set(&rig).await;
    assert_eq!(rig.fake.scale_sets(None)[0].labels, ["zq-gpu"]);
}
