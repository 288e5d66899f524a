//! The fate of each container fleet owns: kept, replaced, destroyed, or deferred until its
//! runner's job ends; and how many runners a pool still needs.

use std::collections::BTreeMap;

use super::model::{Action, AttributeChange, Reason};
use crate::contract::{RunnerConfig, labels};
use crate::observe::state::{ContainerState, ContainerStatus, GithubRunner};
use crate::spec::{GpuRequest, ResolvedPool};

/// Owned registrations by name.
pub(super) type Registrations<'a> = BTreeMap<&'a str, &'a GithubRunner>;

/// What becomes of an existing container.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fate {
    Keep,
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

/// What a pool's containers come to on one host.
pub(super) struct PoolOutcome<'a> {
    pub fates: Vec<(&'a ContainerState, Fate)>,
    /// Runners kept or replaced.
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

/// What a pool's containers should be: its configuration, its hash and its host's GPUs.
pub(super) struct Fit<'a> {
    pub pool: &'a ResolvedPool,
    pub desired: RunnerConfig,
    hash: String,
    inventory: &'a [String],
}

impl<'a> Fit<'a> {
    pub fn new(fleet: &str, pool: &'a ResolvedPool, inventory: &'a [String]) -> Fit<'a> {
        let desired = RunnerConfig::for_pool(fleet, pool);
        Fit {
            pool,
            hash: desired.hash(),
            desired,
            inventory,
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
                    host: self.pool.host.clone(),
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
}

/// Decides what happens to each container of one pool on its host, and how many to create.
/// Busy runners are kept first (their changes wait for their jobs), then healthy idle ones,
/// then the oldest; exited ones are replaced while the pool still wants runners.
pub(super) fn decide_pool<'a>(
    fleet: &str,
    pool: &ResolvedPool,
    containers: &[&'a ContainerState],
    runners: &Registrations,
    inventory: &[String],
    demand: Option<u32>,
) -> PoolOutcome<'a> {
    let fit = Fit::new(fleet, pool, inventory);
    let (busy, idle, finished) = sort_containers(containers, runners, &fit);
    let want = wanted(pool, busy.len() + idle.len(), demand) as usize;
    let total = containers.len() - finished.len();
    let over = || Reason::PoolOver {
        total,
        wanted: want,
    };
    let mut slots = want;
    let mut fates = Vec::new();
    for c in busy {
        let fate = match (slots > 0, fit.misfit(c)) {
            (false, _) => Fate::Defer(Action::Destroy, vec![over()], vec![]),
            (true, None) => Fate::Keep,
            (true, Some((reasons, diff))) => Fate::Defer(Action::Replace, reasons, diff),
        };
        slots = slots.saturating_sub(1);
        fates.push((c, fate));
    }
    for c in idle {
        let fate = match (slots > 0, fit.misfit(c)) {
            (false, _) => Fate::Destroy(vec![over()]),
            (true, None) => Fate::Keep,
            (true, Some((reasons, diff))) => Fate::Replace(reasons, diff),
        };
        slots = slots.saturating_sub(1);
        fates.push((c, fate));
    }
    for c in finished {
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
        fates.push((c, fate));
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

type Sorted<'a> = (
    Vec<&'a ContainerState>,
    Vec<&'a ContainerState>,
    Vec<&'a ContainerState>,
);

/// Busy (oldest first), idle (healthy first, then oldest) and finished (by name) containers.
fn sort_containers<'a>(
    containers: &[&'a ContainerState],
    runners: &Registrations,
    fit: &Fit,
) -> Sorted<'a> {
    let mut busy: Vec<&ContainerState> = Vec::new();
    let mut idle: Vec<&ContainerState> = Vec::new();
    let mut finished: Vec<&ContainerState> = Vec::new();
    for c in containers {
        // An ephemeral runner registers before its container exists: a container whose
        // registration is gone has done its job (or was removed on GitHub) and is leaving.
        let leaving = fit.pool.ephemeral && !runners.contains_key(c.name.as_str());
        if c.status.is_finished() || leaving {
            finished.push(c);
        } else if is_busy(c, runners) {
            busy.push(c);
        } else {
            idle.push(c);
        }
    }
    busy.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    idle.sort_by_cached_key(|c| (fit.misfit(c).is_some(), c.created, c.name.clone()));
    finished.sort_by(|a, b| a.name.cmp(&b.name));
    (busy, idle, finished)
}

/// The fate of an owned container whose pool left the spec or moved to another host.
pub(super) fn orphan_fate(
    c: &ContainerState,
    pools: &[ResolvedPool],
    runners: &Registrations,
) -> Fate {
    let pool = c.label(labels::POOL).unwrap_or_default();
    let reason = match pools.iter().find(|p| p.name == pool) {
        Some(p) => Reason::PoolMoved {
            pool: pool.to_string(),
            host: p.host.clone(),
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
