//! The JSON Schema of `fleet.yaml`: generated from the model, committed as
//! `schema/fleet.schema.json`, and used to check documents with every error reported.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::Location;
use jsonschema::{Keyword, ValidationError, Validator};
use serde_json::{Map, Value};

use super::diag::{Diagnostic, describe_value, quote, shorten};
use super::model::{DOCKER_ENDPOINT_PATTERN, POOL_FIELDS, Spec};
use super::yaml::{Positions, escape_pointer, is_secret_pointer};

/// The committed schema, as `fleet schema` prints it and `fleet validate` uses it.
pub const SCHEMA_JSON: &str = include_str!("../../schema/fleet.schema.json");

/// Generates the schema from the Rust model. The committed file must equal this
/// (`cargo test` checks; regenerate with `fleet schema --generate > schema/fleet.schema.json`).
pub fn generate() -> String {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<Spec>().to_value();
    forbid_null(&mut schema);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// schemars lets every `Option` be null; fleet does not: an optional field is left out, never
/// written empty (`count:` alone is a mistake worth an error).
fn forbid_null(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(branches)) = map.get_mut("anyOf") {
                branches.retain(|b| b.get("type").is_none_or(|t| t != "null"));
                if branches.len() == 1 {
                    let only = branches.remove(0);
                    map.remove("anyOf");
                    if let Value::Object(inner) = only {
                        map.extend(inner);
                    }
                }
            }
            map.values_mut().for_each(forbid_null);
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_null),
        _ => {}
    }
}

fn committed() -> &'static (Value, Option<Validator>) {
    static SCHEMA: OnceLock<(Value, Option<Validator>)> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let value: Value = serde_json::from_str(SCHEMA_JSON).unwrap_or(Value::Null);
        let validator = jsonschema::draft202012::options()
            .with_keyword("format", integer_format)
            .build(&value)
            .ok();
        (value, validator)
    })
}

/// The JSON Schema type `integer` takes 1.0, and schemars' integer types say their width only
/// in `format` (`uint32`), an annotation that validators skip: serde would then refuse what the
/// schema accepted (`count: 1.0`, an app_id beyond u64). Fleet's validator reads the integer
/// formats as the Rust types they came from; other formats stay annotations.
fn integer_format<'a>(
    _parent: &'a Map<String, Value>,
    format: &'a Value,
    _location: Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    let range = match format.as_str().unwrap_or_default() {
        "uint8" => Some((0, i128::from(u8::MAX))),
        "uint16" => Some((0, i128::from(u16::MAX))),
        "uint32" => Some((0, i128::from(u32::MAX))),
        "uint64" | "uint" => Some((0, i128::from(u64::MAX))),
        "int8" => Some((i128::from(i8::MIN), i128::from(i8::MAX))),
        "int16" => Some((i128::from(i16::MIN), i128::from(i16::MAX))),
        "int32" => Some((i128::from(i32::MIN), i128::from(i32::MAX))),
        "int64" | "int" => Some((i128::from(i64::MIN), i128::from(i64::MAX))),
        _ => None,
    };
    Ok(Box::new(IntegerFormat { range }))
}

struct IntegerFormat {
    /// The bounds of the Rust integer type; `None`: not an integer format.
    range: Option<(i128, i128)>,
}

impl IntegerFormat {
    fn problem(&self, instance: &Value) -> Option<String> {
        let (low, high) = self.range?;
        let Value::Number(n) = instance else {
            return None;
        };
        let value = n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from));
        let out_of_range = || format!("expected an integer from {low} to {high}, found {n}");
        match value {
            Some(v) if (low..=high).contains(&v) => None,
            Some(_) => Some(out_of_range()),
            // A float: an integer too large for i64 and u64 (`1e20`) or one written `1.0`.
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && (f < low as f64 || f > high as f64) => {
                    Some(out_of_range())
                }
                _ => Some(format!("expected an integer, found {n}")),
            },
        }
    }
}

impl<'i> Keyword<'i> for IntegerFormat {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        match self.problem(instance) {
            None => Ok(()),
            Some(message) => Err(ValidationError::custom(message)),
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        self.problem(instance).is_none()
    }
}

/// Checks `instance` against the committed schema; every violation becomes a diagnostic.
pub fn check(instance: &Value, positions: &Positions) -> Vec<Diagnostic> {
    let (schema, validator) = committed();
    let Some(validator) = validator else {
        // The committed schema is compiled into the binary and tested; this cannot happen
        // unless the file was edited by hand into something invalid.
        return vec![Diagnostic::new(
            Default::default(),
            "",
            "internal error: the built-in schema does not compile",
        )];
    };
    let mut out = Vec::new();
    let mut integer_formats = Vec::new();
    for error in validator.iter_errors(instance) {
        let custom = matches!(error.kind(), ValidationErrorKind::Custom { keyword, .. } if keyword == "format");
        let described = describe(&error, schema, positions);
        if custom {
            integer_formats.extend(described);
        } else {
            out.extend(described);
        }
    }
    // `count: -1` breaks both `minimum` and `uint32`: the first says it better.
    integer_formats.retain(|d| !out.iter().any(|o| o.pointer == d.pointer));
    out.extend(integer_formats);
    out
}

/// The subschema that holds the failing keyword (the keyword location minus its last part).
fn subschema<'a>(schema: &'a Value, error: &ValidationError) -> Option<&'a Value> {
    let location = error.schema_path().as_str().to_string();
    let parent = &location[..location.rfind('/')?];
    schema.pointer(parent)
}

fn describe(error: &ValidationError, schema: &Value, positions: &Positions) -> Vec<Diagnostic> {
    let pointer = error.instance_path().as_str().to_string();
    let sub = subschema(schema, error);
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            return unknown_fields(&pointer, unexpected, sub, positions);
        }
        ValidationErrorKind::PropertyNames { error: inner } => {
            return vec![bad_name(&pointer, inner, positions)];
        }
        _ => {}
    }
    // A mapping or list is pointed at by its key: its value starts on the next line.
    let pos = if error.instance().is_object() || error.instance().is_array() {
        positions.key(&pointer)
    } else {
        positions.value(&pointer)
    };
    // What was found is said, except a string under github.auth: it may be a secret.
    let found = match error.instance().as_ref() {
        Value::String(_) if is_secret_pointer(&pointer) => {
            "a string (not shown: values under github.auth are never printed)".to_string()
        }
        other => describe_value(other),
    };
    let help = special_help(error).or_else(|| {
        sub.and_then(|s| s.get("description"))
            .and_then(Value::as_str)
            .map(|d| d.replace('\n', " "))
    });
    let mut d = Diagnostic::new(pos, pointer, message(error, &found));
    d.help = help;
    vec![d]
}

/// What was expected and what was found, for one failed keyword.
fn message(error: &ValidationError, found: &str) -> String {
    let location = error.schema_path().as_str();
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            format!("missing required field `{name}`")
        }
        ValidationErrorKind::Type { .. } if location.contains("PoolHosts") => {
            format!("expected a host name or a list of host names, found {found}")
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => article(&t.to_string()),
                TypeKind::Multiple(ts) => ts
                    .into_iter()
                    .map(|t| article(&t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            format!("expected {expected}, found {found}")
        }
        ValidationErrorKind::Enum { options } => {
            format!("expected one of {}, found {found}", list(options))
        }
        ValidationErrorKind::Constant { expected_value } => {
            format!("expected {expected_value}, found {found}")
        }
        ValidationErrorKind::Pattern { pattern } => {
            format!("expected {}, found {found}", pattern_phrase(pattern))
        }
        ValidationErrorKind::Minimum { limit } => {
            format!("expected a value >= {limit}, found {found}")
        }
        ValidationErrorKind::Maximum { limit } => {
            format!("expected a value <= {limit}, found {found}")
        }
        ValidationErrorKind::ExclusiveMinimum { limit } => {
            format!("expected a value > {limit}, found {found}")
        }
        ValidationErrorKind::MinLength { limit } => {
            format!("expected at least {limit} character(s), found {found}")
        }
        ValidationErrorKind::MaxLength { limit } => {
            format!("expected at most {limit} characters, found {found}")
        }
        ValidationErrorKind::MinItems { limit } => {
            format!("expected at least {limit} item(s), found {found}")
        }
        ValidationErrorKind::Custom { message, .. } => message.clone(),
        ValidationErrorKind::UniqueItems => {
            format!("expected distinct items, found {found} with repeats")
        }
        ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. } => {
            let float = error.instance().is_f64();
            let expected = match (location.contains("/GpuRequest/"), float) {
                (true, true) => "an integer (a number of GPUs) or \"all\"",
                (true, false) => "0, a number of GPUs, or \"all\"",
                (false, _) => "one of the allowed forms",
            };
            format!("expected {expected}, found {found}")
        }
        _ => format!("{error}"),
    }
}

/// Help for a mistake worth more than the field's description.
fn special_help(error: &ValidationError) -> Option<String> {
    let https = matches!(error.kind(), ValidationErrorKind::Pattern { pattern } if pattern == DOCKER_ENDPOINT_PATTERN)
        && error
            .instance()
            .as_str()
            .is_some_and(|s| s.starts_with("https://"));
    https.then(|| {
        "https:// is not a Docker endpoint scheme: write tcp://HOST:PORT and give the certificates in `tls`".into()
    })
}

/// One diagnostic per unknown key, at the key, with the known ones as help.
fn unknown_fields(
    pointer: &str,
    unexpected: &[String],
    sub: Option<&Value>,
    positions: &Positions,
) -> Vec<Diagnostic> {
    let known: Vec<&str> = sub
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let expected = if pointer == "/defaults" {
        POOL_FIELDS.join(", ")
    } else {
        known.join(", ")
    };
    unexpected
        .iter()
        .map(|key| {
            let child = format!("{pointer}/{}", escape_pointer(key));
            let name = shorten(key);
            let message = if pointer == "/defaults" {
                format!("`{name}` is not a pool field; defaults takes pool fields only")
            } else {
                format!("unknown field `{name}`")
            };
            Diagnostic::new(positions.key(&child), child, message)
                .with_help(format!("expected one of: {expected}"))
        })
        .collect()
}

/// A key of `hosts` or `pools` that is not a valid name.
fn bad_name(pointer: &str, inner: &ValidationError, positions: &Positions) -> Diagnostic {
    // The inner error's instance is the offending key.
    let key = inner.instance().as_str().unwrap_or_default().to_string();
    let child = format!("{pointer}/{}", escape_pointer(&key));
    let rule = match inner.kind() {
        ValidationErrorKind::Pattern { pattern } => pattern_phrase(pattern),
        _ => inner.to_string(),
    };
    Diagnostic::new(
        positions.key(&child),
        child,
        format!("invalid name {}: expected {rule}", quote(&key)),
    )
}

/// Patterns said in words, for the ones a person meets most.
fn pattern_phrase(pattern: &str) -> String {
    use super::model::{HOST_NAME_PATTERN, LABEL_PATTERN, NAME_PATTERN, SCALE_SET_NAME_PATTERN};
    match pattern {
        DOCKER_ENDPOINT_PATTERN => "a Docker endpoint: unix:///path, ssh://[user@]host[:port], tcp://host:port or http://host:port".into(),
        SCALE_SET_NAME_PATTERN => "a scale set name: letters, digits, '_', '.' and '-', not starting with '.' or '-', at most 45 characters".into(),
        NAME_PATTERN => "lowercase letters, digits and '-', 1 to 24 characters".into(),
        HOST_NAME_PATTERN => "a host name of lowercase letters, digits, '_', '.' and '-'".into(),
        LABEL_PATTERN => "a label without commas or whitespace".into(),
        "^[A-Za-z_][A-Za-z0-9_]*$" => "an environment variable name (letters, digits, '_')".into(),
        "^[0-9]+[bkmgBKMG]?$" => "a size such as 512m or 16g".into(),
        "^(GPU|MIG)-[0-9A-Za-z-]+$" => "a GPU UUID such as GPU-8c2f1b7e-...".into(),
        r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$" => "a repository as owner/name".into(),
        other => format!("a value matching {other}"),
    }
}

fn article(t: &str) -> String {
    match t {
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "integer" => "an integer".into(),
        "null" => "null".into(),
        other => format!("a {other}"),
    }
}

fn list(options: &Value) -> String {
    match options.as_array() {
        Some(items) => items
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        None => options.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schema_equals_the_one_generated_from_the_model() {
        let generated = generate();
        assert_eq!(
            SCHEMA_JSON, generated,
            "schema/fleet.schema.json is out of date with src/spec/model.rs; \
             regenerate it with `cargo run -- schema --generate > schema/fleet.schema.json`"
        );
    }

    #[test]
    fn committed_schema_is_valid_2020_12() {
        let value: Value = serde_json::from_str(SCHEMA_JSON).expect("schema is JSON");
        assert_eq!(
            value["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        jsonschema::meta::validate(&value).expect("schema is a valid JSON Schema");
        assert!(committed().1.is_some());
    }
}
