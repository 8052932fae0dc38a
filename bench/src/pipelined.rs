//! The publisher for Nchan: `POST /pub/{channel}` of numbered messages
//! ([`crate::nchan::payload`]) on one HTTP/1.1 connection, pipelined: each request is
//! written at its paced time without waiting for the answers to the earlier ones, and the
//! answers are read in order as they come.
//!
//! Why not [`crate::publisher`]'s several connections with one request in flight each: the
//! bench numbers Nchan's messages itself, and requests on two connections (which may even
//! land on two nginx workers) can reach the channel in either order. One connection keeps
//! the order (nginx handles a connection's pipelined requests one after the other), and
//! pipelining keeps the pace: a slow answer under load delays the messages behind it inside
//! Nchan, where their latency counts, not inside the bench, where it would not (each
//! message is stamped as it is written) and would lower the rate Nchan is asked to carry.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    time::Instant,
};

use crate::{
    nchan,
    publisher::{PublishOutcome, PublishPlan},
    target::{self, Target},
    tracker::unix_micros,
};

/// Publishes `plan.events` messages to Nchan. `progress` counts accepted messages (answered
/// 201, or 202 while the channel had no subscriber) as they go. Publishing stops at the
/// first failure, which is in the outcome's errors.
pub async fn publish(
    target: &Target,
    plan: &PublishPlan,
    progress: Arc<AtomicU64>,
) -> PublishOutcome {
    let mut out = PublishOutcome::default();
    if let Err(e) = run(target, plan, &progress, &mut out).await {
        out.errors.push(format!("{e:#}"));
    }
    out
}

async fn run(
    target: &Target,
    plan: &PublishPlan,
    progress: &AtomicU64,
    out: &mut PublishOutcome,
) -> anyhow::Result<()> {
    let stream = target::connect(target, None)
        .await
        .with_context(|| format!("cannot connect to {}", target.addr))?;
    let (read_half, mut write_half) = stream.into_split();
    let path = nchan::publish_path(&plan.channel);
    let start = Instant::now();
    let (mut first_at, mut first_us) = (None, None);
    let (mut published, mut last_at) = (0u64, None);
    let send = async {
        for i in 0..plan.events {
            if plan.rate > 0.0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / plan.rate))
                    .await;
            }
            let now_us = unix_micros();
            let body = nchan::payload(i + 1, plan.size, now_us);
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                target.authority,
                body.len()
            );
            first_at.get_or_insert_with(Instant::now);
            first_us.get_or_insert(now_us);
            write_half
                .write_all(request.as_bytes())
                .await
                .context("sending a publish")?;
        }
        anyhow::Ok(())
    };
    let receive = async {
        let mut answers = BufReader::new(read_half);
        for _ in 0..plan.events {
            let (status, body) = read_answer(&mut answers).await?;
            if status != 201 && status != 202 {
                bail!(
                    "publish answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            published += 1;
            last_at = Some(Instant::now());
            progress.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::Ok(())
    };
    let result = tokio::try_join!(send, receive);
    (out.first_at, out.first_us) = (first_at, first_us);
    (out.published, out.last_at) = (published, last_at);
    result.map(|_| ())
}

/// Reads one HTTP/1.1 answer: its status and its body (`Content-Length` framing, which is
/// how nginx answers a publish).
///
/// # Errors
/// The connection ended, or the answer is not HTTP/1.1 with a `Content-Length`.
async fn read_answer(answers: &mut (impl AsyncBufRead + Unpin)) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if answers
        .read_line(&mut line)
        .await
        .context("reading an answer")?
        == 0
    {
        bail!("Nchan closed the publishing connection");
    }
    let status: u16 = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {line:?}"))?;
    let mut length = None;
    loop {
        line.clear();
        if answers
            .read_line(&mut line)
            .await
            .context("reading headers")?
            == 0
        {
            bail!("Nchan closed the publishing connection mid-answer");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<usize>().context("Content-Length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("a chunked answer to a publish (expected Content-Length)");
            }
        }
    }
    let mut body = vec![0; length.context("an answer without Content-Length")?];
    answers
        .read_exact(&mut body)
        .await
        .context("reading an answer's body")?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_pipelined_answers_in_order() {
        let wire: &[u8] =
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 201 Created\r\n\
                            Server: nginx\r\ncontent-length: 0\r\n\r\nHTTP/1.1 4";
        let mut answers = BufReader::new(wire);
        assert_eq!(
            read_answer(&mut answers).await.unwrap(),
            (202, b"abc".to_vec())
        );
        assert_eq!(read_answer(&mut answers).await.unwrap(), (201, Vec::new()));
        assert!(read_answer(&mut answers).await.is_err());
        let chunked: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(read_answer(&mut BufReader::new(chunked)).await.is_err());
    }
}
