//! Reads JSON request bodies within a size limit, with the API's errors for the rest.

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use switchyard_protocol::ErrorCode;

use super::router::Reply;
use switchyard_transports::http::error;

/// Reads the whole body of a JSON request of at most `max` bytes.
///
/// # Errors
/// 415 for a content type that is not JSON (a missing one is accepted), 413 for a body over
/// `max` (refused from `Content-Length` without reading, or as soon as it passes `max`),
/// 400 when the body cannot be read.
pub async fn read_json(
    req: Request<Incoming>,
    max: usize,
) -> Result<(http::request::Parts, Bytes), Reply> {
    let (parts, body) = req.into_parts();
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        let essence = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(error(
                ErrorCode::UnsupportedMediaType,
                format!("expected Content-Type: application/json, got {essence:?}"),
            ));
        }
    }
    let too_large = || {
        error(
            ErrorCode::PayloadTooLarge,
            format!("body exceeds {max} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(error(
            ErrorCode::InvalidRequest,
            format!("could not read the body: {e}"),
        )),
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
