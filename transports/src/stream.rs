//! HTTP streaming, `GET /v1/stream?channel=..`: NDJSON, one envelope per line; resumes from
//! `?cursor=` (repeat it, one per channel, or pass a combined cursor).
//!
//! Control lines are WebSocket server frames and carry an `"op"` (event lines never do):
//! `subscribed` per channel first (with the starting cursor), `reset` when history no longer
//! reaches the cursor, and `error` just before the server ends the stream on purpose
//! (`slow_consumer`, `shutting_down`). Heartbeats are empty lines. A `HEAD` is checked like a
//! `GET` and answered at once.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, request::Parts};
use switchyard_protocol::{ChannelName, Cursor, ErrorBody, ErrorCode, ServerFrame};

use crate::{Context, http::Body, hub::Event, metrics::Transport, push, session::Session};

struct Ndjson;

/// Serves an NDJSON streaming request.
pub async fn respond(ctx: Arc<Context>, parts: &Parts) -> Response<Body> {
    push::respond(ctx, parts, Ndjson).await
}

/// Answers a `HEAD`: the same checks and headers as [`respond`], no body, nothing
/// subscribed.
pub fn head(ctx: &Context, parts: &Parts) -> Response<Body> {
    push::head::<Ndjson>(ctx, parts)
}

fn line(frame: &ServerFrame) -> Bytes {
    let mut text = frame.to_json();
    text.push('\n');
    Bytes::from(text)
}

impl push::Framing for Ndjson {
    const TRANSPORT: Transport = Transport::Stream;
    const CONTENT_TYPE: &'static str = "application/x-ndjson";
    const READS_LAST_EVENT_ID: bool = false;
    const SHARED_FRAMES: bool = true;

    fn head(&self, session: &Session, channels: &[(ChannelName, u64)]) -> Bytes {
        let mut out = Vec::new();
        for (channel, current) in channels {
            let start = session
                .position(channel.as_str())
                .expect("subscribed channel");
            out.extend_from_slice(&line(&ServerFrame::Subscribed {
                id: None,
                channel: channel.to_string(),
                offset: *current,
                cursor: Cursor::encode_single(channel, start),
            }));
        }
        Bytes::from(out)
    }

    fn reset(&self, session: &Session, channel: &ChannelName, oldest: u64) -> Bytes {
        let start = session
            .position(channel.as_str())
            .expect("subscribed channel");
        line(&ServerFrame::Reset {
            channel: channel.to_string(),
            offset: oldest,
            cursor: Cursor::encode_single(channel, start),
        })
    }

    fn event(&self, _session: &Session, event: &Event, _single: bool) -> Bytes {
        event.ndjson_line()
    }

    fn heartbeat(&self) -> Bytes {
        Bytes::from_static(b"\n")
    }

    fn goodbye(&self, code: ErrorCode, message: &str) -> Bytes {
        line(&ServerFrame::Error {
            channel: None,
            id: None,
            error: ErrorBody::new(code, message),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tokio::time::Instant;

    use super::*;
    use crate::{
        TransportConfig,
        hub::StartFrom,
        testing::{FakeHub, context, cursor, envelope, event, next_chunk, pos, request, within},
    };

    async fn open(ctx: &Arc<Context>, uri: &str, headers: &[(&str, &str)]) -> Body {
        let res = within(
            "the response",
            respond(Arc::clone(ctx), &request(uri, headers)),
        )
        .await;
        assert_eq!(res.status(), 200);
        let h = res.headers();
        assert_eq!(h["content-type"], "application/x-ndjson");
        assert_eq!(h["cache-control"], "no-cache, no-store");
        assert_eq!(h["x-accel-buffering"], "no");
        res.into_body()
    }

    /// The next chunk's lines, each parsed as JSON.
    async fn lines(body: &mut Body) -> Vec<Value> {
        let chunk = next_chunk(body).await.expect("the stream goes on");
        let text = chunk
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("whole lines: {chunk:?}"));
        text.split('\n')
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn subscribed_lines_come_first_then_one_envelope_per_line() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        hub.answer("a", pos(3), None, vec![event("a", 4)]);
        let uri = format!("/v1/stream?channel=a,b&cursor={}", cursor(&[("a", 3)]));
        let mut body = open(&ctx, &uri, &[]).await;
        assert_eq!(
            lines(&mut body).await,
            [
                json!({"op": "subscribed", "channel": "a", "offset": 4, "cursor": cursor(&[("a", 3)])}),
                json!({"op": "subscribed", "channel": "b", "offset": 0, "cursor": cursor(&[("b", 0)])}),
            ]
        );
        assert_eq!(
            lines(&mut body).await,
            [envelope("a", 4)],
            "event lines carry no op"
        );
        hub.publish(&event("b", 1));
        assert_eq!(lines(&mut body).await, [envelope("b", 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn last_event_id_is_not_read() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let last = cursor(&[("a", 5)]);
        open(
            &ctx,
            "/v1/stream?channel=a",
            &[("last-event-id", last.as_str())],
        )
        .await;
        assert_eq!(hub.subscribed(), [("a".to_owned(), StartFrom::Now)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_line_follows_the_subscribed_lines() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        hub.answer("a", pos(3), Some(4), vec![event("a", 4)]);
        let uri = format!("/v1/stream?cursor={}", cursor(&[("a", 1)]));
        let mut body = open(&ctx, &uri, &[]).await;
        assert_eq!(lines(&mut body).await[0]["op"], "subscribed");
        assert_eq!(
            lines(&mut body).await,
            [json!({"op": "reset", "channel": "a", "offset": 4, "cursor": cursor(&[("a", 3)])})]
        );
        assert_eq!(lines(&mut body).await, [envelope("a", 4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_are_empty_lines_at_the_interval() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut body = open(&ctx, "/v1/stream?channel=a", &[]).await;
        let start = Instant::now();
        lines(&mut body).await;
        assert_eq!(next_chunk(&mut body).await.as_deref(), Some("\n"));
        assert_eq!(start.elapsed(), ctx.config.heartbeat_interval);
    }

    fn error_line(code: &str, message: &str) -> Vec<Value> {
        vec![json!({"op": "error", "error": {"code": code, "message": message}})]
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_stream_with_an_error_line() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut body = open(&ctx, "/v1/stream?channel=a", &[]).await;
        lines(&mut body).await;
        ctx.shutdown.cancel();
        assert_eq!(
            lines(&mut body).await,
            error_line(
                "shutting_down",
                "the server is shutting down; reconnect with your cursor"
            )
        );
        assert_eq!(next_chunk(&mut body).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_and_an_interrupted_feed_get_their_own_error_line() {
        let hub = FakeHub::new();
        let config = TransportConfig {
            queue_capacity: 1,
            ..TransportConfig::default()
        };
        let ctx = context(&hub, config);
        let mut slow = open(&ctx, "/v1/stream?channel=a", &[]).await;
        lines(&mut slow).await;
        hub.publish(&event("a", 1));
        hub.publish(&event("a", 2));
        assert_eq!(
            lines(&mut slow).await,
            error_line(
                "slow_consumer",
                "too slow to keep up; reconnect with your cursor"
            )
        );
        assert_eq!(next_chunk(&mut slow).await, None);

        let mut cut = open(&ctx, "/v1/stream?channel=b", &[]).await;
        lines(&mut cut).await;
        hub.interrupt("b");
        assert_eq!(
            lines(&mut cut).await,
            error_line(
                "unavailable",
                "the live feed was interrupted (the engine was unreachable, or the channel's \
                 history restarted); reconnect with your cursor"
            )
        );
        assert_eq!(next_chunk(&mut cut).await, None);
    }
}
