//! Presence: who is subscribed to channels of a `presence = true` namespace, over WebSocket,
//! SSE and NDJSON; the REST endpoints, the WebSocket `presence` op, `presence.join` /
//! `presence.leave` events, and the namespace's bounds.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use switchyard::config::NamespaceConfig;

use crate::support::{
    Config, TestServer, config,
    http::{LineReader, assert_error, open, post_json, request},
    sse::SseClient,
    start,
    tokens::{HS256_SECRET, epoch_in, hs256},
    within,
    ws::WsClient,
};

const ADMIN: &str = "admin-key-presence-0123456789";
const READER: &str = "reader-key-presence-0123456";

/// Channels under `room/` track presence (with joins and leaves pushed, at most
/// `max_members`); the rest do not.
fn presence_config(max_members: usize) -> Config {
    let mut cfg = config();
    cfg.auth.api_keys = vec![ADMIN.to_owned(), format!("{READER}:subscribe")];
    cfg.auth.jwt_secret = HS256_SECRET.to_owned();
    // Closed SSE / NDJSON connections are noticed at the next write: heartbeats write often.
    cfg.consumers.heartbeat_secs = 1;
    cfg.namespaces = vec![NamespaceConfig {
        presence: true,
        join_leave: true,
        max_members,
        max_info_bytes: 64,
        ..NamespaceConfig::new("room", &["room/**"])
    }];
    cfg
}

/// A consumer token of `user` for `room/**` (and `open/**`), with `info` when given.
fn token(user: &str, info: Option<Value>) -> String {
    let mut claims = json!({
        "sub": user,
        "channels": ["room/**", "open/**"],
        "exp": epoch_in(300),
    });
    if let Some(info) = info {
        claims["info"] = info;
    }
    hs256(HS256_SECRET, &claims)
}

async fn ws_member(server: &TestServer, channel: &str, token: &str) -> WsClient {
    let mut ws = WsClient::connect_to(server.addr, &format!("/v1/ws?token={token}"), &[])
        .await
        .expect("upgrade");
    ws.subscribe(1, channel, json!({})).await;
    ws
}

async fn ndjson_member(server: &TestServer, channel: &str, token: &str) -> LineReader {
    let res = open(
        server.addr,
        &format!("/v1/stream?channel={channel}&token={token}"),
        &[],
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut lines = LineReader::new(res.into_body());
    let head = within("subscribed", lines.next_json()).await.unwrap();
    assert_eq!(head["op"], "subscribed");
    lines
}

/// `GET` of a presence endpoint with `credential`: its status and JSON.
async fn get(server: &TestServer, path: &str, credential: &str) -> (http::StatusCode, Value) {
    let auth = format!("Bearer {credential}");
    let (status, _, body) = request(
        server.addr,
        "GET",
        path,
        &[("authorization", &auth)],
        vec![],
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap())
}

async fn members(server: &TestServer, channel: &str) -> Vec<Value> {
    let (status, body) = get(server, &format!("/v1/channels/{channel}/presence"), READER).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel"], channel);
    body["members"].as_array().unwrap().clone()
}

/// Waits until `channel` has exactly `n` members.
async fn wait_members(server: &TestServer, channel: &str, n: usize) -> Vec<Value> {
    within(&format!("{n} members on {channel}"), async {
        loop {
            let now = members(server, channel).await;
            if now.len() == n {
                return now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

fn users(members: &[Value]) -> Vec<Option<&str>> {
    let mut users: Vec<_> = members.iter().map(|m| m["user"].as_str()).collect();
    users.sort();
    users
}

#[tokio::test]
async fn presence_lists_exactly_the_connected_members_of_every_transport() {
    let server = start(presence_config(100)).await;
    let ch = "room/lobby";
    let ann = token("ann", Some(json!({"name": "Ann"})));
    let bob = token("bob", None);
    let ws = ws_member(&server, ch, &ann).await;
    let sse = SseClient::connect(server.addr, &format!("channel={ch}&token={bob}"), None).await;
    let ndjson = ndjson_member(&server, ch, &ann).await;
    // A long-poll is no member: it comes and goes.
    let (status, _, _) = request(
        server.addr,
        "GET",
        &format!("/v1/poll?channel={ch}&timeout=0&token={bob}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 200);

    let now = wait_members(&server, ch, 3).await;
    assert_eq!(users(&now), [Some("ann"), Some("ann"), Some("bob")]);
    let ids: BTreeSet<&str> = now
        .iter()
        .map(|m| m["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "one client id per connection: {now:?}");
    let infos: Vec<&Value> = now.iter().map(|m| &m["info"]).collect();
    assert_eq!(
        infos
            .iter()
            .filter(|i| **i == &json!({"name": "Ann"}))
            .count(),
        2,
        "ann's info on both her connections: {now:?}"
    );
    assert!(
        now.iter()
            .any(|m| m["user"] == "bob" && m.get("info").is_none())
    );

    // Stats count distinct users; a consumer token that allows the channel may read too.
    let (status, stats) = get(&server, &format!("/v1/channels/{ch}/presence/stats"), &bob).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats, json!({"channel": ch, "clients": 3, "users": 2}));

    // Each closed connection leaves.
    drop(sse);
    assert_eq!(
        users(&wait_members(&server, ch, 2).await),
        [Some("ann"), Some("ann")]
    );
    drop(ndjson);
    wait_members(&server, ch, 1).await;
    drop(ws);
    wait_members(&server, ch, 0).await;
    let (_, stats) = get(
        &server,
        &format!("/v1/channels/{ch}/presence/stats"),
        READER,
    )
    .await;
    assert_eq!(stats, json!({"channel": ch, "clients": 0, "users": 0}));

    let metric = |name: &'static str| async move {
        let (_, _, body) = request(
            server.addr,
            "GET",
            "/metrics",
            &[("authorization", &format!("Bearer {ADMIN}"))],
            vec![],
        )
        .await;
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(metric("switchyard_presence_members").await, 0.0);
    assert_eq!(metric("switchyard_presence_joins_total").await, 3.0);
    assert_eq!(metric("switchyard_presence_leaves_total").await, 3.0);
    server.shutdown().await;
}

#[tokio::test]
async fn joins_and_leaves_reach_ws_and_sse_subscribers_in_order_without_moving_cursors() {
    let server = start(presence_config(100)).await;
    let ch = "room/events";
    let mut watcher = ws_member(&server, ch, &token("watcher", None)).await;
    let own = watcher.next_event().await;
    assert_eq!(own["type"], "presence.join", "its own join first: {own}");
    let mut sse = SseClient::connect(
        server.addr,
        &format!("channel={ch}&token={}", token("sse-watcher", None)),
        None,
    )
    .await;
    let (ev, data) = sse.next_json().await;
    assert_eq!(
        (ev.event.as_str(), data["data"]["user"].as_str()),
        ("presence.join", Some("sse-watcher"))
    );
    // The parser keeps the last id it saw (none: the head is read apart), so an `id:` line
    // on a transient event would show here.
    assert!(ev.id.is_empty(), "a transient event has no id: line");
    let sse_join = watcher.next_event().await;
    assert_eq!(sse_join["data"]["user"], "sse-watcher");

    // Others come and go: join a, join b, a unsubscribes, b's connection closes.
    let mut a = ws_member(&server, ch, &token("a", Some(json!({"n": 1})))).await;
    let b = ws_member(&server, ch, &token("b", None)).await;
    a.send(json!({"op": "unsubscribe", "id": 2, "channel": ch}))
        .await;
    // b closes only once a has left: two connections' frames have no order of their own.
    within("a's unsubscribe", async {
        while a.next_json().await["op"] != "unsubscribed" {}
    })
    .await;
    drop(b);
    let expected = [
        ("presence.join", "a"),
        ("presence.join", "b"),
        ("presence.leave", "a"),
        ("presence.leave", "b"),
    ];
    for (kind, user) in expected {
        let frame = watcher.next_event().await;
        assert_eq!(
            (frame["type"].as_str(), frame["data"]["user"].as_str()),
            (Some(kind), Some(user)),
            "{frame}"
        );
        assert!(
            frame.get("offset").is_none() && frame.get("cursor").is_none(),
            "{frame}"
        );
        assert_eq!(frame["channel"], ch);
        let (ev, data) = sse.next_json().await;
        assert_eq!(
            (ev.event.as_str(), data["data"]["user"].as_str()),
            (kind, Some(user))
        );
        assert!(ev.id.is_empty(), "no id: line on {kind}");
        assert!(data.get("offset").is_none() && data.get("cursor").is_none());
    }

    // The history is untouched: the next event is offset 1, delivered after them.
    let (status, _, published) = post_json(
        server.addr,
        &format!("/v1/channels/{ch}/events"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
        &json!({"type": "chat", "data": "hi"}),
    )
    .await;
    assert_eq!(status, 201, "{published}");
    assert_eq!(published["offset"], 1);
    let event = watcher.next_event().await;
    assert_eq!(
        (event["type"].as_str(), event["offset"].as_u64()),
        (Some("chat"), Some(1))
    );
    let (ev, data) = sse.next_json().await;
    assert_eq!(
        (ev.event.as_str(), data["offset"].as_u64()),
        ("chat", Some(1))
    );
    assert_eq!(ev.id, data["cursor"].as_str().unwrap());
    drop(a);
    server.shutdown().await;
}

#[tokio::test]
async fn joins_and_leaves_stop_being_pushed_above_join_leave_max_members() {
    let mut cfg = presence_config(100);
    cfg.namespaces[0].join_leave_max_members = 2;
    let server = start(cfg).await;
    let ch = "room/crowd";
    let mut watcher = ws_member(&server, ch, &token("watcher", None)).await;
    assert_eq!(watcher.next_event().await["data"]["user"], "watcher");
    // The second member makes two: pushed. The third makes three: not pushed, nor its leave.
    let second = ws_member(&server, ch, &token("second", None)).await;
    let third = ws_member(&server, ch, &token("third", None)).await;
    wait_members(&server, ch, 3).await;
    drop(third);
    wait_members(&server, ch, 2).await;
    drop(second);
    // Joins and leaves of a channel arrive in order: had the third's been pushed, they
    // would come before the second's leave.
    for (kind, user) in [("presence.join", "second"), ("presence.leave", "second")] {
        let frame = watcher.next_event().await;
        assert_eq!(
            (frame["type"].as_str(), frame["data"]["user"].as_str()),
            (Some(kind), Some(user)),
            "{frame}"
        );
    }
}

#[tokio::test]
async fn max_members_refuses_the_next_member_and_info_is_bounded() {
    let server = start(presence_config(2)).await;
    let ch = "room/small";
    let _one = ws_member(&server, ch, &token("one", None)).await;
    let _two = SseClient::connect(
        server.addr,
        &format!("channel={ch}&token={}", token("two", None)),
        None,
    )
    .await;
    // Over WebSocket: an error frame, and the connection stays open.
    let mut three = WsClient::connect_to(
        server.addr,
        &format!("/v1/ws?token={}", token("three", None)),
        &[],
    )
    .await
    .unwrap();
    three
        .send(json!({"op": "subscribe", "id": 7, "channel": ch}))
        .await;
    let refused = three.next_json().await;
    assert_eq!(
        (refused["op"].as_str(), refused["id"].as_u64()),
        (Some("error"), Some(7)),
        "{refused}"
    );
    assert_eq!(refused["error"]["code"], "presence_full");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(2)"),
        "{refused}"
    );
    three.send(json!({"op": "ping", "id": 8})).await;
    assert_eq!(three.next_json().await["op"], "pong");
    // Over SSE: the request's answer.
    let (status, body) = get(
        &server,
        &format!("/v1/sse?channel={ch}&token={}", token("four", None)),
        "",
    )
    .await;
    assert_error(status, &body, 409, "presence_full");
    assert_eq!(wait_members(&server, ch, 2).await.len(), 2);

    // An `info` larger than the namespace's `max_info_bytes` (64) is refused before
    // anything is subscribed.
    let big = token("big", Some(json!({"bio": "x".repeat(100)})));
    let (status, body) = get(
        &server,
        &format!("/v1/stream?channel=room/other&token={big}"),
        "",
    )
    .await;
    assert_error(status, &body, 413, "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 64"),
        "{body}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_channel_without_presence_answers_presence_disabled() {
    let server = start(presence_config(10)).await;
    for path in [
        "/v1/channels/open/x/presence",
        "/v1/channels/open/x/presence/stats",
    ] {
        let (status, body) = get(&server, path, READER).await;
        assert_error(status, &body, 404, "presence_disabled");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("default"),
            "{body}"
        );
    }
    // A token that does not allow the channel is refused before that.
    let (status, body) = get(&server, "/v1/channels/secret/presence", &token("ann", None)).await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = get(&server, "/v1/channels/room/a/presence", "").await;
    assert_error(status, &body, 401, "unauthorized");
    // Subscribing to a channel without presence joins nothing and works as ever.
    let mut ws = ws_member(&server, "open/x", &token("ann", None)).await;
    ws.send(json!({"op": "presence", "id": 3, "channel": "open/x"}))
        .await;
    let reply = ws.next_json().await;
    assert_eq!(
        (reply["op"].as_str(), reply["error"]["code"].as_str()),
        (Some("error"), Some("presence_disabled")),
        "{reply}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_websocket_presence_op_lists_members_of_allowed_channels_only() {
    let server = start(presence_config(10)).await;
    let ch = "room/ws-op";
    let _member = SseClient::connect(
        server.addr,
        &format!("channel={ch}&token={}", token("bob", Some(json!(["b"])))),
        None,
    )
    .await;
    wait_members(&server, ch, 1).await;
    // Asking needs no subscription, only a token that allows the channel.
    let mut ws = WsClient::connect_to(
        server.addr,
        &format!("/v1/ws?token={}", token("ann", None)),
        &[],
    )
    .await
    .unwrap();
    ws.send(json!({"op": "presence", "id": 1, "channel": ch}))
        .await;
    let reply = ws.next_json().await;
    assert_eq!(
        (
            reply["op"].as_str(),
            reply["id"].as_u64(),
            reply["channel"].as_str()
        ),
        (Some("presence"), Some(1), Some(ch)),
        "{reply}"
    );
    let members = reply["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{reply}");
    assert_eq!(
        (members[0]["user"].as_str(), &members[0]["info"]),
        (Some("bob"), &json!(["b"]))
    );
    assert!(
        members[0]["client_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );

    ws.send(json!({"op": "presence", "id": 2, "channel": "secret/room"}))
        .await;
    let refused = ws.next_json().await;
    assert_eq!(
        (
            refused["op"].as_str(),
            refused["id"].as_u64(),
            refused["error"]["code"].as_str()
        ),
        (Some("error"), Some(2), Some("forbidden")),
        "{refused}"
    );
    server.shutdown().await;
}
