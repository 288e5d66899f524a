//! `fleet validate` on files written to hurt it, through the built binary: deep nesting, a
//! file too large to read, and credentials written where they never belong.

use std::path::Path;
use std::process::{Command, Output};

fn validate(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["validate", "-f"])
        .arg(path)
        .env_remove("GITHUB_TOKEN")
        .output()
        .expect("run the fleet binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `fleet validate` on `spec` written to a file of its own.
fn validate_text(spec: &str) -> (Output, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, spec).expect("write spec");
    let out = validate(&file);
    let all = text(&out);
    (out, all)
}

const HEAD: &str = "version: 1\nname: demo\ngithub:\n  repo: acme/demo\n";
const DEPTH_ERROR: &str = "expected at most 64 levels of lists and mappings inside each other";
const BYTES: usize = 40 * 1024;

/// Exit 1 (not a signal: `code()` is `None` for a process killed by one), the depth error,
/// and the spot where nesting went past the limit.
fn assert_refused_for_depth(name: &str, spec: &str, at: &str) {
    assert!(spec.len() >= BYTES, "{name}: only {} bytes", spec.len());
    let (out, all) = validate_text(spec);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name}: {:?}\n{all}",
        out.status
    );
    assert!(all.contains(DEPTH_ERROR), "{name}:\n{all}");
    assert!(
        all.contains(&format!("fleet.yaml:{at}\n")),
        "{name}: not at {at}:\n{all}"
    );
    assert!(!all.contains("panicked"), "{name}:\n{all}");
    // The code frame shows a window of the line, not 40 KiB of it.
    assert!(all.len() < 4096, "{name}: {} bytes of output", all.len());
}

#[test]
fn forty_kib_of_nested_block_sequences_is_refused_for_depth() {
    // `labels:` opens level 4 (document, pools, cpu, labels) at column 7: the 62nd `- `
    // opens level 65.
    let spec = format!(
        "{HEAD}pools:\n  cpu:\n    count: 1\n    image: x\n    labels:\n      {}x\n",
        "- ".repeat(BYTES / 2)
    );
    assert_refused_for_depth("block sequences", &spec, &format!("10:{}", 7 + 2 * 61));
}

#[test]
fn forty_kib_of_nested_flow_sequences_is_refused_for_depth() {
    let spec = format!(
        "{HEAD}pools: {}x{}\n",
        "[".repeat(BYTES / 2),
        "]".repeat(BYTES / 2)
    );
    // The scanner looks ahead over flow collections and stops at 255 nested `[`.
    assert_refused_for_depth("flow sequences", &spec, "5:263");
}

#[test]
fn forty_kib_of_nested_flow_mappings_is_refused_for_depth() {
    let spec = format!(
        "{HEAD}pools: {}x{}\n",
        "{a: ".repeat(BYTES / 4),
        "}".repeat(BYTES / 4)
    );
    let (out, all) = validate_text(&spec);
    assert_eq!(out.status.code(), Some(1), "{:?}\n{all}", out.status);
    assert!(all.contains(DEPTH_ERROR), "{all}");
    assert!(all.contains("fleet.yaml:5:"), "{all}");
}

#[test]
fn forty_kib_of_nested_block_mappings_is_refused_for_depth() {
    let mut spec = format!("{HEAD}pools:\n");
    let mut depth = 1;
    while spec.len() < BYTES {
        spec.push_str(&" ".repeat(depth));
        spec.push_str("k:\n");
        depth += 1;
    }
    spec.push_str(&" ".repeat(depth));
    spec.push_str("x\n");
    // The document is level 1, the mapping of `pools` (line 6) level 2: line 6 + 63 opens
    // level 65, indented by 64.
    assert_refused_for_depth("block mappings", &spec, &format!("{}:{}", 6 + 63, 65));
}

#[test]
fn nesting_through_aliases_is_refused_for_depth() {
    let deep = format!("{}x{}", "[".repeat(60), "]".repeat(60));
    let mut spec = format!(
        "{HEAD}x: &a {deep}\npools:\n  cpu: {{ count: 1, image: x, labels: [[[[[*a]]]]] }}\n"
    );
    spec.push_str(&format!("# {}\n", "padding ".repeat(BYTES / 8)));
    // Four `[` inside `labels` put the alias at level 8; its 60 levels make 68.
    assert_refused_for_depth("aliases", &spec, "7:43");
}

/// One 900 KB anchored scalar and 10,000 aliases fit in 1 MiB and would expand to 9 GB:
/// refused by the bytes the aliases expand to, quickly and without the memory.
#[test]
fn an_alias_bomb_of_one_large_scalar_is_refused_by_size() {
    let big = "x".repeat(900_000);
    let aliases = "*b, ".repeat(10_000);
    let spec = format!(
        "{HEAD}pools:\n  cpu:\n    count: 1\n    image: x\n    description: &b {big}\n    labels: [{aliases}]\n"
    );
    assert!(spec.len() < 1 << 20);
    let started = std::time::Instant::now();
    let (out, all) = validate_text(&spec);
    let shown: String = all.chars().take(2000).collect();
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(all.contains("more than 4194304 bytes (4 MiB)"), "{shown}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_file_over_one_mib_is_refused_before_it_is_parsed() {
    let limit = 1 << 20;
    let spec = format!("{HEAD}# {}\n", "x".repeat(limit));
    let (out, all) = validate_text(&spec);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("too large for a fleet spec: {} bytes", spec.len())),
        "{all}"
    );
    assert!(all.contains("the limit is 1048576 bytes (1 MiB)"), "{all}");
    // One MiB exactly is still read.
    let spec = format!("{HEAD}pools:\n  cpu: {{ count: 1, image: x }}\n# ");
    let padded = format!("{spec}{}\n", "x".repeat(limit - spec.len() - 1));
    assert_eq!(padded.len(), limit);
    let (out, all) = validate_text(&padded);
    assert_eq!(out.status.code(), Some(0), "{all}");
}

/// The `auth` sections of specs that write a secret there, and the secret each must never
/// print.
const SECRETS: &[(&str, &str)] = &[
    // An unknown key holding a GitHub token.
    (
        "  auth:\n    token: ghp_0123456789abcdefABCDEF0123456789abcd\n",
        "ghp_0123456789abcdef",
    ),
    // An unknown key holding something no pattern recognizes.
    ("  auth:\n    password: hunter2-correct-horse\n", "hunter2"),
    // The token itself where the name of its variable belongs.
    (
        "  auth:\n    token_env: ghp_R3alL00kingT0kenValue0123456789abcd\n",
        "R3alL00king",
    ),
    // A value the schema refuses: its "found ..." message must not quote it.
    ("  auth:\n    token_env: \"s3cr3t value!\"\n", "s3cr3t"),
    // A fine-grained token in a flow mapping, then another problem after it on the line.
    (
        "  auth: { tok: github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz0123456789, token_env: 1 }\n",
        "github_pat_11ABCDEFG0",
    ),
    // A PEM key pasted instead of the path of its file, as a block scalar.
    (
        "  auth:\n    app:\n      app_id: 1\n      installation_id: 2\n      private_key_file: |\n        -----BEGIN RSA PRIVATE KEY-----\n        MIIEsecretkeymaterialAAAA\n        -----END RSA PRIVATE KEY-----\n",
        "secretkeymaterial",
    ),
];

#[test]
fn secrets_under_github_auth_never_reach_the_output() {
    for (auth, secret) in SECRETS {
        let spec = format!("{HEAD}{auth}pools:\n  cpu: {{ count: 1, image: x }}\n");
        assert_refused_without(&spec, secret);
    }
}

#[test]
fn a_secret_aliased_into_auth_is_masked_where_it_is_written() {
    // The frame of the unknown key `x` shows the anchor's line: the value is masked there.
    let spec = "version: 1\nname: demo\nx: &t plain-secret-value\ngithub:\n  repo: acme/demo\n  auth:\n    token: *t\npools:\n  cpu: { count: 1, image: x }\n";
    let all = assert_refused_without(spec, "plain-secret-value");
    assert!(all.contains("unknown field `x`"), "{all}");
    // The scalar's span starts at its anchor: both are masked.
    assert!(all.contains("3 | x: ***"), "{all}");
}

/// Exit 1 with a report, and `secret` nowhere in the output; the output.
fn assert_refused_without(spec: &str, secret: &str) -> String {
    let (out, all) = validate_text(spec);
    assert_eq!(out.status.code(), Some(1), "{spec}\n{all}");
    assert!(all.contains("problem(s) found"), "{spec}\n{all}");
    assert!(!all.contains("YAML syntax error"), "{spec}\n{all}");
    assert!(!all.contains(secret), "{secret} printed for\n{spec}\n{all}");
    all
}

#[test]
fn the_committed_token_fixture_never_shows_its_token() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/invalid/19-github-token-in-spec.yaml");
    let out = validate(&fixture);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("unknown field `token`"), "{all}");
    assert!(!all.contains("ghp_0123456789abcdef"), "{all}");
    assert!(!all.contains("0123456789abcdef"), "{all}");
}

#[test]
fn a_credential_outside_auth_is_masked_in_the_frame_and_the_message() {
    let token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    let spec = format!(
        "{HEAD}pools:\n  cpu: {{ count: 1, image: x, labels: [{token}], runner_group: x }}\n"
    );
    let (out, all) = validate_text(&spec);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains(token), "{all}");
    assert!(all.contains("<redacted>"), "{all}");
}

#[cfg(unix)]
mod tls {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tls_spec(dir: &Path) -> std::path::PathBuf {
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.join(file), "only the file's presence and mode matter\n")
                .expect("write TLS file");
        }
        let file = dir.join("fleet.yaml");
        std::fs::write(
            &file,
            format!("{HEAD}hosts:\n  tower:\n    docker: tcp://tower.lan:2376\n    tls: {{ ca: ca.pem, cert: cert.pem, key: key.pem }}\npools:\n  cpu: {{ count: 1, image: x }}\n"),
        )
        .expect("write spec");
        file
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_tcp_host_with_private_tls_files_validates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = tls_spec(dir.path());
        chmod(&dir.path().join("key.pem"), 0o600);
        let out = validate(&spec);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!text(&out).contains("only the file's presence"));
    }

    #[test]
    fn a_readable_key_or_a_missing_certificate_names_the_host_and_the_endpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = tls_spec(dir.path());
        chmod(&dir.path().join("key.pem"), 0o640);
        std::fs::remove_file(dir.path().join("cert.pem")).expect("remove cert");
        let out = validate(&spec);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        let at = "host `tower` (docker: tcp://tower.lan:2376)";
        // One message whatever is wrong: a plan's output says nothing of the mode or of
        // whether a file exists (docs/security.md, "Files the spec names").
        for file in ["key.pem", "cert.pem"] {
            let shown = format!(
                "{at}: the TLS client {} file {}/{file} is not usable",
                if file == "key.pem" {
                    "key"
                } else {
                    "certificate"
                },
                dir.path().display()
            );
            assert!(all.contains(&shown), "{shown} in {all}");
        }
        assert!(
            !all.contains("0640") && !all.contains("No such file"),
            "{all}"
        );
        assert!(all.contains("fleet.yaml:8:"), "{all}");
        assert!(all.contains("chmod 600"), "{all}");
    }

    #[test]
    fn an_unreadable_certificate_is_refused() {
        // root reads every file whatever its mode: nothing to see then.
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = tls_spec(dir.path());
        chmod(&dir.path().join("key.pem"), 0o600);
        chmod(&dir.path().join("ca.pem"), 0o000);
        let readable = std::fs::File::open(dir.path().join("ca.pem")).is_ok();
        let out = validate(&spec);
        let all = text(&out);
        if readable {
            assert_eq!(out.status.code(), Some(0), "{all}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{all}");
            assert!(all.contains("the TLS CA certificate file"), "{all}");
            assert!(all.contains("is not usable"), "{all}");
        }
    }
}

/// Escape sequences in a spec and in a saved plan never reach the terminal: the code frame,
/// the message and `fleet show`'s error print them as visible escapes (src/escape.rs).
#[test]
fn escape_sequences_in_a_spec_or_a_saved_plan_are_printed_escaped() {
    let hostile = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m";
    let (out, all) = validate_text(&format!(
        "{HEAD}pools:\n  cpu:\n    count: 1\n    image: \"x{hostile}\"\n    network: \"n{hostile}\"\n"
    ));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        !all.contains('\u{1b}') && !all.contains('\u{9b}') && !all.contains('\u{7}'),
        "{all:?}"
    );
    assert!(all.contains("\\u{1b}[2J"), "{all}");

    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        format!(
            "{{\"format_version\": \"9{}\"}}",
            hostile
                .replace('\u{1b}', "\\u001b")
                .replace('\u{7}', "\\u0007")
                .replace('\u{9b}', "\\u009b")
        ),
    )
    .expect("write plan");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["show", plan.to_str().expect("utf-8")])
        .output()
        .expect("run fleet show");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("format_version 9"), "{all}");
    assert!(
        !all.contains('\u{1b}') && !all.contains('\u{9b}') && !all.contains('\u{7}'),
        "{all:?}"
    );
}
