//! The one place where a value becomes a segment of a Docker API path. bollard pastes the
//! strings it is given into its paths (`/images/{name}/json`) and resolves the result as a URL,
//! where `..`, `/`, `?` and `#` would change which request is sent: every request whose path
//! carries a value from the spec or from an answer takes it through [`segment`].

/// `value` percent-encoded as one path segment: every byte but ASCII letters, digits, `-`,
/// `.`, `_` and `~` becomes `%XX`, so `/`, `?`, `#` and `%` stay inside the segment (the engine
/// decodes them back: `library%2Fubuntu%3A24.04` names `library/ubuntu:24.04`). An empty
/// value, `.` and `..` are refused: a URL resolves them (encoded or not) as steps in the path.
pub fn segment(value: &str) -> Result<String, String> {
    if matches!(value, "" | "." | "..") {
        return Err(format!("refusing {value:?} as a name in a Docker API path"));
    }
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn values_stay_one_segment() {
        for (value, encoded) in [
            ("runner", "runner"),
            (
                "ghcr.io/acme/runner:2.321.0",
                "ghcr.io%2Facme%2Frunner%3A2.321.0",
            ),
            (
                "../containers/json?all=1&x=",
                "..%2Fcontainers%2Fjson%3Fall%3D1%26x%3D",
            ),
            (
                "../distribution/evil.example/x/json#",
                "..%2Fdistribution%2Fevil.example%2Fx%2Fjson%23",
            ),
            ("%2e%2e", "%252e%252e"),
            ("a b\u{1b}é", "a%20b%1B%C3%A9"),
        ] {
            assert_eq!(segment(value).as_deref(), Ok(encoded), "{value}");
        }
        for value in ["", ".", ".."] {
            assert!(segment(value).is_err(), "{value:?}");
        }
    }
}
