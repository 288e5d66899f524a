//! Checks the schema cannot express: references between sections, limits GitHub and Docker
//! impose, and the files the spec points at.

use std::path::Path;

use super::diag::Diagnostic;
use super::model::{GpuRequest, HostGpus, Pool, Spec};
use super::resolve::DEFAULT_RUNNER_LABELS;
use super::yaml::{Positions, escape_pointer};

/// GitHub refuses runner names longer than this.
pub const MAX_RUNNER_NAME: usize = 64;
/// GitHub accepts at most this many labels on one runner (the labels endpoints' `maxItems`).
pub const MAX_RUNNER_LABELS: usize = 100;
/// Length of the random suffix of an ephemeral runner's name.
pub const RUNNER_SUFFIX_LEN: usize = 6;

/// Environment variables fleet sets itself (the container contract, docs/apply.md); a pool may
/// not set them.
const RESERVED_ENV: &[&str] = &[
    "RUNNER_NAME",
    "RUNNER_LABELS",
    "FLEET_POOL",
    "FLEET_STATE_DIR",
];
const RESERVED_ENV_PREFIX: &str = "ACTIONS_RUNNER_INPUT_";

/// The longest runner name a pool can produce: `<fleet>-<pool>-<suffix>`.
pub fn max_runner_name_len(fleet: &str, pool: &str) -> usize {
    fleet.chars().count() + 1 + pool.chars().count() + 1 + RUNNER_SUFFIX_LEN
}

/// Lets a just-reported problem take a help line.
struct Help<'a>(Option<&'a mut Diagnostic>);

impl Help<'_> {
    fn help(self, text: impl Into<String>) {
        if let Some(d) = self.0 {
            d.help = Some(text.into());
        }
    }
}

/// What the semantic checks may rely on when the schema already refused parts of the file.
pub struct Scope<'a> {
    /// `github` was readable: check it.
    pub github: bool,
    /// JSON pointers of values the schema refused and that were set aside: a field set aside
    /// is not "missing", it is wrong, and that was reported already.
    pub set_aside: &'a std::collections::BTreeSet<String>,
}

struct Checker<'a> {
    spec: &'a Spec,
    scope: &'a Scope<'a>,
    positions: &'a Positions,
    out: Vec<Diagnostic>,
}

impl Checker<'_> {
    /// Reports a problem with the value at `pointer`.
    fn at_value(&mut self, pointer: &str, message: impl Into<String>) -> Help<'_> {
        let d = Diagnostic::new(self.positions.value(pointer), pointer, message);
        self.out.push(d);
        Help(self.out.last_mut())
    }

    /// Reports a problem with the key at `pointer` (a missing field, a bad name).
    fn at_key(&mut self, pointer: &str, message: impl Into<String>) -> Help<'_> {
        let d = Diagnostic::new(self.positions.key(pointer), pointer, message);
        self.out.push(d);
        Help(self.out.last_mut())
    }

    /// Whether the pool's (or the defaults') `field` was refused by the schema.
    fn set_aside(&self, pool_name: &str, field: &str) -> bool {
        self.scope
            .set_aside
            .contains(&format!("/pools/{}/{field}", escape_pointer(pool_name)))
            || self.scope.set_aside.contains(&format!("/defaults/{field}"))
            || self.scope.set_aside.contains("/defaults")
    }

    /// Where a pool field comes from: the pool itself or `defaults`.
    fn origin(&self, pool_name: &str, field: &str, own: bool) -> String {
        if own {
            format!("/pools/{}/{field}", escape_pointer(pool_name))
        } else {
            format!("/defaults/{field}")
        }
    }
}

/// Runs every semantic check; `base_dir` is the directory of the spec file (relative paths in
/// the spec are relative to it).
pub fn check(
    spec: &Spec,
    positions: &Positions,
    base_dir: &Path,
    scope: &Scope,
) -> Vec<Diagnostic> {
    let mut c = Checker {
        spec,
        scope,
        positions,
        out: Vec::new(),
    };
    if scope.github {
        check_github(&mut c, base_dir);
    }
    check_hosts(&mut c);
    for (name, pool) in &spec.pools {
        check_pool(&mut c, name, pool);
    }
    if let Some(defaults) = &spec.defaults {
        check_pool_values(&mut c, "/defaults", defaults);
    }
    let mut out = c.out;
    out.sort_by(|a, b| (a.pos, &a.pointer, &a.message).cmp(&(b.pos, &b.pointer, &b.message)));
    out.dedup();
    out
}

fn check_github(c: &mut Checker, base_dir: &Path) {
    let gh = &c.spec.github;
    match (&gh.repo, &gh.org) {
        (Some(_), Some(_)) => {
            c.at_key(
                "/github",
                "expected exactly one of `repo` and `org`, found both",
            )
            .help("a fleet registers runners either on one repository or on one organization");
        }
        (None, None) => {
            c.at_key(
                "/github",
                "expected exactly one of `repo` and `org`, found neither",
            )
            .help("add `repo: owner/name` or `org: name`");
        }
        _ => {}
    }
    let Some(auth) = &gh.auth else { return };
    if auth.token_env.is_some() && auth.app.is_some() {
        c.at_key(
            "/github/auth",
            "expected one of `token_env` and `app`, found both",
        );
    }
    if let Some(app) = &auth.app {
        let pointer = "/github/auth/app/private_key_file";
        let path = base_dir.join(&app.private_key_file);
        match std::fs::metadata(&path) {
            Err(e) => {
                c.at_value(
                    pointer,
                    format!(
                        "expected a readable private key file, found none at {}: {e}",
                        path.display()
                    ),
                );
            }
            Ok(meta) if !meta.is_file() => {
                c.at_value(
                    pointer,
                    format!("expected a file, found a directory at {}", path.display()),
                );
            }
            Ok(meta) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        c.at_value(
                            pointer,
                            format!(
                                "expected a private key readable by its owner only (mode 0600 or stricter), found mode {mode:04o} on {}",
                                path.display()
                            ),
                        )
            .help(format!("chmod 600 {}", path.display()));
                    }
                }
                #[cfg(not(unix))]
                let _ = meta;
            }
        }
    }
}

fn check_hosts(c: &mut Checker) {
    let Some(hosts) = &c.spec.hosts else { return };
    if hosts.is_empty() {
        c.at_key("/hosts", "expected at least one host, found none")
            .help("remove `hosts` to use the local Docker engine");
    }
    for (name, host) in hosts {
        if let HostGpus::Declared(uuids) = &host.gpus
            && uuids.is_empty()
        {
            c.at_value(
                &format!("/hosts/{}/gpus", escape_pointer(name)),
                "expected at least one GPU UUID, found an empty list",
            )
            .help("write `gpus: none` for a host without GPUs");
        }
    }
}

fn check_pool(c: &mut Checker, name: &str, pool: &Pool) {
    let spec = c.spec;
    let pool_ptr = format!("/pools/{}", escape_pointer(name));
    check_pool_values(c, &pool_ptr, pool);

    if spec.pool_field(pool, |p| p.count.as_ref()).is_none() && !c.set_aside(name, "count") {
        c.at_key(
            &pool_ptr,
            "missing required field `count` (here or in `defaults`)",
        );
    }
    if spec.pool_field(pool, |p| p.image.as_ref()).is_none() && !c.set_aside(name, "image") {
        c.at_key(
            &pool_ptr,
            "missing required field `image` (here or in `defaults`)",
        );
    }

    let hosts = spec.effective_hosts();
    let host_name = spec.pool_field(pool, |p| p.host.as_ref());
    let host = match host_name {
        Some(h) => {
            let ptr = c.origin(name, "host", pool.host.is_some());
            match hosts.get(h) {
                Some(host) => Some((h.clone(), host.clone())),
                None => {
                    let declared: Vec<&str> = hosts.keys().map(String::as_str).collect();
                    c.at_value(
                        &ptr,
                        format!(
                            "expected a host declared in `hosts` ({}), found {h:?}",
                            declared.join(", ")
                        ),
                    );
                    None
                }
            }
        }
        None if hosts.len() == 1 => hosts.into_iter().next(),
        None if c.set_aside(name, "host") || c.scope.set_aside.contains("/hosts") => None,
        None => {
            let declared: Vec<&str> = hosts.keys().map(String::as_str).collect();
            c.at_key(
                &pool_ptr,
                format!(
                    "missing field `host`: {} hosts are declared ({})",
                    declared.len(),
                    declared.join(", ")
                ),
            )
            .help("say which host the pool runs on with `host:`");
            None
        }
    };

    if let (Some((host_name, host)), Some(gpus)) =
        (host, spec.pool_field(pool, |p| p.gpus.as_ref()))
    {
        let ptr = c.origin(name, "gpus", pool.gpus.is_some());
        let wants = match gpus {
            GpuRequest::Count(0) => None,
            GpuRequest::Count(n) => Some(*n as usize),
            GpuRequest::All => Some(1),
        };
        match (&host.gpus, wants) {
            (HostGpus::None, Some(_)) => {
                c.at_value(
                    &ptr,
                    format!("pool `{name}` asks for GPUs, but host `{host_name}` is declared `gpus: none`"),
                );
            }
            (HostGpus::Declared(uuids), Some(n)) if n > uuids.len() && *gpus != GpuRequest::All => {
                c.at_value(
                    &ptr,
                    format!(
                        "pool `{name}` asks for {n} GPUs per runner, but host `{host_name}` declares only {}",
                        uuids.len()
                    ),
                );
            }
            _ => {}
        }
    }

    let longest = max_runner_name_len(&spec.name, name);
    if longest > MAX_RUNNER_NAME {
        c.at_key(
            &pool_ptr,
            format!(
                "runner names would be up to {longest} characters (`{}-{name}-` plus a {RUNNER_SUFFIX_LEN}-character suffix); GitHub allows {MAX_RUNNER_NAME}",
                spec.name
            ),
        );
    }

    let no_defaults = spec
        .pool_field(pool, |p| p.no_default_labels.as_ref())
        .copied()
        .unwrap_or(false);
    let labels = spec.pool_field(pool, |p| p.labels.as_ref());
    let count = labels.map_or(0, Vec::len)
        + if no_defaults {
            0
        } else {
            DEFAULT_RUNNER_LABELS.len()
        };
    if count == 0 {
        c.at_key(
            &pool_ptr,
            "expected at least one runner label, found none (`no_default_labels: true` and no `labels`)",
        )
            .help("a runner without labels can never be chosen by a workflow");
    } else if count > MAX_RUNNER_LABELS {
        let ptr = c.origin(name, "labels", pool.labels.is_some());
        c.at_value(
            &ptr,
            format!("expected at most {MAX_RUNNER_LABELS} labels per runner (GitHub's limit), found {count}"),
        );
    }

    if let Some(group) = spec.pool_field(pool, |p| p.runner_group.as_ref())
        && spec.github.repo.is_some()
        && group != "Default"
    {
        let ptr = c.origin(name, "runner_group", pool.runner_group.is_some());
        c.at_value(
            &ptr,
            format!("expected `Default` at repository scope (runner groups belong to organizations), found {group:?}"),
        );
    }
}

/// Checks of values that hold wherever they are written, in a pool or in `defaults`.
fn check_pool_values(c: &mut Checker, base: &str, pool: &Pool) {
    if let Some(labels) = &pool.labels {
        let mut seen = std::collections::BTreeSet::new();
        for (i, label) in labels.iter().enumerate() {
            if !seen.insert(label.to_lowercase()) {
                c.at_value(
                    &format!("{base}/labels/{i}"),
                    format!("duplicate label {label:?} (GitHub labels are case-insensitive)"),
                );
            }
        }
    }
    if let Some(volumes) = &pool.volumes {
        let mut targets = std::collections::BTreeSet::new();
        for (i, volume) in volumes.iter().enumerate() {
            let vptr = format!("{base}/volumes/{i}");
            if !volume.target.starts_with('/') {
                c.at_value(
                    &format!("{vptr}/target"),
                    format!(
                        "expected an absolute path inside the container, found {:?}",
                        volume.target
                    ),
                );
            } else if !targets.insert(volume.target.trim_end_matches('/').to_string()) {
                c.at_value(
                    &format!("{vptr}/target"),
                    format!("duplicate mount target {:?}", volume.target),
                );
            }
            let source = &volume.source;
            if !volume.is_bind() {
                let looks_like_path =
                    source.contains('/') || source.starts_with('.') || source.starts_with('~');
                if looks_like_path {
                    c.at_value(
                        &format!("{vptr}/source"),
                        format!("expected a named volume or an absolute host path, found the relative path {source:?}"),
                    )
            .help("bind mounts need an absolute path (Docker would read a relative one as a volume name)");
                } else if !is_volume_name(source) {
                    c.at_value(
                        &format!("{vptr}/source"),
                        format!("expected a volume name of letters, digits, '_', '.' and '-', found {source:?}"),
                    );
                }
            }
        }
    }
    if let Some(env) = &pool.env {
        for key in env.keys() {
            if RESERVED_ENV.contains(&key.as_str()) || key.starts_with(RESERVED_ENV_PREFIX) {
                c.at_key(
                    &format!("{base}/env/{}", escape_pointer(key)),
                    format!("`{key}` is set by fleet itself (the container contract); a pool cannot set it"),
                );
            }
        }
    }
}

fn is_volume_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_name_limit() {
        assert_eq!(max_runner_name_len("zquic-ci", "gpu"), 8 + 1 + 3 + 1 + 6);
        let long = "a".repeat(40);
        assert!(max_runner_name_len(&long, &long) > MAX_RUNNER_NAME);
        // The schema's name patterns (24 + 24 characters) keep every name within GitHub's limit.
        let max = "a".repeat(24);
        assert!(max_runner_name_len(&max, &max) <= MAX_RUNNER_NAME);
    }

    #[test]
    fn volume_names() {
        assert!(is_volume_name("zquic-cache"));
        assert!(is_volume_name("a.b_c"));
        assert!(!is_volume_name("-x"));
        assert!(!is_volume_name("a b"));
    }
}
