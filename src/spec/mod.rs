//! `fleet.yaml`: load, validate against the schema, check, and model.
//!
//! Loading never stops at the first problem: YAML problems, every schema violation and every
//! semantic problem are collected and returned together, each with its line and column.

mod check;
pub mod diag;
pub mod endpoint;
mod health;
mod memory;
pub mod model;
pub mod reference;
mod resolve;
pub mod schema;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use check::{MAX_RUNNER_LABELS, MAX_RUNNER_NAME, max_runner_name_len};
pub use diag::Diagnostic;
pub use endpoint::DockerEndpoint;
pub use health::{DEFAULT_APPLICATION_XIDS, GpuHealthSettings};
pub use memory::{MIN_MEMORY_BYTES, parse_memory};
pub use model::*;
pub use resolve::{DEFAULT_RUNNER_LABELS, ResolvedAutoscale, ResolvedPool, ResolvedSecurity};

/// The largest spec fleet reads: a real one is a few KiB; the limit keeps a hostile file from
/// costing memory and time before it is refused.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// The most problems shown with a code frame; the rest are counted.
pub const MAX_RENDERED_PROBLEMS: usize = 100;

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
        /// The file's text, for code frames, with the values under `github.auth` masked.
        text: String,
        diagnostics: Vec<Diagnostic>,
    },
    /// The file is larger than [`MAX_SPEC_BYTES`]; it was not parsed.
    #[error(
        "{} is too large for a fleet spec: {size} bytes{}, the limit is {limit} bytes (1 MiB); nothing was changed",
        path.display(),
        if *at_least { " or more" } else { "" }
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        /// Only the first `size` bytes were read (the file grew, or is not a regular file).
        at_least: bool,
        limit: u64,
    },
}

impl SpecError {
    /// Every problem with its code frame, then a count; or the read error.
    pub fn render(&self) -> String {
        match self {
            SpecError::Read { .. } | SpecError::TooLarge { .. } => format!("error: {self}\n"),
            SpecError::Invalid {
                path,
                text,
                diagnostics,
            } => render_problems(&path.display().to_string(), text, diagnostics),
        }
    }
}

/// The first [`MAX_RENDERED_PROBLEMS`] problems with their code frames, then a count.
fn render_problems(file: &str, text: &str, diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for d in diagnostics.iter().take(MAX_RENDERED_PROBLEMS) {
        let line = d.pos.line.checked_sub(1).and_then(|i| lines.get(i));
        out.push_str(&d.render_line(file, line.copied()));
        out.push('\n');
    }
    if let Some(hidden) = diagnostics.len().checked_sub(MAX_RENDERED_PROBLEMS)
        && hidden > 0
    {
        out.push_str(&format!(
            "{file}: {hidden} more problem(s) not shown; fix the ones above first.\n"
        ));
    }
    out.push_str(&format!(
        "{file}: {} problem(s) found; nothing was changed.\n",
        diagnostics.len()
    ));
    out
}

/// Reads and validates the spec at `path`.
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    let bytes = read_bounded(path)?;
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
    let (outcome, secret_chars) = parse_text(&text, base_dir);
    match outcome {
        Ok(spec) if diagnostics.is_empty() => return Ok(spec),
        Ok(_) => {}
        Err(more) => diagnostics.extend(more),
    }
    Err(SpecError::Invalid {
        path: path.to_path_buf(),
        text: mask_chars(&text, &secret_chars),
        diagnostics,
    })
}

/// The file's bytes, refused unread past [`MAX_SPEC_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, SpecError> {
    let read_error = |source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |size, at_least| SpecError::TooLarge {
        path: path.to_path_buf(),
        size,
        at_least,
        limit: MAX_SPEC_BYTES,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if meta.is_file() && meta.len() > MAX_SPEC_BYTES {
        return Err(too_large(meta.len(), false));
    }
    // The size may change while reading, and a pipe or device has none: read one byte past
    // the limit at most.
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        return Err(too_large(bytes.len() as u64, true));
    }
    Ok(bytes)
}

/// `text` with the characters in `ranges` replaced by `*`, line breaks kept: the same lines
/// and columns, so that code frames still point at the right place.
fn mask_chars(text: &str, ranges: &[Range<usize>]) -> String {
    let mut ranges = ranges.to_vec();
    ranges.sort_by_key(|r| r.start);
    let mut next = ranges.iter().peekable();
    let mut current: Option<&Range<usize>> = None;
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            while current.is_none_or(|r| r.end <= i) && next.peek().is_some_and(|r| r.start <= i) {
                current = next.next();
            }
            let secret = current.is_some_and(|r| r.contains(&i));
            if secret && !matches!(c, '\n' | '\r') {
                '*'
            } else {
                c
            }
        })
        .collect()
}

/// Validates spec text; relative paths in it are relative to `base_dir`.
pub fn parse_str(text: &str, base_dir: &Path) -> Result<Spec, Vec<Diagnostic>> {
    parse_text(text, base_dir).0
}

/// [`parse_str`], and the character ranges of the values under `github.auth`.
fn parse_text(text: &str, base_dir: &Path) -> (Result<Spec, Vec<Diagnostic>>, Vec<Range<usize>>) {
    if text.len() as u64 > MAX_SPEC_BYTES {
        let problem = Diagnostic::new(
            Default::default(),
            "",
            format!(
                "expected a spec of at most {MAX_SPEC_BYTES} bytes (1 MiB), found {} bytes",
                text.len()
            ),
        );
        return (Err(vec![problem]), Vec::new());
    }
    let doc = yaml::parse(text);
    let secret_chars = doc.secret_chars.clone();
    (check_document(doc, base_dir), secret_chars)
}

/// Schema, model and semantic checks of a read document.
fn check_document(doc: yaml::Document, base_dir: &Path) -> Result<Spec, Vec<Diagnostic>> {
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
        gpu_health: root.get("gpu_health").and_then(section),
    };
    (spec, github_ok)
}

fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| (a.pos, &a.pointer).cmp(&(b.pos, &b.pointer)));
}
