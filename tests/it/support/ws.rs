//! A WebSocket client (tokio-tungstenite) speaking the JSON frames.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{Message, protocol::CloseFrame},
};

pub struct WsClient {
    pub ws: WebSocketStream<TcpStream>,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_with(addr, false).await
    }

    /// With a small socket receive buffer (a slow reader's backlog reaches the server soon).
    pub async fn connect_with(addr: SocketAddr, small_rcvbuf: bool) -> Self {
        let stream = super::http::connect(addr, small_rcvbuf).await;
        let (ws, res) = client_async(format!("ws://{addr}/v1/ws"), stream)
            .await
            .unwrap();
        assert_eq!(res.status(), 101);
        Self { ws }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame as JSON (control frames are skipped); panics on close.
    pub async fn next_json(&mut self) -> Value {
        super::within("a websocket frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                    Some(Ok(Message::Close(c))) => panic!("closed: {c:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("websocket ended: {other:?}"),
                }
            }
        })
        .await
    }

    /// Reads until the server's close frame, returning it and the text frames before it.
    pub async fn until_close(&mut self) -> (Option<CloseFrame>, Vec<Value>) {
        let mut frames = Vec::new();
        let close = super::within("a close frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        frames.push(serde_json::from_str(t.as_str()).unwrap())
                    }
                    Some(Ok(Message::Close(c))) => return c,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("websocket error before close: {e}"),
                    None => return None,
                }
            }
        })
        .await;
        (close, frames)
    }

    /// Subscribes and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, id: u64, channel: &str, extra: Value) -> Value {
        let mut frame = json!({"op": "subscribe", "id": id, "channel": channel});
        frame
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.send(frame).await;
        let reply = self.next_json().await;
        assert_eq!(reply["op"], "subscribed", "{reply}");
        assert_eq!(reply["id"], id);
        reply
    }

    /// The next `event` frame.
    pub async fn next_event(&mut self) -> Value {
        let frame = self.next_json().await;
        assert_eq!(frame["op"], "event", "{frame}");
        frame
    }
}
