//! docker-compose files: finding them, reading them with the spec's YAML reader, and the few
//! compose rules the import needs (merge keys, the project name, the names compose gives
//! volumes, networks and built images).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ImportError;
use super::report::{Finding, Tag};

/// The names compose looks for in a folder, in compose's order of preference.
pub const COMPOSE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// One compose file, read.
#[derive(Debug, Clone)]
pub struct ComposeFile {
    /// The path as the user gave it (joined with the file name for a folder), for messages.
    pub shown: String,
    /// The folder of the file: build contexts and relative binds are relative to it.
    pub dir: PathBuf,
    /// The compose project name: `name:`, else the folder's name, as compose normalizes it.
    pub project: String,
    /// The services in the order of the file.
    pub services: Vec<(String, Map<String, Value>)>,
    /// Top-level `volumes` and `networks`.
    pub volumes: Map<String, Value>,
    pub networks: Map<String, Value>,
    /// Things about the file itself worth reporting.
    pub findings: Vec<Finding>,
}

/// Finds the compose file at `path`: the file itself, or the one a folder holds.
pub fn locate(path: &Path) -> Result<(PathBuf, Vec<Finding>), ImportError> {
    let meta = std::fs::metadata(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok((path.to_path_buf(), vec![]));
    }
    let found: Vec<PathBuf> = COMPOSE_NAMES
        .iter()
        .map(|name| path.join(name))
        .filter(|p| p.is_file())
        .collect();
    let Some(first) = found.first() else {
        return Err(ImportError::NoComposeFile {
            dir: path.to_path_buf(),
        });
    };
    let mut findings = vec![];
    if found.len() > 1 {
        let others: Vec<String> = found[1..].iter().map(|p| p.display().to_string()).collect();
        findings.push(Finding::new(
            Tag::LeftOut,
            format!(
                "{} was not read: compose, too, reads only {} when a folder holds several",
                others.join(", "),
                first.display()
            ),
        ));
    }
    Ok((first.clone(), findings))
}

/// Reads and checks one compose file.
pub fn read(path: &Path, findings: Vec<Finding>) -> Result<ComposeFile, ImportError> {
    // Capped like fleet.yaml, and only a regular file (a FIFO would hang `import`).
    let bytes =
        crate::named_file::read_capped(path, crate::spec::MAX_SPEC_BYTES).map_err(|refused| {
            ImportError::Read {
                path: path.to_path_buf(),
                source: std::io::Error::other(refused.detail),
            }
        })?;
    let text = String::from_utf8(bytes).map_err(|_| ImportError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::other("it is not UTF-8 text"),
    })?;
    let doc = crate::spec::yaml::parse(&text);
    let shown = path.display().to_string();
    if !doc.problems.is_empty() || doc.value.is_none() {
        let problems = doc
            .problems
            .iter()
            .map(|p| format!("{}:{}: {}", p.pos.line, p.pos.col, p.message))
            .collect();
        return Err(ImportError::Yaml {
            path: path.to_path_buf(),
            problems,
        });
    }
    let mut root = doc.value.unwrap_or(Value::Null);
    apply_merge_keys(&mut root);
    let Value::Object(mut root) = root else {
        return Err(ImportError::NotCompose {
            path: path.to_path_buf(),
            why: "its top level is not a mapping".into(),
        });
    };
    let services = match root.remove("services") {
        Some(Value::Object(services)) => services,
        Some(_) => {
            return Err(ImportError::NotCompose {
                path: path.to_path_buf(),
                why: "its `services` is not a mapping of service names to services".into(),
            });
        }
        None => {
            return Err(ImportError::NotCompose {
                path: path.to_path_buf(),
                why: "it has no `services` mapping".into(),
            });
        }
    };
    let mut ordered = Vec::new();
    for (name, service) in services {
        let Value::Object(service) = service else {
            return Err(ImportError::NotCompose {
                path: path.to_path_buf(),
                why: format!("service `{name}` is not a mapping"),
            });
        };
        let line = doc
            .positions
            .key(&format!(
                "/services/{}",
                crate::spec::yaml::escape_pointer(&name)
            ))
            .line;
        ordered.push((line, name, service));
    }
    ordered.sort_by_key(|(line, _, _)| *line);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut findings = findings;
    if root.contains_key("include") {
        findings.push(Finding::new(
            Tag::LeftOut,
            "`include`: the compose files it names were not read; import them too by naming them",
        ));
    }
    let object = |v: Option<Value>| match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(ComposeFile {
        shown,
        project: project_name(root.get("name"), &dir),
        dir,
        services: ordered.into_iter().map(|(_, n, s)| (n, s)).collect(),
        volumes: object(root.remove("volumes")),
        networks: object(root.remove("networks")),
        findings,
    })
}

/// Resolves YAML merge keys (`<<: *anchor`, `<<: [*a, *b]`), which compose files use to share
/// settings between services: keys of the mapping itself win, then earlier merged mappings.
pub fn apply_merge_keys(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(apply_merge_keys),
        Value::Object(map) => {
            for v in map.values_mut() {
                apply_merge_keys(v);
            }
            let Some(merged) = map.remove("<<") else {
                return;
            };
            let sources = match merged {
                Value::Array(items) => items,
                other => vec![other],
            };
            for source in sources {
                if let Value::Object(source) = source {
                    for (k, v) in source {
                        map.entry(k).or_insert(v);
                    }
                }
            }
        }
        _ => {}
    }
}

/// The project name compose uses: `name:`, else the folder's name, lowercased, with only
/// letters, digits, `-` and `_` kept.
fn project_name(declared: Option<&Value>, dir: &Path) -> String {
    let raw = match declared.and_then(Value::as_str) {
        Some(name) => name.to_string(),
        None => std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
    };
    let name: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let name = name.trim_start_matches(['-', '_']).to_string();
    if name.is_empty() {
        "compose".to_string()
    } else {
        name
    }
}

impl ComposeFile {
    /// The name of the Docker volume compose made for the top-level volume `key`.
    pub fn volume_name(&self, key: &str) -> String {
        self.resource_name(&self.volumes, key)
    }

    /// The name of the Docker network compose made for the top-level network `key`.
    pub fn network_name(&self, key: &str) -> String {
        self.resource_name(&self.networks, key)
    }

    fn resource_name(&self, section: &Map<String, Value>, key: &str) -> String {
        let declared = section.get(key);
        let explicit = declared.and_then(|d| d.get("name")).and_then(Value::as_str);
        let external = declared
            .and_then(|d| d.get("external"))
            .is_some_and(|e| e.as_bool() == Some(true) || e.is_object());
        match (explicit, external) {
            (Some(name), _) => name.to_string(),
            (None, true) => key.to_string(),
            (None, false) => format!("{}_{key}", self.project),
        }
    }

    /// The tag compose gives an image it builds for `service` when the service names none.
    pub fn built_image(&self, service: &str) -> String {
        format!("{}-{service}:latest", self.project)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keys_keep_local_values_first() {
        let mut v = serde_json::json!({
            "a": { "<<": { "x": 1, "y": 2 }, "y": 3 },
            "b": { "<<": [ { "x": 1 }, { "x": 2, "z": 4 } ] }
        });
        apply_merge_keys(&mut v);
        assert_eq!(v["a"], serde_json::json!({ "x": 1, "y": 3 }));
        assert_eq!(v["b"], serde_json::json!({ "x": 1, "z": 4 }));
    }

    #[test]
    fn project_names_follow_compose() {
        let declared = Value::String("My_CI.Runners".into());
        assert_eq!(
            project_name(Some(&declared), Path::new(".")),
            "my_cirunners"
        );
    }
}
