//! Graceful shutdown: WebSockets get 1001, SSE and streams a goodbye and a clean end, held
//! long-polls an answer, and new connections are refused.

use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    channel, config, http::LineReader, http::open, sse::SseClient, start, within, ws::WsClient,
};

#[tokio::test]
async fn every_transport_is_told_and_ends_cleanly() {
    let mut server = start(config()).await;
    let addr = server.addr;
    let ch = channel("bye");
    let mut ws = WsClient::connect(addr).await;
    ws.subscribe(1, &ch, json!({})).await;
    let mut sse = SseClient::connect(addr, &format!("channel={ch}"), None).await;
    let mut lines = LineReader::new(
        open(addr, &format!("/v1/stream?channel={ch}"), &[])
            .await
            .into_body(),
    );
    within("stream head", lines.next_json()).await.unwrap();
    let poll_query = format!("/v1/poll?channel={ch}&timeout=60");
    let held = tokio::spawn(async move { crate::support::http::get_json(addr, &poll_query).await });
    server
        .wait_metric("switchyard_connections{transport=\"longpoll\"}", 1.0)
        .await;

    let task = server.begin_shutdown();

    let (close, _) = ws.until_close().await;
    assert_eq!(close.expect("close frame").code, CloseCode::Away);

    let (ev, data) = sse.next_json().await;
    assert_eq!(
        (ev.event.as_str(), data["code"].as_str()),
        ("disconnect", Some("shutting_down"))
    );
    assert!(
        within("SSE end", sse.next()).await.is_none(),
        "the SSE body ends"
    );

    let goodbye = within("stream goodbye", lines.next_json()).await.unwrap();
    assert_eq!(
        (goodbye["op"].as_str(), goodbye["error"]["code"].as_str()),
        (Some("error"), Some("shutting_down"))
    );
    assert!(
        within("stream end", lines.next_line()).await.is_none(),
        "the stream ends"
    );

    let (status, body) = within("held poll", held).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["events"], json!([]));

    within("server exit", task).await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn the_drain_period_turns_readiness_off_while_still_serving() {
    let mut cfg = config();
    cfg.shutdown_drain_secs = 2;
    let mut server = start(cfg).await;
    let addr = server.addr;
    let (status, _) = crate::support::http::get_json(addr, "/readyz").await;
    assert_eq!(status, 200);
    let task = server.begin_shutdown();
    within("readiness to turn off", async {
        loop {
            let (status, body) = crate::support::http::get_json(addr, "/readyz").await;
            if status == 503 {
                assert_eq!(body["error"]["code"], "shutting_down");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // Still serving during the drain.
    let (status, _) = crate::support::http::get_json(addr, "/healthz").await;
    assert_eq!(status, 200);
    within("server exit", task).await.unwrap().unwrap();
}
