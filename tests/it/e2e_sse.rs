//! Server-Sent Events `/v1/sse`: format, resume by `Last-Event-ID` and `?cursor=`, combined
//! cursors over several channels, reset, heartbeats and request errors.

use serde_json::json;
use switchyard_protocol::Cursor;

use crate::support::{
    channel, config,
    http::{assert_error, get_json},
    sse::SseClient,
    start, within,
};

#[tokio::test]
async fn delivers_events_with_cursor_ids_types_and_envelopes() {
    let server = start(config()).await;
    let ch = channel("sse-order");
    let mut sse = SseClient::connect(server.addr, &format!("channel={ch}"), None).await;
    assert!(sse.head.starts_with("retry: 2000\n"), "{:?}", sse.head);
    let start_cursor = Cursor::decode(sse.head_id()).unwrap();
    assert_eq!(start_cursor.get(&ch).unwrap().offset, 0);

    for n in 1..=10u64 {
        server.publish(&ch, "tick", json!({ "n": n })).await;
    }
    for n in 1..=10u64 {
        let (ev, data) = sse.next_json().await;
        assert_eq!(ev.event, "tick");
        assert_eq!(data["offset"], n);
        assert_eq!(data["data"], json!({ "n": n }));
        assert_eq!(
            ev.id,
            data["cursor"].as_str().unwrap(),
            "id: is the event's cursor"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn resumes_from_last_event_id_or_cursor_with_exactly_the_missed_events() {
    let server = start(config()).await;
    let ch = channel("sse-resume");
    let mut sse = SseClient::connect(server.addr, &format!("channel={ch}"), None).await;
    server.publish_range(&ch, 1, 2).await;
    sse.next_json().await;
    let (last, _) = sse.next_json().await;
    drop(sse);
    server.publish_range(&ch, 3, 5).await;

    let mut by_header =
        SseClient::connect(server.addr, &format!("channel={ch}"), Some(&last.id)).await;
    let mut by_query = SseClient::connect(
        server.addr,
        &format!("channel={ch}&cursor={}", last.id),
        None,
    )
    .await;
    for sse in [&mut by_header, &mut by_query] {
        for n in 3..=5 {
            assert_eq!(sse.next_json().await.1["offset"], n);
        }
    }
    server.publish_range(&ch, 6, 6).await;
    assert_eq!(by_header.next_json().await.1["offset"], 6);
    assert_eq!(by_query.next_json().await.1["offset"], 6);
    server.shutdown().await;
}

#[tokio::test]
async fn the_head_id_resumes_without_loss_before_any_event() {
    let server = start(config()).await;
    let ch = channel("sse-head");
    server.publish_range(&ch, 1, 2).await;
    let sse = SseClient::connect(server.addr, &format!("channel={ch}"), None).await;
    let head_id = sse.head_id().to_owned();
    drop(sse);
    server.publish_range(&ch, 3, 3).await;
    // What a browser does: reconnect with the last id it saw, here the head's.
    let mut again = SseClient::connect(server.addr, &format!("channel={ch}"), Some(&head_id)).await;
    assert_eq!(again.next_json().await.1["offset"], 3);
    server.shutdown().await;
}

#[tokio::test]
async fn several_channels_share_one_combined_cursor() {
    let server = start(config()).await;
    let (a, b) = (channel("sse-multi-a"), channel("sse-multi-b"));
    let query = format!("channel={a}&channel={b}");
    let mut sse = SseClient::connect(server.addr, &query, None).await;
    server.publish(&a, "x", json!(1)).await;
    server.publish(&b, "x", json!(1)).await;
    sse.next_json().await;
    let (ev, _) = sse.next_json().await;
    let combined = Cursor::decode(&ev.id).unwrap();
    assert_eq!(
        (
            combined.get(&a).unwrap().offset,
            combined.get(&b).unwrap().offset
        ),
        (1, 1)
    );
    drop(sse);

    server.publish(&a, "x", json!(2)).await;
    server.publish(&b, "x", json!(2)).await;
    server.publish(&b, "x", json!(3)).await;
    // Resuming with only the id (the channels come from the cursor).
    let mut sse = SseClient::connect(server.addr, "", Some(&ev.id)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let (_, data) = sse.next_json().await;
        got.push((
            data["channel"].as_str().unwrap().to_owned(),
            data["offset"].as_u64().unwrap(),
        ));
    }
    got.sort();
    assert_eq!(got, [(a.clone(), 2), (b.clone(), 2), (b.clone(), 3)]);
    server.shutdown().await;
}

#[tokio::test]
async fn reset_is_an_event_when_history_is_gone() {
    let mut cfg = config();
    cfg.history.size = 2;
    let server = start(cfg).await;
    let ch = channel("sse-reset");
    let cursors = server.publish_range(&ch, 1, 5).await;
    let mut sse =
        SseClient::connect(server.addr, &format!("channel={ch}"), Some(&cursors[0])).await;
    let (ev, data) = sse.next_json().await;
    assert_eq!(ev.event, "reset");
    assert_eq!(data["channel"], ch.as_str());
    assert_eq!(data["offset"], 4);
    assert_eq!(sse.next_json().await.1["offset"], 4);
    assert_eq!(sse.next_json().await.1["offset"], 5);
    server.shutdown().await;
}

#[tokio::test]
async fn sends_comment_heartbeats() {
    let mut cfg = config();
    cfg.consumers.heartbeat_secs = 1;
    let server = start(cfg).await;
    let res = crate::support::http::open(server.addr, "/v1/sse?channel=hb", &[]).await;
    let mut body = res.into_body();
    use http_body_util::BodyExt;
    within("a heartbeat", async {
        loop {
            let frame = body.frame().await.unwrap().unwrap();
            if frame
                .data_ref()
                .is_some_and(|d| d.as_ref() == b": heartbeat\n\n")
            {
                return;
            }
        }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let mut cfg = config();
    cfg.consumers.max_channels_per_request = 2;
    let server = start(cfg).await;
    let cases = [
        ("/v1/sse", 400, "invalid_request"),
        ("/v1/sse?channel=a%20b", 400, "invalid_channel"),
        ("/v1/sse?channel=a&cursor=%%%", 400, "invalid_cursor"),
        ("/v1/sse?channel=a,b,c", 400, "too_many_channels"),
    ];
    for (path, status, code) in cases {
        let (s, body) = get_json(server.addr, path).await;
        assert_error(s, &body, status, code);
    }
    let (status, _, body) = crate::support::http::request(
        server.addr,
        "GET",
        "/v1/sse?channel=a",
        &[("last-event-id", "not-a-cursor")],
        Vec::new(),
    )
    .await;
    assert_error(
        status,
        &serde_json::from_slice(&body).unwrap(),
        400,
        "invalid_cursor",
    );
    server.shutdown().await;
}
