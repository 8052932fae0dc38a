//! Request bodies: the one body type handlers read ([`ApiBody`]), and JSON bodies read
//! within a size and time limit, with the API's errors for the rest.
//!
//! A refused body is drained (up to [`DRAIN_MAX`]) so the client's keep-alive connection
//! stays usable for its next request; past that, the connection is closed instead of
//! reading an unbounded body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, request::Parts};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use switchyard_protocol::ErrorCode;
use tower::BoxError;

use super::error::{ApiError, ApiResult};

/// The request body every handler reads: whatever body the server (hyper's `Incoming`) or a
/// test (`Full`, `Empty`) hands in, converted once at the edge of the app.
pub type ApiBody = UnsyncBoxBody<Bytes, BoxError>;

/// Converts any request body into an [`ApiBody`].
pub fn into_api_body<B>(body: B) -> ApiBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Most bytes of a refused body read and discarded to keep the connection alive.
pub const DRAIN_MAX: u64 = 32 * 1024 * 1024;
/// Longest time spent draining a refused body.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// A content type other than JSON (415).
    #[error("expected Content-Type: application/json, got {0:?}")]
    NotJson(String),
    /// Larger than the route takes, in bytes (413).
    #[error("body exceeds {0} bytes")]
    TooLarge(usize),
    /// Not received within `limits.body_read_timeout_secs` (408, and the connection closes).
    #[error("the body took longer than {} s to arrive", .0.as_secs())]
    TimedOut(Duration),
    /// The connection failed while reading it (400).
    #[error("could not read the body: {0}")]
    Read(BoxError),
}

/// The declared `Content-Length`, if any.
pub fn content_length(parts: &Parts) -> Option<u64> {
    super::headers::content_length(&parts.headers)
}

/// Checks that the content type, when given, is JSON.
///
/// # Errors
/// [`BodyError::NotJson`] for another content type.
pub fn check_json_content_type(parts: &Parts) -> Result<(), BodyError> {
    match super::headers::media_type(&parts.headers) {
        Some(essence) if !super::headers::is_json(&essence) => Err(BodyError::NotJson(essence)),
        _ => Ok(()),
    }
}

/// How long a client may take to send a request body; the router puts it in each
/// request's extensions (`limits.body_read_timeout_secs`).
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub Duration);

/// The body timeout of a request (a minute when the router set none).
pub fn body_timeout(parts: &Parts) -> Duration {
    parts
        .extensions
        .get::<BodyTimeout>()
        .map_or(Duration::from_secs(60), |t| t.0)
}

/// Reads the whole body of a JSON request of at most `max` bytes.
///
/// # Errors
/// 415 for a content type that is not JSON (a missing one is accepted), 413 for a body over
/// `max`, 408 when it is too slow, 400 when it cannot be read.
pub async fn read_json(req: Request<ApiBody>, max: usize) -> ApiResult<(Parts, Bytes)> {
    let (parts, body) = req.into_parts();
    if let Err(e) = check_json_content_type(&parts) {
        return Err(refuse(body, content_length(&parts), e.into()).await);
    }
    let body = read_limited(
        body,
        content_length(&parts),
        max,
        body_timeout(&parts),
        &mut (),
    )
    .await?;
    Ok((parts, body))
}

/// Reads at most `max` bytes of `body`, taking at most `limit` (slow senders hold memory
/// and a connection slot).
///
/// # Errors
/// 413 when it is larger (the rest drained when small enough), 408 past `limit` (the
/// connection closed), 400 when it cannot be read.
pub async fn read_limited(
    body: ApiBody,
    declared: Option<u64>,
    max: usize,
    limit: Duration,
    room: &mut impl ChunkRoom,
) -> ApiResult<Bytes> {
    match tokio::time::timeout(limit, read_within(body, declared, max, room)).await {
        Ok(read) => read,
        Err(_) => Err(BodyError::TimedOut(limit).into()),
    }
}

/// Memory for a body's bytes, taken chunk by chunk as they arrive, so a body that stalls
/// holds only what it sent (job bodies: [`crate::jobs::inflight`]); `()` takes none.
pub trait ChunkRoom: Send {
    /// Takes room for `n` more bytes, waiting if need be.
    ///
    /// # Errors
    /// The refusal to answer with (the connection then closes).
    fn take(&mut self, n: usize) -> impl Future<Output = Result<(), ApiError>> + Send;
}

impl ChunkRoom for () {
    async fn take(&mut self, _: usize) -> Result<(), ApiError> {
        Ok(())
    }
}

async fn read_within(
    mut body: ApiBody,
    declared: Option<u64>,
    max: usize,
    room: &mut impl ChunkRoom,
) -> ApiResult<Bytes> {
    if declared.is_some_and(|n| n > max as u64) {
        return Err(refuse(body, declared, BodyError::TooLarge(max).into()).await);
    }
    // Not sized from the announced length: an announcement alone must hold no memory.
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(refuse(body, None, BodyError::TooLarge(max).into()).await);
            }
            if let Err(refusal) = room.take(data.len()).await {
                // Answered at once, closing: draining would wait on the very sender (or the
                // very congestion) the refusal is about.
                return Err(refusal.closing());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Returns `refusal` after draining what is left of `body`, when that is small enough;
/// otherwise marks it to close the connection.
pub async fn refuse(mut body: ApiBody, remaining: Option<u64>, refusal: ApiError) -> ApiError {
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
    if drained { refusal } else { refusal.closing() }
}

/// Parses a body that must be a JSON object into `T`.
///
/// serde's derived structs also take a JSON array of the field values in declaration order
/// (`[null, {"a": 1}]` would publish); the API's bodies are objects only, so anything but an
/// object that parsed is refused as well. A blank body (empty, or only whitespace) is not
/// JSON; a route whose body is optional decides what an empty one means before calling
/// this. The body must also keep to [`json_limits`](super::json_limits) (nesting, numbers).
///
/// # Errors
/// `bad_json` (not JSON, blank, too deep, a number out of range), `invalid_request` (JSON of
/// the wrong shape, or not an object).
pub fn parse_object<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::BadJson,
            "body is not valid JSON: it is blank (empty or only whitespace); expected a JSON object",
        ));
    }
    super::json_limits::check(body)?;
    let value = serde_json::from_slice(body)?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        Ok(value)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "unexpected body: expected a JSON object",
        ))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{Full, StreamBody};

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
        assert_eq!(refused.code(), ErrorCode::InvalidRequest);
        let bad = parse_object::<Pair>(b"{\"a\": ").unwrap_err();
        assert_eq!(bad.code(), ErrorCode::BadJson);
    }

    #[test]
    fn blank_bodies_are_not_json() {
        for blank in [&b""[..], b" ", b"\r\n\t "] {
            let e = parse_object::<Pair>(blank).unwrap_err();
            assert_eq!(e.code(), ErrorCode::BadJson, "{blank:?}");
            assert!(e.message().contains("blank"), "{e}");
        }
    }

    #[test]
    fn objects_keep_to_the_json_limits() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(64), "]".repeat(64));
        let e = parse_object::<Pair>(deep.as_bytes()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadJson);
        let e = parse_object::<Pair>(b"{\"a\": 1e400}").unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadJson);
    }

    fn request(content_type: Option<&str>, body: &'static [u8]) -> Request<ApiBody> {
        let mut req = Request::builder().method("POST").uri("/v1/jobs");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.body(into_api_body(Full::new(Bytes::from_static(body))))
            .unwrap()
    }

    #[tokio::test]
    async fn json_bodies_within_their_limit() {
        let (_, body) = read_json(request(Some("application/json"), b"{}"), 10)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{}");
        let (_, body) = read_json(request(None, b"[1]"), 10).await.unwrap();
        assert_eq!(&body[..], b"[1]");
        let e = read_json(request(Some("text/plain"), b"{}"), 10)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnsupportedMediaType);
        let e = read_json(request(None, b"{\"a\": 12345678}"), 10)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::PayloadTooLarge);
    }

    #[tokio::test]
    async fn a_failing_body_is_a_read_error() {
        let frames = futures_util::stream::iter([Err::<hyper::body::Frame<Bytes>, BoxError>(
            "connection reset".into(),
        )]);
        let body = into_api_body(StreamBody::new(frames));
        let e = read_limited(body, None, 10, Duration::from_secs(1), &mut ())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest);
        assert!(e.message().contains("connection reset"), "{e}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_times_out_and_closes() {
        let body = into_api_body(StreamBody::new(futures_util::stream::pending::<
            Result<hyper::body::Frame<Bytes>, BoxError>,
        >()));
        let e = read_limited(body, None, 10, Duration::from_millis(50), &mut ())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::RequestTimeout);
        let res = e.into_response();
        assert_eq!(res.headers()[http::header::CONNECTION], "close");
    }
}
