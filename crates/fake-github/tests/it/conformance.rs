//! Every endpoint, at both scopes, success and error answers: each JSON body must validate
//! against the OpenAPI response schema for its path, method and status.

use http::Method;
use serde_json::{Value, json};

use fake_github::{AppConfig, Config, Fault, Scope};

use crate::common::{Gh, Resp, app_jwt, check_github_headers, check_schema, coverage, now};

const APP: AppConfig = AppConfig {
    app_id: 42,
    installation_id: 4242,
};

fn app_config() -> Config {
    Config {
        app: Some(APP),
        ..Config::default()
    }
}

/// Asserts the status, GitHub's headers and the body's schema.
fn expect(resp: &Resp, status: u16, template: &str, method: &str) {
    assert_eq!(
        resp.status, status,
        "{method} {template}: expected {status}, got {}: {}",
        resp.status, resp.body
    );
    check_github_headers(resp);
    check_schema(resp, template, method);
}

async fn runner_endpoints(gh: &Gh, scope: &Scope, t: &str) {
    let p = scope.runners_path();
    let tp = |suffix: &str| format!("{t}{suffix}");

    let r = gh.get(&p).await;
    expect(&r, 200, &tp(""), "get");
    assert_eq!(r.body["total_count"], 0);

    // The runner applications offered for download, of the version the fake offers.
    let r = gh.get(&format!("{p}/downloads")).await;
    expect(&r, 200, &tp("/downloads"), "get");
    assert!(
        r.body
            .as_array()
            .is_some_and(|apps| apps.iter().any(|a| a["filename"]
                == format!(
                    "actions-runner-linux-x64-{}.tar.gz",
                    fake_github::DEFAULT_RUNNER_VERSION
                ))),
        "{}",
        r.body
    );

    // generate-jitconfig: 201, then 409 for the same name, 422 for bad input.
    let jit = json!({"name": "jit-1", "runner_group_id": 1, "labels": ["self-hosted", "Linux", "X64", "gpu"], "work_folder": "_work"});
    let r = gh
        .call(Method::POST, &format!("{p}/generate-jitconfig"), Some(&jit))
        .await;
    expect(&r, 201, &tp("/generate-jitconfig"), "post");
    let id = r.body["runner"]["id"].as_u64().expect("runner id");
    let r = gh
        .call(Method::POST, &format!("{p}/generate-jitconfig"), Some(&jit))
        .await;
    expect(&r, 409, &tp("/generate-jitconfig"), "post");
    for bad in [
        json!({"name": "jit-2", "runner_group_id": 1, "labels": []}),
        json!({"name": "jit-2", "runner_group_id": 999, "labels": ["gpu"]}),
        json!({"runner_group_id": 1, "labels": ["gpu"]}),
    ] {
        let r = gh
            .call(Method::POST, &format!("{p}/generate-jitconfig"), Some(&bad))
            .await;
        expect(&r, 422, &tp("/generate-jitconfig"), "post");
    }

    // A single runner.
    let r = gh.get(&format!("{p}/{id}")).await;
    expect(&r, 200, &tp("/{runner_id}"), "get");
    let r = gh.get(&format!("{p}/999999")).await;
    expect(&r, 404, &tp("/{runner_id}"), "get");

    // Labels, with every documented status.
    let labels = tp("/{runner_id}/labels");
    let label = tp("/{runner_id}/labels/{name}");
    let lp = format!("{p}/{id}/labels");
    let missing = format!("{p}/999999/labels");
    let r = gh.get(&lp).await;
    expect(&r, 200, &labels, "get");
    let r = gh.get(&missing).await;
    expect(&r, 404, &labels, "get");
    let r = gh
        .call(Method::POST, &lp, Some(&json!({"labels": ["extra"]})))
        .await;
    expect(&r, 200, &labels, "post");
    let r = gh
        .call(Method::POST, &lp, Some(&json!({"labels": []})))
        .await;
    expect(&r, 422, &labels, "post");
    let r = gh
        .call(Method::POST, &missing, Some(&json!({"labels": ["x"]})))
        .await;
    expect(&r, 404, &labels, "post");
    let r = gh
        .call(Method::PUT, &lp, Some(&json!({"labels": ["a", "b"]})))
        .await;
    expect(&r, 200, &labels, "put");
    let too_many: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
    let r = gh
        .call(Method::PUT, &lp, Some(&json!({ "labels": too_many })))
        .await;
    expect(&r, 422, &labels, "put");
    let r = gh
        .call(Method::PUT, &missing, Some(&json!({"labels": ["x"]})))
        .await;
    expect(&r, 404, &labels, "put");
    let r = gh.call(Method::DELETE, &format!("{lp}/a"), None).await;
    expect(&r, 200, &label, "delete");
    let r = gh.call(Method::DELETE, &format!("{lp}/Linux"), None).await;
    expect(&r, 422, &label, "delete");
    let r = gh.call(Method::DELETE, &format!("{lp}/nope"), None).await;
    expect(&r, 404, &label, "delete");
    let r = gh.call(Method::DELETE, &lp, None).await;
    expect(&r, 200, &labels, "delete");
    let names: Vec<&str> = r.body["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["self-hosted", "Linux", "X64"],
        "read-only labels stay"
    );
    let r = gh.call(Method::DELETE, &missing, None).await;
    expect(&r, 404, &labels, "delete");

    // Tokens.
    let r = gh
        .call(Method::POST, &format!("{p}/registration-token"), None)
        .await;
    expect(&r, 201, &tp("/registration-token"), "post");
    let r = gh
        .call(Method::POST, &format!("{p}/remove-token"), None)
        .await;
    expect(&r, 201, &tp("/remove-token"), "post");

    // Delete: busy 422, idle 204 (no body), then gone 404.
    assert!(gh.fake.set_runner_state(scope, id, true, true));
    let r = gh.call(Method::DELETE, &format!("{p}/{id}"), None).await;
    expect(&r, 422, &tp("/{runner_id}"), "delete");
    assert!(gh.fake.set_runner_state(scope, id, true, false));
    let r = gh.call(Method::DELETE, &format!("{p}/{id}"), None).await;
    expect(&r, 204, &tp("/{runner_id}"), "delete");
    assert!(r.body.is_null());
    let r = gh.call(Method::DELETE, &format!("{p}/{id}"), None).await;
    expect(&r, 404, &tp("/{runner_id}"), "delete");

    // Credentials: wrong token and none at all.
    let r = gh
        .http
        .send(Method::GET, &gh.url(&p), Some("token wrong"), None)
        .await;
    expect(&r, 401, &tp(""), "get");
    assert_eq!(r.body["message"], "Bad credentials");
    let r = gh.http.send(Method::GET, &gh.url(&p), None, None).await;
    expect(&r, 401, &tp(""), "get");

    // Faults and limits answer in GitHub's error shape too.
    gh.fake.fail_next(
        Fault::Forbidden {
            accepted_permissions: "administration=write".into(),
        },
        1,
    );
    let r = gh.get(&p).await;
    expect(&r, 403, &tp(""), "get");
    gh.fake
        .fail_next(Fault::SecondaryRateLimit { retry_after: 30 }, 1);
    let r = gh.get(&p).await;
    expect(&r, 403, &tp(""), "get");
    for status in [500, 502, 503] {
        gh.fake.fail_next(
            Fault::Status {
                status,
                retry_after: None,
            },
            1,
        );
        let r = gh.get(&p).await;
        expect(&r, status, &tp(""), "get");
    }
}

async fn installation(gh: &Gh, path: &str, template: &str) {
    let jwt = format!("Bearer {}", app_jwt(json!(APP.app_id), now() + 600));
    let r = gh
        .http
        .send(Method::GET, &gh.url(path), Some(&jwt), None)
        .await;
    expect(&r, 200, template, "get");
    assert_eq!(r.body["id"], APP.installation_id);
    // An API token is not an App JWT.
    let r = gh.get(path).await;
    expect(&r, 401, template, "get");
}

#[tokio::test]
async fn every_endpoint_answers_in_github_shapes() {
    let gh = Gh::start(app_config()).await;
    let repo = Scope::repo("octo", "hello");
    let org = Scope::org("acme");
    runner_endpoints(&gh, &repo, "/repos/{owner}/{repo}/actions/runners").await;
    runner_endpoints(&gh, &org, "/orgs/{org}/actions/runners").await;

    // Runner groups: Default first.
    gh.fake.add_runner_group("acme", "gpu");
    let r = gh.get("/orgs/acme/actions/runner-groups").await;
    expect(&r, 200, "/orgs/{org}/actions/runner-groups", "get");
    assert_eq!(r.body["runner_groups"][0]["id"], 1);
    assert_eq!(r.body["runner_groups"][0]["default"], true);
    assert_eq!(r.body["total_count"], 2);

    // Moving a runner between groups: 204 (no body), 404 for a group or runner not there.
    let gpu = gh.fake.add_runner_group("acme", "gpu-two");
    let runner = gh.fake.add_runner(
        &org,
        fake_github::NewRunner {
            name: "mover".into(),
            ..fake_github::NewRunner::default()
        },
    );
    let member = "/orgs/{org}/actions/runner-groups/{runner_group_id}/runners/{runner_id}";
    let path = |group: u64, runner: u64| {
        format!("/orgs/acme/actions/runner-groups/{group}/runners/{runner}")
    };
    let r = gh.call(Method::PUT, &path(gpu, runner), None).await;
    expect(&r, 204, member, "put");
    let group_of = |name: &str| {
        gh.fake
            .runners(&org)
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.runner_group_id)
    };
    assert_eq!(group_of("mover"), Some(gpu));
    for (group, id) in [(999, runner), (gpu, 999_999)] {
        let r = gh.call(Method::PUT, &path(group, id), None).await;
        expect(&r, 404, member, "put");
    }
    let r = gh
        .call(
            Method::PUT,
            &format!("/orgs/other/actions/runner-groups/{gpu}/runners/{runner}"),
            None,
        )
        .await;
    expect(&r, 404, member, "put");
    let r = gh.call(Method::DELETE, &path(gpu, runner), None).await;
    expect(&r, 204, member, "delete");
    assert_eq!(group_of("mover"), Some(1), "back in Default");
    let r = gh.call(Method::DELETE, &path(999, runner), None).await;
    expect(&r, 404, member, "delete");

    // GitHub App.
    installation(
        &gh,
        "/repos/octo/hello/installation",
        "/repos/{owner}/{repo}/installation",
    )
    .await;
    installation(&gh, "/orgs/acme/installation", "/orgs/{org}/installation").await;
    let tokens = "/app/installations/{installation_id}/access_tokens";
    let jwt = format!(
        "Bearer {}",
        app_jwt(json!(APP.app_id.to_string()), now() + 600)
    );
    let url = gh.url("/app/installations/4242/access_tokens");
    let r = gh.http.send(Method::POST, &url, Some(&jwt), None).await;
    expect(&r, 201, tokens, "post");
    let body = json!({"permissions": {"administration": "write"}});
    let r = gh
        .http
        .send(Method::POST, &url, Some(&jwt), Some(&body))
        .await;
    expect(&r, 201, tokens, "post");
    assert_eq!(r.body["permissions"], json!({"administration": "write"}));
    let r = gh
        .call(Method::POST, "/app/installations/4242/access_tokens", None)
        .await;
    expect(&r, 401, tokens, "post");
    let expired = format!("Bearer {}", app_jwt(json!(APP.app_id), now() - 10));
    let r = gh.http.send(Method::POST, &url, Some(&expired), None).await;
    expect(&r, 401, tokens, "post");
    let r = gh
        .http
        .send(
            Method::POST,
            &gh.url("/app/installations/1/access_tokens"),
            Some(&jwt),
            None,
        )
        .await;
    expect(&r, 404, tokens, "post");
    gh.fake.fail_next(
        Fault::Forbidden {
            accepted_permissions: "administration=write".into(),
        },
        1,
    );
    let r = gh.http.send(Method::POST, &url, Some(&jwt), None).await;
    expect(&r, 403, tokens, "post");

    // Rate limit: the endpoint, then exhaustion.
    let r = gh.get("/rate_limit").await;
    expect(&r, 200, "/rate_limit", "get");
    gh.fake.set_rate_limit(0, now() + 600);
    let r = gh.get("/orgs/acme/actions/runners").await;
    expect(&r, 403, "/orgs/{org}/actions/runners", "get");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    gh.fake.set_rate_limit(5000, now() + 600);

    // Unknown path.
    let r = gh.get("/repos/octo/hello/nothing-here").await;
    assert_eq!(r.status, 404);
    check_github_headers(&r);
    assert_eq!(r.body["message"], "Not Found");

    // Every documented (path, method, status) that a runner manager meets was validated.
    let seen = coverage().lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut expected: Vec<(String, &str, u16)> = Vec::new();
    for t in [
        "/repos/{owner}/{repo}/actions/runners",
        "/orgs/{org}/actions/runners",
    ] {
        let mut add = |suffix: &str, method: &'static str, statuses: &[u16]| {
            for &s in statuses {
                expected.push((format!("{t}{suffix}"), method, s));
            }
        };
        add("", "get", &[200]);
        add("/downloads", "get", &[200]);
        add("/generate-jitconfig", "post", &[201, 409, 422]);
        add("/{runner_id}", "get", &[200]);
        add("/{runner_id}", "delete", &[422]);
        add("/registration-token", "post", &[201]);
        add("/remove-token", "post", &[201]);
        add("/{runner_id}/labels", "get", &[200, 404]);
        add("/{runner_id}/labels", "post", &[200, 404, 422]);
        add("/{runner_id}/labels", "put", &[200, 404, 422]);
        add("/{runner_id}/labels", "delete", &[200, 404]);
        add("/{runner_id}/labels/{name}", "delete", &[200, 404, 422]);
    }
    expected.push(("/orgs/{org}/actions/runner-groups".into(), "get", 200));
    expected.push(("/repos/{owner}/{repo}/installation".into(), "get", 200));
    expected.push(("/orgs/{org}/installation".into(), "get", 200));
    for s in [201, 401, 403, 404] {
        expected.push((tokens.into(), "post", s));
    }
    expected.push(("/rate_limit".into(), "get", 200));
    let missing: Vec<String> = expected
        .into_iter()
        .filter(|(p, m, s)| !seen.contains(&(p.clone(), (*m).to_owned(), *s)))
        .map(|(p, m, s)| format!("{m} {p} {s}"))
        .collect();
    assert!(missing.is_empty(), "not validated: {missing:#?}");
}

#[tokio::test]
async fn jit_labels_follow_githubs_example() {
    // The description's example: the given labels come back, the ones GitHub applies itself
    // typed read-only, the rest custom.
    let gh = Gh::start(Config::default()).await;
    let body = json!({"name": "New runner", "runner_group_id": 1, "labels": ["self-hosted", "X64", "macOS", "no-gpu"], "work_folder": "_work"});
    let r = gh
        .call(
            Method::POST,
            "/orgs/octo-org/actions/runners/generate-jitconfig",
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 201);
    let labels: Vec<(String, String)> = r.body["runner"]["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or_default().to_owned(),
                l["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want = [
        ("self-hosted", "read-only"),
        ("X64", "read-only"),
        ("macOS", "read-only"),
        ("no-gpu", "custom"),
    ];
    assert_eq!(
        labels,
        want.map(|(n, t)| (n.to_owned(), t.to_owned())).to_vec()
    );
    assert_eq!(r.body["runner"]["status"], "offline");
    assert_eq!(r.body["runner"]["busy"], false);
    assert_eq!(r.body["runner"]["ephemeral"], true);
    assert_eq!(r.body["runner"]["os"], "unknown");
    assert!(r.body["encoded_jit_config"].is_string());
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_a_422() {
    let gh = Gh::start(Config::default()).await;
    let r = gh
        .http
        .send(
            Method::POST,
            &gh.url("/orgs/acme/actions/runners/generate-jitconfig"),
            Some(&gh.auth),
            Some(&Value::String("not an object".into())),
        )
        .await;
    assert_eq!(r.status, 422, "JSON of the wrong shape: {}", r.body);
    check_schema(&r, "/orgs/{org}/actions/runners/generate-jitconfig", "post");
}

/// The checker itself: it must reject wrong bodies, accept GitHub's `null`s only thanks to the
/// `nullable` rewrite, and check formats.
#[test]
fn schema_checker_is_not_a_rubber_stamp() {
    use crate::common::openapi_to_json_schema;

    let resp = |status: u16, body: Value| Resp {
        status,
        headers: http::HeaderMap::new(),
        body,
    };
    let rejects = |r: Resp, path: &'static str, method: &'static str| {
        std::panic::catch_unwind(move || check_schema(&r, path, method)).is_err()
    };
    let runner = json!({"id": 1, "name": "r", "os": "linux", "status": "online", "busy": false, "labels": [], "version": null});
    let get = "/orgs/{org}/actions/runners/{runner_id}";
    check_schema(&resp(200, runner.clone()), get, "get");
    let mut no_os = runner.clone();
    no_os.as_object_mut().map(|o| o.remove("os"));
    assert!(
        rejects(resp(200, no_os), get, "get"),
        "missing required field"
    );
    let mut bad_type = runner.clone();
    bad_type["busy"] = json!("no");
    assert!(rejects(resp(200, bad_type), get, "get"), "wrong type");
    let token = "/orgs/{org}/actions/runners/registration-token";
    assert!(
        rejects(
            resp(201, json!({"token": "T", "expires_at": "tomorrow"})),
            token,
            "post"
        ),
        "date-time format"
    );
    assert!(
        rejects(
            resp(422, json!({"message": "m"})),
            "/orgs/{org}/actions/runners/generate-jitconfig",
            "post"
        ),
        "422 needs documentation_url"
    );

    // Without the rewrite, `version: null` would fail; with it, only null is added.
    let mut schema = json!({"type": "object", "properties": {"version": {"type": "string", "nullable": true}, "nullable": {"type": "integer"}}});
    let raw = jsonschema::draft4::new(&schema).expect("compiles");
    assert!(!raw.is_valid(&json!({"version": null})));
    openapi_to_json_schema(&mut schema);
    let fixed = jsonschema::draft4::new(&schema).expect("compiles");
    assert!(fixed.is_valid(&json!({"version": null})));
    assert!(fixed.is_valid(&json!({"version": "2.329.0"})));
    assert!(!fixed.is_valid(&json!({"version": 3})));
    assert!(
        !fixed.is_valid(&json!({"nullable": null})),
        "a property named nullable is untouched"
    );
}
