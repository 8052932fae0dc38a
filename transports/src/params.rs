//! Reads a consumer request's channels and resume cursor from its query and headers.

use std::time::Duration;

use http::request::Parts;
use switchyard_protocol::{ChannelName, Cursor, ErrorCode};

use crate::hub::StartFrom;

/// A refused request: the code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// Error code (and so the status).
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
}

impl ParamError {
    /// A refusal with `code` and a human sentence.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The channels to consume and where to start in each.
#[derive(Debug)]
pub struct ConsumerParams {
    /// Channels, deduplicated, in request order.
    pub channels: Vec<ChannelName>,
    /// The merged resume cursor (from `cursor=` and `Last-Event-ID`).
    pub cursor: Cursor,
    /// `after=N`: start after offset N in channels the cursor does not cover (`after=0`
    /// replays the whole retained history).
    pub after: Option<u64>,
    /// Other query pairs (`timeout`, `limit`, ...).
    pub rest: Vec<(String, String)>,
}

impl ConsumerParams {
    /// Parses `channel=` (repeated or comma-separated), `cursor=` (repeated: merged) and, when
    /// `last_event_id` is set, the `Last-Event-ID` header. With no `channel`, the cursor's
    /// channels are used.
    ///
    /// # Errors
    /// `invalid_channel`, `invalid_cursor`, `invalid_request` (no channel), or
    /// `too_many_channels`.
    pub fn parse(
        parts: &Parts,
        max_channels: usize,
        last_event_id: bool,
    ) -> Result<Self, ParamError> {
        let mut channels: Vec<ChannelName> = Vec::new();
        let mut cursor = Cursor::new();
        let mut rest = Vec::new();
        let mut after = None;
        let query = parts.uri.query().unwrap_or("");
        let mut add_cursor = |text: &str| -> Result<(), ParamError> {
            let c = Cursor::decode(text)
                .map_err(|e| ParamError::new(ErrorCode::InvalidCursor, e.to_string()))?;
            cursor.merge(c);
            Ok(())
        };
        for (key, value) in form_urlencoded_pairs(query) {
            match key.as_str() {
                "channel" => {
                    for name in value.split(',').filter(|n| !n.is_empty()) {
                        let name = ChannelName::new(name).map_err(|e| {
                            ParamError::new(ErrorCode::InvalidChannel, e.to_string())
                        })?;
                        if !channels.contains(&name) {
                            channels.push(name);
                        }
                        if channels.len() > max_channels {
                            return Err(ParamError::new(
                                ErrorCode::TooManyChannels,
                                format!("at most {max_channels} channels per request"),
                            ));
                        }
                    }
                }
                "cursor" if !value.is_empty() => add_cursor(&value)?,
                "after" => {
                    after = Some(value.parse().map_err(|_| {
                        ParamError::new(
                            ErrorCode::InvalidParameter,
                            "`after` must be an offset (a whole number)",
                        )
                    })?);
                }
                _ => rest.push((key, value)),
            }
        }
        if let Some(id) = parts.headers.get("last-event-id").filter(|_| last_event_id) {
            let id = id.to_str().map_err(|_| {
                ParamError::new(ErrorCode::InvalidCursor, "Last-Event-ID is not text")
            })?;
            if !id.is_empty() {
                add_cursor(id)?;
            }
        }
        if channels.is_empty() {
            channels = cursor.iter().map(|(c, _)| c.clone()).collect();
        }
        if channels.is_empty() {
            return Err(ParamError::new(
                ErrorCode::InvalidRequest,
                "name at least one channel (`channel=`) or give a cursor",
            ));
        }
        if channels.len() > max_channels {
            return Err(ParamError::new(
                ErrorCode::TooManyChannels,
                format!("at most {max_channels} channels per request"),
            ));
        }
        Ok(Self {
            channels,
            cursor,
            after,
            rest,
        })
    }

    /// Where to start in `channel`: after the cursor's position, else after `after`, else now.
    pub fn start_for(&self, channel: &ChannelName) -> StartFrom {
        match (self.cursor.get(channel.as_str()), self.after) {
            (Some(position), _) => StartFrom::Position(position),
            (None, Some(offset)) => StartFrom::Offset(offset),
            (None, None) => StartFrom::Now,
        }
    }

    /// The value of another query parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.rest
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A whole-seconds parameter within `max`, or `default` when absent.
    ///
    /// # Errors
    /// `invalid_parameter` when it is not a number in range.
    pub fn seconds(
        &self,
        key: &str,
        default: Duration,
        max: Duration,
    ) -> Result<Duration, ParamError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= max.as_secs_f64())
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    ParamError::new(
                        ErrorCode::InvalidParameter,
                        format!(
                            "`{key}` must be a number of seconds from 0 to {}",
                            max.as_secs()
                        ),
                    )
                }),
        }
    }

    /// A count parameter from 1 to `max`, or `default` when absent.
    ///
    /// # Errors
    /// `invalid_parameter` when it is not an integer in range.
    pub fn count(&self, key: &str, default: usize, max: usize) -> Result<usize, ParamError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ParamError::new(
                        ErrorCode::InvalidParameter,
                        format!("`{key}` must be an integer from 1 to {max}"),
                    )
                }),
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` query pairs (`+` is a space, `%XX` escapes).
pub fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn decodes_query_pairs() {
        assert_eq!(
            form_urlencoded_pairs("channel=a%2Fb&x=1+2&y=%zz&z=%41"),
            vec![
                ("channel".into(), "a/b".into()),
                ("x".into(), "1 2".into()),
                ("y".into(), "%zz".into()),
                ("z".into(), "A".into())
            ]
        );
    }

    #[test]
    fn channels_are_listed_deduplicated_and_bounded() {
        let p = ConsumerParams::parse(&parts("/v1/sse?channel=a,b&channel=a&timeout=3"), 4, false)
            .unwrap();
        assert_eq!(p.channels.len(), 2);
        assert_eq!(p.get("timeout"), Some("3"));
        let e = ConsumerParams::parse(&parts("/v1/sse?channel=a,b,c"), 2, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyChannels);
        let e = ConsumerParams::parse(&parts("/v1/sse?channel=a%20b"), 2, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidChannel);
        let e = ConsumerParams::parse(&parts("/v1/sse"), 2, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        let e = ConsumerParams::parse(&parts("/v1/sse?channel=a&cursor=zz"), 2, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidCursor);
    }
}
