//! The runner contract: everything that makes a container, a volume or a GitHub registration
//! fleet's, in one place. Label keys and the ownership rule, names, the configuration a pool's
//! runners are made from (and its hashes), and the Docker create request of a runner container.
//! The planner, the executor, `status` and `watch` all read these rules from here
//! (docs/architecture.md).

pub mod config;
pub mod container;
pub mod hash;
pub mod naming;

use std::collections::BTreeMap;

pub use config::RunnerConfig;

use crate::state::{ContainerState, GithubRunner};

pub use crate::labels;

/// Labels GitHub gives runners itself and that its API cannot change (they are `read-only`):
/// compared case-insensitively.
pub const GITHUB_DEFAULT_LABELS: &[&str] = &[
    "self-hosted",
    "linux",
    "windows",
    "macos",
    "x64",
    "x86",
    "arm",
    "arm64",
];

/// The custom labels of a list: those GitHub does not apply itself, lowercased and sorted, as
/// GitHub compares them.
pub fn custom_labels(labels: &[String]) -> Vec<String> {
    let mut custom: Vec<String> = labels
        .iter()
        .map(|l| l.to_lowercase())
        .filter(|l| !GITHUB_DEFAULT_LABELS.contains(&l.as_str()))
        .collect();
    custom.sort();
    custom.dedup();
    custom
}

/// The label that marks a GitHub runner registration as owned by fleet `name`.
pub fn ownership_label(fleet: &str) -> String {
    format!("fleet.{fleet}")
}

/// The label fleet gives the registration of a runner it makes on `host` (`fleet.<fleet>.host.
/// <host>`): it tells, while another host cannot be observed, that a registration without a
/// container belongs to a host that answers, so its runner is lost (docs/hosts.md). JIT
/// registrations carry it, and persistent runners register with it; scale set runners take
/// their scale set's labels and carry none (docs/decisions.md).
pub fn host_label(fleet: &str, host: &str) -> String {
    format!("fleet.{fleet}.host.{host}")
}

/// The host `label` names if it is fleet `fleet`'s host mark (GitHub keeps a label's case but
/// compares labels ignoring it).
pub fn host_mark<'l>(label: &'l str, fleet: &str) -> Option<&'l str> {
    let prefix = format!("fleet.{fleet}.host.");
    label
        .get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(&prefix))
        .and_then(|_| label.get(prefix.len()..))
}

/// The host a registration's mark names, if it carries fleet `fleet`'s mark.
pub fn registration_host<'a>(runner: &'a GithubRunner, fleet: &str) -> Option<&'a str> {
    runner.labels.iter().find_map(|l| host_mark(l, fleet))
}

/// Whether Docker labels say that fleet `fleet` made the container or volume. Only labels prove
/// ownership, never a name.
pub fn labels_owned(labels: &BTreeMap<String, String>, fleet: &str) -> bool {
    labels.get(labels::FLEET).map(String::as_str) == Some(fleet)
}

/// Whether fleet `fleet` made this container.
pub fn container_owned(container: &ContainerState, fleet: &str) -> bool {
    labels_owned(&container.labels, fleet)
}

/// Whether this GitHub registration is fleet `fleet`'s: its name prefix and its ownership
/// label, both. A hand-made runner that happens to share the prefix is never touched.
pub fn registration_owned(runner: &GithubRunner, fleet: &str) -> bool {
    // Without allocating: the planner asks this of every registration of the scope.
    let prefixed = runner
        .name
        .strip_prefix(fleet)
        .is_some_and(|rest| rest.starts_with('-'));
    prefixed && runner.labels.iter().any(|l| is_ownership_label(l, fleet))
}

/// Whether a registration is fleet `fleet`'s, counting the runners of fleet's own scale sets
/// (`recorded`: the scale sets fleet's Docker records name). A scale set runner takes its
/// scale set's labels, which a service that drops extra labels (some GitHub Enterprise Server
/// versions) leaves without the ownership label: its name prefix and its scale set's name
/// among its labels prove it then.
pub fn registration_owned_with(runner: &GithubRunner, fleet: &str, recorded: &[&str]) -> bool {
    if registration_owned(runner, fleet) {
        return true;
    }
    let prefixed = runner
        .name
        .strip_prefix(fleet)
        .is_some_and(|rest| rest.starts_with('-'));
    prefixed
        && runner
            .labels
            .iter()
            .any(|l| recorded.iter().any(|set| same_scale_set_name(l, set)))
}

/// Whether `label` is fleet `fleet`'s ownership label (`fleet.<fleet>`).
fn is_ownership_label(label: &str, fleet: &str) -> bool {
    label.strip_prefix("fleet.") == Some(fleet)
}

/// Whether a runner scale set is fleet `fleet`'s: its labels carry the ownership label.
pub fn scale_set_owned(labels: &[String], fleet: &str) -> bool {
    labels.iter().any(|l| {
        l.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("fleet."))
            && l[6..].eq_ignore_ascii_case(fleet)
    })
}

/// Whether two runner scale set names name the same scale set. The Actions service compares
/// them ignoring case (it finds a scale set by `?name=` and keeps names unique within a
/// runner group without regard to case; actions-runner-controller treats a change of case
/// as no rename); plan, apply, watch and status all use this one rule (docs/autoscale.md).
pub fn same_scale_set_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The labels of a volume fleet creates for `pool` (and, for a state volume, its runner).
pub fn volume_labels(fleet: &str, pool: &str, runner: Option<&str>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::from([
        (labels::FLEET.to_string(), fleet.to_string()),
        (labels::POOL.to_string(), pool.to_string()),
    ]);
    if let Some(runner) = runner {
        map.insert(labels::RUNNER.to_string(), runner.to_string());
    }
    map
}
