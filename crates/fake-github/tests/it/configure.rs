//! A runner registering itself as `config.sh` does (persistent runners), in-process and through
//! the control API.

use http::Method;
use serde_json::json;

use fake_github::{Config, RunnerConfiguration, Scope};

use crate::common::{Gh, Http};

async fn registration_token(gh: &Gh, scope: &Scope) -> String {
    let r = gh
        .call(
            Method::POST,
            &format!("{}/registration-token", scope.runners_path()),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn config_sh_registers_with_a_token_and_replace_keeps_the_id() {
    let gh = Gh::start(Config::default()).await;
    let org = Scope::org("acme");
    let gpu = gh.fake.add_runner_group("acme", "gpu");
    let token = registration_token(&gh, &org).await;
    let config = RunnerConfiguration {
        token: token.clone(),
        name: "zq-per-0".into(),
        labels: vec!["cuda".into()],
        runner_group: Some("GPU".into()),
        replace: false,
    };
    let first = gh.fake.configure_runner(&config).expect("registered");
    assert_eq!(first.labels, ["self-hosted", "Linux", "X64", "cuda"]);
    assert_eq!(
        first.runner_group_id, gpu,
        "groups are matched by name, any case"
    );
    assert_eq!((first.status.as_str(), first.ephemeral), ("offline", false));

    // The same name again: refused without --replace; replaced in place with it.
    let err = gh.fake.configure_runner(&config).expect_err("name taken");
    assert!(err.contains("same name"), "{err}");
    let again = RunnerConfiguration {
        labels: vec!["cuda-12".into()],
        replace: true,
        ..config.clone()
    };
    let replaced = gh.fake.configure_runner(&again).expect("replaced");
    assert_eq!(
        replaced.id, first.id,
        "actions/runner replaces the agent in place"
    );
    assert_eq!(replaced.labels, ["self-hosted", "Linux", "X64", "cuda-12"]);
    assert_eq!(gh.fake.runners(&org).len(), 1);

    // In another group the name is taken even with --replace.
    let default = RunnerConfiguration {
        runner_group: None,
        ..again.clone()
    };
    assert!(gh.fake.configure_runner(&default).is_err());

    // Tokens: an unknown one, and one of another scope.
    let bad = RunnerConfiguration {
        token: "NOTATOKEN".into(),
        ..again.clone()
    };
    assert!(gh.fake.configure_runner(&bad).is_err());
    let repo_token = registration_token(&gh, &Scope::repo("acme", "app")).await;
    let elsewhere = RunnerConfiguration {
        token: repo_token,
        name: "zq-per-1".into(),
        runner_group: None,
        ..again.clone()
    };
    let in_repo = gh.fake.configure_runner(&elsewhere).expect("repo runner");
    assert_eq!(in_repo.runner_group_id, 1);
    assert!(gh.fake.runners(&Scope::repo("acme", "app")).len() == 1);
    let unknown_group = RunnerConfiguration {
        runner_group: Some("nope".into()),
        name: "zq-per-2".into(),
        ..again
    };
    let err = gh
        .fake
        .configure_runner(&unknown_group)
        .expect_err("no group");
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test]
async fn the_control_api_configures_runners_too() {
    let gh = Gh::start(Config::default()).await;
    let http = Http::new();
    let scope = Scope::repo("octo", "hello");
    let token = registration_token(&gh, &scope).await;
    let url = gh.url("/_fake/runners/configure");
    let body = json!({"token": token, "name": "p-0", "labels": ["fleet.p"], "replace": true});
    let r = http.send(Method::POST, &url, None, Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_u64().expect("id");
    let r = http.send(Method::POST, &url, None, Some(&body)).await;
    assert_eq!((r.status, r.body["id"].as_u64()), (200, Some(id)));
    let r = http
        .send(
            Method::POST,
            &url,
            None,
            Some(&json!({"token": token, "name": "p-0"})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = http
        .send(
            Method::POST,
            &url,
            None,
            Some(&json!({"token": "X", "name": "p-1"})),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http
        .send(
            Method::POST,
            &url,
            None,
            Some(&json!({"token": token, "name": "p-1", "runner_group": "gpu"})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http
        .send(
            Method::POST,
            &url,
            None,
            Some(&json!({"token": token, "name": "p-1", "typo": true})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
}
