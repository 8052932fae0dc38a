//! The jobs service against an in-memory store and the memory hub, under paused Tokio time:
//! no socket, no real sleep, and every wait bounded in Tokio time. Times are asserted in
//! Tokio time elapsed since the test started, and the wall clock the store is given follows
//! it ([`EPOCH_MS`] at the start).

mod claim;
mod get_after_change;
mod prune;
mod sweep_leases;

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Jobs, request_hash};
use crate::{
    config::{Config, JobsConfig},
    hub::{Bus, Publish},
    jobs::{
        channel::job_channel,
        testing::{FakeStore, SpyHub},
    },
    store::Claimed,
    time::WallClock,
};

/// Unix ms when a test starts.
const EPOCH_MS: i64 = 1_700_000_000_000;
/// Longest any single wait may take, in Tokio time (paused: it costs no real time).
const PATIENCE: Duration = Duration::from_secs(600);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The documented defaults (`config.default.toml`).
fn config() -> JobsConfig {
    Config::default().jobs
}

/// `json` as worker JSON.
fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("valid JSON")
}

/// The service over a [`FakeStore`] and a [`SpyHub`], with its clock at [`EPOCH_MS`].
struct Harness {
    start: Instant,
    store: Arc<FakeStore>,
    hub: Arc<SpyHub>,
    claimable: Arc<Notify>,
    jobs: Arc<Jobs>,
    shutdown: CancellationToken,
}

impl Harness {
    /// Make it inside the test's runtime (time already paused).
    fn new() -> Self {
        Self::with_config(config())
    }

    fn with_config(config: JobsConfig) -> Self {
        let start = Instant::now();
        let store = Arc::new(FakeStore::default());
        let hub = Arc::new(SpyHub::new());
        let claimable = Arc::new(Notify::new());
        let jobs = Arc::new(Jobs::with_clock(
            Arc::clone(&store) as _,
            Arc::clone(&hub) as _,
            config,
            Arc::clone(&claimable),
            clock(start),
        ));
        Self {
            start,
            store,
            hub,
            claimable,
            jobs,
            shutdown: CancellationToken::new(),
        }
    }

    /// Tokio time since the start.
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The wall clock (unix ms) `after` the start.
    fn wall_ms(after: Duration) -> i64 {
        EPOCH_MS + i64::try_from(after.as_millis()).expect("a short test")
    }

    /// Waits until `at` after the start (in Tokio time: the runtime first runs every task
    /// due before).
    async fn sleep_until(&self, at: Duration) {
        assert!(self.elapsed() <= at, "{at:?} is in the past");
        tokio::time::sleep_until(self.start + at).await;
    }

    /// Runs `fut` in its own task; its handle gives its output and when it came.
    fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<(T, Duration)> {
        let start = self.start;
        tokio::spawn(async move {
            let out = fut.await;
            (out, start.elapsed())
        })
    }

    /// The output of a task from [`Self::spawn`] and when it came.
    async fn finish<T>(handle: JoinHandle<(T, Duration)>) -> (T, Duration) {
        tokio::time::timeout(PATIENCE, handle)
            .await
            .expect("the task ends in time")
            .expect("the task does not panic")
    }

    /// Submits a job through the service; its id.
    async fn submit(&self) -> String {
        let submitted = self
            .jobs
            .submit(Bytes::from_static(b"{\"n\":1}"), None)
            .await
            .expect("submitted");
        submitted.job.id
    }

    /// A claim waiting up to `wait`, in its own task.
    fn spawn_claim(&self, wait: Duration) -> JoinHandle<(Option<Claimed>, Duration)> {
        let jobs = Arc::clone(&self.jobs);
        let shutdown = self.shutdown.clone();
        self.spawn(async move {
            jobs.claim(wait, 30_000, &shutdown)
                .await
                .expect("the store answers")
        })
    }

    /// Publishes `event_type` with `data` on job `id`'s channel.
    async fn publish(&self, id: &str, event_type: &str, data: &str) {
        let channel = job_channel(id);
        let data = raw(data);
        self.hub
            .memory()
            .publish(Publish {
                channel: &channel,
                event_type,
                data: &data,
                idempotency_key: None,
            })
            .await
            .expect("memory job channels take publishes without a durable store");
    }
}

/// A wall clock (unix ms) at [`EPOCH_MS`] at `start` that moves with Tokio's clock.
fn clock(start: Instant) -> WallClock {
    Arc::new(move || Harness::wall_ms(start.elapsed()))
}

#[test]
fn request_hash_is_stable() {
    assert_eq!(request_hash(b"{}"), request_hash(b"{}"));
    assert_ne!(request_hash(b"{}"), request_hash(b"[]"));
    assert_eq!(request_hash(b""), 0xcbf2_9ce4_8422_2325_u64 as i64);
}
