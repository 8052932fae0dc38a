//! Crash safety: the real binary is killed with SIGKILL while jobs are being submitted, or
//! while events that owe webhook deliveries are published; after a restart on the same data
//! directory, every job that got a 202 is there with its payload intact, and every publish
//! that got a 201 is delivered to its webhook.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Child,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::support::{http::request, process, within};

/// Submits a job; `Some(id)` only for a 202, `None` when the server is gone.
async fn try_submit(addr: SocketAddr, payload: &Value) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::post("/v1/jobs")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(payload).unwrap())))
        .unwrap();
    let res = sender.send_request(req).await.ok()?;
    if res.status() != 202 {
        return None;
    }
    let body = res.into_body().collect().await.ok()?.to_bytes();
    let body: Value = serde_json::from_slice(&body).ok()?;
    body["id"].as_str().map(str::to_owned)
}

/// Starts the server binary; submits come from one address as fast as it takes them.
fn spawn_server(data_dir: &std::path::Path) -> (Child, SocketAddr) {
    let server = process::spawn(
        data_dir,
        &[("SWITCHYARD_LIMITS__REQUESTS_PER_SEC_PER_IP", "0")],
    );
    (server.child, server.addr)
}

#[tokio::test]
async fn every_acknowledged_job_survives_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_server(data.path());

    let accepted: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let mut clients = Vec::new();
    for client in 0..8 {
        let accepted = Arc::clone(&accepted);
        clients.push(tokio::spawn(async move {
            for n in 0..10_000 {
                let payload = json!({"client": client, "n": n, "pad": "p".repeat(512)});
                match try_submit(addr, &payload).await {
                    Some(id) => {
                        accepted
                            .lock()
                            .unwrap()
                            .insert(id, json!({"client": client, "n": n}));
                    }
                    // The server died: this request may or may not have been stored.
                    None => return,
                }
            }
        }));
    }
    within("some jobs to be accepted", async {
        while accepted.lock().unwrap().len() < 300 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for c in clients {
        let _ = within("clients to stop", c).await;
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 300);

    let (mut child, addr) = spawn_server(data.path());
    let mut found = HashMap::new();
    loop {
        let claim = br#"{"wait_ms":0,"lease_ms":60000}"#.to_vec();
        let (status, _, body) = request(
            addr,
            "POST",
            "/v1/jobs/claim",
            &[("content-type", "application/json")],
            claim,
        )
        .await;
        if status == 204 {
            break;
        }
        assert_eq!(status, 200);
        let body: Value = serde_json::from_slice(&body).unwrap();
        let job = &body["job"];
        let payload = &job["payload"];
        assert_eq!(
            payload["pad"].as_str().map(str::len),
            Some(512),
            "payload intact"
        );
        found.insert(
            job["id"].as_str().unwrap().to_owned(),
            json!({"client": payload["client"], "n": payload["n"]}),
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for (id, payload) in &accepted {
        assert_eq!(
            found.get(id),
            Some(payload),
            "job {id} got a 202 but is missing or changed"
        );
    }
}

/// Publishes `{"n": n}` on `channel`; `Some(offset)` only for a 201, `None` when the server
/// is gone.
async fn try_publish(addr: SocketAddr, channel: &str, n: u64) -> Option<u64> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let body = json!({"type": "tick", "data": {"n": n}});
    let req = http::Request::post(format!("/v1/channels/{channel}/events"))
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    let res = sender.send_request(req).await.ok()?;
    if res.status() != 201 {
        return None;
    }
    let body = res.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice::<Value>(&body).ok()?["offset"].as_u64()
}

#[tokio::test]
async fn every_acknowledged_publish_keeps_its_webhook_deliveries_through_sigkill() {
    use crate::support::receiver::{Mode, Receiver};

    let data = tempfile::tempdir().unwrap();
    let envs = [
        ("SWITCHYARD_LIMITS__REQUESTS_PER_SEC_PER_IP", "0"),
        ("SWITCHYARD_WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
    ];
    let server = process::spawn(data.path(), &envs);
    let (mut child, addr) = (server.child, server.addr);
    let mut receiver = Receiver::start(Mode::Answer).await;
    let (status, _, endpoint) = crate::support::http::post_json(
        addr,
        "/v1/webhooks",
        &[],
        &json!({"url": receiver.url("/hooks"), "channels": ["crash/**"]}),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");

    // (channel, offset) -> n of every publish answered 201.
    let acknowledged: Arc<Mutex<HashMap<(String, u64), u64>>> = Arc::default();
    let mut clients = Vec::new();
    for client in 0..4 {
        let acknowledged = Arc::clone(&acknowledged);
        clients.push(tokio::spawn(async move {
            let channel = format!("crash/{client}");
            for n in 0..100_000 {
                match try_publish(addr, &channel, n).await {
                    Some(offset) => {
                        acknowledged
                            .lock()
                            .unwrap()
                            .insert((channel.clone(), offset), n);
                    }
                    None => return,
                }
            }
        }));
    }
    within("some publishes to be acknowledged", async {
        while acknowledged.lock().unwrap().len() < 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for c in clients {
        let _ = within("publishers to stop", c).await;
    }
    let mut missing = acknowledged.lock().unwrap().clone();

    // Deliveries sent before the kill count too: the receiver outlives the server.
    let server = process::spawn(data.path(), &envs);
    let mut child = server.child;
    within("a delivery of every acknowledged publish", async {
        while !missing.is_empty() {
            let hit = receiver.next().await;
            let envelope: Value = serde_json::from_slice(&hit.body).unwrap();
            let key = (
                envelope["channel"].as_str().unwrap().to_owned(),
                envelope["offset"].as_u64().unwrap(),
            );
            if let Some(n) = missing.remove(&key) {
                assert_eq!(
                    envelope["data"]["n"], n,
                    "the delivery carries its own event"
                );
            }
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}
