//! The publisher: `POST /v1/channels/{channel}/events` over a few keep-alive HTTP/1.1
//! connections, paced to a rate, each event's data stamped with its send time. Nchan is
//! published to by [`crate::pipelined`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::bail;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::{
    task::{JoinHandle, JoinSet},
    time::Instant,
};

use crate::{http::HttpConn, pipelined, server::Server, target::Target, tracker::unix_micros};

/// What to publish.
#[derive(Clone, Debug)]
pub struct PublishPlan {
    /// Channel name.
    pub channel: String,
    /// Events to publish; their offsets will be `1..=events` on a fresh channel.
    pub events: u64,
    /// Events per second over all connections; 0 = as fast as the server accepts.
    pub rate: f64,
    /// Size of each event's `data` JSON, bytes (at least the timestamp's ~35).
    pub size: usize,
    /// Keep-alive connections publishing concurrently (each has one request in flight).
    pub connections: usize,
    /// The events' `type`.
    pub event_type: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// The server published to. Nchan gets one pipelined connection whatever `connections`
    /// says ([`crate::pipelined`]).
    pub server: Server,
}

/// How publishing went.
#[derive(Clone, Debug, Default)]
pub struct PublishOutcome {
    /// Events accepted (201).
    pub published: u64,
    /// When the first request was sent.
    pub first_at: Option<Instant>,
    /// The same, in unix microseconds (the clock of the events' `ts_us`).
    pub first_us: Option<u64>,
    /// When the last accepted answer arrived.
    pub last_at: Option<Instant>,
    /// Failures (publishing stops at the first).
    pub errors: Vec<String>,
}

/// The `data` payload: `{"ts_us":<unix micros>,"pad":"xxx…"}`, padded to `size` bytes when
/// `size` leaves room for it.
pub fn payload(size: usize, ts_us: u64) -> String {
    let bare = format!(r#"{{"ts_us":{ts_us},"pad":""}}"#);
    let pad = size.saturating_sub(bare.len());
    let mut out = String::with_capacity(bare.len() + pad);
    out.push_str(&bare[..bare.len() - 2]);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// `{prefix}/<16 random hex digits>`: a channel no earlier run used.
pub fn fresh_channel(prefix: &str) -> String {
    use std::hash::BuildHasher as _;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{prefix}/{random:016x}")
}

/// The publish path of `channel` (`/` percent-encoded).
pub fn publish_path(channel: &str) -> String {
    format!("/v1/channels/{}/events", channel.replace('/', "%2F"))
}

/// [`publish`] running in its own task.
#[derive(Debug)]
pub struct Publishing {
    task: JoinHandle<PublishOutcome>,
    /// Accepted events so far, counted by the publishers as they go.
    progress: Arc<AtomicU64>,
}

impl Publishing {
    /// Starts publishing `plan` to `target`.
    pub fn spawn(target: &Target, plan: PublishPlan) -> Self {
        let progress = Arc::new(AtomicU64::new(0));
        let task = {
            let (target, progress) = (target.clone(), Arc::clone(&progress));
            tokio::spawn(async move { publish(&target, &plan, progress).await })
        };
        Self { task, progress }
    }

    /// Events accepted so far.
    pub fn published(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Whether every publisher has stopped (done, or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The outcome, waiting at most a second for it; publishers still running then are
    /// stopped and that is reported as an error.
    pub async fn finish(mut self) -> PublishOutcome {
        match tokio::time::timeout(Duration::from_secs(1), &mut self.task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => PublishOutcome {
                errors: vec![format!("publisher task failed: {e}")],
                ..PublishOutcome::default()
            },
            Err(_) => {
                self.task.abort();
                PublishOutcome {
                    published: self.published(),
                    errors: vec!["publisher still running when the run was stopped".into()],
                    ..PublishOutcome::default()
                }
            }
        }
    }
}

/// Publishes `plan.events` events. `progress` counts accepted events as they go.
pub async fn publish(
    target: &Target,
    plan: &PublishPlan,
    progress: Arc<AtomicU64>,
) -> PublishOutcome {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    if plan.server == Server::Nchan {
        return pipelined::publish(target, plan, progress).await;
    }
    let mut tasks = JoinSet::new();
    for _ in 0..plan.connections.max(1) {
        let (target, plan) = (target.clone(), plan.clone());
        let (next, failed, progress) = (
            Arc::clone(&next),
            Arc::clone(&failed),
            Arc::clone(&progress),
        );
        tasks.spawn(async move {
            let mut out = PublishOutcome::default();
            if let Err(e) =
                publish_on_one(&target, &plan, start, &next, &failed, &progress, &mut out).await
            {
                failed.store(true, Ordering::Relaxed);
                out.errors.push(format!("{e:#}"));
            }
            out
        });
    }
    let mut total = PublishOutcome::default();
    while let Some(joined) = tasks.join_next().await {
        let out = joined.unwrap_or_else(|e| PublishOutcome {
            errors: vec![format!("publisher task failed: {e}")],
            ..PublishOutcome::default()
        });
        total.published += out.published;
        total.first_at = [total.first_at, out.first_at].into_iter().flatten().min();
        total.first_us = [total.first_us, out.first_us].into_iter().flatten().min();
        total.last_at = [total.last_at, out.last_at].into_iter().flatten().max();
        total.errors.extend(out.errors);
    }
    total
}

async fn publish_on_one(
    target: &Target,
    plan: &PublishPlan,
    start: Instant,
    next: &AtomicU64,
    failed: &AtomicBool,
    progress: &AtomicU64,
    out: &mut PublishOutcome,
) -> anyhow::Result<()> {
    let mut conn = HttpConn::connect(target)
        .await?
        .with_api_key(plan.api_key.as_deref())?;
    let path = publish_path(&plan.channel);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.events || failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if plan.rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / plan.rate)).await;
        }
        let now_us = unix_micros();
        let body = format!(
            r#"{{"type":"{}","data":{}}}"#,
            plan.event_type,
            payload(plan.size, now_us)
        );
        let req = conn.request(
            Method::POST,
            &path,
            Some(("application/json", Bytes::from(body))),
        );
        out.first_at.get_or_insert_with(Instant::now);
        out.first_us.get_or_insert(now_us);
        let (status, answer) = conn.fetch(req).await?;
        if status != StatusCode::CREATED {
            bail!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        out.published += 1;
        out.last_at = Some(Instant::now());
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_payloads_to_size() {
        let p = payload(200, 1_767_225_600_123_456);
        assert_eq!(p.len(), 200);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["ts_us"], 1_767_225_600_123_456u64);
        assert_eq!(payload(10, 5), r#"{"ts_us":5,"pad":""}"#);
        assert_eq!(publish_path("fanout/ab"), "/v1/channels/fanout%2Fab/events");
    }
}
