//! Response helpers: the body type, JSON responses and the JSON error shape.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde::Serialize;
use switchyard_protocol::{ErrorCode, ErrorResponse};

/// The response body of every route: a full buffer or a stream, boxed.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    BodyExt::boxed_unsync(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with `status`.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("response serialization is infallible");
    json_bytes(status, bytes)
}

/// A JSON response from already serialized bytes.
pub fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(full(bytes));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res
}

/// The API's error response: `{"error": {"code", "message"}}` with the code's status.
pub fn error(code: ErrorCode, message: impl Into<String>) -> Response<Body> {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = json_bytes(status, ErrorResponse::new(code, message).to_json());
    // RFC 6750: a 401 names the scheme it expects.
    let challenge = match code {
        ErrorCode::Unauthorized => Some("Bearer realm=\"switchyard\""),
        ErrorCode::TokenExpired => Some("Bearer realm=\"switchyard\", error=\"invalid_token\""),
        _ => None,
    };
    if let Some(challenge) = challenge {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    res
}
