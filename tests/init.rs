//! `fleet init` through the built binary: where the repository comes from (a flag, the git
//! remote `origin`, neither), never overwriting a file without --force, and the GPU pool sized
//! to what NVML reports on the machine running the test.

use std::path::Path;
use std::process::{Command, Output};

fn fleet_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(args)
        .current_dir(dir)
        // Never let git look above the test's folder for a repository.
        .env("GIT_CEILING_DIRECTORIES", dir.parent().unwrap_or(dir))
        .env_remove("GIT_DIR")
        .env_remove("GITHUB_TOKEN")
        .output()
        .expect("run the fleet binary")
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git must be installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads and validates what init wrote, with fleet's own loader and `fleet validate`.
fn written(dir: &Path, file: &str) -> (String, fleet::spec::Spec) {
    let path = dir.join(file);
    let yaml = std::fs::read_to_string(&path).expect("init wrote the file");
    let out = fleet_in(dir, &["validate", "-f", file]);
    assert!(out.status.success(), "{}\n{yaml}", text(&out));
    let spec = fleet::spec::load(&path).expect("valid");
    (yaml, spec)
}

#[test]
fn with_repo_and_the_pools_this_machine_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fleet_in(
        dir.path(),
        &["-f", "ci.yaml", "init", "--repo", "Acme/zquic"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Wrote ci.yaml: fleet `zquic` for the repository Acme/zquic"));
    let (yaml, spec) = written(dir.path(), "ci.yaml");
    assert_eq!(spec.github.repo.as_deref(), Some("Acme/zquic"));
    let defaults = spec.defaults.as_ref().expect("defaults");
    assert_eq!(
        defaults.image.as_deref(),
        Some("ghcr.io/acme/arch-runner:2.336.0")
    );
    assert!(yaml.contains("built from ci/runner"), "{yaml}");
    assert_eq!(spec.pools["cpu"].count, Some(1));
    // The GPU pool follows what NVML says on the machine that runs the test.
    let gpus = fleet::observe::gpu::nvml_devices().unwrap_or_default();
    match spec.pools.get("gpu") {
        Some(pool) => {
            assert_eq!(pool.count, Some(gpus.len() as u32), "{yaml}");
            assert_eq!(pool.gpus, Some(fleet::spec::GpuRequest::Count(1)));
        }
        None => {
            assert!(
                gpus.is_empty(),
                "{} GPUs but no gpu pool:\n{yaml}",
                gpus.len()
            );
            assert!(
                yaml.contains("# No NVIDIA GPU was found through NVML on this machine"),
                "{yaml}"
            );
        }
    }
}

#[test]
fn with_org() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fleet_in(dir.path(), &["init", "--org", "acme", "--name", "acme-ci"]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, spec) = written(dir.path(), "fleet.yaml");
    assert_eq!(spec.github.org.as_deref(), Some("acme"));
    assert_eq!(spec.name, "acme-ci");
}

#[test]
fn from_the_origin_remote_in_both_url_forms() {
    let token = "ghp_initTESTtokenINaREMOTEurl000000000000";
    for (url, repo) in [
        ("git@github.com:acme/zquic.git", "acme/zquic"),
        ("ssh://git@github.com/acme/zquic-ssh.git", "acme/zquic-ssh"),
        ("https://github.com/acme/zquic-https", "acme/zquic-https"),
        (
            &format!("https://x-access-token:{token}@github.com/acme/with-token.git"),
            "acme/with-token",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        git(dir.path(), &["init", "-q"]);
        git(dir.path(), &["remote", "add", "origin", url]);
        let out = fleet_in(dir.path(), &["init"]);
        assert!(out.status.success(), "{url}: {}", text(&out));
        let (yaml, spec) = written(dir.path(), "fleet.yaml");
        assert_eq!(spec.github.repo.as_deref(), Some(repo), "{url}");
        assert_eq!(spec.name, repo.rsplit('/').next().expect("name"));
        assert!(yaml.contains("from the git remote `origin`"), "{yaml}");
        assert!(!text(&out).contains(token) && !yaml.contains(token));
    }
}

#[test]
fn without_repo_org_or_remote_it_asks_for_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fleet_in(dir.path(), &["init"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let message = text(&out);
    assert!(
        message.contains("no --repo or --org was given"),
        "{message}"
    );
    assert!(
        message.contains("pass --repo OWNER/NAME or --org NAME"),
        "{message}"
    );
    assert!(!dir.path().join("fleet.yaml").exists());

    // A remote that is not GitHub is no answer either.
    git(dir.path(), &["init", "-q"]);
    git(
        dir.path(),
        &["remote", "add", "origin", "git@gitlab.com:acme/zquic.git"],
    );
    let out = fleet_in(dir.path(), &["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("the `origin` remote is on gitlab.com, not GitHub"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("fleet.yaml").exists());
}

#[test]
fn never_overwrites_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, "mine\n").expect("write");
    let out = fleet_in(dir.path(), &["init", "--repo", "acme/zquic"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("fleet.yaml exists; `fleet init --force` overwrites it"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "mine\n");

    let out = fleet_in(dir.path(), &["init", "--repo", "acme/zquic", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, spec) = written(dir.path(), "fleet.yaml");
    assert_eq!(spec.github.repo.as_deref(), Some("acme/zquic"));
}

#[test]
fn bad_flags_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, message) in [
        (
            &["init", "--repo", "zquic"][..],
            "--repo expects OWNER/NAME",
        ),
        (
            &["init", "--org", "a_b"][..],
            "--org expects an organization name",
        ),
        (
            &["init", "--repo", "a/b", "--name", "UPPER"][..],
            "--name expects",
        ),
    ] {
        let out = fleet_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(message), "{args:?}: {}", text(&out));
    }
    assert!(!dir.path().join("fleet.yaml").exists());
}
