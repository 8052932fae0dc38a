//! The Redis webhook store against a private redis-server, with several `RedisStore`s as
//! several nodes: the embedded store's semantics (endpoints, the outbox, attempts and
//! backoff, final failure, manual retry, disabling, the delivery log, retention) and
//! per-delivery leases (no two nodes hold a delivery at once; an expired lease is taken
//! over). Times are explicit (`now_ms` arguments), never slept.

use std::{collections::HashSet, sync::Arc};

use serde_json::{Value, json};
use switchyard::{
    engine::Engine,
    hub::{Bus, Publish},
    store::{AttemptOutcome, EndpointRecord, Store, StoreError, WebhookStore},
    time::now_ms,
};
use switchyard_protocol::ChannelName;

use crate::support::redis::RedisServer;

/// Leases of the nodes under test.
const LEASE_MS: i64 = 10_000;

/// One gateway node's engine on `redis`.
async fn node(redis: &RedisServer) -> Arc<Engine> {
    let mut config = crate::support::config();
    config.engine = redis.url();
    config.redis.op_timeout_ms = 1000;
    config.redis.delivery_lease_secs = (LEASE_MS / 1000) as u64;
    Engine::open(&config).await.expect("connects to redis")
}

/// Publishes an event of `event_type` with `{"n": n}` on `channel` through `node`.
async fn publish(node: &Engine, channel: &str, event_type: &str, n: u64) -> u64 {
    let channel = ChannelName::new(channel).unwrap();
    let data = serde_json::value::RawValue::from_string(json!({ "n": n }).to_string()).unwrap();
    let published = node
        .publish(Publish {
            channel: &channel,
            event_type,
            data: &data,
            idempotency_key: None,
        })
        .await
        .unwrap();
    published.offset
}

/// Publishes `n` events (`{"n": 0}`, ...) on `orders/1`, each in a later millisecond than
/// the one before, so their deliveries are created, and listed, in publish order. Returns
/// when the first and the last deliveries were created (unix ms).
async fn publish_n(node: &Engine, n: u64) -> (i64, i64) {
    let mut created = Vec::new();
    for i in 0..n {
        let last = now_ms();
        while now_ms() == last {
            tokio::task::yield_now().await;
        }
        created.push(now_ms());
        publish(node, "orders/1", "order.paid", i).await;
    }
    // The deliveries' own times, which a publish took just after `created`.
    let mut times: Vec<i64> = Vec::new();
    for e in node.list_endpoints().await.unwrap() {
        times.extend(
            node.deliveries(&e.id, 500)
                .await
                .unwrap()
                .iter()
                .map(|d| d.created_at_ms),
        );
    }
    let first = times.iter().copied().filter(|t| *t >= created[0]).min();
    let last = times.iter().copied().max();
    (first.expect("deliveries recorded"), last.unwrap())
}

fn envelope(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("a delivery's body is its event's envelope")
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

#[tokio::test]
async fn endpoints_are_created_listed_replaced_limited_and_deleted() {
    let Some(redis) = RedisServer::start("endpoints_crud").await else {
        return;
    };
    let s = node(&redis).await;
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

    publish_n(&s, 2).await;
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
async fn a_publish_records_the_deliveries_of_the_endpoints_that_want_it_on_any_node() {
    let Some(redis) = RedisServer::start("publish_routes").await else {
        return;
    };
    let (a, b) = (node(&redis).await, node(&redis).await);
    publish(&a, "orders/1", "order.paid", 0).await;
    b.put_endpoint(endpoint("ep_1", &["orders/*"], &["order.paid"], 1), None)
        .await
        .unwrap();
    // A matched its routes before B's endpoint existed: its script sees the endpoints
    // changed, writes nothing, and A publishes again with fresh routes.
    assert_eq!(publish(&a, "orders/1", "order.paid", 1).await, 2);
    publish(&a, "orders/1", "order.shipped", 2).await;
    publish(&a, "users/1", "order.paid", 3).await;
    let mut off = b.get_endpoint("ep_1").await.unwrap().unwrap();
    off.enabled = false;
    b.put_endpoint(off, None).await.unwrap();
    publish(&a, "orders/1", "order.paid", 4).await;
    let d = a.deliveries("ep_1", 10).await.unwrap();
    let recorded: Vec<_> = d
        .iter()
        .map(|d| (d.channel.as_str(), d.offset, d.event_type.as_str()))
        .collect();
    assert_eq!(
        recorded,
        [("orders/1", 2, "order.paid")],
        "only the publish the endpoint wanted while enabled: another node's endpoint, its type and channel filters"
    );
    assert_eq!((d[0].status.as_str(), d[0].attempts), ("pending", 0));
    let due = a.due_for("ep_1".into(), now_ms() + 1, 10, vec![]).await;
    assert!(
        due.unwrap().is_empty(),
        "a disabled endpoint's delivery is not sent"
    );
}

#[tokio::test]
async fn a_delivery_backs_off_fails_for_good_is_retried_and_succeeds() {
    let Some(redis) = RedisServer::start("delivery_lifecycle").await else {
        return;
    };
    let s = node(&redis).await;
    s.put_endpoint(endpoint("ep_1", &["orders/*"], &[], 1), None)
        .await
        .unwrap();
    let (_, t0) = publish_n(&s, 1).await;

    let heads = s.outbox_heads(t0).await.unwrap();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].has_due && heads[0].next_due_ms.is_none());
    assert_eq!(heads[0].updated_at_ms, 1);
    assert!(
        !s.outbox_heads(t0 - 1).await.unwrap()[0].has_due,
        "not due yet"
    );

    let due = s.due_for("ep_1".into(), t0, 10, vec![]).await.unwrap();
    assert_eq!(due.len(), 1);
    let d = &due[0];
    assert!(d.id.starts_with("msg_"));
    let body = envelope(&d.body);
    assert_eq!(
        (
            body["channel"].clone(),
            body["offset"].clone(),
            body["data"].clone()
        ),
        (json!("orders/1"), json!(1), json!({"n": 0})),
        "the envelope consumers got: {body}"
    );
    assert_eq!(
        (d.attempts, d.url.as_str()),
        (0, "https://example.com/ep_1")
    );
    assert_eq!(d.secret, "whsec_ep_1");
    let id = d.id.clone();

    // Attempt 1 fails: pending again at its next attempt, the endpoint failing since then.
    s.record(outcome(&id, "ep_1", t0 + 5, Some(500), Some(t0 + 1000)))
        .await
        .unwrap();
    let head = &s.outbox_heads(t0 + 10).await.unwrap()[0];
    assert!(!head.has_due);
    assert_eq!(head.next_due_ms, Some(t0 + 1000));
    assert!(
        s.due_for("ep_1".into(), t0 + 999, 10, vec![])
            .await
            .unwrap()
            .is_empty()
    );
    let ep = s.get_endpoint("ep_1").await.unwrap().unwrap();
    assert_eq!(ep.failing_since_ms, Some(t0 + 5));
    let log = &s.deliveries("ep_1", 10).await.unwrap()[0];
    assert_eq!((log.status.as_str(), log.attempts), ("pending", 1));
    assert_eq!(log.next_attempt_at_ms, Some(t0 + 1000));
    assert_eq!((log.created_at_ms, log.updated_at_ms), (t0, t0 + 5));
    assert_eq!(log.log.len(), 1);
    assert_eq!(log.log[0].n, 1);
    assert_eq!(log.log[0].status_code, Some(500));
    assert_eq!(log.log[0].error.as_deref(), Some("HTTP 500"));
    assert_eq!((log.log[0].at_ms, log.log[0].latency_ms), (t0 + 5, 12));

    // Attempt 2 (the last one) times out: failed for good.
    let due = s
        .due_for("ep_1".into(), t0 + 1000, 10, vec![])
        .await
        .unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 1));
    let mut last = outcome(&id, "ep_1", t0 + 1000, None, None);
    last.error = Some("timed out".into());
    s.record(last).await.unwrap();
    let log = &s.deliveries("ep_1", 10).await.unwrap()[0];
    assert_eq!((log.status.as_str(), log.attempts), ("failed", 2));
    assert_eq!(log.next_attempt_at_ms, None);
    assert_eq!(log.log[1].n, 2);
    assert_eq!(log.log[1].status_code, None);
    assert_eq!(log.log[1].error.as_deref(), Some("timed out"));
    let head = &s.outbox_heads(t0 + 5000).await.unwrap()[0];
    assert!(!head.has_due && head.next_due_ms.is_none());
    assert_eq!(
        s.get_endpoint("ep_1")
            .await
            .unwrap()
            .unwrap()
            .failing_since_ms,
        Some(t0 + 5),
        "the first failure since the last success"
    );

    // A manual retry makes it due now; a success ends it and the endpoint's failing streak.
    let err = s
        .retry_delivery("ep_other".into(), id.clone(), t0 + 6000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound));
    s.retry_delivery("ep_1".into(), id.clone(), t0 + 6000)
        .await
        .unwrap();
    let log = &s.deliveries("ep_1", 10).await.unwrap()[0];
    assert_eq!(
        (log.status.as_str(), log.next_attempt_at_ms),
        ("pending", Some(t0 + 6000))
    );
    assert!(s.outbox_heads(t0 + 6000).await.unwrap()[0].has_due);
    let due = s
        .due_for("ep_1".into(), t0 + 6000, 10, vec![])
        .await
        .unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 2));
    s.record(outcome(&id, "ep_1", t0 + 6001, Some(200), None))
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
        .record(outcome("msg_nope", "ep_1", t0, Some(200), None))
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound));
}

#[tokio::test]
async fn a_disabled_endpoint_keeps_its_deliveries_pending_but_unsent() {
    let Some(redis) = RedisServer::start("disable").await else {
        return;
    };
    let s = node(&redis).await;
    s.put_endpoint(endpoint("ep_1", &["orders/*"], &[], 1), None)
        .await
        .unwrap();
    let (_, t0) = publish_n(&s, 3).await;
    let due = s.due_for("ep_1".into(), t0 + 10, 1, vec![]).await.unwrap();
    let mut o = outcome(&due[0].id, "ep_1", t0 + 20, Some(500), Some(t0 + 100));
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
        (t0 + 20, Some(t0 + 20))
    );
    assert!(s.outbox_heads(t0 + 200).await.unwrap().is_empty());
    assert!(
        s.due_for("ep_1".into(), t0 + 200, 10, vec![])
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
    publish(&s, "orders/1", "order.paid", 9).await;
    assert_eq!(
        s.deliveries("ep_1", 10).await.unwrap().len(),
        3,
        "a disabled endpoint gets no new deliveries"
    );
    // Re-enabled (by the API, as a put), it has all three due again.
    let mut on = ep;
    on.enabled = true;
    on.disabled_reason = None;
    on.updated_at_ms = t0 + 300;
    s.put_endpoint(on, None).await.unwrap();
    let head = &s.outbox_heads(t0 + 300).await.unwrap()[0];
    assert!(head.has_due);
    assert_eq!(head.updated_at_ms, t0 + 300);
    assert_eq!(
        s.due_for("ep_1".into(), t0 + 300, 10, vec![])
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
    let s = node(&redis).await;
    s.put_endpoint(endpoint("ep_1", &["orders/*"], &[], 1), None)
        .await
        .unwrap();
    let (_, t0) = publish_n(&s, 5).await;
    let page = s.deliveries("ep_1", 3).await.unwrap();
    assert_eq!(
        page.iter().map(|d| d.offset).collect::<Vec<_>>(),
        [5, 4, 3],
        "newest first, limited"
    );
    assert!(s.deliveries("ep_1", 0).await.unwrap().is_empty());
    assert_eq!(s.deliveries("ep_1", 100).await.unwrap().len(), 5);

    // Offsets 1 and 2 end (succeeded at t0+100, failed at t0+200); the rest stay pending.
    let due = s.due_for("ep_1".into(), t0 + 10, 2, vec![]).await.unwrap();
    s.record(outcome(&due[0].id, "ep_1", t0 + 100, Some(204), None))
        .await
        .unwrap();
    s.record(outcome(&due[1].id, "ep_1", t0 + 200, Some(400), None))
        .await
        .unwrap();
    assert_eq!(
        s.prune(0, t0 + 100).await.unwrap(),
        (0, 0),
        "strictly before"
    );
    assert_eq!(s.prune(0, t0 + 101).await.unwrap(), (0, 1));
    assert_eq!(s.prune(0, t0 + 10_000).await.unwrap(), (0, 1));
    let left = s.deliveries("ep_1", 100).await.unwrap();
    assert_eq!(left.iter().map(|d| d.offset).collect::<Vec<_>>(), [5, 4, 3]);
    assert!(left.iter().all(|d| d.status == "pending"));
    // A retried delivery is pending again: not pruned.
    let due = s.due_for("ep_1".into(), t0 + 10, 1, vec![]).await.unwrap();
    s.record(outcome(&due[0].id, "ep_1", t0 + 300, Some(410), None))
        .await
        .unwrap();
    s.retry_delivery("ep_1".into(), due[0].id.clone(), t0 + 400)
        .await
        .unwrap();
    assert_eq!(s.prune(0, t0 + 10_000).await.unwrap(), (0, 0));
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
    let (a, b) = (node(&redis).await, node(&redis).await);
    a.put_endpoint(endpoint("ep_1", &["orders/*"], &[], 1), None)
        .await
        .unwrap();
    let (_, t0) = publish_n(&a, 40).await;
    let now = t0 + 100;

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
