//! Environment variables of compose services: their two forms, compose's `${...}`
//! interpolation, and which ones are secrets.

use serde_json::Value;

/// One variable as the compose file has it: `None` when it passes the shell's value through
/// (`- NAME` or `NAME:` without a value).
pub type EnvVar = (String, Option<String>);

/// Reads `environment:` (or build `args:`): a mapping, or a list of `NAME=value` / `NAME`.
pub fn read(value: Option<&Value>) -> Vec<EnvVar> {
    match value {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| (k.clone(), scalar_text(v)))
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(scalar_text)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (item, None),
            })
            .collect(),
        _ => vec![],
    }
}

/// A scalar as the text compose would use; `None` for null.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// The value of `name` in `env`, when it has a literal one.
pub fn get<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

/// What compose would make of a value at `docker compose up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpolated {
    /// No variable in it (`$$` is a literal `$`).
    Literal(String),
    /// Every variable has a default (`${NAME:-default}`); this is the value with the defaults.
    Defaults { value: String, vars: Vec<String> },
    /// Some variable's value comes from the shell or `.env` at `docker compose up`.
    FromShell { vars: Vec<String> },
}

impl Interpolated {
    /// The value when it does not depend on the shell.
    pub fn value(&self) -> Option<&str> {
        match self {
            Interpolated::Literal(v) | Interpolated::Defaults { value: v, .. } => Some(v),
            Interpolated::FromShell { .. } => None,
        }
    }
}

/// Applies compose's interpolation rules to `raw`, without reading any environment: `.env`
/// files and the shell hold what the compose file deliberately left out of it (often secrets).
pub fn interpolate(raw: &str) -> Interpolated {
    let mut value = String::new();
    let mut vars = Vec::new();
    let mut from_shell = false;
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        value.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            value.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                from_shell = true;
                break;
            };
            let inner = &body[..end];
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (name, op) = inner.split_at(name_len);
            vars.push(name.to_string());
            let default = op.strip_prefix(":-").or_else(|| op.strip_prefix('-'));
            match default {
                Some(d) if !d.contains('$') => value.push_str(d),
                _ => from_shell = true,
            }
            rest = &body[end + 1..];
        } else {
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if name_len == 0 {
                value.push('$');
            } else {
                vars.push(after[..name_len].to_string());
                from_shell = true;
            }
            rest = &after[name_len..];
        }
    }
    value.push_str(rest);
    match (from_shell, vars.is_empty()) {
        (true, _) => Interpolated::FromShell { vars },
        (false, true) => Interpolated::Literal(value),
        (false, false) => Interpolated::Defaults { value, vars },
    }
}

/// Why a variable is a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// A GitHub token of some kind (registration token, PAT, App token).
    Token,
    /// Another secret: a password, a key.
    Other,
    /// A URL with credentials in it (`https://user:token@host/...`).
    InUrl,
}

/// Token variables of the common runner images, named in the report as they are.
const TOKEN_NAMES: &[&str] = &[
    "RUNNER_TOKEN",
    "ACCESS_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "ACTIONS_RUNNER_INPUT_TOKEN",
    "RUNNER_REGISTRATION_TOKEN",
    "GITHUB_PAT",
    "GH_PAT",
    "PAT",
];

/// Whether the variable `name` with `value` is a secret: by its name (`*TOKEN*`, `*SECRET*`,
/// `*PASSWORD*`, `*PRIVATE_KEY*`...), or by a value that looks like a GitHub token or a key.
pub fn secret(name: &str, value: Option<&str>) -> Option<Secret> {
    let upper = name.to_ascii_uppercase();
    if TOKEN_NAMES.contains(&upper.as_str()) || upper.contains("TOKEN") || upper.ends_with("_PAT") {
        return Some(Secret::Token);
    }
    let other = [
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PRIVATE_KEY",
        "API_KEY",
        "APIKEY",
        "CREDENTIAL",
    ];
    if other.iter().any(|word| upper.contains(word)) {
        return Some(Secret::Other);
    }
    value.and_then(secret_value)
}

/// Values that are secrets whatever the variable's name.
pub fn secret_value(value: &str) -> Option<Secret> {
    let v = value.trim();
    let github_prefixes = ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"];
    if github_prefixes.iter().any(|p| v.starts_with(p)) {
        return Some(Secret::Token);
    }
    // Registration tokens: about 29 upper-case letters and digits.
    let registration_like = (26..=40).contains(&v.len())
        && v.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && v.chars().any(|c| c.is_ascii_digit())
        && v.chars().any(|c| c.is_ascii_uppercase());
    if registration_like {
        return Some(Secret::Token);
    }
    if v.contains("-----BEGIN") {
        return Some(Secret::Other);
    }
    url_credentials(v).map(|_| Secret::InUrl)
}

/// The credentials of a URL (`user:password` in `https://user:password@host/`): any user
/// information of an http(s) URL, a password in any other.
pub fn url_credentials(url: &str) -> Option<&str> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (userinfo, _) = authority.rsplit_once('@')?;
    let web = matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https");
    (!userinfo.is_empty() && (web || userinfo.contains(':'))).then_some(userinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_environment() {
        let map = serde_json::json!({ "A": "1", "B": null, "C": 16, "D": true });
        assert_eq!(
            read(Some(&map)),
            vec![
                ("A".into(), Some("1".into())),
                ("B".into(), None),
                ("C".into(), Some("16".into())),
                ("D".into(), Some("true".into())),
            ]
        );
        let list = serde_json::json!(["A=1=2", "B", "C="]);
        assert_eq!(
            read(Some(&list)),
            vec![
                ("A".into(), Some("1=2".into())),
                ("B".into(), None),
                ("C".into(), Some(String::new())),
            ]
        );
    }

    #[test]
    fn interpolation_without_reading_the_shell() {
        assert_eq!(interpolate("plain"), Interpolated::Literal("plain".into()));
        assert_eq!(interpolate("a$$b"), Interpolated::Literal("a$b".into()));
        assert_eq!(
            interpolate("${CACHE:-/cache}/x"),
            Interpolated::Defaults {
                value: "/cache/x".into(),
                vars: vec!["CACHE".into()]
            }
        );
        assert_eq!(
            interpolate("${RUNNER_TOKEN}"),
            Interpolated::FromShell {
                vars: vec!["RUNNER_TOKEN".into()]
            }
        );
        assert_eq!(
            interpolate("$HOME/x"),
            Interpolated::FromShell {
                vars: vec!["HOME".into()]
            }
        );
        assert_eq!(
            interpolate("${A:?needed}"),
            Interpolated::FromShell {
                vars: vec!["A".into()]
            }
        );
    }

    #[test]
    fn secrets_by_name_and_by_value() {
        for name in [
            "RUNNER_TOKEN",
            "ACCESS_TOKEN",
            "GH_TOKEN",
            "ACTIONS_RUNNER_INPUT_TOKEN",
            "MY_GH_PAT",
        ] {
            assert_eq!(secret(name, None), Some(Secret::Token), "{name}");
        }
        for name in ["APP_PRIVATE_KEY", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY"] {
            assert_eq!(secret(name, None), Some(Secret::Other), "{name}");
        }
        assert_eq!(secret("CCACHE_DIR", Some("/ccache")), None);
        assert_eq!(secret("PATH", Some("/usr/bin")), None);
        assert_eq!(
            secret("X", Some("ghp_0123456789abcdef0123456789abcdef0123")),
            Some(Secret::Token)
        );
        assert_eq!(
            secret("X", Some("AABBCCDDEE0011223344556677889")),
            Some(Secret::Token)
        );
    }
}
