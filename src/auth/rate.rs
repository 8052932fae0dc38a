//! Token-bucket rate limits keyed by client address or API key: `rate` requests per
//! second on average, bursts up to `burst`; a refusal says when to retry.

use std::{
    hash::Hash,
    time::{Duration, Instant},
};

use dashmap::DashMap;

/// Most buckets held between sweeps. Addresses behind a trusted proxy come from
/// `X-Forwarded-For`, which a client writes: without a cap a flood of made-up addresses
/// would grow the map for a whole sweep interval. Past it, a client not already tracked is
/// refused until the next sweep frees room.
pub const MAX_BUCKETS: usize = 200_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One limit applied per key.
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: DashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `rate` requests per second with bursts of `burst`; `rate` 0 disables the limit.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: DashMap::new(),
        }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one token for `key` at `now`, or says how long until one is there.
    ///
    /// # Errors
    /// The wait before a retry can succeed.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        // `len` visits every shard: only new clients pay for it.
        if !self.buckets.contains_key(key) && self.buckets.len() >= MAX_BUCKETS {
            return Err(Duration::from_secs(1));
        }
        let mut bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// Drops buckets that have refilled completely (they behave like absent ones), so
    /// memory follows the clients active lately, not every client ever seen.
    pub fn sweep(&self, now: Instant) {
        if !self.enabled() {
            return;
        }
        let refill = Duration::from_secs_f64(self.burst / self.rate);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at) < refill);
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Whole seconds for a `Retry-After` header: never 0, so clients do wait.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check(&"a", t0).unwrap();
        }
        let wait = limiter.check(&"a", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Another key has its own bucket.
        limiter.check(&"b", t0).unwrap();
        // 100 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        limiter.check(&"a", t1).unwrap();
        assert!(limiter.check(&"a", t1).is_err());
    }

    #[test]
    fn new_clients_past_the_cap_wait_for_a_sweep() {
        let limiter = RateLimiter::new(1.0, 1);
        let t0 = Instant::now();
        for n in 0..MAX_BUCKETS {
            limiter.check(&n, t0).unwrap();
        }
        assert!(
            limiter.check(&MAX_BUCKETS, t0).is_err(),
            "no room for a new one"
        );
        limiter.check(&0, t0 + Duration::from_secs(1)).unwrap();
        limiter.sweep(t0 + Duration::from_secs(5));
        limiter
            .check(&MAX_BUCKETS, t0 + Duration::from_secs(5))
            .unwrap();
    }

    #[test]
    fn sweep_forgets_full_buckets_only() {
        let limiter = RateLimiter::new(10.0, 5);
        let t0 = Instant::now();
        limiter.check(&1, t0).unwrap();
        limiter.check(&2, t0 + Duration::from_millis(400)).unwrap();
        limiter.sweep(t0 + Duration::from_millis(600));
        assert_eq!(
            limiter.len(),
            1,
            "bucket 1 is full again (5 tokens / 10 per s)"
        );
    }

    #[test]
    fn rate_zero_is_off() {
        let limiter = RateLimiter::new(0.0, 1);
        for _ in 0..1000 {
            limiter.check(&"a", Instant::now()).unwrap();
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
