//! Long-poll `/v1/poll`: immediate answers, holds, timeouts, cursors, limits and errors.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    channel, config,
    http::{assert_error, get_json},
    start, within,
};

async fn poll(addr: std::net::SocketAddr, query: &str) -> Value {
    let (status, body) = within("a poll", get_json(addr, &format!("/v1/poll?{query}"))).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn offsets(body: &Value) -> Vec<u64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn answers_at_once_when_events_exist_and_pages_with_the_cursor() {
    let server = start(config()).await;
    let ch = channel("lp-pages");
    let cursors = server.publish_range(&ch, 1, 5).await;
    let first = poll(
        server.addr,
        &format!("channel={ch}&cursor={}&limit=3", cursors[0]),
    )
    .await;
    assert_eq!(offsets(&first), [2, 3, 4]);
    assert_eq!(first["reset"], false);
    assert!(
        first.get("resets").is_none(),
        "resets only appears with a reset"
    );
    let second = poll(
        server.addr,
        &format!(
            "channel={ch}&cursor={}&timeout=0",
            first["cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(offsets(&second), [5]);
    server.shutdown().await;
}

#[tokio::test]
async fn holds_until_an_event_arrives() {
    let server = start(config()).await;
    let ch = channel("lp-hold");
    let addr = server.addr;
    let query = format!("channel={ch}&timeout=30");
    let held = tokio::spawn(async move { poll(addr, &query).await });
    server
        .wait_metric("switchyard_connections{transport=\"longpoll\"}", 1.0)
        .await;
    server.publish(&ch, "x", json!("hello")).await;
    let body = within("the held poll", held).await.unwrap();
    assert_eq!(offsets(&body), [1]);
    assert_eq!(body["events"][0]["data"], "hello");
    server.shutdown().await;
}

#[tokio::test]
async fn times_out_with_an_empty_list_and_the_same_cursor() {
    let server = start(config()).await;
    let ch = channel("lp-timeout");
    let cursors = server.publish_range(&ch, 1, 1).await;
    let started = Instant::now();
    let body = poll(
        server.addr,
        &format!("channel={ch}&cursor={}&timeout=1", cursors[0]),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for the timeout"
    );
    assert_eq!(offsets(&body), Vec::<u64>::new());
    assert_eq!(body["cursor"], cursors[0].as_str());
    assert_eq!(body["reset"], false);
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_cursor_it_starts_from_now() {
    let server = start(config()).await;
    let ch = channel("lp-now");
    server.publish_range(&ch, 1, 3).await;
    let body = poll(server.addr, &format!("channel={ch}&timeout=0")).await;
    assert!(offsets(&body).is_empty());
    server.publish_range(&ch, 4, 4).await;
    let body = poll(
        server.addr,
        &format!("channel={ch}&cursor={}", body["cursor"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        offsets(&body),
        [4],
        "the empty answer's cursor resumes without loss"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn several_channels_and_resets() {
    let mut cfg = config();
    cfg.history.size = 2;
    let server = start(cfg).await;
    let (a, b) = (channel("lp-a"), channel("lp-b"));
    let body = poll(server.addr, &format!("channel={a}&channel={b}&timeout=0")).await;
    let start_cursor = body["cursor"].as_str().unwrap().to_owned();
    server.publish_range(&a, 1, 1).await;
    server.publish_range(&b, 1, 1).await;
    let body = poll(server.addr, &format!("cursor={start_cursor}")).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 2);
    let after_both = body["cursor"].as_str().unwrap().to_owned();

    server.publish_range(&a, 2, 5).await;
    let body = poll(server.addr, &format!("cursor={after_both}")).await;
    assert_eq!(body["reset"], true, "a's history lost 2 and 3");
    assert_eq!(
        body["resets"],
        json!([{"channel": a, "offset": 4}]),
        "says which channel"
    );
    assert_eq!(offsets(&body), [4, 5]);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_parameters_get_json_errors() {
    let server = start(config()).await;
    for (query, code) in [
        ("channel=a&timeout=61", "invalid_parameter"),
        ("channel=a&timeout=soon", "invalid_parameter"),
        ("channel=a&limit=0", "invalid_parameter"),
        ("channel=a&limit=100000", "invalid_parameter"),
        ("timeout=1", "invalid_request"),
        ("channel=a&cursor=AQ", "invalid_cursor"),
    ] {
        let (status, body) = get_json(server.addr, &format!("/v1/poll?{query}")).await;
        assert_error(status, &body, 400, code);
    }
    server.shutdown().await;
}
