//! Request ids (`x-request-id`): an incoming id (a load balancer's, a client's) is kept when
//! it is usable, a new one is made otherwise ([`crate::ids::request_id`]); the answer carries
//! it, and the request's log span and fault logs name it.

use http::{HeaderName, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// The header.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id kept: it is repeated in every log line of the request.
const MAX_LEN: usize = 128;

/// Makes an id for a request that has none.
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&crate::ids::request_id())
            .ok()
            .map(RequestId::new)
    }
}

/// Removes an incoming id that is empty, longer than [`MAX_LEN`] or not visible ASCII, so
/// that a fresh one is made instead of logging (and echoing) whatever was sent.
pub fn drop_unusable<B>(mut req: Request<B>) -> Request<B> {
    let usable = |v: &HeaderValue| {
        (1..=MAX_LEN).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic)
    };
    if req.headers().get_all(HEADER).iter().count() > 1
        || req.headers().get(HEADER).is_some_and(|v| !usable(v))
    {
        req.headers_mut().remove(HEADER);
    }
    req
}

/// The id of a request (set by the layer before any handler runs).
pub fn of<B>(req: &Request<B>) -> Option<&HeaderValue> {
    req.headers().get(HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &[u8]) -> Request<()> {
        let mut req = Request::new(());
        req.headers_mut()
            .insert(HEADER, HeaderValue::from_bytes(id).unwrap());
        req
    }

    #[test]
    fn usable_ids_are_kept_and_others_dropped() {
        assert_eq!(
            of(&drop_unusable(with_id(b"lb-7f3a:9"))).unwrap(),
            "lb-7f3a:9"
        );
        for bad in [&b"has space"[..], &[b'x'; 129], b"caf\xc3\xa9"] {
            assert!(of(&drop_unusable(with_id(bad))).is_none(), "{bad:?}");
        }
        let mut twice = with_id(b"a");
        twice
            .headers_mut()
            .append(HEADER, HeaderValue::from_static("b"));
        assert!(of(&drop_unusable(twice)).is_none());
    }

    #[test]
    fn made_ids_are_headers() {
        let id = MakeId.make_request_id(&Request::new(())).unwrap();
        assert_eq!(id.header_value().len(), 32);
    }
}
