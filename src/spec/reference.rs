//! Image references, checked against the grammar of the distribution spec (the regular
//! expressions of `distribution/reference`, `reference.go`), written out here as a grammar:
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [ domain "/" ] path            (at most 255 characters)
//! domain           := host [ ":" port ]
//! host             := domain-name | "[" IPv6 "]"
//! domain-name      := domain-component ( "." domain-component )*
//! domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//! port             := [0-9]+
//! path             := path-component ( "/" path-component )*
//! path-component   := alnum ( separator alnum )*
//! alnum            := [a-z0-9]+
//! separator        := "_" | "." | "__" | "-"+
//! tag              := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest           := algorithm ":" hex
//! algorithm        := component ( [+._-] component )*
//! component        := [A-Za-z] [A-Za-z0-9]*
//! hex              := [0-9a-fA-F]{32,}
//! ```
//!
//! A pool's `image` goes into Docker API paths (`/images/{name}/json`): whatever this grammar
//! refuses (`..`, `?`, `#`, `%`, spaces, control characters) never gets there from the spec.

/// The longest name (without tag and digest) the grammar allows.
pub const MAX_NAME: usize = 255;

/// Checks `text` as an image reference; the error says which part is wrong and how.
pub fn check_reference(text: &str) -> Result<(), String> {
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    // A tag follows the last `:` that comes after the last `/`: `host:5000/app` has none.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    check_name(name)?;
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Err(format!(
            "expected a tag of at most 128 letters, digits, '_', '.' and '-', not starting with '.' or '-', found {tag:?}"
        ));
    }
    if let Some(digest) = digest
        && !is_digest(digest)
    {
        return Err(format!(
            "expected a digest ALGORITHM:HEX (such as sha256: and 64 hexadecimal digits) after `@`, found {digest:?}"
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("expected an image name, found none".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "expected an image name of at most {MAX_NAME} characters, found {}",
            name.len()
        ));
    }
    let components: Vec<&str> = name.split('/').collect();
    // Either every component is a path component, or the first is a registry.
    if components.iter().all(|c| is_path_component(c)) {
        return Ok(());
    }
    if components.len() > 1
        && is_domain(components[0])
        && components[1..].iter().all(|c| is_path_component(c))
    {
        return Ok(());
    }
    let bad = components
        .iter()
        .enumerate()
        .find(|(i, c)| {
            let registry = *i == 0 && components.len() > 1 && is_domain(c);
            !is_path_component(c) && !registry
        })
        .map_or(name, |(_, c)| c);
    Err(format!(
        "expected an image name of lower-case letters and digits, parts joined by '.', '_', '__' or '-' and separated by '/' (the first may be a registry such as registry.lan:5000), found {bad:?}"
    ))
}

/// `alnum (separator alnum)*` with alnum `[a-z0-9]+` and separator `_`, `.`, `__` or `-`+.
fn is_path_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Runs of separators between alphanumerics: each run must be one separator.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &text[start..i];
        let separator = matches!(run, "_" | "." | "__") || run.bytes().all(|b| b == b'-');
        if !separator {
            return false;
        }
    }
    true
}

/// `host [":" port]`, host a DNS name or a bracketed IPv6 address.
fn is_domain(text: &str) -> bool {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok =
        host.is_empty() && text.starts_with('[') || host.split('.').all(is_domain_component);
    port_ok && host_ok
}

fn is_domain_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

fn is_tag(text: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    bytes.len() <= 128
        && bytes.first().is_some_and(|b| word(*b))
        && bytes.iter().all(|b| word(*b) || matches!(b, b'.' | b'-'))
}

fn is_digest(text: &str) -> bool {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        let bytes = c.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphabetic)
            && bytes.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['+', '.', '_', '-']).all(component)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_of_the_grammar_are_accepted() {
        let with_digest = format!("ghcr.io/acme/runner@{DIGEST}");
        let tagged_digest = format!("runner:2.321.0@{DIGEST}");
        let long_tag = format!("runner:{}", "t".repeat(128));
        for text in [
            "runner",
            "runner:latest",
            "ubuntu:24.04",
            "library/ubuntu",
            "ghcr.io/acme/gpu-runner:2.321.0",
            "registry.lan:5000/ci/runner:v1",
            "localhost/runner",
            "localhost:5000/runner",
            "[fd00::1]:5000/runner",
            "[fd00::1]/runner",
            "Registry.Example.com/a/b",
            "a__b/c_d.e--f---g",
            "runner:_tag",
            "runner:Tag.With-Dashes_1",
            with_digest.as_str(),
            tagged_digest.as_str(),
            long_tag.as_str(),
            "runner@sha512+b64u.v2:0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_reference(text), Ok(()), "{text}");
        }
    }

    /// Names that would steer a Docker API path, or are simply not references.
    #[test]
    fn hostile_and_malformed_references_are_refused() {
        let long_name = "a".repeat(256);
        let long_tag = format!("runner:{}", "t".repeat(129));
        for (text, why) in [
            ("../containers/json?all=1&x=", "image name"),
            ("../containers/0123/export?x=", "image name"),
            ("../distribution/evil.example/x/json#", "image name"),
            ("../events?x=", "image name"),
            ("..", "image name"),
            (".", "image name"),
            ("runner/../../x", "image name"),
            ("runner?x=1", "image name"),
            ("runner:latest#frag", "tag"),
            ("runner:latest?all=1", "tag"),
            ("runner%2F..", "image name"),
            ("run ner", "image name"),
            ("runner\u{1b}[2J", "image name"),
            ("Runner", "image name"),
            ("ghcr.io/Acme/runner", "image name"),
            ("-runner", "image name"),
            ("runner-", "image name"),
            ("a___b", "image name"),
            ("a._b", "image name"),
            ("/runner", "image name"),
            ("runner/", "image name"),
            ("", "found none"),
            ("runner:", "tag"),
            ("runner:.tag", "tag"),
            ("runner:-tag", "tag"),
            (long_tag.as_str(), "tag"),
            (long_name.as_str(), "at most 255"),
            ("runner@sha256:abc", "digest"),
            ("runner@sha256", "digest"),
            ("runner@1sha:0123456789abcdef0123456789abcdef", "digest"),
            ("runner@sha256:0123456789abcdef0123456789abcdef@x", "digest"),
            ("-reg.lan/runner", "image name"),
            ("reg.lan:port/runner", "image name"),
            ("[zz]:5000/runner", "image name"),
        ] {
            let e = check_reference(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
