//! Writes a [`Spec`] as `fleet.yaml` text with comments, for `fleet import` and `fleet init`.
//!
//! There is no YAML writer among fleet's dependencies (the spec is read with `saphyr-parser`, which
//! only parses), and comments need a writer of our own anyway. The subset written here is small:
//! block mappings, flow sequences of scalars, block sequences of flow mappings, and scalars that
//! are written plain only when the spec's own reader reads them back as the same string.
//! Callers check the result by reading it back with [`crate::spec::parse_str`].

use std::collections::BTreeMap;

use serde_json::Value;

use crate::spec::yaml::escape_pointer;
use crate::spec::{POOL_FIELDS, Spec};

/// Comments that go with a spec, keyed by the JSON pointer of the value they explain
/// (`/pools/gpu/gpus`, `/pools/gpu/volumes/0`).
#[derive(Debug, Default, Clone)]
pub struct Comments {
    /// Lines at the top of the file.
    pub header: Vec<String>,
    /// Lines written just above the line of the value at a pointer.
    pub above: BTreeMap<String, Vec<String>>,
    /// Lines written after the last entry of the mapping at a pointer, at its entries' indent.
    pub after: BTreeMap<String, Vec<String>>,
    /// The order of the keys of the mapping at a pointer (`/pools`), when it is not the schema's
    /// or the alphabetical one.
    pub order: BTreeMap<String, Vec<String>>,
}

impl Comments {
    /// Adds a comment above the value at `pointer`.
    pub fn above(&mut self, pointer: impl Into<String>, line: impl Into<String>) {
        self.above
            .entry(pointer.into())
            .or_default()
            .push(line.into());
    }

    /// Adds a comment after the entries of the mapping at `pointer`.
    pub fn after(&mut self, pointer: impl Into<String>, line: impl Into<String>) {
        self.after
            .entry(pointer.into())
            .or_default()
            .push(line.into());
    }
}

/// Comment lines are wrapped to this width (lines that start with a space are kept as they are:
/// they hold examples).
const WIDTH: usize = 100;

/// The spec as YAML text with its comments.
pub fn render(spec: &Spec, comments: &Comments) -> Result<String, serde_json::Error> {
    let value = serde_json::to_value(spec)?;
    let mut out = String::new();
    for line in &comments.header {
        comment(&mut out, 0, line);
    }
    if !out.is_empty() {
        out.push('\n');
    }
    if let Value::Object(_) = value {
        write_mapping(&mut out, &value, "", 0, comments);
    }
    Ok(out)
}

/// The order keys are written in, by where the mapping is: the schema's order, not the
/// alphabetical order of `serde_json::Map`.
fn key_order(pointer: &str) -> &'static [&'static str] {
    const ROOT: &[&str] = &["version", "name", "github", "hosts", "defaults", "pools"];
    const GITHUB: &[&str] = &["repo", "org", "api_url", "auth"];
    const AUTH: &[&str] = &["token_env", "app"];
    const APP: &[&str] = &["app_id", "installation_id", "private_key_file"];
    const HOST: &[&str] = &["docker", "gpus", "gpu_mode"];
    const VOLUME: &[&str] = &["source", "target", "read_only"];
    let segments: Vec<&str> = pointer.split('/').skip(1).collect();
    match segments.as_slice() {
        [] => ROOT,
        ["github"] => GITHUB,
        ["github", "auth"] => AUTH,
        ["github", "auth", "app"] => APP,
        ["hosts", _] => HOST,
        ["defaults"] | ["pools", _] => POOL_FIELDS,
        ["defaults", "volumes", _] | ["pools", _, "volumes", _] => VOLUME,
        _ => &[],
    }
}

fn ordered_keys<'a>(
    pointer: &str,
    map: &'a serde_json::Map<String, Value>,
    c: &Comments,
) -> Vec<&'a String> {
    let given: Vec<&str> = c
        .order
        .get(pointer)
        .map(|o| o.iter().map(String::as_str).collect())
        .unwrap_or_else(|| key_order(pointer).to_vec());
    let rank = |k: &str| given.iter().position(|o| *o == k).unwrap_or(given.len());
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| rank(k));
    keys
}

fn write_mapping(out: &mut String, value: &Value, pointer: &str, indent: usize, c: &Comments) {
    let Value::Object(map) = value else { return };
    for (n, key) in ordered_keys(pointer, map, c).into_iter().enumerate() {
        // A blank line between top-level sections and between pools.
        if n > 0 && (pointer.is_empty() || pointer == "/pools") {
            out.push('\n');
        }
        let child = format!("{pointer}/{}", escape_pointer(key));
        let item = &map[key.as_str()];
        above(out, indent, &child, c);
        let pad = " ".repeat(indent);
        let key_text = string(key, false);
        match item {
            Value::Object(inner) if inner.is_empty() => {
                out.push_str(&format!("{pad}{key_text}: {{}}\n"));
            }
            Value::Object(_) => {
                out.push_str(&format!("{pad}{key_text}:\n"));
                write_mapping(out, item, &child, indent + 2, c);
            }
            Value::Array(items) => write_sequence(out, &key_text, items, &child, indent, c),
            scalar => out.push_str(&format!("{pad}{key_text}: {}\n", plain(scalar, false))),
        }
    }
    if let Some(lines) = c.after.get(pointer) {
        for line in lines {
            comment(out, indent, line);
        }
    }
}

fn write_sequence(
    out: &mut String,
    key_text: &str,
    items: &[Value],
    pointer: &str,
    indent: usize,
    c: &Comments,
) {
    let pad = " ".repeat(indent);
    let all_scalars = items.iter().all(|v| !v.is_object() && !v.is_array());
    let flow = all_scalars
        .then(|| {
            let parts: Vec<String> = items.iter().map(|v| plain(v, true)).collect();
            format!("{pad}{key_text}: [{}]", parts.join(", "))
        })
        .filter(|line| line.chars().count() <= WIDTH);
    if let Some(line) = flow {
        out.push_str(&line);
        out.push('\n');
        return;
    }
    out.push_str(&format!("{pad}{key_text}:\n"));
    for (i, item) in items.iter().enumerate() {
        let child = format!("{pointer}/{i}");
        above(out, indent + 2, &child, c);
        match item {
            Value::Object(map) => {
                let parts: Vec<String> = ordered_keys(&child, map, c)
                    .into_iter()
                    .map(|k| format!("{}: {}", string(k, true), plain(&map[k.as_str()], true)))
                    .collect();
                out.push_str(&format!("{pad}  - {{ {} }}\n", parts.join(", ")));
            }
            other => out.push_str(&format!("{pad}  - {}\n", plain(other, false))),
        }
    }
}

fn above(out: &mut String, indent: usize, pointer: &str, c: &Comments) {
    if let Some(lines) = c.above.get(pointer) {
        for line in lines {
            comment(out, indent, line);
        }
    }
}

/// Writes `text` as `# ` comment lines, wrapped at [`WIDTH`].
fn comment(out: &mut String, indent: usize, text: &str) {
    let pad = " ".repeat(indent);
    if text.is_empty() {
        out.push_str(&format!("{pad}#\n"));
        return;
    }
    if text.starts_with(' ') {
        out.push_str(&format!("{pad}#{text}\n"));
        return;
    }
    let room = WIDTH.saturating_sub(indent + 2).max(40);
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > room {
            out.push_str(&format!("{pad}# {line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&format!("{pad}# {line}\n"));
}

/// A scalar as YAML: plain when that reads back as the same value, else JSON-quoted (a JSON
/// string is a valid YAML double-quoted scalar).
fn plain(value: &Value, flow: bool) -> String {
    match value {
        Value::String(s) => string(s, flow),
        Value::Number(n) => match n.as_f64() {
            // 8.0 is written 8: it reads back as the same number.
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// YAML 1.1 booleans: fleet's reader takes them as strings, but people and older tools read
/// them as booleans, so they are quoted.
const YAML11_WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off"];

fn string(s: &str, flow: bool) -> String {
    if is_plain(s, flow) {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

fn is_plain(s: &str, flow: bool) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let safe_chars = s
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "._/-+@=:~%".contains(ch));
    let safe_first = first.is_ascii_alphanumeric() || "/._".contains(first);
    if !safe_chars || !safe_first || s.ends_with(':') || (flow && s.contains(':')) {
        return false;
    }
    if YAML11_WORDS.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    // What fleet's own reader makes of it: `8`, `true`, `~` and `1e3` are not strings.
    matches!(crate::spec::yaml::parse(s).value, Some(Value::String(ref read)) if read == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_that_would_change_type_are_quoted() {
        for (text, want) in [
            ("gpu", "gpu"),
            (
                "ghcr.io/acme/arch-runner:2.336.0",
                "ghcr.io/acme/arch-runner:2.336.0",
            ),
            ("/srv/ccache", "/srv/ccache"),
            ("16", "\"16\""),
            ("true", "\"true\""),
            ("yes", "\"yes\""),
            ("~", "\"~\""),
            ("1e3", "\"1e3\""),
            ("", "\"\""),
            ("-j 8", "\"-j 8\""),
            ("a: b", "\"a: b\""),
            ("#x", "\"#x\""),
            ("line\nbreak", "\"line\\nbreak\""),
        ] {
            assert_eq!(string(text, false), want, "{text:?}");
        }
        assert_eq!(string("a:b", true), "\"a:b\"");
    }

    #[test]
    fn comments_wrap_and_examples_stay() {
        let mut out = String::new();
        comment(&mut out, 2, &"word ".repeat(40));
        assert!(out.lines().count() > 1);
        assert!(
            out.lines()
                .all(|l| l.len() <= WIDTH && l.starts_with("  # "))
        );
        let mut out = String::new();
        comment(&mut out, 2, "   gpu: { count: 1 }");
        assert_eq!(out, "  #   gpu: { count: 1 }\n");
    }

    #[test]
    fn written_text_reads_back_as_the_same_spec() {
        let text = "version: 1\nname: t\ngithub: { repo: a/b }\npools:\n  p:\n    count: 2\n    image: \"x:1\"\n    labels: [gpu, \"yes\"]\n    env: { A: \"16\", B: \"a: b\" }\n    cpus: 8.5\n    memory: 16g\n    volumes:\n      - { source: /srv/c, target: /c, read_only: true }\n";
        let spec = crate::spec::parse_str(text, std::path::Path::new(".")).expect("valid");
        let mut comments = Comments::default();
        comments.above("/pools/p/count", "two runners");
        comments.after("/pools", "the end");
        let written = render(&spec, &comments).expect("render");
        let again = crate::spec::parse_str(&written, std::path::Path::new(".")).expect("reads");
        assert_eq!(spec, again, "{written}");
        assert!(
            written.contains("    # two runners\n    count: 2\n"),
            "{written}"
        );
        assert!(written.ends_with("  # the end\n"), "{written}");
        assert!(written.contains("labels: [gpu, \"yes\"]"), "{written}");
    }
}
