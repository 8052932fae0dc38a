//! Direct writes: a consumer's TCP connection shared by its session task and the hub's
//! fan-out, so a live event reaches an idle connection with one `write()` from the
//! publishing thread, without waking the connection's task.
//!
//! # Why
//! At modest event rates every delivery used to wake one task per connection, which was
//! scheduled, polled through its session's `select!` and then wrote: about as much CPU in
//! user space and wake-ups as the write itself costs in the kernel. Here the fan-out writes
//! the event's frame (encoded once, shared by every subscriber) straight to the socket when
//! nothing else is in the way, and falls back to the connection's queue otherwise.
//!
//! # Who may write, and when
//! The [`DirectSocket`]'s gate keeps frames whole and events in order:
//! - the session task *claims* the connection whenever it writes anything of its own (a
//!   subscribe's `subscribed` frame and replay, queued events, replies, pings, the close)
//!   and releases it only once its queue is empty (`Inbox::release_writes`);
//! - a fan-out writes directly only while the connection is not claimed, its queue is empty
//!   and no frame is half-written; otherwise the event goes to the queue as before, and the
//!   session writes it (so the slow-consumer rules are unchanged);
//! - a frame is never interleaved with another: a direct write that the socket took only in
//!   part leaves its tail here for the session to finish first ([`crate::hub::Received::Flush`]),
//!   and a write of the session's (through tungstenite, see [`SharedStream`]) that the
//!   socket took in part blocks direct writes until the rest is written.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    hub::Event,
    metrics::{Transport, TransportMetrics},
};

/// A consumer's TCP connection, written by its session and, while it is idle, by the
/// fan-out; see the module docs.
#[derive(Debug)]
pub struct DirectSocket {
    stream: TcpStream,
    gate: Mutex<Gate>,
    /// Which transport's deliveries a direct write counts as.
    transport: Transport,
    metrics: Arc<TransportMetrics>,
}

#[derive(Debug, Default)]
struct Gate {
    /// The session task holds the order of what is written (see the module docs).
    claimed: bool,
    /// The unwritten tail of a frame a direct write started: written before anything else.
    tail: Option<Bytes>,
    /// A write of the session's went out in part: the rest of it is in tungstenite's
    /// buffer, so nothing else may start before the session writes it.
    session_partial: bool,
    /// The connection failed or was shut down: no more direct writes.
    closed: bool,
}

/// What a direct write did with an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Direct {
    /// The whole frame was written.
    Written,
    /// The socket took part of it; the tail waits for the session to write it.
    Partial,
    /// Not written: queue the event for the session instead.
    NotNow,
}

impl DirectSocket {
    /// Shares `stream` between its session and the fan-out, counting direct deliveries as
    /// `transport`'s.
    pub fn new(
        stream: TcpStream,
        transport: Transport,
        metrics: Arc<TransportMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            stream,
            gate: Mutex::new(Gate::default()),
            transport,
            metrics,
        })
    }

    /// Writes `event` now, if nothing is in the way, counting the delivery.
    pub(crate) fn deliver(&self, event: &Event) -> Direct {
        let done = self.try_frame(&frame_of(self.transport, event));
        if done != Direct::NotNow {
            self.metrics.delivered(self.transport, 1);
            self.metrics.observe_latency(event.published_at().elapsed());
        }
        done
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `frame` now if nothing is in the way (see the module docs). Never waits.
    pub(crate) fn try_frame(&self, frame: &Bytes) -> Direct {
        let mut gate = self.gate();
        if gate.claimed || gate.tail.is_some() || gate.session_partial || gate.closed {
            return Direct::NotNow;
        }
        match self.stream.try_write(frame) {
            Ok(n) if n == frame.len() => Direct::Written,
            Ok(n) if n > 0 => {
                gate.tail = Some(frame.slice(n..));
                Direct::Partial
            }
            Ok(_) => Direct::NotNow,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Direct::NotNow,
            Err(_) => {
                // The session finds the error on its own next read or write.
                gate.closed = true;
                Direct::NotNow
            }
        }
    }

    /// The session is about to write: direct writes wait until [`Self::release`].
    pub(crate) fn claim(&self) {
        self.gate().claimed = true;
    }

    /// The session wrote everything it had: direct writes may go again.
    pub(crate) fn release(&self) {
        self.gate().claimed = false;
    }

    /// Writes the tail a direct write left, if any: `Ready(Ok)` once there is none.
    fn poll_tail(&self, gate: &mut Gate, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(tail) = gate.tail.as_mut() {
            match self.stream.try_write(tail) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    tail.advance(n);
                    if tail.is_empty() {
                        gate.tail = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The session's side of a [`DirectSocket`]: an `AsyncRead + AsyncWrite` for tungstenite
/// whose writes go through the gate (a direct write's tail first; a partial write of its own
/// holds direct writes back).
#[derive(Debug)]
pub struct SharedStream {
    socket: Arc<DirectSocket>,
    /// Bytes read before the session started (hyper's read-ahead past the upgrade request).
    read_ahead: Bytes,
}

impl SharedStream {
    /// The session's stream over `socket`, reading `read_ahead` first. The bytes are
    /// copied: `read_ahead` is usually a slice of the HTTP layer's whole read buffer, which
    /// would otherwise stay allocated for the life of the connection.
    pub fn new(socket: Arc<DirectSocket>, read_ahead: Bytes) -> Self {
        let read_ahead = if read_ahead.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&read_ahead)
        };
        Self { socket, read_ahead }
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead.split_to(n));
            if this.read_ahead.is_empty() {
                this.read_ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let stream = &this.socket.stream;
        loop {
            match stream.try_read_buf_shim(buf) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match stream.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// `TcpStream::try_read` into a `ReadBuf`.
trait TryReadBuf {
    fn try_read_buf_shim(&self, buf: &mut ReadBuf<'_>) -> io::Result<()>;
}

impl TryReadBuf for TcpStream {
    fn try_read_buf_shim(&self, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        let n = self.try_read(buf.initialize_unfilled())?;
        buf.advance(n);
        Ok(())
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &self.socket;
        let mut gate = socket.gate();
        if gate.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        match socket.poll_tail(&mut gate, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                gate.closed = true;
                return Poll::Ready(Err(e));
            }
            Poll::Ready(Ok(())) => {}
        }
        loop {
            match socket.stream.try_write(buf) {
                Ok(n) => {
                    gate.session_partial = n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match socket.stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => {
                    gate.closed = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &self.socket;
        let mut gate = socket.gate();
        socket.poll_tail(&mut gate, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &self.socket;
        let mut gate = socket.gate();
        match socket.poll_tail(&mut gate, cx) {
            Poll::Ready(_) => {
                gate.closed = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The event's frame for a transport whose wire frame is the same for every subscriber.
pub(crate) fn frame_of(transport: Transport, event: &Event) -> Bytes {
    match transport {
        Transport::WebSocket => event.ws_frame(),
        _ => unreachable!("only WebSocket connections write directly"),
    }
}
