//! Streaming `GET`s (`/v1/sse`, `/v1/stream`) served on the raw connection: when a
//! connection's first request is one, its head is parsed here (httparse) and the response
//! written here, so the stream keeps none of hyper's per-connection read and write buffers
//! (about 16 KiB for the life of an idle stream) and its socket can take direct writes
//! from the fan-out. Every other request, and anything unusual about this one, goes to
//! hyper unchanged: the head is only peeked at until it is taken here.
//!
//! The request still goes through the whole API stack ([`crate::api::app`]): only the
//! HTTP/1.1 framing is done here.

use std::{io, time::SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{HeaderName, HeaderValue, Method, Request, Response, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as HttpBody;
use switchyard_transports::{
    chunked,
    raw::{RawConnection, RawSocket},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

/// The request body type of requests served here (a `GET` has none).
pub(super) type NoBody = Empty<Bytes>;

/// The longest request head taken here; a longer one goes to hyper.
const MAX_HEAD: usize = 8192;
/// Most headers taken here; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Most bytes of ready frames gathered into one `write()`.
const MAX_WRITE: usize = 64 * 1024;
/// What a client may send on a stream's connection (ignored) before it is closed.
const MAX_IGNORED_INPUT: usize = 64 * 1024;

/// Paths served here.
const STREAMING_PATHS: [&[u8]; 2] = [b"/v1/sse", b"/v1/stream"];

/// What became of a connection.
pub(super) enum Outcome {
    /// Not a streaming `GET`, or one answered at once with the connection still usable:
    /// hyper serves it from here (nothing unread was consumed).
    Hyper(TcpStream),
    /// Served and closed.
    Done,
}

/// The streaming `GET` at the head of `stream`, if its first request is one (checked
/// without consuming anything), as a request for the API stack.
///
/// The buffers are on the stack, between awaits: a heap buffer per connection, even a
/// short-lived one, leaves the allocator's memory fragmented after a connection storm.
pub(super) async fn take_request(stream: &TcpStream) -> io::Result<Option<Request<NoBody>>> {
    let parsed = std::future::poll_fn(|cx| {
        let mut buf = [0u8; MAX_HEAD];
        let mut peeked = ReadBuf::new(&mut buf);
        stream
            .poll_peek(cx, &mut peeked)
            .map_ok(|_| parse(peeked.filled()))
    })
    .await?;
    let Some((request, head_len)) = parsed else {
        return Ok(None);
    };
    // Consumes exactly the head: whatever follows stays in the socket.
    let mut left = head_len;
    while left > 0 {
        let read = {
            let mut buf = [0u8; MAX_HEAD];
            stream.try_read(&mut buf[..left])
        };
        match read {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(request))
}

/// A complete HTTP/1.1 `GET` head for a streaming path, with no body, no upgrade and
/// headers hyper would also accept, and its length; `None` for anything else.
fn parse(bytes: &[u8]) -> Option<(Request<NoBody>, usize)> {
    let first_line_ok = STREAMING_PATHS.iter().any(|path| {
        bytes
            .strip_prefix(b"GET ")
            .and_then(|rest| rest.strip_prefix(*path))
            .and_then(|rest| rest.first())
            .is_some_and(|c| matches!(c, b' ' | b'?'))
    });
    if !first_line_ok {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = req.parse(bytes).ok()? else {
        return None;
    };
    if req.version != Some(1) {
        return None;
    }
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(req.path?)
        .version(Version::HTTP_11);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let has_body = (name == header::CONTENT_LENGTH && h.value != b"0")
            || name == header::TRANSFER_ENCODING;
        if has_body || name == header::UPGRADE {
            return None;
        }
        builder = builder.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let request = builder.body(Empty::new()).ok()?;
    Some((request, head_len))
}

/// Writes `response` to the connection in `raw` (the socket the request came on, or its
/// shared side if the push driver took it).
pub(super) async fn respond<B>(
    raw: &RawConnection,
    response: Response<B>,
    keep_alive: bool,
) -> Outcome
where
    B: HttpBody + Unpin,
    B::Data: Buf,
{
    let Some(mut socket) = raw.take() else {
        return Outcome::Done;
    };
    let (parts, mut body) = response.into_parts();
    let exact = body.size_hint().exact();
    let mut head = BytesMut::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    drop(parts);
    let written = match exact {
        Some(len) => {
            head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
            if !keep_alive {
                head.extend_from_slice(b"connection: close\r\n");
            }
            head.extend_from_slice(b"\r\n");
            write_full(&mut socket, head.freeze(), &mut body).await
        }
        None => {
            // A stream ends only when the server ends it; its connection is not reused.
            head.extend_from_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
            write_stream(&mut socket, head.freeze(), &mut body).await
        }
    };
    match (written, exact.is_some() && keep_alive) {
        (Ok(()), true) => socket.into_plain().map_or(Outcome::Done, Outcome::Hyper),
        (Ok(()), false) => {
            let _ = socket.shutdown().await;
            Outcome::Done
        }
        (Err(e), _) => {
            tracing::debug!(error = %e, "streaming response ended with an error");
            Outcome::Done
        }
    }
}

/// Writes a head and a body of known length.
async fn write_full<B>(socket: &mut RawSocket, head: Bytes, body: &mut B) -> io::Result<()>
where
    B: HttpBody + Unpin,
    B::Data: Buf,
{
    socket.write_all(&head).await?;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(io::Error::other("the response body failed"));
        };
        if let Ok(mut data) = frame.into_data() {
            while data.has_remaining() {
                let n = socket.write(data.chunk()).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                data.advance(n);
            }
        }
    }
    socket.flush().await
}

/// Writes a head and a stream, one chunk per frame, until the stream ends or the peer
/// goes away (noticed as soon as it closes, not at the next write). The frames the stream
/// has ready at once (queued events, up to [`MAX_WRITE`]) go out in one `write()`. An empty
/// frame asks for a flush: the push driver's way to finish a direct write's tail.
async fn write_stream<B>(socket: &mut RawSocket, head: Bytes, body: &mut B) -> io::Result<()>
where
    B: HttpBody + Unpin,
    B::Data: Buf,
{
    socket.write_all(&head).await?;
    let mut ignored = 0usize;
    let mut input = [0u8; 64];
    loop {
        tokio::select! {
            frame = body.frame() => {
                let Some(Ok(frame)) = frame else { break };
                let mut out = BytesMut::new();
                let mut flush = add_chunk(&mut out, frame);
                let mut ended = false;
                while out.len() < MAX_WRITE {
                    match body.frame().now_or_never() {
                        Some(Some(Ok(frame))) => flush |= add_chunk(&mut out, frame),
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        // Nothing more ready now (or a failed frame, met again next turn).
                        Some(Some(Err(_))) | None => break,
                    }
                }
                if !out.is_empty() {
                    socket.write_all(&out).await?;
                }
                if flush {
                    socket.flush().await?;
                }
                if ended {
                    break;
                }
            }
            read = socket.read(&mut input) => {
                // The client sends nothing on a stream; a closed or reset connection ends it.
                let n = read?;
                ignored += n;
                if n == 0 || ignored > MAX_IGNORED_INPUT {
                    return Ok(());
                }
            }
        }
    }
    socket.write_all(chunked::LAST_CHUNK).await?;
    socket.flush().await
}

/// Appends `frame`'s data to `out` as one chunk; `true` for an empty frame (a flush).
fn add_chunk<D: Buf>(out: &mut BytesMut, frame: hyper::body::Frame<D>) -> bool {
    let Ok(mut data) = frame.into_data() else {
        return false;
    };
    let bytes = data.copy_to_bytes(data.remaining());
    if bytes.is_empty() {
        return true;
    }
    // Straight into the gathered buffer: no chunk of its own to copy again.
    chunked::put(out, &bytes);
    false
}

/// Whether the client asked to close after this request.
pub(super) fn wants_close<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        })
}
