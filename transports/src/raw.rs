//! A connection whose streaming `GET` (SSE, NDJSON) the server serves itself instead of
//! through hyper, so that the stream holds no HTTP-layer buffers and its socket can be
//! shared with the fan-out (direct writes, see [`crate::direct`]).
//!
//! The server puts a [`RawConnection`] into such a request's extensions; the push driver
//! may take the socket from it and leave the session's side of a shared socket in its
//! place; the server then writes the response to whichever is there.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::direct::SharedStream;

/// The socket of a request served on the raw connection; cheap to clone (one slot shared).
#[derive(Clone, Debug)]
pub struct RawConnection(Arc<Mutex<Option<RawSocket>>>);

/// What a [`RawConnection`] holds.
#[derive(Debug)]
pub enum RawSocket {
    /// The connection as accepted: only the response's writer uses it.
    Plain(TcpStream),
    /// Shared by its session and the fan-out.
    Shared(SharedStream),
}

impl RawConnection {
    /// A slot holding `stream`.
    pub fn new(stream: TcpStream) -> Self {
        Self(Arc::new(Mutex::new(Some(RawSocket::Plain(stream)))))
    }

    /// Takes the socket back, to write the response (`None` if it was taken already).
    pub fn take(&self) -> Option<RawSocket> {
        self.0.lock().expect("not poisoned").take()
    }

    /// Hands the plain socket to `share`, which returns the session's side of it to put
    /// back; `false` (and `share` not called) when the socket is not plain.
    pub(crate) fn share(&self, share: impl FnOnce(TcpStream) -> SharedStream) -> bool {
        let mut slot = self.0.lock().expect("not poisoned");
        match slot.take() {
            Some(RawSocket::Plain(stream)) => {
                *slot = Some(RawSocket::Shared(share(stream)));
                true
            }
            other => {
                *slot = other;
                false
            }
        }
    }
}

impl RawSocket {
    /// The plain socket back, when it was never shared (so the connection can go on
    /// serving requests).
    pub fn into_plain(self) -> Option<TcpStream> {
        match self {
            Self::Plain(stream) => Some(stream),
            Self::Shared(_) => None,
        }
    }
}

impl AsyncRead for RawSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Shared(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Shared(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Shared(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Shared(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
