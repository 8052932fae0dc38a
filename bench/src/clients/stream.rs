//! NDJSON streaming subscriber: `GET /v1/stream?channel=..`, one JSON value per line.
//!
//! Lines starting `{"op":` are control lines (`subscribed`, `reset`, `error`); empty lines
//! are heartbeats; every other line is an event envelope.

use anyhow::{Context as _, bail};
use hyper::Method;
use tokio::net::TcpStream;

use super::{ClientConfig, Flow, Handler, control_frame};
use crate::{http::HttpConn, scan::memchr, target::Target};

const CONTROL_PREFIX: &[u8] = br#"{"op":"#;

/// Runs one NDJSON subscription (see [`super::run`]).
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
    let req = conn.request(Method::GET, &format!("/v1/stream?channel={channel}"), None);
    let res = conn.send(req).await.context("GET /v1/stream")?;
    let (parts, mut body) = res.into_parts();
    if !parts.status.is_success() {
        let text = conn.collect(body).await.unwrap_or_default();
        bail!(
            "GET /v1/stream answered {}: {}",
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
    bail!("NDJSON stream ended")
}

/// Incremental line splitter: complete lines are read straight from the received chunk;
/// only an incomplete tail is copied and kept for the next chunk.
#[derive(Default)]
pub(crate) struct Parser {
    tail: Vec<u8>,
}

impl Parser {
    /// Consumes `chunk`, dispatching every complete line.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        handler: &mut impl Handler,
    ) -> anyhow::Result<Flow> {
        if self.tail.is_empty() {
            let (used, flow) = parse_lines(chunk, handler)?;
            if flow == Flow::Continue {
                self.tail.extend_from_slice(&chunk[used..]);
            }
            return Ok(flow);
        }
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        let (used, flow) = parse_lines(&buf, handler)?;
        buf.drain(..used);
        self.tail = buf;
        Ok(flow)
    }
}

/// Dispatches the complete lines of `input`; returns the bytes consumed.
fn parse_lines(input: &[u8], handler: &mut impl Handler) -> anyhow::Result<(usize, Flow)> {
    let mut pos = 0;
    while let Some(nl) = memchr(b'\n', &input[pos..]) {
        let line = &input[pos..pos + nl];
        pos += nl + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with(CONTROL_PREFIX) {
            control_frame(line, handler)?;
        } else if handler.event(line) == Flow::Stop {
            return Ok((pos, Flow::Stop));
        }
    }
    Ok((pos, Flow::Continue))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(usize, usize);

    impl Handler for Count {
        fn subscribed(&mut self) {
            self.0 += 1;
        }
        fn event(&mut self, _: &[u8]) -> Flow {
            self.1 += 1;
            if self.1 == 2 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        }
    }

    #[test]
    fn splits_lines_and_stops() {
        let wire = "{\"op\":\"subscribed\",\"channel\":\"c\",\"offset\":0,\"cursor\":\"x\"}\n\n{\"id\":\"c:1\"}\n{\"id\"";
        let mut p = Parser::default();
        let mut h = Count(0, 0);
        assert_eq!(p.feed(wire.as_bytes(), &mut h).unwrap(), Flow::Continue);
        assert_eq!(p.feed(b":\"c:2\"}\n", &mut h).unwrap(), Flow::Stop);
        assert_eq!((h.0, h.1), (1, 2));
        let err = p
            .feed(
                b"{\"op\":\"error\",\"error\":{\"code\":\"slow_consumer\"}}\n",
                &mut h,
            )
            .unwrap_err();
        assert!(err.to_string().contains("slow_consumer"));
    }
}
