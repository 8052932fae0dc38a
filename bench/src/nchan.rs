//! Nchan's side of the wire, as the shipped `bench/nchan/nginx.conf.template` sets it up:
//! subscribe on `/sub/{channel}` (WebSocket or EventSource), publish with `POST
//! /pub/{channel}`, count subscribers on `/nchan_status` (`nchan_stub_status`).
//!
//! Nchan delivers a message's body as it was posted, with no offset of its own that the
//! bench could check; the bench's message therefore carries its own sequence number next to
//! the send time, `{"seq":N,"ts_us":T,"pad":"xx.."}`, and every subscriber checks it got
//! `1..=E` exactly once and in order, as it checks switchyard's offsets.

use anyhow::{Context as _, bail};

use crate::{envelope::EventInfo, http::HttpConn, scan::find, target::Target};

/// Path of a subscription to `channel` (WebSocket upgrade or EventSource).
pub fn subscribe_path(channel: &str) -> String {
    format!("/sub/{channel}")
}

/// Path to `POST` messages of `channel` to.
pub fn publish_path(channel: &str) -> String {
    format!("/pub/{channel}")
}

/// Path of `nchan_stub_status`.
pub const STATUS_PATH: &str = "/nchan_status";

/// Message number `seq` (1-based) sent at `ts_us`: `{"seq":N,"ts_us":T,"pad":"xx.."}`,
/// padded to `size` bytes when `size` leaves room for it (the same size as switchyard's
/// `data`, [`crate::publisher::payload`]).
pub fn payload(seq: u64, size: usize, ts_us: u64) -> String {
    let bare = format!(r#"{{"seq":{seq},"ts_us":{ts_us},"pad":""}}"#);
    let pad = size.saturating_sub(bare.len());
    let mut out = String::with_capacity(bare.len() + pad);
    out.push_str(&bare[..bare.len() - 2]);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// Reads a message made by [`payload`]: `seq` as the offset, `ts_us` as the send time.
/// `None` without a `seq`.
pub fn parse(bytes: &[u8]) -> Option<EventInfo> {
    let at = find(bytes, b"\"seq\":")? + b"\"seq\":".len();
    let (offset, used) = crate::envelope::number(&bytes[at..])?;
    let rest = &bytes[at + used..];
    let ts_us = find(rest, b"\"ts_us\":")
        .and_then(|t| crate::envelope::number(&rest[t + b"\"ts_us\":".len()..]))
        .map(|(n, _)| n);
    Some(EventInfo { offset, ts_us })
}

/// Subscribers Nchan counts over all its workers (`subscribers:` of `nchan_stub_status`).
///
/// # Errors
/// The server does not answer, or not with a stub status.
pub async fn subscribers(target: &Target) -> anyhow::Result<f64> {
    let mut conn = HttpConn::connect(target).await?;
    let (status, body) = conn
        .get(STATUS_PATH)
        .await
        .with_context(|| format!("GET {STATUS_PATH}"))?;
    if !status.is_success() {
        bail!("GET {STATUS_PATH} answered {status} (is nchan_stub_status configured there?)");
    }
    parse_status(&String::from_utf8_lossy(&body))
        .with_context(|| format!("no `subscribers:` line in {STATUS_PATH}"))
}

fn parse_status(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("subscribers:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_pads_messages() {
        let p = payload(7, 200, 1_767_225_600_123_456);
        assert_eq!(p.len(), 200);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["ts_us"].as_u64()),
            (Some(7), Some(1_767_225_600_123_456))
        );
        assert_eq!(
            parse(p.as_bytes()),
            Some(EventInfo {
                offset: 7,
                ts_us: Some(1_767_225_600_123_456)
            })
        );
        assert_eq!(payload(1, 10, 5), r#"{"seq":1,"ts_us":5,"pad":""}"#);
        assert_eq!(parse(br#"{"ts_us":5}"#), None);
    }

    #[test]
    fn reads_the_stub_status() {
        let text = "total published messages: 2\nstored messages: 2\nchannels: 1\nsubscribers: 37\nredis pending commands: 0\n";
        assert_eq!(parse_status(text), Some(37.0));
        assert_eq!(parse_status("nothing\n"), None);
    }
}
