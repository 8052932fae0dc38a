//! Reads the two fields the bench needs (`offset`, and the publisher's `data.ts_us`) from an
//! event envelope without parsing the whole JSON: the server writes the envelope's fields in
//! a fixed order (`id, channel, offset, cursor, type, time, data`) and keeps `data` verbatim,
//! so both are found in the first ~200 bytes and the padding is never scanned.

use crate::scan::find;

/// What one event tells the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventInfo {
    /// The per-channel offset.
    pub offset: u64,
    /// The publisher's send time (unix microseconds), when the payload carries one.
    pub ts_us: Option<u64>,
}

/// Reads an envelope, or a WebSocket `{"op":"event",...}` frame (same fields after `op`).
/// `None` when there is no `"offset"`.
pub fn parse(bytes: &[u8]) -> Option<EventInfo> {
    let at = find(bytes, b"\"offset\":")? + b"\"offset\":".len();
    let (offset, used) = number(&bytes[at..])?;
    let rest = &bytes[at + used..];
    let ts_us = find(rest, b"\"data\":").and_then(|d| {
        let data = &rest[d + b"\"data\":".len()..];
        let t = find(data, b"\"ts_us\":")? + b"\"ts_us\":".len();
        number(&data[t..]).map(|(n, _)| n)
    });
    Some(EventInfo { offset, ts_us })
}

/// A JSON unsigned integer at the start of `bytes` (after optional spaces): its value and
/// the bytes consumed.
pub(crate) fn number(bytes: &[u8]) -> Option<(u64, usize)> {
    let start = bytes.iter().position(|b| *b != b' ')?;
    let mut value: u64 = 0;
    let mut end = start;
    while let Some(d) = bytes.get(end).filter(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        end += 1;
    }
    (end > start).then_some((value, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: &str = r#"{"id":"fanout/x:17","channel":"fanout/x","offset":17,"cursor":"AQhmYW5vdXQveAER","type":"bench","time":"2026-01-01T00:00:00.000Z","data":{"ts_us":1767225600123456,"pad":"xx\"offset\":3"}}"#;

    #[test]
    fn reads_offset_and_timestamp() {
        let info = parse(ENVELOPE.as_bytes()).unwrap();
        assert_eq!(
            info,
            EventInfo {
                offset: 17,
                ts_us: Some(1_767_225_600_123_456)
            }
        );
        let v: serde_json::Value = serde_json::from_str(ENVELOPE).unwrap();
        assert_eq!(v["offset"].as_u64(), Some(info.offset));
        assert_eq!(v["data"]["ts_us"].as_u64(), info.ts_us);
    }

    #[test]
    fn reads_websocket_frames_and_foreign_payloads() {
        let frame = format!(r#"{{"op":"event",{}"#, &ENVELOPE[1..]);
        assert_eq!(parse(frame.as_bytes()).unwrap().offset, 17);
        let foreign = r#"{"id":"c:2","channel":"c","offset":2,"cursor":"x","type":"t","time":"t","data":"hello"}"#;
        assert_eq!(
            parse(foreign.as_bytes()),
            Some(EventInfo {
                offset: 2,
                ts_us: None
            })
        );
        assert_eq!(parse(br#"{"op":"subscribed","channel":"c"}"#), None);
    }
}
