//! The connection as hyper serves it ([`HyperIo`]): the socket, with hyper's own answers to
//! request heads it cannot parse replaced by the API's JSON error.
//!
//! hyper answers such a head itself, before any service sees a request, with an empty
//! body: `400` (a malformed request line or header), `414` (a request target over 65534
//! bytes) or `431` (over 100 header fields, or a head over hyper's ~400 KiB read buffer),
//! and then closes. It offers no hook for the body, so the answer is recognised here, where
//! hyper writes it, and a JSON one with the same status goes out instead: every HTTP error a
//! client meets has the API's shape (`{"error": {"code", "message"}}`).
//!
//! Only that answer is touched: its status line is one of the three, it is written alone
//! (hyper writes nothing else before closing) and it says `content-length: 0`, which no
//! answer of the API does with these statuses (its errors all have a JSON body). Every
//! other write passes straight through, after a comparison of its first bytes.

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use switchyard_protocol::{ErrorCode, ErrorResponse};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Sleep,
};

/// hyper's fixed limit on a request target, in bytes (not configurable).
pub const MAX_URI_BYTES: usize = 65534;
/// hyper's default limit on header fields per request (a larger one costs an allocation
/// per request in hyper).
pub const MAX_HEADERS: usize = 100;

/// Longest the client's remaining input is read after a replaced answer (see
/// [`HyperIo::poll_shutdown`]).
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// What the server hands hyper, and what the WebSocket upgrade downcasts back to for direct
/// writes: one name for both, so they cannot drift apart (a failed downcast would silently
/// cost every WebSocket its direct writes).
pub type ServerIo = TokioIo<HyperIo>;

/// A server connection's socket as hyper uses it. The WebSocket upgrade takes the socket
/// back out ([`HyperIo::into_inner`]) for direct writes.
#[derive(Debug)]
pub struct HyperIo {
    stream: TcpStream,
    /// The JSON answer written in place of hyper's own; once set, the connection only
    /// finishes it and closes. Boxed: almost no connection ever needs one.
    replaced: Option<Box<Replaced>>,
}

#[derive(Debug)]
struct Replaced {
    /// What is left to write of the answer.
    answer: Bytes,
    /// The write side is shut down.
    shut: bool,
    /// Until when the client's remaining input is read and dropped after the answer.
    drain_until: Pin<Box<Sleep>>,
}

impl HyperIo {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            replaced: None,
        }
    }

    /// The socket.
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }

    /// Starts replacing `head` if it is hyper's own error answer; `true` if it is.
    fn replace(&mut self, head: &[u8]) -> bool {
        let Some(answer) = json_answer(head) else {
            return false;
        };
        self.replaced = Some(Box::new(Replaced {
            answer,
            shut: false,
            drain_until: Box::pin(tokio::time::sleep(DRAIN_TIME)),
        }));
        true
    }

    /// Writes what is left of the replacement answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(replaced) = self.replaced.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while replaced.answer.has_remaining() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &replaced.answer))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            replaced.answer.advance(n);
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }
}

/// The JSON answer to put in place of `head`, when `head` is hyper's own answer to a head
/// it could not parse.
fn json_answer(head: &[u8]) -> Option<Bytes> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let (code, message) = match rest.get(..4)? {
        b"400 " => (
            ErrorCode::InvalidRequest,
            "the request is not valid HTTP/1.1 (a malformed request line or header)".to_owned(),
        ),
        b"414 " => (
            ErrorCode::UriTooLong,
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ),
        b"431 " => (
            ErrorCode::HeadersTooLarge,
            format!(
                "the request head is too large: at most {MAX_HEADERS} header fields, and \
                 about 400 KiB in all"
            ),
        ),
        _ => return None,
    };
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    if !head.split("\r\n").any(|line| line == "content-length: 0") {
        return None;
    }
    let body = ErrorResponse::new(code, message).to_json();
    let mut out = BytesMut::with_capacity(head.len() + 128 + body.len());
    for line in head.split("\r\n") {
        if line.starts_with("content-length:") || line.starts_with("connection:") {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    Some(out.freeze())
}

impl AsyncRead for HyperIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HyperIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaced.is_some() || this.replace(buf) {
            // hyper's answer counts as written once its replacement is.
            ready!(this.poll_answer(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // hyper's own answer is a head alone: one non-empty slice.
        let alone = bufs
            .iter()
            .find(|b| !b.is_empty())
            .filter(|b| b.len() == total);
        if this.replaced.is_some() || alone.is_some_and(|head| this.replace(head)) {
            ready!(this.poll_answer(cx))?;
            return Poll::Ready(Ok(total));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    /// After a replaced answer, also reads and drops what the client still sends (the
    /// rest of an oversized head, a body) until it closes, for at most [`DRAIN_TIME`]:
    /// closing with input unread would reset the connection, and a reset can destroy the
    /// answer before the client reads it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replaced.is_none() {
            return Pin::new(&mut this.stream).poll_shutdown(cx);
        }
        ready!(this.poll_answer(cx))?;
        let replaced = this.replaced.as_mut().expect("checked above");
        if !replaced.shut {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            replaced.shut = true;
        }
        let mut sink = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // Closed, or gone.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    ready!(replaced.drain_until.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(head: &str) -> Option<String> {
        json_answer(head.as_bytes()).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn hypers_own_error_answers_become_json() {
        for (status, code) in [
            ("400 Bad Request", "invalid_request"),
            ("414 URI Too Long", "uri_too_long"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 10:00:00 GMT\r\n\r\n"
            );
            let out = answer(&head).unwrap_or_else(|| panic!("{status} not replaced"));
            let (head, body) = out.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{head}"
            );
            assert!(
                head.contains("\r\ndate: Thu, 03 Dec 2026 10:00:00 GMT"),
                "{head}"
            );
            assert!(
                head.contains("\r\ncontent-type: application/json"),
                "{head}"
            );
            assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
            assert!(head.ends_with("\r\nconnection: close"), "{head}");
            assert!(!head.contains("content-length: 0"), "{head}");
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["message"].as_str().unwrap().len() > 10);
        }
    }

    #[test]
    fn every_other_write_passes() {
        for other in [
            // The API's own errors have a body.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 70\r\n\r\n",
            // Other statuses, even empty.
            "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            // A head with its body in the same write.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore",
            // Body bytes that happen to start like a status line.
            "HTTP/1.1 431 is what it said",
            "",
            "\u{81}\u{7e}websocket",
        ] {
            assert_eq!(answer(other), None, "{other:?}");
        }
    }
}
