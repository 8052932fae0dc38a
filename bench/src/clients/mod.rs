//! Subscriber clients, one per transport. Each opens one subscription to one channel and
//! reports to a [`Handler`] until the handler says stop or the connection ends.

pub mod nchan;
pub mod poll;
pub mod sse;
pub mod stream;
pub mod ws;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::{server::Server, target::Target};

/// A consumer transport of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket, `GET /v1/ws`.
    Ws,
    /// Server-Sent Events, `GET /v1/sse`.
    Sse,
    /// NDJSON streaming, `GET /v1/stream`.
    Stream,
    /// Long-poll, `GET /v1/poll` in a loop.
    Poll,
}

impl Transport {
    /// Every transport, in the order `mix` assigns them.
    pub const ALL: [Transport; 4] = [Self::Ws, Self::Sse, Self::Stream, Self::Poll];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Sse => "sse",
            Self::Stream => "stream",
            Self::Poll => "poll",
        }
    }

    /// The `transport` label of the server's `switchyard_connections` metric.
    pub fn metrics_label(self) -> &'static str {
        match self {
            Self::Ws => "websocket",
            Self::Sse => "sse",
            Self::Stream => "stream",
            Self::Poll => "longpoll",
        }
    }
}

/// What a handler wants after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Done: the client closes and returns `Ok`.
    Stop,
}

/// Receives what a subscriber client sees.
pub trait Handler: Send {
    /// The subscription is live: events published from now on will be delivered.
    fn subscribed(&mut self);
    /// One event: its envelope JSON (for WebSocket, the whole `{"op":"event",...}` frame).
    fn event(&mut self, bytes: &[u8]) -> Flow;
    /// The server said history no longer reached this subscriber's position.
    fn reset(&mut self) {}
}

/// Which server the clients talk to, and client-side tuning.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's kind: switchyard's endpoints and frames, or Nchan's ([`nchan`]).
    pub server: Server,
    /// Read buffer per connection, bytes (WebSocket read buffer; hyper's exact read buffer,
    /// at least 8192, for the HTTP transports).
    pub read_buffer: usize,
    /// Long-poll hold asked of the server, seconds.
    pub poll_timeout_secs: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            server: Server::Switchyard,
            read_buffer: 16 * 1024,
            poll_timeout_secs: 25,
        }
    }
}

/// Subscribes to `channel` over `transport` on the connected `stream` and feeds `handler`,
/// on the server kind of `config` (Nchan has WebSocket and SSE only).
///
/// # Errors
/// Anything that ends the subscription other than the handler's [`Flow::Stop`]: a failed
/// handshake, an error frame, a slow-consumer disconnect, the connection closing; a
/// transport the server does not have.
pub async fn run<H: Handler>(
    transport: Transport,
    stream: TcpStream,
    target: &Target,
    channel: &str,
    config: &ClientConfig,
    handler: &mut H,
) -> anyhow::Result<()> {
    if config.server == Server::Nchan {
        return nchan::run(transport, stream, target, channel, config, handler).await;
    }
    match transport {
        Transport::Ws => ws::run(stream, target, channel, config, handler).await,
        Transport::Sse => sse::run(stream, target, channel, config, handler).await,
        Transport::Stream => stream::run(stream, target, channel, config, handler).await,
        Transport::Poll => poll::run(stream, target, channel, config, handler).await,
    }
}

#[derive(Deserialize)]
struct ControlFrame<'a> {
    #[serde(borrow)]
    op: &'a str,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Handles a WebSocket / NDJSON control frame (`{"op": ...}` other than `event`).
///
/// # Errors
/// An `error` frame (the server refused the subscription or is ending the stream), or text
/// that is not a control frame.
pub(crate) fn control_frame(bytes: &[u8], handler: &mut impl Handler) -> anyhow::Result<()> {
    let frame: ControlFrame<'_> = match serde_json::from_slice(bytes) {
        Ok(f) => f,
        Err(e) => bail!("unreadable frame ({e}): {}", String::from_utf8_lossy(bytes)),
    };
    match frame.op {
        "subscribed" => handler.subscribed(),
        "reset" => handler.reset(),
        "error" => bail!(
            "server error: {}",
            frame
                .error
                .map_or_else(|| "(no detail)".to_owned(), |e| e.to_string())
        ),
        _ => {}
    }
    Ok(())
}
