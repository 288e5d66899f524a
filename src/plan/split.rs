//! A plan cut into one part per host, so that `apply` can run each host's changes on their own
//! and a slow or dead host does not hold back the others (docs/apply.md). Within a part the
//! changes keep their order, and the executor keeps its phases (volumes, removals, creations).

use std::collections::BTreeMap;

use super::model::{Change, Plan, ScaleSetOp, VolumeOp};
use crate::contract::naming;

impl Plan {
    /// The plan's changes grouped by the Docker host they touch, in host order; `None` holds
    /// the changes that touch only GitHub (registrations without a container). Scale set
    /// changes are in none of them: see [`Plan::scale_set_stages`]. A registration
    /// removed together with its persistent runner's state volume goes with that volume's
    /// host, so that the volume is still removed only after the registration.
    pub fn by_host(&self) -> Vec<(Option<String>, Plan)> {
        let volume_hosts: BTreeMap<&str, &str> = self
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Volume(v) if v.op == VolumeOp::Destroy => {
                    Some((v.name.as_str(), v.host.as_str()))
                }
                _ => None,
            })
            .collect();
        let mut parts: BTreeMap<Option<String>, Plan> = BTreeMap::new();
        let empty = || self.clone_header();
        for change in &self.changes {
            let host = match change {
                Change::ScaleSet(_) => continue,
                Change::Runner(r) => Some(r.host.clone()),
                Change::Volume(v) => Some(v.host.clone()),
                Change::Registration(r) => r.host.clone().or_else(|| {
                    let volume = naming::state_volume(&r.name);
                    volume_hosts.get(volume.as_str()).map(|h| h.to_string())
                }),
            };
            parts
                .entry(host)
                .or_insert_with(empty)
                .changes
                .push(change.clone());
        }
        for deferral in &self.deferred {
            parts
                .entry(Some(deferral.change.host.clone()))
                .or_insert_with(empty)
                .deferred
                .push(deferral.clone());
        }
        parts.into_iter().collect()
    }

    /// The scale set changes, in two stages: those to make before any runner (creates and
    /// updates: an autoscaled pool's runners register in its scale set, on whichever host), and
    /// the deletions, after every runner of the scale set is gone.
    pub fn scale_set_stages(&self) -> (Plan, Plan) {
        let (mut before, mut after) = (self.clone_header(), self.clone_header());
        for change in &self.changes {
            match change {
                Change::ScaleSet(set) if set.op == ScaleSetOp::Delete => {
                    after.changes.push(change.clone())
                }
                Change::ScaleSet(_) => before.changes.push(change.clone()),
                _ => {}
            }
        }
        (before, after)
    }

    /// The plan without its changes, deferrals and warnings.
    fn clone_header(&self) -> Plan {
        Plan {
            fleet: self.fleet.clone(),
            changes: vec![],
            deferred: vec![],
            warnings: vec![],
            autoscale: vec![],
            backoff: vec![],
            spec_hash: self.spec_hash.clone(),
            observed_fingerprint: self.observed_fingerprint.clone(),
        }
    }
}
