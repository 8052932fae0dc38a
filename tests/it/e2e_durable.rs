//! Durable namespaces: the real binary, configured with a `durable` namespace, is killed
//! with SIGKILL and restarted on the same data directory (embedded) or the same Redis;
//! cursors into a durable channel resume over SSE, WebSocket and long-poll with every
//! acknowledged event, in order, no `reset`, and offsets continue. A memory channel of the
//! same run still gets its `reset` (embedded). Retention trims the store's log in the
//! background to the namespace's `history_size` and `history_ttl`.

use std::{net::SocketAddr, path::Path, time::Duration};

use serde_json::{Value, json};

use crate::{
    ENGINE,
    support::{
        embedded_only,
        http::{get_json, metric, post_json},
        process::{self, ServerProcess},
        redis::RedisServer,
        sse::SseClient,
        within,
        ws::WsClient,
    },
};

/// The namespaces these tests configure.
const NAMESPACES: &str = r#"
[[namespaces]]
name = "durable"
patterns = ["durable/**"]
durable = true

[[namespaces]]
name = "small"
patterns = ["small/**"]
durable = true
history_size = 5

[[namespaces]]
name = "brief"
patterns = ["brief/**"]
durable = true
history_ttl_secs = 1
"#;

/// The gateway binary with [`NAMESPACES`], on this target's engine: SQLite in `data_dir`,
/// or `redis` (which outlives the gateway).
struct Gateway {
    config: std::path::PathBuf,
    data: tempfile::TempDir,
    /// Held for the Redis engine: the gateway's restarts find the same Redis.
    _redis: Option<RedisServer>,
}

impl Gateway {
    /// `None` when this target runs on Redis and redis-server is missing (skipped).
    async fn new(test: &str) -> Option<Self> {
        let data = tempfile::tempdir().unwrap();
        let redis = if ENGINE.is_redis() {
            Some(RedisServer::start(test).await?)
        } else {
            None
        };
        let engine = redis
            .as_ref()
            .map_or_else(String::new, |r| format!("engine = {:?}\n", r.url()));
        let config = data.path().join("switchyard.toml");
        std::fs::write(&config, format!("{engine}{NAMESPACES}")).unwrap();
        Some(Self {
            config,
            data,
            _redis: redis,
        })
    }

    fn start(&self) -> ServerProcess {
        let config = self.config.to_str().unwrap();
        process::spawn(
            &self.data.path().join("data"),
            &[
                ("SWITCHYARD_CONFIG", config),
                ("SWITCHYARD_LIMITS__REQUESTS_PER_SEC_PER_IP", "0"),
                ("SWITCHYARD_LIMITS__MAX_CONNECTIONS_PER_IP", "0"),
            ],
        )
    }

    fn db(&self) -> std::path::PathBuf {
        self.data.path().join("data").join("switchyard.db")
    }
}

/// Kills the gateway with SIGKILL (no shutdown, no flush) and waits for it.
fn sigkill(mut server: ServerProcess) {
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
}

/// Publishes `{"n": n}` and requires the 201; returns (offset, cursor).
async fn publish(addr: SocketAddr, channel: &str, n: u64) -> (u64, String) {
    let (status, _, body) = post_json(
        addr,
        &format!("/v1/channels/{channel}/events"),
        &[],
        &json!({"type": "tick", "data": {"n": n}}),
    )
    .await;
    assert_eq!(status, 201, "publish {n} on {channel}: {body}");
    (
        body["offset"].as_u64().unwrap(),
        body["cursor"].as_str().unwrap().to_owned(),
    )
}

/// Publishes `1..=count`, each acknowledged with offset `n`; returns their cursors.
async fn publish_all(addr: SocketAddr, channel: &str, count: u64) -> Vec<String> {
    let mut cursors = Vec::new();
    for n in 1..=count {
        let (offset, cursor) = publish(addr, channel, n).await;
        assert_eq!(offset, n, "offsets are consecutive");
        cursors.push(cursor);
    }
    cursors
}

/// A page of the history API.
async fn history(addr: SocketAddr, channel: &str, after: u64) -> Value {
    let (status, body) = get_json(
        addr,
        &format!("/v1/channels/{channel}/events?after={after}&limit=1000"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn offsets(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

/// Reads the next SSE event, which must be the event at `offset` (not a `reset`).
async fn expect_sse(sse: &mut SseClient, offset: u64) {
    let (ev, data) = sse.next_json().await;
    assert_ne!(ev.event, "reset", "no reset: {data}");
    assert_eq!(data["offset"], offset, "{data}");
    assert_eq!(data["data"]["n"], offset, "its own payload");
}

/// Polls `check` until it holds, failing the test after `support::WAIT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Rows of `channel` in the store's durable log (embedded).
fn rows(db: &Path, channel: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM channel_events WHERE channel = ?1",
        [channel],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn acknowledged_durable_events_resume_after_sigkill_over_sse_websocket_and_longpoll() {
    let Some(gateway) = Gateway::new("durable resume").await else {
        return;
    };
    let (channel, plain) = ("durable/orders", "plain/orders");
    let server = gateway.start();
    let cursors = publish_all(server.addr, channel, 40).await;
    let plain_cursors = publish_all(server.addr, plain, 3).await;
    if !ENGINE.is_redis() {
        assert_eq!(
            metric(server.addr, "switchyard_durable_events_written_total", &[]).await,
            40.0,
            "only the durable namespace's events are written to its log"
        );
    }
    sigkill(server);

    let server = gateway.start();
    let addr = server.addr;
    // From the cursor of event 3: 4..=40, in order, no reset.
    let mut sse = SseClient::connect(addr, "", Some(&cursors[2])).await;
    for n in 4..=40 {
        expect_sse(&mut sse, n).await;
    }
    let mut ws = WsClient::connect(addr).await;
    ws.subscribe(1, channel, json!({"cursor": cursors[2]}))
        .await;
    for n in 4..=40 {
        let frame = ws.next_event().await;
        assert_eq!(
            (frame["offset"].as_u64(), &frame["data"]["n"]),
            (Some(n), &json!(n))
        );
    }
    let (status, poll) = within(
        "a poll",
        get_json(addr, &format!("/v1/poll?cursor={}&timeout=0", cursors[2])),
    )
    .await;
    assert_eq!(status, 200, "{poll}");
    assert_eq!(poll["reset"], false, "{poll}");
    assert_eq!(offsets(&poll), (4..=40).collect::<Vec<_>>());

    // Offsets continue from the stored last one, and the resumed consumers get it live.
    assert_eq!(publish(addr, channel, 41).await.0, 41);
    expect_sse(&mut sse, 41).await;
    assert_eq!(ws.next_event().await["offset"], 41);

    // A memory channel of the same run: on the embedded engine its history died with the
    // process, and its consumer is told; on Redis it lives in Redis like any channel.
    let mut plain_sse = SseClient::connect(addr, "", Some(&plain_cursors[0])).await;
    if ENGINE.is_redis() {
        let (ev, data) = plain_sse.next_json().await;
        assert_ne!(ev.event, "reset", "{data}");
        assert_eq!(data["offset"], 2);
    } else {
        let (ev, data) = plain_sse.next_json().await;
        assert_eq!(ev.event, "reset", "{data}");
        assert_eq!(data["channel"], plain);
        assert_eq!(
            publish(addr, plain, 1).await.0,
            1,
            "a memory channel starts over"
        );
    }
    drop((sse, plain_sse, ws));

    // A clean restart (SIGTERM) keeps them too.
    let (status, log) = server.stop();
    assert!(status.success(), "clean exit; log:\n{log}");
    let server = gateway.start();
    let mut sse = SseClient::connect(server.addr, "", Some(&cursors[2])).await;
    for n in 4..=41 {
        expect_sse(&mut sse, n).await;
    }
    assert_eq!(publish(server.addr, channel, 42).await.0, 42);
    expect_sse(&mut sse, 42).await;
    sigkill(server);
}

#[tokio::test]
async fn retention_trims_the_durable_log_to_its_namespace_bounds_in_the_background() {
    let Some(gateway) = Gateway::new("durable retention").await else {
        return;
    };
    let (small, brief) = ("small/a", "brief/a");
    let server = gateway.start();
    let addr = server.addr;
    let small_cursors = publish_all(addr, small, 20).await;
    publish_all(addr, brief, 3).await;

    // By count: the latest 5 stay; an older cursor is reset to the oldest kept.
    let page = history(addr, small, 0).await;
    assert_eq!(offsets(&page), [16, 17, 18, 19, 20]);
    assert_eq!(page["reset"], true);
    // By age (1 s): the brief channel empties.
    eventually("the brief channel's events to expire", || async {
        offsets(&history(addr, brief, 0).await).is_empty()
    })
    .await;
    if !embedded_only("the store's log is Redis's stream, trimmed by the append script") {
        let db = gateway.db();
        eventually("retention to delete beyond the bounds", || async {
            rows(&db, small) == 5 && rows(&db, brief) == 0
        })
        .await;
        assert_eq!(
            metric(addr, "switchyard_durable_events_deleted_total", &[]).await,
            18.0,
            "15 beyond history_size, 3 past history_ttl"
        );
    }
    sigkill(server);

    // After a restart memory and store agree: the same reset, and offsets go on even
    // where retention deleted every event.
    let server = gateway.start();
    let addr = server.addr;
    let page = history(addr, small, 0).await;
    assert_eq!(
        (offsets(&page), &page["reset"]),
        (vec![16, 17, 18, 19, 20], &json!(true))
    );
    let mut sse = SseClient::connect(addr, "", Some(&small_cursors[0])).await;
    let (ev, data) = sse.next_json().await;
    assert_eq!((ev.event.as_str(), &data["offset"]), ("reset", &json!(16)));
    let page = history(addr, brief, 0).await;
    assert!(offsets(&page).is_empty(), "{page}");
    assert_eq!(publish(addr, brief, 4).await.0, 4, "offsets continue");
    assert_eq!(publish(addr, small, 21).await.0, 21);
    sigkill(server);
}
