//! Pacing of GitHub writes under its secondary rate limit: at most 900 points per minute per
//! endpoint, a POST costing 5 points. A bucket per endpoint holds a minute's points and
//! refills continuously, so a small apply is never slowed (its POSTs fit in the bucket) and a
//! large one spreads out at 3 POSTs a second once the first 180 are spent.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Points GitHub allows per endpoint per minute.
pub const POINTS_PER_MINUTE: f64 = 900.0;
/// Points one POST, PATCH, PUT or DELETE costs.
pub const POINTS_PER_WRITE: f64 = 5.0;

struct Bucket {
    points: f64,
    updated: Instant,
}

/// One bucket per endpoint.
#[derive(Default)]
pub struct Pacer {
    buckets: Mutex<BTreeMap<String, Bucket>>,
}

impl Pacer {
    /// Waits until `endpoint` can take one more write, then takes its points. Returns how long
    /// it waited.
    pub async fn write(&self, endpoint: &str) -> Duration {
        let rate = POINTS_PER_MINUTE / 60.0;
        let wait = {
            let mut buckets = self.buckets.lock().await;
            let now = Instant::now();
            let bucket = buckets.entry(endpoint.to_string()).or_insert(Bucket {
                points: POINTS_PER_MINUTE,
                updated: now,
            });
            let refill = now.duration_since(bucket.updated).as_secs_f64() * rate;
            bucket.points = (bucket.points + refill).min(POINTS_PER_MINUTE);
            bucket.updated = now;
            // Take the points now (possibly going below zero): writers queue in arrival order.
            bucket.points -= POINTS_PER_WRITE;
            if bucket.points >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-bucket.points / rate)
            }
        };
        if !wait.is_zero() {
            tracing::info!(
                "GitHub {endpoint}: pacing writes under the secondary rate limit; waiting {:.1}s",
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_minute_of_writes_goes_at_once_then_three_a_second() {
        let pacer = Pacer::default();
        let started = Instant::now();
        for _ in 0..180 {
            assert_eq!(pacer.write("generate-jitconfig").await, Duration::ZERO);
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a burst of 180 POSTs is not slowed"
        );
        // Another endpoint has its own budget.
        assert_eq!(pacer.write("registration-token").await, Duration::ZERO);
        for _ in 0..30 {
            pacer.write("generate-jitconfig").await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        assert!(
            (9.9..=10.1).contains(&elapsed),
            "30 more POSTs take 10 s, took {elapsed}"
        );
        // Over any minute, the points spent stay within the limit.
        let spent = (180.0 + 30.0) * POINTS_PER_WRITE;
        assert!(spent <= POINTS_PER_MINUTE + elapsed * POINTS_PER_MINUTE / 60.0 + 1e-6);
    }
}
