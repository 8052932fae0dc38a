//! The hub seam: transports subscribe to channels through [`Hub`] and receive shared
//! [`Event`]s in a bounded [`Inbox`]; the engine behind it (memory, Redis) is not their concern.

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use switchyard_protocol::{ChannelName, Cursor, Position, envelope};

use crate::chunked;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One published event, encoded once per wire format on first use and shared (by `Arc`)
/// by every subscriber: fan-out costs a pointer copy and a socket write.
#[derive(Debug)]
pub struct Event {
    channel: ChannelName,
    position: Position,
    cursor: String,
    event_type: String,
    published_at: Instant,
    /// Not part of the channel's history (a presence join or leave): no offset, no cursor,
    /// and delivering it moves no consumer's position.
    transient: bool,
    envelope: Bytes,
    ws_text: OnceLock<Utf8Bytes>,
    ws_frame: OnceLock<Bytes>,
    sse_chunk: OnceLock<Bytes>,
    ndjson_chunk: OnceLock<Bytes>,
}

impl Event {
    /// Builds an event and serializes its envelope.
    pub fn new(
        channel: ChannelName,
        position: Position,
        event_type: &str,
        time_rfc3339: &str,
        data: &RawValue,
    ) -> Self {
        let cursor = Cursor::encode_single(&channel, position);
        let envelope = envelope::encode(
            channel.as_str(),
            position.offset,
            &cursor,
            event_type,
            time_rfc3339,
            data,
        );
        Self {
            channel,
            position,
            cursor,
            event_type: event_type.to_owned(),
            published_at: Instant::now(),
            transient: false,
            envelope: Bytes::from(envelope),
            ws_text: OnceLock::new(),
            ws_frame: OnceLock::new(),
            sse_chunk: OnceLock::new(),
            ndjson_chunk: OnceLock::new(),
        }
    }

    /// A transient event of `channel` (see [`Event::is_transient`]): pushed to the
    /// channel's live subscribers, never kept in history.
    pub fn transient(
        channel: ChannelName,
        event_type: &str,
        time_rfc3339: &str,
        data: &RawValue,
    ) -> Self {
        let envelope = envelope::encode_transient(channel.as_str(), event_type, time_rfc3339, data);
        Self {
            channel,
            position: Position {
                epoch: 0,
                offset: 0,
            },
            cursor: String::new(),
            event_type: event_type.to_owned(),
            published_at: Instant::now(),
            transient: true,
            envelope: Bytes::from(envelope),
            ws_text: OnceLock::new(),
            ws_frame: OnceLock::new(),
            sse_chunk: OnceLock::new(),
            ndjson_chunk: OnceLock::new(),
        }
    }

    /// Whether it is outside the channel's history (presence joins and leaves): it has no
    /// offset or cursor, and delivering it moves no consumer's position.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The channel it was published on.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// Its position (epoch + offset).
    pub fn position(&self) -> Position {
        self.position
    }

    /// Its offset in the channel.
    pub fn offset(&self) -> u64 {
        self.position.offset
    }

    /// The one-channel cursor that resumes right after it.
    pub fn cursor(&self) -> &str {
        &self.cursor
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The event as if built `age` before `now`: one read back from a durable log keeps
    /// its age, so history expires it when its log does.
    #[must_use]
    pub fn with_age(mut self, now: Instant, age: std::time::Duration) -> Self {
        self.published_at = now.checked_sub(age).unwrap_or(now);
        self
    }

    /// When this process built it (for publish → deliver latency).
    pub fn published_at(&self) -> Instant {
        self.published_at
    }

    /// The envelope JSON.
    pub fn envelope(&self) -> &Bytes {
        &self.envelope
    }

    /// The WebSocket text frame: `{"op":"event",` + the envelope's fields.
    pub fn ws_text(&self) -> Utf8Bytes {
        self.ws_text
            .get_or_init(|| {
                let env = std::str::from_utf8(&self.envelope).expect("envelope is JSON text");
                let mut text = String::with_capacity(env.len() + 14);
                text.push_str(r#"{"op":"event","#);
                text.push_str(&env[1..]);
                Utf8Bytes::from(text)
            })
            .clone()
    }

    /// The whole WebSocket text frame of [`Self::ws_text`] as a server sends it (final, not
    /// masked, its length in the header): the bytes a direct write puts on every
    /// subscriber's socket.
    pub fn ws_frame(&self) -> Bytes {
        self.ws_frame
            .get_or_init(|| {
                let text = self.ws_text();
                let payload = text.as_str().as_bytes();
                let mut b = BytesMut::with_capacity(payload.len() + 10);
                b.put_u8(0x81);
                match payload.len() {
                    n if n < 126 => b.put_u8(n as u8),
                    n if n <= usize::from(u16::MAX) => {
                        b.put_u8(126);
                        b.put_u16(n as u16);
                    }
                    n => {
                        b.put_u8(127);
                        b.put_u64(n as u64);
                    }
                }
                b.put_slice(payload);
                b.freeze()
            })
            .clone()
    }

    /// The SSE frame: `id: <cursor>`, `event: <type>`, `data: <envelope>`, blank line.
    pub fn sse_frame(&self) -> Bytes {
        chunked::payload(&self.sse_chunk())
    }

    /// [`Event::sse_frame`] as one HTTP/1.1 chunk, for streams the server writes itself.
    pub fn sse_chunk(&self) -> Bytes {
        // The chunk is what is kept: the frame is a slice of it, so one allocation serves
        // both ways a stream is written.
        self.sse_chunk
            .get_or_init(|| {
                // A transient event has no `id:` line: the client's Last-Event-ID stays
                // the last event of the history it has.
                let id_len = self.id_line_len();
                let len = id_len + 7 + self.event_type.len() + 7 + self.envelope.len() + 2;
                chunked::encode_with(len, |b| {
                    if id_len > 0 {
                        b.put_slice(b"id: ");
                        b.put_slice(self.cursor.as_bytes());
                        b.put_u8(b'\n');
                    }
                    b.put_slice(b"event: ");
                    b.put_slice(self.event_type.as_bytes());
                    b.put_slice(b"\ndata: ");
                    b.put_slice(&self.envelope);
                    b.put_slice(b"\n\n");
                })
            })
            .clone()
    }

    /// The SSE frame without its `id:` line, for streams whose id is a combined cursor.
    pub fn sse_frame_without_id(&self) -> Bytes {
        self.sse_frame().slice(self.id_line_len()..)
    }

    /// The length of the SSE `id:` line (none for a transient event).
    fn id_line_len(&self) -> usize {
        if self.transient {
            0
        } else {
            4 + self.cursor.len() + 1
        }
    }

    /// The NDJSON line: the envelope and `\n`.
    pub fn ndjson_line(&self) -> Bytes {
        chunked::payload(&self.ndjson_chunk())
    }

    /// [`Event::ndjson_line`] as one HTTP/1.1 chunk, for streams the server writes itself.
    pub fn ndjson_chunk(&self) -> Bytes {
        self.ndjson_chunk
            .get_or_init(|| {
                chunked::encode_with(self.envelope.len() + 1, |b| {
                    b.put_slice(&self.envelope);
                    b.put_u8(b'\n');
                })
            })
            .clone()
    }
}

/// Where a subscription starts in a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// Live events only, from the channel's current position.
    Now,
    /// After this offset of the channel's current history (WebSocket `after`).
    Offset(u64),
    /// After this position (from a cursor); a different epoch means `reset`.
    Position(Position),
}

/// The result of subscribing one channel.
#[derive(Debug)]
pub struct Opened {
    /// The position delivery starts after: the requested one, or the reset point.
    pub start: Position,
    /// `Some(oldest kept offset)` when history no longer reached the requested position.
    pub reset: Option<u64>,
    /// Events after `start` that were already published, in order. Live events published
    /// after these reach the inbox: no gap, no duplicate.
    pub replay: Vec<Arc<Event>>,
}

impl Opened {
    /// The channel's position once the replay is delivered.
    pub fn current(&self) -> Position {
        self.replay.last().map_or(self.start, |e| e.position())
    }
}

/// Why a subscription could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The server holds the most channels it may.
    #[error("the server holds the most channels it may")]
    TooManyChannels,
    /// The engine cannot serve the request now.
    #[error("event hub unavailable: {0}")]
    Unavailable(String),
}

/// The seam between transports and the event engine.
pub trait Hub: Send + Sync + 'static {
    /// Registers `sink` on `channel` and returns what was published after `from`.
    /// From the moment this returns, every new event of `channel` is offered to `sink`.
    fn subscribe<'a>(
        &'a self,
        channel: &'a ChannelName,
        from: StartFrom,
        sink: &'a Sink,
    ) -> BoxFuture<'a, Result<Opened, HubError>>;

    /// Removes the sink with `sink_id` from `channel` (no-op when absent).
    fn unsubscribe(&self, channel: &ChannelName, sink_id: u64);
}

pub use crate::inbox::{Inbox, OverflowSignal, Received, Sink, new_pair, new_pair_direct};

/// Unsubscribes a sink from its channels when a consumer connection ends.
pub struct SubscriptionGuard {
    hub: Arc<dyn Hub>,
    sink_id: u64,
    channels: Vec<ChannelName>,
}

impl SubscriptionGuard {
    /// A guard with no channel yet.
    pub fn new(hub: Arc<dyn Hub>, sink: &Sink) -> Self {
        Self {
            hub,
            sink_id: sink.id(),
            channels: Vec::new(),
        }
    }

    /// Remembers a subscribed channel.
    pub fn add(&mut self, channel: ChannelName) {
        self.channels.push(channel);
    }

    /// Unsubscribes one channel now.
    pub fn remove(&mut self, channel: &ChannelName) {
        self.channels.retain(|c| c != channel);
        self.hub.unsubscribe(channel, self.sink_id);
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        for channel in &self.channels {
            self.hub.unsubscribe(channel, self.sink_id);
        }
    }
}
