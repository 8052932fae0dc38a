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

    /// Opens `path` (e.g. `/v1/ws?token=..`) with extra headers; a refused upgrade
    /// returns its status and JSON body.
    pub async fn connect_to(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, (u16, Value)> {
        use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let stream = super::http::connect(addr, false).await;
        match client_async(req, stream).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(Error::Http(res)) => {
                let status = res.status().as_u16();
                let body = res.body().as_deref().unwrap_or_default();
                Err((status, serde_json::from_slice(body).unwrap_or(Value::Null)))
            }
            Err(e) => panic!("websocket handshake failed: {e}"),
        }
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
