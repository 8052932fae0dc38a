//! HTTP streaming `/v1/stream` (NDJSON): control lines, ordered envelopes, resume, reset.

use serde_json::json;

use crate::support::{channel, config, http::LineReader, http::open, start, within};

async fn stream(server: &crate::support::TestServer, query: &str) -> LineReader {
    let res = open(server.addr, &format!("/v1/stream?{query}"), &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    LineReader::new(res.into_body())
}

#[tokio::test]
async fn streams_one_envelope_per_line_after_a_subscribed_line() {
    let server = start(config()).await;
    let ch = channel("nd-order");
    let mut lines = stream(&server, &format!("channel={ch}")).await;
    let head = within("subscribed", lines.next_json()).await.unwrap();
    assert_eq!(
        (head["op"].as_str(), head["channel"].as_str()),
        (Some("subscribed"), Some(ch.as_str()))
    );
    server.publish_range(&ch, 1, 10).await;
    for n in 1..=10 {
        let line = within("an event line", lines.next_line()).await.unwrap();
        let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(ev.get("op").is_none(), "event lines carry no op");
        assert_eq!(ev["offset"], n);
        assert_eq!(ev["data"], json!({ "n": n }));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn resumes_from_a_cursor_and_resets_past_history() {
    let mut cfg = config();
    cfg.history.size = 3;
    let server = start(cfg).await;
    let ch = channel("nd-resume");
    let cursors = server.publish_range(&ch, 1, 6).await;

    let mut lines = stream(&server, &format!("channel={ch}&cursor={}", cursors[3])).await;
    assert_eq!(
        within("head", lines.next_json()).await.unwrap()["op"],
        "subscribed"
    );
    assert_eq!(within("5", lines.next_json()).await.unwrap()["offset"], 5);
    assert_eq!(within("6", lines.next_json()).await.unwrap()["offset"], 6);

    let mut lines = stream(&server, &format!("cursor={}", cursors[0])).await;
    assert_eq!(
        within("head", lines.next_json()).await.unwrap()["op"],
        "subscribed"
    );
    let reset = within("reset", lines.next_json()).await.unwrap();
    assert_eq!(
        (reset["op"].as_str(), reset["offset"].as_u64()),
        (Some("reset"), Some(4))
    );
    for n in 4..=6 {
        assert_eq!(
            within("replay", lines.next_json()).await.unwrap()["offset"],
            n
        );
    }
    server.shutdown().await;
}
