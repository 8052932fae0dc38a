//! WebSocket `/v1/ws`: ordered delivery with the envelope, multiplexing, resume, reset,
//! error frames, limits and dead-peer detection.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use crate::support::{self, channel, config, start, within, ws::WsClient};

fn assert_envelope(frame: &Value, channel: &str, offset: u64, event_type: &str, data: &Value) {
    assert_eq!(frame["channel"], channel);
    assert_eq!(frame["offset"], offset);
    assert_eq!(frame["id"], format!("{channel}:{offset}"));
    assert_eq!(frame["type"], event_type);
    assert_eq!(&frame["data"], data);
    let time = frame["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z'),
        "RFC 3339 UTC with millis: {time}"
    );
    assert!(frame["cursor"].as_str().is_some_and(|c| !c.is_empty()));
}

#[tokio::test]
async fn delivers_events_in_order_with_the_envelope() {
    let server = start(config()).await;
    let ch = channel("ws-order");
    let mut client = WsClient::connect(server.addr).await;
    let subscribed = client.subscribe(1, &ch, json!({})).await;
    assert_eq!(subscribed["offset"], 0);
    for n in 1..=20u64 {
        server
            .publish(&ch, "tick", json!({"n": n, "s": "é\n\"q\""}))
            .await;
    }
    for n in 1..=20u64 {
        let ev = client.next_event().await;
        assert_envelope(&ev, &ch, n, "tick", &json!({"n": n, "s": "é\n\"q\""}));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn multiplexes_channels_and_unsubscribes() {
    let server = start(config()).await;
    let (a, b) = (channel("ws-mux-a"), channel("ws-mux-b"));
    let mut client = WsClient::connect(server.addr).await;
    client.subscribe(1, &a, json!({})).await;
    client.subscribe(2, &b, json!({})).await;
    server.publish(&a, "x", json!("a1")).await;
    server.publish(&b, "x", json!("b1")).await;
    assert_eq!(client.next_event().await["data"], "a1");
    assert_eq!(client.next_event().await["data"], "b1");

    client
        .send(json!({"op": "unsubscribe", "id": 3, "channel": a}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"op": "unsubscribed", "id": 3, "channel": a})
    );
    server.publish(&a, "x", json!("a2")).await;
    server.publish(&b, "x", json!("b2")).await;
    assert_eq!(
        client.next_event().await["data"],
        "b2",
        "nothing more from the unsubscribed channel"
    );

    // Subscribing again resumes where asked, with no stale duplicate.
    client.subscribe(4, &a, json!({"after": 1})).await;
    let ev = client.next_event().await;
    assert_eq!(
        (ev["channel"].as_str(), ev["offset"].as_u64()),
        (Some(a.as_str()), Some(2))
    );
    client.send(json!({"op": "ping", "id": 5})).await;
    assert_eq!(client.next_json().await, json!({"op": "pong", "id": 5}));
    server.shutdown().await;
}

#[tokio::test]
async fn resumes_after_a_disconnect_with_exactly_the_missed_events() {
    let server = start(config()).await;
    let ch = channel("ws-resume");
    let mut client = WsClient::connect(server.addr).await;
    client.subscribe(1, &ch, json!({})).await;
    server.publish_range(&ch, 1, 2).await;
    client.next_event().await;
    let last = client.next_event().await;
    drop(client);

    server.publish_range(&ch, 3, 5).await;
    let mut client = WsClient::connect(server.addr).await;
    let subscribed = client
        .subscribe(1, &ch, json!({"cursor": last["cursor"]}))
        .await;
    assert_eq!(subscribed["offset"], 5, "the channel's current offset");
    for n in 3..=5 {
        assert_eq!(client.next_event().await["offset"], n);
    }
    server.publish_range(&ch, 6, 6).await;
    assert_eq!(
        client.next_event().await["offset"],
        6,
        "live after replay, no gap"
    );

    // `after` works the same way within the current history.
    let mut other = WsClient::connect(server.addr).await;
    other.subscribe(9, &ch, json!({"after": 4})).await;
    assert_eq!(other.next_event().await["offset"], 5);
    assert_eq!(other.next_event().await["offset"], 6);
    server.shutdown().await;
}

#[tokio::test]
async fn no_gap_and_no_duplicate_when_publishing_during_the_replay() {
    let server = start(config()).await;
    let ch = channel("ws-race");
    server.publish_range(&ch, 1, 200).await;
    let publisher = {
        let addr = server.addr;
        let ch = ch.clone();
        tokio::spawn(async move {
            for n in 201..=400u64 {
                let (status, _, body) = support::http::post_json(
                    addr,
                    &format!("/v1/channels/{ch}/events"),
                    &[],
                    &json!({"data": n}),
                )
                .await;
                assert_eq!((status.as_u16(), body["offset"].as_u64()), (201, Some(n)));
            }
        })
    };
    let mut clients = Vec::new();
    for i in 0..5u64 {
        let mut c = WsClient::connect(server.addr).await;
        c.subscribe(1, &ch, json!({"after": i * 10})).await;
        clients.push((i * 10, c));
    }
    within("publisher", publisher).await.unwrap();
    for (after, mut c) in clients {
        for n in after + 1..=400 {
            assert_eq!(c.next_event().await["offset"], n);
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn resets_when_history_no_longer_reaches_the_position() {
    let mut cfg = config();
    cfg.history.size = 3;
    let server = start(cfg).await;
    let ch = channel("ws-reset");
    let cursors = server.publish_range(&ch, 1, 6).await;
    let mut client = WsClient::connect(server.addr).await;
    client
        .subscribe(1, &ch, json!({"cursor": cursors[0]}))
        .await;
    let reset = client.next_json().await;
    assert_eq!(reset["op"], "reset");
    assert_eq!(reset["channel"], ch.as_str());
    assert_eq!(reset["offset"], 4, "the oldest offset still kept");
    for n in 4..=6 {
        assert_eq!(client.next_event().await["offset"], n);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays_open() {
    let mut cfg = config();
    cfg.websocket.max_subscriptions = 2;
    let server = start(cfg).await;
    let mut client = WsClient::connect(server.addr).await;
    let expect_error = |frame: Value, id: Option<u64>, code: &str| {
        assert_eq!(frame["op"], "error", "{frame}");
        assert_eq!(frame["error"]["code"], code, "{frame}");
        assert_eq!(frame.get("id").and_then(Value::as_u64), id, "{frame}");
    };

    client.ws.send(Message::text("{nope")).await.unwrap();
    expect_error(client.next_json().await, None, "bad_json");
    client.send(json!({"op": "dance", "id": 7})).await;
    expect_error(client.next_json().await, Some(7), "unknown_op");
    client
        .send(json!({"op": "subscribe", "id": 8, "channel": "bad name!"}))
        .await;
    expect_error(client.next_json().await, Some(8), "invalid_channel");
    client
        .send(json!({"op": "subscribe", "id": 9, "channel": "ok", "cursor": "***"}))
        .await;
    expect_error(client.next_json().await, Some(9), "invalid_cursor");
    client.send(json!({"op": "subscribe", "id": 10})).await;
    expect_error(client.next_json().await, Some(10), "invalid_request");
    client
        .send(json!({"op": "unsubscribe", "id": 11, "channel": "never"}))
        .await;
    expect_error(client.next_json().await, Some(11), "invalid_request");
    client
        .ws
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    expect_error(client.next_json().await, None, "invalid_request");

    client.subscribe(12, "a", json!({})).await;
    client
        .send(json!({"op": "subscribe", "id": 13, "channel": "a"}))
        .await;
    expect_error(client.next_json().await, Some(13), "invalid_request");
    client.subscribe(14, "b", json!({})).await;
    client
        .send(json!({"op": "subscribe", "id": 15, "channel": "c"}))
        .await;
    expect_error(client.next_json().await, Some(15), "too_many_subscriptions");

    client.send(json!({"op": "ping", "id": 16})).await;
    assert_eq!(client.next_json().await, json!({"op": "pong", "id": 16}));
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let mut cfg = config();
    cfg.websocket.max_message_bytes = 1024;
    let server = start(cfg).await;
    let mut client = WsClient::connect(server.addr).await;
    let big = json!({"op": "ping", "id": 1, "pad": "x".repeat(2000)});
    client
        .ws
        .send(Message::text(big.to_string()))
        .await
        .unwrap();
    let (close, _) = client.until_close().await;
    assert_eq!(close.expect("a close frame").code, CloseCode::Size);
    server.shutdown().await;
}

#[tokio::test]
async fn plain_http_to_the_websocket_endpoint_is_a_clear_400() {
    let server = start(config()).await;
    let (status, body) = support::http::get_json(server.addr, "/v1/ws").await;
    support::http::assert_error(status, &body, 400, "invalid_request");
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_by_the_ping_deadline() {
    let mut cfg = config();
    cfg.websocket.ping_interval_secs = 1;
    cfg.websocket.idle_timeout_secs = 2;
    let server = start(cfg).await;
    // A raw handshake, then silence: this peer never answers pings.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let handshake = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr
    );
    raw.write_all(handshake.as_bytes()).await.unwrap();
    server
        .wait_metric("switchyard_connections{transport=\"websocket\"}", 1.0)
        .await;
    let mut sink = Vec::new();
    // Ends (EOF or reset) only if the server drops the peer; `within` fails the test otherwise.
    let _ = within(
        "the server to drop a silent peer",
        raw.read_to_end(&mut sink),
    )
    .await;
    let text = String::from_utf8_lossy(&sink);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    server
        .wait_metric("switchyard_connections{transport=\"websocket\"}", 0.0)
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    use futures_util::StreamExt;
    let server = start(config()).await;
    let mut client = WsClient::connect(server.addr).await;
    client.subscribe(1, "c", json!({})).await;
    client.ws.close(None).await.unwrap();
    // A clean closing handshake: the server's close frame, not a reset (1006 in browsers).
    let reply = within("the close reply", client.ws.next()).await;
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
    server
        .wait_metric("switchyard_connections{transport=\"websocket\"}", 0.0)
        .await;
    server.shutdown().await;
}

/// 256 KiB events: a few fill the kernel's buffers (the client's is 4 KiB).
fn big(n: u64) -> Value {
    json!({"n": n, "pad": "x".repeat(256 * 1024)})
}

/// Sends a close (1000 "bye"), reads on as a closing client does, and returns the server's
/// close, which must come within 2 s, and how many events came before it.
async fn close_and_count(client: &mut WsClient) -> (Option<CloseFrame>, u64) {
    use futures_util::StreamExt;
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    client.ws.close(Some(bye)).await.unwrap();
    let mut in_flight = 0;
    let reply = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match client.ws.next().await {
                Some(Ok(Message::Text(_))) => in_flight += 1,
                Some(Ok(Message::Close(reply))) => return reply,
                Some(Ok(_)) => {}
                other => panic!("no close frame from the server: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no close frame within 2 s ({in_flight} events after ours)"));
    (reply, in_flight)
}

/// Issue 16, item 16: a client leaving in the middle of a large replay gets the server's
/// close frame at once, after at most what was already on its way, not after the rest of
/// the replay (nor never, when it has stopped reading).
#[tokio::test]
async fn a_client_close_in_the_middle_of_a_replay_is_answered_at_once() {
    const EVENTS: u64 = 100;
    const READ: u64 = 10;
    let server = start(config()).await;
    let ch = channel("ws-close-mid-replay");
    // 25 MB of replay: far more than the kernel's buffers hold.
    for n in 1..=EVENTS {
        server.publish(&ch, "big", big(n)).await;
    }
    let mut client = WsClient::connect_with(server.addr, true).await;
    client.subscribe(1, &ch, json!({"after": 0})).await;
    for n in 1..=READ {
        assert_eq!(client.next_event().await["offset"], n);
    }
    let (reply, in_flight) = close_and_count(&mut client).await;
    assert_eq!(
        reply.map(|c| (c.code, c.reason.to_string())),
        Some((CloseCode::Normal, "bye".into()))
    );
    assert!(
        in_flight < (EVENTS - READ) / 2,
        "the rest of the replay ({in_flight} events) came before the close"
    );
    server
        .wait_metric("switchyard_connections{transport=\"websocket\"}", 0.0)
        .await;
    server.shutdown().await;
}

/// The same for live events queued behind a full socket (written directly by the fan-out
/// until it filled, then by the session).
#[tokio::test]
async fn a_client_close_while_live_events_wait_is_answered_at_once() {
    use futures_util::StreamExt;
    const EVENTS: u64 = 60;
    const READ: u64 = 5;
    let server = start(config()).await;
    let ch = channel("ws-close-mid-live");
    let mut client = WsClient::connect_with(server.addr, true).await;
    client.subscribe(1, &ch, json!({})).await;
    for n in 1..=EVENTS {
        server.publish(&ch, "big", big(n)).await;
    }
    for n in 1..=READ {
        assert_eq!(client.next_event().await["offset"], n);
    }
    let (reply, in_flight) = close_and_count(&mut client).await;
    assert_eq!(reply.map(|c| c.code), Some(CloseCode::Normal));
    assert!(
        in_flight < (EVENTS - READ) / 2,
        "the rest of the queue ({in_flight} events) came before the close"
    );
    // Nothing follows the close, directly or not: the connection just ends (a frame after
    // it would be an error here).
    server.publish(&ch, "big", big(EVENTS + 1)).await;
    let end = within("the connection to end", client.ws.next()).await;
    assert!(end.is_none(), "{end:?}");
    server
        .wait_metric("switchyard_connections{transport=\"websocket\"}", 0.0)
        .await;
    server.shutdown().await;
}

/// Issue 16, item 9: a text frame that is not UTF-8 is closed with 1007 (RFC 6455 7.4.1),
/// not dropped without a close frame.
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let server = start(config()).await;
    let mut client = WsClient::connect(server.addr).await;
    // tungstenite sends a hand-made frame as it is: a text frame with invalid UTF-8.
    let bad = Frame::message(
        b"{\"op\":\"\xff\xfe\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    client.ws.send(Message::Frame(bad)).await.unwrap();
    let (close, _) = client.until_close().await;
    let close = close.expect("a close frame");
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Invalid, "invalid UTF-8")
    );
    server
        .wait_metric("switchyard_connections{transport=\"websocket\"}", 0.0)
        .await;
    server.shutdown().await;
}
