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
//! The connection's [`Gate`] (kept under the inbox's lock, beside its queue, so one lock
//! decides both) keeps frames whole and events in order:
//! - the session task *claims* the connection whenever it writes anything of its own (a
//!   subscribe's `subscribed` frame and replay, queued events, replies, pings, the close)
//!   and releases it only once its queue is empty (`Inbox::release_writes`); taking a
//!   queued event claims it too, so no later event overtakes it;
//! - a fan-out writes directly only while the connection is not claimed, its queue is empty
//!   and no frame is half-written; otherwise the event goes to the queue as before, and the
//!   session writes it (so the slow-consumer rules are unchanged);
//! - a frame is never interleaved with another: a direct write that the socket took only in
//!   part leaves its tail for the session to finish first ([`crate::hub::Received::Flush`]),
//!   and a write of the session's (through tungstenite, see [`SharedStream`]) that the
//!   socket took in part holds direct writes back until the rest is written.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    hub::Event,
    inbox::Link,
    metrics::{Transport, TransportMetrics},
};

/// A consumer's TCP connection as the fan-out and its session share it.
#[derive(Debug)]
pub struct DirectIo {
    stream: TcpStream,
    /// Which transport's deliveries a direct write counts as.
    transport: Transport,
    metrics: Arc<TransportMetrics>,
}

/// Who may write to a [`DirectIo`] now; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// The session task holds the order of what is written.
    claimed: bool,
    /// The unwritten tail of a frame a direct write started: written before anything else.
    tail: Option<Bytes>,
    /// A write of the session's went out in part: the rest of it is in tungstenite's
    /// buffer, so nothing else may start before the session writes it.
    session_partial: bool,
    /// The connection failed or was shut down: no more direct writes.
    closed: bool,
}

impl Gate {
    pub(crate) fn claim(&mut self) {
        self.claimed = true;
    }

    pub(crate) fn release(&mut self) {
        self.claimed = false;
    }
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

impl DirectIo {
    /// Shares `stream` between its session and the fan-out, counting direct deliveries as
    /// `transport`'s.
    pub fn new(stream: TcpStream, transport: Transport, metrics: Arc<TransportMetrics>) -> Self {
        Self {
            stream,
            transport,
            metrics,
        }
    }

    /// Writes `event` now if nothing is in the way (see the module docs), counting the
    /// delivery. Never waits.
    pub(crate) fn deliver(&self, gate: &mut Gate, event: &Event) -> Direct {
        if gate.claimed || gate.tail.is_some() || gate.session_partial || gate.closed {
            return Direct::NotNow;
        }
        let frame = frame_of(self.transport, event);
        let done = match self.stream.try_write(&frame) {
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
        };
        if done != Direct::NotNow {
            self.metrics.delivered(self.transport, 1);
            self.metrics.observe_latency(event.published_at().elapsed());
        }
        done
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

    /// The session's write of `buf`, after any tail (see [`SharedStream`]).
    pub(crate) fn poll_write(
        &self,
        gate: &mut Gate,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if gate.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        match self.poll_tail(gate, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                gate.closed = true;
                return Poll::Ready(Err(e));
            }
            Poll::Ready(Ok(())) => {}
        }
        loop {
            match self.stream.try_write(buf) {
                Ok(n) => {
                    gate.session_partial = n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.stream.poll_write_ready(cx) {
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

    pub(crate) fn poll_flush(&self, gate: &mut Gate, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_tail(gate, cx)
    }

    pub(crate) fn poll_shutdown(
        &self,
        gate: &mut Gate,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        match self.poll_tail(gate, cx) {
            Poll::Ready(_) => {
                gate.closed = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads what the peer sent; reading never needs the gate.
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let read = self.stream.try_read(buf.initialize_unfilled());
            match read {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.stream.poll_read_ready(cx) {
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

/// The session's side of a direct connection: an `AsyncRead + AsyncWrite` for tungstenite
/// whose writes go through the gate (a direct write's tail first; a partial write of its own
/// holds direct writes back). Made by `Inbox::direct_stream`.
#[derive(Debug)]
pub struct SharedStream {
    link: Link,
    /// Bytes read before the session started (the HTTP layer's read-ahead past the upgrade
    /// request), copied: the original is a slice of that layer's whole read buffer, which
    /// would otherwise stay allocated for the life of the connection.
    read_ahead: Bytes,
}

impl SharedStream {
    pub(crate) fn new(link: Link, read_ahead: &[u8]) -> Self {
        Self {
            link,
            read_ahead: Bytes::copy_from_slice(read_ahead),
        }
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
        this.link.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.link.with_gate(|io, gate| io.poll_write(gate, cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.link.with_gate(|io, gate| io.poll_flush(gate, cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.link.with_gate(|io, gate| io.poll_shutdown(gate, cx))
    }
}

/// The event's frame for a transport whose wire frame is the same for every subscriber
/// (the push transports' as the HTTP/1.1 chunk their raw streams are written in).
fn frame_of(transport: Transport, event: &Event) -> Bytes {
    match transport {
        Transport::WebSocket => event.ws_frame(),
        Transport::Sse => event.sse_chunk(),
        Transport::Stream => event.ndjson_chunk(),
        Transport::LongPoll => unreachable!("a long-poll answer is never written directly"),
    }
}

#[cfg(test)]
mod tests {
    //! The gate's rules on a real loopback socket: a client that reads nothing fills it,
    //! then reads to make room exactly when a test wants it.

    use std::future::poll_fn;

    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::testing::big_event;

    async fn pair() -> (DirectIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let io = DirectIo::new(server, Transport::Stream, Arc::default());
        (io, client)
    }

    /// Direct writes of `event` until the socket takes one only in part.
    fn fill(io: &DirectIo, gate: &mut Gate, event: &Event) -> usize {
        for written in 0.. {
            match io.deliver(gate, event) {
                Direct::Written => {}
                Direct::Partial => return written,
                Direct::NotNow => panic!("a direct write was refused before the socket filled"),
            }
        }
        unreachable!()
    }

    /// Reads `n` bytes from the client.
    async fn read(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        client.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn a_direct_writes_tail_goes_out_before_anything_else() {
        let (io, mut client) = pair().await;
        let mut gate = Gate::default();
        let first = big_event("c", 1, 64 * 1024);
        let whole = fill(&io, &mut gate, &first);
        let chunk = first.ndjson_chunk();
        // Room for more, but the tail of the partial chunk must go first.
        let mut got = read(&mut client, chunk.len()).await;
        let second = big_event("c", 2, 16);
        assert_eq!(io.deliver(&mut gate, &second), Direct::NotNow);
        poll_fn(|cx| io.poll_flush(&mut gate, cx)).await.unwrap();
        assert!(gate.tail.is_none());
        assert_eq!(io.deliver(&mut gate, &second), Direct::Written);
        // The client sees whole chunks only: `whole + 1` of the first event, then one of
        // the second.
        got.extend(read(&mut client, whole * chunk.len()).await);
        got.extend(read(&mut client, second.ndjson_chunk().len()).await);
        let mut want = chunk.repeat(whole + 1);
        want.extend_from_slice(&second.ndjson_chunk());
        assert!(got == want, "the chunks arrived whole and in order");
    }

    #[tokio::test]
    async fn nothing_is_written_directly_while_the_session_holds_the_connection() {
        let (io, mut client) = pair().await;
        let mut gate = Gate::default();
        let event = big_event("c", 1, 16);
        gate.claim();
        assert_eq!(io.deliver(&mut gate, &event), Direct::NotNow);
        gate.release();
        assert_eq!(io.deliver(&mut gate, &event), Direct::Written);
        let chunk = event.ndjson_chunk();
        assert_eq!(read(&mut client, chunk.len()).await, chunk);
    }

    #[tokio::test]
    async fn a_sessions_partial_write_holds_direct_writes_back_until_it_is_finished() {
        let (io, mut client) = pair().await;
        let mut gate = Gate::default();
        // The session writes more than the socket takes at once.
        let own = vec![b'x'; 8 * 1024 * 1024];
        let taken = poll_fn(|cx| io.poll_write(&mut gate, cx, &own))
            .await
            .unwrap();
        assert!(taken < own.len(), "the socket took all {taken} bytes");
        let event = big_event("c", 1, 16);
        let _room = read(&mut client, taken).await;
        assert_eq!(io.deliver(&mut gate, &event), Direct::NotNow);
        // The session writes the rest (as tungstenite would, from its buffer) while the
        // client reads it...
        let rest = own.len() - taken;
        let reader = tokio::spawn(async move {
            read(&mut client, rest).await;
            client
        });
        let mut at = taken;
        while at < own.len() {
            at += poll_fn(|cx| io.poll_write(&mut gate, cx, &own[at..]))
                .await
                .unwrap();
        }
        let _client = reader.await.unwrap();
        // ...and only then may the fan-out write.
        assert_eq!(io.deliver(&mut gate, &event), Direct::Written);
    }

    #[tokio::test]
    async fn a_failed_connection_takes_no_more_direct_writes() {
        let (io, client) = pair().await;
        let mut gate = Gate::default();
        drop(client);
        let event = big_event("c", 1, 64 * 1024);
        // The first writes may still be accepted by the kernel; the peer's reset ends that.
        for _ in 0..1000 {
            if io.deliver(&mut gate, &event) == Direct::NotNow && gate.closed {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(gate.closed, "a write failed and closed the gate");
        assert_eq!(io.deliver(&mut gate, &event), Direct::NotNow);
    }
}
