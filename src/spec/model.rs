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
/// Pattern of a host's Docker endpoint; check.rs reads the rest of it.
pub const DOCKER_ENDPOINT_PATTERN: &str = "^(unix|ssh|tcp|http)://.+$";
/// Pattern of a runner scale set name: conservative, so that GitHub and tools built on scale
/// sets (actions-runner-controller limits names to 45 characters) accept it.
pub const SCALE_SET_NAME_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,44}$";
/// The longest scale set name.
pub const MAX_SCALE_SET_NAME: usize = 45;
/// Pids limit of a runner container unless its pool says otherwise: a fork bomb in a job stops
/// there, while a parallel build on a many-core GPU host (threads count as pids) stays below it.
pub const DEFAULT_PIDS_LIMIT: u32 = 16_384;
/// The highest pids limit a pool may set (0 means no limit).
pub const MAX_PIDS_LIMIT: u32 = 1_000_000;

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
    /// When a GPU counts as dirty, degraded or unhealthy (docs/gpu-health.md). Optional: the
    /// defaults are shown on each field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_health: Option<GpuHealthSpec>,
}

/// The thresholds of GPU health (docs/gpu-health.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuHealthSpec {
    /// Device memory in use on a GPU that no runner holds above which the GPU is dirty (no new
    /// runner gets it), as Docker reads sizes: 512m, 1g.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[bBkKmMgG]?$"))]
    #[schemars(extend("default" = "1g"))]
    pub dirty_memory: Option<String>,
    /// How long a GPU may stay dirty before fleet reports it (warning, metric, alert): 30s, 2m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "2m"))]
    pub dirty_grace: Option<String>,
    /// Xid errors that are faults of the job, not of the GPU: recorded against the runner, and
    /// the GPU stays healthy. Every other Xid NVML reports as critical makes the GPU unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = [13, 31, 43, 45, 68]))]
    pub application_xids: Option<Vec<u64>>,
    /// GPU temperature in degrees Celsius from which the GPU is degraded (placement allowed,
    /// with a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 85))]
    pub temperature_warn: Option<u32>,
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
    /// REST API base URL, for the record: it must equal the API the machine trusts
    /// ($GITHUB_API_URL, else https://api.github.com), or fleet refuses to run; the spec never
    /// chooses where credentials go. GitHub Enterprise Server: https://HOST/api/v3.
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
    /// Docker endpoint: unix:///path, ssh://[user@]host[:port] (OpenSSH and
    /// `docker system dial-stdio` on the host), tcp://host:port with `tls`, or tcp:// and
    /// http:// without TLS only on loopback with `insecure: true`.
    /// Default: $DOCKER_HOST, else the local socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DOCKER_ENDPOINT_PATTERN))]
    pub docker: Option<String>,
    /// TLS client certificates for a tcp:// endpoint (files; relative paths are relative to the
    /// spec's directory; the key must be mode 0600 or stricter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HostTls>,
    /// Allow tcp:// or http:// without TLS: only for a loopback IP address (127.0.0.0/8,
    /// [::1]). Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub insecure: Option<bool>,
    /// The host's GPUs: `auto` (NVML on this machine), `none`, or a declared list of GPU UUIDs.
    #[serde(default)]
    pub gpus: HostGpus,
    /// How GPUs reach containers: `nvidia` (default), `cdi` or `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "nvidia"))]
    pub gpu_mode: Option<GpuMode>,
    /// GPU UUIDs taken out of service (maintenance, a GPU waiting for RMA): fleet never gives
    /// them to a runner, and moves idle runners off them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus_disabled: Vec<String>,
}

/// The files of a TLS connection to a Docker engine, as `docker --tlsverify` takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostTls {
    /// The CA certificate that signed the engine's certificate (PEM file).
    #[schemars(length(min = 1))]
    pub ca: String,
    /// The client certificate (PEM file).
    #[schemars(length(min = 1))]
    pub cert: String,
    /// The client certificate's private key (PEM file, mode 0600 or stricter).
    #[schemars(length(min = 1))]
    pub key: String,
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
    /// The host the pool runs on, or a list of hosts it may run on. Optional when there is
    /// exactly one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<PoolHosts>,
    /// Runner containers kept, idle and busy together. Required, here or in `defaults`, unless
    /// the pool has `autoscale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub count: Option<u32>,
    /// Scale with the queue through a GitHub runner scale set, instead of a fixed `count`.
    /// Per pool only (not in `defaults`); needs ephemeral runners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
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
    /// Docker network: bridge (default), host, none, container:NAME, or a user network's name.
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
    /// How the runner receives its JIT config or registration token: `file` (default: a
    /// root-only file written into the container before it starts) or `env` (the
    /// ACTIONS_RUNNER_INPUT_* variables, visible in `docker inspect` for the container's life).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "file"))]
    pub secrets: Option<SecretDelivery>,
    /// Container hardening: no-new-privileges, a pids limit, no NET_RAW capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<Security>,
    /// Whether runners update themselves when GitHub offers a newer runner: `disabled`
    /// (default: `--disableupdate`; rebuild the image to update) or `enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "disabled"))]
    pub runner_update: Option<RunnerUpdate>,
    /// How long a runner has to stop after SIGTERM before it is killed, when fleet removes or
    /// replaces its container: seconds or minutes, such as 30s or 2m (at most 1h). Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[sm]$"))]
    #[schemars(extend("default" = "30s"))]
    pub stop_timeout: Option<String>,
    /// With `docker_socket: true`: the host directory under which each runner's work folder
    /// (`<work_dir>/<runner>`) is bind-mounted at the identical path, so that the host's
    /// engine finds the paths a job's containers mount. Default: /var/lib/fleet-work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._/-]*$"), length(max = 200))]
    #[schemars(extend("default" = "/var/lib/fleet-work"))]
    pub work_dir: Option<String>,
}

/// Whether a pool's runners update themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerUpdate {
    #[default]
    Disabled,
    Enabled,
}

impl RunnerUpdate {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerUpdate::Disabled => "disabled",
            RunnerUpdate::Enabled => "enabled",
        }
    }
}

/// Where runners' work folders live on the host when the pool says no `work_dir`.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/fleet-work";

/// The stop timeout a pool gets when it says nothing, in seconds.
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 30;
/// The longest stop timeout a pool may ask for, in seconds.
pub const MAX_STOP_TIMEOUT_SECS: u32 = 3600;

/// A `stop_timeout` in seconds (`30s`, `2m`), if it is one of at most an hour.
pub fn parse_stop_timeout(text: &str) -> Option<u32> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u32 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        _ => return None,
    };
    (secs <= MAX_STOP_TIMEOUT_SECS).then_some(secs)
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
    "secrets",
    "security",
    "autoscale",
    "runner_update",
    "stop_timeout",
    "work_dir",
];

/// A pool's autoscaling: a GitHub runner scale set that fleet keeps between `min_idle` idle
/// runners and `max` runners in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// Idle runners kept waiting for jobs. Default: 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    #[schemars(extend("default" = 0))]
    pub min_idle: u32,
    /// The most runners of the pool, idle and busy together; at least `min_idle` and 1.
    #[schemars(range(min = 1, max = 1000))]
    pub max: u32,
    /// The scale set's name, which workflows use in `runs-on`: letters, digits, '_', '.' and
    /// '-', not starting with '.' or '-', at most 45 characters. Default: `<fleet>-<pool>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SCALE_SET_NAME_PATTERN))]
    pub scale_set: Option<String>,
}

/// How a runner container receives its JIT config or registration token: `stdin` (fleet
/// writes it to the container's standard input once, as it starts; the entrypoint keeps it in a
/// root-only file), `file` (fleet writes that root-only file into the container before starting
/// it, for images that read only the file: one more request to the engine per runner) or `env`
/// (the legacy `ACTIONS_RUNNER_INPUT_*` environment variables, for images that read only those:
/// the secret stays in `docker inspect` and /proc/1/environ for the container's life).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SecretDelivery {
    #[default]
    Stdin,
    File,
    Env,
}

/// Hardening of a pool's runner containers. Each field left out takes its default (or the
/// value in `defaults`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Set no-new-privileges: setuid programs such as sudo gain nothing. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub no_new_privileges: Option<bool>,
    /// The most processes and threads in one runner container; 0: no limit. Default: 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    #[schemars(extend("default" = 16_384))]
    pub pids_limit: Option<u32>,
    /// Keep the NET_RAW capability (raw sockets: ping, packet crafting). Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub net_raw: Option<bool>,
}

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

/// The host a pool runs on, or the hosts it may run on (`host: bare` or `host: [bare, vm]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PoolHosts {
    One(String),
    Many(Vec<String>),
}

impl PoolHosts {
    /// Every host named, in the order written.
    pub fn names(&self) -> &[String] {
        match self {
            PoolHosts::One(name) => std::slice::from_ref(name),
            PoolHosts::Many(names) => names,
        }
    }

    /// The first host named.
    pub fn first(&self) -> Option<&str> {
        self.names().first().map(String::as_str)
    }
}

impl From<&str> for PoolHosts {
    fn from(name: &str) -> PoolHosts {
        PoolHosts::One(name.to_string())
    }
}

impl JsonSchema for PoolHosts {
    fn schema_name() -> Cow<'static, str> {
        "PoolHosts".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A host name declared in `hosts`, or a non-empty list of distinct host names the pool may run on.",
            // if/then/else rather than oneOf, so that an error names the item that is wrong.
            "if": { "type": "string" },
            "then": { "pattern": HOST_NAME_PATTERN },
            "else": {
                "type": "array",
                "items": { "type": "string", "pattern": HOST_NAME_PATTERN },
                "minItems": 1,
                "uniqueItems": true
            }
        })
    }
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
                { "type": "integer", "format": "uint32", "minimum": 0, "maximum": 64 },
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
