//! Direct writes: the fan-out writes a live event straight to an idle connection's socket
//! (WebSocket, and SSE or NDJSON served on the raw connection). What users rely on: a
//! reader that pauses until its socket is full, then resumes, still gets every frame whole
//! and in order; and a consumer that hangs up in the middle of the writes costs the others
//! nothing.

use serde_json::{Value, json};

use crate::support::{
    TestServer, channel, config, http, sse::SseClient, start, within, ws::WsClient,
};

/// 16 KiB payloads: 300 of them (4.8 MB) are more than loopback's largest socket buffers
/// hold, so a paused reader's socket fills and later events go through its queue.
const EVENTS: u64 = 300;

fn payload(n: u64) -> Value {
    json!({"n": n, "pad": "x".repeat(16 * 1024)})
}

/// A queue that holds every event, so a paused reader is never a slow consumer here.
fn roomy_config() -> switchyard::config::Config {
    let mut cfg = config();
    cfg.consumers.queue_capacity = 4096;
    cfg.consumers.send_timeout_secs = 30;
    cfg.history.size = 1000;
    cfg
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Ws,
    Sse,
    Ndjson,
}

const TRANSPORTS: [Transport; 3] = [Transport::Ws, Transport::Sse, Transport::Ndjson];

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Self::Ws => "websocket",
            Self::Sse => "sse",
            Self::Ndjson => "stream",
        }
    }
}

/// A subscriber of one channel on any push transport.
enum Consumer {
    Ws(Box<WsClient>),
    Sse(SseClient),
    Ndjson(http::LineReader),
}

impl Consumer {
    /// Subscribes to `ch`, with a small socket receive buffer when `small_rcvbuf`, and
    /// waits until the server counts the connection.
    async fn open(server: &TestServer, transport: Transport, ch: &str, small_rcvbuf: bool) -> Self {
        let before = server.metric(&connections(transport)).await;
        let consumer = match transport {
            Transport::Ws => {
                let mut ws = WsClient::connect_with(server.addr, small_rcvbuf).await;
                ws.subscribe(1, ch, json!({})).await;
                Self::Ws(Box::new(ws))
            }
            Transport::Sse | Transport::Ndjson => {
                let path = match transport {
                    Transport::Sse => format!("/v1/sse?channel={ch}"),
                    _ => format!("/v1/stream?channel={ch}"),
                };
                let stream = http::connect(server.addr, small_rcvbuf).await;
                let req = http::build(server.addr, "GET", &path, &[], Vec::new());
                let res = http::send_on(stream, req).await;
                assert_eq!(res.status(), 200, "{path}");
                match transport {
                    Transport::Sse => Self::Sse(SseClient::from_response(res).await),
                    _ => {
                        let mut lines = http::LineReader::new(res.into_body());
                        let subscribed = lines.next_json().await.expect("a subscribed line");
                        assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
                        Self::Ndjson(lines)
                    }
                }
            }
        };
        server
            .wait_metric(&connections(transport), before + 1.0)
            .await;
        consumer
    }

    /// The next event's envelope, checked whole: its data is the published payload.
    async fn next_event(&mut self) -> Value {
        let envelope = match self {
            Self::Ws(ws) => ws.next_event().await,
            Self::Sse(sse) => sse.next_json().await.1,
            Self::Ndjson(lines) => within("an NDJSON line", lines.next_json())
                .await
                .expect("the stream goes on"),
        };
        let offset = envelope["offset"].as_u64().expect("an offset");
        assert_eq!(
            envelope["data"],
            payload(offset),
            "event {offset} arrived whole"
        );
        envelope
    }

    /// Reads events `from..=to`, checking each arrives once, in order and whole.
    async fn expect_offsets(&mut self, from: u64, to: u64) {
        for want in from..=to {
            let event = self.next_event().await;
            assert_eq!(event["offset"], want, "in order, none lost or repeated");
        }
    }
}

fn connections(transport: Transport) -> String {
    format!(
        "switchyard_connections{{transport=\"{}\"}}",
        transport.label()
    )
}

async fn publish_range(server: &TestServer, ch: &str, from: u64, to: u64) {
    within("publishing never waits on a consumer", async {
        for n in from..=to {
            server.publish(ch, "big", payload(n)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_reader_that_pauses_until_its_socket_is_full_gets_every_frame_whole_and_in_order() {
    let server = start(roomy_config()).await;
    for transport in TRANSPORTS {
        let ch = channel(&format!("direct-pause-{}", transport.label()));
        let mut paused = Consumer::open(&server, transport, &ch, true).await;
        // Nothing is read while every event is published.
        publish_range(&server, &ch, 1, EVENTS).await;
        paused.expect_offsets(1, EVENTS).await;
        let slow = format!(
            "switchyard_slow_consumer_disconnects_total{{transport=\"{}\"}}",
            transport.label()
        );
        assert_eq!(server.metric(&slow).await, 0.0, "{transport:?}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_catching_up_while_events_go_on_gets_every_frame_whole_and_in_order() {
    let server = std::sync::Arc::new(start(roomy_config()).await);
    for transport in TRANSPORTS {
        let ch = channel(&format!("direct-catch-up-{}", transport.label()));
        let mut reader = Consumer::open(&server, transport, &ch, true).await;
        // Its socket full and events queued behind it...
        publish_range(&server, &ch, 1, EVENTS).await;
        // ...it reads while more are published: its queue drains and runs empty while the
        // session may still be writing a queued frame, and live events take turns between
        // the queue and direct writes, with the socket filling and emptying throughout.
        let publishing = tokio::spawn({
            let (server, ch) = (std::sync::Arc::clone(&server), ch.clone());
            async move { publish_range(&server, &ch, EVENTS + 1, 2 * EVENTS).await }
        });
        reader.expect_offsets(1, 2 * EVENTS).await;
        publishing.await.unwrap();
    }
    std::sync::Arc::into_inner(server)
        .expect("no other handle left")
        .shutdown()
        .await;
}

#[tokio::test]
async fn a_consumer_that_hangs_up_mid_write_costs_the_others_nothing() {
    let server = start(roomy_config()).await;
    for transport in TRANSPORTS {
        let ch = channel(&format!("direct-hangup-{}", transport.label()));
        let quitter = Consumer::open(&server, transport, &ch, true).await;
        let mut reader = Consumer::open(&server, transport, &ch, false).await;
        let half = EVENTS / 2;
        // The quitter reads nothing, so the server is still writing to it (its socket
        // full or nearly, events queued behind) when it goes away.
        let reading = tokio::spawn(async move {
            reader.expect_offsets(1, EVENTS).await;
            reader
        });
        publish_range(&server, &ch, 1, half).await;
        drop(quitter);
        publish_range(&server, &ch, half + 1, EVENTS).await;
        let reader = within("the other consumer gets everything", reading)
            .await
            .unwrap();
        // The quitter's connection is gone; the reader's is still counted.
        server.wait_metric(&connections(transport), 1.0).await;
        drop(reader);
        server.wait_metric(&connections(transport), 0.0).await;
    }
    server.shutdown().await;
}
