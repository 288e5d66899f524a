//! GPU placement: each new runner of a `gpus: N` pool gets N distinct UUIDs that no other
//! exclusive runner holds; `gpus: all` shares everything and holds nothing.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use super::model::{Change, Reason, VolumeChange, VolumeOp};
use crate::contract::naming;
use crate::observe::state::{
    GpuHealth, GpuSource, HealthState, HostState, Observed, QuarantineRecord,
};
use crate::spec::{GpuRequest, ResolvedPool, Spec};

/// The observation with the GPUs the spec takes out of service (`hosts.NAME.gpus_disabled`)
/// marked `disabled`; borrowed as it is when the spec disables none.
pub(super) fn with_disabled<'o>(spec: &Spec, observed: &'o Observed) -> Cow<'o, Observed> {
    let hosts = spec.effective_hosts();
    let disabled: Vec<(&String, &Vec<String>)> = hosts
        .iter()
        .filter(|(name, h)| !h.gpus_disabled.is_empty() && observed.hosts.contains_key(*name))
        .map(|(name, h)| (name, &h.gpus_disabled))
        .collect();
    if disabled.is_empty() {
        return Cow::Borrowed(observed);
    }
    let mut adjusted = observed.clone();
    for (name, uuids) in disabled {
        let Some(state) = adjusted.hosts.get_mut(name) else {
            continue;
        };
        for uuid in uuids.iter().filter(|u| state.gpus.uuids.contains(u)) {
            // An unhealthy GPU stays so (its quarantine must not be lifted for it).
            if state
                .gpus
                .health
                .get(uuid)
                .is_some_and(|h| h.state == HealthState::Unhealthy)
            {
                continue;
            }
            state.gpus.health.insert(
                uuid.clone(),
                GpuHealth {
                    state: HealthState::Disabled,
                    reasons: vec![format!(
                        "taken out of service in hosts.{name}.gpus_disabled"
                    )],
                    application_xids: vec![],
                    ..GpuHealth::default()
                },
            );
        }
    }
    Cow::Owned(adjusted)
}

/// The longest reason a quarantine record keeps (a label of the host's volume).
const MAX_QUARANTINE_REASON: usize = 400;

/// Quarantine records to make (a GPU unhealthy without one) and to remove (a GPU whose fault a
/// reset clears reads fit again), on every observed host.
pub(super) fn quarantine_changes(fleet: &str, observed: &Observed) -> Vec<Change> {
    let mut changes = Vec::new();
    for (host, state) in &observed.hosts {
        for uuid in &state.gpus.uuids {
            let Some(health) = state.gpus.health.get(uuid) else {
                continue;
            };
            if health.state != HealthState::Unhealthy || health.quarantined {
                continue;
            }
            let why: String = health
                .reasons
                .join("; ")
                .chars()
                .take(MAX_QUARANTINE_REASON)
                .collect();
            changes.push(Change::Volume(VolumeChange {
                op: VolumeOp::Create,
                host: host.clone(),
                name: naming::gpu_quarantine_record(fleet, uuid),
                pool: None,
                reasons: vec![Reason::GpuQuarantine {
                    uuid: uuid.clone(),
                    why: why.clone(),
                }],
                quarantine: Some(QuarantineRecord {
                    uuid: uuid.clone(),
                    reason: why,
                    since: None,
                    until_reset: health.until_reset,
                    malformed: None,
                }),
            }));
        }
        for (volume, record) in state
            .volumes
            .iter()
            .filter(|v| v.owned)
            .filter_map(|v| v.quarantine.as_ref().map(|q| (v, q)))
            .filter(|(_, q)| q.until_reset && q.malformed.is_none())
        {
            let fit = state.gpus.health.get(&record.uuid).is_some_and(|h| {
                matches!(
                    h.state,
                    HealthState::Healthy | HealthState::Degraded | HealthState::Dirty
                )
            });
            if fit {
                changes.push(Change::Volume(VolumeChange {
                    op: VolumeOp::Destroy,
                    host: host.clone(),
                    name: volume.name.clone(),
                    pool: None,
                    reasons: vec![Reason::GpuResetDone {
                        uuid: record.uuid.clone(),
                    }],
                    quarantine: None,
                }));
            }
        }
    }
    changes
}

/// "unhealthy (critical Xid 79 ...)": a GPU's state with its reasons.
fn described(health: &GpuHealth) -> String {
    if health.reasons.is_empty() {
        health.state.as_str().to_string()
    } else {
        format!("{} ({})", health.state.as_str(), health.reasons.join("; "))
    }
}

/// The GPUs of a host that runners must leave, with why.
pub(super) fn unfit_gpus(state: &HostState) -> BTreeMap<String, String> {
    state
        .gpus
        .health
        .iter()
        .filter(|(_, h)| h.state.evicts())
        .map(|(uuid, h)| (uuid.clone(), described(h)))
        .collect()
}

/// GPUs a runner left something on (processes of its own container, memory), first seen in
/// this observation, with what: an idle runner there is made again in place. Seen again
/// later, the GPU is not touched twice; it is reported past the dirty grace instead.
pub(super) fn leftover_gpus(state: &HostState) -> BTreeMap<String, String> {
    state
        .gpus
        .health
        .iter()
        .filter(|(_, h)| h.leftovers_new && !h.leftovers.is_empty())
        .map(|(uuid, h)| (uuid.clone(), h.leftovers.join(" and ")))
        .collect()
}

/// One warning per GPU that gets no new runner (unhealthy, dirty, unknown, disabled) or that is
/// degraded, on the observed hosts.
pub(super) fn health_warnings(
    observed: &Observed,
    dirty_grace: std::time::Duration,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (host, state) in &observed.hosts {
        for uuid in &state.gpus.uuids {
            let Some(health) = state.gpus.health.get(uuid) else {
                continue;
            };
            if !health.application_xids.is_empty() {
                // The job's fault, recorded against the runner that held the GPU.
                let holder = state
                    .containers
                    .iter()
                    .find(|c| c.gpus().contains(uuid))
                    .map_or("no runner".to_string(), |c| format!("runner `{}`", c.name));
                let xids: Vec<String> =
                    health.application_xids.iter().map(u64::to_string).collect();
                warnings.push(format!(
                    "host `{host}`: application Xid {} on GPU {uuid}, held by {holder}: a fault of its job, not of the GPU",
                    xids.join(", ")
                ));
            }
            if let Some(seconds) =
                past_grace(health, dirty_grace).filter(|_| health.state != HealthState::Dirty)
            {
                warnings.push(format!(
                    "host `{host}`: GPU {uuid} has held {} for {seconds} s while its runner is idle, longer than gpu_health.dirty_grace ({} s), also after the runner was made again: something outside its container holds it",
                    health.leftovers.join(" and "),
                    dirty_grace.as_secs()
                ));
            }
            let consequence = match health.state {
                HealthState::Healthy => continue,
                HealthState::Degraded => "new runners may still get it",
                _ => "no new runner gets it",
            };
            warnings.push(format!(
                "host `{host}`: GPU {uuid} is {}: {consequence}",
                described(health)
            ));
            if let Some(seconds) = past_grace(health, dirty_grace) {
                warnings.push(format!(
                    "host `{host}`: GPU {uuid} has been dirty for {seconds} s, longer than gpu_health.dirty_grace ({} s): whoever holds it (named above) must end it; fleet never kills a process",
                    dirty_grace.as_secs()
                ));
            }
        }
    }
    warnings
}

/// How long a dirty GPU has been dirty, when that is as long as the grace or longer.
pub fn past_grace(health: &GpuHealth, dirty_grace: std::time::Duration) -> Option<u64> {
    let dirty = health.state == HealthState::Dirty || !health.leftovers.is_empty();
    health
        .dirty_seconds
        .filter(|s| dirty && *s >= dirty_grace.as_secs())
}

/// The pieces of the warning of a pool short because of GPU health, which
/// [`health_shortage`] reads back for `fleet watch`'s metrics.
const SHORT_POOL: &str = "pool `";
const SHORT_RUNNERS: &str = " runner(s) short on host `";
const SHORT_HOST: &str = "` because of GPU health: ";

/// The pool, host and number of runners of a warning that a pool runs short because of GPU
/// health (`fleet_pool_short_for_gpu_health`); `None` for any other warning.
pub fn health_shortage(warning: &str) -> Option<(&str, &str, u64)> {
    let rest = warning.strip_prefix(SHORT_POOL)?;
    let (pool, rest) = rest.split_once("` runs ")?;
    let (runners, rest) = rest.split_once(SHORT_RUNNERS)?;
    let (host, _) = rest.split_once(SHORT_HOST)?;
    Some((pool, host, runners.parse().ok()?))
}

#[derive(Default)]
struct Demand {
    per_runner: usize,
    runners: usize,
    placed: usize,
}

pub(super) struct Ledger {
    inventory: BTreeMap<String, Vec<String>>,
    source: BTreeMap<String, GpuSource>,
    held: BTreeMap<String, BTreeSet<String>>,
    /// Free GPUs per host before this plan placed anything.
    free_before: BTreeMap<String, usize>,
    demand: BTreeMap<(String, String), Demand>,
    /// Pools on several hosts whose new runners fit on none, by pool.
    unplaced: BTreeMap<String, Unplaced>,
    /// GPUs no new runner may get (their health, or the spec), per host, with why.
    held_back: BTreeMap<String, BTreeMap<String, String>>,
    /// New runners left out because GPUs are held back, per (host, pool).
    short: BTreeMap<(String, String), usize>,
    /// GPUs per runner of the pools in `short`.
    per_runner: BTreeMap<String, usize>,
}

/// New runners of a pool on several hosts that fit on none of them.
struct Unplaced {
    per_runner: usize,
    runners: usize,
    /// Each host with its free GPUs when the first runner was left out.
    free: Vec<(String, usize)>,
}

impl Ledger {
    /// `holdings`: (host, UUIDs) of the runners that stay.
    pub(super) fn new(observed: &Observed, holdings: &[(String, Vec<String>)]) -> Ledger {
        let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (host, uuids) in holdings {
            held.entry(host.clone())
                .or_default()
                .extend(uuids.iter().cloned());
        }
        let mut ledger = Ledger {
            inventory: observed
                .hosts
                .iter()
                .map(|(h, s)| (h.clone(), s.gpus.uuids.clone()))
                .collect(),
            source: observed
                .hosts
                .iter()
                .map(|(h, s)| (h.clone(), s.gpus.source.clone()))
                .collect(),
            held,
            free_before: BTreeMap::new(),
            demand: BTreeMap::new(),
            unplaced: BTreeMap::new(),
            held_back: observed
                .hosts
                .iter()
                .map(|(h, s)| {
                    let back = s
                        .gpus
                        .health
                        .iter()
                        .filter(|(_, health)| !health.state.placeable())
                        .map(|(uuid, health)| (uuid.clone(), described(health)))
                        .collect();
                    (h.clone(), back)
                })
                .collect(),
            short: BTreeMap::new(),
            per_runner: BTreeMap::new(),
        };
        ledger.free_before = observed
            .hosts
            .keys()
            .map(|h| (h.clone(), ledger.free(h).len()))
            .collect();
        ledger
    }

    /// Whether one more runner of `pool` would get its GPUs on `host` now.
    pub(super) fn can_place(&self, host: &str, pool: &ResolvedPool) -> bool {
        match pool.gpus {
            GpuRequest::Count(n) => self.free(host).len() >= n as usize,
            GpuRequest::All => self.inventory.get(host).is_some_and(|i| !i.is_empty()),
        }
    }

    /// How many more runners of `pool` the free GPUs of `host` could take (`None`: the pool
    /// holds no GPUs).
    pub(super) fn free_slots(&self, host: &str, pool: &ResolvedPool) -> Option<u32> {
        match pool.gpus {
            GpuRequest::Count(0) | GpuRequest::All => None,
            GpuRequest::Count(n) => u32::try_from(self.free(host).len() / n as usize).ok(),
        }
    }

    /// GPUs of `host` that no runner holds and that a new runner may get.
    fn free(&self, host: &str) -> Vec<String> {
        let held = self.held.get(host);
        let back = self.held_back.get(host);
        self.inventory
            .get(host)
            .map(|inv| {
                inv.iter()
                    .filter(|u| !held.is_some_and(|h| h.contains(*u)))
                    .filter(|u| !back.is_some_and(|b| b.contains_key(*u)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// GPUs of `host` held back by their health that no runner holds.
    fn held_back_free(&self, host: &str) -> usize {
        let held = self.held.get(host);
        self.held_back.get(host).map_or(0, |back| {
            back.keys()
                .filter(|u| !held.is_some_and(|h| h.contains(*u)))
                .count()
        })
    }

    /// Whether one more runner of `pool` on `host` does not fit only because GPUs are held
    /// back: the pool then runs short, with a warning, instead of failing the plan.
    pub(super) fn short_for_health(&self, host: &str, pool: &ResolvedPool) -> bool {
        match pool.gpus {
            GpuRequest::Count(n) if n > 0 => {
                let n = n as usize;
                let free = self.free_count(host);
                // GPUs held back that runners already left out would have taken.
                let counted: usize = self
                    .short
                    .iter()
                    .filter(|((h, _), _)| h == host)
                    .map(|((_, p), runners)| runners * self.per_runner(p))
                    .sum();
                free < n && free + self.held_back_free(host).saturating_sub(counted) >= n
            }
            _ => false,
        }
    }

    fn per_runner(&self, pool: &str) -> usize {
        self.per_runner.get(pool).copied().unwrap_or(0)
    }

    /// Records a runner of `pool` on `host` left out because GPUs are held back.
    pub(super) fn note_short(&mut self, host: &str, pool: &ResolvedPool) {
        if let GpuRequest::Count(n) = pool.gpus {
            self.per_runner.insert(pool.name.clone(), n as usize);
        }
        *self
            .short
            .entry((host.to_string(), pool.name.clone()))
            .or_default() += 1;
    }

    /// One warning per pool and host that runs short because GPUs are held back.
    pub(super) fn health_shortages(&self) -> Vec<String> {
        self.short
            .iter()
            .map(|((host, pool), runners)| {
                let back: Vec<String> = self
                    .held_back
                    .get(host)
                    .map(|b| b.iter().map(|(u, why)| format!("{u} is {why}")).collect())
                    .unwrap_or_default();
                format!(
                    "{SHORT_POOL}{pool}` runs {runners}{SHORT_RUNNERS}{host}{SHORT_HOST}{}",
                    back.join("; ")
                )
            })
            .collect()
    }

    /// How many GPUs of `host` no runner holds.
    pub(super) fn free_count(&self, host: &str) -> usize {
        self.free(host).len()
    }

    /// Whether `host` has any GPU in its inventory.
    pub(super) fn has_gpus(&self, host: &str) -> bool {
        self.inventory.get(host).is_some_and(|i| !i.is_empty())
    }

    /// Records a runner of `pool` (on several hosts) that none of `hosts` has `per_runner`
    /// free GPUs for.
    pub(super) fn unplaced(&mut self, pool: &ResolvedPool, per_runner: usize, hosts: &[&str]) {
        let free: Vec<(String, usize)> = hosts
            .iter()
            .map(|h| (h.to_string(), self.free_count(h)))
            .collect();
        self.unplaced
            .entry(pool.name.clone())
            .or_insert(Unplaced {
                per_runner,
                runners: 0,
                free,
            })
            .runners += 1;
    }

    /// GPUs for one new runner of `pool` on `host`; `previous` are the GPUs of the container it
    /// replaces, reused first so that assignments stay put. A shortage is recorded (see
    /// [`Ledger::shortages`]) and an `Err` returned only for `gpus: all` on a host without GPUs.
    pub(super) fn assign(
        &mut self,
        host: &str,
        pool: &ResolvedPool,
        previous: &[String],
    ) -> Result<Vec<String>, String> {
        match pool.gpus {
            GpuRequest::Count(0) => Ok(vec![]),
            GpuRequest::All => {
                let all = self.inventory.get(host).cloned().unwrap_or_default();
                if all.is_empty() {
                    Err(format!(
                        "host `{host}`: pool `{}` wants all GPUs, but the host has none{}",
                        pool.name,
                        self.inventory_note(host)
                    ))
                } else {
                    Ok(all)
                }
            }
            GpuRequest::Count(n) => {
                let n = n as usize;
                let free = self.free(host);
                let mut chosen: Vec<String> = previous
                    .iter()
                    .filter(|u| free.contains(u))
                    .take(n)
                    .cloned()
                    .collect();
                for uuid in &free {
                    if chosen.len() == n {
                        break;
                    }
                    if !chosen.contains(uuid) {
                        chosen.push(uuid.clone());
                    }
                }
                let demand = self
                    .demand
                    .entry((host.to_string(), pool.name.clone()))
                    .or_insert_with(|| Demand {
                        per_runner: n,
                        ..Demand::default()
                    });
                demand.runners += 1;
                if chosen.len() < n {
                    // Not placed: the plan fails; nothing is held for it.
                    return Ok(vec![]);
                }
                demand.placed += 1;
                self.held
                    .entry(host.to_string())
                    .or_default()
                    .extend(chosen.iter().cloned());
                Ok(chosen)
            }
        }
    }

    fn inventory_note(&self, host: &str) -> String {
        match self.source.get(host) {
            // The GPU probe's reasons say already where to declare them.
            Some(GpuSource::Unavailable(reason))
                if reason.contains(&format!("hosts.{host}.gpus")) =>
            {
                format!(" (GPU inventory unavailable: {reason})")
            }
            Some(GpuSource::Unavailable(reason)) => format!(
                " (GPU inventory unavailable: {reason}; declare the UUIDs in hosts.{host}.gpus)"
            ),
            Some(GpuSource::None) => " (declared `gpus: none`)".into(),
            _ => match self.held_back.get(host).filter(|b| !b.is_empty()) {
                Some(back) => format!(
                    " ({} GPU(s) held back: {})",
                    back.len(),
                    back.iter()
                        .map(|(u, why)| format!("{u} is {why}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                None => String::new(),
            },
        }
    }

    /// One message per pool whose new runners did not all get their GPUs.
    pub(super) fn shortages(&self) -> Vec<String> {
        let unplaced = self.unplaced.iter().map(|(pool, u)| {
            let (per_runner, runners) = (u.per_runner, u.runners);
            let hosts: Vec<String> = u
                .free
                .iter()
                .map(|(host, free)| {
                    let inventory = self.inventory.get(host).map_or(0, Vec::len);
                    format!(
                        "host `{host}` has {free} of {inventory} free{}",
                        self.inventory_note(host)
                    )
                })
                .collect();
            format!(
                "pool `{pool}` wants {per_runner} GPU(s) per runner for {runners} more new runner(s), and a runner's GPUs come from one host: after the plan's other new runners, {}",
                hosts.join(", ")
            )
        });
        let by_host = self
            .demand
            .iter()
            .filter(|(_, d)| d.placed < d.runners)
            .map(|((host, pool), d)| {
                let inventory = self.inventory.get(host).map_or(0, Vec::len);
                let free = self.free_before.get(host).copied().unwrap_or(0);
                let others: usize = self
                    .demand
                    .iter()
                    .filter(|((h, p), _)| h == host && p != pool)
                    .map(|(_, o)| o.per_runner * o.runners)
                    .sum();
                let others = if others > 0 {
                    format!(", and other pools' new runners want {others}")
                } else {
                    String::new()
                };
                format!(
                    "host `{host}`: pool `{pool}` wants {} GPU(s) for {} new runner(s) ({} per runner); {free} of {inventory} are free{others}{}",
                    d.per_runner * d.runners,
                    d.runners,
                    d.per_runner,
                    self.inventory_note(host)
                )
            });
        unplaced.chain(by_host).collect()
    }
}
