//! `Jobs::sweep_leases`: every 200 ms it asks the store to expire leases as of that tick;
//! when jobs were requeued, waiting claims wake; it stops at shutdown.

use super::*;
use crate::{jobs::testing::Expiry, store::JobStatus};

/// `LEASE_SWEEP_INTERVAL`, as docs/jobs.md promises it.
const EVERY: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(30);

impl Harness {
    fn spawn_sweeper(&self) -> JoinHandle<((), Duration)> {
        self.spawn(Arc::clone(&self.jobs).sweep_leases(self.shutdown.clone()))
    }

    /// Submits a job and claims it as a worker: its id.
    async fn running_job(&self) -> String {
        let id = self.submit().await;
        let claimed = self.jobs.claim(Duration::ZERO, 1_000, &self.shutdown);
        assert_eq!(claimed.await.unwrap().expect("queued").job.id, id);
        id
    }
}

#[tokio::test(start_paused = true)]
async fn leases_are_expired_every_200_ms_as_of_each_tick() {
    let h = Harness::new();
    let _sweeper = h.spawn_sweeper();

    let mut expected = Vec::new();
    for tick in 0..6 {
        expected.push(Harness::wall_ms(EVERY * tick));
        // Halfway between two ticks.
        h.sleep_until(EVERY * tick + EVERY / 2).await;
        assert_eq!(h.store.expiries(), expected, "by tick {tick}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_sweep_that_requeued_a_job_hands_it_to_a_waiting_claim() {
    let h = Harness::new();
    let id = h.running_job().await;
    h.store
        .script_expiries([Expiry::Count(0), Expiry::Requeue(vec![id.clone()])]);
    let claim = h.spawn_claim(WAIT);
    let _sweeper = h.spawn_sweeper();

    let (claimed, at) = Harness::finish(claim).await;

    let claimed = claimed.expect("the requeued job");
    assert_eq!(at, EVERY);
    assert_eq!(claimed.job.id, id);
    assert_eq!(claimed.job.attempts, 2);
    assert_eq!(h.store.job(&id).status, JobStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn only_a_sweep_that_requeued_something_wakes_claims() {
    let h = Harness::new();
    // Another node's worker held the job: it is requeued there, and claims here look again.
    h.store
        .script_expiries([Expiry::Count(0), Expiry::Count(0), Expiry::Count(2)]);
    let claim = h.spawn_claim(WAIT);
    let _sweeper = h.spawn_sweeper();

    h.sleep_until(EVERY * 2 + EVERY / 2).await;

    assert_eq!(h.store.expiries().len(), 3);
    assert_eq!(
        h.store.claims(),
        [EPOCH_MS, Harness::wall_ms(EVERY * 2)],
        "looked at the start and after the third sweep only"
    );
    // Nothing was left to claim here: it waits on.
    let (claimed, at) = Harness::finish(claim).await;
    assert!(claimed.is_none());
    assert_eq!(at, WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_failed_sweep_is_retried_at_the_next_tick() {
    let h = Harness::new();
    let id = h.running_job().await;
    h.store
        .script_expiries([Expiry::Fail, Expiry::Requeue(vec![id.clone()])]);
    let claim = h.spawn_claim(WAIT);
    let _sweeper = h.spawn_sweeper();

    let (claimed, at) = Harness::finish(claim).await;

    assert_eq!(claimed.expect("the requeued job").job.id, id);
    assert_eq!(at, EVERY);
    assert_eq!(
        h.store.claims().len(),
        3,
        "the worker's, then the waiting claim's two"
    );
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_stops_at_shutdown() {
    let h = Harness::new();
    let sweeper = h.spawn_sweeper();
    h.sleep_until(EVERY + EVERY / 2).await;

    h.shutdown.cancel();

    let ((), at) = Harness::finish(sweeper).await;
    assert_eq!(at, EVERY + EVERY / 2);
    h.sleep_until(EVERY * 10).await;
    assert_eq!(h.store.expiries().len(), 2, "swept after shutdown");
}
