//! The peer's side of a WebSocket session: its frames are read while the session writes, so
//! that a close (or a broken frame) is seen even while a write waits on a full socket.
//!
//! # Why
//! A client that closes stops reading: the events still on their way fill its socket and
//! the session's write waits. Reading only between writes, the session would see the close
//! only once the whole replay or queue was written (or the send timeout passed), and the
//! client would wait out its own close timeout. Here a write that waits reads meanwhile;
//! the peer's close ends the write at once, and the session answers it after what is
//! already half-written (frames are never cut).

use std::{
    future::poll_fn,
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures_util::{Sink, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Error as TungsteniteError, Message},
};

use super::End;

/// What a session knows of its peer's frames.
pub(super) struct Peer {
    /// A data frame read while a write waited, for the session to handle next. One at most:
    /// reading stops until it is handled, so a peer that sends without reading holds one
    /// frame of the server's memory, no more (the rest waits in its socket).
    held: Option<Message>,
    /// When the peer last sent anything, its answers to pings included (the idle timeout).
    pub(super) last_heard: Instant,
}

impl Peer {
    pub(super) fn new() -> Self {
        Self {
            held: None,
            last_heard: Instant::now(),
        }
    }

    /// Whether a frame read ahead waits to be handled: the session takes it (through
    /// [`Peer::next`]) before writing anything more.
    pub(super) fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// The peer's next frame: the one read ahead, else the next read. `Err` when the
    /// session must end: the peer closed (its close is answered by [`End::PeerClosed`]),
    /// vanished, or sent what it may not.
    ///
    /// # Cancel safety
    /// Cancel safe: a frame is taken only in the poll that returns it.
    pub(super) async fn next<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<Message, End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if let Some(message) = self.held.take() {
            return Ok(message);
        }
        let message = ws.next().await;
        self.last_heard = Instant::now();
        read_outcome(message)
    }

    /// Reads what the peer already sent, without waiting: `Err` when that ends the session.
    pub(super) async fn look<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        poll_fn(|cx| match self.poll_read_ahead(ws, cx) {
            Poll::Ready(end) => Poll::Ready(Err(end)),
            Poll::Pending => Poll::Ready(Ok(())),
        })
        .await
    }

    /// Queues `message` for the connection (written once tungstenite's buffer fills, or
    /// at the next flush), reading the peer's frames while the write waits.
    pub(super) async fn feed<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        message: Message,
    ) -> Result<(), End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut message = Some(message);
        self.write(ws, |mut ws, cx| {
            ready!(ws.as_mut().poll_ready(cx))?;
            Poll::Ready(ws.start_send(message.take().expect("sent once")))
        })
        .await
    }

    /// Writes out everything queued. Looks at what the peer sent first: once per batch of
    /// events, a close is seen even when no write ever waits.
    pub(super) async fn flush<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.look(ws).await?;
        self.write(ws, |ws, cx| ws.poll_flush(cx)).await
    }

    /// [`Peer::feed`] then [`Peer::flush`].
    pub(super) async fn send<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        message: Message,
    ) -> Result<(), End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.feed(ws, message).await?;
        self.flush(ws).await
    }

    /// Drives the write `op` to its end, reading the peer's frames whenever it waits. A
    /// failed write ends the session ([`End::Gone`]: the peer is gone); so does what the
    /// peer sent, when it closed or broke the protocol (the write is abandoned then).
    async fn write<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        mut op: impl FnMut(
            Pin<&mut WebSocketStream<S>>,
            &mut Context<'_>,
        ) -> Poll<Result<(), TungsteniteError>>,
    ) -> Result<(), End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        poll_fn(|cx| {
            if let Poll::Ready(written) = op(Pin::new(&mut *ws), cx) {
                return Poll::Ready(written.map_err(|e| {
                    tracing::debug!(error = %e, "websocket write failed");
                    End::Gone
                }));
            }
            self.poll_read_ahead(ws, cx).map(Err)
        })
        .await
    }

    /// Reads while nothing is held: `Ready` with the end a frame means (a close, a broken
    /// frame, the connection's end); a data frame is held and reading stops; pings and
    /// pongs are read past (tungstenite queues the pong a ping needs).
    fn poll_read_ahead<S>(&mut self, ws: &mut WebSocketStream<S>, cx: &mut Context<'_>) -> Poll<End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        while self.held.is_none() {
            let Poll::Ready(message) = ws.poll_next_unpin(cx) else {
                break;
            };
            self.last_heard = Instant::now();
            match read_outcome(message) {
                Err(end) => return Poll::Ready(end),
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => self.held = Some(message),
                Ok(_) => {}
            }
        }
        Poll::Pending
    }
}

/// What a read means: a frame to handle, or how the session ends.
fn read_outcome(message: Option<Result<Message, TungsteniteError>>) -> Result<Message, End> {
    match message {
        // tungstenite queued the reply; `End::PeerClosed` writes it.
        Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
        Some(Ok(message)) => Ok(message),
        Some(Err(TungsteniteError::Capacity(e))) => {
            tracing::debug!(error = %e, "websocket message over the limit");
            Err(End::Close(1009, "message too big"))
        }
        Some(Err(TungsteniteError::Utf8(e))) => {
            tracing::debug!(error = %e, "websocket text frame not valid UTF-8");
            Err(End::Close(1007, "invalid UTF-8"))
        }
        Some(Err(TungsteniteError::Protocol(e))) => {
            tracing::debug!(error = %e, "websocket protocol error");
            Err(End::Close(1002, "protocol error"))
        }
        None | Some(Err(_)) => Err(End::Gone),
    }
}
