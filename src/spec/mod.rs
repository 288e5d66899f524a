//! `fleet.yaml`: load, validate against the schema, check, and model.
//!
//! Loading never stops at the first problem: YAML problems, every schema violation and every
//! semantic problem are collected and returned together, each with its line and column.

mod check;
pub mod diag;
pub mod model;
mod resolve;
pub mod schema;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use check::{MAX_RUNNER_LABELS, MAX_RUNNER_NAME, max_runner_name_len};
pub use diag::Diagnostic;
pub use model::*;
pub use resolve::{DEFAULT_RUNNER_LABELS, ResolvedPool};

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid fleet spec: {} problem(s)", path.display(), diagnostics.len())]
    Invalid {
        path: PathBuf,
        /// The file's text, for code frames.
        text: String,
        diagnostics: Vec<Diagnostic>,
    },
}

impl SpecError {
    /// Every problem with its code frame, then a count; or the read error.
    pub fn render(&self) -> String {
        match self {
            SpecError::Read { .. } => format!("error: {self}\n"),
            SpecError::Invalid {
                path,
                text,
                diagnostics,
            } => {
                let file = path.display().to_string();
                let mut out = String::new();
                for d in diagnostics {
                    out.push_str(&d.render(&file, text));
                    out.push('\n');
                }
                out.push_str(&format!(
                    "{file}: {} problem(s) found; nothing was changed.\n",
                    diagnostics.len()
                ));
                out
            }
        }
    }
}

/// Reads and validates the spec at `path`.
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    let bytes = std::fs::read(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut diagnostics = Vec::new();
    if std::str::from_utf8(&bytes).is_err() {
        diagnostics.push(Diagnostic::new(
            Default::default(),
            "",
            "expected UTF-8 text, found invalid bytes",
        ));
    }
    match parse_str(&text, base_dir) {
        Ok(spec) if diagnostics.is_empty() => Ok(spec),
        Ok(_) => Err(SpecError::Invalid {
            path: path.to_path_buf(),
            text,
            diagnostics,
        }),
        Err(more) => {
            diagnostics.extend(more);
            Err(SpecError::Invalid {
                path: path.to_path_buf(),
                text,
                diagnostics,
            })
        }
    }
}

/// Validates spec text; relative paths in it are relative to `base_dir`.
pub fn parse_str(text: &str, base_dir: &Path) -> Result<Spec, Vec<Diagnostic>> {
    let doc = yaml::parse(text);
    let mut diagnostics: Vec<Diagnostic> = doc
        .problems
        .iter()
        .map(|p| Diagnostic::new(p.pos, p.pointer.clone(), p.message.clone()))
        .collect();
    let Some(value) = doc.value else {
        return Err(diagnostics);
    };
    if value.is_null() {
        diagnostics.push(Diagnostic::new(
            Default::default(),
            "",
            "expected a fleet spec (a mapping with version, name, github and pools), found an empty document",
        ));
        return Err(diagnostics);
    }
    let schema_problems = schema::check(&value, &doc.positions);
    if !schema_problems.is_empty() {
        // Still run the semantic checks, on what remains once the values the schema refused
        // are set aside, so that one run reports every problem of the file.
        let pruned: BTreeSet<String> = schema_problems
            .iter()
            .filter_map(|d| prune_point(&d.pointer))
            .collect();
        let mut rest = value;
        for pointer in &pruned {
            remove_at(&mut rest, pointer);
        }
        let (spec, github_ok) = lenient_spec(&rest);
        diagnostics.extend(schema_problems);
        diagnostics.extend(check::check(
            &spec,
            &doc.positions,
            base_dir,
            &check::Scope {
                github: github_ok,
                set_aside: &pruned,
            },
        ));
        sort(&mut diagnostics);
        return Err(diagnostics);
    }
    let spec: Spec = match serde_json::from_value(value) {
        Ok(spec) => spec,
        Err(e) => {
            // The schema accepted what the model refuses: a drift the tests guard against.
            diagnostics.push(Diagnostic::new(
                Default::default(),
                "",
                format!("internal error: the schema and the model disagree: {e}"),
            ));
            return Err(diagnostics);
        }
    };
    let set_aside = BTreeSet::new();
    diagnostics.extend(check::check(
        &spec,
        &doc.positions,
        base_dir,
        &check::Scope {
            github: true,
            set_aside: &set_aside,
        },
    ));
    if diagnostics.is_empty() {
        Ok(spec)
    } else {
        sort(&mut diagnostics);
        Err(diagnostics)
    }
}

/// What to set aside for a schema error at `pointer`: the value itself, or the whole list when
/// the error is inside one (removing one item would shift the positions of the others).
fn prune_point(pointer: &str) -> Option<String> {
    if pointer.is_empty() {
        return None;
    }
    let mut kept = String::new();
    for segment in pointer.split('/').skip(1) {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        kept.push('/');
        kept.push_str(segment);
    }
    (!kept.is_empty()).then_some(kept)
}

fn remove_at(value: &mut Value, pointer: &str) {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(map)) = value.pointer_mut(parent) {
        map.remove(&key);
    }
}

/// A spec built from a document that failed the schema, after its refused values were set
/// aside: each section deserialized on its own. Returns whether `github` could be read.
fn lenient_spec(value: &Value) -> (Spec, bool) {
    fn section<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
        serde_json::from_value(v.clone()).ok()
    }
    fn named<T: serde::de::DeserializeOwned>(v: Option<&Value>) -> Option<BTreeMap<String, T>> {
        v.and_then(Value::as_object).map(|map| {
            map.iter()
                .filter_map(|(k, v)| section(v).map(|t| (k.clone(), t)))
                .collect()
        })
    }
    let empty = serde_json::Map::new();
    let root = value.as_object().unwrap_or(&empty);
    let github: Option<Github> = root.get("github").and_then(section);
    let github_ok = github.is_some();
    let spec = Spec {
        version: 1,
        name: root
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        github: github.unwrap_or(Github {
            repo: None,
            org: None,
            api_url: None,
            auth: None,
        }),
        hosts: named(root.get("hosts")),
        defaults: root.get("defaults").and_then(section),
        pools: named(root.get("pools")).unwrap_or_default(),
    };
    (spec, github_ok)
}

fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| (a.pos, &a.pointer).cmp(&(b.pos, &b.pointer)));
}
