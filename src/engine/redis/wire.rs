//! The pieces of an event as Redis holds them (a history stream entry, a live pub/sub
//! message) and how a node rebuilds the shared [`Event`] from them.
//!
//! Nodes exchange the event's parts (epoch, offset, type, time, raw data), never a finished
//! envelope: every node runs the same `Event::new` on the same parts, so envelopes, cursors
//! and frames are byte-identical whichever node a consumer is on, and each node encodes each
//! event once for all its local subscribers.

use std::sync::Arc;

use serde_json::value::RawValue;
use switchyard_protocol::{ChannelName, Position};

use crate::hub::Event;

/// One event's parts as stored in the history stream or carried on the live topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Parts {
    /// Offset in the channel.
    pub(super) offset: u64,
    /// The publisher's event type.
    pub(super) event_type: String,
    /// Publish time, RFC 3339 with milliseconds, as the publishing node formatted it.
    pub(super) time: String,
    /// The publisher's JSON, byte for byte.
    pub(super) data: String,
}

impl Parts {
    /// Builds the shared event; `None` when the stored data is not JSON (written by
    /// something other than this hub).
    pub(super) fn into_event(self, channel: &ChannelName, epoch: u64) -> Option<Arc<Event>> {
        let data: &RawValue = serde_json::from_str(&self.data).ok()?;
        let position = Position {
            epoch,
            offset: self.offset,
        };
        Some(Arc::new(Event::new(
            channel.clone(),
            position,
            &self.event_type,
            &self.time,
            data,
        )))
    }
}

impl Parts {
    /// A transient event (offset 0 on the live topic: a presence join or leave), not part
    /// of the channel's history; `None` when its data is not JSON.
    pub(super) fn into_transient(self, channel: &ChannelName) -> Option<Arc<Event>> {
        let data: &RawValue = serde_json::from_str(&self.data).ok()?;
        Some(Arc::new(Event::transient(
            channel.clone(),
            &self.event_type,
            &self.time,
            data,
        )))
    }
}

/// Decodes a live message as the append script writes it:
/// `{epoch} {offset} {type length} {time length}\n{type}{time}{data}`.
///
/// Lengths are in bytes; the data runs to the end. A plain header line keeps the script
/// free of JSON encoding and the data free of escaping. Epoch and offset 0 mark a transient
/// event (see `presence`): offsets of the history start at 1.
pub(super) fn decode_live(payload: &[u8]) -> Option<(u64, Parts)> {
    let newline = payload.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&payload[..newline]).ok()?;
    let mut fields = header.split(' ').map(|f| f.parse::<u64>().ok());
    let (epoch, offset, type_len, time_len) = (
        fields.next()??,
        fields.next()??,
        usize::try_from(fields.next()??).ok()?,
        usize::try_from(fields.next()??).ok()?,
    );
    if fields.next().is_some() {
        return None;
    }
    let body = std::str::from_utf8(&payload[newline + 1..]).ok()?;
    let event_type = body.get(..type_len)?;
    let time = body.get(type_len..type_len.checked_add(time_len)?)?;
    let data = body.get(type_len + time_len..)?;
    Some((
        epoch,
        Parts {
            offset,
            event_type: event_type.to_owned(),
            time: time.to_owned(),
            data: data.to_owned(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_messages_decode_and_rebuild_the_same_envelope() {
        let payload = "77 5 8 24\nheadline2026-11-21T22:33:55.123Z{\"title\": \"a b\"}";
        let (epoch, parts) = decode_live(payload.as_bytes()).unwrap();
        assert_eq!(epoch, 77);
        assert_eq!(parts.offset, 5);
        assert_eq!(parts.event_type, "headline");
        assert_eq!(parts.time, "2026-11-21T22:33:55.123Z");
        assert_eq!(parts.data, "{\"title\": \"a b\"}");
        let channel = ChannelName::new("news").unwrap();
        let a = parts.clone().into_event(&channel, epoch).unwrap();
        let b = parts.into_event(&channel, epoch).unwrap();
        assert_eq!(a.envelope(), b.envelope());
        assert!(
            std::str::from_utf8(a.envelope())
                .unwrap()
                .contains("\"data\":{\"title\": \"a b\"}")
        );
    }

    #[test]
    fn malformed_live_messages_are_refused() {
        for bad in [
            "",
            "1 2 3\nabc",
            "1 2 3 4 5\nabcd",
            "x 2 1 1\nab1",
            "1 2 9 1\nab",
            "1 2 1 99\nab",
        ] {
            assert_eq!(decode_live(bad.as_bytes()), None, "{bad:?}");
        }
        let (_, parts) = decode_live(b"1 2 1 1\nabnot json").unwrap();
        assert!(
            parts
                .into_event(&ChannelName::new("c").unwrap(), 1)
                .is_none()
        );
    }
}
