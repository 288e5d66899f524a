//! The fake's mutable world: runners per scope, runner groups, tokens, rate limit, faults and
//! the request log. Everything here is synchronous and lives behind one mutex; no lock is held
//! across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::{Value, json};

use crate::scaleset::ScaleSets;
use crate::util::{self, ALNUM, UPPER_ALNUM};
use crate::{AppConfig, Config, Fault, NewRunner, RequestRecord, RunnerInfo, Scope};

/// GitHub's primary limit for a personal access token or an installation.
pub(crate) const RATE_LIMIT: u32 = 5000;
/// Tokens (registration, remove, installation) live one hour, as on GitHub.
pub(crate) const TOKEN_TTL_SECS: u64 = 3600;
/// The implicit "Default" runner group of every organization (and the only group of a repository).
pub(crate) const DEFAULT_GROUP_ID: u64 = 1;
/// Label names GitHub applies itself when a runner configures; given explicitly they come back
/// typed "read-only" (see the generate-jitconfig example in the OpenAPI description).
const SYSTEM_LABELS: &[&str] = &[
    "self-hosted",
    "linux",
    "windows",
    "macos",
    "x64",
    "x86",
    "arm",
    "arm64",
];
/// The system labels `config.sh` gives a runner of the test image's platform (its OS and
/// architecture as GitHub names them).
const CONFIGURED_SYSTEM_LABELS: &[&str] = &["self-hosted", "Linux", "X64"];
/// The runner version reported once a runner has connected.
const RUNNER_VERSION: &str = "2.329.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LabelKind {
    ReadOnly,
    Custom,
}

impl LabelKind {
    fn as_str(self) -> &'static str {
        match self {
            LabelKind::ReadOnly => "read-only",
            LabelKind::Custom => "custom",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Label {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) kind: LabelKind,
}

#[derive(Clone, Debug)]
pub(crate) struct Runner {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) labels: Vec<Label>,
    pub(crate) online: bool,
    pub(crate) busy: bool,
    pub(crate) group_id: u64,
    pub(crate) ephemeral: bool,
    /// GitHub reports `os` and `version` only after the runner has connected once.
    pub(crate) connected: bool,
    /// The scale set the runner was registered for (through its JIT config), if any.
    pub(crate) scale_set_id: Option<u64>,
}

impl Runner {
    pub(crate) fn info(&self) -> RunnerInfo {
        RunnerInfo {
            id: self.id,
            name: self.name.clone(),
            status: if self.online { "online" } else { "offline" }.to_owned(),
            busy: self.busy,
            labels: self.labels.iter().map(|l| l.name.clone()).collect(),
            runner_group_id: self.group_id,
            ephemeral: self.ephemeral,
            scale_set_id: self.scale_set_id,
        }
    }

    fn os(&self) -> &'static str {
        if !self.connected {
            return "unknown";
        }
        let has = |n: &str| self.labels.iter().any(|l| l.name.eq_ignore_ascii_case(n));
        if has("macos") {
            "macos"
        } else if has("windows") {
            "windows"
        } else {
            "linux"
        }
    }

    /// The "Self hosted runners" schema of the OpenAPI description.
    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "os": self.os(),
            "status": if self.online { "online" } else { "offline" },
            "busy": self.busy,
            "ephemeral": self.ephemeral,
            "runner_group_id": self.group_id,
            "labels": labels_json(&self.labels),
        });
        if let (true, Some(fields)) = (self.connected, v.as_object_mut()) {
            fields.insert("version".to_owned(), json!(RUNNER_VERSION));
        }
        v
    }
}

pub(crate) fn labels_json(labels: &[Label]) -> Value {
    Value::Array(
        labels
            .iter()
            .map(|l| json!({"id": l.id, "name": l.name, "type": l.kind.as_str()}))
            .collect(),
    )
}

#[derive(Clone, Debug)]
pub(crate) struct RunnerGroup {
    pub(crate) id: u64,
    pub(crate) name: String,
}

#[derive(Default)]
struct ScopeState {
    runners: BTreeMap<u64, Runner>,
}

struct RateLimit {
    remaining: u32,
    reset: u64,
}

/// What the request pipeline should do about rate limiting.
pub(crate) enum RateDecision {
    Allowed,
    Exhausted,
}

pub(crate) struct RateSnapshot {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    pub(crate) used: u32,
    pub(crate) reset: u64,
}

/// Why a runner could not be created.
pub(crate) enum CreateError {
    NameTaken,
    UnknownGroup,
}

/// Why a runner could not be moved to a runner group.
pub(crate) enum GroupMoveError {
    NoRunner,
    NoGroup,
}

/// Why `config.sh` could not register a runner.
#[derive(Debug)]
pub(crate) enum ConfigureError {
    /// The registration token is unknown, expired, or was issued for another scope.
    BadToken,
    /// No runner group of that name in the token's scope.
    NoGroup(String),
    /// A runner of that name exists and `--replace` was not given.
    NameTaken,
    /// A runner of that name exists in another runner group.
    NameInOtherGroup,
}

impl std::fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigureError::BadToken => {
                f.write_str("the registration token is unknown, expired, or for another scope")
            }
            ConfigureError::NoGroup(name) => {
                write!(
                    f,
                    "Could not find any self-hosted runner group named \"{name}\"."
                )
            }
            ConfigureError::NameTaken => f.write_str("A runner exists with the same name"),
            ConfigureError::NameInOtherGroup => {
                f.write_str("A runner exists with the same name in another runner group")
            }
        }
    }
}

/// Why a label operation failed.
pub(crate) enum LabelError {
    NoRunner,
    NoLabel,
    ReadOnly,
}

pub(crate) struct State {
    pub(crate) token: String,
    pub(crate) app: Option<AppConfig>,
    scopes: BTreeMap<Scope, ScopeState>,
    /// Extra runner groups per organization; "Default" (id 1) is implicit.
    groups: BTreeMap<String, Vec<RunnerGroup>>,
    next_runner_id: u64,
    next_group_id: u64,
    /// Label ids are global per (case-insensitive) name, as GitHub's are.
    label_ids: HashMap<String, u64>,
    /// Installation token -> expiry (epoch seconds).
    installation_tokens: HashMap<String, u64>,
    rate: RateLimit,
    /// Faults drawn per request, each with its probability (their sum is at most 1).
    ratio_faults: Vec<(Fault, f64)>,
    next_faults: VecDeque<Fault>,
    /// Separate generators so that whether a request fails depends only on how many requests came
    /// before it, not on how many tokens were minted.
    fault_rng: StdRng,
    token_rng: StdRng,
    pub(crate) latency: Duration,
    requests: Vec<RequestRecord>,
    pub(crate) jit_configs_issued: usize,
    pub(crate) registration_tokens_issued: usize,
    /// The runner version `GET .../actions/runners/downloads` offers.
    pub(crate) runner_version: String,
    /// GitHub's runner scale set service (the Actions service behind `runner-registration`).
    pub(crate) scalesets: ScaleSets,
    /// Repositories' workflow runs and their jobs.
    pub(crate) workflows: crate::workflows::Workflows,
}

impl State {
    pub(crate) fn new(config: Config, now: u64) -> State {
        State {
            token: config.token,
            app: config.app,
            scopes: BTreeMap::new(),
            groups: BTreeMap::new(),
            next_runner_id: 1,
            next_group_id: DEFAULT_GROUP_ID + 1,
            label_ids: HashMap::new(),
            installation_tokens: HashMap::new(),
            rate: RateLimit {
                remaining: RATE_LIMIT,
                reset: now + TOKEN_TTL_SECS,
            },
            ratio_faults: Vec::new(),
            next_faults: VecDeque::new(),
            fault_rng: StdRng::seed_from_u64(config.seed),
            token_rng: StdRng::seed_from_u64(config.seed ^ 0x9E37_79B9_7F4A_7C15),
            latency: Duration::ZERO,
            requests: Vec::new(),
            jit_configs_issued: 0,
            registration_tokens_issued: 0,
            runner_version: crate::DEFAULT_RUNNER_VERSION.to_string(),
            scalesets: ScaleSets::new(config.scaleset),
            workflows: Default::default(),
        }
    }

    // ---- runners -------------------------------------------------------------------------

    fn scope_mut(&mut self, scope: &Scope) -> &mut ScopeState {
        self.scopes.entry(scope.clone()).or_default()
    }

    fn label_id(&mut self, name: &str) -> u64 {
        let next = u64::try_from(self.label_ids.len()).unwrap_or(u64::MAX - 1) + 1;
        *self
            .label_ids
            .entry(name.to_ascii_lowercase())
            .or_insert(next)
    }

    /// Labels as GitHub stores them: deduplicated case-insensitively, system names read-only.
    fn make_labels(&mut self, names: &[String]) -> Vec<Label> {
        let mut labels: Vec<Label> = Vec::new();
        for name in names {
            if labels.iter().any(|l| l.name.eq_ignore_ascii_case(name)) {
                continue;
            }
            let kind = if SYSTEM_LABELS.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                LabelKind::ReadOnly
            } else {
                LabelKind::Custom
            };
            labels.push(Label {
                id: self.label_id(name),
                name: name.clone(),
                kind,
            });
        }
        labels
    }

    pub(crate) fn group_exists(&self, scope: &Scope, group_id: u64) -> bool {
        if group_id == DEFAULT_GROUP_ID {
            return true;
        }
        match scope {
            // Repositories have no runner groups of their own.
            Scope::Repo { .. } => false,
            Scope::Org(org) => self
                .groups
                .get(org)
                .is_some_and(|gs| gs.iter().any(|g| g.id == group_id)),
        }
    }

    pub(crate) fn runner_groups(&self, org: &str) -> Vec<RunnerGroup> {
        let mut all = vec![RunnerGroup {
            id: DEFAULT_GROUP_ID,
            name: "Default".to_owned(),
        }];
        all.extend(self.groups.get(org).into_iter().flatten().cloned());
        all
    }

    pub(crate) fn add_runner_group(&mut self, org: &str, name: &str) -> u64 {
        let id = self.next_group_id;
        self.next_group_id += 1;
        self.groups
            .entry(org.to_owned())
            .or_default()
            .push(RunnerGroup {
                id,
                name: name.to_owned(),
            });
        id
    }

    pub(crate) fn create_runner(
        &mut self,
        scope: &Scope,
        runner: NewRunner,
    ) -> Result<Runner, CreateError> {
        if !self.group_exists(scope, runner.runner_group_id) {
            return Err(CreateError::UnknownGroup);
        }
        if self
            .scope_mut(scope)
            .runners
            .values()
            .any(|r| r.name == runner.name)
        {
            return Err(CreateError::NameTaken);
        }
        let id = self.insert_runner(scope, runner);
        self.runner(scope, id)
            .cloned()
            .ok_or(CreateError::UnknownGroup)
    }

    /// Adds a runner without the name and group checks: tests use it for foreign runners,
    /// duplicates and orphans that the real API would not let a client create.
    pub(crate) fn insert_runner(&mut self, scope: &Scope, runner: NewRunner) -> u64 {
        let labels = self.make_labels(&runner.labels);
        let id = self.next_runner_id;
        self.next_runner_id += 1;
        let connected = runner.status_online || runner.busy;
        self.scope_mut(scope).runners.insert(
            id,
            Runner {
                id,
                name: runner.name,
                labels,
                online: runner.status_online,
                busy: runner.busy,
                group_id: runner.runner_group_id,
                ephemeral: runner.ephemeral,
                connected,
                scale_set_id: None,
            },
        );
        id
    }

    pub(crate) fn runner(&self, scope: &Scope, id: u64) -> Option<&Runner> {
        self.scopes.get(scope)?.runners.get(&id)
    }

    pub(crate) fn runner_mut(&mut self, scope: &Scope, id: u64) -> Option<&mut Runner> {
        self.scopes.get_mut(scope)?.runners.get_mut(&id)
    }

    pub(crate) fn runner_id_by_name(&self, scope: &Scope, name: &str) -> Option<u64> {
        self.scopes
            .get(scope)?
            .runners
            .values()
            .find(|r| r.name == name)
            .map(|r| r.id)
    }

    pub(crate) fn runners(&self, scope: &Scope) -> Vec<Runner> {
        self.scopes
            .get(scope)
            .map(|s| s.runners.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn set_runner_state(
        &mut self,
        scope: &Scope,
        id: u64,
        online: bool,
        busy: bool,
    ) -> Option<Runner> {
        let runner = self.runner_mut(scope, id)?;
        runner.online = online;
        runner.busy = busy;
        runner.connected |= online || busy;
        Some(runner.clone())
    }

    /// Removes the `count` oldest runners of every scope (`Fault::RunnersVanish`).
    pub(crate) fn vanish_runners(&mut self, count: usize) {
        for scope in self.scopes.values_mut() {
            let oldest: Vec<u64> = scope.runners.keys().take(count).copied().collect();
            for id in oldest {
                scope.runners.remove(&id);
            }
        }
    }

    pub(crate) fn remove_runner(&mut self, scope: &Scope, id: u64) -> Option<Runner> {
        self.scopes.get_mut(scope)?.runners.remove(&id)
    }

    /// PUT `/orgs/{org}/actions/runner-groups/{group}/runners/{id}`: the runner joins `group`
    /// (DELETE sends it back to Default, group 1).
    pub(crate) fn move_runner_to_group(
        &mut self,
        org: &str,
        id: u64,
        group: u64,
    ) -> Result<(), GroupMoveError> {
        let scope = Scope::org(org);
        if !self.group_exists(&scope, group) {
            return Err(GroupMoveError::NoGroup);
        }
        let runner = self
            .runner_mut(&scope, id)
            .ok_or(GroupMoveError::NoRunner)?;
        runner.group_id = group;
        Ok(())
    }

    /// What the runner's `config.sh --unattended [--replace]` does with a registration token
    /// (actions/runner's `ConfigurationManager`): the group is found by name (Default when none
    /// is given); a runner of that name in that group is replaced in place with `--replace`
    /// (same id, new labels: GitHub's system labels plus the given ones), otherwise a new
    /// runner is added. The runner is offline until it connects (`set_runner_state`). Returns
    /// the runner and whether it replaced one.
    pub(crate) fn configure_runner(
        &mut self,
        config: &crate::RunnerConfiguration,
        now: u64,
    ) -> Result<(Runner, bool), ConfigureError> {
        let scope = self
            .scalesets
            .registration_scope(&config.token, now)
            .ok_or(ConfigureError::BadToken)?;
        let wanted = config.runner_group.as_deref().unwrap_or("Default");
        let groups = match &scope {
            Scope::Org(org) => self.runner_groups(org),
            Scope::Repo { .. } => self.runner_groups(""),
        };
        let group = groups
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(wanted))
            .map(|g| g.id)
            .filter(|id| self.group_exists(&scope, *id))
            .ok_or_else(|| ConfigureError::NoGroup(wanted.to_owned()))?;
        let mut names: Vec<String> = CONFIGURED_SYSTEM_LABELS
            .iter()
            .map(|l| (*l).to_owned())
            .collect();
        names.extend(config.labels.iter().cloned());
        let labels = self.make_labels(&names);
        let existing = self
            .runners(&scope)
            .into_iter()
            .find(|r| r.name == config.name);
        match existing {
            Some(r) if r.group_id != group => Err(ConfigureError::NameInOtherGroup),
            Some(_) if !config.replace => Err(ConfigureError::NameTaken),
            Some(r) => {
                let runner = self
                    .runner_mut(&scope, r.id)
                    .ok_or(ConfigureError::NameTaken)?;
                runner.labels = labels;
                runner.online = false;
                runner.busy = false;
                runner.ephemeral = false;
                runner.connected = true;
                Ok((runner.clone(), true))
            }
            None => {
                let id = self.insert_runner(
                    &scope,
                    NewRunner {
                        name: config.name.clone(),
                        labels: vec![],
                        status_online: false,
                        busy: false,
                        runner_group_id: group,
                        ephemeral: false,
                    },
                );
                let runner = self
                    .runner_mut(&scope, id)
                    .ok_or(ConfigureError::NameTaken)?;
                runner.labels = labels;
                runner.connected = true;
                Ok((runner.clone(), false))
            }
        }
    }

    // ---- labels --------------------------------------------------------------------------

    pub(crate) fn runner_labels(&self, scope: &Scope, id: u64) -> Option<Vec<Label>> {
        self.runner(scope, id).map(|r| r.labels.clone())
    }

    /// POST: adds custom labels to those the runner has.
    pub(crate) fn add_labels(
        &mut self,
        scope: &Scope,
        id: u64,
        names: &[String],
    ) -> Result<Vec<Label>, LabelError> {
        let existing = self.runner_labels(scope, id).ok_or(LabelError::NoRunner)?;
        let mut labels = existing;
        for name in names {
            if labels.iter().any(|l| l.name.eq_ignore_ascii_case(name)) {
                continue;
            }
            labels.push(Label {
                id: self.label_id(name),
                name: name.clone(),
                kind: LabelKind::Custom,
            });
        }
        self.store_labels(scope, id, labels)
    }

    /// PUT: replaces all custom labels; read-only ones stay.
    pub(crate) fn set_labels(
        &mut self,
        scope: &Scope,
        id: u64,
        names: &[String],
    ) -> Result<Vec<Label>, LabelError> {
        let existing = self.runner_labels(scope, id).ok_or(LabelError::NoRunner)?;
        let mut labels: Vec<Label> = existing
            .into_iter()
            .filter(|l| l.kind == LabelKind::ReadOnly)
            .collect();
        for name in names {
            if labels.iter().any(|l| l.name.eq_ignore_ascii_case(name)) {
                continue;
            }
            labels.push(Label {
                id: self.label_id(name),
                name: name.clone(),
                kind: LabelKind::Custom,
            });
        }
        self.store_labels(scope, id, labels)
    }

    /// DELETE one label; read-only labels cannot be removed.
    pub(crate) fn remove_label(
        &mut self,
        scope: &Scope,
        id: u64,
        name: &str,
    ) -> Result<Vec<Label>, LabelError> {
        let mut labels = self.runner_labels(scope, id).ok_or(LabelError::NoRunner)?;
        let pos = labels
            .iter()
            .position(|l| l.name.eq_ignore_ascii_case(name))
            .ok_or(LabelError::NoLabel)?;
        if labels
            .get(pos)
            .is_some_and(|l| l.kind == LabelKind::ReadOnly)
        {
            return Err(LabelError::ReadOnly);
        }
        labels.remove(pos);
        self.store_labels(scope, id, labels)
    }

    fn store_labels(
        &mut self,
        scope: &Scope,
        id: u64,
        labels: Vec<Label>,
    ) -> Result<Vec<Label>, LabelError> {
        let runner = self.runner_mut(scope, id).ok_or(LabelError::NoRunner)?;
        runner.labels = labels;
        Ok(runner.labels.clone())
    }

    // ---- tokens --------------------------------------------------------------------------

    /// A registration or remove token: 29 upper-case letters and digits, like GitHub's.
    pub(crate) fn runner_token(&mut self) -> String {
        util::random_string(&mut self.token_rng, UPPER_ALNUM, 29)
    }

    pub(crate) fn secret(&mut self, len: usize) -> String {
        util::random_string(&mut self.token_rng, ALNUM, len)
    }

    pub(crate) fn request_id(&mut self) -> String {
        util::request_id(&mut self.token_rng)
    }

    /// Mints an installation token (`ghs_` and 36 characters) valid until `expires`.
    pub(crate) fn issue_installation_token(&mut self, expires: u64) -> String {
        let token = format!("ghs_{}", self.secret(36));
        self.installation_tokens.insert(token.clone(), expires);
        token
    }

    pub(crate) fn token_accepted(&mut self, token: &str, now: u64) -> bool {
        self.installation_tokens.retain(|_, exp| *exp > now);
        token == self.token || self.installation_tokens.contains_key(token)
    }

    // ---- rate limit ----------------------------------------------------------------------

    fn roll_window(&mut self, now: u64) {
        if now >= self.rate.reset {
            self.rate.remaining = RATE_LIMIT;
            self.rate.reset = now + TOKEN_TTL_SECS;
        }
    }

    /// Counts one request against the core limit, or says the limit is exhausted.
    pub(crate) fn consume_rate_limit(&mut self, now: u64) -> RateDecision {
        self.roll_window(now);
        if self.rate.remaining == 0 {
            return RateDecision::Exhausted;
        }
        self.rate.remaining -= 1;
        RateDecision::Allowed
    }

    /// A `304 Not Modified` answer does not count against the limit.
    pub(crate) fn refund_rate_limit(&mut self) {
        if self.rate.remaining < RATE_LIMIT {
            self.rate.remaining += 1;
        }
    }

    pub(crate) fn set_rate_limit(&mut self, remaining: u32, reset: u64) {
        self.rate.remaining = remaining.min(RATE_LIMIT);
        self.rate.reset = reset;
    }

    pub(crate) fn rate_snapshot(&mut self, now: u64) -> RateSnapshot {
        self.roll_window(now);
        RateSnapshot {
            limit: RATE_LIMIT,
            remaining: self.rate.remaining,
            used: RATE_LIMIT - self.rate.remaining,
            reset: self.rate.reset,
        }
    }

    // ---- faults and latency --------------------------------------------------------------

    pub(crate) fn inject_faults(&mut self, fault: Fault, ratio: f64) {
        self.inject_fault_mix(vec![(fault, ratio)]);
    }

    pub(crate) fn inject_fault_mix(&mut self, faults: Vec<(Fault, f64)>) {
        // NaN and out-of-range ratios are clamped, and the total kept within 1, so the draw
        // below can never panic.
        let mut total = 0.0;
        self.ratio_faults = faults
            .into_iter()
            .map(|(fault, ratio)| {
                let ratio = if ratio.is_nan() {
                    0.0
                } else {
                    ratio.clamp(0.0, 1.0 - total)
                };
                total += ratio;
                (fault, ratio)
            })
            .collect();
    }

    pub(crate) fn fail_next(&mut self, fault: Fault, count: usize) {
        self.next_faults.extend(std::iter::repeat_n(fault, count));
    }

    pub(crate) fn clear_faults(&mut self) {
        self.ratio_faults.clear();
        self.next_faults.clear();
    }

    /// The fault this request suffers, if any: queued ones first, then the ratio draw.
    pub(crate) fn take_fault(&mut self) -> Option<Fault> {
        if let Some(f) = self.next_faults.pop_front() {
            return Some(f);
        }
        if self.ratio_faults.is_empty() {
            return None;
        }
        let draw: f64 = self.fault_rng.random();
        let mut cumulative = 0.0;
        for (fault, ratio) in &self.ratio_faults {
            cumulative += ratio;
            if draw < cumulative {
                return Some(fault.clone());
            }
        }
        None
    }

    // ---- request log ---------------------------------------------------------------------

    pub(crate) fn record(&mut self, record: RequestRecord) {
        self.requests.push(record);
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.requests.clone()
    }

    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
    }
}
