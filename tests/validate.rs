//! `fleet validate` and `fleet schema` through the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(args)
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

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The `error: ...` blocks of a validate run, one per diagnostic.
fn diagnostics(output: &str) -> Vec<String> {
    output
        .split("\nerror: ")
        .map(|b| b.trim_start_matches("error: ").to_string())
        .filter(|b| b.contains("-->"))
        .collect()
}

#[test]
fn every_invalid_fixture_gives_its_message_on_its_line() {
    let files = fixtures("invalid");
    assert!(files.len() >= 90, "only {} invalid fixtures", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let spec = std::fs::read_to_string(file).expect("read fixture");
        let line: usize = spec
            .lines()
            .find_map(|l| l.strip_prefix("# expect-line: "))
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} has no `# expect-line:`", file.display()));
        let message = spec
            .lines()
            .find_map(|l| l.strip_prefix("# expect-message: "))
            .unwrap_or_else(|| panic!("{} has no `# expect-message:`", file.display()));
        // Optional: the column too.
        let column = spec
            .lines()
            .find_map(|l| l.strip_prefix("# expect-column: "))
            .map(|c| format!("{}\n", c.trim()))
            .unwrap_or_default();
        let path = file.to_str().expect("utf-8 path");
        let out = fleet(&["validate", "-f", path]);
        let all = text(&out);
        let at = format!("{path}:{line}:{column}");
        let found = diagnostics(&all)
            .iter()
            .any(|d| d.contains(message) && d.contains(&at));
        if out.status.code() != Some(1) || !found || all.contains("panicked") {
            failures.push(format!(
                "{}: exit {:?}, wanted `{message}` at {line}:{column}, got:\n{all}",
                file.display(),
                out.status.code()
            ));
        }
        // Every problem gives a location and a code frame; nothing is printed on stdout.
        assert!(out.stdout.is_empty(), "{path}: stdout not empty");
        assert!(all.contains("nothing was changed"), "{path}: no summary");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_example_and_valid_fixtures_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = fixtures("valid");
    files.push(root.join("fleet.example.yaml"));
    for file in files {
        let out = fleet(&["validate", "-f", file.to_str().expect("utf-8 path")]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            text(&out)
        );
        assert!(text(&out).contains("is valid"));
    }
}

#[test]
fn the_example_has_the_pools_the_docs_promise() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = fleet::spec::load(&root.join("fleet.example.yaml")).expect("example loads");
    let pools = spec.resolved_pools();
    let gpu = pools.iter().find(|p| p.name == "gpu").expect("gpu pool");
    assert!(gpu.ephemeral);
    assert_eq!(gpu.gpus, fleet::spec::GpuRequest::Count(1));
    assert_eq!(gpu.labels, ["gpu", "nvidia", "arch"]);
    let cpu = pools.iter().find(|p| p.name == "cpu").expect("cpu pool");
    assert!(!cpu.ephemeral);
    assert!(cpu.labels.contains(&"cpu-only".to_string()));
    assert!(cpu.volumes.iter().any(|v| v.source == "zquic-ccache"));
    assert!(cpu.volumes.iter().any(|v| v.source == "zquic-zig-cache"));
    let cuda = pools
        .iter()
        .find(|p| p.name == "cuda-ubuntu")
        .expect("cuda pool");
    assert_eq!(cuda.labels, ["gpu", "ubuntu"]);
}

#[test]
fn all_problems_of_a_file_are_reported_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleet.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: Bad\ngithub:\n  repo: a/b\n  org: a\npools:\n  cpu:\n    count: -1\n    count: 2\n    image: x\n    volumes: [{ source: ./c, target: c }]\n  gpu:\n    host: nowhere\n    count: 1\n    image: x\n",
    )
    .expect("write");
    let out = fleet(&["validate", "-f", file.to_str().expect("utf-8")]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for (fragment, line) in [
        ("expected lowercase letters", 2),
        ("exactly one of `repo` and `org`", 3),
        ("expected a value >= 0", 8),
        ("duplicate key `count`", 9),
        ("relative path", 11),
        ("absolute path inside the container", 11),
        ("expected a host declared in `hosts`", 13),
    ] {
        let at = format!("fleet.yaml:{line}:");
        assert!(
            diagnostics(&all)
                .iter()
                .any(|d| d.contains(fragment) && d.contains(&at)),
            "missing `{fragment}` at line {line} in:\n{all}"
        );
    }
    assert!(all.contains("7 problem(s) found"), "{all}");
}

#[cfg(unix)]
#[test]
fn app_private_key_must_exist_and_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("app.pem");
    std::fs::write(&key, "not a real key, only its mode matters here\n").expect("write key");
    let file = dir.path().join("fleet.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: demo\ngithub:\n  org: acme\n  auth:\n    app:\n      app_id: 1\n      installation_id: 2\n      private_key_file: app.pem\npools:\n  cpu: { count: 1, image: x }\n",
    )
    .expect("write spec");
    let path = file.to_str().expect("utf-8");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = fleet(&["validate", "-f", path]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    // The output says only that the file is not usable (it may become a pull-request
    // comment); the mode is in the log that -v shows.
    assert!(all.contains("app.pem is not usable"), "{all}");
    assert!(!all.contains("0644"), "{all}");
    assert!(all.contains("fleet.yaml:9:"), "{all}");
    assert!(all.contains("chmod 600"), "{all}");
    let verbose = text(&fleet(&["-v", "validate", "-f", path]));
    assert!(verbose.contains("found mode 0644"), "{verbose}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = fleet(&["validate", "-f", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The key's content never appears in any output.
    assert!(!text(&out).contains("not a real key"));
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = fleet(&["validate", "-f", "/nonexistent/fleet.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let all = text(&out);
    assert!(all.contains("cannot read /nonexistent/fleet.yaml"), "{all}");
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = fleet(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/fleet.schema.json"),
    )
    .expect("read schema");
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
    let value: serde_json::Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(
        value["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn every_schema_property_has_a_description_and_objects_refuse_unknown_keys() {
    let schema: serde_json::Value =
        serde_json::from_str(fleet::spec::schema::SCHEMA_JSON).expect("json");
    let mut objects = vec![("root".to_string(), &schema)];
    for (name, def) in schema["$defs"].as_object().expect("$defs") {
        objects.push((name.clone(), def));
    }
    for (name, object) in objects {
        let Some(props) = object.get("properties").and_then(|p| p.as_object()) else {
            continue;
        };
        assert_eq!(
            object["additionalProperties"], false,
            "{name} accepts unknown keys"
        );
        for (prop, sub) in props {
            assert!(
                sub.get("description").is_some(),
                "{name}.{prop} has no description"
            );
        }
    }
}

#[test]
fn help_explains_the_commands_that_exist() {
    let out = fleet(&["--help"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(all.contains("validate") && all.contains("schema"), "{all}");
    let out = fleet(&["validate", "--help"]);
    let all = text(&out);
    assert!(
        all.contains("Every problem of the file is reported at once"),
        "{all}"
    );
    assert!(all.contains("-f, --file <FILE>"), "{all}");
}
