//! The publish and history API, the ops endpoints, and the API's errors.

use serde_json::{Value, json};

use crate::support::{
    channel, config,
    http::{assert_error, get_json, post_json, request},
    start,
};

#[tokio::test]
async fn publish_returns_201_with_offset_id_and_cursor() {
    let server = start(config()).await;
    let ch = channel("pub");
    let body = server.publish(&ch, "order.created", json!({"id": 1})).await;
    assert_eq!(body["channel"], ch.as_str());
    assert_eq!(body["offset"], 1);
    assert_eq!(body["id"], format!("{ch}:1"));
    assert!(body["cursor"].is_string());
    // Percent-encoded channel names address the same channel.
    let (status, _, body) = post_json(
        server.addr,
        "/v1/channels/test%2Fpub/events",
        &[],
        &json!({"data": null}),
    )
    .await;
    assert_eq!((status.as_u16(), body["offset"].as_u64()), (201, Some(2)));
    server.shutdown().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_first_result_and_refuses_a_different_body() {
    let server = start(config()).await;
    let path = format!("/v1/channels/{}/events", channel("idem"));
    let key = [("idempotency-key", "order-42")];
    let (s1, h1, first) = post_json(server.addr, &path, &key, &json!({"data": 1})).await;
    let (s2, h2, again) = post_json(server.addr, &path, &key, &json!({"data": 1})).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (201, 201));
    assert_eq!(first, again);
    assert!(h1.get("idempotency-replayed").is_none());
    assert_eq!(h2["idempotency-replayed"], "true");
    let (s3, _, conflict) = post_json(server.addr, &path, &key, &json!({"data": 2})).await;
    assert_error(s3, &conflict, 409, "conflict");
    let (_, history) = get_json(server.addr, &path).await;
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        1,
        "published once"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn history_pages_with_after_and_limit_and_flags_reset() {
    let mut cfg = config();
    cfg.history.size = 4;
    let server = start(cfg).await;
    let ch = channel("hist");
    server.publish_range(&ch, 1, 6).await;
    let path = format!("/v1/channels/{ch}/events");
    let (_, page) = get_json(server.addr, &format!("{path}?limit=3")).await;
    let offsets = |p: &Value| {
        p["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        (
            offsets(&page),
            page["next"].as_u64(),
            page["reset"].as_bool()
        ),
        (vec![3, 4, 5], Some(5), Some(false))
    );
    let (_, page) = get_json(server.addr, &format!("{path}?after=5")).await;
    assert_eq!((offsets(&page), page["next"].as_u64()), (vec![6], Some(6)));
    let (_, page) = get_json(server.addr, &format!("{path}?after=1")).await;
    assert_eq!(
        (offsets(&page), page["reset"].as_bool()),
        (vec![3, 4, 5, 6], Some(true))
    );
    for bad in ["?after=x", "?limit=0", "?limit=1001"] {
        let (status, body) = get_json(server.addr, &format!("{path}{bad}")).await;
        assert_error(status, &body, 400, "invalid_parameter");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bad_publishes_get_clear_errors() {
    let mut cfg = config();
    cfg.limits.max_event_bytes = 1024;
    let server = start(cfg).await;
    let addr = server.addr;
    let path = "/v1/channels/x/events";
    let json_ct = [("content-type", "application/json")];
    // (path, headers, body, status, code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            path,
            json_ct.to_vec(),
            b"{not json".to_vec(),
            400,
            "bad_json",
        ),
        (path, json_ct.to_vec(), b"".to_vec(), 400, "bad_json"),
        (
            path,
            json_ct.to_vec(),
            br#"{"type":"t"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            path,
            json_ct.to_vec(),
            br#"{"data":1,"extra":2}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            path,
            json_ct.to_vec(),
            br#"[1,2]"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            path,
            json_ct.to_vec(),
            br#"{"type":"has space","data":1}"#.to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            path,
            vec![("content-type", "text/plain")],
            br#"{"data":1}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            path,
            json_ct.to_vec(),
            format!(r#"{{"data":"{}"}}"#, "x".repeat(2000)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            path,
            vec![
                ("content-type", "application/json"),
                ("idempotency-key", ""),
            ],
            br#"{"data":1}"#.to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "/v1/channels/bad%20name/events",
            json_ct.to_vec(),
            br#"{"data":1}"#.to_vec(),
            400,
            "invalid_channel",
        ),
        ("/v1/nothing", vec![], vec![], 404, "not_found"),
    ];
    for (path, headers, body, status, code) in cases {
        let (s, h, b) = request(addr, "POST", path, &headers, body).await;
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert_error(s, &serde_json::from_slice(&b).unwrap(), status, code);
    }
    let (s, h, b) = request(addr, "DELETE", path, &[], vec![]).await;
    assert_error(
        s,
        &serde_json::from_slice(&b).unwrap(),
        405,
        "method_not_allowed",
    );
    // HEAD goes with every GET (RFC 9110).
    assert_eq!(h["allow"], "GET, HEAD, POST");
    let (s, h, b) = request(addr, "POST", "/v1/sse", &[], vec![]).await;
    assert_error(
        s,
        &serde_json::from_slice(&b).unwrap(),
        405,
        "method_not_allowed",
    );
    assert_eq!(h["allow"], "GET, HEAD");
    server.shutdown().await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() {
    let mut cfg = config();
    cfg.limits.max_event_bytes = 1024;
    let server = start(cfg).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let chunk = "x".repeat(800);
    let req = format!(
        "POST /v1/channels/x/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    raw.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = crate::support::within("a 413", raw.read(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = start(config()).await;
    assert_eq!(
        get_json(server.addr, "/healthz").await,
        (http::StatusCode::OK, json!({"status": "ok"}))
    );
    let (status, ready) = get_json(server.addr, "/readyz").await;
    assert_eq!(
        (status.as_u16(), ready["status"].as_str()),
        (200, Some("ready"))
    );
    server.publish(&channel("m"), "x", json!(1)).await;
    assert_eq!(
        server.metric("switchyard_events_published_total").await,
        1.0
    );
    // The memory hub holds the channel it published to; the Redis hub holds only channels
    // this node has subscribers for (the history is in Redis).
    let held = if crate::support::ENGINE.is_redis() {
        0.0
    } else {
        1.0
    };
    assert_eq!(server.metric("switchyard_channels").await, held);
    let (_, headers, _) = request(server.addr, "GET", "/metrics", &[], vec![]).await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    server.shutdown().await;
}

/// What is accepted is replayed byte for byte, so what every consumer's parser refuses is
/// refused at the door: nesting deeper than 64 levels and numbers no 64-bit float holds
/// (`1e400`), on publish, job submit and worker reports; what stays within the limits is
/// readable by serde_json (128 levels at most) wrapped in the gateway's answers.
#[tokio::test]
async fn json_too_deep_or_out_of_range_is_refused_everywhere_it_enters() {
    let server = start(config()).await;
    let addr = server.addr;
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let channel = channel("json-limits");
    let publish = format!("/v1/channels/{channel}/events");
    let ct = [("content-type", "application/json")];
    let refused = [
        format!(r#"{{"data": {}}}"#, nested(100_000)),
        format!(r#"{{"data": {}}}"#, nested(64)),
        r#"{"data": 1e400}"#.to_owned(),
        r#"{"data": {"n": [-1E309]}}"#.to_owned(),
        format!(r#"{{"data": {}}}"#, "9".repeat(400)),
    ];
    for body in &refused {
        let (s, _, b) = request(addr, "POST", &publish, &ct, body.clone().into_bytes()).await;
        let b: Value = serde_json::from_slice(&b).unwrap();
        assert_error(s, &b, 400, "bad_json");
        // The job payload is the whole body.
        let (s, _, b) = request(addr, "POST", "/v1/jobs", &ct, body.clone().into_bytes()).await;
        let b: Value = serde_json::from_slice(&b).unwrap();
        assert_error(s, &b, 400, "bad_json");
    }
    let (status, history) = get_json(addr, &format!("{publish}?after=0")).await;
    assert_eq!(status, 200);
    assert_eq!(history["events"], json!([]), "a refused publish was kept");

    // At the limit: published, and readable by serde_json in a history page (4 levels more).
    let deepest = format!(r#"{{"data": {}}}"#, nested(63));
    let (s, _, b) = request(addr, "POST", &publish, &ct, deepest.into_bytes()).await;
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&b));
    let (status, history) = get_json(addr, &format!("{publish}?after=0")).await;
    assert_eq!(status, 200);
    assert_eq!(history["events"].as_array().unwrap().len(), 1);

    // A worker's report is checked too.
    let (s, _, job) = post_json(addr, "/v1/jobs", &[], &json!({"q": 1})).await;
    assert_eq!(s, 202, "{job}");
    let (s, _, claimed) = post_json(addr, "/v1/jobs/claim", &[], &json!({"wait_ms": 5000})).await;
    assert_eq!(s, 200, "{claimed}");
    let lease = claimed["lease"].as_str().unwrap();
    let id = job["id"].as_str().unwrap();
    let body = format!(r#"{{"lease": "{lease}", "result": 1e400}}"#);
    let (s, _, b) = request(
        addr,
        "POST",
        &format!("/v1/jobs/{id}/complete"),
        &ct,
        body.into_bytes(),
    )
    .await;
    assert_error(s, &serde_json::from_slice(&b).unwrap(), 400, "bad_json");
    server.shutdown().await;
}
