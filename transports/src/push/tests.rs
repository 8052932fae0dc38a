//! Unit tests of the push-stream driver behind SSE and NDJSON, with the clock paused.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;
use switchyard_protocol::{ChannelName, ChannelPattern, ErrorCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Framing, respond};
use crate::{
    Context, TransportConfig,
    access::{self, Grant},
    context::ConnectionHandle,
    http::Body,
    hub::{Event, HubError, StartFrom},
    metrics::Transport,
    session::Session,
    testing::{
        FakeHub, Tokens, context, context_with_tokens, event, json_body, metric, next_chunk, pos,
        request, within,
    },
};

/// Frames each part as a short label, so a test reads what the driver sent and in which
/// order (the wire formats have their own tests in `sse` and `stream`).
struct Labels;

impl Framing for Labels {
    const TRANSPORT: Transport = Transport::Stream;
    const CONTENT_TYPE: &'static str = "text/x-labels";
    const READS_LAST_EVENT_ID: bool = false;
    const SHARED_FRAMES: bool = true;

    fn head(&self, _session: &Session, channels: &[(ChannelName, u64)]) -> Bytes {
        let list: Vec<String> = channels.iter().map(|(c, at)| format!("{c}@{at}")).collect();
        Bytes::from(format!("head {}", list.join(" ")))
    }

    fn reset(&self, _session: &Session, channel: &ChannelName, oldest: u64) -> Bytes {
        Bytes::from(format!("reset {channel} {oldest}"))
    }

    fn event(&self, _session: &Session, event: &Event, single: bool) -> Bytes {
        let of_many = if single { "" } else { " of many" };
        Bytes::from(format!(
            "event {}:{}{of_many}",
            event.channel(),
            event.offset()
        ))
    }

    fn heartbeat(&self) -> Bytes {
        Bytes::from_static(b"heartbeat")
    }

    fn goodbye(&self, code: ErrorCode, message: &str) -> Bytes {
        Bytes::from(format!("goodbye {}: {message}", code.as_str()))
    }
}

const SLOW_CONSUMERS: &str = "switchyard_slow_consumer_disconnects_total{transport=\"stream\"}";
const DELIVERIES: &str = "switchyard_deliveries_total{transport=\"stream\"}";

/// Opens a stream at `uri` (which must succeed) and returns its body.
async fn open(ctx: &Arc<Context>, uri: &str) -> Body {
    let res = within(
        "the response",
        respond(Arc::clone(ctx), &request(uri, &[]), Labels),
    )
    .await;
    assert_eq!(res.status(), 200);
    res.into_body()
}

/// Asks for a stream at `uri` that must be refused: the status and the JSON error.
async fn refused(ctx: &Arc<Context>, uri: &str) -> (u16, serde_json::Value) {
    let res = within(
        "the response",
        respond(Arc::clone(ctx), &request(uri, &[]), Labels),
    )
    .await;
    assert_ne!(res.status(), 200, "{uri}");
    (res.status().as_u16(), json_body(res.into_body()).await)
}

async fn chunk(body: &mut Body) -> String {
    next_chunk(body).await.expect("the stream goes on")
}

async fn assert_ended(body: &mut Body) {
    assert_eq!(next_chunk(body).await, None, "the stream ends");
}

#[tokio::test(start_paused = true)]
async fn the_head_comes_first_then_each_channel_s_reset_and_replay_then_live() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    hub.answer("a", pos(3), Some(4), vec![event("a", 4), event("a", 5)]);
    hub.answer("b", pos(0), None, vec![event("b", 1)]);
    let mut body = open(&ctx, "/v1/stream?channel=a,b").await;
    assert_eq!(
        hub.subscribed(),
        [
            ("a".to_owned(), StartFrom::Now),
            ("b".to_owned(), StartFrom::Now)
        ],
        "subscribed before the response is returned"
    );
    assert_eq!(
        chunk(&mut body).await,
        "head a@5 b@1",
        "each channel's current offset"
    );
    assert_eq!(chunk(&mut body).await, "reset a 4");
    assert_eq!(chunk(&mut body).await, "event a:4 of many");
    assert_eq!(chunk(&mut body).await, "event a:5 of many");
    assert_eq!(chunk(&mut body).await, "event b:1 of many");
    hub.publish(&event("b", 2));
    hub.publish(&event("a", 6));
    assert_eq!(chunk(&mut body).await, "event b:2 of many");
    assert_eq!(chunk(&mut body).await, "event a:6 of many");
}

#[tokio::test(start_paused = true)]
async fn events_published_during_the_replay_arrive_once_and_in_order() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    hub.answer(
        "a",
        pos(0),
        None,
        vec![event("a", 1), event("a", 2), event("a", 3)],
    );
    let release = hub.hold("a");
    let parts = request("/v1/stream?channel=a&after=0", &[]);
    let replay_and_live = async {
        tokio::join!(respond(Arc::clone(&ctx), &parts, Labels), async {
            hub.until_sinks("a", 1).await;
            // Live while the replay is still being read: 3 is in both, 4 only live.
            hub.publish(&event("a", 3));
            hub.publish(&event("a", 4));
            release.send(()).unwrap();
        })
    };
    let (res, ()) = within("the response", replay_and_live).await;
    let mut body = res.into_body();
    assert_eq!(chunk(&mut body).await, "head a@3");
    for n in 1..=4 {
        assert_eq!(chunk(&mut body).await, format!("event a:{n}"));
    }
    hub.publish(&event("a", 5));
    assert_eq!(
        chunk(&mut body).await,
        "event a:5",
        "no second copy of 3 before it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_longer_than_a_batch_arrives_whole_and_in_order() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let mut body = open(&ctx, "/v1/stream?channel=a").await;
    assert_eq!(chunk(&mut body).await, "head a@0");
    for n in 1..=150 {
        hub.publish(&event("a", n));
    }
    for n in 1..=150 {
        assert_eq!(chunk(&mut body).await, format!("event a:{n}"));
    }
    // A batch is counted once written, when the body is next polled (as hyper does at once).
    let more = tokio::time::timeout(Duration::ZERO, body.frame()).await;
    assert!(more.is_err(), "nothing more to send");
    assert_eq!(metric(&ctx, DELIVERIES), "150");
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_gets_a_heartbeat_every_interval() {
    let hub = FakeHub::new();
    let config = TransportConfig {
        heartbeat_interval: Duration::from_secs(15),
        ..TransportConfig::default()
    };
    let ctx = context(&hub, config);
    let mut body = open(&ctx, "/v1/stream?channel=a").await;
    let start = Instant::now();
    assert_eq!(chunk(&mut body).await, "head a@0");
    for at in [15, 30, 45] {
        assert_eq!(chunk(&mut body).await, "heartbeat");
        assert_eq!(start.elapsed(), Duration::from_secs(at));
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_says_goodbye_ends_the_stream_and_unsubscribes() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let mut body = open(&ctx, "/v1/stream?channel=a").await;
    assert_eq!(chunk(&mut body).await, "head a@0");
    assert_eq!(ctx.metrics.connections(Transport::Stream), 1);
    ctx.shutdown.cancel();
    assert_eq!(
        chunk(&mut body).await,
        "goodbye shutting_down: the server is shutting down; reconnect with your cursor"
    );
    assert_ended(&mut body).await;
    assert_eq!(hub.sinks("a"), 0);
    assert_eq!(ctx.metrics.connections(Transport::Stream), 0);
}

#[tokio::test(start_paused = true)]
async fn an_overflow_says_goodbye_slow_consumer_and_asks_the_server_to_close() {
    let hub = FakeHub::new();
    let config = TransportConfig {
        queue_capacity: 2,
        ..TransportConfig::default()
    };
    let ctx = context(&hub, config);
    let abort = CancellationToken::new();
    let mut parts = request("/v1/stream?channel=a", &[]);
    parts.extensions.insert(ConnectionHandle {
        abort: abort.clone(),
        hold: Arc::new(()),
        peer: "127.0.0.1:9".parse().unwrap(),
    });
    let res = within("the response", respond(Arc::clone(&ctx), &parts, Labels)).await;
    let mut body = res.into_body();
    assert_eq!(chunk(&mut body).await, "head a@0");
    for n in 1..=3 {
        hub.publish(&event("a", n));
    }
    // Before the body is polled again: the server closes a connection hyper stopped reading.
    assert!(abort.is_cancelled());
    assert_eq!(
        chunk(&mut body).await,
        "goodbye slow_consumer: too slow to keep up; reconnect with your cursor",
        "the overflow goes before what was queued"
    );
    assert_ended(&mut body).await;
    assert_eq!(metric(&ctx, SLOW_CONSUMERS), "1");
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_feed_says_goodbye_unavailable() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let mut body = open(&ctx, "/v1/stream?channel=a").await;
    assert_eq!(chunk(&mut body).await, "head a@0");
    hub.publish(&event("a", 1));
    assert_eq!(chunk(&mut body).await, "event a:1");
    hub.interrupt("a");
    assert_eq!(
        chunk(&mut body).await,
        "goodbye unavailable: the live feed was interrupted (the engine was unreachable, or \
         the channel's history restarted); reconnect with your cursor"
    );
    assert_ended(&mut body).await;
    assert_eq!(metric(&ctx, SLOW_CONSUMERS), "0", "not counted as slow");
}

/// How long the `short` token lives: not a multiple of the heartbeat interval, so its
/// goodbye and a heartbeat never fall due together.
const SHORT_LIFE: Duration = Duration::from_secs(20);

fn tokens() -> Tokens {
    Tokens(HashMap::from([
        (
            "only-a",
            Grant::channels(vec![ChannelPattern::new("a").unwrap()], None),
        ),
        (
            "short",
            Grant::channels(
                vec![ChannelPattern::new("a").unwrap()],
                Some(std::time::SystemTime::now() + SHORT_LIFE),
            ),
        ),
    ]))
}

#[tokio::test(start_paused = true)]
async fn an_expiring_token_says_goodbye_when_it_expires() {
    let hub = FakeHub::new();
    let ctx = context_with_tokens(&hub, TransportConfig::default(), tokens());
    let start = Instant::now();
    let mut body = open(&ctx, "/v1/stream?channel=a&token=short").await;
    assert_eq!(chunk(&mut body).await, "head a@0");
    assert_eq!(chunk(&mut body).await, "heartbeat", "at 15 s");
    let goodbye = chunk(&mut body).await;
    // The expiry is read from the wall clock once, so it falls just short of the lifetime.
    let at = start.elapsed();
    assert_eq!(
        goodbye,
        format!("goodbye token_expired: {}", access::EXPIRED)
    );
    assert!(
        at > SHORT_LIFE - Duration::from_secs(1) && at <= SHORT_LIFE,
        "{at:?}"
    );
    assert_ended(&mut body).await;
}

#[tokio::test(start_paused = true)]
async fn refusals_come_before_the_stream_as_json_errors() {
    let hub = FakeHub::new();
    let ctx = context_with_tokens(&hub, TransportConfig::default(), tokens());
    let cases = [
        ("/v1/stream?channel=a", 401, "unauthorized"),
        ("/v1/stream?channel=b&token=only-a", 403, "forbidden"),
        ("/v1/stream?token=only-a", 400, "invalid_request"),
    ];
    for (uri, status, code) in cases {
        let res = within(
            "the response",
            respond(Arc::clone(&ctx), &request(uri, &[]), Labels),
        )
        .await;
        assert_eq!(res.status(), status, "{uri}");
        assert_eq!(
            json_body(res.into_body()).await["error"]["code"],
            code,
            "{uri}"
        );
    }
    assert!(hub.subscribed().is_empty(), "the hub was not asked");
}

#[tokio::test(start_paused = true)]
async fn a_hub_refusal_is_a_503_and_releases_the_channels_already_subscribed() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    hub.fail("b", HubError::TooManyChannels);
    let (status, body) = refused(&ctx, "/v1/stream?channel=a,b").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"error": {"code": "unavailable", "message": "the server holds the most channels it may"}})
    );
    assert_eq!(hub.subscribed().len(), 2);
    assert_eq!(hub.sinks("a"), 0, "a was unsubscribed again");
}

#[tokio::test(start_paused = true)]
async fn a_stream_opened_during_shutdown_is_refused() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    ctx.shutdown.cancel();
    let (status, body) = refused(&ctx, "/v1/stream?channel=a").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "shutting_down");
    assert!(hub.subscribed().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_unsubscribes_and_is_no_longer_counted() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let mut body = open(&ctx, "/v1/stream?channel=a").await;
    assert_eq!(chunk(&mut body).await, "head a@0");
    assert_eq!(ctx.metrics.connections(Transport::Stream), 1);
    drop(body);
    assert_eq!(hub.sinks("a"), 0);
    assert_eq!(ctx.metrics.connections(Transport::Stream), 0);
    assert_eq!(hub.publish(&event("a", 1)), 0);
}
