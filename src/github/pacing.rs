//! Pacing of GitHub writes under its secondary rate limits: at most 900 points per minute per
//! endpoint, a write costing 5 points; and at most 80 content-creating requests (POSTs: JIT
//! configurations, registration tokens) a minute and 500 an hour. Each limit is a bucket that
//! holds its allowance and refills continuously, so a small apply is never slowed (its writes
//! fit in the buckets) and a large one spreads out: past the first 80 POSTs, one each 0.75 s.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Points GitHub allows per endpoint per minute.
pub const POINTS_PER_MINUTE: f64 = 900.0;
/// Points one POST, PATCH, PUT or DELETE costs.
pub const POINTS_PER_WRITE: f64 = 5.0;
/// Content-creating requests GitHub allows a minute, and an hour.
pub const CREATIONS_PER_MINUTE: f64 = 80.0;
pub const CREATIONS_PER_HOUR: f64 = 500.0;

struct Bucket {
    points: f64,
    updated: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            points: capacity,
            updated: now,
        }
    }

    /// Takes `cost` (possibly going below zero: takers queue in arrival order) and returns how
    /// long the taker waits for the bucket to be back at zero.
    fn take(&mut self, cost: f64, capacity: f64, per_second: f64, now: Instant) -> Duration {
        let refill = now.duration_since(self.updated).as_secs_f64() * per_second;
        self.points = (self.points + refill).min(capacity);
        self.updated = now;
        self.points -= cost;
        if self.points >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.points / per_second)
        }
    }
}

/// One bucket per endpoint, and the two content-creation buckets.
#[derive(Default)]
pub struct Pacer {
    buckets: Mutex<BTreeMap<String, Bucket>>,
    creations: Mutex<Option<(Bucket, Bucket)>>,
}

/// What a write is, for pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A POST: creates something (counts against the content-creation limit too).
    Create,
    /// A PUT or DELETE.
    Change,
}

impl Pacer {
    /// Waits until `endpoint` can take one more write of kind `write`, then takes its points.
    /// Returns how long it waited.
    pub async fn write(&self, endpoint: &str, write: Write) -> Duration {
        let now = Instant::now();
        let mut wait = {
            let mut buckets = self.buckets.lock().await;
            buckets
                .entry(endpoint.to_string())
                .or_insert_with(|| Bucket::full(POINTS_PER_MINUTE, now))
                .take(
                    POINTS_PER_WRITE,
                    POINTS_PER_MINUTE,
                    POINTS_PER_MINUTE / 60.0,
                    now,
                )
        };
        if write == Write::Create {
            let mut creations = self.creations.lock().await;
            let (minute, hour) = creations.get_or_insert_with(|| {
                (
                    Bucket::full(CREATIONS_PER_MINUTE, now),
                    Bucket::full(CREATIONS_PER_HOUR, now),
                )
            });
            let per_minute = CREATIONS_PER_MINUTE;
            wait = wait
                .max(minute.take(1.0, per_minute, per_minute / 60.0, now))
                .max(hour.take(1.0, CREATIONS_PER_HOUR, CREATIONS_PER_HOUR / 3600.0, now));
        }
        if !wait.is_zero() {
            tracing::info!(
                "GitHub {endpoint}: pacing writes under the secondary rate limits; waiting {:.1}s",
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
    async fn a_minute_of_changes_goes_at_once_then_three_a_second() {
        let pacer = Pacer::default();
        let started = Instant::now();
        for _ in 0..180 {
            assert_eq!(
                pacer.write("set-runner-labels", Write::Change).await,
                Duration::ZERO
            );
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a burst of 180 writes is not slowed"
        );
        // Another endpoint has its own budget.
        assert_eq!(
            pacer.write("delete-runner", Write::Change).await,
            Duration::ZERO
        );
        for _ in 0..30 {
            pacer.write("set-runner-labels", Write::Change).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        assert!(
            (9.9..=10.1).contains(&elapsed),
            "30 more writes take 10 s, took {elapsed}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn creations_stay_under_80_a_minute_and_500_an_hour() {
        let pacer = Pacer::default();
        let started = Instant::now();
        for _ in 0..80 {
            assert_eq!(
                pacer.write("generate-jitconfig", Write::Create).await,
                Duration::ZERO,
                "80 registrations go at once"
            );
        }
        // The 81st waits for the minute bucket: one each 0.75 s.
        pacer.write("registration-token", Write::Create).await;
        let elapsed = started.elapsed().as_secs_f64();
        assert!((0.74..=0.76).contains(&elapsed), "took {elapsed}");
        // Over the first 700, no moment has seen more than either bucket allows.
        for n in 82..=700u32 {
            pacer.write("generate-jitconfig", Write::Create).await;
            let t = started.elapsed().as_secs_f64();
            let n = f64::from(n);
            assert!(n <= CREATIONS_PER_MINUTE + t * CREATIONS_PER_MINUTE / 60.0 + 1e-6);
            assert!(n <= CREATIONS_PER_HOUR + t * CREATIONS_PER_HOUR / 3600.0 + 1e-6);
        }
        let t = started.elapsed().as_secs_f64();
        assert!(
            t > 1400.0,
            "700 creations took {t} s: the hour bucket slowed them"
        );
    }

    /// 100 JIT registrations at the pace the executor asks for them (10 at once, about ten a
    /// second on the bench's engine: docs/benchmarks.md), timed with paused time.
    #[tokio::test(start_paused = true)]
    async fn a_hundred_registrations_at_the_engines_pace() {
        let pacer = Pacer::default();
        let started = Instant::now();
        let mut finished = Vec::new();
        for i in 0..100u32 {
            let asked = Duration::from_millis(100) * i;
            let now = started.elapsed();
            if asked > now {
                tokio::time::sleep(asked - now).await;
            }
            pacer.write("generate-jitconfig", Write::Create).await;
            finished.push(started.elapsed().as_secs_f64());
        }
        let last = finished.last().copied().unwrap_or_default();
        // Unpaced, the last would be asked for at 9.9 s.
        assert!(
            (13.0..=16.0).contains(&last),
            "the 100th registered at {last} s"
        );
        eprintln!("100 registrations asked for at 10/s: the last registered at {last:.1} s");
    }
}
