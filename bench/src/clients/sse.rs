//! Server-Sent Events subscriber: `GET /v1/sse?channel=..`, split the body into blocks.
//!
//! The first block (`retry:` + `id:`, no `data:`) means subscribed; `event: disconnect`
//! ends the stream (its data says why); `event: reset` is counted; comments are heartbeats.

use anyhow::{Context as _, bail};
use hyper::Method;
use tokio::net::TcpStream;

use super::{ClientConfig, Flow, Handler};
use crate::{http::HttpConn, scan::memchr, target::Target};

/// Runs one SSE subscription (see [`super::run`]).
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
    let mut conn = HttpConn::open(stream, target, Some(config.read_buffer)).await?;
    let mut req = conn.request(Method::GET, &format!("/v1/sse?channel={channel}"), None);
    req.headers_mut().insert(
        hyper::header::ACCEPT,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    let res = conn.send(req).await.context("GET /v1/sse")?;
    let (parts, mut body) = res.into_parts();
    if !parts.status.is_success() {
        let text = conn.collect(body).await.unwrap_or_default();
        bail!(
            "GET /v1/sse answered {}: {}",
            parts.status,
            String::from_utf8_lossy(&text)
        );
    }
    let mut parser = Parser::default();
    while let Some(chunk) = conn.chunk(&mut body).await? {
        if parser.feed(&chunk, handler)? == Flow::Stop {
            return Ok(());
        }
    }
    bail!("SSE stream ended")
}

/// Incremental SSE parser. Complete blocks are parsed straight from the received chunk;
/// only an incomplete tail is copied and kept for the next chunk.
#[derive(Default)]
pub(crate) struct Parser {
    tail: Vec<u8>,
    subscribed: bool,
}

impl Parser {
    /// Consumes `chunk`, dispatching every complete block.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        handler: &mut impl Handler,
    ) -> anyhow::Result<Flow> {
        if self.tail.is_empty() {
            let (used, flow) = parse_blocks(chunk, &mut self.subscribed, handler)?;
            if flow == Flow::Continue {
                self.tail.extend_from_slice(&chunk[used..]);
            }
            return Ok(flow);
        }
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        let (used, flow) = parse_blocks(&buf, &mut self.subscribed, handler)?;
        buf.drain(..used);
        self.tail = buf;
        Ok(flow)
    }
}

/// One block's fields, as ranges of the input.
#[derive(Default)]
struct Block<'a> {
    event: Option<&'a [u8]>,
    data: Option<&'a [u8]>,
    /// Lines of a multi-line `data`, joined by `\n` (rare: this server sends one line).
    more_data: Option<Vec<u8>>,
    has_id: bool,
}

/// Parses the complete blocks of `input` in one pass over its lines; returns the bytes
/// consumed (up to the end of the last complete block).
fn parse_blocks(
    input: &[u8],
    subscribed: &mut bool,
    handler: &mut impl Handler,
) -> anyhow::Result<(usize, Flow)> {
    let mut used = 0;
    let mut pos = 0;
    let mut block = Block::default();
    while let Some(nl) = memchr(b'\n', &input[pos..]) {
        let line = &input[pos..pos + nl];
        pos += nl + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            used = pos;
            let done = std::mem::take(&mut block);
            if dispatch(done, subscribed, handler)? == Flow::Stop {
                return Ok((used, Flow::Stop));
            }
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match memchr(b':', line) {
            Some(i) => (
                &line[..i],
                line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..]),
            ),
            None => (line, &b""[..]),
        };
        match field {
            b"data" => match (block.data, &mut block.more_data) {
                (None, _) => block.data = Some(value),
                (Some(first), more) => {
                    let joined = more.get_or_insert_with(|| first.to_vec());
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                }
            },
            b"event" => block.event = Some(value),
            b"id" => block.has_id = true,
            _ => {}
        }
    }
    Ok((used, Flow::Continue))
}

fn dispatch(
    block: Block<'_>,
    subscribed: &mut bool,
    handler: &mut impl Handler,
) -> anyhow::Result<Flow> {
    let data = match (&block.more_data, block.data) {
        (Some(joined), _) => joined.as_slice(),
        (None, Some(data)) => data,
        (None, None) => {
            if block.has_id && !*subscribed {
                *subscribed = true;
                handler.subscribed();
            }
            return Ok(Flow::Continue);
        }
    };
    match block.event.unwrap_or(b"message") {
        b"disconnect" => bail!(
            "server ended the SSE stream: {}",
            String::from_utf8_lossy(data)
        ),
        b"reset" => {
            handler.reset();
            Ok(Flow::Continue)
        }
        _ => Ok(handler.event(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        subscribed: usize,
        events: Vec<String>,
        resets: usize,
    }

    impl Handler for Seen {
        fn subscribed(&mut self) {
            self.subscribed += 1;
        }
        fn event(&mut self, bytes: &[u8]) -> Flow {
            self.events
                .push(String::from_utf8_lossy(bytes).into_owned());
            Flow::Continue
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    #[test]
    fn parses_blocks_split_anywhere() {
        let wire = "retry: 2000\nid: AQ\n\n: heartbeat\n\nid: c1\nevent: t\ndata: {\"offset\":1}\n\n\
                    id: c2\nevent: reset\ndata: {}\n\nid: c3\nevent: t\ndata: {\"offset\":2}\n\n";
        for split in [1, 3, 7, wire.len()] {
            let mut p = Parser::default();
            let mut seen = Seen::default();
            for chunk in wire.as_bytes().chunks(split) {
                p.feed(chunk, &mut seen).unwrap();
            }
            assert_eq!(seen.subscribed, 1);
            assert_eq!(seen.events, ["{\"offset\":1}", "{\"offset\":2}"]);
            assert_eq!(seen.resets, 1);
        }
    }

    #[test]
    fn joins_multi_line_data_and_keeps_partial_blocks() {
        let mut p = Parser::default();
        let mut seen = Seen::default();
        p.feed(b"event: t\ndata: a\nda", &mut seen).unwrap();
        p.feed(b"ta: b\n\nevent: t\ndata: c\n", &mut seen).unwrap();
        assert_eq!(seen.events, ["a\nb"]);
        p.feed(b"\n", &mut seen).unwrap();
        assert_eq!(seen.events, ["a\nb", "c"]);
    }

    #[test]
    fn disconnect_is_an_error() {
        let mut p = Parser::default();
        let err = p
            .feed(
                b"retry: 1\nevent: disconnect\ndata: {\"code\":\"slow_consumer\"}\n\n",
                &mut Seen::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("slow_consumer"));
    }
}
