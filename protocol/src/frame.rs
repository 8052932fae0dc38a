//! WebSocket frames: JSON text messages, tagged by `op`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Envelope, ErrorBody, ErrorCode};

/// A frame sent by a WebSocket client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Subscribe to a channel: from now, after an offset, or from a cursor of any transport.
    Subscribe {
        /// Request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
        /// Resume after this offset (in the channel's current history).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// Resume after this cursor (takes precedence over `after`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// Request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
    },
    /// Presents a consumer token (when the upgrade request carried none), or replaces the
    /// current one before it expires; answered with `authed`.
    Auth {
        /// Request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The token: a JWT, a job token, or an API key with the `subscribe` scope.
        token: String,
    },
    /// Publishes an event on a channel whose namespace allows client publishes, with a
    /// token whose `publish` claim covers it; answered with `published`.
    Publish {
        /// Request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
        /// Event type (default `message`).
        #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
        event_type: Option<String>,
        /// The payload (any JSON).
        data: Value,
    },
    /// Asks who is present on a channel the caller may read; answered with `presence`.
    Presence {
        /// Request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
    },
    /// Application-level ping; answered with `pong`.
    Ping {
        /// Request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

/// Why a client frame was refused, with the request id when one could be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// The frame's `id`, when it had a readable one.
    pub id: Option<u64>,
    /// The error code.
    pub code: ErrorCode,
    /// A human sentence.
    pub message: String,
}

impl ClientFrame {
    /// Parses a client text frame, telling apart bad JSON, an unknown `op` and bad fields so
    /// the error frame can say which (and echo the `id`).
    ///
    /// # Errors
    /// A [`FrameError`] with `bad_json`, `unknown_op` or `invalid_request`.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
            id: None,
            code: ErrorCode::BadJson,
            message: format!("frame is not valid JSON: {e}"),
        })?;
        let id = value.get("id").and_then(Value::as_u64);
        let fail = |code, message: String| FrameError { id, code, message };
        let Some(obj) = value.as_object() else {
            return Err(fail(
                ErrorCode::InvalidRequest,
                "frame must be a JSON object".into(),
            ));
        };
        match obj.get("op").and_then(Value::as_str) {
            Some("subscribe" | "unsubscribe" | "publish" | "ping" | "auth" | "presence") => {}
            Some(other) => {
                return Err(fail(
                    ErrorCode::UnknownOp,
                    format!(
                        "unknown op {other:?}; expected subscribe, unsubscribe, publish, ping, auth or presence"
                    ),
                ));
            }
            None => {
                return Err(fail(
                    ErrorCode::InvalidRequest,
                    "frame needs a string \"op\"".into(),
                ));
            }
        }
        serde_json::from_value(value)
            .map_err(|e| fail(ErrorCode::InvalidRequest, format!("bad frame: {e}")))
    }
}

/// A frame sent by the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The subscription is live; `offset` is the channel's position where it starts.
    Subscribed {
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
        /// The channel's last offset when the subscription started (0 = no event yet).
        offset: u64,
        /// Cursor of that position: store it to resume without loss even before any event.
        cursor: String,
    },
    /// The subscription has ended.
    Unsubscribed {
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
    },
    /// One event (the envelope's fields, flattened next to `op`).
    Event(Envelope<Value>),
    /// History no longer reaches the requested position: events before `offset` are lost.
    Reset {
        /// Channel name.
        channel: String,
        /// The oldest offset still kept; delivery continues from there.
        offset: u64,
        /// Cursor of the position just before `offset`.
        cursor: String,
    },
    /// Reply to `auth`: the token is accepted until `expires_at` (RFC 3339; absent when
    /// it never expires).
    Authed {
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// When the token expires: the connection is told and closed then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    /// Reply to `presence`: the channel's members (`client_id`, and `user` and `info` when
    /// the member's token had them).
    Presence {
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
        /// The members present.
        members: Vec<Value>,
    },
    /// Reply to `ping`.
    Pong {
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Reply to `publish`: where the event landed.
    Published {
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
        /// The event's offset.
        offset: u64,
        /// The cursor right after it.
        cursor: String,
    },
    /// A request failed; the connection stays open.
    Error {
        /// The request id, when the frame had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The subscription the error is about, when it ended one (a refreshed token that
        /// no longer covers it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// What went wrong.
        error: ErrorBody,
    },
}

impl ServerFrame {
    /// Serializes the frame to its JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frame serialization is infallible")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_errors_apart() {
        assert_eq!(
            ClientFrame::parse("{").unwrap_err().code,
            ErrorCode::BadJson
        );
        let e = ClientFrame::parse(r#"{"op":"dance","id":4}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::UnknownOp, Some(4)));
        let e = ClientFrame::parse(r#"{"op":"subscribe","id":5}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::InvalidRequest, Some(5)));
        assert_eq!(
            ClientFrame::parse("[1]").unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            ClientFrame::parse(r#"{"id":1}"#).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            ClientFrame::parse(r#"{"op":"ping"}"#).unwrap(),
            ClientFrame::Ping { id: None }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"op":"presence","id":2,"channel":"c"}"#).unwrap(),
            ClientFrame::Presence {
                id: Some(2),
                channel: "c".into()
            }
        );
    }
}
