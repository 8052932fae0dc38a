//! The embedded hub's memory budgets: bytes of history (and idempotency keys) per channel
//! and server-wide, and the channels that hold published state (`limits.max_channels`).
//!
//! Counts alone let 3 channels of 1000 events of 1 MiB take 3 GB. Bytes are counted as
//! events enter and leave a channel's history; past a channel's budget its own oldest
//! events go, and past the server-wide one the largest channels lose their oldest events
//! first, down to a common level (see [`level_to_free`]), so one busy channel pays for its
//! size and small channels keep their history.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::hub::HubError;

/// The limits and the running totals, shared by every channel of one hub.
#[derive(Debug)]
pub struct Budget {
    /// Bytes one channel's history and idempotency keys may hold.
    pub channel_bytes: usize,
    /// Bytes every channel together may hold.
    pub total_bytes: usize,
    /// Channels that may hold published state at once.
    pub max_channels: usize,
    held: AtomicUsize,
    published_channels: AtomicUsize,
    trimming: AtomicBool,
    /// No trim before this (wall-clock ms): set when a trim could not get under the
    /// budget (durable channels are never cut), so publishes do not each scan every
    /// channel in vain.
    quiet_until_ms: AtomicU64,
    /// Events dropped for the channel's budget, and for the server-wide one.
    pub evicted_for_channel: AtomicU64,
    pub evicted_for_total: AtomicU64,
    /// Idempotency keys forgotten early to stay within a channel's budget.
    pub keys_evicted: AtomicU64,
}

impl Budget {
    /// Budgets of `channel_bytes` per channel, `total_bytes` in all, `max_channels`
    /// channels with published state.
    pub fn new(channel_bytes: usize, total_bytes: usize, max_channels: usize) -> Self {
        Self {
            channel_bytes,
            total_bytes,
            max_channels,
            held: AtomicUsize::new(0),
            published_channels: AtomicUsize::new(0),
            trimming: AtomicBool::new(false),
            quiet_until_ms: AtomicU64::new(0),
            evicted_for_channel: AtomicU64::new(0),
            evicted_for_total: AtomicU64::new(0),
            keys_evicted: AtomicU64::new(0),
        }
    }

    /// Bytes held by every channel.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// Channels holding published state.
    pub fn published_channels(&self) -> usize {
        self.published_channels.load(Relaxed)
    }

    /// Records a channel's change from `before` to `after` bytes.
    pub fn moved(&self, before: usize, after: usize) {
        if after > before {
            self.held.fetch_add(after - before, Relaxed);
        } else {
            self.held.fetch_sub(before - after, Relaxed);
        }
    }

    /// Counts one more channel with published state.
    ///
    /// # Errors
    /// [`HubError::TooManyChannels`] when `max_channels` already hold some.
    pub fn admit_channel(&self) -> Result<(), HubError> {
        self.published_channels
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < self.max_channels).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| HubError::TooManyChannels)
    }

    /// Counts one channel with published state less.
    pub fn release_channel(&self) {
        self.published_channels.fetch_sub(1, Relaxed);
    }

    /// Whether the server-wide budget is exceeded and nobody is trimming yet; the caller
    /// then trims and calls [`Budget::trimmed`].
    pub fn begin_trim(&self) -> bool {
        self.held() > self.total_bytes
            && u64::try_from(crate::time::now_ms()).unwrap_or(0)
                >= self.quiet_until_ms.load(Relaxed)
            && !self.trimming.swap(true, Relaxed)
    }

    /// Ends a trim begun with [`Budget::begin_trim`]; one that left the total over the
    /// budget holds the next off for a second.
    pub fn trimmed(&self) {
        if self.held() > self.total_bytes {
            let now = u64::try_from(crate::time::now_ms()).unwrap_or(0);
            self.quiet_until_ms.store(now + 1000, Relaxed);
        }
        self.trimming.store(false, Relaxed);
    }

    /// The bytes a trim brings the total down to: 90% of the budget, so trims are rare
    /// rather than one per publish at the limit.
    pub fn trim_target(&self) -> usize {
        self.total_bytes / 10 * 9
    }
}

/// The level every channel above it is cut down to so that `sizes` (largest first) free
/// at least `excess` bytes: the largest channels lose their oldest events first, and no
/// channel is cut below a smaller one's size.
pub fn level_to_free(sizes: &[usize], excess: usize) -> usize {
    let mut sum = 0;
    for (k, size) in sizes.iter().enumerate() {
        sum += size;
        let next = sizes.get(k + 1).copied().unwrap_or(0);
        let freed_at_next = sum - (k + 1) * next;
        if freed_at_next >= excess {
            return (sum - excess) / (k + 1);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_channels_are_levelled_first() {
        // 100 + 60 + 10: freeing 50 cuts the largest to 60 and leaves the others.
        assert_eq!(level_to_free(&[100, 60, 10], 40), 60);
        // Freeing 60 cuts the two largest to 50 each.
        assert_eq!(level_to_free(&[100, 60, 10], 60), 50);
        // More than they hold above the smallest: all three to a common level.
        assert_eq!(level_to_free(&[100, 60, 10], 140), 10);
        assert_eq!(level_to_free(&[100, 60, 10], 150), 6);
        assert_eq!(level_to_free(&[100, 60, 10], 500), 0);
        assert_eq!(level_to_free(&[], 5), 0);
    }

    #[test]
    fn channels_with_published_state_are_admitted_up_to_the_limit() {
        let b = Budget::new(10, 100, 2);
        b.admit_channel().unwrap();
        b.admit_channel().unwrap();
        assert!(matches!(b.admit_channel(), Err(HubError::TooManyChannels)));
        b.release_channel();
        b.admit_channel().unwrap();
    }
}
