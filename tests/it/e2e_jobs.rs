//! Jobs: submit → claim → progress → complete pushed to consumers, leases, attempts,
//! cancel, idempotency, bad input, `?wait`, and durability across a restart.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::support::{
    Config, TestServer, config,
    http::{assert_error, get_json, post_json, request},
    sse::SseClient,
    start, start_in, within,
    ws::WsClient,
};

async fn submit(server: &TestServer, payload: Value) -> Value {
    let (status, headers, body) = post_json(server.addr, "/v1/jobs", &[], &payload).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        headers["location"],
        format!("/v1/jobs/{}", body["id"].as_str().unwrap())
    );
    body
}

async fn claim(server: &TestServer, lease_ms: u64) -> Value {
    let (status, _, body) = post_json(
        server.addr,
        "/v1/jobs/claim",
        &[],
        &json!({"wait_ms": 5000, "lease_ms": lease_ms}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn report(server: &TestServer, id: &str, action: &str, body: Value) -> (u16, Value) {
    let (status, _, reply) =
        post_json(server.addr, &format!("/v1/jobs/{id}/{action}"), &[], &body).await;
    (status.as_u16(), reply)
}

async fn job(server: &TestServer, id: &str) -> Value {
    let (status, body) = get_json(server.addr, &format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn jobs_config() -> Config {
    let mut c = config();
    c.jobs.max_attempts = 2;
    c
}

#[tokio::test]
async fn the_whole_flow_is_pushed_to_consumers_in_order() {
    let server = start(jobs_config()).await;
    let accepted = submit(&server, json!({"query": "countries"})).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["channel"], format!("jobs/{id}"));

    let mut sse =
        SseClient::connect(server.addr, &format!("channel=jobs/{id}&after=0"), None).await;
    let mut ws = WsClient::connect(server.addr).await;
    ws.subscribe(1, &format!("jobs/{id}"), json!({"after": 0}))
        .await;

    let claimed = claim(&server, 30_000).await;
    assert_eq!(claimed["job"]["id"], id.as_str());
    assert_eq!(claimed["job"]["payload"], json!({"query": "countries"}));
    assert_eq!(claimed["job"]["status"], "running");
    let lease = claimed["lease"].as_str().unwrap();
    for country in ["Ireland", "France", "Spain", "Germany"] {
        let (status, _) = report(
            &server,
            &id,
            "progress",
            json!({"lease": lease, "data": {"country": country}}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, done) = report(
        &server,
        &id,
        "complete",
        json!({"lease": lease, "result": {"rows": 4}}),
    )
    .await;
    assert_eq!((status, done["status"].as_str()), (200, Some("succeeded")));

    let expected = [
        ("job.queued", json!({"status": "queued", "attempts": 0})),
        ("job.started", json!({"status": "running", "attempt": 1})),
        ("job.progress", json!({"country": "Ireland"})),
        ("job.progress", json!({"country": "France"})),
        ("job.progress", json!({"country": "Spain"})),
        ("job.progress", json!({"country": "Germany"})),
        (
            "job.completed",
            json!({"status": "succeeded", "result": {"rows": 4}}),
        ),
    ];
    for (offset, (event_type, data)) in expected.iter().enumerate() {
        let (ev, envelope) = sse.next_json().await;
        assert_eq!((ev.event.as_str(), &envelope["data"]), (*event_type, data));
        assert_eq!(envelope["offset"], offset as u64 + 1);
        let frame = ws.next_event().await;
        assert_eq!(
            (frame["type"].as_str(), &frame["data"]),
            (Some(*event_type), data)
        );
    }
    let final_state = job(&server, &id).await;
    assert_eq!(final_state["result"], json!({"rows": 4}));
    assert_eq!(final_state["attempts"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_lease_requeues_then_the_last_attempt_fails_the_job() {
    let server = start(jobs_config()).await;
    let id = submit(&server, json!(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = claim(&server, 150).await;
    let stale = first["lease"].as_str().unwrap().to_owned();
    // The lease runs out; the sweeper requeues the job and a worker gets it again.
    let second = claim(&server, 150).await;
    assert_eq!(second["job"]["id"], id.as_str());
    assert_eq!(second["job"]["attempts"], 2);
    let (status, body) = report(
        &server,
        &id,
        "complete",
        json!({"lease": stale, "result": 1}),
    )
    .await;
    assert_error(
        http::StatusCode::from_u16(status).unwrap(),
        &body,
        409,
        "conflict",
    );

    // The second (last) lease runs out too: the job fails for good.
    let (status, failed) = within("the job to fail", async {
        loop {
            let (status, body) = get_json(server.addr, &format!("/v1/jobs/{id}?wait=5")).await;
            if body["status"] != "running" {
                return (status, body);
            }
        }
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "lease_expired");
    let (_, history) = get_json(server.addr, &format!("/v1/channels/jobs%2F{id}/events")).await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "job.queued",
            "job.started",
            "job.queued",
            "job.started",
            "job.failed"
        ]
    );
    assert_eq!(history["events"][2]["data"]["reason"], "lease_expired");
    server.shutdown().await;
}

#[tokio::test]
async fn fail_with_retry_requeues_until_attempts_run_out() {
    let server = start(jobs_config()).await;
    let id = submit(&server, json!("work")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lease = claim(&server, 30_000).await["lease"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = report(
        &server,
        &id,
        "fail",
        json!({"lease": lease, "error": "flaky", "retry": true}),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("queued")));
    let lease = claim(&server, 30_000).await["lease"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = report(
        &server,
        &id,
        "fail",
        json!({"lease": lease, "error": {"why": "still flaky"}, "retry": true}),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("failed")));
    assert_eq!(body["error"], json!({"why": "still flaky"}));
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_ends_a_job_and_its_worker_lease() {
    let server = start(jobs_config()).await;
    let queued = submit(&server, json!(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, body) = request(
        server.addr,
        "DELETE",
        &format!("/v1/jobs/{queued}"),
        &[],
        vec![],
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("canceled"))
    );

    let running = submit(&server, json!(2)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lease = claim(&server, 30_000).await["lease"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = request(
        server.addr,
        "DELETE",
        &format!("/v1/jobs/{running}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = report(
        &server,
        &running,
        "progress",
        json!({"lease": lease, "data": 1}),
    )
    .await;
    assert_error(
        http::StatusCode::from_u16(status).unwrap(),
        &body,
        409,
        "conflict",
    );
    let (status, _, body) = request(
        server.addr,
        "DELETE",
        &format!("/v1/jobs/{running}"),
        &[],
        vec![],
    )
    .await;
    assert_error(
        status,
        &serde_json::from_slice(&body).unwrap(),
        409,
        "conflict",
    );
    let (status, _, body) = request(
        server.addr,
        "DELETE",
        &format!("/v1/jobs/{}", "0".repeat(36)),
        &[],
        vec![],
    )
    .await;
    assert_error(
        status,
        &serde_json::from_slice(&body).unwrap(),
        404,
        "not_found",
    );
    let (status, body) = get_json(server.addr, "/v1/jobs/not-an-id").await;
    assert_error(status, &body, 404, "not_found");
    // Nothing left to claim: both jobs ended.
    let (status, _, _) = request(
        server.addr,
        "POST",
        "/v1/jobs/claim",
        &[("content-type", "application/json")],
        br#"{"wait_ms":0}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 204);
    server.shutdown().await;
}

#[tokio::test]
async fn an_idempotent_resubmission_returns_the_first_job() {
    let server = start(jobs_config()).await;
    let key = [("idempotency-key", "checkout-7")];
    let (s1, h1, first) = post_json(server.addr, "/v1/jobs", &key, &json!({"cart": 7})).await;
    let (s2, h2, again) = post_json(server.addr, "/v1/jobs", &key, &json!({"cart": 7})).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (202, 202));
    assert_eq!(first["id"], again["id"]);
    assert!(h1.get("idempotency-replayed").is_none());
    assert_eq!(h2["idempotency-replayed"], "true");
    let (s3, _, conflict) = post_json(server.addr, "/v1/jobs", &key, &json!({"cart": 8})).await;
    assert_error(s3, &conflict, 409, "conflict");
    server.shutdown().await;
}

/// One keep-alive connection for several requests.
async fn connection(server: &TestServer) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let req = http::Request::post("/v1/jobs")
        .header("host", "x")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = within("a response", sender.send_request(req))
        .await
        .expect("the connection is still usable");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn bad_submits_get_clear_errors_on_a_connection_that_stays_usable() {
    let mut cfg = jobs_config();
    cfg.limits.max_job_bytes = 64 * 1024;
    cfg.jobs.max_inflight_bytes = 1024 * 1024;
    let server = start(cfg).await;
    let mut conn = connection(&server).await;
    let too_big = serde_json::to_vec(&json!({"pad": "x".repeat(100 * 1024)})).unwrap();
    let cases = [
        ("application/json", too_big, 413, "payload_too_large"),
        ("application/json", b"{\"a\":".to_vec(), 400, "bad_json"),
        ("application/json", Vec::new(), 400, "bad_json"),
        // Not UTF-8 (RFC 8259 requires it): workers could not decode the job.
        (
            "application/json",
            b"\"\xff\xfe\"".to_vec(),
            400,
            "bad_json",
        ),
        (
            "application/json",
            b"{\"a\":\"\xc3\x28\"}".to_vec(),
            400,
            "bad_json",
        ),
        (
            "application/json",
            b"{\"\xc3\x28\":1}".to_vec(),
            400,
            "bad_json",
        ),
        ("text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
    ];
    for (content_type, body, status, code) in cases {
        let (s, reply) = send(&mut conn, content_type, body).await;
        assert_error(http::StatusCode::from_u16(s).unwrap(), &reply, status, code);
    }
    // The same connection still takes a good submit, of any JSON value.
    for payload in [
        json!({"ok": true}),
        json!([1, 2]),
        json!("text"),
        json!(null),
    ] {
        let (status, reply) = send(
            &mut conn,
            "application/json",
            serde_json::to_vec(&payload).unwrap(),
        )
        .await;
        assert_eq!(status, 202, "{reply}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn wait_returns_on_a_status_change_or_after_the_timeout() {
    let server = start(jobs_config()).await;
    let id = submit(&server, json!(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let unchanged = job_wait(&server, &id, "1").await;
    assert_eq!(unchanged["status"], "queued");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for the wait"
    );

    let addr = server.addr;
    let path = format!("/v1/jobs/{id}?wait=30");
    let waiting = tokio::spawn(async move { get_json(addr, &path).await });
    server.wait_metric("switchyard_http_connections", 2.0).await;
    claim(&server, 30_000).await;
    let (status, changed) = within("the held wait", waiting).await.unwrap();
    assert_eq!(
        (status.as_u16(), changed["status"].as_str()),
        (200, Some("running"))
    );
    let (status, body) = get_json(server.addr, &format!("/v1/jobs/{id}?wait=61")).await;
    assert_error(status, &body, 400, "invalid_parameter");
    // A client that last saw `queued` is answered at once: it missed a change.
    let started = Instant::now();
    let caught_up = job_wait(&server, &id, "30&status=queued").await;
    assert_eq!(caught_up["status"], "running");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once"
    );
    let (status, body) = get_json(
        server.addr,
        &format!("/v1/jobs/{id}?wait=1&status=sleeping"),
    )
    .await;
    assert_error(status, &body, 400, "invalid_parameter");
    server.shutdown().await;
}

async fn job_wait(server: &TestServer, id: &str, wait: &str) -> Value {
    let (status, body) = get_json(server.addr, &format!("/v1/jobs/{id}?wait={wait}")).await;
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn a_claim_waits_for_a_job_to_arrive() {
    let server = start(jobs_config()).await;
    let addr = server.addr;
    let waiting = tokio::spawn(async move {
        post_json(addr, "/v1/jobs/claim", &[], &json!({"wait_ms": 30000})).await
    });
    server.wait_metric("switchyard_http_connections", 2.0).await;
    let id = submit(&server, json!("late")).await["id"].clone();
    let (status, _, claimed) = within("the held claim", waiting).await.unwrap();
    assert_eq!((status.as_u16(), &claimed["job"]["id"]), (200, &id));
    for (body, code) in [
        (json!({"wait_ms": 60001}), "invalid_parameter"),
        (json!({"lease_ms": 1}), "invalid_parameter"),
        (json!({"wait": 1}), "invalid_request"),
    ] {
        let (status, _, reply) = post_json(server.addr, "/v1/jobs/claim", &[], &body).await;
        assert_error(status, &reply, 400, code);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn jobs_and_their_events_survive_a_restart_with_valid_cursors() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = jobs_config();
    cfg.data_dir = data.path().to_owned();
    let server = start_in(cfg.clone()).await;
    let id = submit(&server, json!({"keep": "me"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lease = claim(&server, 30_000).await["lease"]
        .as_str()
        .unwrap()
        .to_owned();
    report(
        &server,
        &id,
        "progress",
        json!({"lease": lease, "data": "half"}),
    )
    .await;
    let mut sse =
        SseClient::connect(server.addr, &format!("channel=jobs/{id}&after=0"), None).await;
    let mut last = None;
    for _ in 0..3 {
        last = Some(sse.next_json().await.0.id);
    }
    drop(sse);
    server.shutdown().await;

    let server = start_in(cfg).await;
    assert_eq!(job(&server, &id).await["status"], "running");
    // History reads the job's log from the store, before anyone subscribes.
    let (_, history) = get_json(
        server.addr,
        &format!("/v1/channels/jobs%2F{id}/events?after=0"),
    )
    .await;
    assert_eq!(
        (
            history["events"].as_array().unwrap().len(),
            history["reset"].as_bool()
        ),
        (3, Some(false))
    );
    // A consumer resuming from the beginning gets every event; one resuming from its cursor
    // gets exactly what came after, with no reset.
    let mut from_start =
        SseClient::connect(server.addr, &format!("channel=jobs/{id}&after=0"), None).await;
    let mut resumed =
        SseClient::connect(server.addr, &format!("channel=jobs/{id}"), last.as_deref()).await;
    report(
        &server,
        &id,
        "complete",
        json!({"lease": lease, "result": "done"}),
    )
    .await;
    for expected in ["job.queued", "job.started", "job.progress", "job.completed"] {
        assert_eq!(from_start.next_json().await.0.event, expected);
    }
    let (ev, data) = resumed.next_json().await;
    assert_eq!(
        (ev.event.as_str(), data["offset"].as_u64()),
        ("job.completed", Some(4))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn finished_jobs_are_pruned_after_their_retention_and_others_stay() {
    let mut cfg = jobs_config();
    cfg.jobs.retention_secs = 1;
    let server = start(cfg).await;
    let done = submit(&server, json!("old")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lease = claim(&server, 30_000).await["lease"]
        .as_str()
        .unwrap()
        .to_owned();
    report(
        &server,
        &done,
        "complete",
        json!({"lease": lease, "result": 1}),
    )
    .await;
    let waiting = submit(&server, json!("still queued")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    within("the finished job to be pruned", async {
        loop {
            let (status, _) = get_json(server.addr, &format!("/v1/jobs/{done}")).await;
            if status == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        job(&server, &waiting).await["status"],
        "queued",
        "unfinished jobs are kept"
    );
    server.shutdown().await;
}

/// The claim's body is optional: no body at all means no options, but a body of only
/// whitespace is a body that is not JSON (schemathesis sent one space and got a job).
#[tokio::test]
async fn a_claim_body_is_json_or_nothing() {
    let server = start(jobs_config()).await;
    let addr = server.addr;
    let id = submit(&server, json!("blank"))
        .await
        .get("id")
        .cloned()
        .unwrap();
    let json_ct = [("content-type", "application/json")];
    for blank in [&b" "[..], b"\r\n", b"\t "] {
        let (status, _, body) =
            request(addr, "POST", "/v1/jobs/claim", &json_ct, blank.to_vec()).await;
        assert_error(
            status,
            &serde_json::from_slice(&body).unwrap(),
            400,
            "bad_json",
        );
    }
    assert_eq!(job(&server, id.as_str().unwrap()).await["status"], "queued");
    // No body, with or without a JSON content type: the defaults, and the job.
    let (status, _, body) = request(addr, "POST", "/v1/jobs/claim", &json_ct, vec![]).await;
    let claimed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status.as_u16(), &claimed["job"]["id"]), (200, &id));
    let (status, _, body) = request(addr, "POST", "/v1/jobs/claim", &[], vec![]).await;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    server.shutdown().await;
}
