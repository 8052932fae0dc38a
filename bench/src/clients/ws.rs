//! WebSocket subscriber: upgrade `GET /v1/ws`, send `subscribe`, read text frames.

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{Message, client::IntoClientRequest, protocol::WebSocketConfig},
};

use super::{ClientConfig, Flow, Handler, control_frame};
use crate::target::Target;

const EVENT_PREFIX: &[u8] = br#"{"op":"event","#;

/// Opens a WebSocket to `url` over `stream` with the bench's buffers (switchyard's and
/// Nchan's clients alike).
///
/// # Errors
/// A bad URL or a refused handshake.
pub(crate) async fn handshake(
    url: &str,
    stream: TcpStream,
    config: &ClientConfig,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let request = url.into_client_request().context("WebSocket request")?;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer)
        .write_buffer_size(0);
    let (ws, _) = client_async_with_config(request, stream, Some(ws_config))
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(ws)
}

/// Runs one WebSocket subscription (see [`super::run`]).
///
/// # Errors
/// See [`super::run`].
pub async fn run<H: Handler>(
    stream: TcpStream,
    target: &Target,
    channel: &str,
    config: &ClientConfig,
    handler: &mut H,
) -> anyhow::Result<()> {
    let mut ws = handshake(&format!("ws://{}/v1/ws", target.authority), stream, config).await?;
    let subscribe = serde_json::json!({"op": "subscribe", "id": 1, "channel": channel});
    ws.send(Message::text(subscribe.to_string()))
        .await
        .context("sending subscribe")?;
    // Reading also answers the server's pings (tungstenite queues and flushes the pongs).
    while let Some(message) = ws.next().await {
        match message.context("WebSocket read")? {
            Message::Text(text) => {
                let bytes = text.as_bytes();
                if bytes.starts_with(EVENT_PREFIX) {
                    if handler.event(bytes) == Flow::Stop {
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                } else {
                    control_frame(bytes, handler)?;
                }
            }
            Message::Close(frame) => match frame {
                Some(f) => bail!(
                    "server closed the WebSocket: {} {}",
                    u16::from(f.code),
                    f.reason
                ),
                None => bail!("server closed the WebSocket"),
            },
            _ => {}
        }
    }
    bail!("WebSocket connection ended")
}
