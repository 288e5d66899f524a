//! Persistent runners (`ephemeral: false`). Each is its index name (`<fleet>-<pool>-<n>`), its
//! state volume and its GitHub registration: while the pool wants index n, a lost or exited
//! container is made again under the same name on the same volume and keeps its registration;
//! a registration GitHub dropped is registered again on the volume; labels and runner group are
//! set on the registration when they drift. Only a runner the pool no longer wants loses its
//! registration, container and state volume, together (docs/apply.md).

use std::collections::{BTreeMap, BTreeSet};

use super::containers::{self, Fate, Fit, OnHost, Registrations, is_busy};
use super::model::{
    Action, AttributeChange, Change, Reason, RegistrationChange, RegistrationOp, VolumeChange,
    VolumeOp,
};
use crate::contract::{self, RunnerConfig, container, labels, naming};
use crate::observe::state::{
    ContainerState, ContainerStatus, GithubRunner, HostState, VolumeState,
};
use crate::spec::ResolvedPool;

/// One persistent runner, from whatever of it exists, with the host of its container and of
/// its state volume.
struct Identity<'a> {
    name: String,
    container: Option<OnHost<'a>>,
    registration: Option<&'a GithubRunner>,
    volume: Option<(&'a str, &'a VolumeState)>,
}

impl Identity<'_> {
    /// The host the runner lives on: its container's, else its state volume's.
    fn host(&self) -> Option<&str> {
        self.container
            .map(|(h, _)| h)
            .or(self.volume.map(|(h, _)| h))
    }

    /// Only a registration was seen, no container on an observed host runs it, and some host
    /// was not observed: the runner may live on that host, so it is neither made again nor
    /// removed. Unless the registration's host mark names a host that was observed: then the
    /// runner is lost there (registrations made before the mark existed carry none).
    fn unseen(&self, inputs: &Inputs) -> bool {
        let lost_here = self
            .registration
            .and_then(|r| contract::registration_host(r, inputs.fleet))
            .is_some_and(|host| inputs.hosts.contains_key(host));
        inputs.partial
            && self.container.is_none()
            && self.volume.is_none()
            && !inputs.running.contains(self.name.as_str())
            && !lost_here
    }
}

/// A runner the pool wants whose container is missing: made again under its name, on the host
/// that holds its state volume (`None`: where placement says).
pub(super) struct Recreate {
    pub name: String,
    pub reasons: Vec<Reason>,
    pub host: Option<String>,
}

/// What a persistent pool's runners come to on its observed hosts.
pub(super) struct PersistentOutcome<'a> {
    pub fates: Vec<(&'a str, &'a ContainerState, Fate)>,
    pub recreate: Vec<Recreate>,
    /// Registrations removed or updated, state volumes removed.
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
    /// Runners the pool keeps (with or without a container).
    pub kept: usize,
    /// New runners to create under the lowest free indexes.
    pub missing: usize,
    /// Runner names this pool decided about: their registrations and state volumes are not
    /// orphans.
    pub handled: Vec<String>,
}

/// What the pool decision reads besides the pool's own containers.
pub(super) struct Inputs<'a, 'r> {
    pub fleet: &'a str,
    pub registrations: &'r Registrations<'a>,
    /// The observed hosts: their volumes and GPU inventories.
    pub hosts: &'a BTreeMap<String, HostState>,
    /// Runner groups by name (organization scope; empty at repository scope).
    pub groups: &'a BTreeMap<String, u64>,
    /// Some host of the spec was not observed.
    pub partial: bool,
    /// Owned containers on the observed hosts, by name (of any pool).
    pub running: &'r BTreeSet<&'a str>,
}

/// Decides what happens to a persistent pool's runners on its observed hosts. An index is
/// one runner across all of the pool's hosts.
pub(super) fn decide<'a>(
    pool: &'a ResolvedPool,
    containers: &[OnHost<'a>],
    inputs: &Inputs<'a, '_>,
) -> PersistentOutcome<'a> {
    let fits = containers::fits(inputs.fleet, pool, containers, inputs.hosts);
    let first = Fit::new(inputs.fleet, pool, &pool.host, &[]);
    let (identities, strays) = identities(pool, containers, inputs);
    let mut out = PersistentOutcome {
        fates: strays
            .into_iter()
            .map(|(h, c)| (h, c, stray_fate(c, &fits[h], inputs.registrations)))
            .collect(),
        recreate: vec![],
        changes: vec![],
        warnings: vec![],
        kept: identities.len().min(pool.count as usize),
        missing: (pool.count as usize).saturating_sub(identities.len()),
        handled: identities.values().map(|i| i.name.clone()).collect(),
    };
    let over = Reason::PoolOver {
        total: identities.len(),
        wanted: pool.count as usize,
    };
    for (position, identity) in identities.values().enumerate() {
        if identity.unseen(inputs) {
            out.warnings.push(unseen_warning(identity));
            continue;
        }
        let fit = identity
            .container
            .and_then(|(h, _)| fits.get(h))
            .unwrap_or(&first);
        if position < out.kept {
            keep(&mut out, identity, fit, inputs);
        } else {
            retire(&mut out, identity, &over, inputs);
        }
    }
    out
}

fn unseen_warning(identity: &Identity) -> String {
    format!(
        "runner `{}` is registered, but no host that was observed has its container or its state volume: it may run on a host that was not observed, and is left alone",
        identity.name
    )
}

/// The pool's runners by index, and its containers whose names are not indexes (made while
/// the pool was ephemeral, say).
fn identities<'a>(
    pool: &ResolvedPool,
    containers: &[OnHost<'a>],
    inputs: &Inputs<'a, '_>,
) -> (BTreeMap<usize, Identity<'a>>, Vec<OnHost<'a>>) {
    let index = |name: &str| naming::persistent_index(inputs.fleet, &pool.name, name);
    let mut found: BTreeMap<usize, Identity<'a>> = BTreeMap::new();
    let mut strays = Vec::new();
    for &(host, c) in containers {
        match index(&c.name) {
            Some(n) => identity(&mut found, inputs.fleet, pool, n).container = Some((host, c)),
            None => strays.push((host, c)),
        }
    }
    for (name, runner) in inputs.registrations.iter() {
        if let Some(n) = index(name) {
            identity(&mut found, inputs.fleet, pool, n).registration = Some(runner);
        }
    }
    for host in &pool.hosts {
        let Some((host, state)) = inputs.hosts.get_key_value(host) else {
            continue;
        };
        for volume in &state.volumes {
            let ours = volume.owned && volume.pool.as_deref() == Some(pool.name.as_str());
            let runner = volume.runner.as_deref().filter(|_| ours);
            let Some(n) = runner.and_then(index) else {
                continue;
            };
            if volume.name
                != naming::state_volume(&naming::persistent_name(inputs.fleet, &pool.name, n))
            {
                continue;
            }
            let id = identity(&mut found, inputs.fleet, pool, n);
            // The volume on the container's host is the one it uses.
            let better = match (id.volume, id.container) {
                (None, _) => true,
                (Some((held, _)), Some((on, _))) => held != on && host.as_str() == on,
                (Some(_), None) => false,
            };
            if better {
                id.volume = Some((host.as_str(), volume));
            }
        }
    }
    (found, strays)
}

fn identity<'m, 'a>(
    found: &'m mut BTreeMap<usize, Identity<'a>>,
    fleet: &str,
    pool: &ResolvedPool,
    n: usize,
) -> &'m mut Identity<'a> {
    found.entry(n).or_insert_with(|| Identity {
        name: naming::persistent_name(fleet, &pool.name, n),
        container: None,
        registration: None,
        volume: None,
    })
}

/// A container of the pool that is not one of its persistent runners: it goes (after its job).
fn stray_fate(c: &ContainerState, fit: &Fit, runners: &Registrations) -> Fate {
    let reasons = fit
        .misfit(c)
        .map(|(reasons, _)| reasons)
        .unwrap_or_else(|| vec![Reason::ConfigChanged { attributes: vec![] }]);
    if is_busy(c, runners) {
        Fate::Defer(Action::Destroy, reasons, vec![])
    } else {
        Fate::Destroy(reasons)
    }
}

/// A runner the pool keeps: its container stays, is replaced or is made again; its
/// registration is updated when its labels or group drifted.
fn keep<'a>(out: &mut PersistentOutcome<'a>, id: &Identity<'a>, fit: &Fit, inputs: &Inputs) {
    match id.container {
        Some((host, c)) => out
            .fates
            .push((host, c, kept_fate(c, id, fit, inputs.registrations))),
        None if busy_elsewhere(&id.name, inputs) => {
            // Its container runs a job on a host the pool no longer lists: made again here
            // after that job, never beside it under the same registration.
            out.warnings.push(format!(
                "runner `{}` is busy on a host pool `{}` no longer lists: it is made again on the pool's host after its job",
                id.name, fit.pool.name
            ));
        }
        None => {
            let reason = match (id.registration, id.volume) {
                (Some(_), Some(_)) => Reason::ContainerMissing,
                (Some(_), None) => Reason::StateLost,
                (None, _) => Reason::RegistrationGone,
            };
            out.recreate.push(Recreate {
                name: id.name.clone(),
                reasons: vec![reason],
                host: id.volume.map(|(h, _)| h.to_string()),
            });
        }
    }
    let host = id.host().unwrap_or(&fit.pool.host);
    if let Some(runner) = id.registration
        && let Some(update) = drift(fit, runner, host, inputs)
    {
        out.changes.push(Change::Registration(update));
    }
}

/// Whether an owned container named `name` runs a job on some observed host (one its pool no
/// longer lists, since the pool's own hosts showed none).
fn busy_elsewhere(name: &str, inputs: &Inputs) -> bool {
    inputs.running.contains(name)
        && inputs
            .hosts
            .values()
            .flat_map(|h| &h.containers)
            .any(|c| c.name == name && is_busy(c, inputs.registrations))
}

/// The fate of a kept runner's container.
fn kept_fate(c: &ContainerState, id: &Identity, fit: &Fit, runners: &Registrations) -> Fate {
    // Nothing to restore and no token (the entrypoint's 75): a restart cannot help.
    let asks_to_register = c.status == ContainerStatus::Restarting
        && c.exit_code == Some(container::EXIT_REGISTER_AGAIN);
    if c.status.is_finished() || asks_to_register {
        let mut reasons = vec![Reason::Exited { code: c.exit_code }];
        if id.registration.is_none() {
            reasons.push(Reason::RegistrationGone);
        }
        return Fate::Replace(reasons, vec![]);
    }
    if id.registration.is_none() {
        // A container made with a token registers itself when it starts: give it time.
        let registering = c.status == ContainerStatus::Running
            && c.label(labels::REGISTRATION) == Some("register");
        return if registering {
            Fate::Keep
        } else {
            Fate::Replace(vec![Reason::RegistrationGone], vec![])
        };
    }
    if is_busy(c, runners) {
        return match fit.misfit(c) {
            None => Fate::Keep,
            Some((reasons, diff)) => Fate::Defer(Action::Replace, reasons, diff),
        };
    }
    match fit.misfit_idle(c) {
        None => Fate::Keep,
        Some((reasons, diff)) => Fate::Replace(reasons, diff),
    }
}

/// A runner the pool no longer wants: its registration first (not while busy), then its
/// container, then its state volume.
fn retire<'a>(out: &mut PersistentOutcome<'a>, id: &Identity<'a>, over: &Reason, inputs: &Inputs) {
    if let Some((host, c)) = id.container {
        // The container's change removes the registration and the state volume with it.
        let fate = if is_busy(c, inputs.registrations) {
            Fate::Defer(Action::Destroy, vec![over.clone()], vec![])
        } else {
            Fate::Destroy(vec![over.clone()])
        };
        out.fates.push((host, c, fate));
        return;
    }
    if let Some(runner) = id.registration {
        if runner.online || runner.busy {
            out.warnings.push(format!(
                "runner `{}` (id {}) is no longer wanted, but it is registered and {} with no container of this fleet on host `{}`; left alone with its state volume",
                runner.name,
                runner.id,
                if runner.busy { "busy" } else { "online" },
                id.host().unwrap_or("?")
            ));
            return;
        }
        out.changes.push(Change::Registration(RegistrationChange {
            op: RegistrationOp::Remove,
            runner_id: runner.id,
            name: runner.name.clone(),
            pool: runner_pool(id),
            host: None,
            reasons: vec![over.clone()],
        }));
    }
    if let Some((host, volume)) = id.volume {
        out.changes.push(Change::Volume(VolumeChange {
            op: VolumeOp::Destroy,
            host: host.to_string(),
            name: volume.name.clone(),
            pool: volume.pool.clone(),
            reasons: vec![Reason::StateUnused {
                runner: id.name.clone(),
            }],
            quarantine: None,
        }));
    }
}

fn runner_pool(id: &Identity) -> Option<String> {
    id.volume.and_then(|(_, v)| v.pool.clone()).or_else(|| {
        id.container
            .and_then(|(_, c)| c.label(labels::POOL))
            .map(str::to_string)
    })
}

/// The update a registration needs when its custom labels or runner group differ from the
/// pool's.
fn drift(
    fit: &Fit,
    runner: &GithubRunner,
    host: &str,
    inputs: &Inputs,
) -> Option<RegistrationChange> {
    let desired = &fit.desired;
    let mut diff = Vec::new();
    // The host mark is fleet's, not the pool's: it is neither compared nor dropped.
    let (marks, others): (Vec<String>, Vec<String>) = runner
        .labels
        .iter()
        .cloned()
        .partition(|l| contract::host_mark(l, inputs.fleet).is_some());
    let want = contract::custom_labels(&desired.labels);
    let have = contract::custom_labels(&others);
    let labels = (want != have).then(|| {
        diff.push(AttributeChange {
            attribute: "labels".into(),
            before: Some(have.join("\n")),
            after: want.join("\n"),
        });
        let mut labels = custom_as_written(desired);
        labels.extend(marks);
        labels
    });
    let group = group_drift(desired, runner, inputs.groups, &mut diff);
    if labels.is_none() && group.is_none() {
        return None;
    }
    let attributes = diff.iter().map(|d| d.attribute.clone()).collect();
    Some(RegistrationChange {
        op: RegistrationOp::Update {
            labels,
            group,
            diff,
        },
        runner_id: runner.id,
        name: runner.name.clone(),
        pool: Some(fit.pool.name.clone()),
        host: Some(host.to_string()),
        reasons: vec![Reason::RegistrationDrift { attributes }],
    })
}

/// The pool's custom labels as the spec writes them (GitHub keeps a label's case).
fn custom_as_written(desired: &RunnerConfig) -> Vec<String> {
    desired
        .labels
        .iter()
        .filter(|l| !contract::GITHUB_DEFAULT_LABELS.contains(&l.to_lowercase().as_str()))
        .cloned()
        .collect()
}

/// At organization scope: the group the registration should move to, if it is elsewhere.
fn group_drift(
    desired: &RunnerConfig,
    runner: &GithubRunner,
    groups: &BTreeMap<String, u64>,
    diff: &mut Vec<AttributeChange>,
) -> Option<u64> {
    let wanted_name = desired.runner_group.as_deref().unwrap_or("Default");
    let (_, wanted) = crate::github::find_group(groups, wanted_name)?;
    let current = runner.runner_group_id?;
    if current == wanted {
        return None;
    }
    let current_name = groups
        .iter()
        .find(|(_, id)| **id == current)
        .map_or_else(|| format!("(group id {current})"), |(name, _)| name.clone());
    diff.push(AttributeChange {
        attribute: "runner_group".into(),
        before: Some(current_name),
        after: wanted_name.to_string(),
    });
    Some(wanted)
}
