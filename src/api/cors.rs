//! Browsers: CORS for the API (`cors.allowed_origins`) and the `Origin` check of
//! WebSocket upgrades, which browsers send cross-origin without asking.
//!
//! Our own rather than tower-http's `CorsLayer`: a preflight here lists exactly the methods
//! of the route it asks about (and answers 404 for a path that is no route), which needs the
//! route table, and the WebSocket origin rule has no CORS counterpart at all.

use http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use switchyard_protocol::ErrorCode;
use switchyard_transports::http::empty;

use super::{
    AppState,
    error::{ApiError, ApiResult},
    router::Reply,
    routes,
};

/// Headers a cross-origin page may send.
const ALLOW_HEADERS: &str =
    "authorization, content-type, idempotency-key, last-event-id, x-request-id";
/// Response headers a cross-origin page may read.
const EXPOSE_HEADERS: &str = "retry-after, location, idempotency-replayed, x-request-id";
/// Seconds a browser may cache a preflight answer.
const MAX_AGE: &str = "600";

/// The request's `Origin`, if it has a usable one.
pub fn origin(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

/// Whether `origin` may call the API cross-origin.
pub fn allowed(state: &AppState, origin: &str) -> bool {
    state
        .config
        .cors
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// Whether a WebSocket upgrade's `Origin` is acceptable: absent (not a browser), the
/// page's own host, or an allowed origin. Any other page could open a socket on a user's
/// behalf, so it is refused.
pub fn websocket_origin_ok(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = origin(headers) else {
        return true;
    };
    let same_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .zip(origin.split_once("://").map(|(_, host)| host))
        .is_some_and(|(host, origin_host)| host.eq_ignore_ascii_case(origin_host));
    same_host || allowed(state, origin)
}

/// Answers a preflight (`OPTIONS` with `Access-Control-Request-Method`).
///
/// # Errors
/// `not_found` for a path that is no route, `invalid_request` without `Origin`, `forbidden`
/// for an origin not in `cors.allowed_origins`.
pub fn preflight(state: &AppState, parts: &Parts) -> ApiResult {
    let methods = routes::methods_for(parts.uri.path());
    if methods.is_empty() {
        return Err(ApiError::not_found(format!(
            "no route for {}",
            parts.uri.path()
        )));
    }
    let Some(origin) = origin(&parts.headers) else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a preflight needs an Origin header",
        ));
    };
    if !allowed(state, origin) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("origin {origin:?} is not allowed (cors.allowed_origins)"),
        ));
    }
    let mut res = Reply::new(empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let list = routes::allow_list(&methods);
    let h = res.headers_mut();
    allow_origin(h, origin);
    if let Ok(v) = HeaderValue::from_str(&list) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    Ok(res)
}

/// Lets an allowed cross-origin page read `res` (a preflight answer already says so).
pub fn decorate(state: &AppState, origin: Option<&str>, res: &mut Reply) {
    if res
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        return;
    }
    if let Some(origin) = origin.filter(|o| allowed(state, o)) {
        let h = res.headers_mut();
        allow_origin(h, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
}

fn allow_origin(h: &mut HeaderMap, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        // The answer depends on the Origin: caches must keep one per origin.
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}
