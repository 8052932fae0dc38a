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
        if single {
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
