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
