//! Counters of one node's Redis connections, shared by its hub and store, for `/metrics`.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

/// What `/metrics` reports of Redis on this node.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Whether the hub's pub/sub connection is up with its topics subscribed: live events
    /// from other nodes arrive only then.
    up: AtomicBool,
    /// Times the pub/sub connection was made again after it was lost or refused.
    reconnects: AtomicU64,
    /// Redis operations that failed or timed out (the caller answered 503 or retries).
    errors: AtomicU64,
}

impl RedisStats {
    /// Runs one Redis operation within `limit`; a failure or a timeout is counted and
    /// described, for the caller to answer as unavailable.
    pub(crate) async fn bounded<T>(
        &self,
        limit: Duration,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        let error = match tokio::time::timeout(limit, op).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("redis: {e}"),
            Err(_) => format!("redis did not answer within {limit:?}"),
        };
        self.failed();
        Err(error)
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Failed or timed-out operations so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
