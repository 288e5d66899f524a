//! The fate of each container fleet owns: kept, replaced, destroyed, or deferred until its
//! runner's job ends; and how many runners a pool still needs.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Action, AttributeChange, Reason};
use crate::contract::{RunnerConfig, labels};
use crate::observe::state::{ContainerState, ContainerStatus, GithubRunner, HostState};
use crate::spec::{GpuRequest, ResolvedPool};

/// Owned registrations by name.
pub(super) type Registrations<'a> = BTreeMap<&'a str, &'a GithubRunner>;

/// What becomes of an existing container.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fate {
    Keep,
    /// An exited runner left as it is while its pool backs off (src/plan/crashloop.rs): not a
    /// runner, and it holds no GPU.
    Hold,
    Replace(Vec<Reason>, Vec<AttributeChange>),
    Destroy(Vec<Reason>),
    /// Busy: `Replace` or `Destroy` after its job.
    Defer(Action, Vec<Reason>, Vec<AttributeChange>),
}

/// A container with its host, its pool (when it still has one there) and its fate.
pub(super) struct Placed<'a> {
    pub host: &'a str,
    pub pool: Option<&'a ResolvedPool>,
    pub container: &'a ContainerState,
    pub fate: Fate,
}

/// A container of a pool on one of the pool's hosts.
pub(super) type OnHost<'a> = (&'a str, &'a ContainerState);

/// What a pool's containers come to, on all its observed hosts together.
pub(super) struct PoolOutcome<'a> {
    pub fates: Vec<(&'a str, &'a ContainerState, Fate)>,
    /// Runners kept or replaced (counting those that may run on unobserved hosts).
    pub kept: usize,
    /// Runners to create.
    pub missing: usize,
    /// Runners the pool wants.
    pub wanted: u32,
}

pub(super) fn is_busy(c: &ContainerState, runners: &Registrations) -> bool {
    !c.status.is_finished() && runners.get(c.name.as_str()).is_some_and(|r| r.busy)
}

pub(super) fn pool_gpu_count(pool: &ResolvedPool) -> usize {
    match pool.gpus {
        GpuRequest::Count(n) => n as usize,
        GpuRequest::All => 0,
    }
}

/// What a pool's containers on one host should be: its configuration, its hash and the host's
/// GPUs.
#[derive(Clone)]
pub(super) struct Fit<'a> {
    pub pool: &'a ResolvedPool,
    pub desired: RunnerConfig,
    hash: String,
    host: &'a str,
    inventory: &'a [String],
    /// GPUs NVML reports lost on this host (they are not in the inventory).
    gpus_lost: u32,
    /// GPUs of this host that runners must leave (unhealthy, disabled), with why.
    unfit: BTreeMap<String, String>,
    /// GPUs whose runner left something on them, first seen now, with what.
    leftovers: BTreeMap<String, String>,
}

impl<'a> Fit<'a> {
    pub fn new(
        fleet: &str,
        pool: &'a ResolvedPool,
        host: &'a str,
        inventory: &'a [String],
    ) -> Fit<'a> {
        let desired = RunnerConfig::for_pool(fleet, pool);
        Fit {
            pool,
            hash: desired.hash(),
            desired,
            host,
            inventory,
            gpus_lost: 0,
            unfit: BTreeMap::new(),
            leftovers: BTreeMap::new(),
        }
    }

    /// The same fit for another host of the pool.
    pub fn on(&self, host: &'a str, state: Option<&'a HostState>) -> Fit<'a> {
        Fit {
            host,
            inventory: state.map_or(&[][..], |s| s.gpus.uuids.as_slice()),
            gpus_lost: state.map_or(0, |s| s.gpus.lost),
            unfit: state.map(super::gpu::unfit_gpus).unwrap_or_default(),
            leftovers: state.map(super::gpu::leftover_gpus).unwrap_or_default(),
            ..self.clone()
        }
    }

    /// Why a container no longer fits its pool, if it does not.
    pub fn misfit(&self, c: &ContainerState) -> Option<(Vec<Reason>, Vec<AttributeChange>)> {
        let mut reasons = Vec::new();
        let mut diff = Vec::new();
        if c.status == ContainerStatus::Created {
            reasons.push(Reason::NeverStarted);
        }
        if c.label(labels::CONFIG_HASH) != Some(self.hash.as_str()) {
            diff = attribute_diff(c, &self.desired);
            reasons.push(Reason::ConfigChanged {
                attributes: diff.iter().map(|d| d.attribute.clone()).collect(),
            });
        }
        if matches!(self.pool.gpus, GpuRequest::Count(n) if n > 0) {
            let held = c.gpus();
            for gone in held.iter().filter(|u| !self.inventory.contains(u)) {
                reasons.push(Reason::GpuGone {
                    uuid: gone.clone(),
                    host: self.host.to_string(),
                    lost: self.gpus_lost > 0,
                });
            }
            for (uuid, why) in held.iter().filter_map(|u| self.unfit.get_key_value(u)) {
                reasons.push(Reason::GpuUnfit {
                    uuid: uuid.clone(),
                    host: self.host.to_string(),
                    why: why.clone(),
                });
            }
            let wanted = pool_gpu_count(self.pool);
            if held.len() != wanted && reasons.is_empty() {
                reasons.push(Reason::GpuCount {
                    held: held.len(),
                    wanted,
                });
            }
        }
        (!reasons.is_empty()).then_some((reasons, diff))
    }

    /// [`Fit::misfit`] for an idle runner, which also leaves a GPU that still holds what a
    /// job left when the runner is persistent: made again in place, it starts clean
    /// (docs/gpu-health.md).
    pub fn misfit_idle(&self, c: &ContainerState) -> Option<(Vec<Reason>, Vec<AttributeChange>)> {
        let (mut reasons, diff) = self.misfit(c).unwrap_or_default();
        if c.status == ContainerStatus::Running && !self.pool.ephemeral {
            for (uuid, what) in c
                .gpus()
                .iter()
                .filter_map(|u| self.leftovers.get_key_value(u))
            {
                reasons.push(Reason::GpuLeftovers {
                    uuid: uuid.clone(),
                    host: self.host.to_string(),
                    what: what.clone(),
                });
            }
        }
        (!reasons.is_empty()).then_some((reasons, diff))
    }
}

/// One fit per host the containers are on.
pub(super) fn fits<'a>(
    fleet: &str,
    pool: &'a ResolvedPool,
    containers: &[OnHost<'a>],
    hosts: &'a BTreeMap<String, HostState>,
) -> BTreeMap<&'a str, Fit<'a>> {
    let inventory = |h: &str| hosts.get(h).map_or(&[][..], |s| s.gpus.uuids.as_slice());
    let first = Fit::new(fleet, pool, &pool.host, inventory(&pool.host));
    let mut fits = BTreeMap::new();
    for (host, _) in containers {
        fits.entry(*host)
            .or_insert_with(|| first.on(host, hosts.get(*host)));
    }
    fits
}

/// Decides what happens to each container of an ephemeral pool on its observed hosts, and how
/// many runners to create. Busy runners are kept first (their changes wait for their jobs),
/// then healthy idle ones, then the oldest; exited ones are replaced (on their host) while the
/// pool still wants runners. When the pool has too many idle runners, they are removed from
/// the host with the most runners of the pool first (on a tie, the host listed last), the
/// drifted and then the newest of that host first. `unseen` runners may run on hosts that were
/// not observed: they count as kept and are not touched.
pub(super) fn decide_pool<'a>(
    pool: &ResolvedPool,
    fits: &BTreeMap<&'a str, Fit<'a>>,
    containers: &[OnHost<'a>],
    runners: &Registrations,
    unseen: usize,
    demand: Option<u32>,
) -> PoolOutcome<'a> {
    let (busy, idle, finished) = sort_containers(containers, runners, fits);
    let want = wanted(pool, busy.len() + idle.len() + unseen, demand) as usize;
    let total = containers.len() - finished.len() + unseen;
    let over = || Reason::PoolOver {
        total,
        wanted: want,
    };
    let mut slots = want.saturating_sub(unseen);
    let mut fates = Vec::new();
    for (host, c) in busy {
        let fate = match (slots > 0, fits[host].misfit(c)) {
            (false, _) => Fate::Defer(Action::Destroy, vec![over()], vec![]),
            (true, None) => Fate::Keep,
            (true, Some((reasons, diff))) => Fate::Defer(Action::Replace, reasons, diff),
        };
        slots = slots.saturating_sub(1);
        fates.push((host, c, fate));
    }
    let keep_idle = slots.min(idle.len());
    let removed = idle_to_remove(pool, containers, &idle, idle.len() - keep_idle);
    for (host, c) in idle {
        let fate = match (removed.contains(c.name.as_str()), fits[host].misfit_idle(c)) {
            (true, _) => Fate::Destroy(vec![over()]),
            (false, None) => Fate::Keep,
            (false, Some((reasons, diff))) => Fate::Replace(reasons, diff),
        };
        fates.push((host, c, fate));
    }
    slots -= keep_idle;
    for (host, c) in finished {
        let exited = if c.status.is_finished() {
            Reason::Exited { code: c.exit_code }
        } else {
            Reason::Unregistered
        };
        let fate = if slots > 0 {
            Fate::Replace(vec![exited], vec![])
        } else {
            Fate::Destroy(vec![exited])
        };
        slots = slots.saturating_sub(1);
        fates.push((host, c, fate));
    }
    PoolOutcome {
        fates,
        kept: want - slots,
        missing: slots,
        wanted: want as u32,
    }
}

/// How many runners a pool wants: its `count`; for an autoscaled pool `min(max, min_idle +
/// assigned jobs)` when `fleet watch` knows the demand, else its `current` runners kept between
/// `min_idle` and `max` (apply from cron neither follows nor undoes demand).
pub(super) fn wanted(pool: &ResolvedPool, current: usize, demand: Option<u32>) -> u32 {
    let Some(autoscale) = &pool.autoscale else {
        return pool.count;
    };
    match demand {
        Some(assigned) => autoscale
            .max
            .min(autoscale.min_idle.saturating_add(assigned)),
        None => u32::try_from(current)
            .unwrap_or(u32::MAX)
            .clamp(autoscale.min_idle, autoscale.max),
    }
}

/// The names of `count` idle containers to remove: one at a time from the host with the most
/// runners of the pool (busy and idle; on a tie, the host listed last), the last of that host's
/// idle containers in keeping order (drifted, then newest) first.
fn idle_to_remove<'a>(
    pool: &ResolvedPool,
    containers: &[OnHost<'a>],
    idle: &[OnHost<'a>],
    count: usize,
) -> BTreeSet<&'a str> {
    let mut runners: BTreeMap<&str, usize> = BTreeMap::new();
    for (host, c) in containers {
        if !c.status.is_finished() {
            *runners.entry(host).or_default() += 1;
        }
    }
    let mut candidates: BTreeMap<&str, Vec<&'a ContainerState>> = BTreeMap::new();
    for (host, c) in idle {
        candidates.entry(host).or_default().push(c);
    }
    let position = |h: &str| pool.hosts.iter().position(|p| p == h).unwrap_or(0);
    let mut removed = BTreeSet::new();
    for _ in 0..count {
        let chosen = candidates
            .iter()
            .filter(|(_, left)| !left.is_empty())
            .map(|(host, _)| *host)
            .max_by_key(|h| (runners.get(h).copied().unwrap_or(0), position(h)));
        let Some(host) = chosen else { break };
        if let Some(c) = candidates.get_mut(host).and_then(Vec::pop) {
            removed.insert(c.name.as_str());
        }
        if let Some(n) = runners.get_mut(host) {
            *n = n.saturating_sub(1);
        }
    }
    removed
}

type Sorted<'a> = (Vec<OnHost<'a>>, Vec<OnHost<'a>>, Vec<OnHost<'a>>);

/// Busy (oldest first), idle (healthy first, then oldest) and finished (by name) containers.
fn sort_containers<'a>(
    containers: &[OnHost<'a>],
    runners: &Registrations,
    fits: &BTreeMap<&'a str, Fit>,
) -> Sorted<'a> {
    let mut busy = Vec::new();
    let mut idle = Vec::new();
    let mut finished = Vec::new();
    for &(host, c) in containers {
        // An ephemeral runner registers before its container exists: a container whose
        // registration is gone has done its job (or was removed on GitHub) and is leaving.
        let leaving = fits[host].pool.ephemeral && !runners.contains_key(c.name.as_str());
        if c.status.is_finished() || leaving {
            finished.push((host, c));
        } else if is_busy(c, runners) {
            busy.push((host, c));
        } else {
            idle.push((host, c));
        }
    }
    busy.sort_by(|(_, a), (_, b)| (a.created, &a.name).cmp(&(b.created, &b.name)));
    idle.sort_by_cached_key(|(host, c)| {
        (fits[host].misfit(c).is_some(), c.created, c.name.clone())
    });
    finished.sort_by(|(_, a), (_, b)| a.name.cmp(&b.name));
    (busy, idle, finished)
}

/// The fate of an owned container whose pool left the spec or no longer lists its host.
pub(super) fn orphan_fate(
    c: &ContainerState,
    pools: &[ResolvedPool],
    runners: &Registrations,
) -> Fate {
    let pool = c.label(labels::POOL).unwrap_or_default();
    let reason = match pools.iter().find(|p| p.name == pool) {
        Some(p) => Reason::PoolMoved {
            pool: pool.to_string(),
            host: p.hosts.join("`, `"),
        },
        None => Reason::PoolRemoved {
            pool: pool.to_string(),
        },
    };
    if is_busy(c, runners) {
        Fate::Defer(Action::Destroy, vec![reason], vec![])
    } else {
        Fate::Destroy(vec![reason])
    }
}

/// Attribute-level differences between a container's recorded configuration and the desired one.
fn attribute_diff(c: &ContainerState, desired: &RunnerConfig) -> Vec<AttributeChange> {
    // A persistent runner's labels and group live on its registration (`persistent.rs`).
    let on_registration =
        |name: &str| !desired.ephemeral && matches!(name, "labels" | "runner_group");
    let after = desired.attributes();
    match c.label(labels::CONFIG).and_then(RunnerConfig::from_label) {
        Some(old) => old
            .attributes()
            .into_iter()
            .zip(after)
            .filter(|((name, before), (_, after))| before != after && !on_registration(name))
            .map(|((name, before), (_, after))| AttributeChange {
                attribute: name.to_string(),
                before: Some(before),
                after,
            })
            .collect(),
        None => vec![],
    }
}

/// Two runners that stay must never hold the same GPU (a ledger edited by hand, or written by
/// another tool): the first keeps it (busy runners first, then the oldest), the other is
/// replaced, after its job if it is busy.
pub(super) fn resolve_gpu_conflicts(placed: &mut [Placed], runners: &Registrations) {
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
        let conflict = c.gpus().into_iter().find_map(|uuid| {
            holder
                .get(&(host.clone(), uuid.clone()))
                .map(|other| Reason::GpuShared {
                    uuid,
                    other: other.clone(),
                })
        });
        match conflict {
            None => {
                for uuid in c.gpus() {
                    holder.insert((host.clone(), uuid), c.name.clone());
                }
            }
            Some(reason) if is_busy(c, runners) => {
                placed[i].fate = Fate::Defer(Action::Replace, vec![reason], vec![]);
            }
            Some(reason) => placed[i].fate = Fate::Replace(vec![reason], vec![]),
        }
    }
}

/// GPUs held by containers that stay (kept or deferred), per host.
pub(super) fn placed_holdings(placed: &[Placed]) -> Vec<(String, Vec<String>)> {
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
