//! Secrets (tokens, JIT configs): carried as a type that cannot be printed by accident, and
//! masked in text that may hold one by mistake (a spec's code frame, an error from elsewhere).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// What a masked credential is replaced with.
pub const MASK: &str = "<redacted>";

/// Prefixes of GitHub's tokens: personal (classic and fine-grained), OAuth, user-to-server,
/// server-to-server (installation) and refresh tokens. The longest first: `github_pat_` would
/// otherwise never be tried.
const TOKEN_PREFIXES: &[&str] = &["github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"];

/// Base64 of a JSON object starts with this (`{"`): JWTs (an App's, GitHub's) and the
/// `encoded_jit_config` of a runner are such blobs.
const JSON_BASE64_START: &str = "eyJ";
/// Shorter base64-of-JSON runs are not worth a mask (and could be ordinary words).
const MIN_JSON_BASE64: usize = 24;

const PEM_BEGIN: &str = "-----BEGIN";
const PEM_END: &str = "-----END";
const PEM_DASHES: &str = "-----";

/// A secret value. `Debug` and `Display` print `<redacted>`; [`Secret::expose`] is the only way
/// to the value, and the only callers put it in a request header or a container's environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `text` with every credential-shaped value replaced by [`MASK`]: a GitHub token
/// (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` or `github_pat_` and the token characters that
/// follow), a base64-encoded JSON blob (`eyJ...`: a JWT or a runner's JIT config), and a PEM
/// block from `-----BEGIN` to its `-----END ...-----` line, or to the end of `text` when it has
/// none. Borrowed when nothing was found.
///
/// It recognizes shapes, not secrets: a registration token or an old-style 40-hex token has no
/// shape to tell it from other text. Never print a known secret and count on this function.
pub fn mask_credentials(text: &str) -> Cow<'_, str> {
    let spans = credential_spans(text);
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for span in spans {
        out.push_str(&text[copied..span.start]);
        out.push_str(MASK);
        copied = span.end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Byte ranges of the credential-shaped values in `text`, in order and apart: what
/// [`mask_credentials`] replaces.
pub fn credential_spans(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // Every shape starts with an ASCII byte, so `i` is a char boundary when one matches,
        // and so is the end of each shape (after an ASCII byte, or the end of the text).
        match credential_at(bytes, i) {
            Some(end) => {
                spans.push(i..end);
                i = end;
            }
            None => i += 1,
        }
    }
    spans
}

/// The end of the credential starting at `i`, if one does.
fn credential_at(bytes: &[u8], i: usize) -> Option<usize> {
    let rest = &bytes[i..];
    match rest.first()? {
        b'-' if rest.starts_with(PEM_BEGIN.as_bytes()) => Some(pem_end(bytes, i)),
        b'g' if starts_word(bytes, i) => TOKEN_PREFIXES.iter().find_map(|prefix| {
            let body = rest.strip_prefix(prefix.as_bytes())?;
            let len = body.iter().take_while(|b| is_token_byte(**b)).count();
            (len > 0).then_some(i + prefix.len() + len)
        }),
        b'e' if starts_word(bytes, i) && rest.starts_with(JSON_BASE64_START.as_bytes()) => {
            let len = rest.iter().take_while(|b| is_base64_byte(**b)).count();
            (len >= MIN_JSON_BASE64).then_some(i + len)
        }
        _ => None,
    }
}

/// The end of a PEM block starting at `begin`: after the dashes of its END line, else the end
/// of the text (a cut or unterminated block is masked to the end).
fn pem_end(bytes: &[u8], begin: usize) -> usize {
    let after_begin = begin + PEM_BEGIN.len();
    let Some(end_line) = find(bytes, after_begin, PEM_END.as_bytes()) else {
        return bytes.len();
    };
    match find(bytes, end_line + PEM_END.len(), PEM_DASHES.as_bytes()) {
        Some(dashes) => dashes + PEM_DASHES.len(),
        None => bytes.len(),
    }
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// A shape starts a word: not in the middle of an identifier (`laughs_total` holds no
/// `ghs_` token) nor of a longer base64 run.
/// An escape (`\n`, `\t`, `\r`) ends a word too.
fn starts_word(bytes: &[u8], i: usize) -> bool {
    let before = |n: usize| i.checked_sub(n).map(|j| bytes[j]);
    match before(1) {
        None => true,
        Some(b'n' | b't' | b'r') if before(2) == Some(b'\\') => true,
        Some(b) => !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'/')),
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Standard and URL-safe base64, padding, and the dots between a JWT's parts.
fn is_base64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("ghs_abc");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "ghs_abc");
    }

    fn masked(text: &str) -> String {
        mask_credentials(text).into_owned()
    }

    #[test]
    fn every_token_prefix_is_masked() {
        for prefix in TOKEN_PREFIXES {
            let text = format!("token {prefix}AbC123_x9 here");
            assert_eq!(masked(&text), "token <redacted> here", "{prefix}");
        }
    }

    #[test]
    fn the_whole_token_goes_and_nothing_else() {
        assert_eq!(masked("ghp_0123456789abcdef"), "<redacted>");
        assert_eq!(masked("(ghs_abc)"), "(<redacted>)");
        assert_eq!(masked("token=ghp_abc;next"), "token=<redacted>;next");
        assert_eq!(masked("\"ghu_abc\","), "\"<redacted>\",");
        assert_eq!(masked("ghp_abc-def"), "<redacted>-def");
        assert_eq!(masked("github_pat_11ABCDEFG0_abcdefXYZ."), "<redacted>.");
    }

    #[test]
    fn several_tokens_on_a_line() {
        assert_eq!(
            masked("a ghp_one b gho_two c ghr_three"),
            "a <redacted> b <redacted> c <redacted>"
        );
        assert_eq!(masked("ghp_a ghp_b"), "<redacted> <redacted>");
        // After an escape of a quoted YAML or JSON string (`\n`, `\t`), a token still starts.
        assert_eq!(
            masked(r"ghp_a\nghs_b\tgho_c"),
            r"<redacted>\n<redacted>\t<redacted>"
        );
    }

    #[test]
    fn ordinary_words_are_left_alone() {
        for text in [
            "laughs_total",
            "the ghp_ prefix",
            "ghp",
            "highs_and_lows",
            "github_patterns",
            "GHP_ABC",
            "eyJ short",
            "----- a rule -----",
            "keyJabcdefghijklmnopqrstuvwxyz0123456789",
            "pools.gpu.count: expected an integer, found 1.0",
            "",
        ] {
            assert!(matches!(mask_credentials(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn tokens_after_non_ascii_text_are_masked() {
        assert_eq!(masked("é ghp_abc é"), "é <redacted> é");
        assert_eq!(masked("éghp_abc"), "é<redacted>");
    }

    #[test]
    fn jwts_and_jit_configs_are_masked() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIxMjMifQ.c2lnbmF0dXJl-_x";
        assert_eq!(
            masked(&format!("Bearer {jwt} sent")),
            "Bearer <redacted> sent"
        );
        let jit = "eyJ2ZXJzaW9uIjoxLCJydW5uZXIiOnsiaWQiOjF9fQ==";
        assert_eq!(masked(&format!("JITCONFIG={jit}")), "JITCONFIG=<redacted>");
    }

    #[test]
    fn pem_blocks_are_masked_whole() {
        let text = "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAAA\n-----END RSA PRIVATE KEY-----\ndone";
        assert_eq!(masked(text), "key:\n<redacted>\ndone");
        let one_line = r#"private_key_file: "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----" # x"#;
        assert_eq!(masked(one_line), r#"private_key_file: "<redacted>" # x"#);
    }

    #[test]
    fn unterminated_pem_is_masked_to_the_end() {
        assert_eq!(
            masked("found -----BEGIN OPENSSH PRIVATE KEY-----b3BlbnNzaC1rZXktdjE"),
            "found <redacted>"
        );
        assert_eq!(masked("x -----BEGIN"), "x <redacted>");
        assert_eq!(
            masked("-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIV"),
            "<redacted>"
        );
        assert_eq!(masked("a\n-----BEGIN X-----\nMII\nmore"), "a\n<redacted>");
    }

    #[test]
    fn spans_are_byte_ranges_in_order() {
        let text = "é ghp_a b -----BEGIN X----- c -----END X----- d";
        let spans = credential_spans(text);
        assert_eq!(spans.len(), 2);
        assert_eq!(&text[spans[0].clone()], "ghp_a");
        assert_eq!(
            &text[spans[1].clone()],
            "-----BEGIN X----- c -----END X-----"
        );
    }
}
