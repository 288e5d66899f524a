//! `fleet import` through the built binary, on compose files in the shapes people use
//! (tests/fixtures/compose/): the fleet.yaml and the report are compared with snapshots, every
//! result is validated by `fleet validate`, and no fixture token ever reaches an output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compose");

/// Every made-up secret value in the fixtures.
const FIXTURE_SECRETS: &[&str] = &[
    "AFIXTURE0REGISTRATION0TOKEN0X",
    "AFIXTURE0REGISTRATION0TOKEN0Y",
    "ghp_fixtureFIXTUREfixtureFIXTURE0123456",
    "ghp_fixtureINNOCENTname0000000000000000",
];

/// Runs fleet in the fixtures folder, so that paths in its output are relative.
fn fleet_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(args)
        .current_dir(dir)
        .env_remove("GITHUB_TOKEN")
        .env("NO_COLOR", "1")
        .output()
        .expect("run the fleet binary")
}

fn fleet(args: &[&str]) -> Output {
    fleet_in(Path::new(FIXTURES), args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in FIXTURE_SECRETS {
        assert!(
            !text.contains(secret),
            "{what} holds a fixture secret:\n{text}"
        );
    }
}

/// The fixture folder's absolute path is replaced, for snapshots that hold on any machine.
fn redact(text: &str) -> String {
    let absolute = std::fs::canonicalize(FIXTURES).expect("fixtures");
    text.replace(&absolute.display().to_string(), "[FIXTURES]")
        .replace(FIXTURES, "[FIXTURES]")
}

/// Checks a fleet.yaml with the binary's own `fleet validate`.
fn assert_validates(text: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, text).expect("write");
    let out = fleet_in(dir.path(), &["validate", "-f", "fleet.yaml"]);
    assert!(
        out.status.success(),
        "fleet validate refused the import:\n{}{}\n{text}",
        stdout(&out),
        stderr(&out)
    );
}

/// Imports `paths`; the run must succeed, validate and hold no secret.
fn import_ok(paths: &[&str]) -> (String, String) {
    let mut args = vec!["import"];
    args.extend(paths);
    let out = fleet(&args);
    let (yaml, report) = (stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "fleet import {paths:?} failed:\n{report}"
    );
    assert_no_secret("stdout", &yaml);
    assert_no_secret("stderr", &report);
    assert_validates(&yaml);
    (yaml, redact(&report))
}

#[test]
fn a_runner_built_from_a_local_dockerfile() {
    let (yaml, report) = import_ok(&["local-build"]);
    insta::assert_snapshot!("local_build_fleet_yaml", yaml);
    insta::assert_snapshot!("local_build_report", report);
    // The decisions the issue names, each with its comment.
    let spec = fleet::spec::parse_str(&yaml, Path::new(".")).expect("valid");
    let pool = &spec.pools["gpu-runner"];
    assert_eq!(pool.gpus, Some(fleet::spec::GpuRequest::Count(1)));
    assert_eq!(pool.ephemeral, Some(false));
    assert_eq!(pool.docker_socket, Some(true));
    assert_eq!(pool.image.as_deref(), Some("local-build-gpu-runner:latest"));
    assert_eq!(spec.github.repo.as_deref(), Some("acme/zquic"));
    let env = pool.env.as_ref().expect("env");
    assert!(!env.contains_key("RUNNER_TOKEN") && !env.contains_key("NVIDIA_VISIBLE_DEVICES"));
    assert!(
        report.contains("RUNNER_TOKEN: a baked token was removed: fleet requests tokens itself")
    );
    assert!(report.contains("service `redis`: left out, not a runner"));
    assert!(report.contains("restart: unless-stopped: fleet replaces runners that exit"));
    assert!(report.contains("volume ./cache:/cache: a relative bind"));
}

#[test]
fn the_conventions_of_myoung34_github_runner() {
    let (yaml, report) = import_ok(&["myoung34"]);
    insta::assert_snapshot!("myoung34_fleet_yaml", yaml);
    insta::assert_snapshot!("myoung34_report", report);
    let spec = fleet::spec::parse_str(&yaml, Path::new(".")).expect("valid");
    let pool = &spec.pools["worker"];
    assert_eq!(pool.ephemeral, Some(true), "EPHEMERAL=true");
    assert_eq!(pool.labels.as_deref(), Some(&["docker".to_string()][..]));
    assert!(report.contains("its entrypoint registers the runner from its own variables"));
}

#[test]
fn an_organization_runner_of_myoung34_with_anchors() {
    let (yaml, report) = import_ok(&["myoung34-org"]);
    insta::assert_snapshot!("myoung34_org_fleet_yaml", yaml);
    insta::assert_snapshot!("myoung34_org_report", report);
    let spec = fleet::spec::parse_str(&yaml, Path::new(".")).expect("valid");
    assert_eq!(spec.github.org.as_deref(), Some("acme"));
    let pool = &spec.pools["org-gpu"];
    assert_eq!(pool.count, Some(2), "two services with the same settings");
    assert_eq!(pool.runner_group.as_deref(), Some("gpu-runners"));
    assert_eq!(
        pool.ephemeral,
        Some(false),
        "a volume on its configuration folder"
    );
    assert!(report.contains("ACCESS_TOKEN: a baked token was removed"));
    assert!(report.contains("APP_PRIVATE_KEY: a secret was removed"));
}

#[test]
fn a_swarm_deploy_section() {
    let (yaml, report) = import_ok(&["swarm/docker-compose.yml"]);
    insta::assert_snapshot!("swarm_fleet_yaml", yaml);
    insta::assert_snapshot!("swarm_report", report);
    let spec = fleet::spec::parse_str(&yaml, Path::new(".")).expect("valid");
    let cuda = &spec.pools["cuda"];
    assert_eq!((cuda.count, cuda.cpus), (Some(2), Some(8.0)));
    assert_eq!(cuda.memory.as_deref(), Some("32g"));
    assert_eq!(cuda.network.as_deref(), Some("ci-net"));
    let build = &spec.pools["build"];
    assert_eq!(
        (build.count, build.memory.as_deref()),
        (Some(4), Some("1536m"))
    );
    assert!(report.contains("NOTIFY_HOOK: a baked token was removed"));
    assert!(report.contains("deploy.placement: fleet has no such setting"));
}

/// The worked example of docs/migrating.md is this import, verbatim.
#[test]
fn the_worked_example_of_the_migration_guide() {
    let (yaml, report) = import_ok(&["zquic-ci"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("docs/examples/imported-fleet.yaml"))
        .expect("docs/examples/imported-fleet.yaml");
    assert_eq!(
        example, yaml,
        "regenerate docs/examples/imported-fleet.yaml"
    );
    let guide = std::fs::read_to_string(root.join("docs/migrating.md")).expect("the guide");
    let compose = std::fs::read_to_string(Path::new(FIXTURES).join("zquic-ci/docker-compose.yml"))
        .expect("the compose file");
    for (what, text) in [
        ("report", &report),
        ("fleet.yaml", &yaml),
        ("compose file", &compose),
    ] {
        assert!(
            guide.contains(text.as_str()),
            "docs/migrating.md lacks the {what}:\n{text}"
        );
    }
}

#[test]
fn several_files_that_disagree_on_the_repository() {
    let (yaml, report) = import_ok(&["local-build", "myoung34-org", "swarm"]);
    let spec = fleet::spec::parse_str(&yaml, Path::new(".")).expect("valid");
    assert_eq!(spec.github.repo.as_deref(), Some("acme/zquic"));
    assert_eq!(spec.name, "local-build", "the first file's project");
    assert!(
        report.contains(
            "the services do not all register in one place (organization acme for `org-gpu-1`"
        ),
        "{report}"
    );
    // Runner groups belong to organizations.
    assert_eq!(spec.pools["org-gpu"].runner_group, None);
    assert!(report.contains("runner group gpu-runners: runner groups belong to organizations"));
    let pools: Vec<&String> = spec.pools.keys().collect();
    assert_eq!(pools, ["build", "cuda", "gpu-runner", "org-gpu"]);
}

#[test]
fn the_command_line_chooses_the_place_and_the_name() {
    let out = fleet(&["import", "myoung34", "--org", "other", "--name", "ci"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec = fleet::spec::parse_str(&stdout(&out), Path::new(".")).expect("valid");
    assert_eq!(
        (spec.github.org.as_deref(), spec.name.as_str()),
        (Some("other"), "ci")
    );
    for (args, message) in [
        (
            &["import", "myoung34", "--repo", "nope"][..],
            "--repo expects OWNER/NAME",
        ),
        (
            &["import", "myoung34", "--name", "Not_Valid"][..],
            "--name expects 1 to 24",
        ),
    ] {
        let out = fleet(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn what_is_not_a_runner_compose_file_is_a_clear_error() {
    let empty = tempfile::tempdir().expect("tempdir");
    let empty_dir = empty.path().to_str().expect("utf-8").to_string();
    let cases: Vec<(String, String)> = vec![
        ("malformed".into(), "malformed/docker-compose.yml is not valid YAML:\n  5:".into()),
        ("no-runner".into(), "no runner service found in no-runner/docker-compose.yml: `web`, `db`".into()),
        ("not-compose/deployment.yaml".into(), "not-compose/deployment.yaml is not a docker-compose file: it has no `services` mapping".into()),
        ("absent".into(), "cannot read absent:".into()),
        (empty_dir.clone(), format!("{empty_dir} holds no compose file")),
    ];
    for (path, message) in cases {
        let out = fleet(&["import", &path]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{path}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(&message),
            "{path}: {err}"
        );
        assert!(out.stdout.is_empty(), "{path}: stdout not empty");
        assert!(!err.contains("panicked"));
        // The password of the `db` service is no runner's secret, and still never printed.
        assert!(!err.contains("example"), "{err}");
    }
}

#[test]
fn output_file_is_never_overwritten_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target: PathBuf = dir.path().join("fleet.yaml");
    let target_arg = target.to_str().expect("utf-8");
    let first = fleet(&["import", "swarm", "-o", target_arg]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(first.stdout.is_empty(), "-o writes nothing on stdout");
    assert!(stderr(&first).contains(&format!("Wrote {target_arg}.")));
    let written = std::fs::read_to_string(&target).expect("written");
    assert_no_secret("the written file", &written);
    assert_validates(&written);

    std::fs::write(&target, "mine\n").expect("overwrite by hand");
    let refused = fleet(&["import", "swarm", "-o", target_arg]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("exists; pass --force to overwrite it"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read_to_string(&target).expect("kept"), "mine\n");

    let forced = fleet(&["import", "swarm", "-o", target_arg, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(
        std::fs::read_to_string(&target).expect("rewritten"),
        written
    );
}

#[test]
fn a_secret_in_any_field_is_never_printed() {
    // Tokens in a URL's credentials, a build argument, a list-form variable and an interpolation
    // default; none of them may reach stdout or stderr.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  r:\n    image: myoung34/github-runner:latest\n    build:\n      context: .\n      args: [GH_TOKEN=ghp_secretBUILDARGvalue000000000000000000]\n    environment:\n      - REPO_URL=https://x:ghp_secretINTHEURL00000000000000000000000@github.com/acme/zquic\n      - MY_PASSWORD=hunter2hunter2\n      - WEBHOOK=${HOOK:-ghp_secretDEFAULTvalue0000000000000000000}\n",
    )
    .expect("write compose file");
    let out = fleet_in(dir.path(), &["import", "."]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{all}");
    for secret in [
        "ghp_secretBUILDARGvalue",
        "ghp_secretINTHEURL",
        "hunter2",
        "ghp_secretDEFAULTvalue",
    ] {
        assert!(!all.contains(secret), "{secret} was printed:\n{all}");
    }
    assert!(all.contains("repo: acme/zquic"), "{all}");
    for name in ["build argument GH_TOKEN", "MY_PASSWORD", "WEBHOOK"] {
        assert!(
            all.contains(&format!("removed   {name}")),
            "{name} not reported:\n{all}"
        );
    }
}

#[test]
fn an_enterprise_server_and_labels_from_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        "services:\n  r:\n    image: ghcr.io/actions/actions-runner:2.330.0\n    environment:\n      RUNNER_REPOSITORY_URL: https://ghe.acme.lan/tools/ci\n      RUNNER_LABELS: ${LABELS}\n",
    )
    .expect("write compose file");
    let out = fleet_in(dir.path(), &["import", "."]);
    let (yaml, report) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{report}");
    assert_validates(&yaml);
    let spec = fleet::spec::parse_str(&yaml, Path::new(".")).expect("valid");
    assert_eq!(spec.github.repo.as_deref(), Some("tools/ci"));
    assert_eq!(
        spec.github.api_url.as_deref(),
        Some("https://ghe.acme.lan/api/v3")
    );
    assert!(
        yaml.contains("# GitHub Enterprise Server on ghe.acme.lan"),
        "{yaml}"
    );
    assert_eq!(spec.pools["r"].labels, None);
    assert!(
        report.contains("left out  RUNNER_LABELS: its labels come from the shell"),
        "{report}"
    );
}

/// A compose file is anyone's input: `import` reads no build context outside its folder
/// (absolute, `..`, or through a symbolic link), says so in the report, and copies nothing
/// from there into fleet.yaml (docs/security.md, "YAML by size, import by folder").
#[test]
fn a_build_context_outside_the_compose_folder_is_not_read() {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        outside.path().join("entrypoint.sh"),
        "./config.sh --url https://github.com/outside/secretrepo --labels outsidelabel\n",
    )
    .expect("write the outside script");
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("linked")).expect("symlink");
    for context in [
        outside.path().display().to_string(),
        format!(
            "../{}",
            outside.path().file_name().expect("name").to_string_lossy()
        ),
        "linked".to_string(),
    ] {
        std::fs::write(
            dir.path().join("compose.yaml"),
            format!("services:\n  r:\n    image: myoung34/github-runner:latest\n    build:\n      context: {context}\n    environment:\n      REPO_URL: https://github.com/acme/zquic\n"),
        )
        .expect("write compose file");
        let out = fleet_in(dir.path(), &["import", "."]);
        let (yaml, report) = (stdout(&out), stderr(&out));
        assert!(out.status.success(), "{context}: {report}");
        for value in ["outside/secretrepo", "outsidelabel"] {
            assert!(
                !yaml.contains(value) && !report.contains(value),
                "{context}:\n{yaml}\n{report}"
            );
        }
        assert!(report.contains("was not read"), "{context}: {report}");
    }
}

/// A `dockerfile:` that names a FIFO, and a compose file over 1 MiB: refused, never waited on.
#[test]
fn a_fifo_dockerfile_does_not_hang_and_a_huge_compose_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = Command::new("mkfifo")
        .arg(dir.path().join("Dockerfile.fifo"))
        .status()
        .expect("mkfifo");
    assert!(made.success());
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  r:\n    image: myoung34/github-runner:latest\n    build:\n      context: .\n      dockerfile: Dockerfile.fifo\n    environment:\n      REPO_URL: https://github.com/acme/zquic\n",
    )
    .expect("write compose file");
    let started = std::time::Instant::now();
    let out = fleet_in(dir.path(), &["import", "."]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    let huge = dir.path().join("huge.yaml");
    let padding = format!("# {}\n", "x".repeat(1 << 20));
    std::fs::write(&huge, format!("{padding}services: {{}}\n")).expect("write huge");
    let out = fleet_in(dir.path(), &["import", "huge.yaml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("larger than 1048576 bytes"),
        "{}",
        stderr(&out)
    );
}
