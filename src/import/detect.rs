//! Which compose services run a GitHub Actions runner (docs/migrating.md, "Which services are
//! runners"), and what their build files say about the registration.
//!
//! A service is a runner when any of these holds:
//! 1. its image's name (the last part of its repository path) contains `github-runner`,
//!    `actions-runner` or `gha-runner` (myoung34/github-runner, ghcr.io/actions/actions-runner,
//!    summerwind/actions-runner, ...);
//! 2. its environment or build arguments set a variable only runners read ([`RUNNER_VARIABLES`],
//!    or any `ACTIONS_RUNNER_INPUT_*`);
//! 3. its `command` or `entrypoint`, or a file of its local build context (the Dockerfile and the
//!    scripts at the top of the context), runs `config.sh`, the runner's registration script.

use std::path::Path;

use serde_json::Value;

use super::compose::ComposeFile;
use super::env::{self, EnvVar};

/// Variables that mark a runner: the registration variables of the common runner images.
pub const RUNNER_VARIABLES: &[&str] = &[
    "RUNNER_TOKEN",
    "RUNNER_REGISTRATION_TOKEN",
    "ACCESS_TOKEN",
    "RUNNER_NAME",
    "RUNNER_NAME_PREFIX",
    "REPO_URL",
    "RUNNER_REPOSITORY_URL",
    "RUNNER_ORGANIZATION_URL",
    "RUNNER_SCOPE",
    "ORG_NAME",
    "RUNNER_LABELS",
    "RUNNER_GROUP",
    "RUNNER_WORKDIR",
];

/// The most bytes read from one build file.
const SCAN_LIMIT: u64 = 1 << 20;

/// What a service's local build context says.
#[derive(Debug, Clone, Default)]
pub struct Build {
    /// The context as the compose file writes it.
    pub context: String,
    /// Build arguments.
    pub args: Vec<EnvVar>,
    /// Files of the context that run `config.sh`.
    pub registering: Vec<Scanned>,
    /// Why the context was not read: it is outside the compose file's folder.
    pub outside: Option<String>,
}

/// One build file that runs `config.sh`.
#[derive(Debug, Clone, Default)]
pub struct Scanned {
    /// Its path relative to the compose file's folder.
    pub shown: String,
    /// A Dockerfile `RUN` registers the runner while the image is built.
    pub at_build: bool,
    /// The literal `--url` given to config.sh, if any.
    pub url: Option<String>,
    /// The literal `--labels` given to config.sh, if any.
    pub labels: Option<String>,
}

/// Reads a service's `build:` (a context path, or a mapping with `context`, `dockerfile`,
/// `args`); remote contexts (git URLs) are not read.
pub fn build(file: &ComposeFile, build: &Value) -> Build {
    let (context, dockerfile, args) = match build {
        Value::String(context) => (context.clone(), None, vec![]),
        Value::Object(map) => (
            map.get("context")
                .and_then(Value::as_str)
                .unwrap_or(".")
                .to_string(),
            map.get("dockerfile")
                .and_then(Value::as_str)
                .map(str::to_string),
            env::read(map.get("args")),
        ),
        _ => (".".to_string(), None, vec![]),
    };
    let mut out = Build {
        context: context.clone(),
        args,
        registering: vec![],
        outside: None,
    };
    if context.contains("://") || context.starts_with("git@") {
        return out;
    }
    let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".to_string());
    // Only files inside the compose file's folder are read: a compose file is anyone's input,
    // and its values are copied into fleet.yaml.
    if let Some(why) = outside_of(&file.dir, &context, &dockerfile) {
        out.outside = Some(why);
        return out;
    }
    let dir = file.dir.join(&context);
    let mut candidates = vec![dir.join(&dockerfile)];
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut scripts: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "sh")
                    || p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("entrypoint"))
            })
            .collect();
        scripts.sort();
        candidates.extend(scripts);
    }
    candidates.dedup();
    for path in candidates {
        let is_dockerfile = path == dir.join(&dockerfile);
        if let Some(scanned) = scan(&path, is_dockerfile) {
            let relative = path.strip_prefix(&file.dir).unwrap_or(&path);
            out.registering.push(Scanned {
                shown: relative.display().to_string(),
                ..scanned
            });
        }
    }
    out
}

/// Why `context` (and `dockerfile` in it) would take `import` out of the compose file's
/// folder `dir`: an absolute path, a `..`, or a symbolic link that leads out.
fn outside_of(dir: &Path, context: &str, dockerfile: &str) -> Option<String> {
    use std::path::Component;
    let escapes = |p: &str| {
        Path::new(p).components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        })
    };
    if escapes(context) || escapes(dockerfile) {
        return Some(format!(
            "build context {} (dockerfile {}) was not read: it is outside the compose file's folder (an absolute path or `..`); fleet import reads only files inside it",
            crate::escape::escaped(context),
            crate::escape::escaped(dockerfile)
        ));
    }
    let root = dir.canonicalize().ok()?;
    match dir.join(context).canonicalize() {
        Ok(real) if !real.starts_with(&root) => Some(format!(
            "build context {} was not read: a symbolic link leads it outside the compose file's folder",
            crate::escape::escaped(context)
        )),
        _ => None,
    }
}

/// Reads one build file; `Some` when it runs config.sh. Only a regular file is opened (a FIFO
/// would hang `import`), and without following a link out of the folder (see [`outside_of`]).
fn scan(path: &Path, is_dockerfile: bool) -> Option<Scanned> {
    use std::io::Read;
    let mut text = String::new();
    crate::named_file::open(path)
        .ok()?
        .take(SCAN_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .filter(|l| l.contains("config.sh") && !l.trim_start().starts_with('#'))
        .collect();
    if lines.is_empty() {
        return None;
    }
    let at_build = is_dockerfile
        && lines
            .iter()
            .any(|l| l.trim_start().to_ascii_uppercase().starts_with("RUN "));
    let flag = |name: &str| lines.iter().find_map(|l| flag_value(l, name));
    Some(Scanned {
        shown: String::new(),
        at_build,
        url: flag("--url"),
        labels: flag("--labels"),
    })
}

/// The literal value of `--name VALUE` or `--name=VALUE` on a command line; `None` when absent
/// or when it is a shell variable.
fn flag_value(line: &str, name: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let raw = words.iter().enumerate().find_map(|(i, w)| {
        if *w == name {
            words.get(i + 1).copied()
        } else {
            w.strip_prefix(name).and_then(|r| r.strip_prefix('='))
        }
    })?;
    let value = raw.trim_matches(|c| c == '"' || c == '\'');
    (!value.is_empty() && !value.contains('$')).then(|| value.to_string())
}

/// Whether an image reference names a runner image (rule 1 of the module's doc).
pub fn is_runner_image(image: &str) -> bool {
    let repository = image_repository(image).to_ascii_lowercase();
    let last = repository.rsplit('/').next().unwrap_or_default();
    ["github-runner", "actions-runner", "gha-runner"]
        .iter()
        .any(|marker| last.contains(marker))
}

/// The repository part of an image reference, without tag or digest.
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        // A colon after the last slash is a tag; before it, a registry's port.
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

/// Whether a variable marks a runner (rule 2).
pub fn is_runner_variable(name: &str) -> bool {
    RUNNER_VARIABLES.contains(&name) || name.starts_with("ACTIONS_RUNNER_INPUT_")
}

/// Why the service is a runner; empty when it is not.
pub fn runner_reasons(
    service: &serde_json::Map<String, Value>,
    env: &[EnvVar],
    build: Option<&Build>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(image) = service.get("image").and_then(Value::as_str)
        && is_runner_image(image)
    {
        reasons.push(format!("runner image {}", image_repository(image)));
    }
    let args = build.map(|b| b.args.as_slice()).unwrap_or_default();
    let variables: Vec<&str> = env
        .iter()
        .chain(args)
        .map(|(k, _)| k.as_str())
        .filter(|k| is_runner_variable(k))
        .collect();
    if !variables.is_empty() {
        let more = if variables.len() > 3 { ", ..." } else { "" };
        let shown: Vec<&str> = variables.iter().take(3).copied().collect();
        reasons.push(format!("sets {}{more}", shown.join(", ")));
    }
    for key in ["command", "entrypoint"] {
        if service
            .get(key)
            .is_some_and(|v| v.to_string().contains("config.sh"))
        {
            reasons.push(format!("its {key} runs config.sh"));
        }
    }
    if let Some(scanned) = build.and_then(|b| b.registering.first()) {
        reasons.push(format!("{} runs config.sh", scanned.shown));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_images() {
        for image in [
            "myoung34/github-runner:latest",
            "ghcr.io/actions/actions-runner:2.330.0",
            "summerwind/actions-runner@sha256:abc",
            "registry.local:5000/ci/gha-runner-cuda",
        ] {
            assert!(is_runner_image(image), "{image}");
        }
        for image in ["redis:7", "registry.local:5000/ci/builder", "postgres"] {
            assert!(!is_runner_image(image), "{image}");
        }
        assert_eq!(
            image_repository("registry.local:5000/ci/x:1"),
            "registry.local:5000/ci/x"
        );
    }

    #[test]
    fn config_sh_flags() {
        let line =
            r#"RUN ./config.sh --url https://github.com/acme/zquic --token "$T" --labels=gpu,arch"#;
        assert_eq!(
            flag_value(line, "--url").as_deref(),
            Some("https://github.com/acme/zquic")
        );
        assert_eq!(flag_value(line, "--labels").as_deref(), Some("gpu,arch"));
        assert_eq!(flag_value(line, "--token"), None);
    }
}
