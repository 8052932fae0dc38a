//! A cursor produced by one transport is accepted by every other one.

use serde_json::json;

use crate::support::{
    channel, config,
    http::{LineReader, get_json, open},
    sse::SseClient,
    start, within,
    ws::WsClient,
};

#[tokio::test]
async fn cursors_move_between_all_four_transports() {
    let server = start(config()).await;
    let ch = channel("cross");
    server.publish_range(&ch, 1, 1).await;

    // WebSocket -> SSE
    let mut ws = WsClient::connect(server.addr).await;
    ws.subscribe(1, &ch, json!({"after": 0})).await;
    let ws_cursor = ws.next_event().await["cursor"].as_str().unwrap().to_owned();
    server.publish_range(&ch, 2, 2).await;
    let mut sse = SseClient::connect(
        server.addr,
        &format!("channel={ch}&cursor={ws_cursor}"),
        None,
    )
    .await;
    let (ev, data) = sse.next_json().await;
    assert_eq!(data["offset"], 2);

    // SSE (its id) -> long-poll
    server.publish_range(&ch, 3, 3).await;
    let (status, body) = get_json(server.addr, &format!("/v1/poll?cursor={}", ev.id)).await;
    assert_eq!(status, 200);
    assert_eq!(body["events"][0]["offset"], 3);
    let poll_cursor = body["cursor"].as_str().unwrap().to_owned();

    // long-poll -> NDJSON stream
    server.publish_range(&ch, 4, 4).await;
    let mut lines = LineReader::new(
        open(
            server.addr,
            &format!("/v1/stream?cursor={poll_cursor}"),
            &[],
        )
        .await
        .into_body(),
    );
    assert_eq!(
        within("head", lines.next_json()).await.unwrap()["op"],
        "subscribed"
    );
    let line = within("event 4", lines.next_json()).await.unwrap();
    assert_eq!(line["offset"], 4);

    // NDJSON stream -> WebSocket
    server.publish_range(&ch, 5, 5).await;
    let mut ws2 = WsClient::connect(server.addr).await;
    ws2.subscribe(1, &ch, json!({"cursor": line["cursor"]}))
        .await;
    assert_eq!(ws2.next_event().await["offset"], 5);
    server.shutdown().await;
}
