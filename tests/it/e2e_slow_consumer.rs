//! Slow consumers are disconnected with a reason, never block publishers, and resume from
//! their cursor without loss.

use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{TestServer, channel, config, http, start, within, ws::WsClient};

fn slow_config() -> switchyard::config::Config {
    let mut cfg = config();
    cfg.consumers.queue_capacity = 8;
    cfg.consumers.send_timeout_secs = 5;
    cfg.history.size = 1000;
    cfg
}

/// 16 KiB payloads: a few hundred fill the kernel's buffers (the client's is 4 KiB).
fn payload(n: u64) -> Value {
    json!({"n": n, "pad": "x".repeat(16 * 1024)})
}

const EVENTS: u64 = 800;

/// Publishes `payload(1..)` at full speed until the server reports `series` at `value`
/// (looked at every 20 events), at most [`EVENTS`]; returns how many it published. A
/// WebSocket's close frame waits at most 5 s for a slow client to read it, so the test
/// reads then, not after publishing the rest (seconds more on a slower engine).
async fn publish_until(server: &TestServer, ch: &str, series: &str, value: f64) -> u64 {
    for n in 1..=EVENTS {
        server.publish(ch, "big", payload(n)).await;
        if n % 20 == 0 && server.metric(series).await == value {
            return n;
        }
    }
    EVENTS
}

#[tokio::test]
async fn a_websocket_that_stops_reading_gets_4008_and_resumes_without_loss() {
    let server = start(slow_config()).await;
    let ch = channel("slow-ws");
    let mut client = WsClient::connect_with(server.addr, true).await;
    client.subscribe(1, &ch, json!({})).await;
    // The client reads nothing while the publisher goes on at full speed.
    let disconnects = "switchyard_slow_consumer_disconnects_total{transport=\"websocket\"}";
    let published = within(
        "publishing never waits on a slow consumer",
        publish_until(&server, &ch, disconnects, 1.0),
    )
    .await;
    server.wait_metric(disconnects, 1.0).await;

    let (close, frames) = client.until_close().await;
    let close = close.expect("a close frame");
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::from(4008), "slow_consumer")
    );
    let offsets: Vec<u64> = frames
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    assert!(
        !offsets.is_empty() && (offsets.len() as u64) < published,
        "{} delivered",
        offsets.len()
    );
    assert_eq!(
        offsets,
        (1..=offsets.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    server
        .wait_metric("switchyard_connections{transport=\"websocket\"}", 0.0)
        .await;

    let last = frames.last().unwrap()["cursor"].clone();
    let mut again = WsClient::connect(server.addr).await;
    again.subscribe(1, &ch, json!({"cursor": last})).await;
    for n in offsets.len() as u64 + 1..=published {
        assert_eq!(again.next_event().await["offset"], n);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_sse_consumer_that_stops_reading_is_told_and_resumes_without_loss() {
    let mut cfg = slow_config();
    // Once the queue overflowed, the server gives the stream this long to say goodbye:
    // longer than publishing the rest takes on any engine (the client reads only then).
    cfg.consumers.send_timeout_secs = 30;
    let server = start(cfg).await;
    let ch = channel("slow-sse");
    let stream = http::connect(server.addr, true).await;
    let req = http::build(
        server.addr,
        "GET",
        &format!("/v1/sse?channel={ch}"),
        &[],
        Vec::new(),
    );
    let res = http::send_on(stream, req).await;
    server
        .wait_metric("switchyard_connections{transport=\"sse\"}", 1.0)
        .await;
    // Each publish is bounded, not the 800 together: a publish that waited on the slow
    // consumer would hang, while the total only measures how loaded the machine is.
    for n in 1..=EVENTS {
        within(
            "a publish (it never waits on a slow consumer)",
            server.publish(&ch, "big", payload(n)),
        )
        .await;
    }

    // Now read everything that was sent: events in order, then the goodbye, then the end.
    let body = within("the SSE body to end", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let blocks: Vec<&str> = text
        .split("\n\n")
        .filter(|b| b.contains("data: "))
        .collect();
    let (last, events) = blocks.split_last().unwrap();
    assert!(
        last.contains("event: disconnect") && last.contains("slow_consumer"),
        "{last:.200}"
    );
    let mut cursor = None;
    for (i, block) in events.iter().enumerate() {
        let data = block
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        let ev: Value = serde_json::from_str(data).unwrap();
        assert_eq!(ev["offset"], i as u64 + 1, "in order, no gap");
        cursor = Some(ev["cursor"].as_str().unwrap().to_owned());
    }
    assert!((events.len() as u64) < EVENTS);
    assert_eq!(
        server
            .metric("switchyard_slow_consumer_disconnects_total{transport=\"sse\"}")
            .await,
        1.0
    );

    let mut resumed = crate::support::sse::SseClient::connect(
        server.addr,
        &format!("channel={ch}"),
        cursor.as_deref(),
    )
    .await;
    for n in events.len() as u64 + 1..=EVENTS {
        assert_eq!(resumed.next_json().await.1["offset"], n);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_consumer_that_never_reads_again_is_dropped() {
    let mut cfg = slow_config();
    cfg.consumers.send_timeout_secs = 1;
    let server = start(cfg).await;
    let ch = channel("slow-dead");
    let stream = http::connect(server.addr, true).await;
    let req = http::build(
        server.addr,
        "GET",
        &format!("/v1/stream?channel={ch}"),
        &[],
        Vec::new(),
    );
    let _res = http::send_on(stream, req).await;
    server
        .wait_metric("switchyard_connections{transport=\"stream\"}", 1.0)
        .await;
    // The response is held but never read: the server closes it after its grace period
    // (the only HTTP connection left is the one reading /metrics).
    let streams = "switchyard_connections{transport=\"stream\"}";
    publish_until(&server, &ch, streams, 0.0).await;
    server.wait_metric(streams, 0.0).await;
    server.wait_metric("switchyard_http_connections", 1.0).await;
    server.shutdown().await;
}
