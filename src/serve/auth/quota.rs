//! Per-identity request quotas: a token bucket per key or identity name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A bucket: `tokens` left, refilled at `rate` per second up to `burst`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Refills for the time since the last call, then takes one request; `false` when empty.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The buckets of every identity seen.
#[derive(Debug, Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Quotas {
    /// Takes one request from `name`'s bucket; `false` when it is empty. A new identity starts
    /// with a full bucket; its name is copied once, not on every call.
    pub fn take(&self, name: &str, rate: f64, burst: u32) -> bool {
        let burst = f64::from(burst.max(1));
        let now = Instant::now();
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(bucket) = buckets.get_mut(name) {
            return bucket.take(now, rate, burst);
        }
        let mut bucket = Bucket {
            tokens: burst,
            last: now,
        };
        let taken = bucket.take(now, rate, burst);
        buckets.insert(name.to_owned(), bucket);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses() {
        let q = Quotas::default();
        assert!((0..5).all(|_| q.take("a", 0.001, 5)));
        assert!(!q.take("a", 0.001, 5));
        assert!(q.take("b", 0.001, 5), "buckets are per identity");
    }

    #[test]
    fn an_empty_bucket_refills_at_its_rate() {
        let q = Quotas::default();
        assert!((0..3).all(|_| q.take("a", 0.001, 3)));
        assert!(!q.take("a", 0.001, 3));
        // After a millisecond, a rate of a billion a second has refilled the bucket.
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(q.take("a", 1e9, 3));
        assert_eq!(q.buckets.lock().map(|b| b.len()).unwrap_or(0), 1);
    }
}
