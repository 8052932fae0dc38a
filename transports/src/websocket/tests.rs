//! Unit tests of the WebSocket session over an in-memory connection, with the clock paused.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_protocol::ChannelPattern;
use tokio::{
    io::{AsyncReadExt, DuplexStream},
    task::JoinHandle,
    time::Instant,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{
            CloseFrame, Role,
            frame::{
                Frame,
                coding::{CloseCode, Data as OpData, OpCode},
            },
        },
    },
};

use super::{admit_upgrade, run, ws_config};
use crate::{
    Context, TransportConfig,
    access::{self, Grant},
    hub::StartFrom,
    metrics::Transport,
    testing::{
        FakeHub, Tokens, big_event, context, context_with_tokens, cursor, envelope, event,
        json_body, metric, pos, settle, within,
    },
};

type Client = WebSocketStream<DuplexStream>;

/// Bytes the in-memory connection buffers in each direction: plenty, unless a test wants a
/// peer whose socket fills up.
const ROOMY: usize = 1 << 20;

const SLOW_CONSUMERS: &str = "switchyard_slow_consumer_disconnects_total{transport=\"websocket\"}";
const DELIVERIES: &str = "switchyard_deliveries_total{transport=\"websocket\"}";

/// Starts a session on an in-memory connection of `pipe` bytes each way; returns the
/// client's end and the session's task.
async fn connect_with(
    ctx: &Arc<Context>,
    grant: Option<Grant>,
    pipe: usize,
) -> (Client, JoinHandle<()>) {
    let (server_io, client_io) = tokio::io::duplex(pipe);
    let server =
        WebSocketStream::from_raw_socket(server_io, Role::Server, Some(ws_config(&ctx.config)))
            .await;
    let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    (client, tokio::spawn(run(Arc::clone(ctx), server, grant)))
}

/// A session whose upgrade request carried a credential for every channel.
async fn connect(ctx: &Arc<Context>) -> (Client, JoinHandle<()>) {
    connect_with(ctx, Some(Grant::everything()), ROOMY).await
}

async fn send(client: &mut Client, frame: Value) {
    within(
        "a client frame to be sent",
        client.send(Message::text(frame.to_string())),
    )
    .await
    .unwrap();
}

/// The next text frame as JSON (protocol pings and pongs are skipped).
async fn next_json(client: &mut Client) -> Value {
    within("a text frame", async {
        loop {
            match client.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str()).unwrap();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
}

/// Reads up to the server's close frame: its code and reason, and the text frames before it.
async fn until_close(client: &mut Client) -> ((u16, String), Vec<Value>) {
    let mut frames = Vec::new();
    let close = within("a close frame", async {
        loop {
            match client.next().await {
                Some(Ok(Message::Text(text))) => {
                    frames.push(serde_json::from_str(text.as_str()).unwrap());
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await;
    (close, frames)
}

/// Subscribes with `extra` fields and returns the `subscribed` reply.
async fn subscribe(client: &mut Client, id: u64, channel: &str, extra: Value) -> Value {
    let mut frame = json!({"op": "subscribe", "id": id, "channel": channel});
    frame
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    send(client, frame).await;
    let reply = next_json(client).await;
    assert_eq!(
        (&reply["op"], &reply["id"]),
        (&json!("subscribed"), &json!(id)),
        "{reply}"
    );
    reply
}

/// The frame a client receives for `testing::event(channel, offset)`.
fn event_frame(channel: &str, offset: u64) -> Value {
    let mut frame = json!({"op": "event"});
    frame
        .as_object_mut()
        .unwrap()
        .extend(envelope(channel, offset).as_object().unwrap().clone());
    frame
}

fn error_frame(id: Option<u64>, code: &str, message: &str) -> Value {
    let mut frame = json!({"op": "error", "error": {"code": code, "message": message}});
    if let Some(id) = id {
        frame["id"] = json!(id);
    }
    frame
}

fn assert_error(frame: &Value, id: Option<u64>, code: &str) {
    assert_eq!(frame["op"], "error", "{frame}");
    assert_eq!(frame["error"]["code"], code, "{frame}");
    assert_eq!(frame.get("id").and_then(Value::as_u64), id, "{frame}");
}

// === the upgrade request ===

/// A request header: name and value.
type Header = (&'static str, &'static str);

fn upgrade_headers(pairs: &[Header]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (key, value) in pairs {
        headers.append(*key, value.parse().unwrap());
    }
    headers
}

/// A valid handshake: RFC 6455's sample key, with tokens lists as browsers send them.
const HANDSHAKE: [Header; 4] = [
    ("connection", "keep-alive, Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test(start_paused = true)]
async fn an_upgrade_without_a_valid_handshake_is_refused() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let version_8 = [
        HANDSHAKE[0],
        HANDSHAKE[1],
        ("sec-websocket-version", "8"),
        HANDSHAKE[3],
    ];
    let refusals: [(&[Header], u16, &str); 3] = [
        (
            &HANDSHAKE[2..],
            400,
            "this endpoint speaks WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ),
        (&version_8, 426, "only WebSocket version 13 is supported"),
        (&HANDSHAKE[..3], 400, "missing Sec-WebSocket-Key"),
    ];
    for (pairs, status, message) in refusals {
        let res = admit_upgrade(&ctx, &upgrade_headers(pairs), None).unwrap_err();
        assert_eq!(res.status(), status, "{pairs:?}");
        if status == 426 {
            assert_eq!(res.headers()["sec-websocket-version"], "13");
        }
        assert_eq!(
            json_body(res.into_body()).await,
            json!({"error": {"code": "invalid_request", "message": message}})
        );
    }
    let (accept, grant) = admit_upgrade(&ctx, &upgrade_headers(&HANDSHAKE), None).unwrap();
    assert_eq!(
        accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "RFC 6455's sample answer"
    );
    assert!(grant.is_some_and(|g| g.allows("anything")), "open mode");
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_refuses_a_bad_credential_but_not_a_missing_one() {
    let hub = FakeHub::new();
    let ctx = context_with_tokens(&hub, TransportConfig::default(), tokens());
    let headers = upgrade_headers(&HANDSHAKE);
    let res = admit_upgrade(&ctx, &headers, Some("token=nope")).unwrap_err();
    assert_eq!(res.status(), 401);
    assert_eq!(
        json_body(res.into_body()).await["error"]["code"],
        "unauthorized"
    );
    let (_, missing) = admit_upgrade(&ctx, &headers, None).unwrap();
    assert!(missing.is_none(), "it may come in an auth frame");
    let (_, given) = admit_upgrade(&ctx, &headers, Some("token=only-a")).unwrap();
    assert!(given.is_some_and(|g| g.allows("a") && !g.allows("b")));
    ctx.shutdown.cancel();
    let res = admit_upgrade(&ctx, &headers, Some("token=only-a")).unwrap_err();
    assert_eq!(res.status(), 503);
    assert_eq!(
        json_body(res.into_body()).await["error"]["code"],
        "shutting_down"
    );
}

// === subscriptions ===

#[tokio::test(start_paused = true)]
async fn subscribed_comes_first_then_live_events_in_order() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, _session) = connect(&ctx).await;
    let subscribed = subscribe(&mut client, 1, "a", json!({})).await;
    assert_eq!(
        subscribed,
        json!({"op": "subscribed", "id": 1, "channel": "a", "offset": 0, "cursor": cursor(&[("a", 0)])})
    );
    assert_eq!(hub.subscribed(), [("a".to_owned(), StartFrom::Now)]);
    for n in 1..=3 {
        assert_eq!(hub.publish(&event("a", n)), 1);
    }
    for n in 1..=3 {
        assert_eq!(next_json(&mut client).await, event_frame("a", n));
    }
    assert_eq!(metric(&ctx, DELIVERIES), "3");
}

#[tokio::test(start_paused = true)]
async fn a_burst_longer_than_a_batch_arrives_whole_and_in_order() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, _session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    for n in 1..=150 {
        hub.publish(&event("a", n));
    }
    for n in 1..=150 {
        assert_eq!(next_json(&mut client).await, event_frame("a", n));
    }
    assert_eq!(metric(&ctx, DELIVERIES), "150");
}

#[tokio::test(start_paused = true)]
async fn after_and_cursor_choose_where_a_subscription_starts() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, _session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({"after": 4})).await;
    subscribe(&mut client, 2, "b", json!({"cursor": cursor(&[("b", 2)])})).await;
    subscribe(&mut client, 3, "c", json!({"cursor": cursor(&[("a", 9)])})).await;
    subscribe(
        &mut client,
        4,
        "d",
        json!({"cursor": cursor(&[("d", 7)]), "after": 1}),
    )
    .await;
    assert_eq!(
        hub.subscribed(),
        [
            ("a".to_owned(), StartFrom::Offset(4)),
            ("b".to_owned(), StartFrom::Position(pos(2))),
            ("c".to_owned(), StartFrom::Now),
            ("d".to_owned(), StartFrom::Position(pos(7))),
        ],
        "a cursor not naming the channel starts now; a cursor wins over after"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reset_follows_subscribed_and_precedes_the_replay_then_live() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, _session) = connect(&ctx).await;
    hub.answer("a", pos(3), Some(4), vec![event("a", 4), event("a", 5)]);
    let subscribed = subscribe(&mut client, 1, "a", json!({"cursor": cursor(&[("a", 1)])})).await;
    assert_eq!(
        subscribed,
        json!({"op": "subscribed", "id": 1, "channel": "a", "offset": 5, "cursor": cursor(&[("a", 3)])}),
        "offset: where the replay ends; cursor: where it starts"
    );
    assert_eq!(
        next_json(&mut client).await,
        json!({"op": "reset", "channel": "a", "offset": 4, "cursor": cursor(&[("a", 3)])})
    );
    assert_eq!(next_json(&mut client).await, event_frame("a", 4));
    assert_eq!(next_json(&mut client).await, event_frame("a", 5));
    hub.publish(&event("a", 6));
    assert_eq!(next_json(&mut client).await, event_frame("a", 6));
}

#[tokio::test(start_paused = true)]
async fn events_published_during_the_replay_arrive_once_and_in_order() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, _session) = connect(&ctx).await;
    hub.answer(
        "a",
        pos(0),
        None,
        vec![event("a", 1), event("a", 2), event("a", 3)],
    );
    let release = hub.hold("a");
    send(
        &mut client,
        json!({"op": "subscribe", "id": 1, "channel": "a", "after": 0}),
    )
    .await;
    hub.until_sinks("a", 1).await;
    // Live while the replay is still being read: 3 is in both, 4 only live.
    hub.publish(&event("a", 3));
    hub.publish(&event("a", 4));
    release.send(()).unwrap();
    assert_eq!(next_json(&mut client).await["op"], "subscribed");
    for n in 1..=4 {
        assert_eq!(next_json(&mut client).await, event_frame("a", n));
    }
    hub.publish(&event("a", 5));
    assert_eq!(
        next_json(&mut client).await,
        event_frame("a", 5),
        "no second copy of 3 before it"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unsubscribe_stops_the_channel_and_a_resubscription_drops_stale_copies() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, _session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    subscribe(&mut client, 2, "b", json!({})).await;
    hub.publish(&event("a", 1));
    assert_eq!(next_json(&mut client).await, event_frame("a", 1));
    let in_flight = hub.sink("a");

    send(
        &mut client,
        json!({"op": "unsubscribe", "id": 3, "channel": "a"}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"op": "unsubscribed", "id": 3, "channel": "a"})
    );
    assert_eq!(hub.unsubscribed(), ["a"]);
    assert_eq!(hub.publish(&event("a", 2)), 0, "the hub no longer routes a");

    // Resubscribe after 1: copies of 1 and 2 that were in flight are stale, 2 is replayed.
    hub.answer("a", pos(1), None, vec![event("a", 2)]);
    let release = hub.hold("a");
    send(
        &mut client,
        json!({"op": "subscribe", "id": 4, "channel": "a", "after": 1}),
    )
    .await;
    hub.until_sinks("a", 1).await;
    assert!(in_flight.offer(&event("a", 1)));
    assert!(in_flight.offer(&event("a", 2)));
    release.send(()).unwrap();
    assert_eq!(next_json(&mut client).await["op"], "subscribed");
    assert_eq!(next_json(&mut client).await, event_frame("a", 2));
    hub.publish(&event("b", 1));
    assert_eq!(
        next_json(&mut client).await,
        event_frame("b", 1),
        "nothing stale in between"
    );
}

#[tokio::test(start_paused = true)]
async fn the_subscription_limit_counts_live_subscriptions() {
    let hub = FakeHub::new();
    let config = TransportConfig {
        ws_max_subscriptions: 2,
        ..TransportConfig::default()
    };
    let ctx = context(&hub, config);
    let (mut client, _session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    subscribe(&mut client, 2, "b", json!({})).await;
    send(
        &mut client,
        json!({"op": "subscribe", "id": 3, "channel": "c"}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        error_frame(
            Some(3),
            "too_many_subscriptions",
            "at most 2 subscriptions per connection"
        )
    );
    assert_eq!(hub.subscribed().len(), 2, "the hub was not asked");
    send(
        &mut client,
        json!({"op": "unsubscribe", "id": 4, "channel": "a"}),
    )
    .await;
    assert_eq!(next_json(&mut client).await["op"], "unsubscribed");
    subscribe(&mut client, 5, "c", json!({})).await;
}

#[tokio::test(start_paused = true)]
async fn a_hub_refusal_is_an_error_frame() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, _session) = connect(&ctx).await;
    hub.fail(
        "a",
        crate::hub::HubError::Unavailable("redis is down".into()),
    );
    send(
        &mut client,
        json!({"op": "subscribe", "id": 1, "channel": "a"}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        error_frame(
            Some(1),
            "unavailable",
            "event hub unavailable: redis is down"
        )
    );
    subscribe(&mut client, 2, "a", json!({})).await;
}

// === client frames ===

#[tokio::test(start_paused = true)]
async fn bad_frames_get_error_frames_and_the_session_goes_on() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect(&ctx).await;
    within("a frame to be sent", client.send(Message::text("{nope")))
        .await
        .unwrap();
    assert_error(&next_json(&mut client).await, None, "bad_json");
    send(&mut client, json!({"op": "dance", "id": 7})).await;
    assert_error(&next_json(&mut client).await, Some(7), "unknown_op");
    send(
        &mut client,
        json!({"op": "subscribe", "id": 8, "channel": "bad name!"}),
    )
    .await;
    assert_error(&next_json(&mut client).await, Some(8), "invalid_channel");
    send(
        &mut client,
        json!({"op": "subscribe", "id": 9, "channel": "ok", "cursor": "***"}),
    )
    .await;
    assert_error(&next_json(&mut client).await, Some(9), "invalid_cursor");
    send(&mut client, json!({"op": "subscribe", "id": 10})).await;
    assert_error(&next_json(&mut client).await, Some(10), "invalid_request");
    send(
        &mut client,
        json!({"op": "unsubscribe", "id": 11, "channel": "never"}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        error_frame(Some(11), "invalid_request", "not subscribed to \"never\"")
    );
    within(
        "a frame to be sent",
        client.send(Message::binary(vec![1, 2, 3])),
    )
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut client).await,
        error_frame(
            None,
            "invalid_request",
            "binary frames are not supported; send JSON text"
        )
    );
    subscribe(&mut client, 12, "a", json!({})).await;
    send(
        &mut client,
        json!({"op": "subscribe", "id": 13, "channel": "a"}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        error_frame(
            Some(13),
            "invalid_request",
            "already subscribed to \"a\"; unsubscribe first"
        )
    );
    assert_eq!(
        hub.subscribed().len(),
        1,
        "only the valid subscribe reached the hub"
    );

    send(&mut client, json!({"op": "ping", "id": 14})).await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"op": "pong", "id": 14})
    );
    assert!(!session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn an_oversized_message_closes_with_1009() {
    let hub = FakeHub::new();
    let config = TransportConfig {
        ws_max_message_bytes: 1024,
        ..TransportConfig::default()
    };
    let ctx = context(&hub, config);
    let (mut client, session) = connect(&ctx).await;
    let big = json!({"op": "ping", "id": 1, "pad": "x".repeat(2000)});
    within(
        "a frame to be sent",
        client.send(Message::text(big.to_string())),
    )
    .await
    .unwrap();
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (1009, "message too big".to_owned()));
    assert!(frames.is_empty(), "{frames:?}");
    within("the session to end", session).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_client_close_is_answered_and_ends_the_session() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    assert_eq!(ctx.metrics.connections(Transport::WebSocket), 1);
    within("the close to be sent", client.close(None))
        .await
        .unwrap();
    let reply = within("the close reply", client.next()).await;
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
    within("the session to end", session).await.unwrap();
    assert_eq!(hub.sinks("a"), 0, "unsubscribed when the session ended");
    assert_eq!(ctx.metrics.connections(Transport::WebSocket), 0);
}

/// Sends a close with code 1000 and reason "bye" (the server echoes both).
async fn close_with_bye(client: &mut Client) {
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    within("the close to be sent", client.close(Some(bye)))
        .await
        .unwrap();
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_close_while_events_wait_on_a_full_connection_is_answered_before_the_rest() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect_with(&ctx, Some(Grant::everything()), 4096).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    // Larger than the connection's buffer: the session waits writing it, 2 to 4 queued.
    hub.publish(&big_event("a", 1, 64 * 1024));
    for n in 2..=4 {
        hub.publish(&event("a", n));
    }
    settle().await;
    close_with_bye(&mut client).await;
    settle().await;
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (1000, "bye".to_owned()));
    assert_eq!(
        offsets(&frames),
        [1],
        "the half-written event is finished, nothing is sent after the close"
    );
    within("the session to end", session).await.unwrap();
    assert_eq!(metric(&ctx, SLOW_CONSUMERS), "0");
}

#[tokio::test(start_paused = true)]
async fn a_close_in_the_middle_of_a_replay_is_answered_before_the_rest() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect_with(&ctx, Some(Grant::everything()), 4096).await;
    let replay = (1..=20).map(|n| big_event("a", n, 16 * 1024)).collect();
    hub.answer("a", pos(0), None, replay);
    subscribe(&mut client, 1, "a", json!({"after": 0})).await;
    close_with_bye(&mut client).await;
    settle().await;
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (1000, "bye".to_owned()));
    assert_eq!(
        offsets(&frames),
        [1],
        "the replay stops at the event being written when the close came"
    );
    within("the session to end", session).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect(&ctx).await;
    let bad = Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(OpData::Text),
        true,
    );
    within("the frame to be sent", client.send(Message::Frame(bad)))
        .await
        .unwrap();
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (1007, "invalid UTF-8".to_owned()));
    assert!(frames.is_empty(), "{frames:?}");
    within("the session to end", session).await.unwrap();
}

// === slow consumers and interrupted feeds ===

#[tokio::test(start_paused = true)]
async fn an_overflowing_inbox_closes_with_4008_slow_consumer() {
    let hub = FakeHub::new();
    let config = TransportConfig {
        queue_capacity: 2,
        ..TransportConfig::default()
    };
    let ctx = context(&hub, config);
    let (mut client, session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    // Published faster than the session runs: the third finds the inbox full.
    assert_eq!(hub.publish(&event("a", 1)), 1);
    assert_eq!(hub.publish(&event("a", 2)), 1);
    assert_eq!(hub.publish(&event("a", 3)), 0, "the hub drops a full sink");
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (4008, "slow_consumer".to_owned()));
    assert!(
        frames.is_empty(),
        "the overflow goes before what was queued: {frames:?}"
    );
    within("the session to end", session).await.unwrap();
    assert_eq!(metric(&ctx, SLOW_CONSUMERS), "1");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_closed_as_soon_as_its_inbox_overflows() {
    let hub = FakeHub::new();
    let config = TransportConfig {
        queue_capacity: 4,
        ..TransportConfig::default()
    };
    let ctx = context(&hub, config);
    let (mut client, _session) = connect_with(&ctx, Some(Grant::everything()), 4096).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    let start = Instant::now();
    // Larger than the connection's buffer: the session blocks writing it.
    hub.publish(&big_event("a", 1, 64 * 1024));
    settle().await;
    for n in 2..=6 {
        hub.publish(&event("a", n));
    }
    settle().await;
    assert_eq!(
        metric(&ctx, SLOW_CONSUMERS),
        "1",
        "the blocked write is abandoned at the overflow, before the peer reads again"
    );
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (4008, "slow_consumer".to_owned()));
    let offsets: Vec<_> = frames
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1], "the blocked write completes, then the close");
    assert!(
        start.elapsed() < ctx.config.send_timeout,
        "closed at the overflow, not at the send timeout: {:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_blocked_for_the_send_timeout_closes_with_4008() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, _session) = connect_with(&ctx, Some(Grant::everything()), 4096).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    let start = Instant::now();
    hub.publish(&big_event("a", 1, 64 * 1024));
    let timeout = ctx.config.send_timeout;
    tokio::time::sleep_until(start + timeout - Duration::from_millis(1)).await;
    assert_eq!(
        metric(&ctx, SLOW_CONSUMERS),
        "0",
        "still waiting on the peer"
    );
    tokio::time::sleep_until(start + timeout + Duration::from_millis(1)).await;
    assert_eq!(
        metric(&ctx, SLOW_CONSUMERS),
        "1",
        "given up at the send timeout"
    );
    // The peer reads again within the close's own time limit: it sees why it was dropped.
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (4008, "slow_consumer".to_owned()));
    assert_eq!(frames.len(), 1, "the event whose write was blocked");
    assert_eq!(frames[0]["offset"], 1);
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_feed_closes_with_1013() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    hub.publish(&event("a", 1));
    assert_eq!(next_json(&mut client).await, event_frame("a", 1));
    hub.interrupt("a");
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (1013, "interrupted".to_owned()));
    assert!(frames.is_empty());
    within("the session to end", session).await.unwrap();
    assert_eq!(metric(&ctx, SLOW_CONSUMERS), "0", "not counted as slow");
}

// === liveness ===

#[tokio::test(start_paused = true)]
async fn pings_every_interval_and_keeps_a_peer_that_answers() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect(&ctx).await;
    let start = Instant::now();
    let mut pings = Vec::new();
    // Reading answers each ping with a pong (tungstenite does it on the next read).
    let outcome = tokio::time::timeout(Duration::from_secs(190), async {
        loop {
            match client.next().await {
                Some(Ok(Message::Ping(_))) => pings.push(start.elapsed().as_secs()),
                other => panic!("expected only pings, got {other:?}"),
            }
        }
    })
    .await;
    assert!(outcome.is_err(), "still open past three idle timeouts");
    assert_eq!(pings, [25, 50, 75, 100, 125, 150, 175]);
    assert!(!session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_closed_1001_at_the_first_ping_past_the_idle_timeout() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    // A raw peer: it reads the server's bytes and never answers.
    let (server_io, mut peer) = tokio::io::duplex(ROOMY);
    let server =
        WebSocketStream::from_raw_socket(server_io, Role::Server, Some(ws_config(&ctx.config)))
            .await;
    let session = tokio::spawn(run(Arc::clone(&ctx), server, Some(Grant::everything())));
    let start = Instant::now();
    for at in [25, 50] {
        let mut ping = [0; 2];
        within("a ping", peer.read_exact(&mut ping)).await.unwrap();
        assert_eq!(ping, [0x89, 0], "an empty ping frame");
        assert_eq!(start.elapsed(), Duration::from_secs(at));
    }
    let mut close = Vec::new();
    within("the end of the connection", peer.read_to_end(&mut close))
        .await
        .unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(75),
        "idle for 60 s at the ping at 75 s"
    );
    let mut expected = vec![0x88, 14, 0x03, 0xe9]; // close, 14 bytes, 1001
    expected.extend_from_slice(b"idle timeout");
    assert_eq!(close, expected);
    within("the session to end", session).await.unwrap();
}

// === shutdown ===

#[tokio::test(start_paused = true)]
async fn shutdown_closes_with_1001_and_unsubscribes() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    ctx.shutdown.cancel();
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(close, (1001, "server shutting down".to_owned()));
    assert!(frames.is_empty());
    within("the session to end", session).await.unwrap();
    assert_eq!(hub.sinks("a"), 0);
    assert_eq!(ctx.metrics.connections(Transport::WebSocket), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_bounded_by_the_send_timeout_for_a_peer_that_never_reads() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect_with(&ctx, Some(Grant::everything()), 4096).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    hub.publish(&big_event("a", 1, 64 * 1024));
    settle().await;
    let start = Instant::now();
    ctx.shutdown.cancel();
    within("the session to end", session).await.unwrap();
    let bound = ctx.config.send_timeout + Duration::from_secs(5);
    assert!(
        start.elapsed() <= bound,
        "the server's drain waits on this session: {:?}",
        start.elapsed()
    );
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_session_blocked_on_its_peer_without_waiting_for_the_send_timeout() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let (mut client, session) = connect_with(&ctx, Some(Grant::everything()), 4096).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    hub.publish(&big_event("a", 1, 64 * 1024));
    settle().await;
    let start = Instant::now();
    ctx.shutdown.cancel();
    within("the session to end", session).await.unwrap();
    // Only the close frame's own limit (5 s) is spent on a peer that never reads, not the
    // write's send timeout (10 s, past the server's default shutdown grace), and it is not
    // counted as a slow consumer.
    assert!(
        start.elapsed() <= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(metric(&ctx, SLOW_CONSUMERS), "0");
    drop(client);
}

// === credentials ===

fn tokens() -> Tokens {
    Tokens(HashMap::from([
        ("all", Grant::everything()),
        (
            "only-a",
            Grant::channels(vec![ChannelPattern::new("a").unwrap()], None),
        ),
    ]))
}

#[tokio::test(start_paused = true)]
async fn without_a_credential_the_auth_frame_must_come_in_time() {
    let hub = FakeHub::new();
    let ctx = context_with_tokens(&hub, TransportConfig::default(), tokens());
    let (mut client, session) = connect_with(&ctx, None, ROOMY).await;
    let start = Instant::now();
    let (close, frames) = until_close(&mut client).await;
    assert_eq!(start.elapsed(), ctx.config.ws_auth_timeout);
    assert_eq!(
        frames,
        [error_frame(
            None,
            "unauthorized",
            "no valid auth frame in time: send {\"op\":\"auth\",\"token\":\"...\"} first"
        )]
    );
    assert_eq!(close, (4001, "unauthorized".to_owned()));
    within("the session to end", session).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_bad_auth_frame_is_an_error_and_the_deadline_still_runs() {
    let hub = FakeHub::new();
    let ctx = context_with_tokens(&hub, TransportConfig::default(), tokens());
    let (mut client, _session) = connect_with(&ctx, None, ROOMY).await;
    let start = Instant::now();
    send(
        &mut client,
        json!({"op": "subscribe", "id": 1, "channel": "a"}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        error_frame(
            Some(1),
            "unauthorized",
            "send {\"op\":\"auth\",\"token\":\"...\"} before subscribing"
        )
    );
    send(&mut client, json!({"op": "auth", "id": 2, "token": "nope"})).await;
    assert_eq!(
        next_json(&mut client).await,
        error_frame(Some(2), "unauthorized", "unknown token")
    );
    let (close, _) = until_close(&mut client).await;
    assert_eq!(close, (4001, "unauthorized".to_owned()));
    assert_eq!(start.elapsed(), ctx.config.ws_auth_timeout);
    assert!(hub.subscribed().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_auth_frame_lifts_the_deadline() {
    let hub = FakeHub::new();
    let ctx = context_with_tokens(&hub, TransportConfig::default(), tokens());
    let (mut client, session) = connect_with(&ctx, None, ROOMY).await;
    send(&mut client, json!({"op": "auth", "id": 1, "token": "all"})).await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"op": "authed", "id": 1})
    );
    subscribe(&mut client, 2, "a", json!({})).await;
    tokio::time::advance(ctx.config.ws_auth_timeout * 2).await;
    send(&mut client, json!({"op": "ping", "id": 3})).await;
    assert_eq!(next_json(&mut client).await, json!({"op": "pong", "id": 3}));
    assert!(!session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn an_auth_frame_moves_the_deadline_to_the_new_token_s_expiry() {
    let hub = FakeHub::new();
    let life = Duration::from_secs(60);
    let expiring = Grant::channels(
        vec![ChannelPattern::new("a").unwrap()],
        Some(std::time::SystemTime::now() + life),
    );
    let mut tokens = tokens();
    tokens.0.insert("expiring", expiring);
    let ctx = context_with_tokens(&hub, TransportConfig::default(), tokens);
    let (mut client, _session) = connect_with(&ctx, None, ROOMY).await;
    let start = Instant::now();
    tokio::time::advance(Duration::from_secs(5)).await;
    send(
        &mut client,
        json!({"op": "auth", "id": 1, "token": "expiring"}),
    )
    .await;
    let authed = next_json(&mut client).await;
    assert_eq!(
        (&authed["op"], &authed["id"]),
        (&json!("authed"), &json!(1))
    );
    assert!(
        authed["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{authed}"
    );
    let (close, frames) = until_close(&mut client).await;
    // Not at the auth deadline (10 s) but when the token runs out, 60 s after the frame.
    let at = start.elapsed();
    assert!(
        at > Duration::from_secs(64) && at <= Duration::from_secs(65),
        "{at:?}"
    );
    assert_eq!(
        frames,
        [error_frame(None, "token_expired", access::EXPIRED)]
    );
    assert_eq!(close, (4003, "token_expired".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn an_expiring_token_closes_with_4003_when_it_expires() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let life = Duration::from_secs(30);
    let grant = Grant::channels(
        vec![ChannelPattern::new("a").unwrap()],
        Some(std::time::SystemTime::now() + life),
    );
    let start = Instant::now();
    let (mut client, _session) = connect_with(&ctx, Some(grant), ROOMY).await;
    let (close, frames) = until_close(&mut client).await;
    // The deadline is taken from the wall clock once, so it falls just short of `life`.
    let at = start.elapsed();
    assert!(at > life - Duration::from_secs(1) && at <= life, "{at:?}");
    assert_eq!(
        frames,
        [error_frame(None, "token_expired", access::EXPIRED)]
    );
    assert_eq!(close, (4003, "token_expired".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_narrower_token_unsubscribes_the_channels_it_no_longer_covers() {
    let hub = FakeHub::new();
    let ctx = context_with_tokens(&hub, TransportConfig::default(), tokens());
    let (mut client, _session) = connect(&ctx).await;
    subscribe(&mut client, 1, "a", json!({})).await;
    subscribe(&mut client, 2, "b", json!({})).await;
    send(
        &mut client,
        json!({"op": "auth", "id": 3, "token": "only-a"}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        json!({
            "op": "error",
            "id": 3,
            "channel": "b",
            "error": {
                "code": "forbidden",
                "message": "your token does not allow channel \"b\"; unsubscribed",
            },
        })
    );
    assert_eq!(
        next_json(&mut client).await,
        json!({"op": "authed", "id": 3})
    );
    assert_eq!((hub.sinks("a"), hub.sinks("b")), (1, 0));
    send(
        &mut client,
        json!({"op": "subscribe", "id": 4, "channel": "b"}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        error_frame(
            Some(4),
            "forbidden",
            "your token does not allow channel \"b\""
        )
    );
}
