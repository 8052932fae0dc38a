//! `HEAD` (RFC 9110 9.3.2): the answer a `GET` would get, without its body. Every `GET` route
//! answers it; the consumer transports check a `HEAD` like a `GET` but answer at once
//! (see `sse::head`, `stream::head`, `longpoll::head`), so nothing is subscribed or held.

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Body as _;
use switchyard_transports::http::empty;

use super::{body::ApiBody, router::Reply};

/// `res` without its body. A body of known size keeps its `Content-Length`, as the `GET`
/// would have sent it; a stream's length is not known, so the header is left out (allowed
/// for `HEAD`).
pub fn without_body(res: Reply) -> Reply {
    let (mut parts, body) = res.into_parts();
    let length = body.size_hint().exact().filter(|n| *n > 0);
    if let Some(n) = length
        && may_have_length(parts.status)
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Response::from_parts(parts, empty())
}

/// Whether an answer with `status` may carry `Content-Length` (RFC 9110 8.6).
fn may_have_length(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// A `HEAD` of `/v1/ws` as a `GET` that asks for no upgrade: a `HEAD` cannot switch
/// protocols, so it gets what such a `GET` gets (400 `invalid_request` once the other
/// checks pass).
pub fn as_plain_get(req: Request<ApiBody>) -> Request<ApiBody> {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(header::UPGRADE);
    parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use switchyard_transports::http::{full, json_bytes};

    use super::*;

    #[tokio::test]
    async fn the_length_stays_and_the_body_goes() {
        let res = without_body(json_bytes(StatusCode::OK, Bytes::from_static(b"{\"a\":1}")));
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "7");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
        assert!(
            res.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
    }

    #[test]
    fn no_length_where_none_may_be() {
        let mut res = Response::new(full("x"));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        assert!(
            !without_body(res)
                .headers()
                .contains_key(header::CONTENT_LENGTH)
        );
        let empty_ok = Response::new(empty());
        assert!(
            !without_body(empty_ok)
                .headers()
                .contains_key(header::CONTENT_LENGTH)
        );
    }
}
