//! Work done once per key within one apply, with different keys at once: each (host, image)
//! is made ready by one pull while creates of other images go ahead (one lock for every image
//! would make a slow pull hold back the creates of every pool).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

/// One cell per key: the first caller of a key runs its work, later callers of the same key
/// wait for it; a failure leaves the key to the next caller.
pub(super) struct OncePerKey<K> {
    cells: Mutex<BTreeMap<K, Arc<OnceCell<()>>>>,
}

impl<K: Ord> OncePerKey<K> {
    pub fn new() -> Self {
        OncePerKey {
            cells: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `work` unless it succeeded for `key` already (or is running: then waits for it).
    pub async fn run<E, F, Fut>(&self, key: K, work: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(cells.entry(key).or_default())
        };
        cell.get_or_try_init(work).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::OncePerKey;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn different_keys_run_at_once_and_one_key_runs_once() {
        let once = OncePerKey::new();
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let runs = AtomicUsize::new(0);
        let work = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<(), String>(())
        };
        let (a, b, a_again) = tokio::join!(
            once.run("image-a", work),
            once.run("image-b", work),
            once.run("image-a", work)
        );
        assert!(a.is_ok() && b.is_ok() && a_again.is_ok());
        assert_eq!(most.load(Ordering::SeqCst), 2, "two images pulled at once");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "image-a once");
    }

    #[tokio::test]
    async fn a_failure_leaves_the_key_to_the_next_caller() {
        let once = OncePerKey::new();
        let failed = once
            .run(1, || async { Err::<(), _>("no such image") })
            .await;
        assert_eq!(failed, Err("no such image"));
        assert_eq!(once.run(1, || async { Ok::<(), &str>(()) }).await, Ok(()));
    }
}
