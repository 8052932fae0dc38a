//! Cursors: opaque, URL-safe resume positions. A cursor maps each channel to the
//! [`Position`] (history epoch + offset) of the last event seen there.
//!
//! Encoding (version 1): base64url without padding of `0x01` followed, per channel, by
//! varint(name length), name bytes, varint(epoch), varint(offset). Clients must treat it as
//! opaque; the version byte lets the format change without breaking stored cursors.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::{ChannelName, DecodeError};

const VERSION: u8 = 1;

/// The longest cursor string accepted, so a hostile cursor cannot cost unbounded work.
pub const MAX_CURSOR_LEN: usize = 16 * 1024;

/// Where a consumer stands in one channel: the history's epoch and the last offset seen
/// (0 = before the first event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Names the history the offset belongs to; it changes when a channel's history is lost.
    pub epoch: u64,
    /// The offset of the last event seen (events start at 1).
    pub offset: u64,
}

/// A consumer's position in one or more channels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Sorted by channel name, each channel once. A sorted vector, not a map: every open
    /// connection holds one, nearly always of one channel, and a map's smallest node is
    /// ten times the size of that one entry.
    positions: Vec<(ChannelName, Position)>,
}

impl Cursor {
    /// An empty cursor (no channel seen yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A cursor for a single channel.
    pub fn single(channel: ChannelName, position: Position) -> Self {
        let mut c = Self::new();
        c.set(channel, position);
        c
    }

    /// Records `position` for `channel`, replacing what was there.
    pub fn set(&mut self, channel: ChannelName, position: Position) {
        match self.find(channel.as_str()) {
            Ok(at) => self.positions[at].1 = position,
            Err(at) => self.positions.insert(at, (channel, position)),
        }
    }

    /// Forgets `channel`.
    pub fn remove(&mut self, channel: &str) {
        if let Ok(at) = self.find(channel) {
            self.positions.remove(at);
        }
    }

    /// The position recorded for `channel`, if any.
    pub fn get(&self, channel: &str) -> Option<Position> {
        self.find(channel).ok().map(|at| self.positions[at].1)
    }

    /// Where `channel` is (`Ok`) or would go (`Err`).
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.positions
            .binary_search_by(|(c, _)| c.as_str().cmp(channel))
    }

    /// Merges `other` into `self`; for a channel present in both, the later offset wins
    /// (within one epoch) and otherwise `other` wins.
    pub fn merge(&mut self, other: Cursor) {
        for (channel, pos) in other.positions {
            match self.get(channel.as_str()) {
                Some(mine) if mine.epoch == pos.epoch && mine.offset >= pos.offset => {}
                _ => self.set(channel, pos),
            }
        }
    }

    /// Iterates over the channels and their positions, ordered by channel name.
    pub fn iter(&self) -> impl Iterator<Item = (&ChannelName, Position)> {
        self.positions.iter().map(|(c, p)| (c, *p))
    }

    /// Number of channels in the cursor.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the cursor holds no channel.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Encodes the cursor as its opaque, URL-safe string.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(1 + self.positions.len() * 32);
        raw.push(VERSION);
        for (channel, pos) in &self.positions {
            put_varint(&mut raw, channel.as_str().len() as u64);
            raw.extend_from_slice(channel.as_str().as_bytes());
            put_varint(&mut raw, pos.epoch);
            put_varint(&mut raw, pos.offset);
        }
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Encodes a one-channel cursor without building a map (the per-event hot path).
    pub fn encode_single(channel: &ChannelName, position: Position) -> String {
        let mut raw = Vec::with_capacity(24 + channel.as_str().len());
        raw.push(VERSION);
        put_varint(&mut raw, channel.as_str().len() as u64);
        raw.extend_from_slice(channel.as_str().as_bytes());
        put_varint(&mut raw, position.epoch);
        put_varint(&mut raw, position.offset);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a cursor string produced by [`Cursor::encode`].
    ///
    /// # Errors
    /// [`DecodeError::InvalidCursor`] for anything this server did not produce: bad base64,
    /// an unknown version, truncated data, or an invalid channel name.
    pub fn decode(s: &str) -> Result<Self, DecodeError> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(DecodeError::InvalidCursor("too long"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| DecodeError::InvalidCursor("not base64url"))?;
        let (&version, mut rest) = raw
            .split_first()
            .ok_or(DecodeError::InvalidCursor("empty"))?;
        if version != VERSION {
            return Err(DecodeError::InvalidCursor("unknown version"));
        }
        if rest.is_empty() {
            return Err(DecodeError::InvalidCursor("holds no channel"));
        }
        let mut cursor = Cursor::new();
        while !rest.is_empty() {
            let len = usize::try_from(take_varint(&mut rest)?)
                .map_err(|_| DecodeError::InvalidCursor("truncated"))?;
            if len > rest.len() {
                return Err(DecodeError::InvalidCursor("truncated"));
            }
            let (name, tail) = rest.split_at(len);
            rest = tail;
            let name = std::str::from_utf8(name)
                .ok()
                .and_then(|n| ChannelName::new(n).ok())
                .ok_or(DecodeError::InvalidCursor("bad channel name"))?;
            let epoch = take_varint(&mut rest)?;
            let offset = take_varint(&mut rest)?;
            cursor.set(name, Position { epoch, offset });
        }
        Ok(cursor)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input
            .split_first()
            .ok_or(DecodeError::InvalidCursor("truncated"))?;
        *input = rest;
        v |= u64::from(b & 0x7f)
            .checked_shl(shift)
            .ok_or(DecodeError::InvalidCursor("varint overflow"))?;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::InvalidCursor("varint overflow"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn round_trips_and_is_url_safe() {
        let mut c = Cursor::new();
        c.set(
            ch("jobs/abc"),
            Position {
                epoch: u64::MAX,
                offset: 7,
            },
        );
        c.set(
            ch("news"),
            Position {
                epoch: 1,
                offset: 0,
            },
        );
        let s = c.encode();
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&s).unwrap(), c);
    }

    #[test]
    fn single_matches_general_encoding() {
        let pos = Position {
            epoch: 42,
            offset: 300,
        };
        assert_eq!(
            Cursor::encode_single(&ch("a/b"), pos),
            Cursor::single(ch("a/b"), pos).encode()
        );
    }

    #[test]
    fn merge_keeps_the_later_offset_of_one_epoch() {
        let mut a = Cursor::single(
            ch("x"),
            Position {
                epoch: 1,
                offset: 9,
            },
        );
        a.merge(Cursor::single(
            ch("x"),
            Position {
                epoch: 1,
                offset: 3,
            },
        ));
        assert_eq!(a.get("x").unwrap().offset, 9);
        a.merge(Cursor::single(
            ch("x"),
            Position {
                epoch: 2,
                offset: 1,
            },
        ));
        assert_eq!(
            a.get("x").unwrap(),
            Position {
                epoch: 2,
                offset: 1
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "!!",
            "AA",
            "AQ",
            "AgA",
            "AQU",
            &"A".repeat(MAX_CURSOR_LEN + 1),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?} accepted");
        }
        // A channel name with a space inside a well-formed encoding.
        let raw = [1u8, 3, b'a', b' ', b'b', 1, 1];
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(raw)).is_err());
        // Varint longer than 64 bits.
        let raw = [
            1u8, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1,
        ];
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(raw)).is_err());
    }
}
