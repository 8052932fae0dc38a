//! Long-poll subscriber: `GET /v1/poll` in a loop on one keep-alive connection, passing
//! back the cursor. A first `timeout=0` poll fixes the starting cursor: from then on no
//! event can be missed, so that answer counts as "subscribed".

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;

use super::{ClientConfig, Flow, Handler};
use crate::{http::HttpConn, target::Target};

/// Most events per answer (the server's `poll.max_limit` default).
const LIMIT: usize = 1000;

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
    #[serde(borrow)]
    cursor: &'a str,
    #[serde(default)]
    reset: bool,
}

/// Runs one long-poll subscription (see [`super::run`]).
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
    let mut query = format!("/v1/poll?channel={channel}&timeout=0&limit={LIMIT}");
    let mut first = true;
    loop {
        let (status, body) = conn.get(&query).await.context("GET /v1/poll")?;
        if !status.is_success() {
            bail!(
                "GET /v1/poll answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let answer: Answer<'_> = serde_json::from_slice(&body).with_context(|| {
            format!("unreadable poll answer: {}", String::from_utf8_lossy(&body))
        })?;
        if first {
            first = false;
            handler.subscribed();
        }
        if answer.reset {
            handler.reset();
        }
        for event in answer.events {
            if handler.event(event.get().as_bytes()) == Flow::Stop {
                return Ok(());
            }
        }
        query = format!(
            "/v1/poll?channel={channel}&cursor={}&timeout={}&limit={LIMIT}",
            answer.cursor, config.poll_timeout_secs
        );
    }
}
