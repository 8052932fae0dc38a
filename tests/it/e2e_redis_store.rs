//! The Redis job store against a private redis-server, with several `RedisStore`s as
//! several nodes: the embedded store's semantics (submit and idempotent replay, claims
//! exactly once, leases, retries, lease expiry, cancel, retention) and the job's events on
//! `jobs/{id}` as a `RedisHub` on another node serves them.

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::{Value, json, value::RawValue};
use switchyard::{
    engine::redis::{RedisHub, RedisHubConfig, RedisStore, RedisStoreConfig},
    hub::{Bus, Event},
    jobs::channel::job_channel,
    store::{Claimed, JobStatus, NewJob, Report, Store, StoreError},
};
use switchyard_transports::hub::{Hub, Inbox, Received, Sink, StartFrom, new_pair};

use crate::support::{redis::RedisServer, within};

async fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::connect(
        &redis.url(),
        RedisStoreConfig {
            op_timeout: Duration::from_millis(1000),
            ..RedisStoreConfig::default()
        },
    )
    .await
    .expect("connects to redis")
}

async fn hub(redis: &RedisServer, history_size: usize, history_ttl: Duration) -> RedisHub {
    RedisHub::connect(
        &redis.url(),
        RedisHubConfig {
            max_channels: 100,
            op_timeout: Duration::from_millis(1000),
            ..RedisHubConfig::with_history(history_size, history_ttl)
        },
    )
    .await
    .expect("connects to redis")
}

/// A fresh job id (the shape the jobs service makes).
fn new_id(n: u64) -> String {
    let mut random = [0u8; 12];
    getrandom::fill(&mut random).unwrap();
    let mut id = format!("{:012x}", 0x0100_0000_0000_u64 + n);
    for b in random {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

fn new_job(
    id: &str,
    payload: &str,
    key: Option<(&str, i64)>,
    max_attempts: u32,
    now_ms: i64,
) -> NewJob {
    NewJob {
        id: id.to_owned(),
        payload: Bytes::from(payload.to_owned()),
        idempotency: key.map(|(k, h)| (k.to_owned(), h)),
        max_attempts,
        now_ms,
    }
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

async fn submit(store: &RedisStore, n: u64, max_attempts: u32, now_ms: i64) -> String {
    let id = new_id(n);
    let s = store
        .submit(new_job(&id, "{\"n\": 1}", None, max_attempts, now_ms))
        .await
        .unwrap();
    assert!(!s.replayed);
    id
}

async fn claim(store: &RedisStore, lease_ms: u64, now_ms: i64) -> Claimed {
    store
        .claim(lease_ms, now_ms)
        .await
        .unwrap()
        .expect("a queued job")
}

async fn status(store: &RedisStore, id: &str) -> JobStatus {
    store.get(id).await.unwrap().expect("the job exists").status
}

/// (offset, type, data) of an event, from its envelope.
fn parts(e: &Event) -> (u64, String, Value) {
    let envelope: Value = serde_json::from_slice(e.envelope()).unwrap();
    (
        e.offset(),
        e.event_type().to_owned(),
        envelope["data"].clone(),
    )
}

async fn subscribe(hub: &RedisHub, id: &str, from: StartFrom) -> (Sink, Inbox, Vec<Arc<Event>>) {
    let (sink, inbox) = new_pair(1024, None);
    let opened = hub.subscribe(&job_channel(id), from, &sink).await.unwrap();
    (sink, inbox, opened.replay)
}

async fn next(inbox: &mut Inbox) -> Arc<Event> {
    match within("a live job event", inbox.recv()).await {
        Received::Event(e) => e,
        other => panic!("the inbox was disconnected: {other:?}"),
    }
}

macro_rules! redis_or_skip {
    ($name:literal) => {
        match RedisServer::start($name).await {
            Some(r) => r,
            None => return,
        }
    };
}

#[tokio::test]
async fn submit_get_and_idempotent_replay_across_nodes() {
    let redis = redis_or_skip!("submit_get_and_idempotent_replay_across_nodes");
    let (a, b) = (store(&redis).await, store(&redis).await);
    let id = new_id(1);
    let first = a
        .submit(new_job(&id, "{\"q\": 1}", Some(("key-1", 42)), 3, 1_000))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.job.id, id);
    assert_eq!(first.job.status, JobStatus::Queued);
    assert_eq!((first.job.attempts, first.job.max_attempts), (0, 3));
    assert_eq!(
        (first.job.created_at_ms, first.job.updated_at_ms),
        (1_000, 1_000)
    );
    assert!(first.job.result.is_none() && first.job.error.is_none());

    // The same key and request on another node: the first job, nothing new queued.
    let again = b
        .submit(new_job(
            &new_id(2),
            "{\"q\": 1}",
            Some(("key-1", 42)),
            3,
            2_000,
        ))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.job.id, id);
    assert_eq!(again.job.created_at_ms, 1_000);
    // The same key for another request: conflict.
    let other = b
        .submit(new_job(
            &new_id(3),
            "{\"q\": 2}",
            Some(("key-1", 43)),
            3,
            2_000,
        ))
        .await;
    assert!(
        matches!(other, Err(StoreError::IdempotencyConflict)),
        "{other:?}"
    );

    let got = b.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (got.id.as_str(), got.status),
        (id.as_str(), JobStatus::Queued)
    );
    assert!(b.get(&new_id(4)).await.unwrap().is_none());
    let c = claim(&b, 30_000, 3_000).await;
    assert_eq!(c.job.id, id);
    assert_eq!(&c.payload[..], b"{\"q\": 1}", "the payload byte for byte");
    assert!(
        b.claim(30_000, 3_000).await.unwrap().is_none(),
        "one job, one claim"
    );
    a.ping().await.unwrap();
    a.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn three_nodes_racing_claim_every_job_exactly_once_oldest_first() {
    let redis = redis_or_skip!("three_nodes_racing_claim_every_job_exactly_once_oldest_first");
    let nodes = [
        store(&redis).await,
        store(&redis).await,
        store(&redis).await,
    ];
    let mut submitted = Vec::new();
    for n in 0..60 {
        submitted.push(submit(&nodes[(n % 3) as usize], n, 3, 1_000 + n as i64).await);
    }
    let nodes: Vec<Arc<RedisStore>> = nodes.into_iter().map(Arc::new).collect();
    let mut workers = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let node = Arc::clone(node);
            workers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(c) = node.claim(30_000, 5_000).await.unwrap() {
                    assert_eq!((c.job.status, c.job.attempts), (JobStatus::Running, 1));
                    got.push(c.job.id);
                }
                got
            }));
        }
    }
    let mut all = Vec::new();
    for w in workers {
        let got = within("the claimers", w).await.unwrap();
        // Each claimer takes jobs in queue order.
        let mut sorted = got.clone();
        sorted.sort_by_key(|id| submitted.iter().position(|s| s == id));
        assert_eq!(got, sorted);
        all.extend(got);
    }
    assert_eq!(all.len(), 60, "every job claimed once");
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        60,
        "no job claimed twice"
    );
    for id in &submitted {
        assert_eq!(status(&nodes[0], id).await, JobStatus::Running);
    }
}

#[tokio::test]
async fn reports_need_the_current_lease() {
    let redis = redis_or_skip!("reports_need_the_current_lease");
    let (a, b) = (store(&redis).await, store(&redis).await);
    let id = submit(&a, 1, 3, 1_000).await;
    let c = claim(&b, 10_000, 2_000).await;
    assert_eq!(c.lease_expires_at_ms, 12_000);
    assert_eq!(c.job.updated_at_ms, 2_000);

    let wrong = a
        .report(
            id.clone(),
            "not-the-lease".into(),
            Report::Progress(raw("1")),
            3_000,
        )
        .await;
    assert!(
        matches!(wrong, Err(StoreError::StaleLease("running"))),
        "{wrong:?}"
    );
    let unknown = a
        .report(
            new_id(9),
            c.lease.clone(),
            Report::Progress(raw("1")),
            3_000,
        )
        .await;
    assert!(matches!(unknown, Err(StoreError::NotFound)), "{unknown:?}");

    // Progress extends the lease: by `lease_ms` from now, so an expiry sweep at the old
    // deadline leaves it running.
    let p = a
        .report(
            id.clone(),
            c.lease.clone(),
            Report::Progress(raw("{\"done\": 1}")),
            5_000,
        )
        .await
        .unwrap();
    assert_eq!((p.status, p.updated_at_ms), (JobStatus::Running, 5_000));
    assert_eq!(b.expire_leases(12_000).await.unwrap(), 0);
    assert_eq!(status(&a, &id).await, JobStatus::Running);

    let done = b
        .report(
            id.clone(),
            c.lease.clone(),
            Report::Complete(raw("{\"rows\": [1, 2]}")),
            6_000,
        )
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result.as_ref().unwrap().get(), "{\"rows\": [1, 2]}");
    let late = a
        .report(id.clone(), c.lease, Report::Complete(raw("1")), 7_000)
        .await;
    assert!(
        matches!(late, Err(StoreError::StaleLease("succeeded"))),
        "{late:?}"
    );
    assert_eq!(
        b.expire_leases(100_000).await.unwrap(),
        0,
        "an ended job has no lease"
    );
    let got = a.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.updated_at_ms),
        (JobStatus::Succeeded, 6_000)
    );
}

#[tokio::test]
async fn fail_with_retry_requeues_until_attempts_run_out() {
    let redis = redis_or_skip!("fail_with_retry_requeues_until_attempts_run_out");
    let (a, b) = (store(&redis).await, store(&redis).await);
    let id = submit(&a, 1, 2, 1_000).await;
    let other = submit(&a, 2, 2, 1_500).await;
    let c = claim(&a, 30_000, 2_000).await;
    assert_eq!(c.job.id, id);
    let r = b
        .report(
            id.clone(),
            c.lease.clone(),
            Report::Fail {
                error: raw("\"flaky\""),
                retry: true,
            },
            3_000,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.attempts), (JobStatus::Queued, 1));
    assert!(r.error.is_none(), "a retried failure's error is not kept");
    let stale = b
        .report(id.clone(), c.lease, Report::Progress(raw("1")), 3_100)
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleLease("queued"))),
        "{stale:?}"
    );

    // Requeued at the back: the other job first.
    assert_eq!(claim(&b, 30_000, 4_000).await.job.id, other);
    let c = claim(&b, 30_000, 4_000).await;
    assert_eq!((c.job.id.as_str(), c.job.attempts), (id.as_str(), 2));
    let r = a
        .report(
            id.clone(),
            c.lease,
            Report::Fail {
                error: raw("{\"why\": \"still flaky\"}"),
                retry: true,
            },
            5_000,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.attempts), (JobStatus::Failed, 2));
    assert_eq!(r.error.unwrap().get(), "{\"why\": \"still flaky\"}");

    // Without retry, one attempt is enough to fail.
    let third = submit(&a, 3, 5, 6_000).await;
    let c = claim(&a, 30_000, 6_000).await;
    let r = a
        .report(
            third,
            c.lease,
            Report::Fail {
                error: raw("\"no\""),
                retry: false,
            },
            7_000,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.attempts), (JobStatus::Failed, 1));
}

#[tokio::test]
async fn expired_leases_requeue_then_the_last_attempt_fails() {
    let redis = redis_or_skip!("expired_leases_requeue_then_the_last_attempt_fails");
    let (a, b) = (store(&redis).await, store(&redis).await);
    let id = submit(&a, 1, 2, 1_000).await;
    let c = claim(&a, 100, 2_000).await;
    assert_eq!(b.expire_leases(2_099).await.unwrap(), 0, "not yet");
    assert_eq!(b.expire_leases(2_100).await.unwrap(), 1);
    let j = a.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.attempts, j.updated_at_ms),
        (JobStatus::Queued, 1, 2_100)
    );
    let stale = a
        .report(id.clone(), c.lease, Report::Complete(raw("1")), 2_200)
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleLease("queued"))),
        "{stale:?}"
    );

    let c = claim(&b, 100, 3_000).await;
    assert_eq!(c.job.attempts, 2);
    // The last attempt's lease runs out: failed for good (not counted as requeued).
    assert_eq!(a.expire_leases(3_100).await.unwrap(), 0);
    let j = a.get(&id).await.unwrap().unwrap();
    assert_eq!((j.status, j.attempts), (JobStatus::Failed, 2));
    assert_eq!(
        j.error.unwrap().get(),
        r#"{"code":"lease_expired","message":"the worker's lease ran out on the last attempt"}"#
    );
    assert!(a.claim(100, 4_000).await.unwrap().is_none());
}

#[tokio::test]
async fn cancel_ends_queued_and_running_jobs() {
    let redis = redis_or_skip!("cancel_ends_queued_and_running_jobs");
    let (a, b) = (store(&redis).await, store(&redis).await);
    let queued = submit(&a, 1, 3, 1_000).await;
    let running = submit(&a, 2, 3, 1_001).await;
    let canceled = b.cancel(queued.clone(), 2_000).await.unwrap();
    assert_eq!(
        (canceled.status, canceled.updated_at_ms),
        (JobStatus::Canceled, 2_000)
    );
    // A canceled job leaves the queue.
    let c = claim(&a, 30_000, 2_500).await;
    assert_eq!(c.job.id, running);
    assert_eq!(
        b.cancel(running.clone(), 3_000).await.unwrap().status,
        JobStatus::Canceled
    );
    let stale = a
        .report(running.clone(), c.lease, Report::Progress(raw("1")), 3_100)
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleLease("canceled"))),
        "{stale:?}"
    );
    let again = b.cancel(running.clone(), 3_200).await;
    assert!(
        matches!(again, Err(StoreError::Finished("canceled"))),
        "{again:?}"
    );
    let unknown = b.cancel(new_id(9), 3_200).await;
    assert!(matches!(unknown, Err(StoreError::NotFound)), "{unknown:?}");
    assert_eq!(a.expire_leases(1_000_000).await.unwrap(), 0);
    assert!(a.claim(30_000, 4_000).await.unwrap().is_none());
}

#[tokio::test]
async fn prune_deletes_old_finished_jobs_with_their_channel_and_key() {
    let redis = redis_or_skip!("prune_deletes_old_finished_jobs_with_their_channel_and_key");
    let a = store(&redis).await;
    let old = new_id(1);
    a.submit(new_job(&old, "1", Some(("k-old", 1)), 3, 1_000))
        .await
        .unwrap();
    let c = claim(&a, 30_000, 1_100).await;
    a.report(old.clone(), c.lease, Report::Complete(raw("1")), 1_200)
        .await
        .unwrap();
    let recent = submit(&a, 2, 3, 1_300).await;
    a.cancel(recent.clone(), 5_000).await.unwrap();
    let queued = submit(&a, 3, 3, 1_400).await;
    let running = submit(&a, 4, 3, 1_500).await;
    assert_eq!(claim(&a, 30_000, 1_600).await.job.id, queued);

    assert_eq!(
        a.prune(1_200, 0).await.unwrap(),
        (0, 0),
        "strictly before the cut-off"
    );
    assert_eq!(a.prune(2_000, 0).await.unwrap(), (1, 0));
    assert!(a.get(&old).await.unwrap().is_none());
    for key in [
        format!("sy:{{jobs/{old}}}:meta"),
        format!("sy:{{jobs/{old}}}:h"),
        "sy:jobs:idem:k-old".into(),
    ] {
        let exists: i64 = redis.query(redis::cmd("EXISTS").arg(&key)).await.unwrap();
        assert_eq!(exists, 0, "{key} is deleted");
    }
    for id in [&recent, &queued, &running] {
        assert!(a.get(id).await.unwrap().is_some(), "{id} stays");
    }
    // The key is free again once its job is gone.
    let fresh = a
        .submit(new_job(&new_id(5), "1", Some(("k-old", 1)), 3, 6_000))
        .await
        .unwrap();
    assert!(!fresh.replayed);
    assert_eq!(
        a.prune(1_000_000, 0).await.unwrap(),
        (1, 0),
        "the canceled one"
    );
}

#[tokio::test]
async fn job_events_reach_a_redis_hub_on_another_node_in_order() {
    let redis = redis_or_skip!("job_events_reach_a_redis_hub_on_another_node_in_order");
    let (a, b) = (store(&redis).await, store(&redis).await);
    // A one-second, two-event history: job channels ignore the age and keep every event
    // (replay serves the latest `history_size` of them, as the embedded store's channels).
    let hub_node = hub(&redis, 4, Duration::from_secs(1)).await;
    let id = new_id(1);
    // Subscribed before the job exists, as a client with the id from a 202 may be.
    let (_sink, mut inbox, replay) = subscribe(&hub_node, &id, StartFrom::Offset(0)).await;
    assert!(replay.is_empty());

    a.submit(new_job(&id, "{}", None, 3, 1_000)).await.unwrap();
    let c = claim(&b, 30_000, 1_100).await;
    let fail = Report::Fail {
        error: raw("{\"code\": \"x\"}"),
        retry: true,
    };
    a.report(id.clone(), c.lease, fail, 1_200).await.unwrap();
    let c = claim(&b, 30_000, 1_300).await;
    b.report(
        id.clone(),
        c.lease.clone(),
        Report::Progress(raw("{\"done\": 1, \"total\": 2}")),
        1_400,
    )
    .await
    .unwrap();
    b.report(
        id.clone(),
        c.lease,
        Report::Complete(raw("{\"rows\": []}")),
        1_500,
    )
    .await
    .unwrap();
    let expected = vec![
        (
            1,
            "job.queued".to_owned(),
            json!({"status": "queued", "attempts": 0}),
        ),
        (
            2,
            "job.started".to_owned(),
            json!({"status": "running", "attempt": 1}),
        ),
        (
            3,
            "job.queued".to_owned(),
            json!({"status": "queued", "attempts": 1, "reason": "retry", "error": {"code": "x"}}),
        ),
        (
            4,
            "job.started".to_owned(),
            json!({"status": "running", "attempt": 2}),
        ),
        (5, "job.progress".to_owned(), json!({"done": 1, "total": 2})),
        (
            6,
            "job.completed".to_owned(),
            json!({"status": "succeeded", "result": {"rows": []}}),
        ),
    ];
    let mut live = Vec::new();
    while live.len() < expected.len() {
        let e = next(&mut inbox).await;
        live.push(parts(&e));
    }
    assert_eq!(live, expected);

    // Worker JSON byte for byte, and the same envelope from history on a fresh subscribe.
    let (_s2, _i2, replay) = subscribe(&hub_node, &id, StartFrom::Offset(4)).await;
    assert_eq!(
        replay.iter().map(|e| parts(e)).collect::<Vec<_>>(),
        expected[4..]
    );
    assert!(
        std::str::from_utf8(replay[0].envelope())
            .unwrap()
            .contains("\"data\":{\"done\": 1, \"total\": 2}")
    );
    // From the start: reset to the latest `history_size` (4) events.
    let (sink, _i3) = new_pair(16, None);
    let opened = hub_node
        .subscribe(&job_channel(&id), StartFrom::Offset(0), &sink)
        .await
        .unwrap();
    assert_eq!(opened.reset, Some(3));
    assert_eq!(
        opened.replay.iter().map(|e| e.offset()).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    let page = hub_node
        .history(&job_channel(&id), Some(4), 10)
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.offset()).collect::<Vec<_>>(),
        [5, 6]
    );

    // Nothing of the job's channel expires while the job exists, whatever the hub's TTL.
    for key in [
        format!("sy:{{jobs/{id}}}:meta"),
        format!("sy:{{jobs/{id}}}:h"),
    ] {
        let ttl: i64 = redis.query(redis::cmd("PTTL").arg(&key)).await.unwrap();
        assert_eq!(ttl, -1, "{key} has no expiry");
    }
    let len: i64 = redis
        .query(redis::cmd("XLEN").arg(format!("sy:{{jobs/{id}}}:h")))
        .await
        .unwrap();
    assert_eq!(len, 6, "every event is kept");
    // Publishing to a job channel through the hub stays refused.
    let data = raw("1");
    let refused = hub_node
        .publish(switchyard::hub::Publish {
            channel: &job_channel(&id),
            event_type: "x",
            data: &data,
            idempotency_key: None,
        })
        .await;
    assert!(refused.is_err());
}
