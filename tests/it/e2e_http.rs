//! The HTTP layer over a real socket: `HEAD` on every `GET` route (same status and headers,
//! no body, at once on the consumer routes), the client's `ETag` revalidated to `304`, its
//! gzip encoding, request ids, `curl -sI` on every `GET` route when curl is installed, and
//! the index at `/` (HTML for browsers, JSON for the rest).

use std::{io::Read, net::SocketAddr, time::Instant};

use ::http::{HeaderMap, Method, StatusCode};
use serde_json::json;
use switchyard::api::{
    assets::CLIENT_JS,
    routes::{Op, Route, operations, sample_path},
};

use crate::support::{config, http, start, within};

/// Every `GET` route, with a path that reaches it.
fn get_routes(job: &str, endpoint: &str) -> Vec<(&'static Route, String)> {
    operations()
        .filter(|(m, _)| **m == Method::HEAD)
        .map(|(_, route)| (route, sample_path(route, "e2e-http", job, endpoint)))
        .collect()
}

/// A job and a webhook endpoint to read.
async fn fixtures(addr: SocketAddr) -> (String, String) {
    let (status, _, job) = http::post_json(addr, "/v1/jobs", &[], &json!({"q": 1})).await;
    assert_eq!(status, 202, "{job}");
    let (status, _, endpoint) = http::post_json(
        addr,
        "/v1/webhooks",
        &[],
        &json!({"url": "http://127.0.0.1:9/hook", "channels": ["e2e-http"]}),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    (
        job["id"].as_str().unwrap().to_owned(),
        endpoint["id"].as_str().unwrap().to_owned(),
    )
}

/// The headers a `GET` and its `HEAD` share: all but the framing (`content-length`,
/// `transfer-encoding`, and `connection`: a stream's connection is not reused), the clock
/// (`date`) and the per-request id.
fn comparable(h: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<_> = h
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "date" | "x-request-id"
            )
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    v.sort();
    v
}

fn length(h: &HeaderMap) -> Option<usize> {
    h.get("content-length")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn head_answers_what_get_answers_on_every_get_route() {
    let mut cfg = config();
    cfg.webhooks.allow_private_networks = true;
    let server = start(cfg).await;
    let addr = server.addr;
    let (job, endpoint) = fixtures(addr).await;
    for (route, path) in get_routes(&job, &endpoint) {
        let get = http::open(addr, &path, &[]).await;
        let (get_status, get_headers) = (get.status(), get.headers().clone());
        // A stream never ends: its head is all there is to compare (dropping it hangs up).
        drop(get);
        let (status, headers, body) = within(
            &format!("HEAD {path}"),
            http::request(addr, "HEAD", &path, &[], vec![]),
        )
        .await;
        assert_eq!(status, get_status, "HEAD {path}");
        assert_eq!(
            comparable(&headers),
            comparable(&get_headers),
            "HEAD {path}"
        );
        assert!(body.is_empty(), "HEAD {path}: a body");
        assert!(headers.contains_key("x-request-id"), "HEAD {path}");
        match route.op {
            // The length depends on what the skipped hold (or stream) would have brought.
            Op::Sse | Op::Stream | Op::Poll => assert_eq!(length(&headers), None, "HEAD {path}"),
            // Counters move between two requests.
            Op::Metrics => assert!(length(&headers).is_some(), "HEAD {path}"),
            _ => assert_eq!(length(&headers), length(&get_headers), "HEAD {path}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn head_on_consumer_routes_answers_at_once_and_checks_like_get() {
    let mut cfg = config();
    cfg.auth.api_keys = vec!["e2e-http-admin-key-0123".to_owned()];
    let server = start(cfg).await;
    let addr = server.addr;
    let auth = [("authorization", "Bearer e2e-http-admin-key-0123")];
    // Without `timeout`, a long-poll GET holds 30 s (`poll.default_timeout_secs`).
    for path in [
        "/v1/sse?channel=e2e-head",
        "/v1/stream?channel=e2e-head",
        "/v1/poll?channel=e2e-head",
    ] {
        let started = Instant::now();
        let (status, headers, body) = within(
            &format!("HEAD {path}"),
            http::request(addr, "HEAD", path, &auth, vec![]),
        )
        .await;
        assert_eq!(status, 200, "HEAD {path}");
        assert!(body.is_empty());
        assert!(headers.contains_key("content-type"), "HEAD {path}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "HEAD {path} held for {:?}",
            started.elapsed()
        );
        // The same request without a credential: the GET's 401.
        let (status, headers, body) = http::request(addr, "HEAD", path, &[], vec![]).await;
        assert_eq!(status, 401, "HEAD {path}");
        assert!(headers.contains_key("www-authenticate"));
        assert!(body.is_empty());
    }
    let (_, _, metrics) = http::request(addr, "GET", "/metrics", &auth, vec![]).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.lines().any(|l| l == "switchyard_channels 0"),
        "a HEAD subscribed:\n{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_is_revalidated_with_its_etag_and_sent_compressed() {
    let server = start(config()).await;
    let addr = server.addr;
    let (status, headers, body) = http::request(addr, "GET", "/v1/client.js", &[], vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(body, CLIENT_JS.as_bytes());
    assert_eq!(headers["cache-control"], "no-cache");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let (status, headers, body) = http::request(
        addr,
        "GET",
        "/v1/client.js",
        &[("if-none-match", &etag)],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers["etag"], etag.as_str());

    let (status, headers, body) = http::request(
        addr,
        "GET",
        "/v1/client.js",
        &[("accept-encoding", "gzip")],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(length(&headers), Some(body.len()));
    assert!(body.len() < CLIENT_JS.len() / 2, "{} bytes", body.len());
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, CLIENT_JS);
    // Another encoding, another tag: the gzip tag revalidates the gzip body only.
    let gzip_tag = headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(gzip_tag, etag);
    let (status, ..) = http::request(
        addr,
        "GET",
        "/v1/client.js",
        &[("accept-encoding", "gzip"), ("if-none-match", &gzip_tag)],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    server.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_answered_and_kept() {
    let server = start(config()).await;
    let addr = server.addr;
    let (_, headers, _) = http::request(addr, "GET", "/healthz", &[], vec![]).await;
    let made = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 32, "{made}");
    let (_, again, _) = http::request(addr, "GET", "/healthz", &[], vec![]).await;
    assert_ne!(again["x-request-id"], made.as_str());
    let (status, headers, _) = http::request(
        addr,
        "GET",
        "/nope",
        &[("x-request-id", "lb-e2e-42")],
        vec![],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-request-id"], "lb-e2e-42");
    server.shutdown().await;
}

/// `curl -sI` (a HEAD) on every GET route answers the GET's status. Skipped, saying so,
/// where curl is not installed.
#[tokio::test]
async fn curl_head_works_on_every_get_route() {
    let Ok(version) = std::process::Command::new("curl").arg("--version").output() else {
        assert!(
            std::env::var("SWITCHYARD_REQUIRE_CURL").is_err(),
            "SWITCHYARD_REQUIRE_CURL is set but there is no `curl` binary"
        );
        eprintln!("SKIPPED curl_head_works_on_every_get_route: no `curl` binary on this machine");
        return;
    };
    assert!(version.status.success());
    let mut cfg = config();
    cfg.webhooks.allow_private_networks = true;
    let server = start(cfg).await;
    let addr = server.addr;
    let (job, endpoint) = fixtures(addr).await;
    for (_, path) in get_routes(&job, &endpoint) {
        let expected = http::open(addr, &path, &[]).await.status();
        let url = format!("http://{addr}{path}");
        let curl = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sI", "--max-time", "5", &url])
                .output()
        });
        let out = within(&format!("curl -sI {path}"), curl)
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl -sI {path}: {:?}\n{text}",
            out.status
        );
        let status_line = text.lines().next().unwrap_or_default();
        assert_eq!(
            status_line.split_whitespace().nth(1),
            Some(expected.as_str()),
            "curl -sI {path}: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("x-request-id:"),
            "{text}"
        );
    }
    server.shutdown().await;
}

/// `GET /` is an index, not a 404: HTML for a browser (its `Accept` ranks `text/html`
/// first), JSON for everyone else, with links that work.
#[tokio::test]
async fn the_index_is_html_for_browsers_and_json_for_the_rest() {
    let server = start(config()).await;
    let addr = server.addr;
    let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let (status, headers, body) =
        http::request(addr, "GET", "/", &[("accept", firefox)], vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["vary"], "accept");
    let page = String::from_utf8(body.to_vec()).unwrap();
    for link in ["/openapi.json", "/demo", "/v1/client.js"] {
        assert!(page.contains(&format!("href=\"{link}\"")), "{link}: {page}");
    }
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    for accept in [Some("application/json"), Some("*/*"), None] {
        let headers: Vec<_> = accept.map(|a| ("accept", a)).into_iter().collect();
        let (status, answer_headers, body) =
            http::request(addr, "GET", "/", &headers, vec![]).await;
        assert_eq!(status, 200, "{accept:?}");
        assert!(
            answer_headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{accept:?}"
        );
        let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(index["name"], "switchyard");
        assert_eq!(index["version"], env!("CARGO_PKG_VERSION"));
        for (name, link) in index["links"].as_object().unwrap() {
            let link = link.as_str().unwrap();
            let (status, ..) = http::request(addr, "GET", link, &[], vec![]).await;
            assert_eq!(status, 200, "links.{name}: {link}");
        }
    }
    server.shutdown().await;
}

/// The answers on a raw connection after writing `request`, read until the server closes:
/// (status, head, body) each.
async fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> Vec<(u16, String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    let mut received = Vec::new();
    // Written while reading: the server may answer before it has read everything.
    let (written, _) = tokio::join!(write.write_all(&request), async {
        within("the answer", read.read_to_end(&mut received))
            .await
            .unwrap()
    });
    written.unwrap();
    let mut answers = Vec::new();
    let mut rest = &received[..];
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head: {}", String::from_utf8_lossy(rest)));
        let head = String::from_utf8(rest[..end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .map_or(0, |n| n.parse().unwrap());
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = rest[end + 4..end + 4 + length].to_vec();
        rest = &rest[end + 4 + length..];
        answers.push((status, head, body));
    }
    answers
}

/// Asserts a JSON error answer with `status` and `code`.
fn assert_json_error((status, head, body): &(u16, String, Vec<u8>), want: u16, code: &str) {
    assert_eq!(*status, want, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: application/json"),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {head}\n{}", String::from_utf8_lossy(body)));
    assert_eq!(body["error"]["code"], code, "{head}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

/// What hyper refuses before any route sees a request (a malformed head, a request target
/// over 65534 bytes, over 100 header fields or a head over its buffer) is answered with
/// the API's JSON error like every other error, on a fresh connection or a reused one.
#[tokio::test]
async fn requests_hyper_cannot_parse_get_json_errors() {
    let server = start(config()).await;
    let addr = server.addr;
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"GET /healthz HTTP/1.1\r\nhost: a\r\nthis is not a header\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        (
            b"GET /healthz HTTP/9.9\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        // A streaming path goes to hyper as soon as its head looks unusual.
        (
            b"GET /v1/sse?channel=a HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nhost: a\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: a\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
                "b".repeat(600_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let answers = raw_exchange(addr, request).await;
        assert_eq!(answers.len(), 1, "{status} {code}");
        assert_json_error(&answers[0], status, code);
        assert!(
            answers[0]
                .1
                .to_ascii_lowercase()
                .contains("\r\nconnection: close")
        );
    }
    // The second request of a kept-alive connection.
    let answers = raw_exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\nGET /healthz HTTP/1.1\r\nhost: a\r\nbad\r\n\r\n"
            .to_vec(),
    )
    .await;
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].0, 200);
    assert_json_error(&answers[1], 400, "invalid_request");
    // The server is unharmed.
    let (status, _, _) = http::request(addr, "GET", "/healthz", &[], vec![]).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}
