//! Outbound webhooks against a real receiver: signed delivery, retries with a stable id,
//! 410, isolation from a dead endpoint, a URL change reaching waiting deliveries, restart
//! mid-retry, the SSRF guard, rotation, the delivery log and manual retry, and bad input to
//! the management API.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_protocol::webhook::{WebhookSecret, verify};

use crate::support::{
    Config, TestServer, config,
    http::{assert_error, get_json, post_json, request},
    receiver::{Mode, Receiver},
    start, start_in, within,
};

fn hooks_config() -> Config {
    let mut c = config();
    c.webhooks.allow_private_networks = true;
    c.webhooks.retry_schedule_secs = vec![0.2, 0.2, 0.2];
    c.webhooks.attempt_timeout_secs = 2.0;
    c
}

async fn register(server: &TestServer, body: Value) -> Value {
    let (status, _, endpoint) = post_json(server.addr, "/v1/webhooks", &[], &body).await;
    assert_eq!(status, 201, "{endpoint}");
    endpoint
}

fn verify_hit(hit: &crate::support::receiver::Hit, secret: &str) {
    let secret = WebhookSecret::parse(secret).unwrap();
    let now = hit.header("webhook-timestamp").parse::<i64>().unwrap();
    verify(
        &secret,
        hit.header("webhook-id"),
        hit.header("webhook-timestamp"),
        hit.header("webhook-signature"),
        &hit.body,
        now,
        300,
    )
    .expect("a valid Standard Webhooks signature");
}

async fn delivery_log(server: &TestServer, endpoint: &str) -> Vec<Value> {
    let (status, body) =
        get_json(server.addr, &format!("/v1/webhooks/{endpoint}/deliveries")).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

/// Waits until the endpoint's newest delivery reaches `status`.
async fn wait_status(server: &TestServer, endpoint: &str, status: &str) -> Value {
    within(&format!("a delivery to be {status}"), async {
        loop {
            if let Some(d) = delivery_log(server, endpoint)
                .await
                .first()
                .filter(|d| d["status"] == status)
            {
                return d.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn deliveries_are_signed_envelopes_for_matching_events_only() {
    let server = start(hooks_config()).await;
    let mut receiver = Receiver::start(Mode::Answer).await;
    let endpoint = register(
        &server,
        json!({"url": receiver.url("/hook"), "channels": ["orders/**"], "types": ["order.paid"]}),
    )
    .await;
    let secret = endpoint["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));

    server.publish("news", "order.paid", json!(0)).await;
    server.publish("orders/1", "order.created", json!(1)).await;
    let published = server
        .publish("orders/1", "order.paid", json!({"total": 1250}))
        .await;
    let hit = receiver.next().await;
    verify_hit(&hit, secret);
    assert_eq!(hit.header("content-type"), "application/json");
    assert!(hit.header("webhook-id").starts_with("msg_"));
    let envelope: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(envelope["channel"], "orders/1");
    assert_eq!(envelope["offset"], published["offset"]);
    assert_eq!(envelope["type"], "order.paid");
    assert_eq!(envelope["data"], json!({"total": 1250}));
    assert!(
        receiver
            .try_next(Duration::from_millis(300))
            .await
            .is_none(),
        "non-matching events are not sent"
    );

    let log = delivery_log(&server, endpoint["id"].as_str().unwrap()).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0]["status"].as_str(), log[0]["attempts"].as_u64()),
        (Some("succeeded"), Some(1))
    );
    assert_eq!(log[0]["attempt_log"][0]["status_code"], 200);
    // The dispatcher's work shows on /metrics: the delivery was read into its endpoint's lane.
    assert!(server.metric("switchyard_webhook_lane_refills_total").await >= 1.0);
    assert!(server.metric("switchyard_webhook_outbox_scans_total").await >= 1.0);
    server
        .metric("switchyard_webhook_missed_wakeups_total")
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn job_events_are_delivered_too() {
    let server = start(hooks_config()).await;
    let mut receiver = Receiver::start(Mode::Answer).await;
    let endpoint = register(
        &server,
        json!({"url": receiver.url("/jobs"), "channels": ["jobs/*"], "types": ["job.queued"]}),
    )
    .await;
    let (_, _, job) = post_json(server.addr, "/v1/jobs", &[], &json!({"q": 1})).await;
    let hit = receiver.next().await;
    verify_hit(&hit, endpoint["secret"].as_str().unwrap());
    let envelope: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(envelope["channel"], job["channel"]);
    assert_eq!(envelope["type"], "job.queued");
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_webhook_id_until_it_succeeds() {
    let server = start(hooks_config()).await;
    let mut receiver = Receiver::start(Mode::Answer).await;
    receiver.script(&[500, 302]);
    receiver.script_retry_after(429, "1");
    let endpoint = register(
        &server,
        json!({"url": receiver.url("/flaky"), "channels": ["c"]}),
    )
    .await;
    server.publish("c", "t", json!("x")).await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    let started = Instant::now();
    let fourth = receiver.next().await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was honoured"
    );
    for hit in [&second, &third, &fourth] {
        assert_eq!(hit.header("webhook-id"), first.header("webhook-id"));
        assert_eq!(hit.body, first.body);
        verify_hit(hit, endpoint["secret"].as_str().unwrap());
    }
    let done = wait_status(&server, endpoint["id"].as_str().unwrap(), "succeeded").await;
    let codes: Vec<u64> = done["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(
        codes,
        [500, 302, 429, 200],
        "3xx is a failure, not followed"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_last_failure_stays_visible_and_can_be_retried_by_hand() {
    let mut cfg = hooks_config();
    cfg.webhooks.retry_schedule_secs = vec![0.1];
    let server = start(cfg).await;
    let mut receiver = Receiver::start(Mode::Answer).await;
    receiver.script(&[500, 503]);
    let endpoint = register(
        &server,
        json!({"url": receiver.url("/"), "channels": ["c"]}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap();
    server.publish("c", "t", json!(1)).await;
    receiver.next().await;
    receiver.next().await;
    let failed = wait_status(&server, id, "failed").await;
    assert_eq!(failed["attempts"], 2);
    assert!(failed.get("next_attempt_at").is_none());

    let path = format!(
        "/v1/webhooks/{id}/deliveries/{}/retry",
        failed["id"].as_str().unwrap()
    );
    let (status, _, _) = request(server.addr, "POST", &path, &[], vec![]).await;
    assert_eq!(status, 202);
    assert_eq!(
        receiver.next().await.header("webhook-id"),
        failed["id"].as_str().unwrap()
    );
    wait_status(&server, id, "succeeded").await;
    let (status, _, body) = request(
        server.addr,
        "POST",
        &format!("/v1/webhooks/{id}/deliveries/msg_nope/retry"),
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
    server.shutdown().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let server = start(hooks_config()).await;
    let mut receiver = Receiver::start(Mode::Answer).await;
    receiver.script(&[410]);
    let endpoint = register(
        &server,
        json!({"url": receiver.url("/"), "channels": ["c"]}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap();
    server.publish("c", "t", json!(1)).await;
    receiver.next().await;
    wait_status(&server, id, "failed").await;
    let (_, ep) = get_json(server.addr, &format!("/v1/webhooks/{id}")).await;
    assert_eq!(ep["enabled"], false);
    assert!(ep["disabled_reason"].as_str().unwrap().contains("410"));
    assert!(
        ep.get("secret").is_none(),
        "the secret is only shown at creation and rotation"
    );
    // A disabled endpoint gets nothing more until it is enabled again.
    server.publish("c", "t", json!(2)).await;
    assert!(
        receiver
            .try_next(Duration::from_millis(400))
            .await
            .is_none()
    );
    let (status, _, ep) = crate::support::http::request(
        server.addr,
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        &[("content-type", "application/json")],
        br#"{"enabled":true}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&ep));
    server.shutdown().await;
}

#[tokio::test]
async fn a_dead_endpoint_does_not_delay_a_healthy_one() {
    let mut cfg = hooks_config();
    cfg.webhooks.attempt_timeout_secs = 30.0;
    cfg.webhooks.max_per_endpoint = 2;
    cfg.webhooks.max_concurrency = 8;
    let server = start(cfg).await;
    let mut dead = Receiver::start(Mode::Hang).await;
    let mut healthy = Receiver::start(Mode::Answer).await;
    register(&server, json!({"url": dead.url("/"), "channels": ["c"]})).await;
    // A backlog for the dead endpoint, older than anything the healthy one will get, and
    // larger than one dispatch pass reads (256): it must not fill the passes.
    for n in 0..300 {
        server.publish("c", "t", json!(n)).await;
    }
    register(&server, json!({"url": healthy.url("/"), "channels": ["c"]})).await;
    let started = Instant::now();
    for n in 0..20 {
        server.publish("c", "t", json!(n)).await;
    }
    for _ in 0..20 {
        healthy.next().await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "healthy deliveries were held up: {:?}",
        started.elapsed()
    );
    // The dead endpoint holds at most its own share of attempts.
    dead.next().await;
    dead.next().await;
    assert!(
        dead.try_next(Duration::from_millis(300)).await.is_none(),
        "at most max_per_endpoint in flight"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_new_url_applies_to_deliveries_already_waiting() {
    let mut cfg = hooks_config();
    cfg.webhooks.max_concurrency = 1;
    cfg.webhooks.max_per_endpoint = 1;
    let server = start(cfg).await;
    let mut dead = Receiver::start(Mode::Hang).await;
    let mut old = Receiver::start(Mode::Answer).await;
    let mut new = Receiver::start(Mode::Answer).await;
    register(&server, json!({"url": dead.url("/"), "channels": ["x"]})).await;
    let endpoint = register(&server, json!({"url": old.url("/"), "channels": ["y"]})).await;
    // The dead endpoint holds the only slot (until the 2 s attempt timeout), so these wait,
    // read from the outbox into the dispatcher's memory with the URL of the moment.
    server.publish("x", "t", json!(0)).await;
    dead.next().await;
    for n in 0..3 {
        server.publish("y", "t", json!(n)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, body) = request(
        server.addr,
        "PATCH",
        &format!("/v1/webhooks/{}", endpoint["id"].as_str().unwrap()),
        &[("content-type", "application/json")],
        json!({"url": new.url("/")}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for _ in 0..3 {
        new.next().await;
    }
    assert!(
        old.try_next(Duration::from_millis(300)).await.is_none(),
        "a delivery waiting before the change went to the old URL"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_restart_mid_retry_still_delivers() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = hooks_config();
    cfg.data_dir = data.path().to_owned();
    cfg.webhooks.retry_schedule_secs = vec![1.0, 1.0];
    let mut receiver = Receiver::start(Mode::Answer).await;
    receiver.script(&[503]);
    let server = start_in(cfg.clone()).await;
    register(
        &server,
        json!({"url": receiver.url("/"), "channels": ["c"]}),
    )
    .await;
    server.publish("c", "t", json!("survives")).await;
    let first = receiver.next().await;
    server.shutdown().await;

    let server = start_in(cfg).await;
    let again = receiver.next().await;
    assert_eq!(again.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(again.body, first.body);
    server.shutdown().await;
}

/// Deliveries a node had read into its queue but not started when it stopped are sent
/// promptly by the next run (on Redis: the stopping node hands back their leases instead of
/// leaving them for `redis.delivery_lease_secs`).
#[tokio::test]
async fn deliveries_queued_at_a_restart_are_sent_right_after_it() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = hooks_config();
    cfg.data_dir = data.path().to_owned();
    // One attempt at a time overall: a receiver that never answers holds it, so the other
    // endpoint's deliveries stay queued in the dispatcher.
    cfg.webhooks.max_concurrency = 1;
    let mut stuck = Receiver::start(Mode::Hang).await;
    let mut good = Receiver::start(Mode::Answer).await;
    let server = start_in(cfg.clone()).await;
    register(&server, json!({"url": stuck.url("/"), "channels": ["x"]})).await;
    let ep = register(&server, json!({"url": good.url("/"), "channels": ["y"]})).await;
    server.publish("x", "t", json!(0)).await;
    stuck.next().await;
    let refills = "switchyard_webhook_lane_refills_total";
    let before = server.metric(refills).await;
    for n in 1..=3 {
        server.publish("y", "t", json!(n)).await;
    }
    within("the dispatcher to read the queued deliveries", async {
        while server.metric(refills).await <= before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.shutdown().await;
    assert!(
        good.try_next(Duration::ZERO).await.is_none(),
        "nothing was sent before the restart"
    );

    cfg.webhooks.max_concurrency = 8;
    let server = start_in(cfg).await;
    let mut got: Vec<u64> = Vec::new();
    for _ in 0..3 {
        let body: Value = serde_json::from_slice(&good.next().await.body).unwrap();
        got.push(body["data"].as_u64().unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
    let log = delivery_log(&server, ep["id"].as_str().unwrap()).await;
    assert_eq!(log.len(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn the_ssrf_guard_refuses_internal_urls_unless_allowed() {
    let mut cfg = hooks_config();
    cfg.webhooks.allow_private_networks = false;
    let server = start(cfg).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/",
    ] {
        let (status, _, body) = post_json(
            server.addr,
            "/v1/webhooks",
            &[],
            &json!({"url": url, "channels": ["c"]}),
        )
        .await;
        assert_error(status, &body, 400, "invalid_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("non-public"),
            "{url}: {body}"
        );
    }
    server.shutdown().await;
    let server = start(hooks_config()).await;
    register(
        &server,
        json!({"url": "http://127.0.0.1:9/hook", "channels": ["c"]}),
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one() {
    let server = start(hooks_config()).await;
    let mut receiver = Receiver::start(Mode::Answer).await;
    let endpoint = register(
        &server,
        json!({"url": receiver.url("/"), "channels": ["c"]}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap();
    let old = endpoint["secret"].as_str().unwrap().to_owned();
    let (status, _, body) = request(
        server.addr,
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        &[("content-type", "application/json")],
        br#"{"rotate_secret":true}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let rotated: Value = serde_json::from_slice(&body).unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    server.publish("c", "t", json!(1)).await;
    let hit = receiver.next().await;
    assert_eq!(hit.header("webhook-signature").split(' ').count(), 2);
    verify_hit(&hit, &old);
    verify_hit(&hit, &new);
    server.shutdown().await;
}

#[tokio::test]
async fn management_input_is_checked() {
    let server = start(hooks_config()).await;
    let cases = [
        (json!({"channels": ["c"]}), "url` is required"),
        (
            json!({"url": "http://127.0.0.1:9/"}),
            "channels` is required",
        ),
        (
            json!({"url": "ftp://x/", "channels": ["c"]}),
            "http:// or https://",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "channels": []}),
            "1-100",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "channels": ["a/**/b"]}),
            "channels",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "channels": ["c"], "types": ["has space"]}),
            "types",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "channels": ["c"], "secret": "nope"}),
            "secret",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "channels": ["c"], "secret": "whsec_c2hvcnQ="}),
            "secret",
        ),
    ];
    for (body, needle) in cases {
        let (status, _, reply) = post_json(server.addr, "/v1/webhooks", &[], &body).await;
        assert_error(status, &reply, 400, "invalid_request");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {reply}"
        );
    }
    let (status, _, reply) = post_json(
        server.addr,
        "/v1/webhooks",
        &[],
        &json!({"url": "http://127.0.0.1:9/", "channels": ["c"], "colour": "red"}),
    )
    .await;
    assert_error(status, &reply, 400, "invalid_request");
    let (status, _, reply) = request(
        server.addr,
        "POST",
        "/v1/webhooks",
        &[("content-type", "application/json")],
        b"{oops".to_vec(),
    )
    .await;
    assert_error(
        status,
        &serde_json::from_slice(&reply).unwrap(),
        400,
        "bad_json",
    );
    for (method, path, code) in [
        ("GET", "/v1/webhooks/ep_missing", 404),
        ("DELETE", "/v1/webhooks/ep_missing", 404),
        ("GET", "/v1/webhooks/ep_missing/deliveries", 404),
        ("PUT", "/v1/webhooks", 405),
    ] {
        let (status, _, _) = request(server.addr, method, path, &[], vec![]).await;
        assert_eq!(status.as_u16(), code, "{method} {path}");
    }
    let created = register(
        &server,
        json!({"url": "http://127.0.0.1:9/", "channels": ["c"]}),
    )
    .await;
    let (_, list) = get_json(server.addr, "/v1/webhooks").await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    let (status, _, _) = request(
        server.addr,
        "DELETE",
        &format!("/v1/webhooks/{}", created["id"].as_str().unwrap()),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 204);
    server.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_failing_too_long_is_disabled() {
    let mut cfg = hooks_config();
    cfg.webhooks.retry_schedule_secs = vec![0.6, 0.6, 0.6, 0.6];
    cfg.webhooks.disable_after_secs = 1;
    let server = start(cfg).await;
    let mut receiver = Receiver::start(Mode::Answer).await;
    receiver.script(&[500, 500, 500, 500, 500]);
    let endpoint = register(
        &server,
        json!({"url": receiver.url("/"), "channels": ["c"]}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap();
    server.publish("c", "t", json!(1)).await;
    receiver.next().await;
    within("the endpoint to be disabled", async {
        loop {
            let (_, ep) = get_json(server.addr, &format!("/v1/webhooks/{id}")).await;
            if ep["enabled"] == false {
                assert!(
                    ep["disabled_reason"]
                        .as_str()
                        .unwrap()
                        .contains("failing for more than 1 s"),
                    "{ep}"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        server
            .metric("switchyard_webhook_attempts_total{result=\"success\"}")
            .await,
        0.0
    );
    assert!(
        server
            .metric("switchyard_webhook_attempts_total{result=\"failure\"}")
            .await
            >= 2.0
    );
    server.shutdown().await;
}

/// Starts the Python receiver that verifies with the official Standard Webhooks library.
/// `None` (with a loud note) when the library is not installed outside CI; CI installs it
/// (`.ci/run`), so there the test always runs.
fn standard_webhooks_receiver(secret: &str) -> Option<(std::process::Child, u16)> {
    use std::io::BufRead;
    let installed = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install standardwebhooks (pip install standardwebhooks)"
        );
        eprintln!(
            "SKIPPED: the Standard Webhooks interop test needs `pip install standardwebhooks`"
        );
        return None;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/standard_webhooks_receiver.py"
    );
    let mut child = std::process::Command::new("python3")
        .args([script, secret])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("ready ")
        .expect("the receiver reports its port")
        .parse()
        .unwrap();
    Some((child, port))
}

#[tokio::test]
async fn the_official_standard_webhooks_library_verifies_our_deliveries() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let Some((mut python, port)) = standard_webhooks_receiver(secret) else {
        return;
    };
    let server = start(hooks_config()).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let good = register(
        &server,
        json!({"url": url, "channels": ["c"], "secret": secret}),
    )
    .await;
    // Control: signed with another secret, the library must refuse it.
    let other = register(&server, json!({"url": url, "channels": ["c"]})).await;
    server
        .publish(
            "c",
            "interop",
            json!({"héllo": "wörld", "n": [1, 2.5, null]}),
        )
        .await;
    let accepted = wait_status(&server, good["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(accepted["attempt_log"][0]["status_code"], 204);
    let refused = within("the refusal", async {
        loop {
            let log = delivery_log(&server, other["id"].as_str().unwrap()).await;
            if let Some(code) = log
                .first()
                .and_then(|d| d["attempt_log"][0]["status_code"].as_u64())
            {
                return code;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        refused, 400,
        "the library rejects a signature made with another secret"
    );
    // After a rotation both signatures are sent; the library accepts the one it knows.
    let id = good["id"].as_str().unwrap();
    let (status, _, _) = request(
        server.addr,
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        &[("content-type", "application/json")],
        br#"{"rotate_secret":true}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    server.publish("c", "interop", json!(2)).await;
    within("the rotated delivery", async {
        loop {
            let log = delivery_log(&server, id).await;
            if log.len() == 2 && log[0]["status"] == "succeeded" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = python.kill();
    server.shutdown().await;
}

#[tokio::test]
async fn finished_deliveries_leave_the_log_after_their_retention() {
    let mut cfg = hooks_config();
    cfg.webhooks.delivery_retention_secs = 1;
    cfg.webhooks.retry_schedule_secs = vec![3600.0];
    let server = start(cfg).await;
    let mut receiver = Receiver::start(Mode::Answer).await;
    let endpoint = register(
        &server,
        json!({"url": receiver.url("/"), "channels": ["c"]}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap();
    server.publish("c", "t", json!(1)).await;
    receiver.next().await;
    wait_status(&server, id, "succeeded").await;
    // A pending delivery (its retry is an hour away) is not finished, so it stays.
    receiver.script(&[500]);
    server.publish("c", "t", json!(2)).await;
    receiver.next().await;
    within("the succeeded delivery to be pruned", async {
        loop {
            let log = delivery_log(&server, id).await;
            if log.len() == 1 {
                assert_eq!(log[0]["status"], "pending");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    server.shutdown().await;
}
