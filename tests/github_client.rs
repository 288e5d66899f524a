//! The GitHub observer against the fake GitHub: pages, retries, rate limits, App auth.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_github::{AppConfig, Config, FakeGithub, Fault, NewRunner, Scope};
use fleet::github::{Credentials, GithubClient, GithubError, GithubScope, RetryPolicy};

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(20),
        max_wait: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
    }
}

fn repo() -> (Scope, GithubScope) {
    (
        Scope::Repo {
            owner: "acme".into(),
            repo: "zq".into(),
        },
        GithubScope::Repo {
            owner: "acme".into(),
            repo: "zq".into(),
        },
    )
}

async fn client(fake: &FakeGithub, policy: RetryPolicy) -> GithubClient {
    GithubClient::new(
        &fake.url(),
        repo().1,
        Credentials::Token(fake.token()),
        policy,
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_every_page_with_one_request_per_hundred_runners() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    for i in 0..250 {
        fake.add_runner(
            &repo().0,
            NewRunner {
                name: format!("r-{i:03}"),
                ..NewRunner::default()
            },
        );
    }
    let gh = client(&fake, quick()).await;
    let runners = gh.read().list_runners().await.expect("runners");
    assert_eq!(runners.len(), 250);
    let mut names: Vec<&str> = runners.iter().map(|r| r.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 250);
    assert_eq!(gh.stats().total(), 3, "ceil(250/100) list calls");
    assert!(fake.requests().iter().all(
        |r| r.method == "GET" && r.query.contains("per_page=100") || r.query.contains("page=")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_scope_reads_runner_groups() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    let id = fake.add_runner_group("acme", "gpu-builders");
    let gh = GithubClient::new(
        &fake.url(),
        GithubScope::Org("acme".into()),
        Credentials::Token(fake.token()),
        quick(),
    )
    .expect("client");
    let groups = gh.read().runner_groups().await.expect("groups");
    assert_eq!(groups.get("Default"), Some(&1));
    assert_eq!(groups.get("gpu-builders"), Some(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_and_gives_up_with_the_status() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    let gh = client(&fake, quick()).await;
    fake.fail_next(
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        2,
    );
    assert!(
        gh.read().list_runners().await.is_ok(),
        "two 502s then success"
    );
    fake.fail_next(
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        5,
    );
    match gh.read().list_runners().await {
        Err(GithubError::Unavailable {
            status: 500,
            attempts: 3,
            ..
        }) => {}
        other => panic!("expected Unavailable after 3 attempts, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_hangs_times_out_and_is_retried() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    let mut policy = quick();
    policy.request_timeout = Duration::from_millis(300);
    let gh = client(&fake, policy).await;
    fake.fail_next(Fault::Timeout, 1);
    let started = Instant::now();
    assert!(gh.read().list_runners().await.is_ok());
    assert!(started.elapsed() >= Duration::from_millis(300));
    fake.fail_next(Fault::Timeout, 5);
    match gh.read().list_runners().await {
        Err(GithubError::Transport { message, .. }) => {
            assert!(message.contains("no answer within"), "{message}")
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_as_github_asks() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    let gh = client(&fake, quick()).await;
    // Secondary limit with retry-after: 1.
    fake.fail_next(Fault::SecondaryRateLimit { retry_after: 1 }, 1);
    let started = Instant::now();
    assert!(gh.read().list_runners().await.is_ok());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Primary limit used up: wait until x-ratelimit-reset when it is close enough...
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    fake.set_rate_limit(0, now + 1);
    assert!(gh.read().list_runners().await.is_ok());
    assert!(gh.stats().rate_limit_remaining() > 0);

    // ...and fail clearly when it is not.
    fake.set_rate_limit(0, now + 3600);
    match gh.read().list_runners().await {
        Err(GithubError::RateLimited { wait_secs, .. }) => assert!(wait_secs > 3000),
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_app_installation_tokens_are_obtained_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("app.pem");
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-out", key.to_str().expect("utf-8"), "2048"])
        .output()
        .expect("openssl");
    assert!(status.status.success(), "openssl genrsa failed");
    let fake = FakeGithub::start(Config {
        app: Some(AppConfig {
            app_id: 42,
            installation_id: 7,
        }),
        ..Config::default()
    })
    .await
    .expect("fake");
    let gh = GithubClient::new(
        &fake.url(),
        repo().1,
        Credentials::App {
            app_id: 42,
            installation_id: 7,
            key_pem: std::fs::read(&key).expect("key"),
            key_path: key.display().to_string(),
        },
        quick(),
    )
    .expect("client");
    gh.read()
        .list_runners()
        .await
        .expect("runners with an installation token");
    gh.read().list_runners().await.expect("again");
    let token_requests = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/app/installations/7/access_tokens")
        .count();
    assert_eq!(
        token_requests,
        1,
        "the installation token is cached: {:#?}",
        fake.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_lists_are_answered_304_and_cost_no_rate_limit() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    for i in 0..150 {
        fake.add_runner(
            &repo().0,
            NewRunner {
                name: format!("r-{i:03}"),
                ..NewRunner::default()
            },
        );
    }
    let gh = client(&fake, quick()).await;
    let first = gh.read().list_runners().await.expect("first");
    let remaining = gh.stats().rate_limit_remaining();
    let second = gh.read().list_runners().await.expect("second");
    assert_eq!(first, second);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 304, 304],
        "two pages, then two conditional requests"
    );
    assert_eq!(
        gh.stats().rate_limit_remaining(),
        remaining,
        "304s are free"
    );
    // A change is seen at once.
    fake.add_runner(
        &repo().0,
        NewRunner {
            name: "new".into(),
            ..NewRunner::default()
        },
    );
    assert_eq!(gh.read().list_runners().await.expect("third").len(), 151);
}
