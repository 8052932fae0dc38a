//! A wall clock (unix ms) that moves with Tokio's clock, so `time::advance` moves it too.

use std::sync::Arc;

use tokio::time::Instant;

use crate::time::WallClock;

/// Unix ms at a test's start: fixed, so timestamps and signatures are the same every run.
pub(crate) const EPOCH_MS: i64 = 1_700_000_000_000;

/// [`EPOCH_MS`] plus the Tokio time passed since it was made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TestClock {
    start: Instant,
}

impl TestClock {
    /// Starts at [`EPOCH_MS`] now. Make it inside the test's runtime, after time is paused.
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Unix ms now.
    pub(crate) fn now_ms(&self) -> i64 {
        EPOCH_MS + i64::try_from(self.start.elapsed().as_millis()).expect("a short test")
    }

    /// Milliseconds since the start.
    pub(crate) fn elapsed_ms(&self) -> i64 {
        self.now_ms() - EPOCH_MS
    }

    /// As the dispatcher's clock.
    pub(crate) fn wall(&self) -> WallClock {
        let clock = *self;
        Arc::new(move || clock.now_ms())
    }
}
