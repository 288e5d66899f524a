//! Trust boundaries, through the fleet binary (docs/security.md): fleet.yaml cannot choose where
//! credentials go, no log level prints a JIT config or the token, the default output is fleet's
//! own words, and the plan workflow holds no write credential.

mod common;
#[path = "support/recorder.rs"]
mod recorder;

use std::path::PathBuf;

use common::{World, pool, stderr, stdout};
use fleet::github::{Credentials, GithubClient, GithubScope, RetryPolicy};
use recorder::Recorder;

/// Writes fleet.yaml with `github_extra` (indented lines under `github:`) and one CPU pool.
fn spec_with_github(w: &World, github_extra: &str) -> PathBuf {
    let path = w.dir.path().join("fleet.yaml");
    let text = format!(
        "version: 1\nname: {run}\ngithub:\n  repo: acme/{run}\n{github_extra}hosts:\n  local:\n    docker: unix:///var/run/docker.sock\n    gpus: none\npools:\n{pool}",
        run = w.run,
        pool = pool("eph", 1, true),
    );
    std::fs::write(&path, text).expect("write spec");
    path
}

#[test]
fn a_spec_api_url_other_than_the_machines_is_refused_before_any_request() {
    let w = World::new();
    let elsewhere = w.rt.block_on(Recorder::bystander());
    spec_with_github(&w, &format!("  api_url: {}/\n", elsewhere.url));

    // The machine trusts the fake (GITHUB_API_URL, set by `fleet`).
    let out = w.fleet(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(&elsewhere.url), "names the spec's URL: {err}");
    assert!(err.contains(&w.fake.url()), "names the trusted URL: {err}");
    assert!(
        err.contains("set GITHUB_API_URL=") && err.contains("remove github.api_url"),
        "says how to fix it: {err}"
    );

    // The machine sets nothing: it trusts https://api.github.com only.
    let out = w.fleet_with_env(
        &["plan"],
        &[("GITHUB_TOKEN", &w.fake.token()), ("GITHUB_API_URL", "")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("https://api.github.com"),
        "{}",
        stderr(&out)
    );

    assert!(
        elsewhere.requests().is_empty(),
        "the spec's server was asked: {:?}",
        elsewhere.requests()
    );
    assert!(
        w.fake.requests().is_empty(),
        "a request was sent before the check: {:?}",
        w.fake.requests()
    );
}

#[test]
fn with_a_github_app_the_jwt_never_reaches_a_spec_api_url() {
    let w = World::new();
    let key = w.dir.path().join("app.pem");
    let made = std::process::Command::new("openssl")
        .args(["genrsa", "-out", key.to_str().expect("utf-8"), "2048"])
        .output()
        .expect("openssl");
    assert!(made.status.success(), "openssl genrsa failed");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
    let elsewhere = w.rt.block_on(Recorder::bystander());
    spec_with_github(
        &w,
        &format!(
            "  api_url: {}\n  auth:\n    app: {{ app_id: 42, installation_id: 7, private_key_file: app.pem }}\n",
            elsewhere.url
        ),
    );
    let out = w.fleet(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("cannot choose where credentials go"),
        "{}",
        stderr(&out)
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the App's JWT went to the spec's server: {:?}",
        elsewhere.requests()
    );
}

/// Every JIT config the fake issued that appears in `text`: any run of base64 (or its tail
/// after an `=`, as in `ACTIONS_RUNNER_INPUT_JITCONFIG=...`) that decodes as one.
fn jit_configs_in(text: &str) -> Vec<String> {
    let base64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=';
    let mut found = Vec::new();
    for run in text.split(|c: char| !base64(c)).filter(|r| r.len() >= 40) {
        let starts = std::iter::once(0).chain(
            run.char_indices()
                .filter(|&(i, c)| c == '=' && run[i + 1..].starts_with(|n: char| n != '='))
                .map(|(i, _)| i + 1),
        );
        for start in starts {
            let candidate = &run[start..];
            if fake_github::decode_jit_config(candidate).is_some() {
                found.push(candidate.to_string());
            }
        }
    }
    found
}

#[test]
fn the_jit_config_search_finds_one_the_fake_issued() {
    let w = World::new();
    let config = w.rt.block_on(async {
        let gh = GithubClient::new(
            &w.fake.url(),
            GithubScope::Repo {
                owner: "acme".into(),
                repo: w.run.clone(),
            },
            Credentials::Token(w.fake.token()),
            RetryPolicy::default(),
        )
        .expect("client");
        gh.write()
            .generate_jitconfig(&format!("{}-eph-probe", w.run), 1, &["x".into()], "_work")
            .await
            .expect("a JIT config")
    });
    let secret = config.encoded.expose().to_string();
    // As bollard's debug log prints a create request, and as a Debug of its bytes.
    let log = format!(
        "DEBUG {{\"Env\":[\"RUNNER_NAME=x\",\"ACTIONS_RUNNER_INPUT_JITCONFIG={secret}\"]}}\nTRACE request: b\"{secret}\\n\""
    );
    assert_eq!(jit_configs_in(&log), [secret.clone(), secret]);
    assert!(
        jit_configs_in("nothing here, not even aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8=")
            .is_empty()
    );
}

#[test]
fn no_rust_log_prints_a_jit_config_or_the_token() {
    for rust_log in [
        "trace",
        "bollard::docker=trace,hyper=trace,hyper_util::client=trace,octocrab=trace,h2=trace",
    ] {
        let w = World::new();
        w.spec(&pool("eph", 2, true));
        let token = w.fake.token();
        let out = w.fleet_with_env(
            &["-vv", "apply", "--auto-approve"],
            &[("GITHUB_TOKEN", &token), ("RUST_LOG", rust_log)],
        );
        let everything = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "RUST_LOG={rust_log}:\n{everything}");
        assert_eq!(
            w.fake.jit_configs_issued(),
            2,
            "two runners were registered"
        );
        assert_eq!(w.container_names("eph").len(), 2);
        assert!(
            !everything.contains(&token),
            "RUST_LOG={rust_log} printed the token"
        );
        let leaked = jit_configs_in(&everything);
        assert!(
            leaked.is_empty(),
            "RUST_LOG={rust_log} printed {} JIT config(s)",
            leaked.len()
        );
    }
}

#[test]
fn by_default_only_fleet_speaks_when_github_cannot_be_reached() {
    let w = World::new();
    // A port nothing listens on: the listener is closed again at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let api_url = format!("http://{closed}");
    spec_with_github(&w, "");
    let out = w.fleet_with_env(
        &["plan"],
        &[
            ("GITHUB_TOKEN", &w.fake.token()),
            ("GITHUB_API_URL", &api_url),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("error: cannot reach GitHub at {api_url}")),
        "{err}"
    );
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        let fleets_own = line.starts_with("error: ")
            || line.starts_with("hint: ")
            || line.starts_with("No plan was made")
            || (line.contains(" WARN ") && line.contains("retrying in"));
        assert!(fleets_own, "not fleet's own words: {line:?}\n{err}");
    }
}

/// The jobs of a workflow file: `(name, text)`, from its two-space-indented keys under `jobs:`.
fn jobs(workflow: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("ci/github")
            .join(workflow),
    )
    .expect("read the workflow");
    let body = text.split_once("\njobs:\n").expect("a jobs: section").1;
    let mut jobs: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        let key = line
            .strip_prefix("  ")
            .filter(|rest| !rest.starts_with(' ') && !rest.starts_with('#'))
            .and_then(|rest| rest.strip_suffix(':'));
        match (key, jobs.last_mut()) {
            (Some(name), _) => jobs.push((name.to_string(), String::new())),
            (None, Some((_, job))) => {
                job.push_str(line);
                job.push('\n');
            }
            (None, None) => {}
        }
    }
    jobs
}

#[test]
fn the_plan_workflow_reads_only_and_runs_no_pull_request_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let plan = std::fs::read_to_string(root.join("ci/github/fleet-plan.yml")).expect("plan");
    let triggers = plan.split_once("\non:\n").expect("on:").1;
    let triggers = triggers.split_once("\n\n").map_or(triggers, |(t, _)| t);
    assert_eq!(
        triggers.lines().next().map(str::trim),
        Some("pull_request_target:"),
        "the base branch's workflow runs, not the pull request's"
    );
    let plan_jobs = jobs("fleet-plan.yml");
    assert!(plan_jobs.len() >= 3, "{plan_jobs:?}");
    for (name, job) in &plan_jobs {
        assert!(
            !job.contains("actions/checkout"),
            "job {name} checks out code: a pull request's code must never run here"
        );
        assert!(
            !job.contains("FLEET_GITHUB_TOKEN"),
            "job {name} has the write token"
        );
        if job.contains("secrets.") {
            assert!(
                job.contains("environment: fleet-plan"),
                "job {name} reads a secret outside the reviewed environment"
            );
            assert!(
                job.lines()
                    .filter(|l| l.contains("secrets."))
                    .all(|l| l.contains("secrets.FLEET_PLAN_TOKEN")),
                "job {name} reads a secret other than the read-only token"
            );
        }
    }
    assert!(
        plan_jobs
            .iter()
            .any(|(_, job)| job.contains("secrets.FLEET_PLAN_TOKEN")),
        "the plan job uses the read-only token"
    );

    let apply_jobs = jobs("fleet-apply.yml");
    let writers: Vec<&(String, String)> = apply_jobs
        .iter()
        .filter(|(_, job)| job.contains("secrets.FLEET_GITHUB_TOKEN"))
        .collect();
    assert_eq!(writers.len(), 1, "the write token lives in the apply job");
    assert!(
        writers[0].1.contains("environment: fleet-apply"),
        "the write token is a secret of the fleet-apply environment"
    );
}

/// Kills `fleet watch` when the test ends, also when it fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_history_database_holds_no_jit_config_and_no_token() {
    use std::time::{Duration, Instant};
    let w = World::new();
    w.spec(&pool("eph", 2, true));
    let token = w.fake.token();
    let dir = w.dir.path();
    let watch = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_fleet"))
            .current_dir(dir)
            .args(["-vv", "watch", "--resync", "1s"])
            .env("GITHUB_TOKEN", &token)
            .env("GITHUB_API_URL", w.fake.url())
            .env("FLEET_LOCK_DIR", dir)
            .env("STATE_DIRECTORY", dir)
            .env_remove("DOCKER_HOST")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn fleet watch"),
    );
    let until = |what: &str, check: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !check() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until("two runners", &|| w.container_names("eph").len() == 2);
    // A runner finishes its job: watch registers a replacement (a third JIT config).
    w.finish_job(&w.container_names("eph")[0]);
    until("a replacement", &|| {
        w.fake.jit_configs_issued() >= 3 && w.container_names("eph").len() == 2
    });
    std::thread::sleep(Duration::from_millis(1200));
    drop(watch);
    // apply records into the database watch made: destroy a runner by scaling down.
    w.spec(&pool("eph", 1, true));
    let out = w.apply();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    let db = dir.join(format!("{}.db", w.run));
    let mut everything = String::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{}.db", w.run))
        {
            let bytes = std::fs::read(entry.path()).expect("read");
            everything.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    let conn = fleet::history::open_read_only(&db).expect("history");
    let events = fleet::history::query::events(&conn, 0.0, f64::MAX).expect("events");
    assert!(
        events.iter().any(|e| e.source == "apply"),
        "apply recorded its steps"
    );
    assert!(
        events
            .iter()
            .any(|e| e.detail["action"] == "replace" || e.detail["action"] == "create")
    );
    everything.push_str(&serde_json::to_string(&events).expect("json"));
    for kind in ["runner", "host", "pool"] {
        let spans = fleet::history::query::spans(&conn, kind, 0.0, f64::MAX).expect("spans");
        everything.push_str(&serde_json::to_string(&spans).expect("json"));
    }
    let exits = fleet::history::query::exits(&conn, 0.0, f64::MAX).expect("exits");
    everything.push_str(&serde_json::to_string(&exits).expect("json"));
    assert!(!everything.contains(&token), "the database holds the token");
    let leaked = jit_configs_in(&everything);
    assert!(
        leaked.is_empty(),
        "the database holds {} JIT config(s)",
        leaked.len()
    );
}
