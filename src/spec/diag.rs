//! Spec diagnostics: where (file, line, column, path), what was expected, what was found.

use std::fmt;

use crate::escape::{escaped, escaped_lines};

use super::yaml::Pos;
use crate::secret::mask_credentials;

/// One problem in a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    /// JSON pointer into the document (`/pools/gpu/count`); empty for the whole document.
    pub pointer: String,
    /// What is wrong: what was expected and what was found.
    pub message: String,
    /// How to fix it, when there is more to say than the message.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(pos: Pos, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            pos,
            pointer: pointer.into(),
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The dotted path of the pointer: `pools.gpu.volumes[0].target`.
    pub fn path(&self) -> String {
        dotted_path(&self.pointer)
    }

    /// Renders the diagnostic with a code frame from `source`, naming `file`. Anything shaped
    /// like a credential, in the frame or the message, is masked.
    pub fn render(&self, file: &str, source: &str) -> String {
        let line = self
            .pos
            .line
            .checked_sub(1)
            .and_then(|i| source.lines().nth(i));
        self.render_line(file, line)
    }

    /// [`Diagnostic::render`] with the source line already found (`None`: past the end).
    pub fn render_line(&self, file: &str, line: Option<&str>) -> String {
        // Everything shown comes from the file: escaped (src/escape.rs), so that no escape
        // sequence in the spec reaches the terminal or the CI log.
        let path = self.path();
        let path = escaped(&mask_credentials(&shorten(&path))).into_owned();
        let message = escaped_lines(&mask_credentials(&self.message)).into_owned();
        let file = escaped(file);
        let mut out = if path.is_empty() {
            format!("error: {message}\n")
        } else {
            format!("error: {path}: {message}\n")
        };
        let line_no = self.pos.line.max(1);
        let gutter = line_no.to_string().len();
        out.push_str(&format!(
            "{:gutter$}--> {file}:{line_no}:{}\n",
            "",
            self.pos.col.max(1)
        ));
        if let Some(line) = line {
            // The caret goes under the column as it is shown: after masking what precedes it.
            let before: String = line.chars().take(self.pos.col.saturating_sub(1)).collect();
            let caret_at = escaped(&mask_credentials(&before).replace('\t', "    "))
                .chars()
                .count();
            let shown = escaped(&mask_credentials(line).replace('\t', "    ")).into_owned();
            let (shown, caret_at) = frame_window(&shown, caret_at);
            out.push_str(&format!("{:gutter$} |\n", ""));
            out.push_str(&format!("{line_no} | {shown}\n"));
            out.push_str(&format!("{:gutter$} | {:caret_at$}^\n", "", ""));
        }
        if let Some(help) = &self.help {
            out.push_str(&format!(
                "{:gutter$} = help: {}\n",
                "",
                escaped_lines(&mask_credentials(help))
            ));
        }
        out
    }
}

/// The widest code frame line shown; a longer line is cut around the caret.
const FRAME_WIDTH: usize = 120;

/// The part of `line` (tabs already expanded) that a frame shows, and the caret's place in it.
fn frame_window(line: &str, caret_at: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= FRAME_WIDTH {
        return (line.to_string(), caret_at);
    }
    let start = caret_at
        .saturating_sub(FRAME_WIDTH / 2)
        .min(chars.len() - FRAME_WIDTH);
    let end = start + FRAME_WIDTH;
    let mut shown = String::new();
    let mut caret = caret_at - start;
    if start > 0 {
        shown.push('…');
        caret += 1;
    }
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push('…');
    }
    (shown, caret)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path();
        write!(f, "{}:{}: ", self.pos.line, self.pos.col)?;
        if !path.is_empty() {
            write!(f, "{}: ", escaped(&mask_credentials(&path)))?;
        }
        f.write_str(&escaped_lines(&mask_credentials(&self.message)))
    }
}

/// `/pools/gpu/volumes/0/target` -> `pools.gpu.volumes[0].target`.
pub fn dotted_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

/// The most characters of a string quoted in a message.
const MAX_QUOTED: usize = 80;

/// `text` for a message, cut after [`MAX_QUOTED`] characters: a hostile spec may hold a
/// megabyte in one key or value.
pub fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTED) {
        None => text.into(),
        Some((cut, _)) => {
            format!("{}... ({} characters)", &text[..cut], text.chars().count()).into()
        }
    }
}

/// `text` quoted for a message, cut after [`MAX_QUOTED`] characters: a hostile spec may hold
/// a megabyte in one value.
pub fn quote(text: &str) -> String {
    let count = text.chars().count();
    if count <= MAX_QUOTED {
        return format!("{text:?}");
    }
    let start: String = text.chars().take(MAX_QUOTED).collect();
    format!("{start:?}... ({count} characters)")
}

/// A short, one-line rendering of a YAML/JSON value for "found ..." messages.
pub fn describe_value(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null (an empty value)".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) if n.is_f64() => format!("number {n}"),
        Value::Number(n) => format!("integer {n}"),
        Value::String(s) => format!("string {}", quote(s)),
        Value::Array(a) => format!("a list of {} item(s)", a.len()),
        Value::Object(_) => "a mapping".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths() {
        assert_eq!(dotted_path(""), "");
        assert_eq!(dotted_path("/pools/gpu/count"), "pools.gpu.count");
        assert_eq!(
            dotted_path("/pools/gpu/volumes/0/target"),
            "pools.gpu.volumes[0].target"
        );
        assert_eq!(dotted_path("/pools/a~1b"), "pools.a/b");
    }

    #[test]
    fn renders_a_code_frame() {
        let d = Diagnostic::new(Pos { line: 2, col: 10 }, "/pools/gpu/count", "expected x")
            .with_help("do y");
        let text = d.render("fleet.yaml", "pools:\n  count: -1\n");
        assert_eq!(
            text,
            "error: pools.gpu.count: expected x\n --> fleet.yaml:2:10\n  |\n2 |   count: -1\n  |          ^\n  = help: do y\n"
        );
    }

    #[test]
    fn credentials_are_masked_in_the_frame_the_message_and_the_help() {
        let d = Diagnostic::new(
            Pos { line: 1, col: 19 },
            "/github/auth/ghp_key1",
            "unknown field `ghp_key1`, found string \"ghs_value2\"",
        )
        .with_help("not ghu_help3");
        let text = d.render("fleet.yaml", "auth: { ghp_key1: ghs_value2, x: 1 }\n");
        for secret in ["ghp_key1", "ghs_value2", "ghu_help3"] {
            assert!(!text.contains(secret), "{secret} in:\n{text}");
        }
        assert_eq!(
            text,
            format!(
                "error: github.auth.<redacted>: unknown field `<redacted>`, found string \"<redacted>\"\n --> fleet.yaml:1:19\n  |\n1 | auth: {{ <redacted>: <redacted>, x: 1 }}\n  | {}^\n  = help: not <redacted>\n",
                " ".repeat("auth: { <redacted>: ".len())
            )
        );
        assert!(!d.to_string().contains("ghs_value2"));
    }

    #[test]
    fn the_caret_follows_the_masked_line() {
        // `x` is at column 28 in the file; the masks before it are shorter than the tokens.
        let source = "{ a: ghp_aaaaaaaaaaaaaaaa, x: 1 }";
        let d = Diagnostic::new(Pos { line: 1, col: 28 }, "/x", "bad");
        let text = d.render("f", source);
        let lines: Vec<&str> = text.lines().collect();
        let shown = lines[3].trim_start_matches("1 | ");
        let caret = lines[4].trim_start_matches("  | ").len() - 1;
        assert_eq!(&shown[caret..caret + 1], "x", "{text}");
    }

    #[test]
    fn a_long_line_is_cut_around_the_caret() {
        let line = format!("{}X{}", "a".repeat(1000), "b".repeat(1000));
        let d = Diagnostic::new(Pos { line: 1, col: 1001 }, "", "bad");
        let text = d.render("f", &line);
        let lines: Vec<&str> = text.lines().collect();
        let shown = lines[3].trim_start_matches("1 | ");
        assert!(shown.starts_with('…') && shown.ends_with('…'), "{shown}");
        assert_eq!(shown.chars().count(), FRAME_WIDTH + 2);
        let caret = lines[4].trim_start_matches("  | ").chars().count() - 1;
        assert_eq!(shown.chars().nth(caret), Some('X'), "{text}");
        // Near the start, nothing is cut before.
        let d = Diagnostic::new(Pos { line: 1, col: 3 }, "", "bad");
        let text = d.render("f", &line);
        assert!(
            text.lines()
                .nth(3)
                .is_some_and(|l| l.starts_with("1 | aaa")),
            "{text}"
        );
        // Past the end of the line (a caret after the last character) stays in the window.
        let d = Diagnostic::new(Pos { line: 1, col: 2002 }, "", "bad");
        let text = d.render("f", &line);
        assert!(text.contains('^'), "{text}");
    }

    #[test]
    fn long_strings_are_quoted_in_part() {
        let long = serde_json::Value::from("x".repeat(10_000));
        let text = describe_value(&long);
        assert!(text.ends_with("... (10000 characters)"), "{text}");
        assert!(text.len() < 120, "{text}");
        assert_eq!(describe_value(&"ab".into()), "string \"ab\"");
        assert_eq!(shorten("ab"), "ab");
        let long = "é".repeat(100);
        assert_eq!(
            shorten(&long),
            format!("{}... (100 characters)", "é".repeat(80))
        );
    }
}
