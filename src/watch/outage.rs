//! A scale set service that is known to be down: the reconciles that follow do not wait for
//! the client's retries (several seconds each) to learn it again. The service is asked again
//! when a listener, whose session backoff keeps probing it, opens a session, or after
//! [`RECHECK`] at the latest (docs/watch.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The longest a known outage keeps the scale sets unread: the listeners' session backoff cap.
pub(super) const RECHECK: Duration = Duration::from_secs(30);

/// A failed read of the scale sets.
#[derive(Debug, Clone)]
struct Outage {
    /// When the service was last asked.
    asked: Instant,
    error: String,
    /// The listeners' session count then.
    sessions: u64,
}

/// What the watch loop knows of the scale set service between reconciles.
#[derive(Default)]
pub(super) struct ServiceHealth {
    outage: Mutex<Option<Outage>>,
    /// Sessions the listeners opened: one more means the service answers again.
    sessions: Arc<AtomicU64>,
}

impl ServiceHealth {
    /// The counter the listeners raise when they open a session.
    pub(super) fn session_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.sessions)
    }

    /// Why the scale sets are not read this time (the service is known down and nothing says
    /// it answers again), or `None`: read them.
    pub(super) fn known_down(&self, now: Instant) -> Option<String> {
        let outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        let outage = outage.as_ref()?;
        let sessions = self.sessions.load(Ordering::Relaxed);
        let ask_again = sessions > outage.sessions || now.duration_since(outage.asked) >= RECHECK;
        (!ask_again).then(|| {
            format!(
                "{} (known since {}s ago; asked again when a listener reaches the service, within {}s)",
                outage.error,
                now.duration_since(outage.asked).as_secs(),
                RECHECK.as_secs()
            )
        })
    }

    /// Records what a read of the scale sets at `now` gave: `Some(error)` when it failed.
    pub(super) fn read(&self, now: Instant, error: Option<&str>) {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        *outage = error.map(|e| Outage {
            asked: now,
            error: e.to_string(),
            sessions: self.sessions.load(Ordering::Relaxed),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_outage_is_not_asked_again_until_a_session_opens_or_the_recheck_is_due() {
        let health = ServiceHealth::default();
        let t0 = Instant::now();
        assert_eq!(health.known_down(t0), None, "nothing known: read");
        health.read(t0, Some("503"));
        let second = t0 + Duration::from_secs(5);
        let why = health.known_down(second).expect("known down");
        assert!(why.starts_with("503 (known since 5s ago"), "{why}");
        // Due again after the recheck interval.
        assert_eq!(health.known_down(t0 + RECHECK), None);
        // A listener opened a session: the service answers, read at once.
        health.session_counter().fetch_add(1, Ordering::Relaxed);
        assert_eq!(health.known_down(second), None);
        // A read that succeeds ends the outage.
        health.read(second, Some("503"));
        assert!(health.known_down(second).is_some());
        health.read(second, None);
        assert_eq!(health.known_down(second), None);
    }
}
