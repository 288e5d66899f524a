//! The typed model of `fleet.yaml` (version 1).
//!
//! These types are the source of `schema/fleet.schema.json`: the schema is generated from them
//! (`fleet schema`), and a test fails when the committed file and the types drift apart.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Pattern of fleet and pool names: they prefix every runner and container name.
pub const NAME_PATTERN: &str = "^[a-z0-9-]{1,24}$";
/// Pattern of a runner label: not empty, no commas (RUNNER_LABELS is comma-separated), no spaces.
pub const LABEL_PATTERN: &str = r"^[^,\s]+$";
/// Pattern of host names in `hosts`.
pub const HOST_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_.-]{0,62}$";
/// The host used when `hosts` is absent.
pub const DEFAULT_HOST: &str = "local";
/// The environment variable holding the token when `github.auth` does not name one.
pub const DEFAULT_TOKEN_ENV: &str = "GITHUB_TOKEN";
/// GitHub's public API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// A fleet of self-hosted GitHub Actions runners, run as Docker containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "fleet.yaml")]
pub struct Spec {
    /// Version of the spec format. Only 1 exists.
    #[schemars(extend("const" = 1))]
    pub version: u32,
    /// Fleet id: lowercase letters, digits and '-', 1 to 24 characters. It prefixes the name of
    /// every runner and container the fleet owns (`<name>-<pool>-<suffix>`).
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Where the runners register: one repository or one organization.
    pub github: Github,
    /// Docker hosts by name. Default: one host `local` on $DOCKER_HOST or the local socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("propertyNames" = { "pattern": HOST_NAME_PATTERN }))]
    pub hosts: Option<BTreeMap<String, Host>>,
    /// Pool fields applied to every pool unless the pool sets them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Pool>,
    /// Runner pools by name (lowercase letters, digits and '-', 1 to 24 characters).
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub pools: BTreeMap<String, Pool>,
}

/// The GitHub side: scope, API endpoint and credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Github {
    /// Repository scope, `owner/name`. Exactly one of `repo` and `org`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"))]
    pub repo: Option<String>,
    /// Organization scope. Exactly one of `repo` and `org`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9-]*$"))]
    pub org: Option<String>,
    /// REST API base URL. Default: $GITHUB_API_URL, else https://api.github.com.
    /// GitHub Enterprise Server: https://HOST/api/v3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+"))]
    #[schemars(extend("default" = "https://api.github.com"))]
    pub api_url: Option<String>,
    /// Credentials. Default: a token read from $GITHUB_TOKEN. Never a secret itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
}

/// How fleet authenticates to GitHub: a token from the environment, or a GitHub App.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Name of the environment variable that holds a token. Default: GITHUB_TOKEN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    #[schemars(extend("default" = "GITHUB_TOKEN"))]
    pub token_env: Option<String>,
    /// A GitHub App installation. Exclusive with `token_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppAuth>,
}

/// A GitHub App installation used to obtain short-lived installation tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppAuth {
    /// The App's numeric id.
    #[schemars(range(min = 1))]
    pub app_id: u64,
    /// The installation's numeric id (on the repository's owner or the organization).
    #[schemars(range(min = 1))]
    pub installation_id: u64,
    /// Path of the App's PEM private key; the file must be mode 0600 or stricter.
    #[schemars(length(min = 1))]
    pub private_key_file: String,
}

/// A Docker host that runs runner containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Docker endpoint: unix:///path, tcp://host:port or http://host:port. No TLS: reach a remote
    /// engine through an SSH-forwarded socket.
    /// Default: $DOCKER_HOST, else the local socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(unix|tcp|http)://.+$"))]
    pub docker: Option<String>,
    /// The host's GPUs: `auto` (NVML on this machine), `none`, or a declared list of GPU UUIDs.
    #[serde(default)]
    pub gpus: HostGpus,
    /// How GPUs reach containers: `nvidia` (default), `cdi` or `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "nvidia"))]
    pub gpu_mode: Option<GpuMode>,
}

/// How a host's engine gives GPUs to containers: `nvidia` (a device request by GPU UUID for the
/// nvidia driver of nvidia-container-toolkit, the default), `cdi` (CDI device names
/// `nvidia.com/gpu=<uuid>`, for engines with CDI enabled) or `env` (`NVIDIA_VISIBLE_DEVICES`
/// with the legacy `nvidia` runtime, or with an engine whose default runtime is nvidia).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GpuMode {
    #[default]
    Nvidia,
    Cdi,
    Env,
}

impl GpuMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuMode::Nvidia => "nvidia",
            GpuMode::Cdi => "cdi",
            GpuMode::Env => "env",
        }
    }
}

/// A pool of identical runners. In `defaults`, every field is a default for every pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// The host the pool runs on. Optional when there is exactly one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HOST_NAME_PATTERN))]
    pub host: Option<String>,
    /// Runner containers kept, idle and busy together. Required, here or in `defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub count: Option<u32>,
    /// Runner labels added to the default ones (self-hosted, Linux, X64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(regex(pattern = LABEL_PATTERN), length(max = 256)))]
    #[schemars(extend("default" = []))]
    pub labels: Option<Vec<String>>,
    /// When true, the runner gets only `labels`, not self-hosted, Linux and X64. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub no_default_labels: Option<bool>,
    /// One job per runner with a single-use JIT config, replaced after its job. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub ephemeral: Option<bool>,
    /// GPUs per runner: 0 (default), N distinct GPUs held exclusively, or `all` (shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuRequest>,
    /// Runner group by name (organization scope). Repository scope has only the default group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub runner_group: Option<String>,
    /// The runner image. Required, here or in `defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// When to pull the image: if-missing (default), always, never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "if-missing"))]
    pub pull: Option<PullPolicy>,
    /// Named volumes (created and labelled by fleet, kept on destroy) and bind mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = []))]
    pub volumes: Option<Vec<Volume>>,
    /// Extra environment of the runner container. Names set by fleet itself are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" }))]
    #[schemars(extend("default" = {}))]
    pub env: Option<BTreeMap<String, String>>,
    /// Docker network: bridge (default), host, none, or a user network's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    #[schemars(extend("default" = "bridge"))]
    pub network: Option<String>,
    /// CPU limit in cores, for instance 8 or 2.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub cpus: Option<f64>,
    /// Memory limit: a number with an optional unit b, k, m or g, for instance 16g.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[bkmgBKMG]?$"))]
    pub memory: Option<String>,
    /// Mount /var/run/docker.sock into the runner: root on the host. The plan warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub docker_socket: Option<bool>,
}

/// Pool field names, in the order of the schema; used in messages.
pub const POOL_FIELDS: &[&str] = &[
    "host",
    "count",
    "labels",
    "no_default_labels",
    "ephemeral",
    "gpus",
    "runner_group",
    "image",
    "pull",
    "volumes",
    "env",
    "network",
    "cpus",
    "memory",
    "docker_socket",
];

/// A volume mounted into each runner of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// A named volume (created by fleet) or an absolute host path (bind mount).
    #[schemars(length(min = 1))]
    pub source: String,
    /// Absolute path inside the container.
    #[schemars(length(min = 1))]
    pub target: String,
    /// Mount read-only. Default: false.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(extend("default" = false))]
    pub read_only: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Volume {
    /// A bind mount has an absolute host path as its source; anything else is a named volume.
    pub fn is_bind(&self) -> bool {
        self.source.starts_with('/')
    }
}

/// When to pull a pool's image: `if-missing` (only when the host lacks it), `always` (before
/// every create) or `never` (the image must already be on the host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    #[default]
    IfMissing,
    Always,
    Never,
}

/// GPUs asked per runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuRequest {
    /// N distinct GPUs held exclusively by one runner (0: none).
    Count(u32),
    /// Every GPU of the host, shared with other runners, never exclusive.
    All,
}

impl Default for GpuRequest {
    fn default() -> Self {
        GpuRequest::Count(0)
    }
}

impl Serialize for GpuRequest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuRequest::Count(n) => s.serialize_u32(*n),
            GpuRequest::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for GpuRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GpuRequest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of GPUs (0 or more) or \"all\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GpuRequest, E> {
                u32::try_from(v)
                    .map(GpuRequest::Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GpuRequest, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GpuRequest, E> {
                match v {
                    "all" => Ok(GpuRequest::All),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for GpuRequest {
    fn schema_name() -> Cow<'static, str> {
        "GpuRequest".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "GPUs per runner: 0 (none), N distinct GPUs held exclusively, or \"all\" (every GPU of the host, shared).",
            "oneOf": [
                { "type": "integer", "minimum": 0, "maximum": 64 },
                { "const": "all" }
            ],
            "default": 0
        })
    }
}

/// A host's GPU inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostGpus {
    /// Discovered through NVML on the machine fleet runs on.
    #[default]
    Auto,
    /// The host has no GPUs to hand out.
    None,
    /// A declared list of GPU UUIDs.
    Declared(Vec<String>),
}

impl Serialize for HostGpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HostGpus::Auto => s.serialize_str("auto"),
            HostGpus::None => s.serialize_str("none"),
            HostGpus::Declared(uuids) => uuids.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for HostGpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HostGpus;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\", \"none\" or a list of GPU UUIDs")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HostGpus, E> {
                match v {
                    "auto" => Ok(HostGpus::Auto),
                    "none" => Ok(HostGpus::None),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<HostGpus, A::Error> {
                let mut uuids = Vec::new();
                while let Some(uuid) = seq.next_element::<String>()? {
                    uuids.push(uuid);
                }
                Ok(HostGpus::Declared(uuids))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for HostGpus {
    fn schema_name() -> Cow<'static, str> {
        "HostGpus".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The host's GPUs: \"auto\" (NVML on this machine), \"none\", or a declared list of GPU UUIDs.",
            // if/then/else rather than oneOf, so that an error names the item that is wrong.
            "if": { "type": "string" },
            "then": { "enum": ["auto", "none"] },
            "else": {
                "type": "array",
                "items": { "type": "string", "pattern": "^(GPU|MIG)-[0-9A-Za-z-]+$" },
                "uniqueItems": true
            },
            "default": "auto"
        })
    }
}
