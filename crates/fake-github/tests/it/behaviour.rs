//! Stateful behaviour: registrations, conflicts, the request log, faults, latency, rate limit,
//! GitHub App tokens and the control API.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use fake_github::{AppConfig, Config, Fault, NewRunner, Scope, decode_jit_config};

use crate::common::{Gh, Http, app_jwt, now};

fn jit_body(name: &str) -> serde_json::Value {
    json!({"name": name, "runner_group_id": 1, "labels": ["self-hosted", "Linux", "X64", "gpu-a100"]})
}

#[tokio::test]
async fn jit_config_registers_an_offline_ephemeral_runner() {
    let gh = Gh::start(Config::default()).await;
    let scope = Scope::repo("octo", "hello");
    let r = gh
        .call(
            Method::POST,
            "/repos/octo/hello/actions/runners/generate-jitconfig",
            Some(&jit_body("fleet-gpu-0")),
        )
        .await;
    assert_eq!(r.status, 201);
    let id = r.body["runner"]["id"].as_u64().expect("id");
    assert_eq!(id, 1, "ids start at 1");

    let runners = gh.fake.runners(&scope);
    assert_eq!(runners.len(), 1);
    let runner = &runners[0];
    assert_eq!(runner.id, id);
    assert_eq!(runner.name, "fleet-gpu-0");
    assert_eq!(runner.status, "offline");
    assert!(!runner.busy && runner.ephemeral);
    assert_eq!(runner.labels, ["self-hosted", "Linux", "X64", "gpu-a100"]);
    assert_eq!(gh.fake.jit_configs_issued(), 1);

    // The config names the runner and carries no API token.
    let encoded = r.body["encoded_jit_config"].as_str().expect("config");
    let settings = decode_jit_config(encoded).expect("decodable config");
    assert_eq!(settings.name, "fleet-gpu-0");
    assert_eq!(settings.runner_id, id);
    assert_eq!(settings.github_url, "https://github.com/octo/hello");
    assert_eq!(settings.work_folder, "_work");
    let outer = String::from_utf8(base64_decode(encoded)).expect("utf-8");
    let outer: serde_json::Value = serde_json::from_str(&outer).expect("json");
    let mut everything = outer.to_string();
    for file in [".runner", ".credentials", ".credentials_rsaparams"] {
        let inner = base64_decode(outer[file].as_str().expect("file"));
        everything.push_str(&String::from_utf8(inner).expect("utf-8"));
    }
    assert!(everything.contains("fleet-gpu-0"));
    assert!(!everything.contains(&gh.fake.token()));

    // Same name again: 409, nothing new. Other scope: fine, ids keep growing.
    let r = gh
        .call(
            Method::POST,
            "/repos/octo/hello/actions/runners/generate-jitconfig",
            Some(&jit_body("fleet-gpu-0")),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.body["message"],
        "Already exists - A runner with the name fleet-gpu-0 already exists."
    );
    assert_eq!(gh.fake.runners(&scope).len(), 1);
    assert_eq!(gh.fake.jit_configs_issued(), 1);
    let r = gh
        .call(
            Method::POST,
            "/orgs/acme/actions/runners/generate-jitconfig",
            Some(&jit_body("fleet-gpu-0")),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["runner"]["id"], 2);

    // The runner connects and takes a job; GitHub removes it when the job ends.
    assert!(
        gh.fake
            .set_runner_state_by_name(&scope, "fleet-gpu-0", true, true)
    );
    let r = gh
        .get(&format!("/repos/octo/hello/actions/runners/{id}"))
        .await;
    assert_eq!(r.body["status"], "online");
    assert_eq!(r.body["busy"], true);
    assert_eq!(r.body["os"], "linux");
    assert!(gh.fake.remove_runner(&scope, id));
    assert!(gh.fake.runners(&scope).is_empty());
    assert!(!gh.fake.remove_runner(&scope, id));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

#[tokio::test]
async fn runner_groups_gate_jit_configs() {
    let gh = Gh::start(Config::default()).await;
    let group = gh.fake.add_runner_group("acme", "gpu");
    assert!(group > 1);
    let body = json!({"name": "g", "runner_group_id": group, "labels": ["gpu"]});
    let r = gh
        .call(
            Method::POST,
            "/orgs/acme/actions/runners/generate-jitconfig",
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["runner"]["runner_group_id"], group);
    let settings = decode_jit_config(r.body["encoded_jit_config"].as_str().unwrap_or_default())
        .expect("decodable");
    assert_eq!(settings.runner_group_id, group);
    // The group belongs to acme only; repositories only have the Default group.
    for path in [
        "/orgs/other/actions/runners/generate-jitconfig",
        "/repos/acme/app/actions/runners/generate-jitconfig",
    ] {
        let r = gh.call(Method::POST, path, Some(&body)).await;
        assert_eq!(r.status, 422, "{path}");
    }
}

#[tokio::test]
async fn busy_runners_cannot_be_deleted() {
    let gh = Gh::start(Config::default()).await;
    let scope = Scope::org("acme");
    let id = gh.fake.add_runner(
        &scope,
        NewRunner {
            name: "worker".into(),
            status_online: true,
            busy: true,
            ..NewRunner::default()
        },
    );
    let path = format!("/orgs/acme/actions/runners/{id}");
    let r = gh.call(Method::DELETE, &path, None).await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.body["message"],
        "Bad request - Runner \"worker\" is still running a job\""
    );
    assert_eq!(gh.fake.runners(&scope).len(), 1);
    assert!(gh.fake.set_runner_state(&scope, id, true, false));
    assert!(!gh.fake.set_runner_state(&scope, id + 1, true, false));
    assert!(
        !gh.fake
            .set_runner_state(&Scope::org("other"), id, true, false)
    );
    assert!(
        !gh.fake
            .set_runner_state_by_name(&scope, "nobody", true, false)
    );
    let r = gh.call(Method::DELETE, &path, None).await;
    assert_eq!(r.status, 204);
    assert!(gh.fake.runners(&scope).is_empty());
}

#[tokio::test]
async fn request_log_records_api_requests_only() {
    let gh = Gh::start(Config::default()).await;
    gh.get("/orgs/acme/actions/runners?per_page=5").await;
    gh.call(
        Method::POST,
        "/orgs/acme/actions/runners/registration-token",
        None,
    )
    .await;
    gh.http
        .send(
            Method::GET,
            &gh.url("/orgs/acme/actions/runners"),
            Some("token nope"),
            None,
        )
        .await;
    gh.get("/orgs/acme/actions/runners/77").await;
    // The control API is not logged.
    gh.http
        .send(Method::GET, &gh.url("/_fake/requests"), None, None)
        .await;
    let log = gh.fake.requests();
    let summary: Vec<(String, String, String, u16, bool)> = log
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.path.clone(),
                r.query.clone(),
                r.status,
                r.authenticated,
            )
        })
        .collect();
    let want = [
        ("GET", "/orgs/acme/actions/runners", "per_page=5", 200, true),
        (
            "POST",
            "/orgs/acme/actions/runners/registration-token",
            "",
            201,
            true,
        ),
        ("GET", "/orgs/acme/actions/runners", "", 401, false),
        ("GET", "/orgs/acme/actions/runners/77", "", 404, true),
    ]
    .map(|(m, p, q, s, a)| (m.to_owned(), p.to_owned(), q.to_owned(), s, a));
    assert_eq!(summary, want);
    assert_eq!(gh.fake.registration_tokens_issued(), 1);
    gh.fake.clear_requests();
    assert!(gh.fake.requests().is_empty());
}

/// Which of `n` requests failed, as a string of `x` (failed) and `.` (answered).
async fn failure_pattern(seed: u64, n: usize) -> String {
    let gh = Gh::start(Config {
        seed,
        ..Config::default()
    })
    .await;
    gh.fake.inject_faults(
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        0.3,
    );
    let mut pattern = String::new();
    for _ in 0..n {
        let r = gh.get("/orgs/acme/actions/runners").await;
        pattern.push(match r.status {
            200 => '.',
            502 => 'x',
            other => panic!("unexpected {other}"),
        });
    }
    pattern
}

#[tokio::test]
async fn faults_at_a_ratio_are_seeded() {
    let a = failure_pattern(7, 200).await;
    let b = failure_pattern(7, 200).await;
    assert_eq!(a, b, "same seed, same failures");
    let failures = a.matches('x').count();
    assert!(
        (30..=90).contains(&failures),
        "{failures} of 200 failed at ratio 0.3"
    );
    let c = failure_pattern(8, 200).await;
    assert_ne!(a, c, "another seed, other failures");
}

#[tokio::test]
async fn fail_next_then_recover() {
    let gh = Gh::start(Config::default()).await;
    gh.fake.fail_next(
        Fault::Status {
            status: 503,
            retry_after: Some(2),
        },
        2,
    );
    for _ in 0..2 {
        let r = gh.get("/orgs/acme/actions/runners").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("2"));
    }
    assert_eq!(gh.get("/orgs/acme/actions/runners").await.status, 200);

    gh.fake.fail_next(
        Fault::Status {
            status: 429,
            retry_after: Some(7),
        },
        1,
    );
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));

    gh.fake
        .fail_next(Fault::SecondaryRateLimit { retry_after: 60 }, 1);
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_ne!(r.header("x-ratelimit-remaining"), Some("0"));
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("secondary rate limit"), "{message}");

    gh.fake.fail_next(
        Fault::Forbidden {
            accepted_permissions: "administration=write".into(),
        },
        1,
    );
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-accepted-github-permissions"),
        Some("administration=write")
    );
    assert_eq!(
        r.body["message"],
        "Resource not accessible by personal access token"
    );

    // Queued faults come before the ratio fault; clear_faults removes both.
    gh.fake.inject_faults(
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        1.0,
    );
    gh.fake.fail_next(
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        1,
    );
    assert_eq!(gh.get("/rate_limit").await.status, 502);
    assert_eq!(gh.get("/rate_limit").await.status, 500);
    gh.fake.clear_faults();
    assert_eq!(gh.get("/rate_limit").await.status, 200);

    let statuses: Vec<u16> = gh.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200, 429, 403, 403, 502, 500, 200]);
}

#[tokio::test]
async fn timeout_fault_holds_the_request_but_not_shutdown() {
    let gh = Gh::start(Config::default()).await;
    gh.fake.fail_next(Fault::Timeout, 1);
    let held = tokio::time::timeout(
        Duration::from_millis(300),
        gh.get("/orgs/acme/actions/runners"),
    )
    .await;
    assert!(held.is_err(), "the request should still be held");
    let log = gh.fake.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, 504);
    // A later request is answered normally.
    assert_eq!(gh.get("/orgs/acme/actions/runners").await.status, 200);
    let started = Instant::now();
    gh.fake.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn latency_is_added() {
    let gh = Gh::start(Config::default()).await;
    gh.fake.set_latency(Duration::from_millis(250));
    let started = Instant::now();
    assert_eq!(gh.get("/orgs/acme/actions/runners").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
    gh.fake.set_latency(Duration::ZERO);
    let started = Instant::now();
    gh.get("/orgs/acme/actions/runners").await;
    assert!(started.elapsed() < Duration::from_millis(250));
}

#[tokio::test]
async fn rate_limit_counts_down_and_runs_out() {
    let gh = Gh::start(Config::default()).await;
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4999"));
    assert_eq!(r.header("x-ratelimit-used"), Some("1"));
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4998"));
    // /rate_limit is free and reports the same numbers.
    let r = gh.get("/rate_limit").await;
    assert_eq!(r.body["resources"]["core"]["remaining"], 4998);
    assert_eq!(r.body["rate"]["used"], 2);

    let reset = now() + 120;
    gh.fake.set_rate_limit(1, reset);
    assert_eq!(gh.get("/orgs/acme/actions/runners").await.status, 200);
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        r.header("x-ratelimit-reset"),
        Some(reset.to_string().as_str())
    );
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("API rate limit exceeded"), "{message}");
    assert_eq!(
        r.body["documentation_url"],
        "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
    );

    // Once the reset time has passed the limit refills.
    gh.fake.set_rate_limit(0, now().saturating_sub(1));
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4999"));
}

#[tokio::test]
async fn app_installation_token_flow() {
    let app = AppConfig {
        app_id: 12345,
        installation_id: 678,
    };
    let gh = Gh::start(Config {
        app: Some(app),
        ..Config::default()
    })
    .await;
    let jwt = format!("Bearer {}", app_jwt(json!(app.app_id), now() + 540));
    let r = gh
        .http
        .send(
            Method::GET,
            &gh.url("/orgs/acme/installation"),
            Some(&jwt),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["app_id"], app.app_id);
    let tokens_url = r.body["access_tokens_url"]
        .as_str()
        .expect("url")
        .to_owned();
    assert_eq!(tokens_url, gh.url("/app/installations/678/access_tokens"));

    let r = gh
        .http
        .send(Method::POST, &tokens_url, Some(&jwt), None)
        .await;
    assert_eq!(r.status, 201);
    let token = r.body["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("ghs_"));
    assert_ne!(token, gh.fake.token());

    // The installation token works for API calls, with either scheme.
    for auth in [format!("Bearer {token}"), format!("token {token}")] {
        let r = gh
            .http
            .send(
                Method::GET,
                &gh.url("/orgs/acme/actions/runners"),
                Some(&auth),
                None,
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert!(gh.fake.requests().last().is_some_and(|r| r.authenticated));

    // But not as a JWT, and a JWT is not an API token.
    let as_jwt = format!("Bearer {token}");
    let r = gh
        .http
        .send(Method::POST, &tokens_url, Some(&as_jwt), None)
        .await;
    assert_eq!(r.status, 401);
    let r = gh
        .http
        .send(
            Method::GET,
            &gh.url("/orgs/acme/actions/runners"),
            Some(&jwt),
            None,
        )
        .await;
    assert_eq!(r.status, 401);

    // Wrong issuer, expired: 401.
    for bad in [
        app_jwt(json!(999), now() + 540),
        app_jwt(json!(app.app_id), now() - 1),
        "not.a.jwt".to_owned(),
    ] {
        let r = gh
            .http
            .send(
                Method::POST,
                &tokens_url,
                Some(&format!("Bearer {bad}")),
                None,
            )
            .await;
        assert_eq!(r.status, 401, "{bad}");
    }
}

#[tokio::test]
async fn without_an_app_jwts_are_refused() {
    let gh = Gh::start(Config::default()).await;
    let jwt = format!("Bearer {}", app_jwt(json!(1), now() + 540));
    let r = gh
        .http
        .send(
            Method::POST,
            &gh.url("/app/installations/1/access_tokens"),
            Some(&jwt),
            None,
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn control_api_steers_the_fake() {
    let gh = Gh::start(Config::default()).await;
    let http = Http::new();
    let ctl = |path: &str| gh.url(&format!("/_fake{path}"));

    let r = http
        .send(
            Method::POST,
            &ctl("/runners"),
            None,
            Some(&json!({"scope": "org:acme", "name": "foreign", "labels": ["x"], "online": true, "busy": true})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_u64().expect("id");
    let runners = gh.fake.runners(&Scope::org("acme"));
    assert_eq!(runners.len(), 1);
    assert_eq!(
        (runners[0].status.as_str(), runners[0].busy),
        ("online", true)
    );

    let r = http
        .send(
            Method::POST,
            &ctl(&format!("/runners/{id}/state")),
            None,
            Some(&json!({"scope": "org:acme", "online": false, "busy": false})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "offline");
    let r = http
        .send(Method::GET, &ctl("/runners?scope=org:acme"), None, None)
        .await;
    assert_eq!(r.body[0]["name"], "foreign");
    let r = http
        .send(Method::GET, &ctl("/runners?scope=team:x"), None, None)
        .await;
    assert_eq!(r.status, 400);

    // Faults: next N, then ratio, then cleared.
    let r = http
        .send(
            Method::POST,
            &ctl("/faults"),
            None,
            Some(&json!({"status": 500, "next": 1})),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(gh.get("/orgs/acme/actions/runners").await.status, 500);
    assert_eq!(gh.get("/orgs/acme/actions/runners").await.status, 200);
    http.send(
        Method::POST,
        &ctl("/faults"),
        None,
        Some(&json!({"secondary_rate_limit": true, "retry_after": 5, "ratio": 1.0})),
    )
    .await;
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!((r.status, r.header("retry-after")), (403, Some("5")));
    http.send(Method::DELETE, &ctl("/faults"), None, None).await;
    assert_eq!(gh.get("/orgs/acme/actions/runners").await.status, 200);
    let r = http
        .send(
            Method::POST,
            &ctl("/faults"),
            None,
            Some(&json!({"ratio": 0.5})),
        )
        .await;
    assert_eq!(r.status, 400, "a fault needs a kind");
    http.send(
        Method::POST,
        &ctl("/faults"),
        None,
        Some(&json!({"secondary_rate_limit": 9, "next": 1})),
    )
    .await;
    let r = gh.get("/orgs/acme/actions/runners").await;
    assert_eq!((r.status, r.header("retry-after")), (403, Some("9")));

    // Latency and rate limit.
    http.send(
        Method::POST,
        &ctl("/latency"),
        None,
        Some(&json!({"ms": 150})),
    )
    .await;
    let started = Instant::now();
    gh.get("/orgs/acme/actions/runners").await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    http.send(
        Method::POST,
        &ctl("/latency"),
        None,
        Some(&json!({"ms": 0})),
    )
    .await;
    http.send(
        Method::POST,
        &ctl("/rate-limit"),
        None,
        Some(&json!({"remaining": 0, "reset": now() + 60})),
    )
    .await;
    assert_eq!(gh.get("/orgs/acme/actions/runners").await.status, 403);
    http.send(
        Method::POST,
        &ctl("/rate-limit"),
        None,
        Some(&json!({"remaining": 5000, "reset": now() + 60})),
    )
    .await;

    // The log, then clearing it; then removing the runner.
    let r = http.send(Method::GET, &ctl("/requests"), None, None).await;
    let log = r.body.as_array().expect("log");
    assert_eq!(log.len(), 7);
    assert_eq!(log[0]["status"], 500);
    assert_eq!(log[6]["status"], 403);
    let r = http
        .send(Method::DELETE, &ctl("/requests"), None, None)
        .await;
    assert_eq!(r.status, 204);
    assert!(gh.fake.requests().is_empty());
    let r = http
        .send(
            Method::DELETE,
            &ctl(&format!("/runners/{id}?scope=org:acme")),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = http
        .send(
            Method::DELETE,
            &ctl(&format!("/runners/{id}?scope=org:acme")),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(gh.fake.runners(&Scope::org("acme")).is_empty());
}

#[tokio::test]
async fn dropping_the_fake_stops_it() {
    let fake = fake_github::FakeGithub::start(Config::default())
        .await
        .expect("starts");
    let addr = fake.addr();
    assert!(fake.url().starts_with("http://127.0.0.1:"));
    drop(fake);
    // Graceful shutdown completes in the background; the port closes shortly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refuses_non_loopback_addresses() {
    let err =
        fake_github::FakeGithub::start_on(Config::default(), "0.0.0.0:0".parse().expect("addr"))
            .await
            .expect_err("must refuse");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
