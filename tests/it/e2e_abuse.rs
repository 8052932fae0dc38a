//! Attacks on shared budgets, scripted against the real server: while each runs, a backend
//! with its own key must still publish and submit within normal latency.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::support::{Config, config, http, start, within};

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
