//! Stall detection for a run's wait loop: the run is stalled when its progress counters
//! have not moved for a while.

use std::time::Duration;

use tokio::time::Instant;

/// Watches progress counters (e.g. published and delivered) between polls.
#[derive(Debug)]
pub struct StallWatch {
    limit: Duration,
    last: (u64, u64),
    last_change: Instant,
}

impl StallWatch {
    /// A watch that calls a run stalled after `limit` without progress.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            last: (0, 0),
            last_change: Instant::now(),
        }
    }

    /// Records the counters now; returns whether they have not moved for the limit.
    pub fn is_stalled(&mut self, now: (u64, u64)) -> bool {
        if now != self.last {
            self.last = now;
            self.last_change = Instant::now();
            false
        } else {
            self.last_change.elapsed() >= self.limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_only_without_progress() {
        let mut watch = StallWatch::new(Duration::from_millis(30));
        assert!(!watch.is_stalled((1, 0)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!watch.is_stalled((1, 1)), "moved");
        assert!(!watch.is_stalled((1, 1)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(watch.is_stalled((1, 1)));
    }
}
