//! Namespace rules on the real server: public channels (`anonymous_subscribe`) on every
//! transport, client publishes over WebSocket (`client_publish` and the token's `publish`
//! claim), and `max_subscribers`.

use serde_json::{Value, json};
use switchyard::config::NamespaceConfig;

use crate::support::{
    Config, config,
    http::{self, assert_error},
    sse::SseClient,
    start,
    tokens::{self, HS256_SECRET, epoch_in},
    ws::WsClient,
};

const ADMIN: &str = "admin-key-0123456789abcdef";

fn namespace(name: &str, pattern: &str) -> NamespaceConfig {
    NamespaceConfig::new(name, &[pattern])
}

/// API keys and JWTs required, with the namespaces under test.
fn secured(namespaces: Vec<NamespaceConfig>) -> Config {
    let mut cfg = config();
    cfg.auth.api_keys = vec![ADMIN.to_owned()];
    cfg.auth.jwt_secret = HS256_SECRET.to_owned();
    cfg.namespaces = namespaces;
    cfg
}

async fn publish(addr: std::net::SocketAddr, channel: &str, n: u64) -> Value {
    let (status, _, body) = http::post_json(
        addr,
        &format!("/v1/channels/{channel}/events"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
        &json!({"type": "tick", "data": {"n": n}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

fn token(claims: Value) -> String {
    tokens::hs256(HS256_SECRET, &claims)
}

#[tokio::test]
async fn public_channels_need_no_token_on_any_transport_and_the_rest_still_do() {
    let public = NamespaceConfig {
        anonymous_subscribe: true,
        ..namespace("public", "public/**")
    };
    let server = start(secured(vec![public])).await;
    let addr = server.addr;

    // SSE and NDJSON without a credential, on a public channel.
    let mut sse = SseClient::connect(addr, "channel=public/news", None).await;
    let stream = http::open(addr, "/v1/stream?channel=public/news", &[]).await;
    assert_eq!(stream.status(), 200);
    let mut lines = http::LineReader::new(stream.into_body());
    let head = lines.next_json().await.expect("the stream's head");
    assert_eq!(head["op"], "subscribed", "{head}");
    // A WebSocket without a credential subscribes at once, without an `auth` frame.
    let mut ws = WsClient::connect(addr).await;
    ws.subscribe(1, "public/news", json!({})).await;

    publish(addr, "public/news", 1).await;
    let (_, data) = sse.next_json().await;
    assert_eq!(data["data"]["n"], 1);
    let line = lines.next_json().await.expect("an NDJSON event");
    assert_eq!(line["data"]["n"], 1);
    assert_eq!(ws.next_event().await["data"]["n"], 1);
    let (status, _, body) = http::request(
        addr,
        "GET",
        "/v1/poll?channel=public/news&after=0",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["events"][0]["data"]["n"], 1, "{page}");

    // Channels outside the public namespace still need a token, on every transport.
    for path in [
        "/v1/sse?channel=private/x",
        "/v1/stream?channel=private/x",
        "/v1/poll?channel=private/x&timeout=0",
        "/v1/sse?channel=public/news&channel=private/x",
    ] {
        let (status, _, body) = http::request(addr, "GET", path, &[], Vec::new()).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_error(status, &body, 401, "unauthorized");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("private/x"),
            "{body}"
        );
    }
    ws.send(json!({"op": "subscribe", "id": 2, "channel": "private/x"}))
        .await;
    let refused = ws.next_json().await;
    assert_eq!(
        (refused["op"].as_str(), refused["error"]["code"].as_str()),
        (Some("error"), Some("unauthorized")),
        "{refused}"
    );
    // An `auth` frame then adds the token's channels to the public ones.
    let t = token(json!({"sub": "u1", "channels": ["private/x"], "exp": epoch_in(300)}));
    ws.send(json!({"op": "auth", "id": 3, "token": t})).await;
    assert_eq!(ws.next_json().await["op"], "authed");
    ws.subscribe(4, "private/x", json!({})).await;
    publish(addr, "public/news", 2).await;
    assert_eq!(
        ws.next_event().await["data"]["n"],
        2,
        "the public subscription survived the auth"
    );
}

#[tokio::test]
async fn without_public_channels_a_websocket_still_needs_its_auth_frame() {
    let server = start(secured(Vec::new())).await;
    let mut ws = WsClient::connect(server.addr).await;
    ws.send(json!({"op": "subscribe", "id": 1, "channel": "news"}))
        .await;
    let refused = ws.next_json().await;
    assert_eq!(refused["error"]["code"], "unauthorized", "{refused}");
    let (status, _, body) =
        http::request(server.addr, "GET", "/v1/sse?channel=news", &[], Vec::new()).await;
    assert_error(
        status,
        &serde_json::from_slice(&body).unwrap(),
        401,
        "unauthorized",
    );
}

#[tokio::test]
async fn clients_publish_over_websocket_where_namespace_and_token_allow_it() {
    let chat = NamespaceConfig {
        client_publish: true,
        ..namespace("chat", "chat/*")
    };
    let server = start(secured(vec![chat])).await;
    let addr = server.addr;
    let talker = token(json!({
        "sub": "alice", "channels": ["chat/*", "news"], "publish": ["chat/*"], "exp": epoch_in(300)
    }));
    let listener = token(json!({"sub": "bob", "channels": ["chat/*"], "exp": epoch_in(300)}));

    let mut bob = WsClient::connect_to(addr, &format!("/v1/ws?token={listener}"), &[])
        .await
        .unwrap();
    bob.subscribe(1, "chat/lobby", json!({})).await;
    let mut sse =
        SseClient::connect(addr, &format!("channel=chat/lobby&token={listener}"), None).await;
    let mut alice = WsClient::connect_to(addr, &format!("/v1/ws?token={talker}"), &[])
        .await
        .unwrap();

    alice
        .send(json!({"op": "publish", "id": 7, "channel": "chat/lobby", "type": "said", "data": {"text": "hi"}}))
        .await;
    let reply = alice.next_json().await;
    assert_eq!(
        (
            reply["op"].as_str(),
            reply["id"].as_u64(),
            reply["offset"].as_u64()
        ),
        (Some("published"), Some(7), Some(1)),
        "{reply}"
    );
    let got = bob.next_event().await;
    assert_eq!(
        (got["type"].as_str(), got["data"]["text"].as_str()),
        (Some("said"), Some("hi"))
    );
    assert_eq!(got["cursor"], reply["cursor"], "one event, one cursor");
    let (ev, data) = sse.next_json().await;
    assert_eq!(
        (ev.event.as_str(), data["offset"].as_u64()),
        ("said", Some(1))
    );
    // The same event path as the publish API: it is in history.
    let (status, _, body) = http::request(
        addr,
        "GET",
        "/v1/channels/chat/lobby/events",
        &[("authorization", &format!("Bearer {ADMIN}"))],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["events"][0]["data"]["text"], "hi");

    // Refusals, each a clear error frame on a connection that stays open.
    let cases = [
        // The namespace does not allow client publishes.
        (
            json!({"op": "publish", "id": 1, "channel": "news", "data": 1}),
            "forbidden",
            "does not allow client publishes",
        ),
        // The publish API's own checks.
        (
            json!({"op": "publish", "id": 2, "channel": "chat/lobby", "type": "a b", "data": 1}),
            "invalid_parameter",
            "type",
        ),
        (
            json!({"op": "publish", "id": 3, "channel": "chat/x y", "data": 1}),
            "invalid_channel",
            "",
        ),
        (
            json!({"op": "publish", "id": 4, "channel": "jobs/abc", "data": 1}),
            "forbidden",
            "",
        ),
        (
            json!({"op": "publish", "id": 5, "channel": "chat/lobby"}),
            "invalid_request",
            "data",
        ),
    ];
    for (frame, code, words) in cases {
        alice.send(frame.clone()).await;
        let reply = alice.next_json().await;
        assert_eq!(reply["op"], "error", "{frame} → {reply}");
        assert_eq!(reply["error"]["code"], code, "{frame} → {reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(words),
            "{reply}"
        );
        assert_eq!(reply["id"], frame["id"]);
    }
    bob.send(
        json!({"op": "publish", "id": 9, "channel": "chat/lobby", "data": {"text": "me too"}}),
    )
    .await;
    let refused = bob.next_json().await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("publish"),
        "{refused}"
    );
    // Nothing refused reached a subscriber: the next event bob sees is the next publish.
    alice
        .send(json!({"op": "publish", "id": 10, "channel": "chat/lobby", "data": {"text": "bye"}}))
        .await;
    assert_eq!(alice.next_json().await["offset"], 2);
    assert_eq!(bob.next_event().await["data"]["text"], "bye");
}

#[tokio::test]
async fn a_channel_holds_at_most_max_subscribers_over_every_transport() {
    let rooms = NamespaceConfig {
        max_subscribers: 2,
        ..namespace("rooms", "rooms/*")
    };
    let server = start(secured(vec![rooms])).await;
    let addr = server.addr;
    let t = token(json!({"sub": "u", "channels": ["rooms/*"], "exp": epoch_in(300)}));

    let mut first = WsClient::connect_to(addr, &format!("/v1/ws?token={t}"), &[])
        .await
        .unwrap();
    first.subscribe(1, "rooms/a", json!({})).await;
    let second = SseClient::connect(addr, &format!("channel=rooms/a&token={t}"), None).await;

    // A third subscriber is refused on every transport, clearly.
    let mut third = WsClient::connect_to(addr, &format!("/v1/ws?token={t}"), &[])
        .await
        .unwrap();
    third
        .send(json!({"op": "subscribe", "id": 1, "channel": "rooms/a"}))
        .await;
    let refused = third.next_json().await;
    assert_eq!(refused["error"]["code"], "channel_full", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_subscribers")
    );
    let (status, _, body) = http::request(
        addr,
        "GET",
        &format!("/v1/stream?channel=rooms/a&token={t}"),
        &[],
        Vec::new(),
    )
    .await;
    assert_error(
        status,
        &serde_json::from_slice(&body).unwrap(),
        429,
        "channel_full",
    );
    // Another channel of the namespace has its own count.
    third.subscribe(2, "rooms/b", json!({})).await;

    // When a subscriber leaves, its place is free again.
    drop(second);
    crate::support::within("a free place in rooms/a", async {
        loop {
            third
                .send(json!({"op": "subscribe", "id": 3, "channel": "rooms/a"}))
                .await;
            let reply = third.next_json().await;
            if reply["op"] == "subscribed" {
                return;
            }
            assert_eq!(reply["error"]["code"], "channel_full", "{reply}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // An unsubscribe frees a place at once.
    first
        .send(json!({"op": "unsubscribe", "id": 2, "channel": "rooms/a"}))
        .await;
    assert_eq!(first.next_json().await["op"], "unsubscribed");
    first.subscribe(3, "rooms/a", json!({})).await;
}
