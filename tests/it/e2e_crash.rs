//! Crash safety: the real binary is killed with SIGKILL while jobs are being submitted;
//! after a restart on the same data directory, every job that got a 202 is there with its
//! payload intact.

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
