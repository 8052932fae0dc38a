//! Attacks on shared budgets, scripted against the real server: while each runs, a backend
//! with its own key must still publish and submit within normal latency.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::support::{Config, config, http, start, tokens, within, ws::WsClient};

/// A backend's key (every scope) and an attacker's (jobs only), both configured.
const BACKEND: &str = "backend-key-0123456789";
const ATTACKER: &str = "attacker-key-0123456789";

/// What a backend's request may take while an attack runs: far above loopback latency
/// (milliseconds), far below the waits the attacks used to cause (tens of seconds).
const NORMAL: Duration = Duration::from_secs(2);

fn keyed() -> Config {
    let mut cfg = config();
    cfg.auth.api_keys = vec![BACKEND.to_owned(), format!("{ATTACKER}:jobs")];
    cfg
}

/// Reads one sample of `/metrics` with the backend's key.
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let auth = format!("Bearer {BACKEND}");
    let (status, _, body) = http::request(
        addr,
        "GET",
        "/metrics",
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Polls `/metrics` until `done` holds for `series`.
async fn wait_for(addr: SocketAddr, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    within(&format!("{series} to settle"), async {
        loop {
            let value = metric(addr, series).await;
            if done(value) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A backend submits a small job and publishes an event; each must answer in [`NORMAL`].
async fn backend_is_served(addr: SocketAddr, during: &str) {
    let auth = format!("Bearer {BACKEND}");
    for (path, want) in [("/v1/jobs", 202), ("/v1/channels/abuse/events", 201)] {
        let started = Instant::now();
        let body = json!({"type": "t", "data": {"during": during}});
        let (status, _, answer) = within(
            &format!("{path} during {during}"),
            http::post_json(addr, path, &[("authorization", &auth)], &body),
        )
        .await;
        assert_eq!(status, want, "{path} during {during}: {answer}");
        assert!(
            started.elapsed() < NORMAL,
            "{path} took {:?} during {during}",
            started.elapsed()
        );
    }
}

/// Opens a connection that sends `POST /v1/jobs` announcing `announced` bytes and then
/// `sent` bytes of it, with the attacker's key, and leaves it there.
async fn stalled_upload(addr: SocketAddr, announced: usize, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ATTACKER}\r\n\
         content-type: application/json\r\ncontent-length: {announced}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut body = vec![b' '; sent];
    body[0] = b'"';
    // The server may refuse and close mid-body: what it answered is read from /metrics.
    let _ = stream.write_all(&body).await;
    stream
}

#[tokio::test]
async fn stalled_job_uploads_neither_block_other_submits_nor_exceed_the_senders_share() {
    let server = start(keyed()).await;
    let addr = server.addr;
    let max = 10 * 1024 * 1024;
    let receiving = "switchyard_jobs_receiving_bytes";

    // 30 uploads announce 10 MiB each (300 MiB: more than jobs.max_inflight_bytes) and send
    // one byte. They hold one byte each, not what they announced.
    let mut uploads = Vec::new();
    for _ in 0..30 {
        uploads.push(stalled_upload(addr, max, 1).await);
    }
    wait_for(addr, receiving, |held| held == 30.0).await;
    backend_is_served(addr, "30 stalled uploads").await;
    drop(uploads);
    wait_for(addr, receiving, |held| held == 0.0).await;

    // 8 uploads send all but the last byte of 10 MiB: 80 MiB from one key, past its share
    // (jobs.max_inflight_bytes_per_client, 64 MiB). Those that would cross it are refused
    // (429); the rest hold their bytes until they finish or time out.
    let uploads: Vec<_> = (0..8)
        .map(|_| tokio::spawn(stalled_upload(addr, max, max - 1)))
        .collect();
    let refused = r#"switchyard_http_refusals_total{reason="rate_limited"}"#;
    let share = 64.0 * 1024.0 * 1024.0;
    let mut settled = None;
    within("the uploads to be held or refused", async {
        while settled.is_none() {
            let (held, no) = (metric(addr, receiving).await, metric(addr, refused).await);
            assert!(held <= share, "{held} bytes held past the key's share");
            if no >= 2.0 && held == (8.0 - no) * (max - 1) as f64 {
                settled = Some(no);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    backend_is_served(addr, "one key's uploads at its share").await;
    for upload in uploads {
        drop(upload.await.unwrap());
    }
    server.shutdown().await;
}

/// A WebSocket from loopback address `from` (127.0.0.x: a client address of its own) with
/// a consumer JWT for subject `sub` on every channel.
async fn consumer_ws(addr: SocketAddr, from: [u8; 4], sub: &str) -> WsClient {
    let claims = json!({"channels": ["**"], "exp": tokens::epoch_in(600), "sub": sub});
    let token = tokens::hs256(JWT_SECRET, &claims);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("any 127.0.0.x is loopback on Linux");
    let stream = socket.connect(addr).await.unwrap();
    let req = format!("ws://{addr}/v1/ws?token={token}");
    let (ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    WsClient { ws }
}

/// Subscribes `names` on `ws` (pipelined); returns how many were accepted, checking that
/// every refusal is `rate_limited`.
async fn subscribe_all(ws: &mut WsClient, names: &[String]) -> usize {
    for (id, name) in names.iter().enumerate() {
        ws.send(json!({"op": "subscribe", "id": id, "channel": name}))
            .await;
    }
    let mut accepted = 0;
    for _ in names {
        let frame = ws.next_json().await;
        match frame["op"].as_str() {
            Some("subscribed") => accepted += 1,
            Some("error") => assert_eq!(frame["error"]["code"], "rate_limited", "{frame}"),
            _ => panic!("unexpected {frame}"),
        }
    }
    accepted
}

const JWT_SECRET: &str = "abuse-test-jwt-secret-0123456789abcdef";

#[tokio::test]
async fn one_address_or_one_token_cannot_take_every_channel() {
    let mut cfg = keyed();
    cfg.auth.jwt_secret = JWT_SECRET.to_owned();
    cfg.limits.max_channels = 1000;
    cfg.limits.max_subscriptions_per_ip = 600;
    cfg.limits.max_subscriptions_per_user = 800;
    let server = start(cfg).await;
    let addr = server.addr;
    let names =
        |conn: usize| -> Vec<String> { (0..256).map(|i| format!("attack/{conn}/{i}")).collect() };

    // Mallory opens 4 WebSockets from one address, 256 new channel names on each: the
    // address holds 600 subscriptions, no more.
    let mut held = Vec::new();
    let mut accepted = 0;
    for conn in 0..4 {
        let mut ws = consumer_ws(addr, [127, 0, 0, 1], "mallory").await;
        accepted += subscribe_all(&mut ws, &names(conn)).await;
        held.push(ws);
    }
    assert_eq!(accepted, 600, "the address's budget");
    // From a second address her token's subject reaches its own budget (800).
    let mut ws = consumer_ws(addr, [127, 0, 0, 3], "mallory").await;
    assert_eq!(
        subscribe_all(&mut ws, &names(9)).await,
        200,
        "the user's budget"
    );
    held.push(ws);

    // Meanwhile backends publish to new channels, and another user subscribes to new ones.
    backend_is_served(addr, "one token holding its budgets").await;
    let auth = format!("Bearer {BACKEND}");
    for i in 0..50 {
        let (status, _, body) = http::post_json(
            addr,
            &format!("/v1/channels/fresh/{i}/events"),
            &[("authorization", &auth)],
            &json!({"type": "t", "data": i}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut alice = consumer_ws(addr, [127, 0, 0, 2], "alice").await;
    let hers: Vec<String> = (0..10).map(|i| format!("alice/{i}")).collect();
    assert_eq!(subscribe_all(&mut alice, &hers).await, 10);

    // Mallory leaves: her budgets are hers again.
    drop(held);
    within("mallory's subscriptions to be given back", async {
        let mut ws = consumer_ws(addr, [127, 0, 0, 1], "mallory").await;
        loop {
            let name = vec![format!("again/{}", rand_suffix())];
            if subscribe_all(&mut ws, &name).await == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.shutdown().await;
}

/// A channel name suffix unlikely to repeat within a test.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn history_is_bounded_in_bytes_and_the_largest_channels_pay_first() {
    if crate::support::embedded_only("history lives in Redis on the Redis engine") {
        return;
    }
    let mut cfg = keyed();
    cfg.history.max_bytes_per_channel = 8 * 1024 * 1024;
    cfg.history.max_bytes = 20 * 1024 * 1024;
    let server = start(cfg).await;
    let addr = server.addr;
    let auth = format!("Bearer {BACKEND}");
    let held = "switchyard_history_bytes";
    // A small channel's history first: it must survive what follows.
    for n in 0..5 {
        let (status, _, _) = http::post_json(
            addr,
            "/v1/channels/small/events",
            &[("authorization", &auth)],
            &json!({"type": "t", "data": n}),
        )
        .await;
        assert_eq!(status, 201);
    }
    // 3 channels x 12 events x ~1 MiB: 36 MiB published, more than the 20 MiB budget and
    // each channel past its 8 MiB.
    let big = json!({"type": "t", "data": "x".repeat(1024 * 1024 - 200)});
    for round in 0..12 {
        for c in 0..3 {
            let (status, _, body) = http::post_json(
                addr,
                &format!("/v1/channels/big/{c}/events"),
                &[("authorization", &auth)],
                &big,
            )
            .await;
            assert_eq!(status, 201, "round {round}: {body}");
            let now = metric(addr, held).await;
            assert!(now <= 20.0 * 1024.0 * 1024.0, "{now} bytes held");
        }
    }
    backend_is_served(addr, "a full history budget").await;
    let history = |path: &'static str| {
        let auth = auth.clone();
        async move {
            let (status, _, body) =
                http::request(addr, "GET", path, &[("authorization", &auth)], Vec::new()).await;
            assert_eq!(status, 200);
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }
    };
    let page = history("/v1/channels/small/events?after=0").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 5, "{page}");
    let page = history("/v1/channels/big/0/events?after=0").await;
    let kept = page["events"].as_array().unwrap();
    assert!(
        (4..=7).contains(&kept.len()),
        "8 MiB per channel, less under the total: {}",
        kept.len()
    );
    assert_eq!(kept.last().unwrap()["offset"], 12, "the newest are kept");
    assert_eq!(
        page["reset"], true,
        "older events are gone, and the reader is told"
    );
    let evicted = r#"switchyard_history_evicted_events_total{reason="total_bytes"}"#;
    assert!(metric(addr, evicted).await > 0.0);
    server.shutdown().await;
}
