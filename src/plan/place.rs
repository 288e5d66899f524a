//! Placement: which of its hosts a new runner of a pool goes to. Runners that exist stay where
//! they are; a new runner goes to the listed host with the most free GPUs (a pool with
//! `gpus: N`), or, for other pools, to the one with the fewest runners of the pool; ties go to
//! the host listed first. Only observed hosts are candidates. Scaling down is decided with the
//! containers (`containers.rs`): idle runners leave the host with the most runners first.

use std::collections::{BTreeMap, BTreeSet};

use super::containers::{Fate, Placed};
use super::gpu::Ledger;
use super::model::Action;
use crate::observe::state::Observed;
use crate::spec::{GpuRequest, ResolvedPool, Spec};

/// Runners of each pool on each host after the plan, as new runners are placed.
pub(super) struct Placement {
    observed: BTreeSet<String>,
    runners: BTreeMap<(String, String), usize>,
}

impl Placement {
    /// Counts the runners that stay (kept, replaced in place, or replaced after their job).
    pub(super) fn new(observed: &Observed, placed: &[Placed]) -> Placement {
        let mut runners: BTreeMap<(String, String), usize> = BTreeMap::new();
        for p in placed {
            let stays = matches!(
                p.fate,
                Fate::Keep | Fate::Replace(..) | Fate::Defer(Action::Replace, ..)
            );
            if let (Some(pool), true) = (p.pool, stays) {
                *runners
                    .entry((pool.name.clone(), p.host.to_string()))
                    .or_default() += 1;
            }
        }
        Placement {
            observed: observed.hosts.keys().cloned().collect(),
            runners,
        }
    }

    fn runners(&self, pool: &ResolvedPool, host: &str) -> usize {
        self.runners
            .get(&(pool.name.clone(), host.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Records one more runner of `pool` on `host`.
    pub(super) fn count(&mut self, pool: &ResolvedPool, host: &str) {
        *self
            .runners
            .entry((pool.name.clone(), host.to_string()))
            .or_default() += 1;
    }

    /// The host for one new runner of `pool`, or `None` when it fits on none (the ledger then
    /// holds the problem, naming every host and what each has free).
    pub(super) fn choose(&self, pool: &ResolvedPool, ledger: &mut Ledger) -> Option<String> {
        let candidates: Vec<&str> = pool
            .hosts
            .iter()
            .map(String::as_str)
            .filter(|h| self.observed.contains(*h))
            .collect();
        let chosen = match (candidates.as_slice(), pool.gpus) {
            ([], _) => None,
            // One host: the ledger reports a shortage there as it always did.
            ([only], _) => Some(*only),
            (_, GpuRequest::Count(0)) => self.fewest_runners(pool, candidates.iter().copied()),
            (_, GpuRequest::Count(n)) => {
                let n = n as usize;
                let best = candidates
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| ledger.free_count(h) >= n)
                    .max_by_key(|(i, h)| (ledger.free_count(h), std::cmp::Reverse(*i)))
                    .map(|(_, h)| *h);
                // Short only because GPUs are held back by their health: a warning, not an
                // error (create_missing notes it).
                let health = || {
                    candidates
                        .iter()
                        .copied()
                        .find(|h| ledger.short_for_health(h, pool))
                };
                match best.or_else(health) {
                    Some(host) => Some(host),
                    None => {
                        ledger.unplaced(pool, n, &candidates);
                        None
                    }
                }
            }
            (_, GpuRequest::All) => {
                let with_gpus = candidates.iter().copied().filter(|h| ledger.has_gpus(h));
                // No host has GPUs: the first one's ledger says so.
                self.fewest_runners(pool, with_gpus)
                    .or(candidates.first().copied())
            }
        };
        chosen.map(str::to_string)
    }

    /// The observed hosts of `pool`.
    fn observed_hosts<'p>(&self, pool: &'p ResolvedPool) -> impl Iterator<Item = &'p str> {
        pool.hosts
            .iter()
            .map(String::as_str)
            .filter(|h| self.observed.contains(*h))
    }

    /// Whether one more runner of `pool` gets its GPUs on one of its observed hosts (an
    /// autoscaled pool stops where none has room, without a problem).
    pub(super) fn fits_somewhere(&self, pool: &ResolvedPool, ledger: &Ledger) -> bool {
        self.observed_hosts(pool).any(|h| ledger.can_place(h, pool))
    }

    /// How many more runners of `pool` its observed hosts' free GPUs could take (`None`: the
    /// pool holds no GPUs).
    pub(super) fn free_slots(&self, pool: &ResolvedPool, ledger: &Ledger) -> Option<u32> {
        self.observed_hosts(pool)
            .map(|h| ledger.free_slots(h, pool))
            .try_fold(0u32, |sum, slots| slots.map(|n| sum.saturating_add(n)))
    }

    /// The host with the fewest runners of `pool`; ties go to the one listed first.
    fn fewest_runners<'h>(
        &self,
        pool: &ResolvedPool,
        hosts: impl Iterator<Item = &'h str>,
    ) -> Option<&'h str> {
        hosts
            .enumerate()
            .min_by_key(|(i, h)| (self.runners(pool, h), *i))
            .map(|(_, h)| h)
    }
}

/// A pool with GPUs hands them over the same way on each of its hosts (its runners share one
/// configuration): hosts with different `gpu_mode`s cannot share such a pool.
pub(super) fn gpu_mode_problems(spec: &Spec, pools: &[ResolvedPool]) -> Vec<String> {
    let hosts = spec.effective_hosts();
    let mode = |h: &str| hosts.get(h).and_then(|h| h.gpu_mode).unwrap_or_default();
    pools
        .iter()
        .filter(|p| p.hosts.len() > 1 && p.gpus != GpuRequest::Count(0))
        .filter(|p| p.hosts.iter().any(|h| mode(h) != mode(&p.host)))
        .map(|pool| {
            let modes: Vec<String> = pool
                .hosts
                .iter()
                .map(|h| format!("`{h}`: {}", mode(h).as_str()))
                .collect();
            format!(
                "pool `{}` has GPUs and runs on hosts with different `gpu_mode`s ({}): give those hosts the same gpu_mode, or split the pool",
                pool.name,
                modes.join(", ")
            )
        })
        .collect()
}

/// One warning per host that was not observed.
pub(super) fn unobserved_warnings(observed: &Observed) -> Vec<String> {
    observed
        .unobserved
        .iter()
        .map(|host| {
            format!(
                "host `{host}` was not observed: fleet changes nothing there, and removes no GitHub registration that may belong to a runner there"
            )
        })
        .collect()
}

/// "host `a`" or "hosts `a`, `b`": the hosts that were not observed.
pub(super) fn unobserved_list(observed: &Observed) -> String {
    let names: Vec<String> = observed
        .unobserved
        .iter()
        .map(|h| format!("`{h}`"))
        .collect();
    match names.len() {
        1 => format!("host {}, which was not observed", names[0]),
        _ => format!("hosts {}, which were not observed", names.join(", ")),
    }
}
