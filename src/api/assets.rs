//! Files for browsers, built into the binary: the client at `GET /v1/client.js`
//! (`clients/js/switchyard.js`) and the PollToPush demo page at `GET /demo`
//! (`examples/demo.html`, when `demo.enabled`).

use http::{HeaderValue, Response, StatusCode, header};
use switchyard_protocol::ErrorCode;
use switchyard_transports::http::{error, full};

use super::{AppState, router::Reply};

/// The browser client, an ES module without dependencies.
pub const CLIENT_JS: &str = include_str!("../../clients/js/switchyard.js");
/// The demo page; it loads the client from `/v1/client.js`.
pub const DEMO_HTML: &str = include_str!("../../examples/demo.html");

/// `GET /v1/client.js`.
pub fn client_js() -> Reply {
    file(CLIENT_JS, "text/javascript; charset=utf-8")
}

/// `GET /demo`: the page, or 404 when `demo.enabled` is off.
pub fn demo(state: &AppState) -> Reply {
    if !state.config.demo.enabled {
        return error(
            ErrorCode::NotFound,
            "the demo page is turned off (demo.enabled)",
        );
    }
    let mut res = file(DEMO_HTML, "text/html; charset=utf-8");
    let h = res.headers_mut();
    // The page runs its one inline module and talks to this gateway only; nobody may frame
    // it, and no URL of it (or its requests) leaks through `Referer`.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn file(body: &'static str, content_type: &'static str) -> Reply {
    let mut res = Response::new(full(body));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load, so a browser never runs a client older than its gateway.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}
