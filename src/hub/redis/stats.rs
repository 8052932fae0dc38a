//! Counters of one node's Redis connections, shared by its hub and store, for `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
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
