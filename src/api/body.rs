//! Reads JSON request bodies within a size limit, with the API's errors for the rest.
//!
//! A refused body is drained (up to [`DRAIN_MAX`]) so the client's keep-alive connection
//! stays usable for its next request; past that, the connection is closed instead of
//! reading an unbounded body.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, header, request::Parts};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use switchyard_protocol::ErrorCode;
use switchyard_transports::http::error;

use super::router::Reply;

/// Most bytes of a refused body read and discarded to keep the connection alive.
pub const DRAIN_MAX: u64 = 32 * 1024 * 1024;
/// Longest time spent draining a refused body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// The declared `Content-Length`, if any.
pub fn content_length(parts: &Parts) -> Option<u64> {
    super::headers::content_length(&parts.headers)
}

/// Checks that the content type, when given, is JSON.
///
/// # Errors
/// 415 for another content type.
#[allow(clippy::result_large_err)]
pub fn check_json_content_type(parts: &Parts) -> Result<(), Reply> {
    let Some(essence) = super::headers::media_type(&parts.headers) else {
        return Ok(());
    };
    if super::headers::is_json(&essence) {
        Ok(())
    } else {
        Err(error(
            ErrorCode::UnsupportedMediaType,
            format!("expected Content-Type: application/json, got {essence:?}"),
        ))
    }
}

/// How long a client may take to send a request body; the router puts it in each
/// request's extensions (`limits.body_read_timeout_secs`).
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub std::time::Duration);

/// The body timeout of a request (a minute when the router set none, as in unit tests).
pub fn body_timeout(parts: &Parts) -> std::time::Duration {
    parts
        .extensions
        .get::<BodyTimeout>()
        .map_or(std::time::Duration::from_secs(60), |t| t.0)
}

/// Reads the whole body of a JSON request of at most `max` bytes.
///
/// # Errors
/// 415 for a content type that is not JSON (a missing one is accepted), 413 for a body over
/// `max`, 400 when the body cannot be read.
pub async fn read_json(req: Request<Incoming>, max: usize) -> Result<(Parts, Bytes), Reply> {
    let (parts, body) = req.into_parts();
    if let Err(reply) = check_json_content_type(&parts) {
        return Err(refuse(body, content_length(&parts), reply).await);
    }
    let body = read_limited(body, content_length(&parts), max, body_timeout(&parts)).await?;
    Ok((parts, body))
}

/// Reads at most `max` bytes of `body`, taking at most `limit` (slow senders hold memory
/// and a connection slot).
///
/// # Errors
/// 413 when it is larger (the rest drained when small enough), 408 past `limit` (the
/// connection closed), 400 when it cannot be read.
pub async fn read_limited(
    body: Incoming,
    declared: Option<u64>,
    max: usize,
    limit: std::time::Duration,
) -> Result<Bytes, Reply> {
    match tokio::time::timeout(limit, read_within(body, declared, max)).await {
        Ok(read) => read,
        Err(_) => {
            let mut reply = error(
                ErrorCode::RequestTimeout,
                format!("the body took longer than {} s to arrive", limit.as_secs()),
            );
            reply
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(reply)
        }
    }
}

async fn read_within(
    mut body: Incoming,
    declared: Option<u64>,
    max: usize,
) -> Result<Bytes, Reply> {
    let too_large = || {
        error(
            ErrorCode::PayloadTooLarge,
            format!("body exceeds {max} bytes"),
        )
    };
    if declared.is_some_and(|n| n > max as u64) {
        return Err(refuse(body, declared, too_large()).await);
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(max as u64) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            error(
                ErrorCode::InvalidRequest,
                format!("could not read the body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(refuse(body, None, too_large()).await);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Answers `reply` after draining what is left of `body`, when that is small enough;
/// otherwise marks the response `Connection: close`.
pub async fn refuse(mut body: Incoming, remaining: Option<u64>, mut reply: Reply) -> Reply {
    let drained = remaining.is_none_or(|n| n <= DRAIN_MAX)
        && tokio::time::timeout(DRAIN_TIME, async {
            let mut read = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return false };
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                    if read > DRAIN_MAX {
                        return false;
                    }
                }
            }
            true
        })
        .await
        .unwrap_or(false);
    if !drained {
        reply
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    reply
}

/// Parses a body that must be a JSON object into `T`.
///
/// serde's derived structs also take a JSON array of the field values in declaration order
/// (`[null, {"a": 1}]` would publish); the API's bodies are objects only, so anything but an
/// object that parsed is refused as well.
///
/// # Errors
/// `bad_json` (not JSON), `invalid_request` (JSON of the wrong shape, or not an object).
#[allow(clippy::result_large_err)]
pub fn parse_object<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    let value = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        Ok(value)
    } else {
        Err(error(
            ErrorCode::InvalidRequest,
            "unexpected body: expected a JSON object",
        ))
    }
}

/// Maps a `serde_json` error to `bad_json` (not JSON at all) or `invalid_request` (JSON of
/// the wrong shape).
pub fn json_error(e: &serde_json::Error) -> Reply {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            error(ErrorCode::BadJson, format!("body is not valid JSON: {e}"))
        }
        Category::Data => error(ErrorCode::InvalidRequest, format!("unexpected body: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Pair {
        a: Option<u8>,
        b: Option<u8>,
    }

    #[test]
    fn only_objects_parse() {
        assert!(parse_object::<Pair>(b" {\"a\": 1}").is_ok());
        // serde alone would take the array as the fields in order.
        assert!(serde_json::from_slice::<Pair>(b"[1, 2]").is_ok());
        let refused = parse_object::<Pair>(b"[1, 2]").unwrap_err();
        assert_eq!(refused.status(), 400);
        let bad = parse_object::<Pair>(b"{\"a\": ").unwrap_err();
        assert_eq!(bad.status(), 400);
    }
}
