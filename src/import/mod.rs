//! `fleet import`: a fleet.yaml from the runner services of docker-compose files.
//!
//! Each runner service becomes a pool ([`detect`] says which services are runners, [`service`]
//! and [`resources`] map them); every line that needed a decision gets a comment, and a report
//! on stderr names everything removed (secrets, by name only) or left out. What is written is
//! read back with [`crate::spec::parse_str`] first: an import that does not validate is a bug.
//! docs/migrating.md describes the rules.

pub mod compose;
pub mod detect;
pub mod emit;
pub mod env;
pub mod place;
pub mod report;
mod resources;
mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::spec::yaml::escape_pointer;
use crate::spec::{Auth, Github, Pool, Spec};
use emit::Comments;
use place::{Place, Scope};
use report::{Finding, Report, ServiceReport, Tag};
use service::Draft;

/// Why an import could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} holds no compose file (compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml)",
        dir.display()
    )]
    NoComposeFile { dir: PathBuf },
    #[error("{} is not valid YAML:\n  {}", path.display(), problems.join("\n  "))]
    Yaml {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{} is not a docker-compose file: {why}", path.display())]
    NotCompose { path: PathBuf, why: String },
    #[error(
        "no runner service found in {files}: {services} run(s) no GitHub runner (docs/migrating.md says how runners are recognised)"
    )]
    NoRunner { files: String, services: String },
    #[error(
        "the compose files do not say which repository or organization the runners register on{detail}; pass --repo OWNER/NAME or --org NAME"
    )]
    NoScope { detail: String },
    #[error("{0}")]
    BadArgument(String),
    #[error("{} exists; pass --force to overwrite it. Nothing was written.", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "internal error: the fleet.yaml made from the compose files does not validate (a bug in fleet import; nothing was written):\n{0}"
    )]
    Invalid(String),
    #[error(
        "internal error: the value of a removed secret would have been printed or written (a bug in fleet import); nothing was written"
    )]
    SecretLeak,
}

/// `fleet import` on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// docker-compose files, or folders holding one (compose.yaml, compose.yml,
    /// docker-compose.yaml or docker-compose.yml).
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Write the fleet.yaml to FILE instead of stdout (never over an existing file without --force).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite FILE when it exists.
    #[arg(long)]
    pub force: bool,
    /// The repository the runners register on, instead of the one the compose files name.
    #[arg(long, value_name = "OWNER/NAME", conflicts_with = "org")]
    pub repo: Option<String>,
    /// The organization the runners register on, instead of what the compose files name.
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
    /// The fleet's name (default: the compose project's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// What the user decided on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub repo: Option<String>,
    pub org: Option<String>,
    pub name: Option<String>,
}

/// An import: the spec, its text with comments, and the report.
#[derive(Debug, Clone)]
pub struct Imported {
    pub spec: Spec,
    pub text: String,
    pub report: Report,
    /// Values of the secrets that were removed: none may be printed or written.
    secret_values: Vec<String>,
}

impl Imported {
    /// Whether the value of a removed secret appears in `text`.
    pub fn leaks_into(&self, text: &str) -> bool {
        self.secret_values
            .iter()
            .filter(|v| v.len() >= 6)
            .any(|v| text.contains(v.as_str()))
    }
}

/// Runs `fleet import` (`cmd/import.rs` reports its error).
pub fn run(args: &ImportArgs) -> Result<(), ImportError> {
    let overrides = Overrides {
        repo: args.repo.clone(),
        org: args.org.clone(),
        name: args.name.clone(),
    };
    import(&args.paths, &overrides).and_then(|i| output(&i, args))
}

fn output(imported: &Imported, args: &ImportArgs) -> Result<(), ImportError> {
    let report = imported.report.render();
    if imported.leaks_into(&imported.text) || imported.leaks_into(&report) {
        return Err(ImportError::SecretLeak);
    }
    match &args.output {
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(imported.text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| ImportError::Write {
                    path: "stdout".into(),
                    source,
                })?;
            eprint!("{report}");
        }
        Some(path) => {
            write_file(path, &imported.text, args.force).map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => ImportError::Exists { path: path.clone() },
                _ => ImportError::Write {
                    path: path.clone(),
                    source,
                },
            })?;
            eprint!("{report}");
            eprintln!("Wrote {}.", path.display());
        }
    }
    Ok(())
}

/// Writes `text` to `path`; an existing file only with `force` (else the error's kind is
/// `AlreadyExists` and the file is untouched).
pub fn write_file(path: &Path, text: &str, force: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.flush()
}

/// One runner service on its way to a pool.
struct Found {
    file: usize,
    why: String,
    draft: Draft,
}

/// Reads the compose files at `paths` and makes the fleet.yaml.
pub fn import(paths: &[PathBuf], overrides: &Overrides) -> Result<Imported, ImportError> {
    let mut files = Vec::new();
    for path in paths {
        let (found, findings) = compose::locate(path)?;
        files.push(compose::read(&found, findings)?);
    }
    let mut report = Report {
        files: files
            .iter()
            .map(|f| (f.shown.clone(), f.project.clone(), f.findings.clone()))
            .collect(),
        ..Report::default()
    };
    let mut found = Vec::new();
    for (index, file) in files.iter().enumerate() {
        for (name, svc) in &file.services {
            let build = svc.get("build").map(|b| detect::build(file, b));
            if let Some(why) = build.as_ref().and_then(|b| b.outside.clone()) {
                report.files[index]
                    .2
                    .push(Finding::new(Tag::Warning, format!("service {name}: {why}")));
            }
            let env = env::read(svc.get("environment"));
            let reasons = detect::runner_reasons(svc, &env, build.as_ref());
            if reasons.is_empty() {
                report.services.push(ServiceReport {
                    file: file.shown.clone(),
                    service: name.clone(),
                    pool: None,
                    why: not_a_runner(svc, build.as_ref()),
                    findings: vec![],
                });
                continue;
            }
            let draft = service::map(file, name, svc, build.as_ref());
            found.push(Found {
                file: index,
                why: format!("a runner: {}", reasons.join("; ")),
                draft,
            });
        }
    }
    if found.is_empty() {
        let names: Vec<String> = report
            .services
            .iter()
            .map(|s| format!("`{}`", s.service))
            .collect();
        let shown: Vec<&str> = files.iter().map(|f| f.shown.as_str()).collect();
        return Err(ImportError::NoRunner {
            files: shown.join(", "),
            services: if names.is_empty() {
                "no service".into()
            } else {
                names.join(", ")
            },
        });
    }
    let order: Vec<(String, String)> = files
        .iter()
        .flat_map(|f| f.services.iter().map(|(n, _)| (f.shown.clone(), n.clone())))
        .collect();
    let place = decide_place(&files, &found, overrides, &mut report.fleet)?;
    for f in &mut found {
        fit_runner_group(&mut f.draft, &place);
    }
    let name = fleet_name(overrides, &files[0].project, &mut report.fleet)?;
    let pools = merge(&files, found, &mut report);
    let rank = |s: &ServiceReport| {
        order
            .iter()
            .position(|(f, n)| *f == s.file && *n == s.service)
    };
    report.services.sort_by_key(rank);
    finish(&files, name, place, pools, report)
}

fn not_a_runner(
    svc: &serde_json::Map<String, serde_json::Value>,
    build: Option<&detect::Build>,
) -> String {
    match (svc.get("image").and_then(|v| v.as_str()), build) {
        (Some(image), _) => format!("image {image}"),
        (None, Some(b)) => format!("built from {}", b.context),
        (None, None) => "no image".into(),
    }
}

/// Where the fleet registers: the command line's choice, else the place most runner services
/// name (the first of them on a tie).
fn decide_place(
    files: &[compose::ComposeFile],
    found: &[Found],
    overrides: &Overrides,
    fleet: &mut Vec<Finding>,
) -> Result<(Place, String), ImportError> {
    let mut named: Vec<(Place, Vec<String>, String)> = Vec::new();
    for f in found {
        let Some((place, source)) = &f.draft.place else {
            continue;
        };
        let who = format!("`{}` ({})", f.draft.service, files[f.file].shown);
        match named.iter_mut().find(|(p, _, _)| p == place) {
            Some((_, services, _)) => services.push(who),
            None => named.push((
                place.clone(),
                vec![who.clone()],
                format!("{source} of service {who}"),
            )),
        }
    }
    let from_flag = match (&overrides.repo, &overrides.org) {
        (Some(repo), _) if place::valid_repo(repo) => Some(Scope::Repo(repo.clone())),
        (Some(repo), _) => {
            return Err(ImportError::BadArgument(format!(
                "--repo expects OWNER/NAME, found {repo:?}"
            )));
        }
        (None, Some(org)) if place::valid_org(org) => Some(Scope::Org(org.clone())),
        (None, Some(org)) => {
            return Err(ImportError::BadArgument(format!(
                "--org expects an organization name, found {org:?}"
            )));
        }
        (None, None) => None,
    };
    let chosen = match from_flag {
        Some(scope) => {
            let host = named
                .first()
                .map_or(place::GITHUB_COM.to_string(), |(p, _, _)| p.host.clone());
            let flag = if matches!(scope, Scope::Repo(_)) {
                "--repo"
            } else {
                "--org"
            };
            (Place { host, scope }, format!("{flag} on the command line"))
        }
        None => {
            let best = named
                .iter()
                .enumerate()
                .max_by_key(|(i, (_, s, _))| (s.len(), std::cmp::Reverse(*i)));
            match best {
                Some((_, (place, _, source))) => (place.clone(), source.clone()),
                None => {
                    return Err(ImportError::NoScope {
                        detail: String::new(),
                    });
                }
            }
        }
    };
    fleet.push(Finding::new(
        Tag::Decided,
        format!("github: {} (from {})", chosen.0, chosen.1),
    ));
    let others: Vec<String> = named
        .iter()
        .filter(|(p, _, _)| *p != chosen.0)
        .map(|(p, s, _)| format!("{p} for {}", s.join(", ")))
        .collect();
    if !others.is_empty() {
        fleet.push(Finding::new(Tag::Decided, format!("the services do not all register in one place ({}): one fleet registers in one place, so every pool registers on {}; write a second fleet.yaml (with its own name) for the others", others.join("; "), chosen.0)));
    }
    Ok(chosen)
}

/// Runner groups belong to organizations: at repository scope a group is dropped.
fn fit_runner_group(draft: &mut Draft, place: &(Place, String)) {
    let Some(group) = draft.pool.runner_group.clone() else {
        return;
    };
    if matches!(place.0.scope, Scope::Repo(_)) && group != "Default" {
        draft.pool.runner_group = None;
        draft.leave_out(format!("runner group {group}"), "runner groups belong to organizations; a repository's runners are in its default group");
    } else if let Scope::Org(_) = place.0.scope {
        draft.note(
            "runner_group",
            "From RUNNER_GROUP: the group must exist in the organization.",
        );
    }
}

/// A name of lowercase letters, digits and '-', at most 24 characters.
pub fn sanitize_name(raw: &str) -> String {
    let mut name = String::new();
    for c in raw.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' => name.push(c),
            '-' | '_' | '.' | ' ' | '/' if !name.ends_with('-') && !name.is_empty() => {
                name.push('-')
            }
            _ => {}
        }
    }
    let name: String = name.chars().take(24).collect();
    name.trim_matches('-').to_string()
}

fn fleet_name(
    overrides: &Overrides,
    project: &str,
    fleet: &mut Vec<Finding>,
) -> Result<String, ImportError> {
    if let Some(name) = &overrides.name {
        if sanitize_name(name) != *name {
            return Err(ImportError::BadArgument(format!(
                "--name expects 1 to 24 lowercase letters, digits and '-', found {name:?}"
            )));
        }
        return Ok(name.clone());
    }
    let name = match sanitize_name(project) {
        n if n.is_empty() => "runners".to_string(),
        n => n,
    };
    fleet.push(Finding::new(
        Tag::Decided,
        format!("name {name}: from the compose project `{project}` (--name chooses another)"),
    ));
    Ok(name)
}

/// Services with the same settings are one pool; every pool gets a unique name.
fn merge(
    files: &[compose::ComposeFile],
    found: Vec<Found>,
    report: &mut Report,
) -> Vec<(String, Draft, Vec<String>)> {
    type Key = (Pool, Option<PathBuf>);
    let mut groups: Vec<(Key, Vec<Found>)> = Vec::new();
    for f in found {
        let built = f.draft.built_from.clone();
        let pool = Pool {
            count: None,
            image: built
                .is_none()
                .then(|| f.draft.pool.image.clone())
                .flatten(),
            ..f.draft.pool.clone()
        };
        let key = (pool, built);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(f),
            None => groups.push((key, vec![f])),
        }
    }
    let mut pools: Vec<(String, Draft, Vec<String>)> = Vec::new();
    for (_, members) in groups {
        let names: Vec<&str> = members.iter().map(|m| m.draft.service.as_str()).collect();
        let mut pool_name = pool_name(&names);
        let base = pool_name.clone();
        let mut n = 2;
        while pools.iter().any(|(p, _, _)| *p == pool_name) {
            pool_name = format!("{}-{n}", base.chars().take(21).collect::<String>());
            n += 1;
        }
        let total: u32 = members.iter().filter_map(|m| m.draft.pool.count).sum();
        let mut first = members[0].draft.clone();
        let mut sources: Vec<(usize, Vec<String>)> = Vec::new();
        for m in &members {
            let name = format!("`{}`", m.draft.service);
            match sources.last_mut() {
                Some((file, names)) if *file == m.file => names.push(name),
                _ => sources.push((m.file, vec![name])),
            }
        }
        let sources: Vec<String> = sources
            .into_iter()
            .map(|(file, names)| format!("{} of {}", names.join(", "), files[file].shown))
            .collect();
        if members.len() > 1 {
            first.pool.count = Some(total.min(1000));
            first.notes.insert(
                "count".into(),
                vec![format!(
                    "{} services with the same settings, one runner each: one pool.",
                    members.len()
                )],
            );
            report.fleet.push(Finding::new(
                Tag::Decided,
                format!(
                    "services {} have the same settings: one pool `{pool_name}` with count {total}",
                    names.join(", ")
                ),
            ));
        }
        for m in members {
            report.services.push(ServiceReport {
                file: files[m.file].shown.clone(),
                service: m.draft.service.clone(),
                pool: Some(pool_name.clone()),
                why: m.why,
                findings: m.draft.findings,
            });
        }
        pools.push((pool_name, first, sources));
    }
    pools
}

/// A pool's name from its services' names: their common start without trailing digits
/// (`gpu-runner-1`, `gpu-runner-2` make `gpu-runner`).
fn pool_name(services: &[&str]) -> String {
    let first = services.first().copied().unwrap_or_default();
    let common = services.iter().skip(1).fold(first.to_string(), |acc, s| {
        acc.chars()
            .zip(s.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect()
    });
    let trimmed = common.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
    let name = sanitize_name(if trimmed.is_empty() { first } else { trimmed });
    if name.is_empty() {
        "runners".into()
    } else {
        name
    }
}

/// Builds the spec and its comments, renders it and reads it back.
fn finish(
    files: &[compose::ComposeFile],
    name: String,
    place: (Place, String),
    pools: Vec<(String, Draft, Vec<String>)>,
    mut report: Report,
) -> Result<Imported, ImportError> {
    let mut comments = header(files);
    comments.above("/name", "The compose project's name. Every runner and container fleet owns is named <name>-<pool>-<suffix>; two fleets must never share a name.");
    let (repo, org) = match &place.0.scope {
        Scope::Repo(r) => (Some(r.clone()), None),
        Scope::Org(o) => (None, Some(o.clone())),
    };
    let field = if repo.is_some() { "repo" } else { "org" };
    comments.above(format!("/github/{field}"), format!("From {}.", place.1));
    let api_url = place.0.api_url();
    if api_url.is_some() {
        comments.above("/github/api_url", format!("GitHub Enterprise Server on {}: fleet refuses to send its token anywhere else than $GITHUB_API_URL, so set that to the same URL.", place.0.host));
    }
    comments.above("/github/auth/token_env", "fleet reads its own GitHub token from this variable when it runs (docs/operations.md says which rights it needs); no token is ever written here.");
    let mut secret_values = Vec::new();
    let mut spec_pools = BTreeMap::new();
    let pool_order = pools.iter().map(|(n, _, _)| n.clone()).collect();
    comments.order.insert("/pools".into(), pool_order);
    for (pool_name, draft, sources) in pools {
        let base = format!("/pools/{}", escape_pointer(&pool_name));
        comments.above(base.clone(), format!("From {}.", sources.join(", ")));
        if !draft.removed.is_empty() {
            comments.above(
                base.clone(),
                format!(
                    "Removed (secrets, fleet.yaml holds none): {}.",
                    draft.removed.join(", ")
                ),
            );
        }
        if !draft.left_out.is_empty() {
            comments.above(
                base.clone(),
                format!(
                    "Left out (the report says why): {}.",
                    draft.left_out.join("; ")
                ),
            );
        }
        for (at, lines) in &draft.notes {
            for line in lines {
                comments.above(format!("{base}/{at}"), line.clone());
            }
        }
        secret_values.extend(draft.secret_values);
        spec_pools.insert(pool_name, draft.pool);
    }
    let spec = Spec {
        version: 1,
        name,
        github: Github {
            repo,
            org,
            api_url,
            auth: Some(Auth {
                token_env: Some(crate::spec::DEFAULT_TOKEN_ENV.into()),
                app: None,
            }),
        },
        hosts: None,
        defaults: None,
        pools: spec_pools,
        gpu_health: None,
    };
    let text = emit::render(&spec, &comments).map_err(|e| ImportError::Invalid(e.to_string()))?;
    report.fleet.sort_by_key(|f| f.tag != Tag::Decided);
    let imported = Imported {
        spec,
        text,
        report,
        secret_values,
    };
    // Checked before anything else can show the text (a validation error would).
    if imported.leaks_into(&imported.text) {
        return Err(ImportError::SecretLeak);
    }
    check_written(&imported.spec, &imported.text)?;
    Ok(imported)
}

fn header(files: &[compose::ComposeFile]) -> Comments {
    let shown: Vec<String> = files
        .iter()
        .map(|f| format!("{} (compose project `{}`)", f.shown, f.project))
        .collect();
    Comments {
        header: vec![
        format!("fleet.yaml written by `fleet import` from {}.", shown.join(", ")),
        "A comment above a line says what was decided there and why; the report on stderr also names everything that was removed or left out. Every field: docs/spec.md. Check it with `fleet validate`, then `fleet plan`.".into(),
        "No `hosts`: the runners run on the local Docker engine ($DOCKER_HOST, else /var/run/docker.sock), with the GPUs NVML finds there, as the compose services did.".into(),
        ],
        ..Comments::default()
    }
}

/// Reads the text back: it must validate and mean exactly the spec it was made from.
fn check_written(spec: &Spec, text: &str) -> Result<(), ImportError> {
    match crate::spec::parse_str(text, Path::new(".")) {
        Ok(read) if read == *spec => Ok(()),
        Ok(_) => Err(ImportError::Invalid(format!(
            "it reads back as a different spec:\n{text}"
        ))),
        Err(diagnostics) => {
            let rendered: Vec<String> = diagnostics
                .iter()
                .map(|d| d.render("fleet.yaml", text))
                .collect();
            Err(ImportError::Invalid(rendered.join("\n")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(sanitize_name("My_CI.Runners"), "my-ci-runners");
        assert_eq!(sanitize_name("--x--"), "x");
        assert_eq!(sanitize_name(&"a".repeat(30)).len(), 24);
        assert_eq!(pool_name(&["gpu-runner-1", "gpu-runner-2"]), "gpu-runner");
        assert_eq!(pool_name(&["runner1", "runner2"]), "runner");
        assert_eq!(pool_name(&["a", "b"]), "a");
    }
}
