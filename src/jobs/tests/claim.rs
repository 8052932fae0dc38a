//! `Jobs::claim`: a claim takes the oldest queued job at once, or waits for one (submitted
//! here, requeued by a worker, or announced by another node through the notify) until its
//! deadline or shutdown.

use super::*;
use crate::{
    jobs::testing::Call,
    store::{JobStatus, Report},
};

/// A claim's `wait_ms`, as `examples/worker.rs` sends it.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(start_paused = true)]
async fn a_queued_job_is_claimed_at_once_with_a_lease_from_now() {
    let h = Harness::new();
    let id = h.submit().await;

    let (claimed, at) = Harness::finish(h.spawn_claim(WAIT)).await;

    let claimed = claimed.expect("the queued job");
    assert_eq!(at, Duration::ZERO);
    assert_eq!(claimed.job.id, id);
    assert_eq!(claimed.job.status, JobStatus::Running);
    assert_eq!(claimed.lease_expires_at_ms, EPOCH_MS + 30_000);
    assert!(h.store.calls().contains(&Call::Claim {
        lease_ms: 30_000,
        now_ms: EPOCH_MS
    }));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_claim_takes_a_job_submitted_here_at_once() {
    let h = Harness::new();
    let claim = h.spawn_claim(WAIT);
    h.sleep_until(secs(5)).await;
    assert!(!claim.is_finished(), "nothing to claim yet");

    let id = h.submit().await;

    let (claimed, at) = Harness::finish(claim).await;
    let claimed = claimed.expect("the submitted job");
    assert_eq!(at, secs(5));
    assert_eq!(claimed.job.id, id);
    // The lease runs from when the job was handed over, not from when the claim came in.
    let handed_over = Harness::wall_ms(secs(5));
    assert_eq!(claimed.lease_expires_at_ms, handed_over + 30_000);
    assert_eq!(h.store.claims(), [EPOCH_MS, handed_over]);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_claim_takes_a_job_another_node_announces() {
    let h = Harness::new();
    let claim = h.spawn_claim(WAIT);
    h.sleep_until(secs(5)).await;

    // Another node stored the job; its announcement reaches this node as the notify.
    let id = crate::ids::job_id(EPOCH_MS);
    h.store.insert_queued(&id, Harness::wall_ms(secs(5)));
    h.claimable.notify_waiters();

    let (claimed, at) = Harness::finish(claim).await;
    assert_eq!(claimed.expect("the announced job").job.id, id);
    assert_eq!(at, secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_claim_gives_up_exactly_at_its_deadline() {
    let h = Harness::new();
    let claim = h.spawn_claim(WAIT);

    h.sleep_until(WAIT - millis(1)).await;
    assert!(!claim.is_finished(), "answered before its wait");
    let (claimed, at) = Harness::finish(claim).await;

    assert!(claimed.is_none());
    assert_eq!(at, WAIT);
    // It waited on the notify: it did not poll the store.
    assert_eq!(h.store.claims(), [EPOCH_MS]);
}

#[tokio::test(start_paused = true)]
async fn a_claim_without_a_wait_looks_once_and_answers_at_once() {
    let h = Harness::new();

    let (claimed, at) = Harness::finish(h.spawn_claim(Duration::ZERO)).await;

    assert!(claimed.is_none());
    assert_eq!(at, Duration::ZERO);
    assert_eq!(h.store.claims(), [EPOCH_MS]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_waiting_claim_at_once() {
    let h = Harness::new();
    let claim = h.spawn_claim(WAIT);
    h.sleep_until(secs(7)).await;

    h.shutdown.cancel();

    let (claimed, at) = Harness::finish(claim).await;
    assert!(claimed.is_none());
    assert_eq!(at, secs(7));
    // A claim that comes in during shutdown does not wait either.
    let (claimed, at) = Harness::finish(h.spawn_claim(WAIT)).await;
    assert!(claimed.is_none());
    assert_eq!(at, secs(7));
}

#[tokio::test(start_paused = true)]
async fn one_job_goes_to_one_waiting_claim_and_the_other_waits_on() {
    let h = Harness::new();
    let first = h.spawn_claim(WAIT);
    let second = h.spawn_claim(WAIT);
    h.sleep_until(secs(5)).await;

    let id = h.submit().await;

    let (a, b) = (Harness::finish(first).await, Harness::finish(second).await);
    let (winner, loser) = if a.0.is_some() { (a, b) } else { (b, a) };
    assert_eq!(winner.0.expect("one claim gets the job").job.id, id);
    assert_eq!(winner.1, secs(5));
    // The other is not answered early: it waits for another job until its own deadline.
    assert!(loser.0.is_none());
    assert_eq!(loser.1, WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_job_queued_while_the_claim_looks_is_not_missed() {
    let h = Harness::new();
    // The job is stored and announced after the store found the queue empty, before the
    // claim starts waiting: the claim must already be listening.
    let id = crate::ids::job_id(EPOCH_MS);
    let (store, claimable, queued) = (Arc::clone(&h.store), Arc::clone(&h.claimable), id.clone());
    h.store.after_next_claim(move || {
        store.insert_queued(&queued, EPOCH_MS);
        claimable.notify_waiters();
    });

    let (claimed, at) = Harness::finish(h.spawn_claim(WAIT)).await;

    assert_eq!(claimed.expect("the job queued meanwhile").job.id, id);
    assert_eq!(at, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_submit_wakes_no_claim() {
    let h = Harness::new();
    let payload = Bytes::from_static(b"{\"n\":1}");
    let key = Some("report-2026-11".to_owned());
    let first = h.jobs.submit(payload.clone(), key.clone()).await.unwrap();
    let worker = h.jobs.claim(Duration::ZERO, 30_000, &h.shutdown).await;
    assert_eq!(worker.unwrap().unwrap().job.id, first.job.id);
    let claim = h.spawn_claim(WAIT);
    h.sleep_until(secs(5)).await;
    let looks = h.store.claims().len();

    let replay = h.jobs.submit(payload, key).await.unwrap();

    assert!(replay.replayed);
    h.sleep_until(secs(6)).await;
    assert_eq!(h.store.claims().len(), looks, "no new job, no wake-up");
    let (claimed, at) = Harness::finish(claim).await;
    assert!(claimed.is_none());
    assert_eq!(at, WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_fail_with_retry_hands_the_job_to_a_waiting_claim_at_once() {
    let h = Harness::new();
    let id = h.submit().await;
    let first = h.jobs.claim(Duration::ZERO, 30_000, &h.shutdown).await;
    let first = first.unwrap().expect("the queued job");
    let claim = h.spawn_claim(WAIT);
    h.sleep_until(secs(4)).await;

    let error = raw(r#"{"code":"query_failed"}"#);
    let report = Report::Fail { error, retry: true };
    let job = h.jobs.report(id.clone(), first.lease.clone(), report).await;

    assert_eq!(job.unwrap().status, JobStatus::Queued);
    let (claimed, at) = Harness::finish(claim).await;
    let claimed = claimed.expect("the requeued job");
    assert_eq!(at, secs(4));
    assert_eq!(claimed.job.id, id);
    assert_eq!(claimed.job.attempts, 2);
    assert_ne!(claimed.lease, first.lease);
}

#[tokio::test(start_paused = true)]
async fn reports_that_requeue_nothing_wake_no_claim() {
    let h = Harness::new();
    let (one, two) = (h.submit().await, h.submit().await);
    let first = h.jobs.claim(Duration::ZERO, 30_000, &h.shutdown).await;
    let second = h.jobs.claim(Duration::ZERO, 30_000, &h.shutdown).await;
    let (first, second) = (first.unwrap().unwrap(), second.unwrap().unwrap());
    assert_eq!((&*first.job.id, &*second.job.id), (&*one, &*two));
    let claim = h.spawn_claim(WAIT);
    h.sleep_until(secs(1)).await;
    let looks = h.store.claims().len();

    let reports = [
        (&one, &first.lease, Report::Progress(raw(r#"{"done":1}"#))),
        (&one, &first.lease, Report::Complete(raw(r#"{"rows":[]}"#))),
        (
            &two,
            &second.lease,
            Report::Fail {
                error: raw("null"),
                retry: false,
            },
        ),
    ];
    for (n, (id, lease, report)) in reports.into_iter().enumerate() {
        let job = h
            .jobs
            .report(id.clone(), lease.clone(), report)
            .await
            .unwrap();
        assert_ne!(job.status, JobStatus::Queued);
        h.sleep_until(secs(2 + n as u64)).await;
        assert_eq!(h.store.claims().len(), looks, "woken by report {n}");
    }
    let (claimed, at) = Harness::finish(claim).await;
    assert!(claimed.is_none());
    assert_eq!(at, WAIT);
}
