//! The Redis webhook store against a private redis-server, with several `RedisStore`s as
//! several nodes: the embedded store's semantics (endpoints, the outbox, attempts and
//! backoff, final failure, manual retry, disabling, the delivery log, retention) and
//! per-delivery leases (no two nodes hold a delivery at once; an expired lease is taken
//! over). Times are explicit (`now_ms` arguments), never slept.

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use switchyard::{
    engine::redis::{RedisStore, RedisStoreConfig},
    store::{AttemptOutcome, EndpointRecord, Store, StoreError, WebhookStore},
};

use crate::support::redis::RedisServer;

/// Leases of the stores under test.
const LEASE_MS: i64 = 10_000;
/// A fixed "now" the tests count from.
const T0: i64 = 1_700_000_000_000;

async fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::connect(
        &redis.url(),
        RedisStoreConfig {
            op_timeout: Duration::from_millis(1000),
            delivery_lease: Duration::from_millis(LEASE_MS as u64),
        },
    )
    .await
    .expect("connects to redis")
}

fn endpoint(id: &str, channels: &[&str], types: &[&str], created_at_ms: i64) -> EndpointRecord {
    EndpointRecord {
        id: id.into(),
        url: format!("https://example.com/{id}"),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        types: types.iter().map(|t| t.to_string()).collect(),
        secret: format!("whsec_{id}"),
        previous_secret: None,
        previous_secret_until_ms: None,
        enabled: true,
        disabled_reason: None,
        failing_since_ms: None,
        created_at_ms,
        updated_at_ms: created_at_ms,
    }
}

fn outcome(
    delivery: &str,
    endpoint: &str,
    at_ms: i64,
    status: Option<u16>,
    next: Option<i64>,
) -> AttemptOutcome {
    let succeeded = status.is_some_and(|s| (200..300).contains(&s));
    AttemptOutcome {
        delivery_id: delivery.into(),
        endpoint_id: endpoint.into(),
        at_ms,
        status_code: status,
        latency_ms: 12,
        error: (!succeeded).then(|| format!("HTTP {}", status.unwrap_or(0))),
        succeeded,
        next_attempt_at_ms: next,
        disable_endpoint: None,
    }
}

/// Marks an event for routing, as the append scripts do when it is published.
async fn mark(redis: &RedisServer, channel: &str, offset: u64) {
    let _: i64 = redis
        .query(
            redis::cmd("ZADD")
                .arg("sy:wh:unrouted")
                .arg(0)
                .arg(format!("{channel}\n{offset}")),
        )
        .await
        .unwrap();
}

/// Enqueues `n` events of `orders/1` for `ep`, one per millisecond from `at`.
async fn enqueue_n(s: &RedisStore, ep: &str, n: u64, at: i64) {
    for i in 0..n {
        let body = format!("{{\"offset\":{i}}}");
        let made = s
            .enqueue_to(
                &[ep.to_owned()],
                "orders/1",
                i,
                "order.paid",
                body.as_bytes(),
                at + i as i64,
                None,
            )
            .await
            .unwrap();
        assert_eq!(made, 1);
    }
}

#[tokio::test]
async fn endpoints_are_created_listed_replaced_limited_and_deleted() {
    let Some(redis) = RedisServer::start("endpoints_crud").await else {
        return;
    };
    let s = store(&redis).await;
    s.put_endpoint(endpoint("ep_b", &["orders/*"], &[], 20), Some(2))
        .await
        .unwrap();
    s.put_endpoint(endpoint("ep_a", &["a/b"], &["x", "y"], 10), Some(2))
        .await
        .unwrap();
    let err = s
        .put_endpoint(endpoint("ep_c", &["c"], &[], 30), Some(2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Limit(_)), "{err}");
    let ids: Vec<_> = s
        .list_endpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["ep_a", "ep_b"], "listed by creation");

    let a = s.get_endpoint("ep_a").await.unwrap().unwrap();
    assert_eq!(a.url, "https://example.com/ep_a");
    assert_eq!(a.channels, ["a/b"]);
    assert_eq!(a.types, ["x", "y"]);
    assert_eq!(a.secret, "whsec_ep_a");
    assert!(a.enabled && a.previous_secret.is_none() && a.failing_since_ms.is_none());
    assert_eq!((a.created_at_ms, a.updated_at_ms), (10, 10));

    let mut rotated = a.clone();
    rotated.secret = "whsec_new".into();
    rotated.previous_secret = Some("whsec_ep_a".into());
    rotated.previous_secret_until_ms = Some(99);
    rotated.updated_at_ms = 50;
    s.put_endpoint(rotated, None).await.unwrap();
    let a = s.get_endpoint("ep_a").await.unwrap().unwrap();
    assert_eq!(a.secret, "whsec_new");
    assert_eq!(a.previous_secret.as_deref(), Some("whsec_ep_a"));
    assert_eq!(a.previous_secret_until_ms, Some(99));
    assert_eq!(a.updated_at_ms, 50);

    enqueue_n(&s, "ep_b", 2, T0).await;
    assert!(s.delete_endpoint("ep_b".into()).await.unwrap());
    assert!(!s.delete_endpoint("ep_b".into()).await.unwrap());
    assert!(s.get_endpoint("ep_b").await.unwrap().is_none());
    assert!(s.deliveries("ep_b", 10).await.unwrap().is_empty());
    let keys: Vec<String> = redis
        .query(redis::cmd("KEYS").arg("sy:wh:*"))
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| !k.contains("ep_b") && !k.contains(":d:")),
        "the endpoint's deliveries went with it: {keys:?}"
    );
}

#[tokio::test]
async fn enqueue_matches_filters_and_follows_endpoint_changes_from_any_node() {
    let Some(redis) = RedisServer::start("enqueue_filters").await else {
        return;
    };
    let (a, b) = (store(&redis).await, store(&redis).await);
    let body = Bytes::from_static(b"{}");
    assert_eq!(
        a.route_published("orders/1".into(), 1, "order.paid".into(), body.clone())
            .await
            .unwrap(),
        0
    );
    b.put_endpoint(endpoint("ep_1", &["orders/*"], &["order.paid"], 1), None)
        .await
        .unwrap();
    let n = |ch: &'static str, ty: &'static str| {
        let (a, body, redis) = (&a, body.clone(), &redis);
        async move {
            mark(redis, ch, 1).await;
            a.route_published(ch.into(), 1, ty.into(), body)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        n("orders/1", "order.paid").await,
        1,
        "another node's endpoint"
    );
    assert_eq!(
        a.route_published("orders/1".into(), 1, "order.paid".into(), body.clone())
            .await
            .unwrap(),
        0,
        "a routed event is not routed again"
    );
    assert_eq!(n("orders/1", "order.shipped").await, 0, "type filter");
    assert_eq!(n("users/1", "order.paid").await, 0, "channel filter");
    let mut off = b.get_endpoint("ep_1").await.unwrap().unwrap();
    off.enabled = false;
    b.put_endpoint(off, None).await.unwrap();
    assert_eq!(n("orders/1", "order.paid").await, 0, "a disabled endpoint");
    // The script re-checks: an endpoint disabled after the filters were read gets nothing.
    let stale = a
        .enqueue_to(
            &["ep_1".into(), "ep_gone".into()],
            "orders/1",
            2,
            "t",
            b"{}",
            T0,
            None,
        )
        .await
        .unwrap();
    assert_eq!(stale, 0);
    let d = a.deliveries("ep_1", 10).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].channel.as_str(), d[0].offset, d[0].event_type.as_str()),
        ("orders/1", 1, "order.paid")
    );
    assert_eq!((d[0].status.as_str(), d[0].attempts), ("pending", 0));
}

#[tokio::test]
async fn a_delivery_backs_off_fails_for_good_is_retried_and_succeeds() {
    let Some(redis) = RedisServer::start("delivery_lifecycle").await else {
        return;
    };
    let s = store(&redis).await;
    s.put_endpoint(endpoint("ep_1", &["orders/*"], &[], 1), None)
        .await
        .unwrap();
    enqueue_n(&s, "ep_1", 1, T0).await;

    let heads = s.outbox_heads(T0).await.unwrap();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].has_due && heads[0].next_due_ms.is_none());
    assert_eq!(heads[0].updated_at_ms, 1);
    assert!(
        !s.outbox_heads(T0 - 1).await.unwrap()[0].has_due,
        "not due yet"
    );

    let due = s.due_for("ep_1".into(), T0, 10, vec![]).await.unwrap();
    assert_eq!(due.len(), 1);
    let d = &due[0];
    assert!(d.id.starts_with("msg_"));
    assert_eq!(d.body, Bytes::from_static(b"{\"offset\":0}"));
    assert_eq!(
        (d.attempts, d.url.as_str()),
        (0, "https://example.com/ep_1")
    );
    assert_eq!(d.secret, "whsec_ep_1");
    let id = d.id.clone();

    // Attempt 1 fails: pending again at its next attempt, the endpoint failing since then.
    s.record(outcome(&id, "ep_1", T0 + 5, Some(500), Some(T0 + 1000)))
        .await
        .unwrap();
    let head = &s.outbox_heads(T0 + 10).await.unwrap()[0];
    assert!(!head.has_due);
    assert_eq!(head.next_due_ms, Some(T0 + 1000));
    assert!(
        s.due_for("ep_1".into(), T0 + 999, 10, vec![])
            .await
            .unwrap()
            .is_empty()
    );
    let ep = s.get_endpoint("ep_1").await.unwrap().unwrap();
    assert_eq!(ep.failing_since_ms, Some(T0 + 5));
    let log = &s.deliveries("ep_1", 10).await.unwrap()[0];
    assert_eq!((log.status.as_str(), log.attempts), ("pending", 1));
    assert_eq!(log.next_attempt_at_ms, Some(T0 + 1000));
    assert_eq!((log.created_at_ms, log.updated_at_ms), (T0, T0 + 5));
    assert_eq!(log.log.len(), 1);
    assert_eq!(log.log[0].n, 1);
    assert_eq!(log.log[0].status_code, Some(500));
    assert_eq!(log.log[0].error.as_deref(), Some("HTTP 500"));
    assert_eq!((log.log[0].at_ms, log.log[0].latency_ms), (T0 + 5, 12));

    // Attempt 2 (the last one) times out: failed for good.
    let due = s
        .due_for("ep_1".into(), T0 + 1000, 10, vec![])
        .await
        .unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 1));
    let mut last = outcome(&id, "ep_1", T0 + 1000, None, None);
    last.error = Some("timed out".into());
    s.record(last).await.unwrap();
    let log = &s.deliveries("ep_1", 10).await.unwrap()[0];
    assert_eq!((log.status.as_str(), log.attempts), ("failed", 2));
    assert_eq!(log.next_attempt_at_ms, None);
    assert_eq!(log.log[1].n, 2);
    assert_eq!(log.log[1].status_code, None);
    assert_eq!(log.log[1].error.as_deref(), Some("timed out"));
    let head = &s.outbox_heads(T0 + 5000).await.unwrap()[0];
    assert!(!head.has_due && head.next_due_ms.is_none());
    assert_eq!(
        s.get_endpoint("ep_1")
            .await
            .unwrap()
            .unwrap()
            .failing_since_ms,
        Some(T0 + 5),
        "the first failure since the last success"
    );

    // A manual retry makes it due now; a success ends it and the endpoint's failing streak.
    let err = s
        .retry_delivery("ep_other".into(), id.clone(), T0 + 6000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound));
    s.retry_delivery("ep_1".into(), id.clone(), T0 + 6000)
        .await
        .unwrap();
    let log = &s.deliveries("ep_1", 10).await.unwrap()[0];
    assert_eq!(
        (log.status.as_str(), log.next_attempt_at_ms),
        ("pending", Some(T0 + 6000))
    );
    assert!(s.outbox_heads(T0 + 6000).await.unwrap()[0].has_due);
    let due = s
        .due_for("ep_1".into(), T0 + 6000, 10, vec![])
        .await
        .unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 2));
    s.record(outcome(&id, "ep_1", T0 + 6001, Some(200), None))
        .await
        .unwrap();
    let log = &s.deliveries("ep_1", 10).await.unwrap()[0];
    assert_eq!((log.status.as_str(), log.attempts), ("succeeded", 3));
    assert_eq!(log.log.iter().map(|a| a.n).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        s.get_endpoint("ep_1")
            .await
            .unwrap()
            .unwrap()
            .failing_since_ms,
        None
    );
    let missing = s
        .record(outcome("msg_nope", "ep_1", T0, Some(200), None))
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound));
}

#[tokio::test]
async fn a_disabled_endpoint_keeps_its_deliveries_pending_but_unsent() {
    let Some(redis) = RedisServer::start("disable").await else {
        return;
    };
    let s = store(&redis).await;
    s.put_endpoint(endpoint("ep_1", &["orders/*"], &[], 1), None)
        .await
        .unwrap();
    enqueue_n(&s, "ep_1", 3, T0).await;
    let due = s.due_for("ep_1".into(), T0 + 10, 1, vec![]).await.unwrap();
    let mut o = outcome(&due[0].id, "ep_1", T0 + 20, Some(500), Some(T0 + 100));
    o.disable_endpoint = Some("failing for more than 60 s".into());
    s.record(o).await.unwrap();
    let ep = s.get_endpoint("ep_1").await.unwrap().unwrap();
    assert!(!ep.enabled);
    assert_eq!(
        ep.disabled_reason.as_deref(),
        Some("failing for more than 60 s")
    );
    assert_eq!(
        (ep.updated_at_ms, ep.failing_since_ms),
        (T0 + 20, Some(T0 + 20))
    );
    assert!(s.outbox_heads(T0 + 200).await.unwrap().is_empty());
    assert!(
        s.due_for("ep_1".into(), T0 + 200, 10, vec![])
            .await
            .unwrap()
            .is_empty()
    );
    let statuses: Vec<_> = s
        .deliveries("ep_1", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.status)
        .collect();
    assert_eq!(statuses, ["pending", "pending", "pending"]);
    mark(&redis, "orders/1", 9).await;
    assert_eq!(
        s.route_published("orders/1".into(), 9, "t".into(), Bytes::from_static(b"{}"))
            .await
            .unwrap(),
        0,
        "enqueue saw the change"
    );
    // Re-enabled (by the API, as a put), it has all three due again.
    let mut on = ep;
    on.enabled = true;
    on.disabled_reason = None;
    on.updated_at_ms = T0 + 300;
    s.put_endpoint(on, None).await.unwrap();
    let head = &s.outbox_heads(T0 + 300).await.unwrap()[0];
    assert!(head.has_due);
    assert_eq!(head.updated_at_ms, T0 + 300);
    assert_eq!(
        s.due_for("ep_1".into(), T0 + 300, 10, vec![])
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn the_delivery_log_pages_newest_first_and_prune_keeps_what_is_pending() {
    let Some(redis) = RedisServer::start("log_and_prune").await else {
        return;
    };
    let s = store(&redis).await;
    s.put_endpoint(endpoint("ep_1", &["orders/*"], &[], 1), None)
        .await
        .unwrap();
    enqueue_n(&s, "ep_1", 5, T0).await;
    let page = s.deliveries("ep_1", 3).await.unwrap();
    assert_eq!(
        page.iter().map(|d| d.offset).collect::<Vec<_>>(),
        [4, 3, 2],
        "newest first, limited"
    );
    assert!(s.deliveries("ep_1", 0).await.unwrap().is_empty());
    assert_eq!(s.deliveries("ep_1", 100).await.unwrap().len(), 5);

    // Offsets 0 and 1 end (succeeded at T0+100, failed at T0+200); the rest stay pending.
    let due = s.due_for("ep_1".into(), T0 + 10, 2, vec![]).await.unwrap();
    s.record(outcome(&due[0].id, "ep_1", T0 + 100, Some(204), None))
        .await
        .unwrap();
    s.record(outcome(&due[1].id, "ep_1", T0 + 200, Some(400), None))
        .await
        .unwrap();
    assert_eq!(
        s.prune(0, T0 + 100).await.unwrap(),
        (0, 0),
        "strictly before"
    );
    assert_eq!(s.prune(0, T0 + 101).await.unwrap(), (0, 1));
    assert_eq!(s.prune(0, T0 + 10_000).await.unwrap(), (0, 1));
    let left = s.deliveries("ep_1", 100).await.unwrap();
    assert_eq!(left.iter().map(|d| d.offset).collect::<Vec<_>>(), [4, 3, 2]);
    assert!(left.iter().all(|d| d.status == "pending"));
    // A retried delivery is pending again: not pruned.
    let due = s.due_for("ep_1".into(), T0 + 10, 1, vec![]).await.unwrap();
    s.record(outcome(&due[0].id, "ep_1", T0 + 300, Some(410), None))
        .await
        .unwrap();
    s.retry_delivery("ep_1".into(), due[0].id.clone(), T0 + 400)
        .await
        .unwrap();
    assert_eq!(s.prune(0, T0 + 10_000).await.unwrap(), (0, 0));
    let logs: Vec<String> = redis
        .query(redis::cmd("KEYS").arg("sy:wh:log:*"))
        .await
        .unwrap();
    assert_eq!(
        logs.len(),
        1,
        "pruned deliveries took their attempt logs: {logs:?}"
    );
}

#[tokio::test]
async fn two_nodes_never_hold_the_same_delivery_and_an_expired_lease_is_taken_over() {
    let Some(redis) = RedisServer::start("leases").await else {
        return;
    };
    let (a, b) = (store(&redis).await, store(&redis).await);
    a.put_endpoint(endpoint("ep_1", &["orders/*"], &[], 1), None)
        .await
        .unwrap();
    enqueue_n(&a, "ep_1", 40, T0).await;
    let now = T0 + 100;

    // Both nodes race for the same due deliveries: disjoint, and together all of them.
    let (got_a, got_b) = tokio::join!(
        a.due_for("ep_1".into(), now, 30, vec![]),
        b.due_for("ep_1".into(), now, 30, vec![]),
    );
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    let ids_a: HashSet<_> = got_a.iter().map(|d| d.id.clone()).collect();
    let ids_b: HashSet<_> = got_b.iter().map(|d| d.id.clone()).collect();
    assert!(ids_a.is_disjoint(&ids_b), "a delivery held by both nodes");
    assert_eq!(ids_a.len() + ids_b.len(), 40);

    // Nothing is due for anybody while leased; the scan says when the first lease ends.
    // Each passes what its dispatcher holds as `skip`: a node's own lease on anything else
    // is one its dispatcher dropped, and it takes that back.
    for (s, held) in [(&a, &ids_a), (&b, &ids_b)] {
        let head = &s.outbox_heads(now + 1).await.unwrap()[0];
        assert!(!head.has_due);
        assert_eq!(head.next_due_ms, Some(now + LEASE_MS));
        assert!(
            s.due_for("ep_1".into(), now + 1, 100, held.iter().cloned().collect())
                .await
                .unwrap()
                .is_empty()
        );
    }

    // A records one failure: the delivery is due again at its retry, for any node.
    let one = got_a[0].id.clone();
    a.record(outcome(&one, "ep_1", now + 2, Some(503), Some(now + 50)))
        .await
        .unwrap();
    let again = b
        .due_for(
            "ep_1".into(),
            now + 50,
            100,
            ids_b.iter().cloned().collect(),
        )
        .await
        .unwrap();
    assert_eq!(again.iter().map(|d| &d.id).collect::<Vec<_>>(), [&one]);
    assert_eq!(again[0].attempts, 1);
    b.record(outcome(&one, "ep_1", now + 60, Some(200), None))
        .await
        .unwrap();

    // A keeps holding its others (renewed by its refill with them skipped); B's (renewed
    // at now + 50) lapse: B died.
    let held_a: Vec<String> = got_a[1..].iter().map(|d| d.id.clone()).collect();
    let renewed = a
        .due_for("ep_1".into(), now + 5_000, 100, held_a.clone())
        .await
        .unwrap();
    assert!(renewed.is_empty());
    let expired = now + 50 + LEASE_MS;
    let taken = a
        .due_for("ep_1".into(), expired, 100, held_a.clone())
        .await
        .unwrap();
    let taken_ids: HashSet<_> = taken.iter().map(|d| d.id.clone()).collect();
    assert_eq!(
        taken_ids, ids_b,
        "B's leases ran out (B died): A sends them again"
    );
    assert!(
        b.due_for("ep_1".into(), expired, 100, vec![])
            .await
            .unwrap()
            .is_empty(),
        "A's renewed leases still hold"
    );

    // B comes back and records a lapsed attempt: logged, but A's lease stays.
    let late = got_b[0].id.clone();
    b.record(outcome(
        &late,
        "ep_1",
        expired + 1,
        Some(500),
        Some(expired + 2),
    ))
    .await
    .unwrap();
    assert!(
        b.due_for("ep_1".into(), expired + 3, 100, vec![])
            .await
            .unwrap()
            .is_empty(),
        "A still holds it"
    );
    a.record(outcome(&late, "ep_1", expired + 4, Some(200), None))
        .await
        .unwrap();
    let d = a
        .deliveries("ep_1", 100)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == late)
        .unwrap();
    assert_eq!((d.status.as_str(), d.attempts), ("succeeded", 2));

    // A delivery A's dispatcher dropped (not in its skip list any more) is A's again at once.
    let dropped = held_a[0].clone();
    let mut still_held = held_a[1..].to_vec();
    still_held.extend(taken_ids.into_iter().filter(|id| *id != late));
    let back = a
        .due_for("ep_1".into(), expired + 5, 1, still_held)
        .await
        .unwrap();
    assert_eq!(back.iter().map(|d| &d.id).collect::<Vec<_>>(), [&dropped]);
}
