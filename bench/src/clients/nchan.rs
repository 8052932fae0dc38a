//! Nchan subscribers: a WebSocket or an EventSource request on `/sub/{channel}`.
//!
//! Nchan registers a subscriber before it answers the handshake (WebSocket `101`, SSE `200`
//! and its `: hi` comment), so the answer counts as "subscribed". Each message's raw body
//! is one text frame, or one SSE block's `data`, handed to the handler as it is.

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use hyper::Method;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{ClientConfig, Flow, Handler, Transport, sse};
use crate::{http::HttpConn, nchan::subscribe_path, target::Target};

/// Runs one Nchan subscription (see [`super::run`]).
///
/// # Errors
/// See [`super::run`]; NDJSON and long-poll are refused (Nchan's long-poll is another
/// protocol, and it has no NDJSON stream).
pub async fn run<H: Handler>(
    transport: Transport,
    stream: TcpStream,
    target: &Target,
    channel: &str,
    config: &ClientConfig,
    handler: &mut H,
) -> anyhow::Result<()> {
    match transport {
        Transport::Ws => websocket(stream, target, channel, config, handler).await,
        Transport::Sse => eventsource(stream, target, channel, config, handler).await,
        Transport::Stream | Transport::Poll => bail!(
            "the bench drives Nchan over ws and sse only, not {}",
            transport.name()
        ),
    }
}

async fn websocket<H: Handler>(
    stream: TcpStream,
    target: &Target,
    channel: &str,
    config: &ClientConfig,
    handler: &mut H,
) -> anyhow::Result<()> {
    let url = format!("ws://{}{}", target.authority, subscribe_path(channel));
    let mut ws = super::ws::handshake(&url, stream, config).await?;
    handler.subscribed();
    while let Some(message) = ws.next().await {
        let flow = match message.context("WebSocket read")? {
            Message::Text(text) => handler.event(text.as_bytes()),
            Message::Binary(bytes) => handler.event(&bytes),
            Message::Close(frame) => match frame {
                Some(f) => bail!(
                    "Nchan closed the WebSocket: {} {}",
                    u16::from(f.code),
                    f.reason
                ),
                None => bail!("Nchan closed the WebSocket"),
            },
            _ => Flow::Continue,
        };
        if flow == Flow::Stop {
            let _ = ws.close(None).await;
            return Ok(());
        }
    }
    bail!("WebSocket connection ended")
}

async fn eventsource<H: Handler>(
    stream: TcpStream,
    target: &Target,
    channel: &str,
    config: &ClientConfig,
    handler: &mut H,
) -> anyhow::Result<()> {
    let mut conn = HttpConn::open(stream, target, Some(config.read_buffer)).await?;
    let path = subscribe_path(channel);
    let mut req = conn.request(Method::GET, &path, None);
    req.headers_mut().insert(
        hyper::header::ACCEPT,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    let res = conn
        .send(req)
        .await
        .with_context(|| format!("GET {path}"))?;
    let (parts, mut body) = res.into_parts();
    if !parts.status.is_success() {
        let text = conn.collect(body).await.unwrap_or_default();
        bail!(
            "GET {path} answered {}: {}",
            parts.status,
            String::from_utf8_lossy(&text)
        );
    }
    handler.subscribed();
    // Nchan's blocks (`id: <time>:<tag>` and `data: <body>`, after a `: hi` comment) are
    // plain SSE: switchyard's parser reads them.
    let mut parser = sse::Parser::default();
    while let Some(chunk) = conn.chunk(&mut body).await? {
        if parser.feed(&chunk, handler)? == Flow::Stop {
            return Ok(());
        }
    }
    bail!("EventSource stream ended")
}
