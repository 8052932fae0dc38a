//! Per-subscriber delivery accounting: which offsets of `1..=expected` arrived, how often,
//! in what order, and a sample of their publish → receive latencies.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope::EventInfo;

/// Latency samples kept across all subscribers of a run, at most (the rest is sampled).
pub const SAMPLE_BUDGET: u64 = 2_000_000;

/// One subscriber's view of the channel.
#[derive(Clone, Debug)]
pub struct Tracker {
    expected: u64,
    seen: Vec<u64>,
    /// Distinct offsets within `1..=expected` received.
    pub distinct: u64,
    /// Offsets received again.
    pub duplicated: u64,
    /// Offsets received after a higher one (first time seen, but late).
    pub out_of_order: u64,
    /// Offsets outside `1..=expected` (someone else publishing on the channel?).
    pub unexpected: u64,
    /// Events whose offset could not be read.
    pub malformed: u64,
    /// `reset` notices (history no longer reached the subscriber's position).
    pub resets: u64,
    max_seen: u64,
    stride: u64,
    received: u64,
    /// Sampled latencies, microseconds.
    pub samples: Vec<u32>,
    /// When the last event arrived, unix microseconds.
    pub last_us: Option<u64>,
}

impl Tracker {
    /// Tracks offsets `1..=expected`, keeping every `stride`-th latency.
    pub fn new(expected: u64, stride: u64) -> Self {
        Self {
            expected,
            seen: vec![0; expected.div_ceil(64) as usize],
            distinct: 0,
            duplicated: 0,
            out_of_order: 0,
            unexpected: 0,
            malformed: 0,
            resets: 0,
            max_seen: 0,
            stride: stride.max(1),
            received: 0,
            samples: Vec::new(),
            last_us: None,
        }
    }

    /// The sampling stride that keeps `subscribers * events` within [`SAMPLE_BUDGET`].
    pub fn stride_for(subscribers: u64, events: u64) -> u64 {
        (subscribers.saturating_mul(events))
            .div_ceil(SAMPLE_BUDGET)
            .max(1)
    }

    /// Records one event received at `now_us` (unix microseconds, the publisher's clock);
    /// returns whether the last expected offset has now arrived (nothing more can come in
    /// order after it).
    pub fn record(&mut self, info: Option<EventInfo>, now_us: u64) -> bool {
        self.last_us = Some(now_us);
        let Some(info) = info else {
            self.malformed += 1;
            return false;
        };
        let offset = info.offset;
        if offset == 0 || offset > self.expected {
            self.unexpected += 1;
            return false;
        }
        let (word, bit) = (((offset - 1) / 64) as usize, (offset - 1) % 64);
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return false;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        if offset < self.max_seen {
            self.out_of_order += 1;
        }
        self.max_seen = self.max_seen.max(offset);
        self.received += 1;
        if let Some(ts) = info.ts_us
            && self.received.is_multiple_of(self.stride)
        {
            let micros = now_us.saturating_sub(ts);
            self.samples.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
        self.max_seen >= self.expected
    }

    /// Offsets of `1..=expected` that never arrived.
    pub fn lost(&self) -> u64 {
        self.expected - self.distinct
    }

    /// Whether the last expected offset arrived.
    pub fn finished(&self) -> bool {
        self.max_seen >= self.expected
    }
}

/// Now, in microseconds since the Unix epoch (the clock the publisher stamps events with).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(offset: u64) -> Option<EventInfo> {
        Some(EventInfo {
            offset,
            ts_us: Some(unix_micros()),
        })
    }

    #[test]
    fn counts_loss_duplicates_and_order() {
        let mut t = Tracker::new(5, 1);
        let now = unix_micros();
        assert!(!t.record(ev(1), now));
        assert!(!t.record(ev(3), now));
        assert!(!t.record(ev(3), now));
        assert!(!t.record(ev(2), now));
        assert!(!t.record(ev(9), now));
        assert!(!t.record(None, now));
        assert!(t.record(ev(5), now));
        assert_eq!(
            (t.distinct, t.lost(), t.duplicated, t.out_of_order),
            (4, 1, 1, 1)
        );
        assert_eq!((t.unexpected, t.malformed), (1, 1));
        assert_eq!(t.samples.len(), 4);
    }

    #[test]
    fn samples_with_a_stride() {
        assert_eq!(Tracker::stride_for(1000, 2000), 1);
        assert_eq!(Tracker::stride_for(10_000, 1000), 5);
        let mut t = Tracker::new(10, 5);
        for o in 1..=10 {
            t.record(ev(o), unix_micros());
        }
        assert_eq!(t.samples.len(), 2);
    }
}
