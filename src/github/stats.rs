//! Requests made, by endpoint and status, for logs and metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Requests made, by endpoint and status, for logs and metrics.
#[derive(Debug, Default)]
pub struct RequestStats {
    total: AtomicU64,
    by_endpoint: Mutex<BTreeMap<(String, u16), u64>>,
    pub(super) rate_limit_remaining: AtomicI64,
}

impl RequestStats {
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// `(endpoint, status) -> count`; status 0 is a request that got no answer.
    pub fn by_endpoint(&self) -> BTreeMap<(String, u16), u64> {
        self.by_endpoint
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The last `x-ratelimit-remaining` GitHub sent, or -1 before the first answer.
    pub fn rate_limit_remaining(&self) -> i64 {
        self.rate_limit_remaining.load(Ordering::Relaxed)
    }

    pub(super) fn record(&self, endpoint: &str, status: u16) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.by_endpoint.lock() {
            *map.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }
}
