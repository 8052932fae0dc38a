//! The event envelope: what every transport delivers for one event.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An event as delivered: `{"id","channel","offset","cursor","type","time","data"}`.
///
/// `D` is the payload type: [`serde_json::Value`] for clients that inspect it, or
/// `Box<RawValue>` to carry it untouched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<D = serde_json::Value> {
    /// `"{channel}:{offset}"`, unique per event within one history epoch.
    pub id: String,
    /// The channel the event was published on.
    pub channel: String,
    /// Per-channel offset, from 1, strictly increasing by 1.
    pub offset: u64,
    /// Opaque cursor that resumes right after this event, on any transport.
    pub cursor: String,
    /// Event type, chosen by the publisher (`job.completed`, `message`, ...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Publish time, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The publisher's JSON payload.
    pub data: D,
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    id: &'a str,
    channel: &'a str,
    offset: u64,
    cursor: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: &'a str,
    data: &'a RawValue,
}

/// Serializes an envelope once, straight from borrowed parts (the publish hot path).
pub fn encode(
    channel: &str,
    offset: u64,
    cursor: &str,
    event_type: &str,
    time: &str,
    data: &RawValue,
) -> Vec<u8> {
    let id = format!("{channel}:{offset}");
    let env = EnvelopeRef {
        id: &id,
        channel,
        offset,
        cursor,
        event_type,
        time,
        data,
    };
    let mut out = Vec::with_capacity(128 + channel.len() * 2 + cursor.len() + data.get().len());
    // Serializing plain strings, integers and an already-valid RawValue cannot fail.
    serde_json::to_writer(&mut out, &env).expect("envelope serialization is infallible");
    out
}

/// The JSON envelope of a transient event (presence joins and leaves): no offset, cursor
/// or id, since it is not part of the channel's history and no cursor resumes from it.
pub fn encode_transient(channel: &str, event_type: &str, time: &str, data: &RawValue) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Transient<'a> {
        channel: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        time: &'a str,
        data: &'a RawValue,
    }
    let env = Transient {
        channel,
        event_type,
        time,
        data,
    };
    let mut out = Vec::with_capacity(64 + channel.len() + data.get().len());
    serde_json::to_writer(&mut out, &env).expect("envelope serialization is infallible");
    out
}

/// Event types are free-form but must be safe on every wire (an SSE `event:` line).
pub const MAX_EVENT_TYPE_LEN: usize = 100;

/// Whether `t` is an acceptable event type: 1-100 printable ASCII characters, no spaces.
pub fn is_valid_event_type(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_EVENT_TYPE_LEN && t.bytes().all(|b| b.is_ascii_graphic())
}
