//! Files for browsers, built into the binary: the client at `GET /v1/client.js`
//! (`clients/js/switchyard.js`) and the PollToPush demo page at `GET /demo`
//! (`examples/demo.html`, when `demo.enabled`). Each is compressed once and revalidated with
//! its `ETag` ([`StaticAsset`]).

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, header};

use super::{
    AppState,
    error::{ApiError, ApiResult},
    router::Reply,
    static_asset::StaticAsset,
};

/// The browser client, an ES module without dependencies.
pub const CLIENT_JS: &str = include_str!("../../clients/js/switchyard.js");
/// The demo page; it loads the client from `/v1/client.js`.
pub const DEMO_HTML: &str = include_str!("../../examples/demo.html");

// Compressed at their first request, not at start: a gateway that serves no browser keeps
// the ~10 MB the compressors allocate (and the allocator keeps) to itself.
static CLIENT: LazyLock<StaticAsset> =
    LazyLock::new(|| StaticAsset::new(CLIENT_JS.as_bytes(), "text/javascript; charset=utf-8"));
static DEMO: LazyLock<StaticAsset> =
    LazyLock::new(|| StaticAsset::new(DEMO_HTML.as_bytes(), "text/html; charset=utf-8"));

/// `GET /v1/client.js`.
pub fn client_js(request: &HeaderMap) -> Reply {
    CLIENT.respond(request)
}

/// `GET /demo`: the page, or 404 when `demo.enabled` is off.
///
/// # Errors
/// `not_found` when the demo is turned off.
pub fn demo(state: &AppState, request: &HeaderMap) -> ApiResult {
    if !state.config.demo.enabled {
        return Err(ApiError::not_found(
            "the demo page is turned off (demo.enabled)",
        ));
    }
    let mut res = DEMO.respond(request);
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
    Ok(res)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use http::{StatusCode, header};

    use super::*;
    use crate::api::testing::TestApp;

    #[tokio::test]
    async fn built_in_files_come_compressed_and_decompress_to_themselves() {
        let app = TestApp::new(|_| {}).await;
        for (path, file) in [
            ("/v1/client.js", CLIENT_JS),
            ("/demo", DEMO_HTML),
            ("/openapi.json", crate::api::openapi::SPEC),
        ] {
            let plain = app.call("GET", path, &[], "").await;
            assert_eq!(plain.status, StatusCode::OK, "{path}");
            assert_eq!(plain.body, file.as_bytes(), "{path}");
            assert_eq!(plain.headers[header::CACHE_CONTROL], "no-cache");

            let gz = app
                .call("GET", path, &[("accept-encoding", "gzip")], "")
                .await;
            assert_eq!(gz.headers[header::CONTENT_ENCODING], "gzip", "{path}");
            assert!(
                gz.headers[header::VARY]
                    .to_str()
                    .unwrap()
                    .contains("accept-encoding")
            );
            let mut text = String::new();
            flate2::read::GzDecoder::new(&gz.body[..])
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, file, "{path}: gzip");

            let br = app
                .call("GET", path, &[("accept-encoding", "gzip, deflate, br")], "")
                .await;
            assert_eq!(br.headers[header::CONTENT_ENCODING], "br", "{path}");
            let mut text = String::new();
            brotli::Decompressor::new(&br.body[..], 4096)
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, file, "{path}: br");
            assert!(br.body.len() < gz.body.len() && gz.body.len() < file.len());

            // HEAD: the same headers, the encoded length, no body.
            let head = app
                .call("HEAD", path, &[("accept-encoding", "br")], "")
                .await;
            assert!(head.body.is_empty());
            assert_eq!(head.headers[header::ETAG], br.headers[header::ETAG]);
            assert_eq!(
                head.headers[header::CONTENT_LENGTH],
                br.body.len().to_string().as_str()
            );
        }
    }

    #[tokio::test]
    async fn revalidation_with_the_etag_is_a_304() {
        let app = TestApp::new(|_| {}).await;
        let first = app
            .call("GET", "/v1/client.js", &[("accept-encoding", "gzip")], "")
            .await;
        let tag = first.headers[header::ETAG].to_str().unwrap().to_owned();
        let again = app
            .call(
                "GET",
                "/v1/client.js",
                &[("accept-encoding", "gzip"), ("if-none-match", &tag)],
                "",
            )
            .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        assert!(again.body.is_empty());
        assert_eq!(again.headers[header::ETAG], tag.as_str());
        assert_eq!(again.headers[header::CACHE_CONTROL], "no-cache");
        let head = app
            .call(
                "HEAD",
                "/v1/client.js",
                &[("accept-encoding", "gzip"), ("if-none-match", &tag)],
                "",
            )
            .await;
        assert_eq!(head.status, StatusCode::NOT_MODIFIED);
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
        // The demo page keeps its own headers on a 304 too, and a turned-off demo is a 404.
        let demo = app.call("GET", "/demo", &[], "").await;
        let tag = demo.headers[header::ETAG].to_str().unwrap().to_owned();
        let demo = app
            .call("GET", "/demo", &[("if-none-match", &tag)], "")
            .await;
        assert_eq!(demo.status, StatusCode::NOT_MODIFIED);
        assert!(demo.headers.contains_key(header::CONTENT_SECURITY_POLICY));
        let off = TestApp::new(|c| c.demo.enabled = false).await;
        let res = off
            .call("GET", "/demo", &[("if-none-match", &tag)], "")
            .await;
        assert_eq!(
            (res.status, res.code().as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
    }
}
