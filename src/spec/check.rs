//! Checks the schema cannot express: references between sections, limits GitHub and Docker
//! impose, and the files the spec points at.

mod files;
mod hosts;
mod pools;

use std::path::Path;

use super::diag::Diagnostic;
use super::model::Spec;
use super::yaml::{Positions, escape_pointer};
use crate::secret::credential_spans;

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
    "FLEET_NO_DEFAULT_LABELS",
    "FLEET_RUNNER_UPDATE",
    "FLEET_WORK_DIR",
];
const RESERVED_ENV_PREFIX: &str = "ACTIONS_RUNNER_INPUT_";

/// What to do about a credential written in the spec.
const LEAKED_HELP: &str = "a credential in fleet.yaml is in its git history too: revoke it, and give fleet the name of a variable (`token_env`) or the path of a key file instead";

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
    hosts::check_hosts(&mut c, base_dir);
    if let Some(health) = &spec.gpu_health {
        for (pointer, message) in super::health::gpu_health_problems(health) {
            c.at_value(&pointer, message);
        }
    }
    for (name, pool) in &spec.pools {
        pools::check_pool(&mut c, name, pool);
    }
    pools::check_scale_set_names(&mut c);
    if let Some(defaults) = &spec.defaults {
        pools::check_pool_values(&mut c, "/defaults", defaults);
        if defaults.autoscale.is_some() {
            c.at_key(
                "/defaults/autoscale",
                "`autoscale` is per pool: `defaults` cannot set it",
            )
            .help("move `autoscale` into each pool that scales with the queue");
        }
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
    if let Some(name) = &auth.token_env
        && !credential_spans(name).is_empty()
    {
        c.at_value(
            "/github/auth/token_env",
            "expected the name of the environment variable that holds the token, found what looks like a token itself (not shown)",
        )
        .help(LEAKED_HELP);
    }
    if let Some(app) = &auth.app
        && app.private_key_file.contains("-----BEGIN")
    {
        c.at_value(
            "/github/auth/app/private_key_file",
            "expected the path of the App's private key file, found a PEM key itself (not shown)",
        )
        .help(LEAKED_HELP);
        return;
    }
    if let Some(app) = &auth.app {
        files::check_file(
            c,
            "/github/auth/app/private_key_file",
            &base_dir.join(&app.private_key_file),
            &files::FileRole::private("private key"),
            "",
        );
    }
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
}
