//! Credentials: API keys and scopes on the server API, consumer tokens (JWT in three
//! algorithms, job tokens) on every transport, expiry, and open mode's loopback rule.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    Config, TestServer, channel, config,
    http::{self, assert_error},
    sse::SseClient,
    start,
    tokens::{self, HS256_SECRET, claims},
    within,
    ws::WsClient,
};

/// Every scope.
const ADMIN: &str = "admin-key-0123456789abcdef";
const PUBLISHER: &str = "publisher-key-0123456789";
const WORKER: &str = "worker-key-0123456789abc";
const READER: &str = "reader-key-0123456789abc";

fn secured() -> Config {
    let mut cfg = config();
    cfg.auth.api_keys = vec![
        ADMIN.to_owned(),
        format!("{PUBLISHER}:publish+jobs"),
        format!("{WORKER}:work"),
        format!("{READER}:subscribe"),
    ];
    cfg.auth.jwt_secret = HS256_SECRET.to_owned();
    cfg
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn publish_as(server: &TestServer, key: &str, channel: &str, n: u64) -> (u16, Value) {
    let auth = bearer(key);
    let (status, _, body) = http::post_json(
        server.addr,
        &format!("/v1/channels/{channel}/events"),
        &[("authorization", &auth)],
        &json!({"type": "tick", "data": {"n": n}}),
    )
    .await;
    (status.as_u16(), body)
}

async fn get_as(
    server: &TestServer,
    path: &str,
    auth: Option<&str>,
) -> (u16, ::http::HeaderMap, Value) {
    let header = auth.map(bearer);
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("authorization", h)])
        .unwrap_or_default();
    let (status, h, body) = http::request(server.addr, "GET", path, &headers, Vec::new()).await;
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status.as_u16(), h, value)
}

#[tokio::test]
async fn server_routes_need_a_key_with_the_right_scope() {
    let server = start(secured()).await;
    let ch = channel("auth-scopes");

    let (status, _, body) = http::post_json(
        server.addr,
        &format!("/v1/channels/{ch}/events"),
        &[],
        &json!({"type": "tick", "data": 1}),
    )
    .await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = publish_as(&server, "not-a-key-0123456789", &ch, 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(body["error"]["message"], "unknown API key");

    // A worker key may not publish; a publisher key may.
    let (status, body) = publish_as(&server, WORKER, &ch, 1).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`publish`")
    );
    let (status, body) = publish_as(&server, PUBLISHER, &ch, 1).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = publish_as(&server, ADMIN, &ch, 2).await;
    assert_eq!(status, 201, "admin has every scope: {body}");
    // Server routes take keys from the header only: a key in the URL does not count.
    let (status, _, body) = http::post_json(
        server.addr,
        &format!("/v1/channels/{ch}/events?token={ADMIN}"),
        &[],
        &json!({"type": "tick", "data": 3}),
    )
    .await;
    assert_error(status, &body, 401, "unauthorized");

    // Webhooks and metrics are admin-only; probes and the API description are public.
    let (status, _, body) = get_as(&server, "/v1/webhooks", Some(PUBLISHER)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(get_as(&server, "/v1/webhooks", Some(ADMIN)).await.0, 200);
    assert_eq!(get_as(&server, "/metrics", None).await.0, 401);
    assert_eq!(get_as(&server, "/healthz", None).await.0, 200);
    assert_eq!(get_as(&server, "/readyz", None).await.0, 200);
    assert_eq!(get_as(&server, "/openapi.json", None).await.0, 200);

    // History needs `subscribe`.
    let path = format!("/v1/channels/{ch}/events?after=0");
    assert_eq!(get_as(&server, &path, Some(WORKER)).await.0, 403);
    let (status, _, body) = get_as(&server, &path, Some(READER)).await;
    assert_eq!(status, 200);
    assert_eq!(body["events"].as_array().unwrap().len(), 2);

    // The worker API needs `work`.
    let claim = |key: &'static str| async move {
        let auth = bearer(key);
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let body = br#"{"wait_ms": 0}"#.to_vec();
        http::request(server.addr, "POST", "/v1/jobs/claim", &headers, body)
            .await
            .0
    };
    assert_eq!(claim(PUBLISHER).await, 403);
    assert_eq!(claim(WORKER).await, 204);

    // Operators see the refusals: four 401s and four 403s above.
    let (_, _, body) = http::request(
        server.addr,
        "GET",
        "/metrics",
        &[("authorization", &bearer(ADMIN))],
        Vec::new(),
    )
    .await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "switchyard_http_refusals_total{reason=\"unauthorized\"} 4",
        "switchyard_http_refusals_total{reason=\"forbidden\"} 4",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_401_names_the_bearer_scheme() {
    let server = start(secured()).await;
    let (status, headers, _) =
        http::request(server.addr, "POST", "/v1/jobs", &[], b"{}".to_vec()).await;
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn jwt_consumers_read_their_channels_only_on_every_transport() {
    let server = start(secured()).await;
    let mine = channel("auth-mine");
    let theirs = channel("auth-theirs");
    let token = tokens::hs256(HS256_SECRET, &claims(&[&format!("{mine}/**"), &mine], 300));
    let sub = format!("{mine}/a");

    // SSE with ?token= (what EventSource can do): allowed channel streams; another is 403.
    let mut sse =
        SseClient::connect(server.addr, &format!("channel={sub}&token={token}"), None).await;
    let res = http::open(
        server.addr,
        &format!("/v1/sse?channel={theirs}&token={token}"),
        &[],
    )
    .await;
    assert_eq!(res.status(), 403);
    // A consumer without any credential is told so.
    let res = http::open(server.addr, &format!("/v1/sse?channel={sub}"), &[]).await;
    assert_eq!(res.status(), 401);

    // NDJSON stream and long-poll with the header.
    let auth = bearer(&token);
    let stream = http::open(
        server.addr,
        &format!("/v1/stream?channel={sub}"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(stream.status(), 200);
    let (status, _, body) = http::request(
        server.addr,
        "GET",
        &format!("/v1/poll?channel={theirs}&timeout=0"),
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await;
    assert_error(
        status,
        &serde_json::from_slice(&body).unwrap(),
        403,
        "forbidden",
    );

    // WebSocket: the token in the first frame; a foreign channel is an error frame.
    let mut ws = WsClient::connect_to(server.addr, "/v1/ws", &[])
        .await
        .unwrap();
    ws.send(json!({"op": "subscribe", "id": 1, "channel": sub}))
        .await;
    let refused = ws.next_json().await;
    assert_eq!(refused["op"], "error");
    assert_eq!(refused["error"]["code"], "unauthorized", "{refused}");
    ws.send(json!({"op": "auth", "id": 2, "token": token}))
        .await;
    let authed = ws.next_json().await;
    assert_eq!(authed["op"], "authed", "{authed}");
    assert!(authed["expires_at"].is_string());
    ws.subscribe(3, &sub, json!({})).await;
    ws.send(json!({"op": "subscribe", "id": 4, "channel": theirs}))
        .await;
    let forbidden = ws.next_json().await;
    assert_eq!(forbidden["op"], "error");
    assert_eq!(forbidden["id"], 4);
    assert_eq!(forbidden["error"]["code"], "forbidden");

    let (status, _) = publish_as(&server, PUBLISHER, &sub, 1).await;
    assert_eq!(status, 201);
    let (_, event) = sse.next_json().await;
    assert_eq!(event["data"]["n"], 1);
    assert_eq!(ws.next_event().await["data"]["n"], 1);
    let mut lines = http::LineReader::new(stream.into_body());
    let subscribed = lines.next_json().await.unwrap();
    assert_eq!(subscribed["op"], "subscribed");
    assert_eq!(lines.next_json().await.unwrap()["data"]["n"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let server = start(secured()).await;
    let ch = channel("auth-bad");
    let expired = tokens::hs256(HS256_SECRET, &claims(&[&ch], -5));
    let forged = tokens::hs256("another-secret-another-secret-xxxx", &claims(&[&ch], 300));

    let (status, body) = WsClient::connect_to(server.addr, &format!("/v1/ws?token={expired}"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_expired"))
    );
    let (status, body) = WsClient::connect_to(
        server.addr,
        "/v1/ws",
        &[("authorization", &bearer(&forged))],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let res = http::open(
        server.addr,
        &format!("/v1/sse?channel={ch}&token={expired}"),
        &[],
    )
    .await;
    assert_eq!(res.status(), 401);
    // An API key without `subscribe` cannot consume.
    let (status, body) =
        WsClient::connect_to(server.addr, "/v1/ws", &[("authorization", &bearer(WORKER))])
            .await
            .err()
            .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_websocket_whose_token_expires_is_told_and_closed() {
    let server = start(secured()).await;
    let ch = channel("auth-expiry");
    let token = tokens::hs256(HS256_SECRET, &claims(&[&ch], 2));
    let mut ws = WsClient::connect_to(server.addr, &format!("/v1/ws?token={token}"), &[])
        .await
        .unwrap();
    ws.subscribe(1, &ch, json!({})).await;
    let (close, frames) = ws.until_close().await;
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::from(4003));
    assert_eq!(close.reason.as_str(), "token_expired");
    let told = frames.last().expect("an error frame before the close");
    assert_eq!(told["error"]["code"], "token_expired", "{told}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_sse_stream_ends_when_its_token_expires() {
    let server = start(secured()).await;
    let ch = channel("auth-sse-expiry");
    let token = tokens::hs256(HS256_SECRET, &claims(&[&ch], 2));
    let mut sse =
        SseClient::connect(server.addr, &format!("channel={ch}&token={token}"), None).await;
    let (event, body) = sse.next_json().await;
    assert_eq!(event.event, "disconnect");
    assert_eq!(body["code"], "token_expired");
    assert!(within("the stream's end", sse.next()).await.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn a_websocket_without_auth_is_closed_after_the_auth_timeout() {
    let mut cfg = secured();
    cfg.websocket.auth_timeout_secs = 1;
    let server = start(cfg).await;
    let mut ws = WsClient::connect_to(server.addr, "/v1/ws", &[])
        .await
        .unwrap();
    let (close, _) = ws.until_close().await;
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::from(4001));
    server.shutdown().await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_the_configured_public_key() {
    for (alg, mint) in [
        ("RS256", tokens::rs256 as fn(&Value) -> String),
        ("ES256", tokens::es256),
    ] {
        let mut cfg = secured();
        cfg.auth.jwt_secret = String::new();
        cfg.auth.jwt_algorithm = alg.to_owned();
        cfg.auth.jwt_public_key_file =
            tokens::fixture(&format!("jwt_{}_public.pem", alg.to_lowercase()));
        let server = start(cfg).await;
        let ch = channel("auth-asym");
        let token = mint(&claims(&[&ch], 300));
        let mut ws = WsClient::connect_to(server.addr, &format!("/v1/ws?token={token}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        ws.subscribe(1, &ch, json!({})).await;
        // The algorithm comes from config: an HS256 token is refused even if well signed.
        let hs = tokens::hs256(HS256_SECRET, &claims(&[&ch], 300));
        let (status, body) = WsClient::connect_to(server.addr, &format!("/v1/ws?token={hs}"), &[])
            .await
            .err()
            .unwrap();
        assert_eq!(status, 401, "{alg}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("algorithm"),
            "{body}"
        );
        server.shutdown().await;
    }
}

#[tokio::test]
async fn tokens_for_another_issuer_or_audience_are_refused_when_configured() {
    let mut cfg = secured();
    cfg.auth.jwt_issuer = "https://id.example".to_owned();
    cfg.auth.jwt_audience = "switchyard".to_owned();
    let server = start(cfg).await;
    let ch = channel("auth-aud");
    let token_with = |iss: &str, aud: Value| {
        let mut c = claims(&[&ch], 300);
        c["iss"] = json!(iss);
        c["aud"] = aud;
        tokens::hs256(HS256_SECRET, &c)
    };
    let ours = token_with("https://id.example", json!(["crm", "switchyard"]));
    let mut sse =
        SseClient::connect(server.addr, &format!("channel={ch}&token={ours}"), None).await;
    for (token, why) in [
        (token_with("https://id.example", json!("crm")), "aud"),
        (
            token_with("https://other.example", json!("switchyard")),
            "iss",
        ),
        // Well signed, right channels, but no audience at all.
        (tokens::hs256(HS256_SECRET, &claims(&[&ch], 300)), "iss"),
    ] {
        let (status, body) =
            WsClient::connect_to(server.addr, &format!("/v1/ws?token={token}"), &[])
                .await
                .err()
                .expect("refused");
        assert_eq!(status, 401, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
    }
    assert_eq!(publish_as(&server, PUBLISHER, &ch, 1).await.0, 201);
    let (_, event) = sse.next_json().await;
    assert_eq!(event["data"], json!({"n": 1}));
    drop(sse);
    server.shutdown().await;
}

#[tokio::test]
async fn a_job_token_reads_its_job_and_nothing_else() {
    let server = start(secured()).await;
    let submit = || async {
        let (status, _, body) = http::post_json(
            server.addr,
            "/v1/jobs",
            &[("authorization", &bearer(PUBLISHER))],
            &json!({"query": "x"}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        body
    };
    let job = submit().await;
    let other = submit().await;
    let token = job["token"].as_str().unwrap().to_owned();
    let id = job["id"].as_str().unwrap();
    let other_id = other["id"].as_str().unwrap();

    let (status, _, body) = get_as(&server, &format!("/v1/jobs/{id}?token={token}"), None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("queued")),
        "{body}"
    );
    let (status, _, _) = get_as(&server, &format!("/v1/jobs/{id}"), Some(&token)).await;
    assert_eq!(status, 200);
    let (status, _, body) = get_as(&server, &format!("/v1/jobs/{other_id}"), Some(&token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        get_as(&server, &format!("/v1/jobs/{id}"), None).await.0,
        401
    );
    // It cannot cancel, publish or claim.
    let (status, _, _) = http::request(
        server.addr,
        "DELETE",
        &format!("/v1/jobs/{id}"),
        &[("authorization", &bearer(&token))],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 401);

    // It follows the job on SSE (replay from the start) and nothing else.
    let mut sse = SseClient::connect(
        server.addr,
        &format!("channel=jobs/{id}&after=0&token={token}"),
        None,
    )
    .await;
    let (event, _) = sse.next_json().await;
    assert_eq!(event.event, "job.queued");
    let res = http::open(
        server.addr,
        &format!("/v1/sse?channel=jobs/{other_id}&token={token}"),
        &[],
    )
    .await;
    assert_eq!(res.status(), 403);
    // A token altered to name the other job is not genuine.
    let forged = token.replace(id, other_id);
    assert_eq!(
        get_as(&server, &format!("/v1/jobs/{other_id}"), Some(&forged))
            .await
            .0,
        401
    );
    server.shutdown().await;
}

#[tokio::test]
async fn open_mode_refuses_a_public_address() {
    if crate::support::embedded_only("runs its own server, on the embedded engine") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.data_dir = dir.path().to_owned();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let result = within(
        "run to refuse",
        switchyard::run(listener, cfg.clone(), std::future::pending()),
    )
    .await;
    let message = format!("{:#}", result.unwrap_err());
    assert!(message.contains("open mode"), "{message}");
    assert!(message.contains("auth.api_keys"), "{message}");

    // With a key, the same address is fine.
    cfg.auth.api_keys = vec![ADMIN.to_owned()];
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(switchyard::run(listener, cfg, async {
        let _ = stopped.await;
    }));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    within("the server to answer", async {
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                drop(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (status, _) = http::get_json(addr, "/healthz").await;
    assert_eq!(status, 200);
    let _ = stop.send(());
    within("shutdown", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    if crate::support::embedded_only("spawns the binary, which runs on the embedded engine") {
        return;
    }
    let jwt_secret = "jwt-secret-that-must-not-leak-0123456789";
    let data = tempfile::tempdir().unwrap();
    let keys = format!("{ADMIN},{WORKER}:work");
    let mut server = crate::support::process::spawn(
        data.path(),
        &[
            ("RUST_LOG", "trace"),
            ("SWITCHYARD_AUTH__API_KEYS", &keys),
            ("SWITCHYARD_AUTH__JWT_SECRET", jwt_secret),
        ],
    );
    let addr = server.addr;
    let ch = channel("auth-logs");
    let token = tokens::hs256(jwt_secret, &claims(&[&ch], 300));
    let wrong = "wrong-key-that-must-not-leak-012345";
    for key in [ADMIN, WORKER, wrong] {
        let auth = bearer(key);
        http::post_json(
            addr,
            &format!("/v1/channels/{ch}/events"),
            &[("authorization", &auth)],
            &json!({"type": "tick", "data": 1}),
        )
        .await;
    }
    let res = http::open(
        addr,
        &format!("/v1/poll?channel={ch}&timeout=0&token={token}"),
        &[],
    )
    .await;
    assert_eq!(res.status(), 200);
    let job = http::post_json(
        addr,
        "/v1/jobs",
        &[("authorization", &bearer(ADMIN))],
        &json!({}),
    )
    .await
    .2;
    let job_token = job["token"].as_str().unwrap().to_owned();
    http::request(
        addr,
        "GET",
        &format!("/v1/jobs/{}?token={job_token}", job["id"].as_str().unwrap()),
        &[],
        Vec::new(),
    )
    .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // `switchyard config` shows the effective configuration with secrets redacted, and a
    // refused key is described without being echoed.
    let env = [
        ("SWITCHYARD_AUTH__API_KEYS", keys.as_str()),
        ("SWITCHYARD_AUTH__JWT_SECRET", jwt_secret),
    ];
    let (ok, shown) = crate::support::process::run(&["config"], &env);
    assert!(ok, "{shown}");
    assert!(shown.contains("<redacted>:work"), "{shown}");
    let bad = "too-short-key:work";
    let (ok, refused) = crate::support::process::run(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[("SWITCHYARD_AUTH__API_KEYS", bad)],
    );
    assert!(!ok);
    assert!(refused.contains("at least 16"), "{refused}");

    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("API keys required"),
        "the log was captured: {log}"
    );
    for secret in [ADMIN, WORKER, wrong, jwt_secret, &token, &job_token, bad] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
        assert!(!shown.contains(secret), "`config` shows {secret:?}");
        assert!(!refused.contains(secret), "the refusal shows {secret:?}");
    }
}

#[tokio::test]
async fn a_refreshed_token_that_covers_less_ends_those_subscriptions() {
    let server = start(secured()).await;
    let (a, b) = (channel("auth-refresh-a"), channel("auth-refresh-b"));
    let both = tokens::hs256(HS256_SECRET, &claims(&[&a, &b], 300));
    let only_a = tokens::hs256(HS256_SECRET, &claims(&[&a], 600));
    let mut ws = WsClient::connect_to(server.addr, &format!("/v1/ws?token={both}"), &[])
        .await
        .unwrap();
    ws.subscribe(1, &a, json!({})).await;
    ws.subscribe(2, &b, json!({})).await;
    ws.send(json!({"op": "auth", "id": 3, "token": only_a}))
        .await;
    let dropped = ws.next_json().await;
    assert_eq!(dropped["op"], "error", "{dropped}");
    assert_eq!(dropped["error"]["code"], "forbidden");
    assert_eq!(dropped["channel"], b.as_str());
    assert_eq!(ws.next_json().await["op"], "authed");
    // The connection lives on with the channel the new token allows.
    assert_eq!(publish_as(&server, PUBLISHER, &b, 1).await.0, 201);
    assert_eq!(publish_as(&server, PUBLISHER, &a, 2).await.0, 201);
    assert_eq!(ws.next_event().await["data"]["n"], 2);
    server.shutdown().await;
}
