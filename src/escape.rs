//! The one function that makes input safe to print: every value that comes from input (the
//! spec, a saved plan, a compose file, GitHub's or Docker's answers) goes through [`escaped`]
//! before it reaches an error, a code frame, a status line or a log message, so that no
//! escape sequence reaches the operator's terminal or a CI log and no value forges a line.

use std::borrow::Cow;

/// Whether `c` makes a terminal act, or text read other than it is: control characters (C0,
/// DEL, C1: ESC and CSI among them) and the bidirectional controls.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character written as a visible escape (`\n`, `\t`, `\u{1b}`,
/// `\u{202e}`); unchanged (and not copied) when it has none.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if is_unsafe(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// As [`escaped`], but newlines stay: for text that is printed as lines (a code frame).
pub fn escaped_lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.split('\n')
            .map(|line| escaped(line).into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidirectional_overrides_become_visible() {
        assert_eq!(escaped("runner"), "runner");
        assert!(matches!(escaped("runner"), Cow::Borrowed(_)));
        assert_eq!(escaped("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escaped("a\u{9b}31m"), "a\\u{9b}31m");
        assert_eq!(escaped("x\ny\r\t\u{7}"), "x\\ny\\r\\t\\u{7}");
        assert_eq!(escaped("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(
            escaped_lines("a\u{1b}]0;t\u{7}\nb"),
            "a\\u{1b}]0;t\\u{7}\nb"
        );
    }
}
