//! One compose runner service to one fleet pool: image, count, environment, labels, scope, and
//! everything that is not carried over. GPUs, volumes, network and limits are in
//! [`super::resources`].

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::compose::ComposeFile;
use super::detect::{self, Build};
use super::env::{self, EnvVar, Interpolated, Secret};
use super::place::{self, Place};
use super::report::{Finding, Tag};
use super::resources;
use crate::spec::{Pool, PullPolicy};

/// The reference image of fleet.example.yaml, built from ci/runner.
pub const REFERENCE_IMAGE_VERSION: &str = "2.336.0";

/// A service turned into a pool, with everything said about it.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub service: String,
    pub pool: Pool,
    /// Comments, keyed by a pointer relative to the pool (`""` is the pool's own line,
    /// `gpus`, `volumes/0`, `env/NAME`).
    pub notes: BTreeMap<String, Vec<String>>,
    pub findings: Vec<Finding>,
    /// Where it registers, and the setting that said so.
    pub place: Option<(Place, String)>,
    /// Values of the secrets removed, to prove none is written; never printed.
    pub secret_values: Vec<String>,
    /// Names of what was removed or left out, for the pool's comment.
    pub removed: Vec<String>,
    pub left_out: Vec<String>,
    /// The build context, when the image is the one compose builds and names after the
    /// service: services built from one context run the same image under different tags.
    pub built_from: Option<std::path::PathBuf>,
}

impl Draft {
    pub fn note(&mut self, at: &str, text: impl Into<String>) {
        self.notes
            .entry(at.to_string())
            .or_default()
            .push(text.into());
    }

    pub fn find(&mut self, tag: Tag, text: impl Into<String>) {
        self.findings.push(Finding::new(tag, text));
    }

    /// Records a setting that is not in fleet.yaml.
    pub fn leave_out(&mut self, what: impl Into<String>, why: impl AsRef<str>) {
        let what = what.into();
        self.find(Tag::LeftOut, format!("{what}: {}", why.as_ref()));
        self.left_out.push(what);
    }

    /// Records a removed secret; `what` names it (a variable, a build argument).
    fn remove_secret(&mut self, what: &str, value: Option<&str>, kind: Secret) {
        if let Some(value) = value
            && !matches!(env::interpolate(value), Interpolated::FromShell { .. })
        {
            self.secret_values.push(value.to_string());
            if let Some(credentials) = env::url_credentials(value) {
                self.secret_values.push(credentials.to_string());
            }
        }
        let text = match kind {
            Secret::Token => format!(
                "{what}: a baked token was removed: fleet requests tokens itself (a single-use JIT config for each ephemeral runner, a fresh registration token for a persistent one)"
            ),
            Secret::Other => format!(
                "{what}: a secret was removed: fleet.yaml is kept in git and holds none; give jobs their secrets through GitHub Actions secrets"
            ),
            Secret::InUrl => format!(
                "{what}: its URL holds credentials, so it was removed (fleet.yaml is kept in git and holds none); anything else it said was still read"
            ),
        };
        self.find(Tag::Removed, text);
        self.removed.push(what.to_string());
    }
}

/// Turns the runner service `name` of `file` into a pool.
pub fn map(
    file: &ComposeFile,
    name: &str,
    service: &Map<String, Value>,
    build: Option<&Build>,
) -> Draft {
    let env = env::read(service.get("environment"));
    let mut d = Draft {
        service: name.to_string(),
        ..Draft::default()
    };
    let (place, place_findings) = place::find(&env, build);
    d.place = place;
    d.findings.extend(place_findings);
    image(&mut d, file, name, service, build);
    if let Some(build) = build {
        build_args(&mut d, build);
    }
    let vars = environment(&mut d, &env);
    resources::gpus(&mut d, service, vars.nvidia_visible.as_deref());
    let state_folder = resources::volumes(&mut d, file, service, &vars.runner_dirs);
    work_dir(&mut d, vars.work_dir.as_deref());
    labels(&mut d, &vars, build);
    ephemeral(&mut d, vars.ephemeral, state_folder);
    if let Some(group) = vars.group {
        d.pool.runner_group = Some(group);
    }
    count(&mut d, service);
    resources::network(&mut d, file, service);
    resources::limits(&mut d, service);
    pull(&mut d, service);
    leftovers(&mut d, service);
    d
}

/// myoung34's RUNNER_WORKDIR, with the Docker socket: the work folders the host's engine
/// shares at the same path.
fn work_dir(d: &mut Draft, dir: Option<&str>) {
    let Some(dir) = dir else { return };
    if d.pool.docker_socket != Some(true) {
        return;
    }
    let dir = dir.trim_end_matches('/');
    d.pool.work_dir = Some(dir.to_string());
    d.note(
        "work_dir",
        format!("From RUNNER_WORKDIR={dir}: each runner's work folder is {dir}/<runner>, mounted from the host at the same path, so that the containers a job starts through the host's Docker engine see its workspace."),
    );
}

fn image(
    d: &mut Draft,
    file: &ComposeFile,
    name: &str,
    service: &Map<String, Value>,
    build: Option<&Build>,
) {
    let declared = service.get("image").and_then(Value::as_str);
    let contract =
        "its entrypoint must follow fleet's container contract (docs/apply.md): ci/runner's does";
    let image = match (declared, build) {
        (Some(image), None) => {
            d.note("image", format!("From the compose file; {contract}."));
            image.to_string()
        }
        (Some(image), Some(build)) => {
            d.note("image", format!("compose built this image from {} and tagged it so: build it again without any token in it, and {contract}.", build.context));
            image.to_string()
        }
        (None, Some(build)) => {
            let tag = file.built_image(name);
            d.note("image", format!("compose builds this image from {} and tags it {tag}: build and tag it so on the host (`docker compose build {name}`), without any token in it; {contract}.", build.context));
            d.note(
                "pull",
                "Built on the host, in no registry: fleet must not try to pull it.",
            );
            d.pool.pull = Some(PullPolicy::Never);
            d.built_from = Some(file.dir.join(&build.context));
            tag
        }
        (None, None) => {
            d.note("image", "The service names no image: this is fleet's reference image (ci/runner); put the tag you build and push.");
            format!("ghcr.io/acme/arch-runner:{REFERENCE_IMAGE_VERSION}")
        }
    };
    let image = match env::interpolate(&image) {
        Interpolated::Literal(v) => v,
        Interpolated::Defaults { value, vars } => {
            d.note(
                "image",
                format!("The defaults of ${{{}}} filled in.", vars.join("}, ${")),
            );
            value
        }
        Interpolated::FromShell { vars } => {
            d.note(
                "image",
                format!(
                    "Replace ${{{}}}: compose filled it in from the shell or .env.",
                    vars.join("}, ${")
                ),
            );
            d.find(
                Tag::Warning,
                format!(
                    "image: its name takes ${{{}}} from the shell; replace it in fleet.yaml",
                    vars.join("}, ${")
                ),
            );
            image
        }
    };
    let repository = detect::image_repository(&image).to_ascii_lowercase();
    if repository.ends_with("actions/actions-runner") {
        d.find(Tag::Warning, format!(
            "image {repository}: GitHub's runner image has no entrypoint of fleet's container contract (docs/apply.md): use an image built from ci/runner, or add ci/runner's entrypoint.sh to this one"
        ));
    } else if detect::is_runner_image(&image) {
        d.find(Tag::Warning, format!(
            "image {repository}: its entrypoint registers the runner from its own variables (a URL and a token), while fleet gives a runner a JIT config or ACTIONS_RUNNER_INPUT_* variables (docs/apply.md): use an image built from ci/runner, or give this one an entrypoint that follows the contract"
        ));
    }
    for scanned in build.into_iter().flat_map(|b| &b.registering) {
        if scanned.at_build {
            d.find(Tag::Warning, format!("{} registers the runner while the image is built: the old image holds a registration token and the runner's credentials, so every container of it is the same runner; build a new image (ci/runner) and delete the old one", scanned.shown));
        }
    }
    d.pool.image = Some(image);
}

fn build_args(d: &mut Draft, build: &Build) {
    let mut others = Vec::new();
    for (name, value) in &build.args {
        match env::secret(name, value.as_deref()) {
            Some(kind) => {
                d.remove_secret(&format!("build argument {name}"), value.as_deref(), kind)
            }
            None => others.push(name.clone()),
        }
    }
    if !others.is_empty() {
        d.leave_out(
            format!("build arguments {}", others.join(", ")),
            "they are for building the image, which fleet does not do",
        );
    }
}

/// What the runner's own variables say.
#[derive(Debug, Default)]
struct RunnerVars {
    /// Label list and the variable it came from.
    labels: Option<(String, String)>,
    ephemeral: Option<(bool, String)>,
    no_default_labels: bool,
    group: Option<String>,
    /// The runner's work or configuration folders (RUNNER_WORKDIR...).
    runner_dirs: Vec<String>,
    /// RUNNER_WORKDIR: the work folder, shared with the host's engine at the same path.
    work_dir: Option<String>,
    nvidia_visible: Option<String>,
}

const LABEL_VARIABLES: &[&str] = &[
    "RUNNER_LABELS",
    "LABELS",
    "RUNNER_LABEL",
    "ACTIONS_RUNNER_INPUT_LABELS",
];
const NAME_VARIABLES: &[&str] = &[
    "RUNNER_NAME",
    "RUNNER_NAME_PREFIX",
    "RANDOM_RUNNER_SUFFIX",
    "ACTIONS_RUNNER_INPUT_NAME",
];

/// What a consumed variable was for, when it is neither a label, place nor name variable.
fn consumed_because(name: &str) -> Option<&'static str> {
    Some(match name {
        "EPHEMERAL" | "ACTIONS_RUNNER_INPUT_EPHEMERAL" => "read for `ephemeral`",
        "NO_DEFAULT_LABELS" => "read for `no_default_labels`",
        "RUNNER_GROUP" | "ACTIONS_RUNNER_INPUT_RUNNERGROUP" => "read for `runner_group`",
        "RUNNER_WORKDIR" | "CONFIGURED_ACTIONS_RUNNER_FILES_DIR" => {
            "the runner's own folder: the image decides it; a volume mounted there makes the pool persistent"
        }
        "NVIDIA_VISIBLE_DEVICES" => {
            "read for `gpus`: fleet chooses each runner's GPUs by UUID (a leftover NVIDIA_VISIBLE_DEVICES=all would hand every GPU to every runner)"
        }
        "DISABLE_AUTO_UPDATE" => {
            "a registration option of the old image's entrypoint; fleet's entrypoint (ci/runner) registers the runner itself"
        }
        "DISABLE_AUTOMATIC_DEREGISTRATION" | "UNSET_CONFIG_VARS" => {
            "an option of the old image's entrypoint; fleet removes registrations itself"
        }
        "APP_ID" | "APP_LOGIN" => {
            "the old runners registered as a GitHub App; fleet can authenticate as one too: github.auth.app (docs/operations.md)"
        }
        "FLEET_POOL" | "FLEET_STATE_DIR" | "RUNNER_LABELS" => {
            "set by fleet itself (the container contract)"
        }
        _ if name.starts_with("ACTIONS_RUNNER_INPUT_") => {
            "set by fleet itself (the container contract, docs/apply.md)"
        }
        _ => return None,
    })
}

fn truthy(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off"
    )
}

/// Sorts the service's environment into secrets, runner variables and the pool's `env`.
fn environment(d: &mut Draft, vars: &[EnvVar]) -> RunnerVars {
    let mut out = RunnerVars::default();
    let mut kept = BTreeMap::new();
    for (name, value) in vars {
        let literal = value
            .as_deref()
            .and_then(|v| env::interpolate(v).value().map(str::to_string));
        // By name, by the value written, and by the value compose would make of it.
        let secret = env::secret(name, value.as_deref())
            .or_else(|| literal.as_deref().and_then(env::secret_value));
        if let Some(kind) = secret {
            d.remove_secret(name, literal.as_deref().or(value.as_deref()), kind);
            continue;
        }
        if LABEL_VARIABLES.contains(&name.as_str()) {
            match (&out.labels, &literal) {
                (None, Some(v)) => out.labels = Some((v.clone(), name.clone())),
                (_, None) => {
                    d.leave_out(
                        name.as_str(),
                        "its labels come from the shell or .env at `docker compose up`; write `labels` by hand",
                    );
                    continue;
                }
                _ => {}
            }
            d.find(Tag::Consumed, format!("{name}: read for `labels`"));
        } else if NAME_VARIABLES.contains(&name.as_str()) {
            d.find(
                Tag::Handled,
                format!("{name}: fleet names each runner <fleet>-<pool>-<suffix>"),
            );
        } else if place::PLACE_VARIABLES.contains(&name.as_str()) {
            d.find(
                Tag::Consumed,
                format!("{name}: read for `github` (where the runners register)"),
            );
        } else if let Some(why) = consumed_because(name) {
            let v = literal.clone().unwrap_or_default();
            match name.as_str() {
                "EPHEMERAL" | "ACTIONS_RUNNER_INPUT_EPHEMERAL" => {
                    out.ephemeral = Some((truthy(&v), name.clone()))
                }
                "NO_DEFAULT_LABELS" => out.no_default_labels = truthy(&v),
                "RUNNER_GROUP" | "ACTIONS_RUNNER_INPUT_RUNNERGROUP" if !v.is_empty() => {
                    out.group = Some(v)
                }
                "RUNNER_WORKDIR" | "CONFIGURED_ACTIONS_RUNNER_FILES_DIR" if v.starts_with('/') => {
                    if name == "RUNNER_WORKDIR" {
                        out.work_dir = Some(v.clone());
                    }
                    out.runner_dirs.push(v)
                }
                "NVIDIA_VISIBLE_DEVICES" => out.nvidia_visible = Some(v),
                _ => {}
            }
            d.find(Tag::Consumed, format!("{name}: {why}"));
        } else {
            keep_variable(d, name, value.as_deref(), &mut kept);
        }
    }
    if !kept.is_empty() {
        d.pool.env = Some(kept);
    }
    out
}

/// Copies one ordinary variable to the pool's env, when its value is in the compose file.
fn keep_variable(
    d: &mut Draft,
    name: &str,
    value: Option<&str>,
    kept: &mut BTreeMap<String, String>,
) {
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        d.leave_out(
            format!("variable {name}"),
            "fleet's env takes names of letters, digits and '_'",
        );
        return;
    }
    let Some(value) = value else {
        d.leave_out(format!("variable {name}"), "it passes the shell's value through at `docker compose up`; set a value in env by hand");
        return;
    };
    match env::interpolate(value) {
        Interpolated::Literal(v) => {
            kept.insert(name.to_string(), v);
        }
        Interpolated::Defaults { value, vars } => {
            d.note(
                &format!("env/{}", crate::spec::yaml::escape_pointer(name)),
                format!(
                    "The default of ${{{}}}: compose took the shell's value when there was one.",
                    vars.join("}, ${")
                ),
            );
            kept.insert(name.to_string(), value);
        }
        Interpolated::FromShell { vars } => {
            d.leave_out(format!("variable {name}"), format!("its value comes from ${{{}}} in the shell or .env at `docker compose up`; set it in env by hand if it is no secret", vars.join("}, ${")));
        }
    }
}

/// The pool's labels from the label variable, or from `config.sh --labels` in a build file.
fn labels(d: &mut Draft, vars: &RunnerVars, build: Option<&Build>) {
    if vars.no_default_labels {
        d.pool.no_default_labels = Some(true);
    }
    let from_build = || {
        build
            .into_iter()
            .flat_map(|b| &b.registering)
            .find_map(|s| {
                s.labels
                    .clone()
                    .map(|l| (l, format!("config.sh --labels in {}", s.shown)))
            })
    };
    let Some((raw, source)) = vars.labels.clone().or_else(from_build) else {
        return;
    };
    let mut labels: Vec<String> = Vec::new();
    let mut dropped = Vec::new();
    for label in raw.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let default = crate::spec::DEFAULT_RUNNER_LABELS
            .iter()
            .any(|dl| dl.eq_ignore_ascii_case(label));
        if label.chars().any(char::is_whitespace) || label.chars().count() > 256 {
            d.leave_out(
                format!("label {label:?}"),
                "a runner label has no spaces and at most 256 characters",
            );
        } else if default && !vars.no_default_labels {
            dropped.push(label.to_string());
        } else if !labels.iter().any(|l| l.eq_ignore_ascii_case(label)) {
            labels.push(label.to_string());
        }
    }
    let mut note = format!("From {source}.");
    if !dropped.is_empty() {
        note.push_str(&format!(
            " {} left out: fleet adds self-hosted, Linux and X64 itself.",
            dropped.join(", ")
        ));
    }
    if !labels.is_empty() {
        d.note("labels", note);
        d.pool.labels = Some(labels);
    }
}

fn ephemeral(d: &mut Draft, from_env: Option<(bool, String)>, state_folder: Option<String>) {
    match (from_env, state_folder) {
        (Some((value, name)), folder) => {
            d.pool.ephemeral = Some(value);
            let mut note = format!("From {name}.");
            if let (true, Some(folder)) = (value, folder) {
                note.push_str(&format!(" The runner folder {folder} is not kept: an ephemeral runner has no state to keep."));
            }
            d.note("ephemeral", note);
        }
        (None, Some(folder)) => {
            d.pool.ephemeral = Some(false);
            d.note("ephemeral", format!("Persistent, because the service kept the runner's folder ({folder}): fleet keeps each runner's registration in a volume of its own instead, so a recreated container is the same runner."));
        }
        (None, None) => {
            d.pool.ephemeral = Some(true);
            d.note("ephemeral", "fleet's default: one job per runner, then a fresh runner. The compose runner lived on between jobs; `ephemeral: false` keeps runners (and their registration) between jobs.");
        }
    }
}

fn count(d: &mut Draft, service: &Map<String, Value>) {
    let deploy = service.get("deploy");
    let replicas = deploy
        .and_then(|dep| dep.get("replicas"))
        .and_then(Value::as_u64);
    let scale = service.get("scale").and_then(Value::as_u64);
    let global = deploy
        .and_then(|dep| dep.get("mode"))
        .and_then(Value::as_str)
        == Some("global");
    let (count, note) = match (replicas, scale) {
        (Some(n), _) => (n, Some("From deploy.replicas.".to_string())),
        (None, Some(n)) => (n, Some("From scale.".to_string())),
        (None, None) if global => (
            1,
            Some("deploy.mode global ran one per Swarm node; this is one host.".to_string()),
        ),
        (None, None) => (1, None),
    };
    d.pool.count = Some(u32::try_from(count.min(1000)).unwrap_or(1000));
    if let Some(note) = note {
        d.note("count", note);
    }
}

/// compose's `pull_policy` as fleet's `pull`.
fn pull(d: &mut Draft, service: &Map<String, Value>) {
    let Some(policy) = service.get("pull_policy").and_then(Value::as_str) else {
        return;
    };
    let pull = match policy {
        "always" => PullPolicy::Always,
        "never" | "build" => PullPolicy::Never,
        "missing" | "if_not_present" => PullPolicy::IfMissing,
        other => {
            d.leave_out(
                format!("pull_policy: {other}"),
                "fleet pulls always, if missing, or never",
            );
            return;
        }
    };
    if d.pool.pull.is_none() {
        d.pool.pull = Some(pull);
    }
}

/// Service keys read by the import; everything else is reported.
const MAPPED_KEYS: &[&str] = &[
    "image",
    "build",
    "environment",
    "volumes",
    "gpus",
    "runtime",
    "deploy",
    "scale",
    "network_mode",
    "networks",
    "cpus",
    "mem_limit",
    "devices",
    "pull_policy",
];

fn leftovers(d: &mut Draft, service: &Map<String, Value>) {
    for (key, value) in service {
        if MAPPED_KEYS.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "restart" => d.find(Tag::Handled, format!("restart: {}: fleet replaces runners that exit, on each `fleet apply` or from `fleet watch`; an ephemeral runner that finished its job is replaced, not restarted", env::scalar_text(value).unwrap_or_default())),
            "container_name" | "hostname" => d.find(Tag::Handled, format!("{key}: fleet names containers <fleet>-<pool>-<suffix>, as their runners")),
            "env_file" => d.leave_out("env_file", "not read: such files usually hold secrets, and fleet.yaml is kept in git; copy what is no secret to env by hand"),
            "command" | "entrypoint" => d.leave_out(key.as_str(), "fleet runs the image's own entrypoint and command, which must follow the container contract"),
            "privileged" => d.leave_out("privileged", "fleet never runs privileged containers; jobs that need Docker can use the host's engine (docker_socket: true)"),
            "labels" => d.leave_out("labels", "fleet sets its own container labels (they prove what it owns)"),
            "depends_on" | "links" => d.leave_out(key.as_str(), "runners start on their own; fleet starts no other services"),
            "ports" | "expose" => d.leave_out(key.as_str(), "fleet publishes no ports"),
            "extends" => d.leave_out("extends", "the service it extends was not merged in; copy what it adds to the pool by hand"),
            _ => d.leave_out(key.as_str(), "fleet has no such setting"),
        }
    }
}
