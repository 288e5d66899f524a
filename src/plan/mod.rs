//! The planner: `plan(&Spec, &Observed) -> Plan`. Pure: no I/O, no async, no clock, no
//! randomness. The same spec and the same observation always give the same plan.

mod desired;
mod gpu;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use desired::{RunnerConfig, full_hash, full_json_hash, ownership_label, short_hash};

use crate::observe::state::{ContainerState, ContainerStatus, GithubRunner, Observed, labels};
use crate::spec::{GpuRequest, ResolvedPool, Spec};

/// The version of the JSON plan format (DESIGN.md section 2).
pub const FORMAT_VERSION: &str = "1";

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    CreateVolume,
    Destroy,
    Replace,
    Create,
    Defer,
    Deregister,
    /// Only `fleet destroy --volumes` plans this.
    DestroyVolume,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateVolume => "create-volume",
            Action::Destroy => "destroy",
            Action::Replace => "replace",
            Action::Create => "create",
            Action::Defer => "defer",
            Action::Deregister => "deregister",
            Action::DestroyVolume => "destroy-volume",
        }
    }
}

/// One attribute that differs between a container and its pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeChange {
    pub attribute: String,
    /// `None` when the old container's configuration could not be read.
    pub before: Option<String>,
    pub after: String,
}

/// One change to one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub action: Action,
    pub pool: String,
    /// The Docker host; `github` for a registration with no container.
    pub host: String,
    /// The runner (= container) name, or the volume name for `create-volume`.
    pub name: String,
    pub reasons: Vec<String>,
    /// GPU UUIDs the new runner gets (create, replace), or holds (destroy, defer).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// For a replace: the new runner's name when it differs (ephemeral runners get a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// For a defer: what will happen once the runner's job is done (`replace` or `destroy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Action>,
    /// Attributes that changed (replace, defer of a replace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diff: Vec<AttributeChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<u64>,
}

impl Change {
    /// A change with no GPUs, replacement, diff or ids: the fields that apply are set after.
    pub fn new(
        action: Action,
        pool: impl Into<String>,
        host: impl Into<String>,
        name: impl Into<String>,
        reasons: Vec<String>,
    ) -> Change {
        Change {
            action,
            pool: pool.into(),
            host: host.into(),
            name: name.into(),
            reasons,
            gpus: vec![],
            replacement: None,
            deferred: None,
            diff: vec![],
            container_id: None,
            runner_id: None,
        }
    }
}

/// How many changes of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub replace: usize,
    pub destroy: usize,
    pub deregister: usize,
    pub volumes: usize,
    #[serde(default)]
    pub defer: usize,
    /// Volumes `fleet destroy --volumes` removes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub destroy_volumes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A plan: what `apply` would do, as data that can be printed, saved and applied later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: String,
    pub fleet: String,
    pub summary: Summary,
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
    /// SHA-256 of the spec the plan was made from.
    pub spec_hash: String,
    /// SHA-256 of everything observed; a saved plan is stale once this changes.
    pub observed_fingerprint: String,
}

impl Plan {
    /// No change to make (deferred changes wait on busy runners: they are not "nothing").
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Changes other than `defer`: what `apply` would do right now.
    pub fn actionable(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.action != Action::Defer)
    }
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct PlanError {
    pub problems: Vec<String>,
}

/// SHA-256 of a spec, as stored in a plan.
pub fn spec_hash(spec: &Spec) -> String {
    full_json_hash(spec)
}

/// SHA-256 of an observation, as stored in a plan.
pub fn observed_fingerprint(observed: &Observed) -> String {
    full_json_hash(observed)
}

/// What becomes of an existing container.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Keep,
    Replace(Vec<String>, Vec<AttributeChange>),
    Destroy(Vec<String>),
    /// Busy: `Replace` or `Destroy` after its job.
    Defer(Action, Vec<String>, Vec<AttributeChange>),
}

struct Placed<'a> {
    host: &'a str,
    pool: Option<&'a ResolvedPool>,
    container: &'a ContainerState,
    fate: Fate,
}

/// Computes the plan that makes `observed` equal to `spec`.
pub fn plan(spec: &Spec, observed: &Observed) -> Result<Plan, PlanError> {
    let fleet = spec.name.as_str();
    let pools = spec.resolved_pools();
    let fingerprint = observed_fingerprint(observed);
    let own_label = ownership_label(fleet);
    let prefix = format!("{fleet}-");

    // GitHub registrations fleet owns: its name prefix and its ownership label, both.
    let owned_runners: BTreeMap<&str, &GithubRunner> = observed
        .github
        .runners
        .iter()
        .filter(|r| r.name.starts_with(&prefix) && r.labels.contains(&own_label))
        .map(|r| (r.name.as_str(), r))
        .collect();

    let mut taken: BTreeSet<String> = observed
        .github
        .runners
        .iter()
        .map(|r| r.name.clone())
        .collect();
    for host in observed.hosts.values() {
        taken.extend(host.containers.iter().map(|c| c.name.clone()));
    }

    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    let mut changes = Vec::new();

    // 1. The fate of every owned container.
    let mut placed: Vec<Placed> = Vec::new();
    let mut creates: Vec<(&ResolvedPool, usize, usize)> = Vec::new(); // pool, to create, kept
    for (host_name, host) in &observed.hosts {
        let owned: Vec<&ContainerState> = host
            .containers
            .iter()
            .filter(|c| c.label(labels::FLEET) == Some(fleet))
            .collect();
        // Grouped once: a filter per pool would read every container's labels again per pool.
        let mut by_pool: BTreeMap<&str, Vec<&ContainerState>> = BTreeMap::new();
        for c in &owned {
            by_pool
                .entry(c.label(labels::POOL).unwrap_or_default())
                .or_default()
                .push(c);
        }
        for pool in pools.iter().filter(|p| &p.host == host_name) {
            let mine = by_pool
                .get(pool.name.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let (fates, kept, to_create) =
                decide_pool(fleet, pool, mine, &owned_runners, &host.gpus.uuids);
            for (container, fate) in fates {
                placed.push(Placed {
                    host: host_name,
                    pool: Some(pool),
                    container,
                    fate,
                });
            }
            creates.push((pool, to_create, kept));
        }
        // Owned containers of pools that left the spec, or moved to another host.
        for container in owned.iter().filter(|c| {
            let pool = c.label(labels::POOL).unwrap_or_default();
            !pools.iter().any(|p| p.name == pool && &p.host == host_name)
        }) {
            let pool = container.label(labels::POOL).unwrap_or_default();
            let reason = match pools.iter().find(|p| p.name == pool) {
                Some(p) => format!("pool `{pool}` now runs on host `{}`", p.host),
                None => format!("pool `{pool}` is no longer in the spec"),
            };
            let busy = is_busy(container, &owned_runners);
            let fate = if busy {
                Fate::Defer(
                    Action::Destroy,
                    vec![reason, "the runner is busy: removed after its job".into()],
                    vec![],
                )
            } else {
                Fate::Destroy(vec![reason])
            };
            placed.push(Placed {
                host: host_name,
                pool: None,
                container,
                fate,
            });
        }
    }

    resolve_gpu_conflicts(&mut placed, &owned_runners);

    // 2. GPUs for every new runner, host by host.
    let mut ledger = gpu::Ledger::new(observed, &placed_holdings(&placed));
    let mut name_seq = 0usize;
    let mut fresh_name = |pool: &ResolvedPool, taken: &mut BTreeSet<String>| -> String {
        let name = if pool.ephemeral {
            loop {
                name_seq += 1;
                let seed = format!("{fingerprint}/{}/{name_seq}", pool.name);
                let candidate = format!("{fleet}-{}-{}", pool.name, base36_suffix(&seed));
                if !taken.contains(&candidate) {
                    break candidate;
                }
            }
        } else {
            (0..)
                .map(|i| format!("{fleet}-{}-{i}", pool.name))
                .find(|n| !taken.contains(n))
                .unwrap_or_default()
        };
        taken.insert(name.clone());
        name
    };

    for p in &placed {
        let c = p.container;
        let runner_id = owned_runners.get(c.name.as_str()).map(|r| r.id);
        match &p.fate {
            Fate::Keep => {}
            Fate::Destroy(reasons) => changes.push(Change {
                gpus: c.gpus(),
                container_id: Some(c.id.clone()),
                runner_id,
                ..Change::new(
                    Action::Destroy,
                    pool_of(c),
                    p.host.to_string(),
                    c.name.clone(),
                    reasons.clone(),
                )
            }),
            Fate::Defer(what, reasons, diff) => changes.push(Change {
                gpus: c.gpus(),
                deferred: Some(*what),
                diff: diff.clone(),
                container_id: Some(c.id.clone()),
                runner_id,
                ..Change::new(
                    Action::Defer,
                    pool_of(c),
                    p.host.to_string(),
                    c.name.clone(),
                    reasons.clone(),
                )
            }),
            Fate::Replace(reasons, diff) => {
                let Some(pool) = p.pool else { continue };
                let replacement = if pool.ephemeral {
                    Some(fresh_name(pool, &mut taken))
                } else {
                    None
                };
                let gpus = match ledger.assign(p.host, pool, &c.gpus()) {
                    Ok(gpus) => gpus,
                    Err(problem) => {
                        problems.push(problem);
                        vec![]
                    }
                };
                changes.push(Change {
                    gpus,
                    replacement,
                    diff: diff.clone(),
                    container_id: Some(c.id.clone()),
                    runner_id,
                    ..Change::new(
                        Action::Replace,
                        pool.name.clone(),
                        p.host.to_string(),
                        c.name.clone(),
                        reasons.clone(),
                    )
                });
            }
        }
    }
    for (pool, to_create, kept) in &creates {
        for _ in 0..*to_create {
            let name = fresh_name(pool, &mut taken);
            let gpus = match ledger.assign(&pool.host, pool, &[]) {
                Ok(gpus) => gpus,
                Err(problem) => {
                    problems.push(problem);
                    vec![]
                }
            };
            changes.push(Change {
                gpus,
                ..Change::new(
                    Action::Create,
                    pool.name.clone(),
                    pool.host.clone(),
                    name,
                    vec![format!("pool has {kept} of {} runners", pool.count)],
                )
            });
        }
    }
    problems.extend(ledger.shortages());

    // 3. Named volumes the pools mount.
    let mut volumes_planned = BTreeSet::new();
    for pool in pools.iter().filter(|p| p.count > 0) {
        let Some(host) = observed.hosts.get(&pool.host) else {
            continue;
        };
        for volume in pool.volumes.iter().filter(|v| !v.is_bind()) {
            match host.volumes.iter().find(|v| v.name == volume.source) {
                Some(existing) if !existing.owned => warnings.push(format!(
                    "volume `{}` on host `{}` was not created by fleet; pool `{}` mounts it as it is",
                    volume.source, pool.host, pool.name
                )),
                Some(_) => {}
                None => {
                    if volumes_planned.insert((pool.host.clone(), volume.source.clone())) {
                        changes.push(Change::new(
Action::CreateVolume,
pool.name.clone(),
pool.host.clone(),
volume.source.clone(),
vec![format!("pool `{}` mounts it at {}", pool.name, volume.target)],
));
                    }
                }
            }
        }
    }

    // 4. Registrations with no container.
    let container_names: BTreeSet<&str> = observed
        .hosts
        .values()
        .flat_map(|h| h.containers.iter())
        .filter(|c| c.label(labels::FLEET) == Some(fleet))
        .map(|c| c.name.as_str())
        .collect();
    for runner in owned_runners.values() {
        if container_names.contains(runner.name.as_str()) {
            continue;
        }
        let pool = pool_from_name(fleet, &runner.name, &pools);
        if !runner.online && !runner.busy {
            changes.push(Change {
                runner_id: Some(runner.id),
                ..Change::new(
                    Action::Deregister,
                    pool,
                    "github",
                    runner.name.clone(),
                    vec!["registered on GitHub, offline, and no container runs it".into()],
                )
            });
        } else {
            warnings.push(format!(
                "runner `{}` (id {}) is registered and {} but no container of this fleet runs it on the hosts fleet watches; left alone",
                runner.name,
                runner.id,
                if runner.busy { "busy" } else { "online" }
            ));
        }
    }

    warnings.extend(pool_warnings(&pools, observed));
    // Organization scope: a pool's runner group must exist (GitHub always has `Default`).
    if !observed.github.groups.is_empty() {
        for pool in &pools {
            if let Some(group) = &pool.runner_group
                && !observed.github.groups.contains_key(group)
            {
                let known: Vec<&str> = observed.github.groups.keys().map(String::as_str).collect();
                problems.push(format!(
                    "pool `{}`: runner group `{group}` does not exist (the organization has: {})",
                    pool.name,
                    known.join(", ")
                ));
            }
        }
    }

    if !problems.is_empty() {
        problems.sort();
        problems.dedup();
        return Err(PlanError { problems });
    }

    Ok(Plan::new(
        fleet,
        changes,
        warnings,
        spec_hash(spec),
        fingerprint,
    ))
}

impl Plan {
    /// A plan of `changes`, sorted (registrations last) and counted.
    pub fn new(
        fleet: &str,
        mut changes: Vec<Change>,
        warnings: Vec<String>,
        spec_hash: String,
        observed_fingerprint: String,
    ) -> Plan {
        changes.sort_by(|a, b| {
            let key = |c: &Change| {
                (
                    matches!(c.action, Action::Deregister | Action::DestroyVolume),
                    c.action == Action::DestroyVolume,
                    c.host.clone(),
                    c.pool.clone(),
                    c.action,
                    c.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut summary = Summary::default();
        for change in &changes {
            match change.action {
                Action::Create => summary.create += 1,
                Action::Replace => summary.replace += 1,
                Action::Destroy => summary.destroy += 1,
                Action::Deregister => summary.deregister += 1,
                Action::CreateVolume => summary.volumes += 1,
                Action::Defer => summary.defer += 1,
                Action::DestroyVolume => summary.destroy_volumes += 1,
            }
        }
        Plan {
            format_version: FORMAT_VERSION.into(),
            fleet: fleet.into(),
            summary,
            changes,
            warnings,
            spec_hash,
            observed_fingerprint,
        }
    }
}

/// The plan of `fleet destroy`: every owned runner goes (busy ones after their job), orphan
/// registrations are removed, and with `volumes` every volume the fleet created too.
pub fn plan_destroy(spec: &Spec, observed: &Observed, volumes: bool) -> Result<Plan, PlanError> {
    let mut empty = spec.clone();
    for pool in empty.pools.values_mut() {
        pool.count = Some(0);
    }
    let base = plan(&empty, observed)?;
    let mut changes = base.changes;
    for change in &mut changes {
        match change.action {
            Action::Destroy => change.reasons = vec!["fleet destroy".into()],
            Action::Defer => {
                change.deferred = Some(Action::Destroy);
                change.diff.clear();
                change.reasons = vec![
                    "fleet destroy".into(),
                    "the runner is busy: removed after its job".into(),
                ];
            }
            _ => {}
        }
    }
    if volumes {
        for (host, state) in &observed.hosts {
            for volume in state.volumes.iter().filter(|v| v.owned) {
                changes.push(Change::new(
                    Action::DestroyVolume,
                    String::new(),
                    host.clone(),
                    volume.name.clone(),
                    vec!["fleet destroy --volumes".into()],
                ));
            }
        }
    }
    Ok(Plan::new(
        &spec.name,
        changes,
        base.warnings,
        spec_hash(spec),
        base.observed_fingerprint,
    ))
}

/// Two runners that stay must never hold the same GPU (a ledger edited by hand, or written by
/// another tool): the first keeps it (busy runners first, then the oldest), the other is
/// replaced, after its job if it is busy.
fn resolve_gpu_conflicts(placed: &mut [Placed], runners: &BTreeMap<&str, &GithubRunner>) {
    let mut order: Vec<usize> = (0..placed.len())
        .filter(|&i| {
            placed[i].fate == Fate::Keep
                && matches!(placed[i].pool.map(|p| p.gpus), Some(GpuRequest::Count(n)) if n > 0)
        })
        .collect();
    order.sort_by_key(|&i| {
        let c = placed[i].container;
        (!is_busy(c, runners), c.created, c.name.clone())
    });
    let mut holder: BTreeMap<(String, String), String> = BTreeMap::new();
    for i in order {
        let (host, c) = (placed[i].host.to_string(), placed[i].container);
        let mut conflict = None;
        for uuid in c.gpus() {
            if let Some(other) = holder.get(&(host.clone(), uuid.clone())) {
                conflict = Some(format!("GPU {uuid} is also held by runner `{other}`"));
                break;
            }
        }
        match conflict {
            None => {
                for uuid in c.gpus() {
                    holder.insert((host.clone(), uuid), c.name.clone());
                }
            }
            Some(reason) if is_busy(c, runners) => {
                placed[i].fate = Fate::Defer(
                    Action::Replace,
                    vec![reason, "the runner is busy: replaced after its job".into()],
                    vec![],
                );
            }
            Some(reason) => placed[i].fate = Fate::Replace(vec![reason], vec![]),
        }
    }
}

fn pool_of(c: &ContainerState) -> String {
    c.label(labels::POOL).unwrap_or_default().to_string()
}

fn is_busy(c: &ContainerState, runners: &BTreeMap<&str, &GithubRunner>) -> bool {
    !c.status.is_finished() && runners.get(c.name.as_str()).is_some_and(|r| r.busy)
}

/// GPUs held by containers that stay (kept or deferred), per host.
fn placed_holdings(placed: &[Placed]) -> Vec<(String, Vec<String>)> {
    placed
        .iter()
        .filter(|p| matches!(p.fate, Fate::Keep | Fate::Defer(..)))
        .filter(|p| {
            matches!(p.pool.map(|pool| pool.gpus), Some(GpuRequest::Count(n)) if n > 0)
                || p.pool.is_none()
        })
        .map(|p| (p.host.to_string(), p.container.gpus()))
        .collect()
}

/// Decides what happens to each container of one pool on its host, and how many to create.
/// Returns the fates, the number of runners kept, and the number to create.
fn decide_pool<'a>(
    fleet: &str,
    pool: &ResolvedPool,
    containers: &[&'a ContainerState],
    runners: &BTreeMap<&str, &GithubRunner>,
    inventory: &[String],
) -> (Vec<(&'a ContainerState, Fate)>, usize, usize) {
    let desired = RunnerConfig::for_pool(fleet, pool);
    let hash = desired.hash();
    let exclusive = matches!(pool.gpus, GpuRequest::Count(n) if n > 0);
    // Why a running container no longer fits its pool, if it does not.
    let misfit = |c: &ContainerState| -> Option<(Vec<String>, Vec<AttributeChange>)> {
        let mut reasons = Vec::new();
        let mut diff = Vec::new();
        if c.status == ContainerStatus::Created {
            // An apply stopped between creating and starting it.
            reasons.push("container was created but never started".to_string());
        }
        if c.label(labels::CONFIG_HASH) != Some(hash.as_str()) {
            diff = attribute_diff(c, &desired);
            let names: Vec<&str> = diff.iter().map(|d| d.attribute.as_str()).collect();
            reasons.push(if names.is_empty() {
                "configuration changed".to_string()
            } else {
                format!("configuration changed: {}", names.join(", "))
            });
        }
        if exclusive {
            let held = c.gpus();
            for gone in held.iter().filter(|u| !inventory.contains(u)) {
                reasons.push(format!(
                    "GPU {gone} is no longer in host `{}`'s inventory",
                    pool.host
                ));
            }
            if held.len() != pool_gpu_count(pool) && reasons.is_empty() {
                reasons.push(format!(
                    "holds {} GPUs, the pool gives {}",
                    held.len(),
                    pool_gpu_count(pool)
                ));
            }
        }
        (!reasons.is_empty()).then_some((reasons, diff))
    };

    let want = pool.count as usize;
    let mut slots = want;
    let mut fates = Vec::new();

    let mut busy: Vec<&ContainerState> = Vec::new();
    let mut idle: Vec<&ContainerState> = Vec::new();
    let mut finished: Vec<&ContainerState> = Vec::new();
    for c in containers {
        if c.status.is_finished() {
            finished.push(c);
        } else if is_busy(c, runners) {
            busy.push(c);
        } else {
            idle.push(c);
        }
    }
    let by_age =
        |a: &&ContainerState, b: &&ContainerState| (a.created, &a.name).cmp(&(b.created, &b.name));
    busy.sort_by(by_age);
    // Healthy idle runners are kept first, then the oldest.
    idle.sort_by(|a, b| {
        (misfit(a).is_some(), a.created, &a.name).cmp(&(misfit(b).is_some(), b.created, &b.name))
    });
    finished.sort_by(|a, b| a.name.cmp(&b.name));

    let total = containers.len() - finished.len();
    for c in busy {
        if slots > 0 {
            slots -= 1;
            match misfit(c) {
                None => fates.push((c, Fate::Keep)),
                Some((mut reasons, diff)) => {
                    reasons.push("the runner is busy: replaced after its job".into());
                    fates.push((c, Fate::Defer(Action::Replace, reasons, diff)));
                }
            }
        } else {
            fates.push((
                c,
                Fate::Defer(
                    Action::Destroy,
                    vec![
                        format!("pool has {total} runners, {want} wanted"),
                        "the runner is busy: removed after its job".into(),
                    ],
                    vec![],
                ),
            ));
        }
    }
    for c in idle {
        if slots > 0 {
            slots -= 1;
            match misfit(c) {
                None => fates.push((c, Fate::Keep)),
                Some((reasons, diff)) => fates.push((c, Fate::Replace(reasons, diff))),
            }
        } else {
            fates.push((
                c,
                Fate::Destroy(vec![format!("pool has {total} runners, {want} wanted")]),
            ));
        }
    }
    for c in finished {
        let exited = match c.exit_code {
            Some(code) => format!("container exited with code {code}"),
            None => "container is dead".to_string(),
        };
        if slots > 0 {
            slots -= 1;
            fates.push((c, Fate::Replace(vec![exited], vec![])));
        } else {
            fates.push((c, Fate::Destroy(vec![exited])));
        }
    }
    let kept = want - slots;
    // Creates start counting after the runners kept or replaced.
    (fates, kept, slots)
}

fn pool_gpu_count(pool: &ResolvedPool) -> usize {
    match pool.gpus {
        GpuRequest::Count(n) => n as usize,
        GpuRequest::All => 0,
    }
}

/// Attribute-level differences between a container's recorded configuration and the desired one.
fn attribute_diff(c: &ContainerState, desired: &RunnerConfig) -> Vec<AttributeChange> {
    let after = desired.attributes();
    match c.label(labels::CONFIG).and_then(RunnerConfig::from_label) {
        Some(old) => old
            .attributes()
            .into_iter()
            .zip(after)
            .filter(|((_, before), (_, after))| before != after)
            .map(|((name, before), (_, after))| AttributeChange {
                attribute: name.to_string(),
                before: Some(before),
                after,
            })
            .collect(),
        None => vec![],
    }
}

/// The pool a runner name belongs to: the longest pool name `p` with `<fleet>-<p>-` as prefix.
fn pool_from_name(fleet: &str, name: &str, pools: &[ResolvedPool]) -> String {
    pools
        .iter()
        .filter(|p| name.starts_with(&format!("{fleet}-{}-", p.name)))
        .max_by_key(|p| p.name.len())
        .map(|p| p.name.clone())
        .unwrap_or_default()
}

/// Six characters of [a-z0-9] derived from `seed`.
fn base36_suffix(seed: &str) -> String {
    const DIGITS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let hash = full_hash(seed.as_bytes());
    let mut n = u64::from_str_radix(&hash[..15], 16).unwrap_or(0);
    (0..6)
        .map(|_| {
            let d = DIGITS[(n % 36) as usize] as char;
            n /= 36;
            d
        })
        .collect()
}

fn pool_warnings(pools: &[ResolvedPool], observed: &Observed) -> Vec<String> {
    let mut warnings = Vec::new();
    for pool in pools {
        if pool.docker_socket {
            warnings.push(format!(
                "pool `{}` mounts /var/run/docker.sock: its jobs are root on host `{}`",
                pool.name, pool.host
            ));
        }
        if pool.gpus == GpuRequest::All && pool.count > 0 {
            warnings.push(format!(
                "pool `{}` uses `gpus: all`: its runners share every GPU of host `{}` with each other and with any other job",
                pool.name, pool.host
            ));
            if pools.iter().any(|other| {
                other.host == pool.host
                    && matches!(other.gpus, GpuRequest::Count(n) if n > 0)
                    && other.count > 0
            }) {
                warnings.push(format!(
                    "host `{}` mixes `gpus: all` (pool `{}`) with pools that hold GPUs exclusively: the shared runners see the exclusive runners' GPUs",
                    pool.host, pool.name
                ));
            }
        }
        let Some(host) = observed.hosts.get(&pool.host) else {
            continue;
        };
        let wants_gpus = pool.gpus != GpuRequest::Count(0) && pool.count > 0;
        if wants_gpus && !host.engine.nvidia_runtime && host.engine.cdi_devices.is_empty() {
            warnings.push(format!(
                "pool `{}` needs GPUs but the Docker engine on host `{}` shows no NVIDIA support (no `nvidia` runtime, no CDI devices): install nvidia-container-toolkit on the host, run `nvidia-ctk runtime configure --runtime=docker`, and restart Docker",
                pool.name, pool.host
            ));
        }
        if pool.pull == crate::spec::PullPolicy::Never
            && host.images.get(&pool.image) == Some(&false)
            && pool.count > 0
        {
            warnings.push(format!(
                "pool `{}`: image `{}` is not on host `{}` and `pull: never`: creating its runners will fail",
                pool.name, pool.image, pool.host
            ));
        }
    }
    warnings
}

#[cfg(test)]
pub(crate) mod tests;
