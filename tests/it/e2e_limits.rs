//! Limits with clear errors: request rate (429 + Retry-After), connections per address,
//! slow request headers and bodies, and the browser rules (CORS, WebSocket Origin).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    Config, config,
    http::{self, assert_error},
    start, within,
    ws::WsClient,
};

/// An API key: with one configured the gateway is not in open mode, where this machine's
/// requests have no per-address limit.
const KEY: &str = "limits-test-key-0123456789";

#[tokio::test]
async fn past_the_rate_a_client_gets_429_with_retry_after() {
    let mut cfg = config();
    cfg.auth.api_keys = vec![KEY.to_owned()];
    cfg.limits.requests_per_sec_per_ip = 0.5;
    cfg.limits.request_burst_per_ip = 3;
    let server = start(cfg).await;
    for _ in 0..3 {
        let (status, _) = http::get_json(server.addr, "/healthz").await;
        assert_eq!(status, 200);
    }
    let (status, headers, body) =
        http::request(server.addr, "GET", "/healthz", &[], Vec::new()).await;
    assert_error(
        status,
        &serde_json::from_slice(&body).unwrap(),
        429,
        "rate_limited",
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "one token every 2 s: {retry}");
    server.shutdown().await;
}

#[tokio::test]
async fn api_keys_have_their_own_bucket() {
    let key = "limited-key-0123456789";
    let mut cfg = config();
    cfg.auth.api_keys = vec![key.to_owned()];
    cfg.limits.requests_per_sec_per_ip = 0.5;
    cfg.limits.request_burst_per_ip = 1;
    cfg.limits.requests_per_sec_per_key = 0.5;
    cfg.limits.request_burst_per_key = 2;
    let server = start(cfg).await;
    let auth = format!("Bearer {key}");
    let get = |auth: Option<String>| async move {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        http::request(server.addr, "GET", "/v1/webhooks", &headers, Vec::new())
            .await
            .0
            .as_u16()
    };
    // Keyed requests do not spend the address's bucket, and have their own limit.
    assert_eq!(get(Some(auth.clone())).await, 200);
    assert_eq!(get(Some(auth.clone())).await, 200);
    assert_eq!(get(Some(auth.clone())).await, 429);
    assert_eq!(get(None).await, 401, "the address still has its token");
    assert_eq!(get(None).await, 429);
    server.shutdown().await;
}

#[tokio::test]
async fn in_open_mode_this_machine_is_not_rate_limited_but_forwarded_clients_are() {
    let mut cfg = config();
    cfg.limits.requests_per_sec_per_ip = 0.01;
    cfg.limits.request_burst_per_ip = 2;
    cfg.limits.trusted_proxies = vec!["127.0.0.0/8".to_owned()];
    let server = start(cfg).await;
    // A local backend publishing in parallel, far past the burst: every publish lands.
    let mut publishes = tokio::task::JoinSet::new();
    for n in 0..40 {
        let addr = server.addr;
        publishes.spawn(async move {
            http::post_json(
                addr,
                "/v1/channels/open-burst/events",
                &[],
                &json!({"type": "tick", "data": n}),
            )
            .await
            .0
        });
    }
    while let Some(status) = publishes.join_next().await {
        assert_eq!(status.unwrap(), 201);
    }
    // A client a trusted proxy forwards from elsewhere is still limited per address.
    let xff = "x-forwarded-for";
    for _ in 0..2 {
        assert_eq!(status_with(server.addr, xff, "203.0.113.9").await, 200);
    }
    assert_eq!(status_with(server.addr, xff, "203.0.113.9").await, 429);
    assert_eq!(
        status_with(server.addr, xff, "127.0.0.1").await,
        200,
        "forwarded from this machine"
    );
    server.shutdown().await;
}

/// Opens a raw connection the server should refuse: the status line's code and the body.
async fn refused_connection(addr: std::net::SocketAddr) -> (String, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut reply = String::new();
    within("the refusal", stream.read_to_string(&mut reply))
        .await
        .unwrap();
    assert!(
        reply.to_ascii_lowercase().contains("retry-after: 1"),
        "{reply}"
    );
    let status = reply.split(' ').nth(1).unwrap_or_default().to_owned();
    let body = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    (status, body)
}

/// Waits until a request on a new connection is served, then returns `/metrics`.
async fn metrics_once_a_slot_frees(addr: std::net::SocketAddr) -> String {
    within("a free slot", async {
        loop {
            let (status, _, body) = http::request(addr, "GET", "/metrics", &[], Vec::new()).await;
            if status == 200 {
                break String::from_utf8(body.to_vec()).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn refusals(metrics: &str, reason: &str) -> f64 {
    let series = format!("switchyard_http_refusals_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .expect("the refusal counter")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn connections_past_the_per_address_limit_get_429() {
    let mut cfg = config();
    cfg.limits.max_connections_per_ip = 2;
    let server = start(cfg).await;
    let a = WsClient::connect(server.addr).await;
    let _b = WsClient::connect(server.addr).await;
    let (status, body) = refused_connection(server.addr).await;
    assert_eq!(status, "429", "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Closing one frees its slot; the refusal shows on /metrics.
    drop(a);
    let metrics = metrics_once_a_slot_frees(server.addr).await;
    assert!(refusals(&metrics, "connections_per_ip") >= 1.0);
    server.shutdown().await;
}

#[tokio::test]
async fn slow_headers_and_bodies_are_cut_off() {
    let mut cfg = config();
    cfg.limits.header_read_timeout_secs = 1;
    cfg.limits.body_read_timeout_secs = 1;
    let server = start(cfg).await;

    // Slowloris: headers that never finish; the server closes the connection.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    within("the header timeout", slow.read_to_end(&mut rest))
        .await
        .unwrap();

    // An idle keep-alive connection is closed too: it holds a slot and a descriptor.
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the idle timeout", idle.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));

    // A body promised but sent too slowly gets 408 and the connection closes.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":",
    )
    .await
    .unwrap();
    let mut reply = String::new();
    within("the body timeout", slow.read_to_string(&mut reply))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "{reply}");
    server.shutdown().await;
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let mut cfg = config();
    cfg.cors.allowed_origins = vec!["https://app.example.com".to_owned()];
    let server = start(cfg).await;
    let preflight = |origin: &'static str| async move {
        http::request(
            server.addr,
            "OPTIONS",
            "/v1/jobs",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type, authorization",
                ),
            ],
            Vec::new(),
        )
        .await
    };
    let (status, headers, _) = preflight("https://app.example.com").await;
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-allow-methods"], "POST");
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    let (status, headers, body) = preflight("https://evil.example").await;
    assert_error(
        status,
        &serde_json::from_slice(&body).unwrap(),
        403,
        "forbidden",
    );
    assert!(!headers.contains_key("access-control-allow-origin"));

    // Actual requests: the allowed origin may read the answer, another may not.
    let (status, headers, _) = http::post_json(
        server.addr,
        "/v1/jobs",
        &[("origin", "https://app.example.com")],
        &json!({"q": 1}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("retry-after")
    );
    let (_, headers, _) = http::request(
        server.addr,
        "GET",
        "/healthz",
        &[("origin", "https://evil.example")],
        Vec::new(),
    )
    .await;
    assert!(!headers.contains_key("access-control-allow-origin"));
    server.shutdown().await;
}

#[tokio::test]
async fn websockets_from_foreign_pages_are_refused() {
    let mut cfg = config();
    cfg.cors.allowed_origins = vec!["https://app.example.com".to_owned()];
    let server = start(cfg).await;
    let (status, body) =
        WsClient::connect_to(server.addr, "/v1/ws", &[("origin", "https://evil.example")])
            .await
            .err()
            .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    // An allowed origin, the page's own origin, and non-browser clients (no Origin) are fine.
    WsClient::connect_to(
        server.addr,
        "/v1/ws",
        &[("origin", "https://app.example.com")],
    )
    .await
    .unwrap();
    let own = format!("http://{}", server.addr);
    WsClient::connect_to(server.addr, "/v1/ws", &[("origin", &own)])
        .await
        .unwrap();
    WsClient::connect_to(server.addr, "/v1/ws", &[])
        .await
        .unwrap();
    server.shutdown().await;
}

/// `GET /healthz` with one forwarding header; its status.
async fn status_with(server: std::net::SocketAddr, header: &str, value: &str) -> u16 {
    http::request(server, "GET", "/healthz", &[(header, value)], Vec::new())
        .await
        .0
        .as_u16()
}

/// One request per client address (per 100 s), behind `proxies` naming clients in `header`,
/// on a gateway with an API key (so the proxy's own address, 127.0.0.1, is limited too).
fn one_request_per_client(proxies: &[&str], header: &str) -> Config {
    let mut cfg = config();
    cfg.auth.api_keys = vec![KEY.to_owned()];
    cfg.limits.requests_per_sec_per_ip = 0.01;
    cfg.limits.request_burst_per_ip = 1;
    cfg.limits.trusted_proxies = proxies.iter().map(|p| (*p).to_owned()).collect();
    cfg.limits.client_ip_header = header.to_owned();
    cfg
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let xff = "x-forwarded-for";
    let server = start(one_request_per_client(&["127.0.0.0/8"], xff)).await;
    assert_eq!(status_with(server.addr, xff, "203.0.113.1").await, 200);
    assert_eq!(status_with(server.addr, xff, "203.0.113.1").await, 429);
    assert_eq!(
        status_with(server.addr, xff, "203.0.113.2").await,
        200,
        "another client behind the same proxy"
    );
    server.shutdown().await;

    // Without trusted proxies the header is the client's own claim: ignored.
    let server = start(one_request_per_client(&[], xff)).await;
    assert_eq!(status_with(server.addr, xff, "203.0.113.1").await, 200);
    assert_eq!(status_with(server.addr, xff, "203.0.113.2").await, 429);
    server.shutdown().await;
}

#[tokio::test]
async fn proxies_that_write_the_standard_forwarded_header_are_read_when_told() {
    let server = start(one_request_per_client(&["127.0.0.0/8"], "forwarded")).await;
    let v6 = r#"for="[2001:db8::7]:4711";proto=https"#;
    assert_eq!(status_with(server.addr, "forwarded", v6).await, 200);
    assert_eq!(status_with(server.addr, "forwarded", v6).await, 429);
    assert_eq!(
        status_with(server.addr, "forwarded", "for=203.0.113.2").await,
        200,
        "another client behind the same proxy"
    );
    // X-Forwarded-For is now the client's own claim: both count as the proxy itself.
    assert_eq!(
        status_with(server.addr, "x-forwarded-for", "203.0.113.3").await,
        200
    );
    assert_eq!(
        status_with(server.addr, "x-forwarded-for", "203.0.113.4").await,
        429,
        "both counted as the proxy's own address"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_total_limit_get_503() {
    let mut cfg = config();
    cfg.limits.max_connections = 2;
    let server = start(cfg).await;
    let _a = WsClient::connect(server.addr).await;
    let b = WsClient::connect(server.addr).await;
    let (status, body) = refused_connection(server.addr).await;
    assert_eq!(status, "503", "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    // A closed connection frees its slot for the next client.
    drop(b);
    let metrics = metrics_once_a_slot_frees(server.addr).await;
    assert!(refusals(&metrics, "connections_total") >= 1.0);
    server.shutdown().await;
}
