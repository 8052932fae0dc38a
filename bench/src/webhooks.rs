//! The `webhooks` scenario: register an endpoint pointing at the built-in receiver, publish
//! E timestamped events on its channel, wait for every signed delivery, delete the endpoint;
//! report deliveries/s, end-to-end latency, duplicates, loss and bad signatures.
//!
//! With `--dead-endpoints N` it also registers N endpoints on the same channel that point at
//! a [`DeadListener`] (accepts TCP, never answers), so every event is also owed to N dead
//! endpoints, and the figures show what they cost the healthy one.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use switchyard_protocol::webhook::WebhookSecret;
use tokio::net::TcpListener;

use crate::{
    http::HttpConn,
    procstat::{self, CpuMeter, Proc},
    publisher::{self, PublishOutcome, PublishPlan, Publishing},
    receiver::{Bound, Deliveries},
    report::WebhooksReport,
    server::Server,
    stall::StallWatch,
    stats::{Latency, per_sec},
    target::Target,
};

/// The event type published.
pub const EVENT_TYPE: &str = "bench.tick";
/// What to tell someone whose server refuses the loopback receiver.
pub const PRIVATE_NETWORKS_HINT: &str = "the server's SSRF guard refuses webhook URLs on \
     loopback/private addresses: start it with SWITCHYARD_WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true \
     (webhooks.allow_private_networks = true) to benchmark with the built-in receiver";

/// Options of `webhooks`.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhooksOptions {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// Events to publish (one delivery each).
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Events per second to publish; 0 = as fast as `--concurrency` publishers manage.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publisher connections (one publish in flight on each).
    #[arg(long, default_value_t = publisher_default())]
    pub concurrency: usize,
    /// Size of each event's data (JSON with a send timestamp and padding), bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Server process id: its CPU time and peak RSS are read from /proc/PID.
    #[arg(long)]
    pub pid: u32,
    /// Sent as `Authorization: Bearer <KEY>` on every API call.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Where the built-in receiver listens; the server must reach it there.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver: SocketAddr,
    /// Channel to publish on [default: a fresh `bench/wh/<random>`]. It must be new:
    /// offsets are checked to be exactly 1..=events.
    #[arg(long)]
    pub channel: Option<String>,
    /// Stop and report when nothing was published or delivered for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub stall_secs: u64,
    /// Also register this many endpoints on the same channel pointing at a local listener
    /// that accepts connections and never answers (each of their attempts runs into the
    /// server's `webhooks.attempt_timeout_secs`). The figures stay the healthy receiver's.
    #[arg(long, default_value_t = 0)]
    pub dead_endpoints: usize,
}

const fn publisher_default() -> usize {
    crate::fanout::DEFAULT_PUBLISHERS
}

impl WebhooksOptions {
    /// Options with the command line's defaults.
    pub fn new(url: impl Into<String>, events: u64, pid: u32) -> Self {
        Self {
            url: url.into(),
            events,
            rate: 0.0,
            concurrency: publisher_default(),
            size: 200,
            pid,
            api_key: None,
            receiver: SocketAddr::from(([127, 0, 0, 1], 0)),
            channel: None,
            stall_secs: 10,
            dead_endpoints: 0,
        }
    }
}

/// The `201` answer to a registration (the fields the bench needs).
#[derive(Debug, Deserialize)]
struct Registered {
    id: String,
    secret: String,
}

/// The endpoint's management calls.
struct Endpoints<'a> {
    target: &'a Target,
    api_key: Option<&'a str>,
}

impl Endpoints<'_> {
    async fn conn(&self) -> anyhow::Result<HttpConn> {
        HttpConn::connect(self.target)
            .await?
            .with_api_key(self.api_key)
    }

    /// `POST /v1/webhooks` for `url` on `channel`.
    async fn register(&self, url: &str, channel: &str) -> anyhow::Result<Registered> {
        let mut conn = self.conn().await?;
        let body = serde_json::json!({"url": url, "channels": [channel]}).to_string();
        let req = conn.request(
            Method::POST,
            "/v1/webhooks",
            Some(("application/json", Bytes::from(body))),
        );
        let (status, answer) = conn.fetch(req).await.context("registering the endpoint")?;
        let text = String::from_utf8_lossy(&answer);
        if status != StatusCode::CREATED {
            if is_ssrf_refusal(&text) {
                bail!("{PRIVATE_NETWORKS_HINT} (registration answered {status}: {text})");
            }
            bail!("registering the webhook endpoint answered {status}: {text}");
        }
        serde_json::from_slice(&answer)
            .with_context(|| format!("unexpected registration answer: {text}"))
    }

    /// The last attempt errors of the endpoint's recent deliveries, for a run where
    /// deliveries went missing.
    async fn attempt_errors(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let mut conn = self.conn().await?;
        let (status, answer) = conn
            .get(&format!("/v1/webhooks/{id}/deliveries?limit=20"))
            .await?;
        if status != StatusCode::OK {
            bail!(
                "the delivery log answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let log: serde_json::Value = serde_json::from_slice(&answer)?;
        let mut errors: Vec<String> = log["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["attempt_log"].as_array()?.last()?["error"].as_str())
            .map(str::to_owned)
            .collect();
        errors.dedup();
        Ok(errors)
    }

    /// `DELETE /v1/webhooks/{id}`.
    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let req = conn.request(Method::DELETE, &format!("/v1/webhooks/{id}"), None);
        let (status, answer) = conn.fetch(req).await?;
        if status != StatusCode::NO_CONTENT {
            bail!(
                "deleting endpoint {id} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(())
    }

    /// Deletes each of `ids`; returns what went wrong.
    async fn delete_all(&self, ids: &[String]) -> Vec<String> {
        let mut errors = Vec::new();
        for id in ids {
            if let Err(e) = self.delete(id).await {
                errors.push(format!("{e:#}"));
            }
        }
        errors
    }
}

/// Whether a refusal is the SSRF guard's (its messages name the setting or the guard).
fn is_ssrf_refusal(text: &str) -> bool {
    text.contains("allow_private_networks") || text.contains("SSRF") || text.contains("non-public")
}

/// A local TCP listener that accepts every connection and never reads or answers: a
/// webhook endpoint that is down in the worst way (no refusal, no reset, only the
/// attempt timeout). The sockets stay open until it is stopped.
#[derive(Debug)]
pub struct DeadListener {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DeadListener {
    /// Listens on a free loopback port.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the dead endpoints' listener")?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            // Held, never read: the server's request sits unread until its timeout.
            let mut held = Vec::new();
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    held.push(stream);
                }
            }
        });
        Ok(Self {
            addr,
            accepted,
            task,
        })
    }

    /// The URL of dead endpoint `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}/dead/{i}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection it holds.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Runs `webhooks`.
///
/// # Errors
/// Bad options, an unreachable server or process, or a refused registration (with the
/// reason; see [`PRIVATE_NETWORKS_HINT`]). Loss, bad signatures and stalls are not errors:
/// they are in the report (`ok: false`).
pub async fn run(opts: &WebhooksOptions) -> anyhow::Result<WebhooksReport> {
    if opts.events == 0 || opts.concurrency == 0 {
        bail!("--events and --concurrency must be at least 1");
    }
    if !(opts.rate >= 0.0 && opts.rate.is_finite()) {
        bail!("--rate must be a number >= 0");
    }
    let target = Target::parse(&opts.url)?;
    let server = Proc::pid(opts.pid);
    server.check()?;
    let channel = opts
        .channel
        .clone()
        .unwrap_or_else(|| publisher::fresh_channel("bench/wh"));
    let endpoints = Endpoints {
        target: &target,
        api_key: opts.api_key.as_deref(),
    };
    let dead = if opts.dead_endpoints > 0 {
        Some(DeadListener::start().await?)
    } else {
        None
    };
    let mut dead_ids = Vec::with_capacity(opts.dead_endpoints);
    if let Some(listener) = &dead {
        for i in 0..opts.dead_endpoints {
            match endpoints.register(&listener.url(i), &channel).await {
                Ok(r) => dead_ids.push(r.id),
                Err(e) => {
                    endpoints.delete_all(&dead_ids).await;
                    return Err(e);
                }
            }
        }
    }
    let bound = Bound::bind(opts.receiver).await?;
    let receiver_url = bound.url();
    let registered = match endpoints.register(&receiver_url, &channel).await {
        Ok(r) => r,
        Err(e) => {
            endpoints.delete_all(&dead_ids).await;
            return Err(e);
        }
    };
    let secret = WebhookSecret::parse(&registered.secret)
        .with_context(|| format!("the server's secret for {} is unusable", registered.id))?;
    let receiver = bound.start(secret, opts.events);

    let cpu = CpuMeter::start(&server)?;
    let plan = PublishPlan {
        channel: channel.clone(),
        events: opts.events,
        rate: opts.rate,
        size: opts.size,
        connections: opts.concurrency,
        event_type: EVENT_TYPE.into(),
        api_key: opts.api_key.clone(),
        server: Server::Switchyard,
    };
    let publishing = Publishing::spawn(&target, plan);

    // Wait for every delivery, or for nothing to move for `stall`.
    let mut watch = StallWatch::new(Duration::from_secs(opts.stall_secs));
    let mut stalled = false;
    // Done once publishing ended and every accepted event was delivered (publishing stops
    // at its first refusal, so that may be fewer than `--events`).
    while !(publishing.is_finished() && receiver.distinct() >= publishing.published()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if watch.is_stalled((receiver.distinct(), publishing.published())) {
            stalled = true;
            break;
        }
    }
    let (server_cpu, bench_cpu) = cpu.read()?;
    let outcome = publishing.finish().await;
    let mut deliveries = receiver.stop().await;

    let mut errors = outcome.errors.clone();
    errors.append(&mut deliveries.errors);
    if deliveries.tracker.distinct < outcome.published {
        match endpoints.attempt_errors(&registered.id).await {
            Ok(attempts) => {
                if attempts.iter().any(|e| is_ssrf_refusal(e)) {
                    errors.push(format!("deliveries refused: {PRIVATE_NETWORKS_HINT}"));
                }
                errors.extend(
                    attempts
                        .into_iter()
                        .take(3)
                        .map(|e| format!("delivery attempt: {e}")),
                );
            }
            Err(e) => errors.push(format!("reading the delivery log: {e:#}")),
        }
    }
    dead_ids.push(registered.id.clone());
    errors.extend(endpoints.delete_all(&dead_ids).await);
    let dead_connections = dead.map_or(0, |listener| {
        let accepted = listener.accepted();
        listener.stop();
        accepted
    });
    Ok(report(
        opts,
        Run {
            channel,
            endpoint_id: registered.id,
            dead_connections,
            receiver_url,
            outcome,
            deliveries,
            stalled,
            server_cpu,
            bench_cpu,
            server,
            errors,
        },
    ))
}

/// What a run gathered, for [`report`].
struct Run {
    channel: String,
    endpoint_id: String,
    dead_connections: u64,
    receiver_url: String,
    outcome: PublishOutcome,
    deliveries: Deliveries,
    stalled: bool,
    server_cpu: f64,
    bench_cpu: f64,
    server: Proc,
    errors: Vec<String>,
}

fn report(opts: &WebhooksOptions, mut run: Run) -> WebhooksReport {
    let t = &mut run.deliveries.tracker;
    let publish_secs = match (run.outcome.first_at, run.outcome.last_at) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    // Both ends on the unix clock: `ts_us` stamps and receive times come from it too.
    let window_secs = match (t.last_us, run.outcome.first_us) {
        (Some(last), Some(first)) => last.saturating_sub(first) as f64 / 1e6,
        _ => 0.0,
    };
    let mut r = WebhooksReport {
        scenario: "webhooks",
        events: opts.events,
        rate: opts.rate,
        size: opts.size,
        publishers: opts.concurrency,
        channel: run.channel,
        endpoint_id: run.endpoint_id,
        receiver_url: run.receiver_url,
        dead_endpoints: opts.dead_endpoints,
        dead_connections: run.dead_connections,
        published: run.outcome.published,
        publish_secs,
        publish_rate: per_sec(run.outcome.published, publish_secs),
        requests: run.deliveries.requests,
        delivered: t.distinct,
        window_secs,
        deliveries_per_sec: per_sec(t.distinct, window_secs),
        latency: Latency::from_micros(&mut t.samples),
        duplicates: run.deliveries.duplicates,
        duplicate_offsets: t.duplicated,
        unexpected: t.unexpected + t.malformed,
        // Accepted by the server, never delivered; events never accepted show in `published`.
        lost: run.outcome.published.saturating_sub(t.distinct),
        bad_signatures: run.deliveries.bad_signatures,
        stalled: run.stalled,
        server_cpu_secs: run.server_cpu,
        deliveries_per_server_cpu_sec: per_sec(t.distinct, run.server_cpu),
        server_rss_kib: run.server.rss_kib().unwrap_or(0),
        server_peak_rss_kib: run.server.peak_rss_kib().unwrap_or(0),
        bench_cpu_secs: run.bench_cpu,
        bench_busy: procstat::runtime_share(run.bench_cpu, window_secs),
        errors: run.errors,
        ok: false,
    };
    r.errors.truncate(8);
    r.ok = !r.stalled
        && r.published == opts.events
        && r.lost == 0
        && r.bad_signatures == 0
        && r.duplicate_offsets == 0
        && r.unexpected == 0
        && r.errors.is_empty();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_ssrf_guard() {
        assert!(is_ssrf_refusal(
            r#"{"error":{"code":"invalid_request","message":"`url` points to a non-public address (127.0.0.1); set webhooks.allow_private_networks to allow it"}}"#
        ));
        assert!(is_ssrf_refusal(
            "refused by the SSRF guard: the host resolves only to non-public addresses"
        ));
        assert!(!is_ssrf_refusal("cannot connect: connection refused"));
    }
}
