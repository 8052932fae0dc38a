//! Unit tests of the long-poll request: answers, holds, limits, resets and shutdown, clock paused.

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{Value, json};
use switchyard_protocol::ChannelPattern;
use tokio::{task::JoinHandle, time::Instant};

use super::respond;
use crate::{
    Context, TransportConfig,
    access::Grant,
    hub::{HubError, StartFrom},
    metrics::Transport,
    testing::{
        FakeHub, Tokens, context, context_with_tokens, cursor, envelope, event, json_body, pos,
        request, settle, within,
    },
};

/// Starts a poll of `uri`; the task answers its status and JSON body.
fn poll(ctx: &Arc<Context>, uri: &str) -> JoinHandle<(u16, Value)> {
    let ctx = Arc::clone(ctx);
    let parts = request(uri, &[]);
    tokio::spawn(async move {
        let res = respond(ctx, &parts).await;
        if res.status().is_success() {
            assert_eq!(res.headers()["cache-control"], "no-store");
        }
        (res.status().as_u16(), json_body(res.into_body()).await)
    })
}

async fn answer(poll: JoinHandle<(u16, Value)>) -> (u16, Value) {
    within("the poll's answer", poll).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn answers_at_once_with_the_events_after_the_cursor_up_to_the_limit() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    hub.answer("a", pos(1), None, (2..=5).map(|n| event("a", n)).collect());
    let start = Instant::now();
    let uri = format!("/v1/poll?channel=a&cursor={}&limit=3", cursor(&[("a", 1)]));
    let (status, body) = answer(poll(&ctx, &uri)).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "events": [envelope("a", 2), envelope("a", 3), envelope("a", 4)],
            "cursor": cursor(&[("a", 4)]),
            "reset": false,
        }),
        "the cursor pages on from the last event returned"
    );
    assert_eq!(
        hub.subscribed(),
        [("a".to_owned(), StartFrom::Position(pos(1)))]
    );
    assert_eq!(hub.sinks("a"), 0, "unsubscribed once answered");
}

#[tokio::test(start_paused = true)]
async fn holds_until_an_event_arrives() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let start = Instant::now();
    let held = poll(&ctx, "/v1/poll?channel=a&timeout=30");
    hub.until_sinks("a", 1).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!held.is_finished(), "still held after 10 s");
    assert_eq!(ctx.metrics.connections(Transport::LongPoll), 1);
    hub.publish(&event("a", 1));
    let (status, body) = answer(held).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(10),
        "answered when the event came"
    );
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"events": [envelope("a", 1)], "cursor": cursor(&[("a", 1)]), "reset": false})
    );
    assert_eq!(ctx.metrics.connections(Transport::LongPoll), 0);
    assert_eq!(hub.sinks("a"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_burst_while_held_is_answered_up_to_the_limit() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let held = poll(&ctx, "/v1/poll?channel=a&limit=2");
    hub.until_sinks("a", 1).await;
    for n in 1..=3 {
        hub.publish(&event("a", n));
    }
    let (_, body) = answer(held).await;
    assert_eq!(
        body,
        json!({
            "events": [envelope("a", 1), envelope("a", 2)],
            "cursor": cursor(&[("a", 2)]),
            "reset": false,
        })
    );
}

#[tokio::test(start_paused = true)]
async fn times_out_with_an_empty_list_and_the_same_cursor() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let start = Instant::now();
    let uri = format!(
        "/v1/poll?channel=a&cursor={}&timeout=5",
        cursor(&[("a", 1)])
    );
    let (status, body) = answer(poll(&ctx, &uri)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"events": [], "cursor": cursor(&[("a", 1)]), "reset": false})
    );
}

#[tokio::test(start_paused = true)]
async fn the_hold_defaults_to_the_configured_timeout_and_zero_means_no_hold() {
    let hub = FakeHub::new();
    let config = TransportConfig {
        poll_default_timeout: Duration::from_secs(42),
        ..TransportConfig::default()
    };
    let ctx = context(&hub, config);
    let start = Instant::now();
    let (_, body) = answer(poll(&ctx, "/v1/poll?channel=a&timeout=0")).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        body,
        json!({"events": [], "cursor": cursor(&[("a", 0)]), "reset": false}),
        "without a cursor it starts from now, and says where that is"
    );
    answer(poll(&ctx, "/v1/poll?channel=a")).await;
    assert_eq!(start.elapsed(), Duration::from_secs(42));
}

#[tokio::test(start_paused = true)]
async fn a_reset_is_answered_at_once_and_names_its_channel() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    hub.answer("a", pos(3), Some(4), vec![event("a", 4), event("a", 5)]);
    let start = Instant::now();
    let uri = format!("/v1/poll?cursor={}", cursor(&[("a", 1), ("b", 0)]));
    let (_, body) = answer(poll(&ctx, &uri)).await;
    assert_eq!(
        body,
        json!({
            "events": [envelope("a", 4), envelope("a", 5)],
            "cursor": cursor(&[("a", 5), ("b", 0)]),
            "reset": true,
            "resets": [{"channel": "a", "offset": 4}],
        })
    );
    // Even with nothing to return, a reset is news: no hold.
    hub.answer("a", pos(3), Some(4), Vec::new());
    let uri = format!("/v1/poll?channel=a&cursor={}", cursor(&[("a", 1)]));
    let (_, body) = answer(poll(&ctx, &uri)).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        body,
        json!({
            "events": [],
            "cursor": cursor(&[("a", 3)]),
            "reset": true,
            "resets": [{"channel": "a", "offset": 4}],
        })
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_a_held_poll_at_once() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let held = poll(
        &ctx,
        &format!(
            "/v1/poll?channel=a&cursor={}&timeout=60",
            cursor(&[("a", 7)])
        ),
    );
    hub.until_sinks("a", 1).await;
    settle().await;
    let start = Instant::now();
    ctx.shutdown.cancel();
    let (status, body) = answer(held).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"events": [], "cursor": cursor(&[("a", 7)]), "reset": false})
    );
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_feed_answers_a_held_poll_with_its_cursor_unchanged() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    let held = poll(
        &ctx,
        &format!("/v1/poll?channel=a&cursor={}", cursor(&[("a", 7)])),
    );
    hub.until_sinks("a", 1).await;
    hub.interrupt("a");
    let start = Instant::now();
    let (_, body) = answer(held).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        body,
        json!({"events": [], "cursor": cursor(&[("a", 7)]), "reset": false}),
        "the next poll resumes from the same place"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hold_ends_when_the_token_does() {
    let hub = FakeHub::new();
    let life = Duration::from_secs(20);
    let short = Grant::channels(
        vec![ChannelPattern::new("a").unwrap()],
        Some(std::time::SystemTime::now() + life),
    );
    let ctx = context_with_tokens(
        &hub,
        TransportConfig::default(),
        Tokens(HashMap::from([("short", short)])),
    );
    let start = Instant::now();
    let (status, body) = answer(poll(&ctx, "/v1/poll?channel=a&timeout=60&token=short")).await;
    let at = start.elapsed();
    assert!(at > life - Duration::from_secs(1) && at <= life, "{at:?}");
    assert_eq!(status, 200);
    assert_eq!(body["events"], json!([]));
}

#[tokio::test(start_paused = true)]
async fn refusals_are_json_errors_and_hold_nothing() {
    let hub = FakeHub::new();
    let ctx = context(&hub, TransportConfig::default());
    for (uri, status, code) in [
        ("/v1/poll?channel=a&timeout=61", 400, "invalid_parameter"),
        ("/v1/poll?channel=a&limit=0", 400, "invalid_parameter"),
        ("/v1/poll?timeout=1", 400, "invalid_request"),
    ] {
        let (s, body) = answer(poll(&ctx, uri)).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{uri}"
        );
    }
    assert!(hub.subscribed().is_empty());

    hub.fail("a", HubError::Unavailable("redis is down".into()));
    let (s, body) = answer(poll(&ctx, "/v1/poll?channel=a")).await;
    assert_eq!(
        (s, body),
        (
            503,
            json!({"error": {"code": "unavailable", "message": "event hub unavailable: redis is down"}})
        )
    );

    ctx.shutdown.cancel();
    let (s, body) = answer(poll(&ctx, "/v1/poll?channel=a")).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (503, Some("shutting_down"))
    );
    assert_eq!(
        hub.subscribed().len(),
        1,
        "only the refused subscribe reached the hub"
    );
}
