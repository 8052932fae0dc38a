//! Three `RedisHub` nodes on one private redis-server: cross-node fan-out, replay from
//! positions taken on another node, per-node topic subscriptions, idempotency across nodes,
//! Redis going away and coming back (empty), and history bounds.

use std::{collections::HashSet, sync::Arc, time::Duration};

use serde_json::value::RawValue;
use switchyard::{
    engine::redis::{RedisHub, RedisHubConfig},
    hub::{Bus, Event, HubError, Publish, PublishError, Published},
};
use switchyard_protocol::{ChannelName, Cursor, Position};
use switchyard_transports::hub::{Hub, Inbox, Received, Sink, StartFrom, new_pair};

use crate::support::{redis::RedisServer, within};

fn config(history_size: usize, history_ttl: Duration) -> RedisHubConfig {
    RedisHubConfig {
        max_channels: 100,
        op_timeout: Duration::from_millis(500),
        ..RedisHubConfig::with_history(history_size, history_ttl)
    }
}

async fn node(redis: &RedisServer, config: RedisHubConfig) -> RedisHub {
    RedisHub::connect(&redis.url(), config)
        .await
        .expect("connects to redis")
}

/// Three nodes with a 100-event, one-hour history.
async fn three(redis: &RedisServer) -> (RedisHub, RedisHub, RedisHub) {
    let c = config(100, Duration::from_secs(3600));
    (
        node(redis, c.clone()).await,
        node(redis, c.clone()).await,
        node(redis, c).await,
    )
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

async fn publish(hub: &RedisHub, channel: &ChannelName, n: u64) -> Published {
    try_publish(hub, channel, n, None).await.unwrap()
}

async fn try_publish(
    hub: &RedisHub,
    channel: &ChannelName,
    n: u64,
    key: Option<&str>,
) -> Result<Published, PublishError> {
    let data = RawValue::from_string(format!("{{\"n\": {n}}}")).unwrap();
    hub.publish(Publish {
        channel,
        event_type: "tick",
        data: &data,
        idempotency_key: key,
    })
    .await
}

async fn next(inbox: &mut Inbox) -> Arc<Event> {
    match within("a live event", inbox.recv()).await {
        Received::Event(e) => e,
        other => panic!("the inbox was disconnected: {other:?}"),
    }
}

/// Receives events until `count` new offsets arrived, dropping stale duplicates by offset as
/// a session does; returns them in arrival order.
async fn receive(inbox: &mut Inbox, after: u64, count: usize) -> Vec<Arc<Event>> {
    let mut got: Vec<Arc<Event>> = Vec::new();
    let mut last = after;
    while got.len() < count {
        let e = next(inbox).await;
        if e.offset() > last {
            last = e.offset();
            got.push(e);
        }
    }
    got
}

fn offsets(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().map(|e| e.offset()).collect()
}

fn position(cursor: &str, channel: &str) -> Position {
    Cursor::decode(cursor).unwrap().get(channel).unwrap()
}

async fn subscribe(hub: &RedisHub, channel: &ChannelName, from: StartFrom) -> (Sink, Inbox) {
    let (sink, inbox) = new_pair(1024, None);
    hub.subscribe(channel, from, &sink).await.unwrap();
    (sink, inbox)
}

/// Waits until `check` holds.
async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn numsub(redis: &RedisServer, channel: &str) -> i64 {
    let reply: (String, i64) = redis
        .query(
            redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("sy:{{{channel}}}:live")),
        )
        .await
        .unwrap();
    reply.1
}

#[tokio::test]
async fn an_event_published_on_one_node_reaches_the_others_in_order_with_identical_envelopes() {
    let Some(redis) = RedisServer::start("redis fan-out").await else {
        return;
    };
    let (a, b, c) = three(&redis).await;
    let channel = ch("test/redis/fanout");
    let (_sa, mut ia) = subscribe(&a, &channel, StartFrom::Now).await;
    let (_sa2, mut ia2) = subscribe(&a, &channel, StartFrom::Now).await;
    let (_sc, mut ic) = subscribe(&c, &channel, StartFrom::Now).await;
    let mut published = Vec::new();
    for n in 1..=20 {
        published.push(publish(&b, &channel, n).await);
    }
    let on_a = receive(&mut ia, 0, 20).await;
    let on_a2 = receive(&mut ia2, 0, 20).await;
    let on_c = receive(&mut ic, 0, 20).await;
    assert_eq!(offsets(&on_a), (1..=20).collect::<Vec<_>>());
    assert_eq!(offsets(&on_c), (1..=20).collect::<Vec<_>>());
    for i in 0..20 {
        assert_eq!(
            on_a[i].envelope(),
            on_c[i].envelope(),
            "same bytes on A and C"
        );
        assert_eq!(on_a[i].offset(), published[i].offset, "as B published it");
        assert_eq!(on_a[i].cursor(), published[i].cursor);
        assert!(
            Arc::ptr_eq(&on_a[i], &on_a2[i]),
            "one shared event per node for all its sinks"
        );
    }
    assert!(
        ia.try_recv().is_none() && ic.try_recv().is_none(),
        "no duplicates"
    );
    assert_eq!(b.published_count(), 20);
    assert_eq!(a.channel_count(), 1);
}

#[tokio::test]
async fn replay_from_an_offset_or_a_cursor_taken_on_another_node() {
    let Some(redis) = RedisServer::start("redis replay").await else {
        return;
    };
    let (a, b, c) = three(&redis).await;
    let channel = ch("test/redis/replay");
    let first: Vec<Published> = {
        let mut v = Vec::new();
        for n in 1..=5 {
            v.push(publish(&a, &channel, n).await);
        }
        v
    };
    // A cursor from node A resumes on node C.
    let (sc, mut ic) = new_pair(64, None);
    let at_2 = position(&first[1].cursor, channel.as_str());
    let opened = c
        .subscribe(&channel, StartFrom::Position(at_2), &sc)
        .await
        .unwrap();
    assert_eq!(opened.reset, None);
    assert_eq!(opened.start, at_2);
    assert_eq!(offsets(&opened.replay), [3, 4, 5]);
    assert_eq!(opened.replay[0].cursor(), first[2].cursor);
    // An offset resumes on node B.
    let (sb, mut ib) = new_pair(64, None);
    let opened_b = b
        .subscribe(&channel, StartFrom::Offset(3), &sb)
        .await
        .unwrap();
    assert_eq!(offsets(&opened_b.replay), [4, 5]);
    // Then live, with no gap and no duplicate.
    publish(&a, &channel, 6).await;
    assert_eq!(offsets(&receive(&mut ic, 5, 1).await), [6]);
    assert_eq!(offsets(&receive(&mut ib, 5, 1).await), [6]);
    // History reads agree across nodes.
    let page = c.history(&channel, Some(1), 2).await.unwrap();
    assert_eq!(
        (offsets(&page.events), page.next, page.reset),
        (vec![2, 3], 3, false)
    );
    let page = b
        .history(&ch("test/redis/never"), Some(3), 10)
        .await
        .unwrap();
    assert!(page.reset && page.events.is_empty() && page.next == 0);
}

#[tokio::test]
async fn subscribing_while_events_flow_loses_and_repeats_nothing() {
    let Some(redis) = RedisServer::start("redis handover").await else {
        return;
    };
    let (a, b, _c) = three(&redis).await;
    let channel = ch("test/redis/handover");
    let publisher = {
        let channel = channel.clone();
        tokio::spawn(async move {
            for n in 1..=300 {
                publish(&b, &channel, n).await;
            }
            b
        })
    };
    // Subscribe from the start while B publishes: replay + live must be 1..=300 exactly.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (sink, mut inbox) = new_pair(1024, None);
    let opened = a
        .subscribe(&channel, StartFrom::Offset(0), &sink)
        .await
        .unwrap();
    let mut seen = offsets(&opened.replay);
    let last = seen.last().copied().unwrap_or(0);
    let rest = receive(&mut inbox, last, 300 - seen.len()).await;
    seen.extend(offsets(&rest));
    assert_eq!(seen, (1..=300).collect::<Vec<_>>());
    within("publisher", publisher).await.unwrap();
}

#[tokio::test]
async fn a_node_subscribes_only_to_the_live_topics_it_has_local_subscribers_for() {
    let Some(redis) = RedisServer::start("redis topics").await else {
        return;
    };
    let (a, b, c) = three(&redis).await;
    let x = ch("test/redis/x");
    let y = ch("test/redis/y");
    let (sx1, _ix1) = subscribe(&a, &x, StartFrom::Now).await;
    let (sx2, _ix2) = subscribe(&a, &x, StartFrom::Now).await;
    let (_sy, _iy) = subscribe(&b, &y, StartFrom::Now).await;
    let topics: HashSet<String> = redis
        .query(redis::cmd("PUBSUB").arg("CHANNELS"))
        .await
        .unwrap();
    // Every node also listens for the cross-node wake-ups.
    let expected: HashSet<String> = [
        "sy:{test/redis/x}:live",
        "sy:{test/redis/y}:live",
        "sy:signals",
    ]
    .map(String::from)
    .into();
    assert_eq!(topics, expected, "C subscribed no channel topic");
    assert_eq!(
        numsub(&redis, "test/redis/x").await,
        1,
        "one subscription per node"
    );
    assert_eq!(numsub(&redis, "test/redis/y").await, 1);
    // The topic stays while a local subscriber remains, and goes with the last one.
    a.unsubscribe(&x, sx1.id());
    publish(&c, &x, 1).await;
    assert_eq!(numsub(&redis, "test/redis/x").await, 1);
    a.unsubscribe(&x, sx2.id());
    until("A to unsubscribe x", || async {
        numsub(&redis, "test/redis/x").await == 0
    })
    .await;
    assert_eq!(a.channel_count(), 0);
    assert_eq!(numsub(&redis, "test/redis/y").await, 1);
}

#[tokio::test]
async fn an_idempotent_publish_returns_the_first_result_on_every_node() {
    let Some(redis) = RedisServer::start("redis idempotency").await else {
        return;
    };
    let (a, b, c) = three(&redis).await;
    let channel = ch("test/redis/idem");
    publish(&c, &channel, 0).await;
    let first = try_publish(&a, &channel, 1, Some("k")).await.unwrap();
    let again = try_publish(&b, &channel, 1, Some("k")).await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(
        (&again.offset, &again.id, &again.cursor),
        (&first.offset, &first.id, &first.cursor)
    );
    assert!(matches!(
        try_publish(&c, &channel, 2, Some("k")).await,
        Err(PublishError::IdempotencyConflict)
    ));
    let page = c.history(&channel, None, 10).await.unwrap();
    assert_eq!(offsets(&page.events), [1, 2], "the retry appended nothing");
    assert!(matches!(
        try_publish(&a, &ch("jobs/abc"), 1, None).await,
        Err(PublishError::Reserved)
    ));
}

#[tokio::test]
async fn without_redis_publishes_fail_and_after_an_empty_restart_subscribers_are_reset() {
    let Some(mut redis) = RedisServer::start("redis outage").await else {
        return;
    };
    let (a, b, _c) = three(&redis).await;
    let channel = ch("test/redis/outage");
    let (_sink, mut inbox) = subscribe(&a, &channel, StartFrom::Now).await;
    let before = publish(&b, &channel, 1).await;
    assert_eq!(next(&mut inbox).await.offset(), 1);
    a.ping().await.unwrap();

    redis.kill();
    let failed = within("publish to fail", try_publish(&b, &channel, 2, None)).await;
    assert!(
        matches!(failed, Err(PublishError::Hub(HubError::Unavailable(_)))),
        "no silent drop: {failed:?}"
    );
    assert!(within("ping to fail", a.ping()).await.is_err());
    let (other, _other_inbox) = new_pair(8, None);
    assert!(
        within(
            "subscribe to fail",
            a.subscribe(&ch("test/redis/new"), StartFrom::Now, &other)
        )
        .await
        .is_err()
    );

    redis.restart().await; // same port, empty: every channel gets a new epoch
    until("A ready again", || async { a.ping().await.is_ok() }).await;
    until("B ready again", || async { b.ping().await.is_ok() }).await;
    // A's subscriber followed the old history: it is disconnected, to resume with a reset.
    assert!(matches!(
        within("the old subscriber to be disconnected", inbox.recv()).await,
        Received::Interrupted
    ));
    let old = position(&before.cursor, channel.as_str());
    let (sink, mut inbox) = new_pair(64, None);
    let opened = a
        .subscribe(&channel, StartFrom::Position(old), &sink)
        .await
        .unwrap();
    assert_eq!(opened.reset, Some(1), "another epoch: reset");
    assert_ne!(opened.start.epoch, old.epoch);
    let after = publish(&b, &channel, 3).await;
    let e = next(&mut inbox).await;
    assert_eq!((e.offset(), e.cursor()), (1, after.cursor.as_str()));
    assert_eq!(e.position().epoch, opened.start.epoch);
}

#[tokio::test]
async fn a_dropped_pub_sub_connection_resumes_without_gap_or_duplicate() {
    let Some(redis) = RedisServer::start("redis reconnect").await else {
        return;
    };
    let (a, b, _c) = three(&redis).await;
    let channel = ch("test/redis/reconnect");
    let (_sink, mut inbox) = subscribe(&a, &channel, StartFrom::Now).await;
    let mut last = 0;
    for round in 0..5u64 {
        // Cut every pub/sub connection (A's and the others'), then publish at once: some
        // events go out while A is reconnecting and reach it through the catch-up read.
        let _: i64 = redis
            .query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
            .await
            .unwrap();
        for n in 1..=4 {
            let p = publish(&b, &channel, round * 4 + n).await;
            assert_eq!(p.offset, last + n);
        }
        let got = receive(&mut inbox, last, 4).await;
        assert_eq!(offsets(&got), (last + 1..=last + 4).collect::<Vec<_>>());
        last += 4;
    }
    until("A ready", || async { a.ping().await.is_ok() }).await;
}

#[tokio::test]
async fn trimmed_history_resets_old_positions_like_the_memory_hub() {
    let Some(redis) = RedisServer::start("redis trimming").await else {
        return;
    };
    let a = node(&redis, config(3, Duration::from_secs(3600))).await;
    let b = node(&redis, config(3, Duration::from_secs(3600))).await;
    let channel = ch("test/redis/trim");
    let mut cursors = Vec::new();
    for n in 1..=5 {
        cursors.push(publish(&a, &channel, n).await.cursor);
    }
    let (sink, _inbox) = new_pair(16, None);
    let at = |i: usize| StartFrom::Position(position(&cursors[i], channel.as_str()));
    let o = b.subscribe(&channel, at(0), &sink).await.unwrap();
    assert_eq!(o.reset, Some(3));
    assert_eq!(offsets(&o.replay), [3, 4, 5]);
    assert_eq!(o.start.offset, 2);
    // Offset 2 is just before the oldest kept: nothing was lost.
    let o = b.subscribe(&channel, at(1), &sink).await.unwrap();
    assert_eq!((o.reset, offsets(&o.replay)), (None, vec![3, 4, 5]));
    // A future offset or another epoch cannot be trusted.
    let o = b
        .subscribe(&channel, StartFrom::Offset(9), &sink)
        .await
        .unwrap();
    assert_eq!(o.reset, Some(3));
    let other = Position {
        epoch: 1,
        offset: 4,
    };
    let o = b
        .subscribe(&channel, StartFrom::Position(other), &sink)
        .await
        .unwrap();
    assert_eq!(o.reset, Some(3));
    let p = b.history(&channel, Some(0), 10).await.unwrap();
    assert_eq!((p.events[0].offset(), p.reset), (3, true));

    // Age: with a short TTL, expired events leave even a channel nobody publishes to.
    let short = node(&redis, config(100, Duration::from_millis(300))).await;
    let aged = ch("test/redis/aged");
    let first = publish(&short, &aged, 1).await;
    publish(&short, &aged, 2).await;
    until("the events to expire", || async {
        short
            .history(&aged, None, 10)
            .await
            .unwrap()
            .events
            .is_empty()
    })
    .await;
    let o = short
        .subscribe(
            &aged,
            StartFrom::Position(position(&first.cursor, aged.as_str())),
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(o.reset, Some(3), "event 2 expired after the cursor");
    assert_eq!(
        publish(&short, &aged, 3).await.offset,
        3,
        "offsets are never reused"
    );
}

#[tokio::test]
async fn cross_node_publish_to_deliver_latency_over_loopback() {
    let Some(redis) = RedisServer::start("redis latency").await else {
        return;
    };
    let (a, b, _c) = three(&redis).await;
    let channel = ch("test/redis/latency");
    let (_sink, mut inbox) = subscribe(&a, &channel, StartFrom::Now).await;
    let mut samples = Vec::new();
    for n in 1..=300 {
        let start = std::time::Instant::now();
        publish(&b, &channel, n).await;
        let e = next(&mut inbox).await;
        samples.push(start.elapsed());
        assert_eq!(e.offset(), n);
    }
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    eprintln!(
        "redis hub, publish on B -> delivered on A (loopback, debug build, {} events): p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
}
