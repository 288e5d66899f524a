//! The offline demo runs to its end on the real Docker engine and leaves nothing behind.

use std::process::Command;

fn count(args: &[&str]) -> usize {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count()
}

#[test]
fn the_offline_demo_plans_applies_replaces_and_cleans_up() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-demo"))
        .current_dir(root)
        .env_remove("GITHUB_TOKEN")
        .env_remove("GITHUB_API_URL")
        .env("NO_COLOR", "1")
        .output()
        .expect("run the demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for expected in [
        "is valid: fleet `fleet-demo`, 3 pool(s), 7 runner(s)",
        "Plan: 7 to create, 0 to replace, 0 to destroy, 0 registrations to remove.",
        "Apply complete: 7 created",
        "reason: container exited with code 137",
        "Apply complete: 0 created, 1 replaced",
        "No changes. The fleet matches fleet.yaml.",
        "fleet watch replaced",
        "autoscaled pool `burst`: 3 runners for 3 jobs",
        "autoscaled pool `burst`: 0 runners after the jobs.",
        "- scale set fleet-demo-burst",
        "Destroy complete: 0 created, 0 replaced, 7 destroyed",
        "Demo complete",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(!text.contains("demo-token-"), "the token was printed");
    let filter = "label=fleet.name=fleet-demo";
    assert_eq!(
        count(&["ps", "-aq", "--filter", filter]),
        0,
        "containers left behind"
    );
    assert_eq!(
        count(&["volume", "ls", "-q", "--filter", filter]),
        0,
        "volumes left behind"
    );
}
