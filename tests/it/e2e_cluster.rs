//! Several gateway nodes sharing one redis-server (issue #7's "done when"): a consumer on
//! one node gets what the others publish, in order, over every transport; a job submitted on
//! one node is claimed through a second (waking its held claim) and followed on a third with
//! the job token; three dispatchers deliver every webhook; a SIGKILLed node loses nothing
//! (its consumers resume on another node, its in-flight delivery is re-sent after the lease);
//! a Redis restart is survived, empty (consumers get a reset) or persistent (they do not);
//! nodes reach a TLS-only Redis (`rediss://`, private CA, client certificates) and refuse
//! one whose certificate they cannot verify.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_protocol::webhook::{WebhookSecret, verify};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    Config, TestServer, channel, config,
    http::{LineReader, get_json, open, post_json, request},
    process::{self, ServerProcess},
    receiver::{Hit, Mode, Receiver},
    redis::RedisServer,
    sse::SseClient,
    start, within,
    ws::WsClient,
};

// ---------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------

/// A node's configuration: Redis engine, receivers on loopback, quick retries, and a short
/// Redis timeout so an outage shows quickly.
fn node_config(redis: &RedisServer) -> Config {
    let mut c = config();
    c.engine = redis.url();
    c.webhooks.allow_private_networks = true;
    c.webhooks.retry_schedule_secs = vec![0.2, 0.2, 0.2];
    c.webhooks.attempt_timeout_secs = 2.0;
    c.redis.op_timeout_ms = 500;
    c
}

/// `n` in-process nodes on `redis`, each with its own data directory.
async fn nodes(redis: &RedisServer, n: usize, tweak: impl Fn(&mut Config)) -> Vec<TestServer> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut c = node_config(redis);
        tweak(&mut c);
        out.push(start(c).await);
    }
    out
}

async fn shutdown(nodes: Vec<TestServer>) {
    futures_util::future::join_all(nodes.into_iter().map(TestServer::shutdown)).await;
}

/// The server binary as a node: SIGKILLed when dropped, its log printed if the test failed.
struct Node {
    process: ServerProcess,
    _data: tempfile::TempDir,
}

impl Node {
    /// Starts the binary on `redis` (with `extra` environment) in a fresh data directory.
    async fn spawn(redis: &RedisServer, extra: &[(&'static str, &'static str)]) -> Self {
        let url = redis.url();
        let extra = extra.to_vec();
        tokio::task::spawn_blocking(move || {
            let data = tempfile::tempdir().unwrap();
            let mut envs = vec![
                ("SWITCHYARD_ENGINE", url.as_str()),
                ("SWITCHYARD_LIMITS__REQUESTS_PER_SEC_PER_IP", "0"),
                ("SWITCHYARD_LIMITS__MAX_CONNECTIONS_PER_IP", "0"),
                ("SWITCHYARD_WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
                ("SWITCHYARD_REDIS__OP_TIMEOUT_MS", "500"),
            ];
            envs.extend(extra.iter().copied());
            Self {
                process: process::spawn(data.path(), &envs),
                _data: data,
            }
        })
        .await
        .unwrap()
    }

    fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    /// SIGKILL: no goodbye to clients, no lease given back.
    fn kill(&mut self) {
        self.process.child.kill().expect("SIGKILL");
        self.process.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- log of node {} ---\n{}",
                self.process.addr,
                self.process.log.lock().unwrap()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Retries `attempt` every 50 ms until it gives a value, within the test timeout.
async fn until<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(v) = attempt().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Publishes `{"n": n}` as a `tick` on `addr`; returns the 201 body.
async fn publish_at(addr: SocketAddr, ch: &str, n: u64) -> Value {
    let (status, body) = try_publish(addr, ch, json!({ "n": n }), None).await;
    assert_eq!(status, 201, "publish of {n} on {addr}: {body}");
    body
}

/// Publishes `{"n": n}` on `addr` and checks that it got offset `n`; returns its cursor.
async fn publish_n(addr: SocketAddr, ch: &str, n: u64) -> String {
    let body = publish_at(addr, ch, n).await;
    assert_eq!(body["offset"], n, "offsets are consecutive across nodes");
    body["cursor"].as_str().unwrap().to_owned()
}

async fn try_publish(
    addr: SocketAddr,
    ch: &str,
    data: Value,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = idempotency_key
        .map(|k| vec![("idempotency-key", k)])
        .unwrap_or_default();
    let (status, _, body) = post_json(
        addr,
        &format!("/v1/channels/{ch}/events"),
        &headers,
        &json!({"type": "tick", "data": data}),
    )
    .await;
    (status.as_u16(), body)
}

async fn poll(addr: SocketAddr, query: &str) -> Value {
    let (status, body) = within("a poll", get_json(addr, &format!("/v1/poll?{query}"))).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `/readyz`: status and body.
async fn readyz(addr: SocketAddr) -> (u16, Value) {
    let (status, _, body) = request(addr, "GET", "/readyz", &[], Vec::new()).await;
    (
        status.as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// One sample of `/metrics` on `addr`, with the given headers (an admin key when keyed).
async fn metric(addr: SocketAddr, series: &str, headers: &[(&str, &str)]) -> f64 {
    crate::support::http::metric(addr, series, headers).await
}

/// Checks one envelope of `tick` number `n` on `ch`.
fn assert_tick(envelope: &Value, ch: &str, n: u64, via: &str) {
    assert_eq!(envelope["offset"], n, "{via}: {envelope}");
    assert_eq!(envelope["id"], format!("{ch}:{n}"), "{via}: {envelope}");
    assert_eq!(envelope["channel"], ch, "{via}: {envelope}");
    assert_eq!(envelope["type"], "tick", "{via}: {envelope}");
    assert_eq!(envelope["data"], json!({ "n": n }), "{via}: {envelope}");
}

/// Waits until the server ends a WebSocket (its node died): no frame may come first.
async fn assert_ws_ends(ws: &mut WsClient) {
    within("the websocket of the killed node to end", async {
        loop {
            match ws.ws.next().await {
                Some(Ok(Message::Text(t))) => panic!("a frame from a killed node: {t}"),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 1. Fan-out across nodes, on every transport
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Transport {
    WebSocket,
    Sse,
    Ndjson,
    LongPoll,
}

/// A consumer of one channel on one node, on one transport, yielding envelopes.
enum Consumer {
    Ws(Box<WsClient>),
    Sse(SseClient),
    Ndjson(LineReader),
    Poll {
        addr: SocketAddr,
        cursor: String,
        buffered: VecDeque<Value>,
    },
}

impl Consumer {
    /// Subscribes to `ch` on `addr` from now; live once this returns.
    async fn open(transport: Transport, addr: SocketAddr, ch: &str) -> Self {
        match transport {
            Transport::WebSocket => {
                let mut ws = WsClient::connect(addr).await;
                let reply = ws.subscribe(1, ch, json!({})).await;
                assert_eq!(reply["offset"], 0, "a new channel: {reply}");
                Self::Ws(Box::new(ws))
            }
            Transport::Sse => {
                Self::Sse(SseClient::connect(addr, &format!("channel={ch}"), None).await)
            }
            Transport::Ndjson => {
                let res = open(addr, &format!("/v1/stream?channel={ch}"), &[]).await;
                assert_eq!(res.status(), 200);
                let mut lines = LineReader::new(res.into_body());
                let head = within("the subscribed line", lines.next_json())
                    .await
                    .expect("a subscribed line");
                assert_eq!(head["op"], "subscribed", "{head}");
                Self::Ndjson(lines)
            }
            Transport::LongPoll => {
                let now = poll(addr, &format!("channel={ch}&timeout=0")).await;
                assert_eq!(now["events"], json!([]), "{now}");
                Self::Poll {
                    addr,
                    cursor: now["cursor"].as_str().unwrap().to_owned(),
                    buffered: VecDeque::new(),
                }
            }
        }
    }

    /// The next envelope.
    async fn next(&mut self) -> Value {
        match self {
            Self::Ws(ws) => {
                let mut frame = ws.next_event().await;
                frame.as_object_mut().unwrap().remove("op");
                frame
            }
            Self::Sse(sse) => {
                let (event, envelope) = sse.next_json().await;
                assert_eq!(event.id, envelope["cursor"].as_str().unwrap());
                assert_eq!(event.event, envelope["type"].as_str().unwrap());
                envelope
            }
            Self::Ndjson(lines) => {
                let line = within("an NDJSON line", lines.next_json())
                    .await
                    .expect("the stream ended");
                assert!(line.get("op").is_none(), "not an event line: {line}");
                line
            }
            Self::Poll {
                addr,
                cursor,
                buffered,
            } => {
                if buffered.is_empty() {
                    let body = poll(*addr, &format!("cursor={cursor}&timeout=8")).await;
                    Self::take_poll(cursor, buffered, &body);
                }
                buffered.pop_front().unwrap()
            }
        }
    }

    fn take_poll(cursor: &mut String, buffered: &mut VecDeque<Value>, body: &Value) {
        assert_eq!(body["reset"], false, "{body}");
        let events = body["events"].as_array().unwrap();
        assert!(
            !events.is_empty(),
            "a held poll answered empty although events were published on other nodes"
        );
        buffered.extend(events.iter().cloned());
        *cursor = body["cursor"].as_str().unwrap().to_owned();
    }
}

/// Publishes 1..=20 alternately on `b` and `c`; returns their cursors.
fn publish_alternately(
    b: SocketAddr,
    c: SocketAddr,
    ch: String,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut cursors = Vec::new();
        for n in 1..=20 {
            let node = if n % 2 == 1 { b } else { c };
            cursors.push(publish_n(node, &ch, n).await);
        }
        cursors
    })
}

/// A consumer on node A gets events published on B and C (alternately, while it is
/// reading), in order, with the cursors the publishing nodes returned, and nothing twice.
async fn consumer_on_a_gets_what_b_and_c_publish(transport: Transport) {
    let test = format!("cluster fan-out over {transport:?}");
    let Some(redis) = RedisServer::start(&test).await else {
        return;
    };
    let nodes = nodes(&redis, 3, |_| {}).await;
    let (a, b, c) = (nodes[0].addr, nodes[1].addr, nodes[2].addr);
    let ch = channel(&format!("cluster/fanout/{transport:?}"));
    let mut consumer = Consumer::open(transport, a, &ch).await;

    let publisher = if let Consumer::Poll {
        cursor, buffered, ..
    } = &mut consumer
    {
        // The first poll is held on A before anything is published: only a publish on
        // another node can answer it before its 8 s run out.
        let query = format!("cursor={cursor}&timeout=8");
        let held = tokio::spawn(async move { poll(a, &query).await });
        nodes[0]
            .wait_metric("switchyard_connections{transport=\"longpoll\"}", 1.0)
            .await;
        let publisher = publish_alternately(b, c, ch.clone());
        let started = Instant::now();
        let body = within("the held poll", held).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the held poll on A was answered after {:?}: not woken by B's publish",
            started.elapsed()
        );
        Consumer::take_poll(cursor, buffered, &body);
        publisher
    } else {
        publish_alternately(b, c, ch.clone())
    };

    let mut received = Vec::new();
    for n in 1..=20 {
        let envelope = consumer.next().await;
        assert_tick(&envelope, &ch, n, &format!("{transport:?} on A"));
        received.push(envelope);
    }
    let cursors = within("the publisher", publisher).await.unwrap();
    for (envelope, cursor) in received.iter().zip(&cursors) {
        assert_eq!(
            envelope["cursor"],
            cursor.as_str(),
            "A delivers the cursor the publishing node returned"
        );
    }
    // Nothing was delivered twice: the next event is the next publish.
    publish_n(c, &ch, 21).await;
    assert_tick(
        &consumer.next().await,
        &ch,
        21,
        &format!("{transport:?} on A"),
    );
    drop(consumer);
    shutdown(nodes).await;
}

#[tokio::test]
async fn websocket_on_one_node_gets_events_published_on_the_others_in_order() {
    consumer_on_a_gets_what_b_and_c_publish(Transport::WebSocket).await;
}

#[tokio::test]
async fn sse_on_one_node_gets_events_published_on_the_others_in_order() {
    consumer_on_a_gets_what_b_and_c_publish(Transport::Sse).await;
}

#[tokio::test]
async fn ndjson_on_one_node_gets_events_published_on_the_others_in_order() {
    consumer_on_a_gets_what_b_and_c_publish(Transport::Ndjson).await;
}

#[tokio::test]
async fn long_poll_on_one_node_is_woken_by_publishes_on_the_others() {
    consumer_on_a_gets_what_b_and_c_publish(Transport::LongPoll).await;
}

#[tokio::test]
async fn clusters_on_two_databases_of_one_redis_do_not_hear_each_other() {
    let Some(redis) = RedisServer::start("cluster databases").await else {
        return;
    };
    let mut a = node_config(&redis);
    let mut other = node_config(&redis);
    (a.engine, other.engine) = (redis.url_db(0), redis.url_db(1));
    let nodes = vec![start(a).await, start(other).await];
    let (a, other) = (nodes[0].addr, nodes[1].addr);
    let ch = channel("cluster/same-name");
    let mut ws = WsClient::connect(a).await;
    ws.subscribe(1, &ch, json!({})).await;
    // The same channel name in the other database: its own offsets, nothing reaches A.
    for n in 1..=3 {
        publish_n(other, &ch, n).await;
    }
    publish_at(a, &ch, 100).await;
    let frame = ws.next_event().await;
    assert_eq!(
        (frame["offset"].as_u64(), &frame["data"]),
        (Some(1), &json!({"n": 100})),
        "A's subscriber gets A's event first, and only it: {frame}"
    );
    drop(ws);
    shutdown(nodes).await;
}

// ---------------------------------------------------------------------------------------
// 2. Jobs across nodes
// ---------------------------------------------------------------------------------------

const KEY: &str = "cluster-admin-key-0123456789";

#[tokio::test]
async fn a_job_submitted_on_one_node_wakes_a_claim_on_another_and_is_followed_on_a_third() {
    let Some(redis) = RedisServer::start("cluster jobs").await else {
        return;
    };
    // With API keys (the same on every node), so the job token is really checked.
    let nodes = nodes(&redis, 3, |c| c.auth.api_keys = vec![KEY.to_owned()]).await;
    let (a, b, c) = (nodes[0].addr, nodes[1].addr, nodes[2].addr);
    let auth = format!("Bearer {KEY}");
    let admin = [("authorization", auth.as_str())];

    // A worker on C waits for work before anything is submitted.
    let claim_auth = auth.clone();
    let claim = tokio::spawn(async move {
        let (status, _, body) = request(
            c,
            "POST",
            "/v1/jobs/claim",
            &[
                ("authorization", &claim_auth),
                ("content-type", "application/json"),
            ],
            br#"{"wait_ms": 8000, "lease_ms": 30000}"#.to_vec(),
        )
        .await;
        (status.as_u16(), body, Instant::now())
    });
    within("the claim to reach C", async {
        // The held claim and this /metrics request.
        while metric(c, "switchyard_http_connections", &admin).await < 2.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let (status, _, accepted) =
        post_json(a, "/v1/jobs", &admin, &json!({"query": "countries"})).await;
    assert_eq!(status, 202, "{accepted}");
    let submitted = Instant::now();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let token = accepted["token"].as_str().unwrap().to_owned();
    let (status, body, answered) = within("the held claim on C", claim).await.unwrap();
    let waited = answered.duration_since(submitted);
    assert!(
        status == 200 && waited < Duration::from_secs(2),
        "the claim held on C was answered {status} {waited:?} after the submit on A: not woken across nodes"
    );
    let claimed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(claimed["job"]["id"], id.as_str());
    assert_eq!(claimed["job"]["payload"], json!({"query": "countries"}));
    let lease = claimed["lease"].as_str().unwrap().to_owned();

    // The job token A issued works on B's transports (B has keys: no token, no entry).
    let ws_path = format!("/v1/ws?token={token}");
    let mut ws = WsClient::connect_to(b, &ws_path, &[])
        .await
        .expect("B accepts A's job token");
    ws.subscribe(1, &format!("jobs/{id}"), json!({"after": 0}))
        .await;
    let mut sse =
        SseClient::connect(b, &format!("channel=jobs/{id}&after=0&token={token}"), None).await;
    let res = open(b, &format!("/v1/sse?channel=jobs/{id}&after=0"), &[]).await;
    assert_eq!(res.status(), 401, "B needs a credential");
    let res = open(b, &format!("/v1/sse?channel=test/other&token={token}"), &[]).await;
    assert_eq!(res.status(), 403, "the job token reads its job only");

    // The worker reports through C.
    for (action, body) in [
        (
            "progress",
            json!({"lease": lease, "data": {"country": "Ireland"}}),
        ),
        (
            "progress",
            json!({"lease": lease, "data": {"country": "France"}}),
        ),
        ("complete", json!({"lease": lease, "result": {"rows": 2}})),
    ] {
        let (status, _, reply) =
            post_json(c, &format!("/v1/jobs/{id}/{action}"), &admin, &body).await;
        assert_eq!(status, 200, "{action} on C: {reply}");
    }

    let expected = [
        ("job.queued", json!({"status": "queued", "attempts": 0})),
        ("job.started", json!({"status": "running", "attempt": 1})),
        ("job.progress", json!({"country": "Ireland"})),
        ("job.progress", json!({"country": "France"})),
        (
            "job.completed",
            json!({"status": "succeeded", "result": {"rows": 2}}),
        ),
    ];
    for (i, (event_type, data)) in expected.iter().enumerate() {
        let frame = ws.next_event().await;
        assert_eq!(
            (
                frame["type"].as_str(),
                &frame["data"],
                frame["offset"].as_u64()
            ),
            (Some(*event_type), data, Some(i as u64 + 1)),
            "WebSocket on B: {frame}"
        );
        let (event, envelope) = sse.next_json().await;
        assert_eq!(
            (
                event.event.as_str(),
                &envelope["data"],
                envelope["offset"].as_u64()
            ),
            (*event_type, data, Some(i as u64 + 1)),
            "SSE on B: {envelope}"
        );
    }

    let (status, _, body) = request(b, "GET", &format!("/v1/jobs/{id}"), &admin, Vec::new()).await;
    assert_eq!(status, 200);
    let job: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (
            job["status"].as_str(),
            &job["result"],
            job["attempts"].as_u64()
        ),
        (Some("succeeded"), &json!({"rows": 2}), Some(1)),
        "{job}"
    );
    let (status, job) = get_json(b, &format!("/v1/jobs/{id}?token={token}")).await;
    assert_eq!(
        (status.as_u16(), job["status"].as_str()),
        (200, Some("succeeded"))
    );
    drop((ws, sse));
    shutdown(nodes).await;
}

// ---------------------------------------------------------------------------------------
// 3. Webhooks with three dispatchers
// ---------------------------------------------------------------------------------------

async fn register(addr: SocketAddr, body: Value) -> Value {
    let (status, _, endpoint) = post_json(addr, "/v1/webhooks", &[], &body).await;
    assert_eq!(status, 201, "{endpoint}");
    endpoint
}

fn verify_hit(hit: &Hit, secret: &str) {
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
    .expect("signed with the endpoint's secret");
}

async fn delivery_log(addr: SocketAddr, endpoint: &str) -> Vec<Value> {
    let (status, body) = get_json(
        addr,
        &format!("/v1/webhooks/{endpoint}/deliveries?limit=500"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

/// Deliveries received, deduplicated by `webhook-id`.
#[derive(Default)]
struct Received {
    /// webhook-id → the envelope it carried.
    by_id: HashMap<String, Value>,
    hits: usize,
}

impl Received {
    fn add(&mut self, hit: &Hit, secret: &str) {
        verify_hit(hit, secret);
        let envelope: Value = serde_json::from_slice(&hit.body).unwrap();
        self.hits += 1;
        if let Some(first) = self
            .by_id
            .insert(hit.header("webhook-id").to_owned(), envelope.clone())
        {
            assert_eq!(first, envelope, "one webhook-id, one event");
        }
    }

    fn duplicates(&self) -> usize {
        self.hits - self.by_id.len()
    }
}

#[tokio::test]
async fn three_dispatchers_deliver_every_event_published_on_any_node() {
    let Some(redis) = RedisServer::start("cluster webhooks").await else {
        return;
    };
    let nodes = nodes(&redis, 3, |_| {}).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut receiver = Receiver::start(Mode::Answer).await;
    let ch = channel("cluster/hooks");
    let endpoint = register(
        addrs[0],
        json!({"url": receiver.url("/hook"), "channels": [ch]}),
    )
    .await;
    let (endpoint_id, secret) = (
        endpoint["id"].as_str().unwrap().to_owned(),
        endpoint["secret"].as_str().unwrap().to_owned(),
    );

    // 60 events, 20 from each node at the same time.
    let publishers: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let ch = ch.clone();
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for k in 0..20 {
                    let body = publish_at(addr, &ch, (i * 100 + k) as u64).await;
                    offsets.push(body["offset"].as_u64().unwrap());
                }
                offsets
            })
        })
        .collect();
    let mut offsets = BTreeSet::new();
    for p in publishers {
        offsets.extend(within("a publisher", p).await.unwrap());
    }
    assert_eq!(
        offsets,
        (1..=60).collect(),
        "60 distinct, consecutive offsets"
    );

    let mut received = Received::default();
    within("a delivery of every event", async {
        while received.by_id.len() < 60 {
            received.add(&receiver.next().await, &secret);
        }
    })
    .await;
    let delivered: BTreeSet<u64> = received
        .by_id
        .values()
        .map(|e| {
            assert_eq!(e["channel"], ch.as_str());
            e["offset"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        delivered, offsets,
        "every event delivered once per webhook-id, none twice under two ids"
    );

    // The shared delivery log, read on another node: one delivery per event, all succeeded.
    let log = until("every delivery to be recorded as succeeded", || async {
        let log = delivery_log(addrs[2], &endpoint_id).await;
        (log.len() == 60 && log.iter().all(|d| d["status"] == "succeeded")).then_some(log)
    })
    .await;
    let logged: BTreeSet<&str> = log.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let ids: BTreeSet<&str> = received.by_id.keys().map(String::as_str).collect();
    assert_eq!(
        logged, ids,
        "the log lists the webhook-ids the receiver got"
    );
    while let Some(hit) = receiver.try_next(Duration::ZERO).await {
        received.add(&hit, &secret);
    }
    let mut per_node = Vec::new();
    for node in &nodes {
        per_node.push(
            node.metric("switchyard_webhook_attempts_total{result=\"success\"}")
                .await,
        );
    }
    println!(
        "3 dispatchers: 60 events, {} requests, {} duplicates; successful attempts per node {per_node:?}",
        received.hits,
        received.duplicates()
    );
    assert!(per_node.iter().sum::<f64>() >= 60.0);
    shutdown(nodes).await;
}

#[tokio::test]
async fn job_events_reach_an_endpoint_registered_on_another_node() {
    let Some(redis) = RedisServer::start("cluster job webhooks").await else {
        return;
    };
    let nodes = nodes(&redis, 3, |_| {}).await;
    let (a, b, c) = (nodes[0].addr, nodes[1].addr, nodes[2].addr);
    let mut receiver = Receiver::start(Mode::Answer).await;
    let endpoint = register(
        b,
        json!({"url": receiver.url("/jobs"), "channels": ["jobs/*"]}),
    )
    .await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();

    let (status, _, job) = post_json(c, "/v1/jobs", &[], &json!({"q": 1})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let (status, _, claimed) = post_json(a, "/v1/jobs/claim", &[], &json!({"wait_ms": 5000})).await;
    assert_eq!(
        (status.as_u16(), &claimed["job"]["id"]),
        (200, &job["id"]),
        "{claimed}"
    );
    let lease = claimed["lease"].as_str().unwrap();
    let (status, _, done) = post_json(
        a,
        &format!("/v1/jobs/{id}/complete"),
        &[],
        &json!({"lease": lease, "result": "ok"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");

    let mut received = Received::default();
    within("the job's three events as webhooks", async {
        while received.by_id.len() < 3 {
            received.add(&receiver.next().await, &secret);
        }
    })
    .await;
    let mut events: Vec<(u64, String)> = received
        .by_id
        .values()
        .map(|e| {
            assert_eq!(e["channel"], format!("jobs/{id}"));
            (
                e["offset"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        [(1, "job.queued"), (2, "job.started"), (3, "job.completed")]
            .map(|(o, t)| (o, t.to_owned()))
    );
    println!("job webhooks: {} duplicates", received.duplicates());
    shutdown(nodes).await;
}

// ---------------------------------------------------------------------------------------
// 4. A node killed with SIGKILL
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn consumers_of_a_killed_node_resume_on_another_with_nothing_lost_or_repeated() {
    let Some(redis) = RedisServer::start("cluster node killed").await else {
        return;
    };
    let (mut node_a, node_b, node_c) = tokio::join!(
        Node::spawn(&redis, &[]),
        Node::spawn(&redis, &[]),
        Node::spawn(&redis, &[])
    );
    let (a, b, c) = (node_a.addr(), node_b.addr(), node_c.addr());
    let ch = channel("cluster/killed");

    let mut ws = WsClient::connect(a).await;
    ws.subscribe(1, &ch, json!({})).await;
    let mut sse = SseClient::connect(a, &format!("channel={ch}"), None).await;
    for n in 1..=5 {
        publish_n(b, &ch, n).await;
    }
    let mut ws_cursor = String::new();
    let mut sse_last_id = String::new();
    for n in 1..=5 {
        let frame = ws.next_event().await;
        assert_tick(&frame, &ch, n, "WebSocket on A");
        ws_cursor = frame["cursor"].as_str().unwrap().to_owned();
        let (event, envelope) = sse.next_json().await;
        assert_tick(&envelope, &ch, n, "SSE on A");
        sse_last_id = event.id;
    }

    node_a.kill();
    assert_ws_ends(&mut ws).await;
    drop(sse);
    for n in 6..=10 {
        publish_n(b, &ch, n).await;
    }
    // They reconnect to C with what they last stored.
    let mut ws = WsClient::connect(c).await;
    let reply = ws.subscribe(1, &ch, json!({"cursor": ws_cursor})).await;
    assert_eq!(reply["offset"], 10, "{reply}");
    let mut sse = SseClient::connect(c, &format!("channel={ch}"), Some(&sse_last_id)).await;
    for n in 11..=15 {
        publish_n(b, &ch, n).await;
    }
    for n in 6..=15 {
        assert_tick(&ws.next_event().await, &ch, n, "WebSocket resumed on C");
        let (event, envelope) = sse.next_json().await;
        assert_tick(&envelope, &ch, n, "SSE resumed on C");
        assert_eq!(event.id, envelope["cursor"].as_str().unwrap());
    }
    // Nothing twice: the next event is the next publish.
    publish_n(c, &ch, 16).await;
    assert_tick(&ws.next_event().await, &ch, 16, "WebSocket resumed on C");
    assert_tick(&sse.next_json().await.1, &ch, 16, "SSE resumed on C");
}

/// A presence namespace with joins and leaves pushed, and a 2 s node liveness key.
const PRESENCE_ENV: [(&str, &str); 2] = [
    (
        "SWITCHYARD_NAMESPACES",
        r#"[{name="rooms",patterns=["rooms/*"],presence=true,join_leave=true}]"#,
    ),
    ("SWITCHYARD_REDIS__PRESENCE_TTL_SECS", "2"),
];

/// The client ids of `GET /v1/channels/{ch}/presence` on `addr`, sorted.
async fn present(addr: SocketAddr, ch: &str) -> Vec<String> {
    let (status, body) = get_json(addr, &format!("/v1/channels/{ch}/presence")).await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The next presence event's type and client id (events of the channel are skipped).
async fn next_presence(ws: &mut WsClient) -> (String, String) {
    loop {
        let frame = ws.next_event().await;
        let kind = frame["type"].as_str().unwrap_or_default();
        if kind.starts_with("presence.") {
            assert!(frame.get("offset").is_none(), "transient: {frame}");
            return (
                kind.to_owned(),
                frame["data"]["client_id"].as_str().unwrap().to_owned(),
            );
        }
    }
}

#[tokio::test]
async fn presence_spans_nodes_and_a_killed_nodes_members_leave_within_the_bound() {
    let Some(redis) = RedisServer::start("cluster presence").await else {
        return;
    };
    let (mut node_a, node_b) = tokio::join!(
        Node::spawn(&redis, &PRESENCE_ENV),
        Node::spawn(&redis, &PRESENCE_ENV)
    );
    let (a, b) = (node_a.addr(), node_b.addr());
    let ch = "rooms/cluster";

    // A watcher on B, then members on A over WebSocket and SSE.
    let mut watcher = WsClient::connect(b).await;
    watcher.subscribe(1, ch, json!({})).await;
    let (kind, watcher_id) = next_presence(&mut watcher).await;
    assert_eq!(kind, "presence.join", "its own join comes first");
    let mut on_a = WsClient::connect(a).await;
    on_a.subscribe(1, ch, json!({})).await;
    let (kind, ws_member) = next_presence(&mut watcher).await;
    assert_eq!(kind, "presence.join");
    let sse = SseClient::connect(a, &format!("channel={ch}"), None).await;
    let (kind, sse_member) = next_presence(&mut watcher).await;
    assert_eq!(kind, "presence.join");
    let mut everyone = vec![watcher_id.clone(), ws_member.clone(), sse_member.clone()];
    everyone.sort();
    assert_eq!(
        present(a, ch).await,
        everyone,
        "node A lists B's member too"
    );
    assert_eq!(present(b, ch).await, everyone);

    // A dies without a goodbye: its members leave within presence_ttl_secs × 4/3 (the
    // key's life, then one renewal period of a surviving node).
    let killed = Instant::now();
    node_a.kill();
    let mut left = BTreeSet::new();
    while left.len() < 2 {
        let (kind, id) = next_presence(&mut watcher).await;
        assert_eq!(kind, "presence.leave", "{id}");
        left.insert(id);
    }
    let took = killed.elapsed();
    assert_eq!(left, BTreeSet::from([ws_member, sse_member]));
    assert!(
        took <= Duration::from_millis(2000 * 4 / 3 + 1000),
        "the killed node's members left after {took:?}"
    );
    assert_eq!(present(b, ch).await, vec![watcher_id]);
    drop(sse);
}

#[tokio::test]
async fn a_delivery_in_flight_on_a_killed_node_is_sent_again_by_another_after_its_lease() {
    let Some(redis) = RedisServer::start("cluster delivery lease").await else {
        return;
    };
    let lease = [("SWITCHYARD_REDIS__DELIVERY_LEASE_SECS", "2")];
    let mut receiver = Receiver::start(Mode::HangFirst).await;
    let mut node_a = Node::spawn(&redis, &lease).await;
    let ch = channel("cluster/in-flight");
    let endpoint = register(
        node_a.addr(),
        json!({"url": receiver.url("/slow"), "channels": [ch]}),
    )
    .await;
    let endpoint_id = endpoint["id"].as_str().unwrap();
    let secret = endpoint["secret"].as_str().unwrap();
    publish_n(node_a.addr(), &ch, 1).await;
    let first = receiver.next().await; // never answered
    verify_hit(&first, secret);

    node_a.kill();
    let killed = Instant::now();
    let node_b = Node::spawn(&redis, &lease).await;
    let again = receiver.next().await;
    println!("re-sent by B {:?} after A was killed", killed.elapsed());
    assert_eq!(again.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(again.body, first.body);
    verify_hit(&again, secret);
    let delivery = until("B to record the delivery as succeeded", || async {
        let log = delivery_log(node_b.addr(), endpoint_id).await;
        assert_eq!(log.len(), 1, "one delivery: {log:?}");
        (log[0]["status"] == "succeeded").then(|| log[0].clone())
    })
    .await;
    assert_eq!(delivery["id"], first.header("webhook-id"));
    let attempts = delivery["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.last().unwrap()["status_code"], 200, "{delivery}");
    assert!(
        receiver
            .try_next(Duration::from_millis(300))
            .await
            .is_none(),
        "sent once more, not again and again"
    );
}

// ---------------------------------------------------------------------------------------
// 4b. TLS to Redis
// ---------------------------------------------------------------------------------------

/// A node's configuration for `redis` (a TLS server): its CA, and a client certificate.
fn tls_node_config(redis: &RedisServer) -> Config {
    let mut c = node_config(redis);
    let file = |name: &str| redis.certs().path(name).display().to_string();
    c.redis.tls_ca_file = file("ca.crt");
    c.redis.tls_client_cert_file = file("client.crt");
    c.redis.tls_client_key_file = file("client.key");
    c
}

#[tokio::test]
async fn nodes_on_a_tls_redis_that_checks_client_certificates_share_channels_and_jobs() {
    let Some(redis) = RedisServer::start_tls("cluster over TLS", true).await else {
        return;
    };
    assert!(redis.url().starts_with("rediss://"));
    let nodes = vec![
        start(tls_node_config(&redis)).await,
        start(tls_node_config(&redis)).await,
    ];
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    let ch = channel("cluster/tls");
    let mut ws = WsClient::connect(a).await;
    ws.subscribe(1, &ch, json!({})).await;
    for n in 1..=3 {
        publish_n(b, &ch, n).await;
        assert_tick(&ws.next_event().await, &ch, n, "WebSocket on A");
    }
    let (status, _, job) = post_json(b, "/v1/jobs", &[], &json!({"q": "tls"})).await;
    assert_eq!(status, 202, "{job}");
    let (status, _, claimed) = post_json(a, "/v1/jobs/claim", &[], &json!({"wait_ms": 5000})).await;
    assert_eq!(
        (status.as_u16(), &claimed["job"]["id"]),
        (200, &job["id"]),
        "{claimed}"
    );
    assert_eq!(readyz(a).await.0, 200);
    drop(ws);
    shutdown(nodes).await;
}

/// Runs a node with `config` and returns why it would not start.
async fn start_error(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ran = within(
        "the node to give up",
        switchyard::run(listener, config, std::future::pending()),
    )
    .await;
    format!("{:#}", ran.expect_err("the node started"))
}

#[tokio::test]
async fn a_node_refuses_a_redis_certificate_it_cannot_verify_or_a_tls_redis_that_wants_its_certificate()
 {
    let Some(redis) = RedisServer::start_tls("TLS checks", true).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut c = tls_node_config(&redis);
    c.data_dir = data.path().to_owned();
    // Only the system's roots: the private CA's certificate is refused.
    let mut no_ca = c.clone();
    no_ca.redis.tls_ca_file = String::new();
    let err = start_error(no_ca).await;
    assert!(
        err.contains("engine rediss://") && err.contains("certificate"),
        "{err}"
    );
    // The server wants a client certificate: without one the node cannot connect.
    let mut no_client_cert = c.clone();
    no_client_cert.redis.tls_client_cert_file = String::new();
    no_client_cert.redis.tls_client_key_file = String::new();
    let err = start_error(no_client_cert).await;
    assert!(err.contains("engine rediss://"), "{err}");
    // Plain TCP to the TLS port gets nowhere either.
    let mut plain = node_config(&redis);
    plain.engine = redis.url().replacen("rediss://", "redis://", 1);
    plain.data_dir = data.path().to_owned();
    let err = start_error(plain).await;
    assert!(err.contains("engine redis://"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 5. Redis restarts
// ---------------------------------------------------------------------------------------

/// Kills Redis and waits until A is not ready and a publish on B is refused with 503.
async fn kill_redis_and_see_nodes_unavailable(
    redis: &mut RedisServer,
    a: SocketAddr,
    b: SocketAddr,
    ch: &str,
) {
    redis.kill();
    let body = until("/readyz on A to answer 503", || async {
        let (status, body) = readyz(a).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let body = until("a publish on B to answer 503", || async {
        let (status, body) = try_publish(b, ch, json!("lost?"), None).await;
        assert_ne!(status, 201, "published without Redis: {body}");
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
}

/// Restarts Redis, waits until A is ready, and publishes `data` on B once it is accepted
/// (with an idempotency key, so a retry cannot publish it twice); returns the 201 body.
async fn restart_redis_and_publish(
    redis: &mut RedisServer,
    a: SocketAddr,
    b: SocketAddr,
    ch: &str,
    data: Value,
) -> Value {
    redis.restart().await;
    until("/readyz on A to answer 200", || async {
        (readyz(a).await.0 == 200).then_some(())
    })
    .await;
    until("a publish on B to succeed", || async {
        let (status, body) = try_publish(b, ch, data.clone(), Some("after-restart")).await;
        assert!(status == 201 || status == 503, "{status}: {body}");
        (status == 201).then_some(body)
    })
    .await
}

#[tokio::test]
async fn an_empty_redis_restart_is_survived_and_consumers_are_told_to_reset() {
    let Some(mut redis) = RedisServer::start("cluster redis restart").await else {
        return;
    };
    let nodes = nodes(&redis, 2, |_| {}).await;
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    let ch = channel("cluster/redis-restart");
    let mut ws = WsClient::connect(a).await;
    ws.subscribe(1, &ch, json!({})).await;
    let mut cursor = String::new();
    for n in 1..=3 {
        publish_n(b, &ch, n).await;
        let frame = ws.next_event().await;
        assert_tick(&frame, &ch, n, "WebSocket on A");
        cursor = frame["cursor"].as_str().unwrap().to_owned();
    }

    assert_eq!(metric(a, "switchyard_redis_up", &[]).await, 1.0);
    assert_eq!(metric(b, "switchyard_redis_errors_total", &[]).await, 0.0);
    kill_redis_and_see_nodes_unavailable(&mut redis, a, b, &ch).await;
    // What an operator's alert sees: the connection down, the refused publish counted.
    until("A to report Redis down", || async {
        (metric(a, "switchyard_redis_up", &[]).await == 0.0).then_some(())
    })
    .await;
    assert!(metric(b, "switchyard_redis_errors_total", &[]).await >= 1.0);
    let first = restart_redis_and_publish(&mut redis, a, b, &ch, json!({"n": 1})).await;
    until("A to report Redis up again", || async {
        (metric(a, "switchyard_redis_up", &[]).await == 1.0).then_some(())
    })
    .await;
    assert!(metric(a, "switchyard_redis_reconnects_total", &[]).await >= 1.0);
    assert_eq!(
        first["offset"], 1,
        "the history was lost: a new one starts at 1"
    );
    assert_ne!(first["cursor"], json!(cursor));

    // A's subscriber followed the lost history: it is disconnected (never handed events of
    // the new history as if they followed offset 3), then resumes with a reset.
    let (close, frames) = ws.until_close().await;
    assert!(frames.is_empty(), "no frame before the close: {frames:?}");
    // Interrupted by the hub, not a slow consumer: "try again later", resume from the cursor.
    let close = close.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1013, "interrupted")
    );
    let mut ws = WsClient::connect(a).await;
    ws.subscribe(1, &ch, json!({"cursor": cursor})).await;
    let reset = ws.next_json().await;
    assert_eq!(
        (
            reset["op"].as_str(),
            reset["channel"].as_str(),
            reset["offset"].as_u64()
        ),
        (Some("reset"), Some(ch.as_str()), Some(1)),
        "{reset}"
    );
    assert_tick(
        &ws.next_event().await,
        &ch,
        1,
        "WebSocket on A after the reset",
    );
    for n in 2..=3 {
        publish_n(b, &ch, n).await;
        assert_tick(
            &ws.next_event().await,
            &ch,
            n,
            "WebSocket on A after the reset",
        );
    }
    assert_eq!(readyz(b).await.0, 200);
    drop(ws);
    shutdown(nodes).await;
}

/// Submits a job on `at`; returns its id and job token.
async fn submit_job(at: SocketAddr, admin: &[(&str, &str)]) -> (String, String) {
    let (status, _, accepted) = post_json(at, "/v1/jobs", admin, &json!({"q": 1})).await;
    assert_eq!(status, 202, "{accepted}");
    let field = |k: &str| accepted[k].as_str().unwrap().to_owned();
    (field("id"), field("token"))
}

/// The job token key the nodes share, if Redis holds one.
async fn key_in_redis(redis: &RedisServer) -> Option<String> {
    redis
        .query::<Option<String>>(redis::cmd("GET").arg("sy:job-token-key"))
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_node_started_after_an_empty_redis_restart_accepts_the_older_nodes_job_tokens() {
    let Some(mut redis) = RedisServer::start("cluster job token key").await else {
        return;
    };
    let with_keys = |c: &mut Config| c.auth.api_keys = vec![KEY.to_owned()];
    let mut nodes = nodes(&redis, 1, with_keys).await;
    let a = nodes[0].addr;
    let auth = format!("Bearer {KEY}");
    let admin = [("authorization", auth.as_str())];
    let before = until("A to share its job token key", || key_in_redis(&redis)).await;

    redis.restart().await;
    // A puts the key it signs with back into the empty Redis...
    let after = until("A to put its job token key back", || key_in_redis(&redis)).await;
    assert_eq!(after, before);
    // ...so a node started now signs with it too: tokens work on either node.
    nodes.extend(self::nodes(&redis, 1, with_keys).await);
    let b = nodes[1].addr;
    for (on, read_on) in [(a, b), (b, a)] {
        let (id, token) = submit_job(on, &admin).await;
        let (status, job) = get_json(read_on, &format!("/v1/jobs/{id}?token={token}")).await;
        assert_eq!(
            (status.as_u16(), job["id"].as_str()),
            (200, Some(id.as_str())),
            "a token issued on {on} read on {read_on}: {job}"
        );
    }
    shutdown(nodes).await;
}

#[tokio::test]
async fn a_persistent_redis_restart_is_survived_without_a_reset() {
    let Some(mut redis) = RedisServer::start_persistent("cluster persistent redis restart").await
    else {
        return;
    };
    let nodes = nodes(&redis, 2, |_| {}).await;
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    let ch = channel("cluster/redis-aof");
    let mut ws = WsClient::connect(a).await;
    ws.subscribe(1, &ch, json!({})).await;
    let mut cursors = Vec::new();
    for n in 1..=3 {
        cursors.push(publish_n(b, &ch, n).await);
        assert_tick(&ws.next_event().await, &ch, n, "WebSocket on A");
    }

    kill_redis_and_see_nodes_unavailable(&mut redis, a, b, &ch).await;
    let next = restart_redis_and_publish(&mut redis, a, b, &ch, json!({"n": 4})).await;
    assert_eq!(next["offset"], 4, "the history survived: offsets go on");
    // The same subscription carries on: no close, no reset, no gap.
    assert_tick(
        &ws.next_event().await,
        &ch,
        4,
        "WebSocket on A after the restart",
    );
    publish_n(b, &ch, 5).await;
    assert_tick(
        &ws.next_event().await,
        &ch,
        5,
        "WebSocket on A after the restart",
    );
    // An old cursor still resumes exactly, on either node.
    let mut late = WsClient::connect(b).await;
    late.subscribe(1, &ch, json!({"cursor": cursors[1]})).await;
    for n in 3..=5 {
        assert_tick(
            &late.next_event().await,
            &ch,
            n,
            "WebSocket on B from an old cursor",
        );
    }
    drop((ws, late));
    shutdown(nodes).await;
}
