//! Docker's events of the fleet's containers: each host's task (`hosts.rs`) follows them and
//! turns each into a trigger; and the rule for an event the engine's container list has not
//! caught up with yet.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use super::Trigger;
use crate::docker::DockerHost;
use crate::observe::state::Observed;

/// Sends a trigger for each of the fleet's container events on `docker`, until the stream ends
/// (the engine went away) or the loop's channel closes. `hosts.rs` runs it per host.
pub(super) async fn follow_events(docker: &DockerHost, fleet: &str, tx: &UnboundedSender<Trigger>) {
    let events = docker.read().container_events(fleet);
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        tracing::info!(
            "host `{}`: container {} {}",
            docker.name,
            event.container,
            event.action
        );
        let trigger = Trigger::Docker {
            container: event.container,
            action: event.action,
            at: event.at,
            recheck: 0,
        };
        if tx.send(trigger).is_err() {
            return;
        }
    }
}

/// How many times a Docker event is looked at again when the engine's container list has not
/// caught up with it yet, and the first wait (doubled each time).
const EVENT_RECHECKS: u32 = 5;
const EVENT_RECHECK_WAIT: Duration = Duration::from_millis(100);

/// Docker sends `die` a moment before its container list says `exited` (seen on Engine 20.10.24), so
/// a reconcile right after the event can still see the runner running and keep it. Returns each
/// event the observation contradicts, to be sent again after the wait beside it; a few times at
/// most (a persistent runner that Docker restarted is running again, and that is fine).
pub(super) fn lagging_events(
    triggers: &[Trigger],
    observed: &Observed,
) -> Vec<(Duration, Trigger)> {
    let mut again = Vec::new();
    for trigger in triggers {
        let Trigger::Docker {
            container,
            action,
            at,
            recheck,
        } = trigger
        else {
            continue;
        };
        let listed = observed
            .hosts
            .values()
            .flat_map(|h| h.containers.iter())
            .find(|c| &c.name == container);
        let lagging = match (action.as_str(), listed) {
            ("die", Some(c)) => !c.status.is_finished(),
            ("destroy", Some(_)) => true,
            _ => false,
        };
        if lagging && *recheck < EVENT_RECHECKS {
            again.push((
                EVENT_RECHECK_WAIT * 2u32.pow(*recheck),
                Trigger::Docker {
                    container: container.clone(),
                    action: action.clone(),
                    at: *at,
                    recheck: recheck + 1,
                },
            ));
        }
    }
    again
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    use crate::observe::state::{ContainerState, ContainerStatus, HostState};

    fn observed(containers: &[(&str, ContainerStatus)]) -> Observed {
        let host = HostState {
            containers: containers
                .iter()
                .map(|(name, status)| ContainerState {
                    id: format!("id-{name}"),
                    name: name.to_string(),
                    labels: BTreeMap::new(),
                    status: *status,
                    exit_code: None,
                    created: 0,
                    finished: None,
                })
                .collect(),
            ..HostState::default()
        };
        Observed {
            hosts: BTreeMap::from([("local".to_string(), host)]),
            ..Observed::default()
        }
    }

    fn event(container: &str, action: &str, recheck: u32) -> Trigger {
        Trigger::Docker {
            container: container.into(),
            action: action.into(),
            at: UNIX_EPOCH,
            recheck,
        }
    }

    fn rechecks(again: &[(Duration, Trigger)]) -> Vec<(u128, String, u32)> {
        again
            .iter()
            .filter_map(|(wait, t)| match t {
                Trigger::Docker {
                    container, recheck, ..
                } => Some((wait.as_millis(), container.clone(), *recheck)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_die_event_the_list_has_not_caught_up_with_is_looked_at_again_later() {
        let world = observed(&[
            ("f-eph-a", ContainerStatus::Running),
            ("f-eph-b", ContainerStatus::Exited),
        ]);
        let triggers = [
            event("f-eph-a", "die", 0),
            event("f-eph-b", "die", 0),
            Trigger::Spec,
        ];
        assert_eq!(
            rechecks(&lagging_events(&triggers, &world)),
            vec![(100, "f-eph-a".to_string(), 1)]
        );
        // The wait doubles, and after five looks the resync is left to it.
        assert_eq!(
            rechecks(&lagging_events(&[event("f-eph-a", "die", 3)], &world)),
            vec![(800, "f-eph-a".to_string(), 4)]
        );
        assert!(lagging_events(&[event("f-eph-a", "die", EVENT_RECHECKS)], &world).is_empty());
    }

    #[test]
    fn destroy_events_wait_for_the_container_to_leave_the_list() {
        let world = observed(&[("f-eph-a", ContainerStatus::Exited)]);
        assert_eq!(
            rechecks(&lagging_events(&[event("f-eph-a", "destroy", 0)], &world)),
            vec![(100, "f-eph-a".to_string(), 1)]
        );
        // Gone from the list, or an oom of a process inside a running container: nothing to wait for.
        assert!(lagging_events(&[event("f-eph-z", "destroy", 0)], &world).is_empty());
        assert!(lagging_events(&[event("f-eph-z", "die", 0)], &world).is_empty());
        let running = observed(&[("f-eph-a", ContainerStatus::Running)]);
        assert!(lagging_events(&[event("f-eph-a", "oom", 0)], &running).is_empty());
    }
}
