//! The GitHub observer against the fake GitHub: pages, retries, rate limits, App auth; and
//! against small servers of the test's own: credentials never follow a redirect or a pagination
//! link to another server, and a list is read whole or not at all.

#[path = "support/recorder.rs"]
mod recorder;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_github::{AppConfig, Config, FakeGithub, Fault, NewRunner, Scope};
use fleet::github::{AppRefusal, Credentials, GithubClient, GithubError, GithubScope, RetryPolicy};
use recorder::{Recorder, installation_token, redirect, runner_page};

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(20),
        max_wait: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        rate_limit_wait: Duration::from_millis(100),
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
    // As GitHub asks: its media type on every request.
    for r in fake.requests() {
        assert_eq!(r.accept, "application/vnd.github+json", "{r:?}");
    }
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

/// A fresh RSA key for a GitHub App, in `dir`.
fn app_key(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("app.pem");
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-out", key.to_str().expect("utf-8"), "2048"])
        .output()
        .expect("openssl");
    assert!(status.status.success(), "openssl genrsa failed");
    key
}

fn app_credentials(key: &std::path::Path) -> Credentials {
    app_credentials_of(key, 42, 7)
}

fn app_credentials_of(key: &std::path::Path, app_id: u64, installation_id: u64) -> Credentials {
    Credentials::App {
        app_id,
        installation_id,
        key_pem: std::fs::read(key).expect("key"),
        key_path: key.display().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_app_installation_tokens_are_obtained_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = app_key(dir.path());
    let fake = FakeGithub::start(Config {
        app: Some(AppConfig {
            app_id: 42,
            installation_id: 7,
        }),
        ..Config::default()
    })
    .await
    .expect("fake");
    let gh =
        GithubClient::new(&fake.url(), repo().1, app_credentials(&key), quick()).expect("client");
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

/// A client of `url` with the token `secret-token`.
fn token_client(url: &str) -> GithubClient {
    GithubClient::new(
        url,
        repo().1,
        Credentials::Token("secret-token".into()),
        quick(),
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_loop_is_an_error_not_a_shorter_list() {
    // Every page says the next one is itself.
    let github = Recorder::start(|seen, own| runner_page(&format!("{own}{}", seen.target))).await;
    match token_client(&github.url).read().list_runners().await {
        Err(GithubError::Pagination { reason, .. }) => {
            assert!(reason.contains("links back"), "{reason}")
        }
        other => panic!("expected a pagination error, got {other:?}"),
    }
    assert_eq!(github.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_to_another_server_is_refused_and_never_followed() {
    let elsewhere = Recorder::bystander().await;
    let page_two = format!("{}/repos/acme/zq/actions/runners?page=2", elsewhere.url);
    let link = page_two.clone();
    let github = Recorder::start(move |_, _| runner_page(&link)).await;
    match token_client(&github.url).read().list_runners().await {
        Err(error @ GithubError::Pagination { .. }) => {
            assert!(error.to_string().contains(&page_two), "{error}")
        }
        other => panic!("expected a pagination error, got {other:?}"),
    }
    assert!(
        elsewhere.requests().is_empty(),
        "the other server was asked: {:?}",
        elsewhere.requests()
    );
    assert_eq!(
        github.requests().len(),
        1,
        "the link was not rewritten onto the API either: {:?}",
        github.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_server_is_an_error_and_the_token_stays_home() {
    let elsewhere = Recorder::bystander().await;
    let target = format!("{}/repos/acme/zq/actions/runners", elsewhere.url);
    let location = target.clone();
    let github = Recorder::start(move |_, _| redirect(&location)).await;
    match token_client(&github.url).read().list_runners().await {
        Err(GithubError::Redirected {
            status, location, ..
        }) => {
            assert_eq!(status, 302);
            assert_eq!(location, target);
        }
        other => panic!("expected a refused redirect, got {other:?}"),
    }
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect was followed: {:?}",
        elsewhere.requests()
    );
    let asked = github.requests();
    assert_eq!(asked.len(), 1, "a redirect is not retried: {asked:?}");
    assert!(
        asked[0]
            .authorization
            .as_deref()
            .is_some_and(|a| a.contains("secret-token")),
        "the API itself got the token: {asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_app_neither_the_jwt_nor_the_installation_token_follows_a_redirect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = app_key(dir.path());
    let elsewhere = Recorder::bystander().await;
    let away = format!("{}/app/installations/7/access_tokens", elsewhere.url);

    // The installation token request, which carries the App's JWT, is redirected.
    let github = Recorder::start(move |_, _| redirect(&away)).await;
    let gh =
        GithubClient::new(&github.url, repo().1, app_credentials(&key), quick()).expect("client");
    assert!(gh.read().list_runners().await.is_err());
    assert!(
        github.requests().iter().any(|r| r
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer "))),
        "the JWT went to the API: {:?}",
        github.requests()
    );

    // The installation token is issued, then the list is redirected.
    let away = format!("{}/repos/acme/zq/actions/runners", elsewhere.url);
    let github = Recorder::start(move |seen, _| {
        if seen.target.ends_with("/access_tokens") {
            installation_token("ghs_installation_secret")
        } else {
            redirect(&away)
        }
    })
    .await;
    let gh =
        GithubClient::new(&github.url, repo().1, app_credentials(&key), quick()).expect("client");
    assert!(matches!(
        gh.read().list_runners().await,
        Err(GithubError::Redirected { .. })
    ));
    assert!(
        github
            .requests()
            .iter()
            .any(|r| r.authorization.as_deref() == Some("Bearer ghs_installation_secret")),
        "the installation token went to the API: {:?}",
        github.requests()
    );
    assert!(
        elsewhere.requests().is_empty(),
        "a credential followed a redirect: {:?}",
        elsewhere.requests()
    );
}

// ---- GitHub's answers, one test each -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_429_is_waited_out_longer_each_time() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    let gh = client(&fake, quick()).await;
    fake.fail_next(
        Fault::Status {
            status: 429,
            retry_after: None,
        },
        2,
    );
    let started = Instant::now();
    gh.read().list_runners().await.expect("after two waits");
    // quick(): rate_limit_wait 100 ms, then 200 ms; never the 20 ms backoff of a 5xx.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_fleet_waits_is_an_error_not_a_shorter_wait() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    let gh = client(&fake, quick()).await;
    fake.fail_next(Fault::SecondaryRateLimit { retry_after: 60 }, 1);
    let started = Instant::now();
    let error = gh.read().list_runners().await.expect_err("60 s > 5 s");
    assert!(
        matches!(error, GithubError::RetryAfterTooLong { wait_secs: 60, .. }),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "no early retry");
    assert_eq!(fake.requests().len(), 1);
}

async fn app_fake() -> (FakeGithub, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = app_key(dir.path());
    let fake = FakeGithub::start(Config {
        app: Some(AppConfig {
            app_id: 42,
            installation_id: 7,
        }),
        ..Config::default()
    })
    .await
    .expect("fake");
    (fake, dir, key)
}

/// The error of a list with App credentials, after `fault` on the token request.
async fn app_refusal(
    credentials: impl FnOnce(&std::path::Path) -> Credentials,
    fault: Option<Fault>,
) -> GithubError {
    let (fake, _dir, key) = app_fake().await;
    if let Some(fault) = fault {
        fake.fail_next(fault, 1);
    }
    let gh = GithubClient::new(&fake.url(), repo().1, credentials(&key), quick()).expect("client");
    let error = gh.read().list_runners().await.expect_err("refused");
    assert!(!error.is_transient(), "{error} is not a network error");
    assert_eq!(
        fake.requests().len(),
        1,
        "a refusal is not retried: {:#?}",
        fake.requests()
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_installation_id_is_named_with_a_hint() {
    let error = app_refusal(|key| app_credentials_of(key, 42, 8), None).await;
    assert!(
        matches!(
            error,
            GithubError::AppRefused {
                reason: AppRefusal::UnknownInstallation,
                installation_id: 8,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.hint().expect("hint").contains("installation_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_app_is_named_with_a_hint() {
    let error = app_refusal(|key| app_credentials_of(key, 43, 7), None).await;
    assert!(
        matches!(
            error,
            GithubError::AppRefused {
                reason: AppRefusal::BadKey,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.hint().expect("hint").contains("private key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_named_with_a_hint() {
    let error = app_refusal(app_credentials, Some(Fault::ClockSkew)).await;
    assert!(
        matches!(
            error,
            GithubError::AppRefused {
                reason: AppRefusal::ClockSkew,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.hint().expect("hint").contains("clock"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_app_is_named_with_a_hint() {
    let error = app_refusal(app_credentials, Some(Fault::Suspended)).await;
    assert!(
        matches!(
            error,
            GithubError::AppRefused {
                reason: AppRefusal::Suspended,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.hint().expect("hint").contains("unsuspend"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghes_without_jit_is_told_from_a_missing_repository() {
    let fake = FakeGithub::start(Config::default()).await.expect("fake");
    let gh = client(&fake, quick()).await;
    fake.fail_next(
        Fault::Status {
            status: 404,
            retry_after: None,
        },
        1,
    );
    let error = gh
        .write()
        .generate_jitconfig("r-1", 1, &["self-hosted".into()], "_work")
        .await
        .expect_err("no JIT");
    assert!(matches!(error, GithubError::NoJit { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(fleet::github::JIT_MIN_GHES_VERSION)
    );
    // A repository that does not exist stays a 404 about the repository.
    let missing = GithubClient::new(
        &fake.url(),
        GithubScope::Repo {
            owner: "acme".into(),
            repo: "nope".into(),
        },
        Credentials::Token("not-the-token".into()),
        quick(),
    )
    .expect("client");
    let error = missing
        .write()
        .generate_jitconfig("r-1", 1, &["self-hosted".into()], "_work")
        .await
        .expect_err("refused");
    assert!(!matches!(error, GithubError::NoJit { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_whose_total_count_moves_between_pages_is_read_again() {
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
    // Five runners finish and vanish right after the first page is served.
    fake.fail_next(Fault::RunnersVanish { count: 5 }, 1);
    let runners = gh.read().list_runners().await.expect("runners");
    assert_eq!(runners.len(), 145, "a consistent list, not a shifted one");
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/actions/runners"))
        .count();
    assert_eq!(lists, 4, "two pages, then both again");
}
