//! The planner: `plan(&Spec, &Observed) -> Plan`. Pure: no I/O, no async, no clock, no
//! randomness. The same spec and the same observation always give the same plan.
//!
//! It runs in phases (docs/architecture.md): the fate of every container fleet owns
//! (`containers.rs`), GPU conflicts between runners that stay, new runners with their names,
//! hosts (`place.rs`) and GPUs (`gpu.rs` keeps the ledger), the volumes pools mount,
//! registrations without a container, then warnings. A pool may list several hosts; hosts that
//! were not observed (`Observed::unobserved`) are left alone, with what may live on them.

mod containers;
mod crashloop;
mod document;
mod gpu;
pub use gpu::{health_shortage, past_grace};
mod model;
mod persistent;
mod place;
mod scaleset;
mod split;
mod warnings;

use std::collections::{BTreeMap, BTreeSet};

pub use crashloop::{
    PoolBackoff, PoolStartFailures, START_FAILURES_BEFORE_BACKOFF, start_failures,
};
pub use document::{
    ChangeDocument, FORMAT_VERSION, PlanDocument, REGISTRATION_HOST, SavedPlanError, check_saved,
    read_saved,
};
pub use model::{
    Action, AttributeChange, AutoscalePool, Change, Deferral, Plan, Reason, RegistrationChange,
    RegistrationOp, RunnerChange, RunnerOp, ScaleSetChange, ScaleSetOp, Summary, VolumeChange,
    VolumeOp, Waiting,
};
pub use scaleset::scale_set_labels;

use crate::contract::hash::full_json_hash;
use crate::contract::{self, labels, naming};
use crate::observe::state::{ContainerState, GithubRunner, Observed};
use crate::spec::{ResolvedPool, Spec};
use containers::{Fate, OnHost, Placed, Registrations};

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

/// Computes the plan that makes `observed` equal to `spec`.
pub fn plan(spec: &Spec, observed: &Observed) -> Result<Plan, PlanError> {
    let pools = spec.resolved_pools();
    let fingerprint = observed_fingerprint(observed);
    // GPUs the spec disables are planned as a GPU health state; the fingerprint stays the
    // world's.
    let adjusted = gpu::with_disabled(spec, observed);
    let observed: &Observed = &adjusted;
    let mut planner = Planner::new(spec, &pools, observed, fingerprint);
    planner
        .problems
        .extend(place::gpu_mode_problems(spec, &pools));
    let mut placed = planner.place_containers();
    containers::resolve_gpu_conflicts(&mut placed, &planner.registrations);
    let mut ledger = gpu::Ledger::new(observed, &containers::placed_holdings(&placed));
    planner.apply_fates(&placed, &mut ledger);
    let mut placement = place::Placement::new(observed, &placed);
    planner.create_missing(&mut ledger, &mut placement);
    planner.problems.extend(ledger.shortages());
    planner.warnings.extend(gpu::health_warnings(
        observed,
        spec.gpu_health_settings().dirty_grace,
    ));
    planner
        .changes
        .extend(gpu::quarantine_changes(&spec.name, observed));
    planner.warnings.extend(ledger.health_shortages());
    planner.plan_volumes();
    planner.plan_registrations();
    planner.plan_state_volumes();
    let scale_sets = scaleset::plan_scale_sets(spec, &pools, observed);
    planner.changes.extend(scale_sets.changes);
    planner.problems.extend(scale_sets.problems);
    planner.warnings.extend(scale_sets.warnings);
    planner
        .warnings
        .extend(place::unobserved_warnings(observed));
    planner
        .warnings
        .extend(warnings::pool_warnings(&pools, observed));
    planner
        .problems
        .extend(warnings::runner_group_problems(&pools, observed));
    planner.finish()
}

/// The state of one planning: its inputs, the names taken so far, and what it decided.
struct Planner<'a> {
    spec: &'a Spec,
    pools: &'a [ResolvedPool],
    observed: &'a Observed,
    fingerprint: String,
    /// GitHub registrations fleet owns, by name.
    registrations: Registrations<'a>,
    /// Every name a new runner may not take: registrations and containers.
    taken: BTreeSet<String>,
    /// Counter of ephemeral names handed out (part of each name's seed).
    name_seq: usize,
    /// Per pool: what it lacks (filled by `place_containers`).
    missing: Vec<Missing<'a>>,
    /// Autoscaled pools as this plan leaves them.
    autoscale: Vec<AutoscalePool>,
    /// Owned containers on the observed hosts, by name.
    running: BTreeSet<&'a str>,
    /// Persistent runners the pools want whose containers are missing.
    recreate: Vec<(&'a ResolvedPool, persistent::Recreate)>,
    /// Persistent runners the pools decided about: not orphans.
    handled: BTreeSet<String>,
    changes: Vec<Change>,
    deferred: Vec<Deferral>,
    warnings: Vec<String>,
    problems: Vec<String>,
    /// Per ephemeral pool: its runners in a row that exited without taking a job, written on
    /// the runners it makes (src/plan/crashloop.rs).
    start_failures: BTreeMap<String, u32>,
    /// Pools that make no runner now, after runners that could not start.
    backoff: Vec<PoolBackoff>,
}

impl<'a> Planner<'a> {
    fn new(
        spec: &'a Spec,
        pools: &'a [ResolvedPool],
        observed: &'a Observed,
        fingerprint: String,
    ) -> Planner<'a> {
        let fleet = spec.name.as_str();
        let recorded = observed.recorded_scale_sets();
        let registrations = observed
            .github
            .runners
            .iter()
            .filter(|r| contract::registration_owned_with(r, fleet, &recorded))
            .map(|r| (r.name.as_str(), r))
            .collect();
        let mut taken: BTreeSet<String> = observed
            .github
            .runners
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let mut running = BTreeSet::new();
        for host in observed.hosts.values() {
            taken.extend(host.containers.iter().map(|c| c.name.clone()));
            taken.extend(host.volumes.iter().filter_map(|v| v.runner.clone()));
            running.extend(
                host.containers
                    .iter()
                    .filter(|c| contract::container_owned(c, fleet))
                    .map(|c| c.name.as_str()),
            );
        }
        Planner {
            spec,
            pools,
            observed,
            fingerprint,
            registrations,
            taken,
            name_seq: 0,
            missing: Vec::new(),
            autoscale: Vec::new(),
            running,
            recreate: Vec::new(),
            handled: BTreeSet::new(),
            changes: Vec::new(),
            deferred: Vec::new(),
            warnings: Vec::new(),
            problems: Vec::new(),
            start_failures: BTreeMap::new(),
            backoff: Vec::new(),
        }
    }

    fn fleet(&self) -> &'a str {
        self.spec.name.as_str()
    }

    /// Phase 1: the fate of every owned container, pool by pool across the pool's observed
    /// hosts, and what each pool lacks. Containers come out host by host (pools, then orphans),
    /// as a single host's always did.
    fn place_containers(&mut self) -> Vec<Placed<'a>> {
        let fleet = self.fleet();
        let observed = self.observed;
        let mut by_pool: BTreeMap<&str, Vec<OnHost<'a>>> = BTreeMap::new();
        let mut placed = Vec::new();
        for (host_name, host) in &observed.hosts {
            let owned: Vec<&ContainerState> = host
                .containers
                .iter()
                .filter(|c| contract::container_owned(c, fleet))
                .collect();
            for c in &owned {
                let pool = c.label(labels::POOL).unwrap_or_default();
                if self.pool_lists(pool, host_name) {
                    by_pool.entry(pool).or_default().push((host_name, c));
                }
            }
            placed.extend(self.orphans(host_name, &owned));
        }
        for pool in self.pools {
            if !pool.hosts.iter().any(|h| observed.hosts.contains_key(h)) {
                continue; // every host of the pool is unobserved: nothing to decide
            }
            let mine = by_pool.remove(pool.name.as_str()).unwrap_or_default();
            let fates = if self.frozen(&pool.name) {
                // The scale set service cannot be read: its runners stay as they are.
                mine.iter().map(|(h, c)| (*h, *c, Fate::Keep)).collect()
            } else if pool.ephemeral {
                self.decide_ephemeral(pool, &mine)
            } else {
                self.decide_persistent(pool, &mine)
            };
            placed.extend(fates.into_iter().map(|(host, container, fate)| Placed {
                host,
                pool: Some(pool),
                container,
                fate,
            }));
        }
        // Host by host, a pool's containers before the orphans (stable: the pools' order).
        placed.sort_by_key(|p| (p.host, p.pool.is_none()));
        placed
    }

    /// Whether pool `pool` autoscales while the scale set service cannot be read: its scale
    /// set, runners and registrations are left as they are (no create, no delete).
    fn frozen(&self, pool: &str) -> bool {
        self.observed.github.scale_set_error.is_some()
            && self
                .pools
                .iter()
                .any(|p| p.name == pool && p.autoscale.is_some())
    }

    /// Whether the spec's pool `pool` lists `host`.
    fn pool_lists(&self, pool: &str, host: &str) -> bool {
        self.pools
            .iter()
            .any(|p| p.name == pool && p.hosts.iter().any(|h| h == host))
    }

    fn decide_ephemeral(
        &mut self,
        pool: &'a ResolvedPool,
        containers: &[OnHost<'a>],
    ) -> Vec<(&'a str, &'a ContainerState, Fate)> {
        let fits = containers::fits(self.fleet(), pool, containers, &self.observed.hosts);
        let unseen = self.unseen_runners(pool);
        let demand = self.observed.demand.get(&pool.name).map(|d| d.assigned);
        let mut outcome =
            containers::decide_pool(pool, &fits, containers, &self.registrations, unseen, demand);
        if let Some(backoff) = self.start_failure_backoff(pool, containers) {
            // No new runner, and so no registration, until the delay has passed: the exited
            // runners stay as they are (the record of the run, and their logs).
            for (_, c, fate) in &mut outcome.fates {
                if c.status.is_finished() && matches!(fate, Fate::Replace(..)) {
                    *fate = Fate::Hold;
                }
            }
            outcome.missing = 0;
            self.backoff.push(backoff);
        }
        self.missing.push(Missing {
            pool,
            kept: outcome.kept,
            count: outcome.missing,
            wanted: outcome.wanted,
        });
        outcome.fates
    }

    /// The run of start failures the runners `pool` makes carry.
    fn start_failures_of(&self, pool: &ResolvedPool) -> u32 {
        self.start_failures.get(&pool.name).copied().unwrap_or(0)
    }

    /// Records the run of start failures of an ephemeral pool's runners of its current
    /// configuration, and says whether the pool backs off now (src/plan/crashloop.rs).
    fn start_failure_backoff(
        &mut self,
        pool: &ResolvedPool,
        containers: &[OnHost<'a>],
    ) -> Option<PoolBackoff> {
        let hash = contract::RunnerConfig::for_pool(self.fleet(), pool).hash();
        let current: Vec<(&ContainerState, bool)> = containers
            .iter()
            .filter(|(_, c)| c.label(labels::CONFIG_HASH) == Some(hash.as_str()))
            .map(|(_, c)| (*c, containers::is_busy(c, &self.registrations)))
            .collect();
        let run = crashloop::run_of(&current);
        self.start_failures.insert(pool.name.clone(), run.failures);
        crashloop::backoff(&pool.name, &run, self.observed.now)
    }

    /// Registrations of an ephemeral pool that no container on an observed host runs, while
    /// the pool lists a host that was not observed: they may be that host's runners, so they
    /// count towards the pool (and are not removed: phase 5).
    fn unseen_runners(&self, pool: &ResolvedPool) -> usize {
        let unobserved = &self.observed.unobserved;
        if !pool.hosts.iter().any(|h| unobserved.contains(h)) {
            return 0;
        }
        let fleet = self.fleet();
        let names: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        self.registrations
            .iter()
            .filter(|(name, runner)| !self.running.contains(*name) && !self.lost_here(runner))
            .map(|(name, _)| name)
            .filter(|name| {
                naming::pool_from_name(fleet, name, names.iter().copied()) == Some(&pool.name)
            })
            .count()
    }

    /// Whether a registration that no container runs was made on a host that was observed
    /// (its host mark says so): its runner is lost there, and may not be on an unobserved
    /// host. A registration without the mark may be anywhere.
    fn lost_here(&self, runner: &GithubRunner) -> bool {
        contract::registration_host(runner, self.fleet())
            .is_some_and(|host| self.observed.hosts.contains_key(host))
    }

    fn decide_persistent(
        &mut self,
        pool: &'a ResolvedPool,
        containers: &[OnHost<'a>],
    ) -> Vec<(&'a str, &'a ContainerState, Fate)> {
        let observed = self.observed;
        let inputs = persistent::Inputs {
            fleet: self.fleet(),
            registrations: &self.registrations,
            hosts: &observed.hosts,
            groups: &observed.github.groups,
            partial: !observed.unobserved.is_empty(),
            running: &self.running,
        };
        let outcome = persistent::decide(pool, containers, &inputs);
        self.missing.push(Missing {
            pool,
            kept: outcome.kept,
            count: outcome.missing,
            wanted: pool.count,
        });
        self.recreate
            .extend(outcome.recreate.into_iter().map(|r| (pool, r)));
        self.changes.extend(outcome.changes);
        self.warnings.extend(outcome.warnings);
        self.handled.extend(outcome.handled);
        outcome.fates
    }

    /// Owned containers of pools that left the spec, or that no longer list their host.
    fn orphans(&self, host: &'a str, owned: &[&'a ContainerState]) -> Vec<Placed<'a>> {
        owned
            .iter()
            .filter(|c| !self.pool_lists(c.label(labels::POOL).unwrap_or_default(), host))
            .map(|container| Placed {
                host,
                pool: None,
                container,
                fate: containers::orphan_fate(container, self.pools, &self.registrations),
            })
            .collect()
    }

    /// A name for a new runner of `pool`: a fresh suffix for an ephemeral runner (derived from
    /// the observation, so the same inputs give the same names), the lowest free index for a
    /// persistent one.
    fn fresh_name(&mut self, pool: &ResolvedPool) -> String {
        let fleet = self.fleet();
        let name = if pool.ephemeral {
            loop {
                self.name_seq += 1;
                let seed = format!("{}/{}/{}", self.fingerprint, pool.name, self.name_seq);
                let candidate = naming::runner_name(fleet, &pool.name, &naming::suffix(&seed));
                if !self.taken.contains(&candidate) {
                    break candidate;
                }
            }
        } else {
            (0..)
                .map(|i| naming::persistent_name(fleet, &pool.name, i))
                .find(|n| !self.taken.contains(n))
                .unwrap_or_default()
        };
        self.taken.insert(name.clone());
        name
    }

    /// Phase 2: a change for every container that does not stay as it is.
    fn apply_fates(&mut self, placed: &[Placed<'a>], ledger: &mut gpu::Ledger) {
        for p in placed {
            let runner_id = self
                .registrations
                .get(p.container.name.as_str())
                .map(|r| r.id);
            match &p.fate {
                Fate::Keep | Fate::Hold => {}
                Fate::Destroy(reasons) => {
                    let mut change = existing(p, RunnerOp::Destroy, reasons, runner_id);
                    change.state_volume = self.state_volume_of(p.host, &p.container.name);
                    change.registration_kept = self.wanted_elsewhere(p);
                    self.changes.push(Change::Runner(change));
                }
                Fate::Defer(then, reasons, diff) => {
                    let op = match then {
                        Action::Destroy => RunnerOp::Destroy,
                        _ => RunnerOp::Replace {
                            replacement: None,
                            diff: diff.clone(),
                        },
                    };
                    let mut change = existing(p, op, reasons, runner_id);
                    change.state_volume = self.state_volume_of(p.host, &p.container.name);
                    change.registration_kept = self.wanted_elsewhere(p);
                    self.deferred.push(Deferral { change });
                }
                Fate::Replace(reasons, diff)
                    if p.pool.is_some_and(|pool| {
                        pool.ephemeral && ledger.short_for_health(p.host, pool)
                    }) =>
                {
                    // No healthy GPU to move an ephemeral runner to: it leaves, and its pool
                    // runs short (with a warning) until a GPU comes back. (A persistent
                    // runner keeps its registration: its replacement waits, as for a lost GPU.)
                    if let Some(pool) = p.pool {
                        ledger.note_short(p.host, pool);
                    }
                    self.changes.push(Change::Runner(existing(
                        p,
                        RunnerOp::Destroy,
                        reasons,
                        runner_id,
                    )));
                }
                Fate::Replace(reasons, diff) => {
                    let Some(pool) = p.pool else { continue };
                    let replacement = pool.ephemeral.then(|| self.fresh_name(pool));
                    let op = RunnerOp::Replace {
                        replacement,
                        diff: diff.clone(),
                    };
                    let mut change = existing(p, op, reasons, runner_id);
                    change.pool = pool.name.clone();
                    change.gpus = self.assign_gpus(ledger, p.host, pool, &p.container.gpus());
                    change.state_volume =
                        (!pool.ephemeral).then(|| naming::state_volume(&p.container.name));
                    change.start_failures = self.start_failures_of(pool);
                    self.changes.push(Change::Runner(change));
                }
            }
        }
    }

    /// A persistent runner on a host its pool no longer lists, whose index the pool still
    /// wants: it goes from this host, but keeps its registration for the runner made again
    /// under its name on the pool's host.
    fn wanted_elsewhere(&self, p: &Placed) -> bool {
        let name = p.container.name.as_str();
        p.pool.is_none()
            && p.container.label(labels::POOL).is_some_and(|label| {
                self.pools.iter().any(|pool| {
                    pool.name == label
                        && !pool.ephemeral
                        && naming::persistent_index(self.fleet(), &pool.name, name)
                            .is_some_and(|n| n < pool.count as usize)
                })
            })
    }

    /// Whether `host` has a volume under runner `name`'s state volume name that fleet did not
    /// make.
    fn foreign_state_volume(&self, host: &str, name: &str) -> bool {
        let state = naming::state_volume(name);
        self.observed
            .hosts
            .get(host)
            .is_some_and(|h| h.volumes.iter().any(|v| !v.owned && v.name == state))
    }

    /// The state volume fleet made for runner `runner` on `host`, if there is one.
    fn state_volume_of(&self, host: &str, runner: &str) -> Option<String> {
        let volumes = self
            .observed
            .hosts
            .get(host)
            .map_or(&[][..], |h| &h.volumes);
        volumes
            .iter()
            .find(|v| v.owned && v.runner.as_deref() == Some(runner))
            .map(|v| v.name.clone())
    }

    fn assign_gpus(
        &mut self,
        ledger: &mut gpu::Ledger,
        host: &str,
        pool: &ResolvedPool,
        previous: &[String],
    ) -> Vec<String> {
        ledger
            .assign(host, pool, previous)
            .unwrap_or_else(|problem| {
                self.problems.push(problem);
                vec![]
            })
    }

    /// Phase 3: persistent runners made again under their names (on the host of their state
    /// volume), and new runners for what each pool lacks, each on the host placement picks.
    fn create_missing(&mut self, ledger: &mut gpu::Ledger, placement: &mut place::Placement) {
        let mut recreate = std::mem::take(&mut self.recreate);
        recreate.sort_by_key(|(pool, _)| pool.host.as_str()); // host by host, as before
        for (pool, recreate) in recreate {
            let host = match recreate.host {
                Some(host) => Some(host),
                None => placement.choose(pool, ledger),
            };
            if let Some(host) = host {
                placement.count(pool, &host);
                self.create(ledger, pool, &host, recreate.name, recreate.reasons);
            }
        }
        let mut missing = std::mem::take(&mut self.missing);
        // Fixed pools first: an autoscaled pool takes only what GPUs they leave.
        missing.sort_by_key(|m| (m.pool.autoscale.is_some(), m.pool.host.as_str()));
        for m in missing {
            let mut created = 0;
            for _ in 0..m.count {
                if m.pool.autoscale.is_some() && !placement.fits_somewhere(m.pool, ledger) {
                    break;
                }
                let Some(host) = placement.choose(m.pool, ledger) else {
                    break;
                };
                if ledger.short_for_health(&host, m.pool) {
                    ledger.note_short(&host, m.pool);
                    continue;
                }
                placement.count(m.pool, &host);
                let name = self.fresh_name(m.pool);
                let reason = Reason::PoolShort {
                    kept: m.kept,
                    wanted: m.wanted,
                };
                self.create(ledger, m.pool, &host, name, vec![reason]);
                created += 1;
            }
            if let Some(autoscale) = &m.pool.autoscale {
                let free_slots = placement.free_slots(m.pool, ledger);
                let entry = autoscale_entry(self.observed, m, autoscale, created, free_slots);
                self.autoscale.push(entry);
            }
        }
    }

    fn create(
        &mut self,
        ledger: &mut gpu::Ledger,
        pool: &ResolvedPool,
        host: &str,
        name: String,
        reasons: Vec<Reason>,
    ) {
        if !pool.ephemeral && self.foreign_state_volume(host, &name) {
            // Apply would refuse it: said now, as an error, rather than as a runner that
            // silently never comes.
            self.problems.push(format!(
                "volume `{}` on host `{host}` was not created by fleet (it lacks the label fleet.name={}): runner `{name}` of pool `{}` cannot use it as its state, since fleet never mounts a volume it did not create. Label it as docs/operations.md says (\"Moving a persistent runner to another host\"), or remove it",
                naming::state_volume(&name),
                self.fleet(),
                pool.name
            ));
            return;
        }
        let mut change = RunnerChange::new(RunnerOp::Create, &pool.name, host, &name, reasons);
        change.gpus = self.assign_gpus(ledger, host, pool, &[]);
        change.state_volume = (!pool.ephemeral).then(|| naming::state_volume(&name));
        change.start_failures = self.start_failures_of(pool);
        self.changes.push(Change::Runner(change));
    }

    /// Phase 4: named volumes the pools mount, on each observed host of the pool.
    fn plan_volumes(&mut self) {
        let mut planned = BTreeSet::new();
        for pool in self.pools.iter().filter(|p| p.count > 0) {
            for host_name in &pool.hosts {
                let Some(host) = self.observed.hosts.get(host_name) else {
                    continue;
                };
                for volume in pool.volumes.iter().filter(|v| !v.is_bind()) {
                    match host.volumes.iter().find(|v| v.name == volume.source) {
                        Some(existing) if !existing.owned => self.warnings.push(format!(
                            "volume `{}` on host `{host_name}` was not created by fleet; pool `{}` mounts it as it is",
                            volume.source, pool.name
                        )),
                        Some(_) => {}
                        None if planned.insert((host_name.clone(), volume.source.clone())) => {
                            self.changes.push(Change::Volume(VolumeChange {
                                op: VolumeOp::Create,
                                host: host_name.clone(),
                                name: volume.source.clone(),
                                pool: Some(pool.name.clone()),
                                reasons: vec![Reason::MountedBy {
                                    pool: pool.name.clone(),
                                    target: volume.target.clone(),
                                }],
                                quarantine: None,
                            }))
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Phase 5: owned registrations that no owned container runs. While a host of the spec
    /// was not observed none is removed: the registration carries no host, and its runner may
    /// live there.
    fn plan_registrations(&mut self) {
        let fleet = self.fleet();
        let pool_names = self.pools.iter().map(|p| p.name.as_str());
        let pool_names: Vec<&str> = pool_names.collect();
        let partial = !self.observed.unobserved.is_empty();
        let mut left_alone = 0;
        for runner in self.registrations.values() {
            if self.running.contains(runner.name.as_str()) || self.handled.contains(&runner.name) {
                continue;
            }
            if partial && !self.lost_here(runner) {
                left_alone += 1;
                continue;
            }
            if runner.online || runner.busy {
                self.warnings.push(format!(
                    "runner `{}` (id {}) is registered and {} but no container of this fleet runs it on the hosts fleet watches; left alone",
                    runner.name,
                    runner.id,
                    if runner.busy { "busy" } else { "online" }
                ));
                continue;
            }
            let pool = naming::pool_from_name(fleet, &runner.name, pool_names.iter().copied());
            if pool.is_some_and(|p| self.frozen(p)) {
                continue;
            }
            self.changes.push(Change::Registration(RegistrationChange {
                op: RegistrationOp::Remove,
                runner_id: runner.id,
                name: runner.name.clone(),
                pool: pool.map(str::to_string),
                host: None,
                reasons: vec![Reason::OrphanRegistration],
            }));
        }
        if left_alone > 0 {
            self.warnings.push(format!(
                "{left_alone} registration(s) of this fleet have no container on the hosts that were observed; they may run on {}, so none is removed",
                place::unobserved_list(self.observed)
            ));
        }
    }

    /// Phase 6: state volumes whose runner no pool wants, no container uses and no live
    /// registration backs (a registration that no container runs goes in phase 5).
    fn plan_state_volumes(&mut self) {
        let fleet = self.fleet();
        for (host_name, host) in &self.observed.hosts {
            for volume in host.volumes.iter().filter(|v| v.owned) {
                let Some(runner) = volume.runner.as_deref() else {
                    continue;
                };
                // Cheapest first: nearly every volume is a kept runner's (`handled`), and the
                // container search scans the host.
                let live = self
                    .registrations
                    .get(runner)
                    .is_some_and(|r| r.online || r.busy);
                if self.handled.contains(runner) || live {
                    continue;
                }
                let has_container = host
                    .containers
                    .iter()
                    .any(|c| c.name == runner && contract::container_owned(c, fleet));
                if has_container {
                    continue;
                }
                self.changes.push(Change::Volume(VolumeChange {
                    op: VolumeOp::Destroy,
                    host: host_name.clone(),
                    name: volume.name.clone(),
                    pool: volume.pool.clone(),
                    reasons: vec![Reason::StateUnused {
                        runner: runner.to_string(),
                    }],
                    quarantine: None,
                }));
            }
        }
    }

    fn finish(mut self) -> Result<Plan, PlanError> {
        if !self.problems.is_empty() {
            self.problems.sort();
            self.problems.dedup();
            return Err(PlanError {
                problems: self.problems,
            });
        }
        Ok(Plan {
            fleet: self.spec.name.clone(),
            changes: self.changes,
            deferred: self.deferred,
            warnings: self.warnings,
            autoscale: self.autoscale,
            backoff: self.backoff,
            spec_hash: spec_hash(self.spec),
            observed_fingerprint: self.fingerprint,
        })
    }
}

/// What a pool lacks after phase 1.
struct Missing<'a> {
    pool: &'a ResolvedPool,
    /// Runners kept or replaced.
    kept: usize,
    /// Runners to create.
    count: usize,
    /// Runners it wants.
    wanted: u32,
}

/// An autoscaled pool as the plan leaves it: `created` of its `m.count` missing runners got
/// GPUs; the rest, and the demand beyond `max`, wait.
fn autoscale_entry(
    observed: &Observed,
    m: Missing,
    autoscale: &crate::spec::ResolvedAutoscale,
    created: usize,
    free_slots: Option<u32>,
) -> AutoscalePool {
    let load = observed.demand.get(&m.pool.name).copied();
    let assigned = load.map(|l| l.assigned);
    let runners = u32::try_from(m.kept + created).unwrap_or(u32::MAX);
    let gpu_bound = created < m.count
        || free_slots.is_some_and(|free| runners.saturating_add(free) < autoscale.max);
    let waiting = load.and_then(|load| waiting_jobs(load, runners, autoscale.max, gpu_bound));
    AutoscalePool {
        pool: m.pool.name.clone(),
        scale_set: autoscale.scale_set.clone(),
        min_idle: autoscale.min_idle,
        max: autoscale.max,
        assigned,
        wanted: m.wanted,
        runners,
        free_slots,
        waiting,
    }
}

/// The jobs of an autoscaled pool that have no runner, and why: the assigned jobs beyond its
/// runners (idle runners kept for `min_idle` are runners, never jobs) and the jobs GitHub has
/// not assigned yet. `at_max` only when the pool's runners are at `max`; else `no_free_gpu`
/// when its hosts' GPUs bound it; else `acquiring` (room left: the job is on its way).
pub(crate) fn waiting_jobs(
    load: crate::observe::state::PoolLoad,
    runners: u32,
    max: u32,
    gpu_bound: bool,
) -> Option<(u32, Waiting)> {
    let jobs = load
        .assigned
        .saturating_sub(runners)
        .saturating_add(load.queued);
    let why = if runners >= max {
        Waiting::AtMax
    } else if gpu_bound {
        Waiting::NoFreeGpu
    } else {
        Waiting::Acquiring
    };
    (jobs > 0).then_some((jobs, why))
}

/// A change to an existing container: it holds its GPUs, and has its ids.
fn existing(p: &Placed, op: RunnerOp, reasons: &[Reason], runner_id: Option<u64>) -> RunnerChange {
    let c = p.container;
    let pool = c.label(labels::POOL).unwrap_or_default();
    RunnerChange {
        gpus: c.gpus(),
        container_id: Some(c.id.clone()),
        runner_id,
        ..RunnerChange::new(op, pool, p.host, &c.name, reasons.to_vec())
    }
}

/// The plan of `fleet destroy`: every owned runner goes (busy ones after their job), orphan
/// registrations are removed, and with `volumes` every volume the fleet created too.
pub fn plan_destroy(spec: &Spec, observed: &Observed, volumes: bool) -> Result<Plan, PlanError> {
    let mut empty = spec.clone();
    for pool in empty.pools.values_mut() {
        pool.count = Some(0);
        pool.autoscale = None;
    }
    let mut plan = plan(&empty, observed)?;
    for change in &mut plan.changes {
        if let Change::Runner(r) = change
            && r.op == RunnerOp::Destroy
        {
            r.reasons = vec![Reason::FleetDestroy];
        }
    }
    for deferral in &mut plan.deferred {
        deferral.change.op = RunnerOp::Destroy;
        deferral.change.reasons = vec![Reason::FleetDestroy];
    }
    if volumes {
        // State volumes and scale set records go with their runner or scale set.
        let going: BTreeSet<String> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Runner(r) => r.state_volume.clone(),
                Change::ScaleSet(s) => s.record.as_ref().map(|(_, v)| v.clone()),
                _ => None,
            })
            .chain(
                plan.deferred
                    .iter()
                    .filter_map(|d| d.change.state_volume.clone()),
            )
            .collect();
        for (host, state) in &observed.hosts {
            for volume in state
                .volumes
                .iter()
                .filter(|v| v.owned && !going.contains(&v.name))
            {
                plan.changes.push(Change::Volume(VolumeChange {
                    op: VolumeOp::Destroy,
                    host: host.clone(),
                    name: volume.name.clone(),
                    pool: None,
                    reasons: vec![Reason::FleetDestroyVolumes],
                    quarantine: None,
                }));
            }
        }
    }
    plan.spec_hash = spec_hash(spec);
    Ok(plan)
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod persistent_tests;

#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod hosts_tests;
#[cfg(test)]
mod scaleset_tests;
