//! An SSE client: the raw head block, then events parsed by `eventsource-stream`.

use std::{net::SocketAddr, pin::Pin};

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use serde_json::Value;

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

pub struct SseClient {
    /// The first block the server sent (`retry:` and the `id:`-only block).
    pub head: String,
    events: Events,
}

impl SseClient {
    /// Connects to `/v1/sse?{query}`, with `Last-Event-ID` when given. Panics unless 200.
    pub async fn connect(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> Self {
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        Self::from_response(super::http::open(addr, &format!("/v1/sse?{query}"), &headers).await)
            .await
    }

    pub async fn from_response(res: http::Response<hyper::body::Incoming>) -> Self {
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let mut body = res.into_body();
        // The head is written on its own before anything else.
        let head = loop {
            let frame = body.frame().await.expect("head").expect("body ok");
            if let Ok(data) = frame.into_data() {
                break String::from_utf8(data.to_vec()).unwrap();
            }
        };
        let events = body
            .into_data_stream()
            .map(|r: Result<Bytes, hyper::Error>| r.map_err(|e| e.to_string()))
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Self {
            head,
            events: Box::pin(events),
        }
    }

    /// The cursor of the head's `id:` line.
    pub fn head_id(&self) -> &str {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .expect("head has an id line")
    }

    /// The next event, `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Event> {
        self.events
            .next()
            .await
            .map(|r| r.expect("well-formed SSE"))
    }

    /// The next event, which must exist; with its data parsed.
    pub async fn next_json(&mut self) -> (Event, Value) {
        let ev = super::within("an SSE event", self.next())
            .await
            .expect("stream ended");
        let data = serde_json::from_str(&ev.data).unwrap();
        (ev, data)
    }
}
