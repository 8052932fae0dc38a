//! The JSON error shape `{"error": {"code", "message"}}` and the codes it uses.

use serde::{Deserialize, Serialize};

/// A machine-readable error code with the HTTP status it maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body or frame is not valid JSON.
    BadJson,
    /// A well-formed request that breaks the API's rules.
    InvalidRequest,
    /// A channel name breaks the naming rules.
    InvalidChannel,
    /// A cursor this server did not produce.
    InvalidCursor,
    /// A query parameter or field has a bad value.
    InvalidParameter,
    /// A WebSocket frame's `op` is unknown.
    UnknownOp,
    /// The connection holds the most subscriptions allowed.
    TooManySubscriptions,
    /// The request names more channels than one request may.
    TooManyChannels,
    /// Missing or bad credentials.
    Unauthorized,
    /// The consumer token's `exp` has passed: get a fresh token and reconnect (or, on
    /// WebSocket, send it in an `auth` frame).
    TokenExpired,
    /// Credentials that do not allow this.
    Forbidden,
    /// No such resource.
    NotFound,
    /// The path exists but not with this method.
    MethodNotAllowed,
    /// The request conflicts with the current state (e.g. a reused idempotency key).
    Conflict,
    /// The client took too long to send the request body.
    RequestTimeout,
    /// The body is larger than allowed.
    PayloadTooLarge,
    /// The body's content type is not accepted.
    UnsupportedMediaType,
    /// The request target (path and query) is longer than the server reads.
    UriTooLong,
    /// The request's header fields are too many or too large in all.
    HeadersTooLarge,
    /// Too many requests; retry after the `Retry-After` header.
    RateLimited,
    /// The channel has the most subscribers its namespace allows (`max_subscribers`).
    ChannelFull,
    /// A dependency or resource is unavailable.
    Unavailable,
    /// The server is shutting down.
    ShuttingDown,
    /// The consumer could not keep up and was disconnected; resume from the last cursor.
    SlowConsumer,
    /// The channel's namespace does not track presence.
    PresenceDisabled,
    /// The channel has the most presence members its namespace allows.
    PresenceFull,
    /// An unexpected server fault.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order documented (the OpenAPI description's `ErrorBody.code`
    /// enum is checked against it); a new code is added here too.
    pub const ALL: [Self; 27] = [
        Self::BadJson,
        Self::InvalidRequest,
        Self::InvalidChannel,
        Self::InvalidCursor,
        Self::InvalidParameter,
        Self::UnknownOp,
        Self::TooManySubscriptions,
        Self::TooManyChannels,
        Self::Unauthorized,
        Self::TokenExpired,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::RequestTimeout,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::RateLimited,
        Self::ChannelFull,
        Self::Unavailable,
        Self::ShuttingDown,
        Self::SlowConsumer,
        Self::PresenceDisabled,
        Self::PresenceFull,
        Self::Internal,
    ];

    /// The snake_case code string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidChannel => "invalid_channel",
            Self::InvalidCursor => "invalid_cursor",
            Self::InvalidParameter => "invalid_parameter",
            Self::UnknownOp => "unknown_op",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::TooManyChannels => "too_many_channels",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::RateLimited => "rate_limited",
            Self::ChannelFull => "channel_full",
            Self::Unavailable => "unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::SlowConsumer => "slow_consumer",
            Self::PresenceDisabled => "presence_disabled",
            Self::PresenceFull => "presence_full",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status for this code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadJson
            | Self::InvalidRequest
            | Self::InvalidChannel
            | Self::InvalidCursor
            | Self::InvalidParameter
            | Self::UnknownOp
            | Self::TooManySubscriptions
            | Self::TooManyChannels => 400,
            Self::Unauthorized | Self::TokenExpired => 401,
            Self::Forbidden => 403,
            Self::NotFound | Self::PresenceDisabled => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict | Self::PresenceFull => 409,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::UriTooLong => 414,
            Self::UnsupportedMediaType => 415,
            Self::HeadersTooLarge => 431,
            Self::RateLimited | Self::ChannelFull => 429,
            Self::Internal => 500,
            Self::Unavailable | Self::ShuttingDown | Self::SlowConsumer => 503,
        }
    }
}

/// The inner object of an error: `{"code", "message"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// snake_case machine-readable code (see [`ErrorCode`]); clients should accept unknown codes.
    pub code: String,
    /// A human sentence.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }
}

/// The whole error document: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

impl ErrorResponse {
    /// Builds the error document.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody::new(code, message),
        }
    }

    /// Serializes the error document to JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("error serialization is infallible")
    }
}
