//! Server-Sent Events, `GET /v1/sse?channel=..`: `id: <cursor>`, `event: <type>`,
//! `data: <envelope>`; resumes from `Last-Event-ID` or `?cursor=`.
//!
//! The stream opens with `retry:` and an `id:`-only block carrying the starting cursor: it
//! dispatches no event, but sets the browser's last event id, so a reconnect before the
//! first event still resumes without loss. With several channels, `id:` is the combined
//! cursor of all of them. A `HEAD` is checked like a `GET` and answered at once.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Response, request::Parts};
use switchyard_protocol::{ChannelName, Cursor, ErrorBody, ErrorCode};

use crate::{Context, http::Body, hub::Event, metrics::Transport, push, session::Session};

struct Sse {
    retry_ms: u128,
}

/// Serves an SSE request.
pub async fn respond(ctx: Arc<Context>, parts: &Parts) -> Response<Body> {
    let retry_ms = ctx.config.sse_retry.as_millis();
    push::respond(ctx, parts, Sse { retry_ms }).await
}

/// Answers a `HEAD`: the same checks and headers as [`respond`], no body, nothing
/// subscribed.
pub fn head(ctx: &Context, parts: &Parts) -> Response<Body> {
    push::head::<Sse>(ctx, parts)
}

fn block(id: Option<&str>, event: &str, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 64);
    if let Some(id) = id {
        b.put_slice(b"id: ");
        b.put_slice(id.as_bytes());
        b.put_u8(b'\n');
    }
    b.put_slice(b"event: ");
    b.put_slice(event.as_bytes());
    b.put_slice(b"\ndata: ");
    b.put_slice(data);
    b.put_slice(b"\n\n");
    b.freeze()
}

impl push::Framing for Sse {
    const TRANSPORT: Transport = Transport::Sse;
    const CONTENT_TYPE: &'static str = "text/event-stream";
    const READS_LAST_EVENT_ID: bool = true;
    const SHARED_FRAMES: bool = false;

    fn head(&self, session: &Session, _channels: &[(ChannelName, u64)]) -> Bytes {
        Bytes::from(format!(
            "retry: {}\nid: {}\n\n",
            self.retry_ms,
            session.cursor()
        ))
    }

    fn reset(&self, session: &Session, channel: &ChannelName, oldest: u64) -> Bytes {
        let start = session
            .position(channel.as_str())
            .expect("subscribed channel");
        let data = serde_json::json!({
            "channel": channel,
            "offset": oldest,
            "cursor": Cursor::encode_single(channel, start),
        });
        block(
            Some(&session.cursor()),
            "reset",
            data.to_string().as_bytes(),
        )
    }

    fn event(&self, session: &Session, event: &Event, single: bool) -> Bytes {
        // A transient event (presence join or leave) moves no position: no `id:` line, on
        // a stream of any number of channels.
        if single || event.is_transient() {
            return event.sse_frame();
        }
        let cursor = session.cursor();
        let tail = event.sse_frame_without_id();
        let mut b = BytesMut::with_capacity(cursor.len() + 5 + tail.len());
        b.put_slice(b"id: ");
        b.put_slice(cursor.as_bytes());
        b.put_u8(b'\n');
        b.put_slice(&tail);
        b.freeze()
    }

    fn heartbeat(&self) -> Bytes {
        Bytes::from_static(b": heartbeat\n\n")
    }

    fn goodbye(&self, code: ErrorCode, message: &str) -> Bytes {
        let data = serde_json::to_vec(&ErrorBody::new(code, message)).expect("infallible");
        let mut b = BytesMut::from(format!("retry: {}\n", self.retry_ms).as_bytes());
        b.put_slice(&block(None, "disconnect", &data));
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["cache-control"], "no-cache, no-store");
        assert_eq!(h["x-accel-buffering"], "no");
        res.into_body()
    }

    async fn chunk(body: &mut Body) -> String {
        next_chunk(body).await.expect("the stream goes on")
    }

    /// Splits one SSE block into its `id:` (if any), `event:` and parsed `data:`.
    fn parse(block: &str) -> (Option<&str>, &str, Value) {
        let lines = block
            .strip_suffix("\n\n")
            .unwrap_or_else(|| panic!("a block ends with a blank line: {block:?}"));
        let mut lines = lines.split('\n');
        let mut first = lines.next().unwrap();
        let id = first.strip_prefix("id: ");
        if id.is_some() {
            first = lines.next().unwrap();
        }
        let event = first.strip_prefix("event: ").expect("an event line");
        let data = lines
            .next()
            .unwrap()
            .strip_prefix("data: ")
            .expect("a data line");
        assert_eq!(lines.next(), None, "{block:?}");
        (id, event, serde_json::from_str(data).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_sets_retry_and_the_start_and_each_event_carries_its_cursor() {
        let hub = FakeHub::new();
        let config = TransportConfig {
            sse_retry: Duration::from_secs(3),
            ..TransportConfig::default()
        };
        let ctx = context(&hub, config);
        let uri = format!("/v1/sse?channel=a&cursor={}", cursor(&[("a", 2)]));
        let mut body = open(&ctx, &uri, &[]).await;
        assert_eq!(
            hub.subscribed(),
            [("a".to_owned(), StartFrom::Position(pos(2)))]
        );
        assert_eq!(
            chunk(&mut body).await,
            format!("retry: 3000\nid: {}\n\n", cursor(&[("a", 2)])),
            "an id-only block: a reconnect before any event resumes from the start"
        );
        hub.publish(&event("a", 3));
        let block = chunk(&mut body).await;
        let a3 = cursor(&[("a", 3)]);
        assert_eq!(parse(&block), (Some(a3.as_str()), "tick", envelope("a", 3)));
    }

    #[tokio::test(start_paused = true)]
    async fn last_event_id_resumes_like_a_cursor() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let last = cursor(&[("a", 5), ("b", 1)]);
        let mut body = open(&ctx, "/v1/sse", &[("last-event-id", last.as_str())]).await;
        assert_eq!(
            hub.subscribed(),
            [
                ("a".to_owned(), StartFrom::Position(pos(5))),
                ("b".to_owned(), StartFrom::Position(pos(1))),
            ],
            "the channels come from the id"
        );
        assert_eq!(
            chunk(&mut body).await,
            format!("retry: 2000\nid: {last}\n\n")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn several_channels_share_one_combined_cursor_as_the_id() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut body = open(&ctx, "/v1/sse?channel=a,b", &[]).await;
        let head = chunk(&mut body).await;
        assert_eq!(
            head,
            format!("retry: 2000\nid: {}\n\n", cursor(&[("a", 0), ("b", 0)]))
        );
        hub.publish(&event("b", 1));
        hub.publish(&event("a", 1));
        let both = [
            (cursor(&[("a", 0), ("b", 1)]), envelope("b", 1)),
            (cursor(&[("a", 1), ("b", 1)]), envelope("a", 1)),
        ];
        for (id, data) in both {
            let block = chunk(&mut body).await;
            assert_eq!(parse(&block), (Some(id.as_str()), "tick", data));
        }
        // A transient event (presence) has no `id:` line, even here.
        let data = serde_json::value::RawValue::from_string(r#"{"client_id":"c"}"#.into()).unwrap();
        hub.publish(&std::sync::Arc::new(Event::transient(
            crate::testing::name("a"),
            "presence.join",
            crate::testing::TIME,
            &data,
        )));
        let block = chunk(&mut body).await;
        assert!(block.starts_with("event: presence.join\ndata: "), "{block}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_is_an_event_naming_the_channel_and_its_oldest_offset() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        hub.answer("a", pos(3), Some(4), vec![event("a", 4)]);
        let uri = format!("/v1/sse?channel=a&cursor={}", cursor(&[("a", 1)]));
        let mut body = open(&ctx, &uri, &[]).await;
        let a3 = cursor(&[("a", 3)]);
        assert_eq!(chunk(&mut body).await, format!("retry: 2000\nid: {a3}\n\n"));
        let reset = chunk(&mut body).await;
        assert_eq!(
            parse(&reset),
            (
                Some(a3.as_str()),
                "reset",
                json!({"channel": "a", "offset": 4, "cursor": a3})
            )
        );
        let a4 = cursor(&[("a", 4)]);
        let replayed = chunk(&mut body).await;
        assert_eq!(
            parse(&replayed),
            (Some(a4.as_str()), "tick", envelope("a", 4))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_are_comments_at_the_interval() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut body = open(&ctx, "/v1/sse?channel=a", &[]).await;
        let start = Instant::now();
        chunk(&mut body).await;
        assert_eq!(chunk(&mut body).await, ": heartbeat\n\n");
        assert_eq!(start.elapsed(), ctx.config.heartbeat_interval);
    }

    /// The `disconnect` event that ends a stream on purpose.
    fn disconnect(code: &str, message: &str) -> String {
        let data = json!({"code": code, "message": message});
        format!("retry: 2000\nevent: disconnect\ndata: {data}\n\n")
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_a_disconnect_event_then_ends() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut body = open(&ctx, "/v1/sse?channel=a", &[]).await;
        chunk(&mut body).await;
        ctx.shutdown.cancel();
        assert_eq!(
            chunk(&mut body).await,
            disconnect(
                "shutting_down",
                "the server is shutting down; reconnect with your cursor"
            )
        );
        assert_eq!(next_chunk(&mut body).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_and_an_interrupted_feed_get_their_own_disconnect() {
        let hub = FakeHub::new();
        let config = TransportConfig {
            queue_capacity: 1,
            ..TransportConfig::default()
        };
        let ctx = context(&hub, config);
        let mut slow = open(&ctx, "/v1/sse?channel=a", &[]).await;
        chunk(&mut slow).await;
        hub.publish(&event("a", 1));
        hub.publish(&event("a", 2));
        assert_eq!(
            chunk(&mut slow).await,
            disconnect(
                "slow_consumer",
                "too slow to keep up; reconnect with your cursor"
            )
        );
        assert_eq!(next_chunk(&mut slow).await, None);

        let mut cut = open(&ctx, "/v1/sse?channel=b", &[]).await;
        chunk(&mut cut).await;
        hub.interrupt("b");
        assert_eq!(
            chunk(&mut cut).await,
            disconnect(
                "unavailable",
                "the live feed was interrupted (the engine was unreachable, or the channel's \
                 history restarted); reconnect with your cursor"
            )
        );
        assert_eq!(next_chunk(&mut cut).await, None);
    }
}
