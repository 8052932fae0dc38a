//! The HTTP API as one tower `Service`: the middleware around the [`Router`]. The server
//! serves it through hyper-util's `TowerToHyperService`; tests call it with
//! `tower::ServiceExt::oneshot`, without a socket.
//!
//! # Layers, outermost first
//! 1. **Body**: any request body (hyper's `Incoming`, a test's `Full`) becomes an
//!    [`ApiBody`], once, so that everything below is written for one type.
//! 2. **Sensitive headers** (tower-http): `authorization`, `proxy-authorization` and `cookie`
//!    are marked sensitive before anything else sees the request, so their `Debug` form is
//!    `Sensitive` in any log line or debug print that would show headers.
//! 3. **Request id** (tower-http, our [`request_id::MakeId`]): an unusable incoming
//!    `x-request-id` is dropped, a missing one made; before the span opens, so the span
//!    names it.
//! 4. **Trace** (tower-http, [`trace::layer`]): a `debug` span per request and a `debug`
//!    event per answer.
//! 5. **Request id propagation** (tower-http): the answer carries the request's id, error
//!    answers from the router included.
//! 6. The [`Router`]: rate limit, preflight, route, credentials, handler; CORS on the answer.
//!
//! Not here, on purpose: CORS is route-aware and lives in the router (see
//! [`super::cors`]); only the built-in files are compressed, once each
//! ([`super::static_asset`]): compressing event streams would hold back their frames, and
//! per-request compression of API answers (mostly small; a history page is the exception)
//! would leave a `HEAD` unable to tell the `GET`'s `Content-Encoding` and `Content-Length`;
//! and there is no request timeout layer. The long waits are
//! legitimate and bounded where a bound exists (a long-poll or `?wait=` hold by its 60 s
//! cap, a body read by `limits.body_read_timeout_secs`); the others have none a constant
//! could know (a large submit waiting for memory room under load, a body timeout configured
//! above it), and tower-http's timeout would cut them with a bodiless answer instead of our
//! JSON error.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, Request, header};
use hyper::body::Body as HttpBody;
use tower::{BoxError, ServiceBuilder, util::MapRequest};
use tower_http::{
    request_id::{PropagateRequestId, PropagateRequestIdLayer, SetRequestId, SetRequestIdLayer},
    sensitive_headers::{SetSensitiveRequestHeaders, SetSensitiveRequestHeadersLayer},
};

use super::{
    AppState,
    body::{ApiBody, into_api_body},
    request_id,
    router::Router,
    trace,
};

/// Request headers that carry credentials.
const SENSITIVE: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
];

/// The middleware (outermost first, see the module doc) around `S`, for requests with body
/// type `B`.
pub type Layered<B, S> = MapRequest<
    SetSensitiveRequestHeaders<
        MapRequest<
            SetRequestId<trace::Service<PropagateRequestId<S>>, request_id::MakeId>,
            fn(Request<ApiBody>) -> Request<ApiBody>,
        >,
    >,
    fn(Request<B>) -> Request<ApiBody>,
>;

/// The API over `state`, for requests with any body type `B`. Cloning is cheap.
pub fn app<B>(state: Arc<AppState>) -> Layered<B, Router>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    layered(Router::new(state))
}

/// The middleware around `inner` (the router, or a probe in tests).
fn layered<B, S>(inner: S) -> Layered<B, S>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        .map_request(into_api_request::<B> as fn(Request<B>) -> Request<ApiBody>)
        .layer(SetSensitiveRequestHeadersLayer::new(SENSITIVE))
        .map_request(request_id::drop_unusable::<ApiBody> as fn(_) -> _)
        .layer(SetRequestIdLayer::new(
            request_id::HEADER,
            request_id::MakeId,
        ))
        .layer(trace::layer())
        .layer(PropagateRequestIdLayer::new(request_id::HEADER))
        .service(inner)
}

fn into_api_request<B>(req: Request<B>) -> Request<ApiBody>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    req.map(into_api_body)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{HeaderMap, HeaderValue, Response, StatusCode, request::Parts};
    use http_body_util::{BodyExt, Empty};
    use switchyard_transports::http::empty;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use super::*;

    /// The middleware around a probe that hands over what the router would have seen.
    async fn through(headers: &[(&'static str, &str)]) -> (Parts, StatusCode, HeaderMap) {
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        let probe = tower::service_fn(move |req: Request<ApiBody>| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send(req.into_parts().0);
                Ok::<_, Infallible>(Response::new(empty()))
            }
        });
        let mut req = Request::builder().uri("/healthz?token=secret");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = layered(probe)
            .oneshot(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
        (seen_rx.recv().await.unwrap(), parts.status, parts.headers)
    }

    #[tokio::test]
    async fn credentials_are_marked_sensitive() {
        let (seen, _, _) = through(&[
            ("authorization", "Bearer k-0123456789abcdef"),
            ("cookie", "session=1"),
            ("content-type", "application/json"),
        ])
        .await;
        assert!(seen.headers["authorization"].is_sensitive());
        assert!(seen.headers["cookie"].is_sensitive());
        assert!(!seen.headers["content-type"].is_sensitive());
        let shown = format!("{:?}", seen.headers);
        assert!(!shown.contains("k-0123456789abcdef"), "{shown}");
    }

    #[tokio::test]
    async fn a_request_id_is_made_when_absent_and_answered() {
        let (seen, _, answered) = through(&[]).await;
        let id = &seen.headers[request_id::HEADER];
        assert_eq!(id.len(), 32);
        assert_eq!(&answered[request_id::HEADER], id);
        let (_, _, again) = through(&[]).await;
        assert_ne!(&again[request_id::HEADER], id, "one id per request");
    }

    #[tokio::test]
    async fn a_usable_incoming_id_is_kept_and_an_unusable_one_replaced() {
        let (seen, _, answered) = through(&[("x-request-id", "lb-1234")]).await;
        assert_eq!(seen.headers[request_id::HEADER], "lb-1234");
        assert_eq!(answered[request_id::HEADER], "lb-1234");
        let long = "x".repeat(300);
        let (seen, _, answered) = through(&[("x-request-id", &long)]).await;
        let made = &seen.headers[request_id::HEADER];
        assert_eq!(made.len(), 32);
        assert_eq!(&answered[request_id::HEADER], made);
        assert_ne!(made, &HeaderValue::from_str(&long).unwrap());
    }
}
