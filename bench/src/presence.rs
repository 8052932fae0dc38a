//! The `presence` scenario: hold N presence members on one channel (A) and report what
//! holding them costs the server, how long `GET .../presence` and `.../presence/stats`
//! take, and what members joining and leaving A do to the delivery latency of another
//! channel (B), measured with `fanout` once without churn and once with it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use hyper::Method;
use serde::Serialize;
use tokio::{sync::watch, task::JoinSet, time::Instant};

use crate::{
    clients::{self, ClientConfig, Flow, Handler, Transport},
    fanout::{self, FanoutOptions, FanoutTransport},
    http::HttpConn,
    limits,
    procstat::{CpuMeter, Proc},
    publisher,
    stats::Latency,
    swarm::{Swarm, SwarmConfig},
    target::{self, DEFAULT_PER_SOURCE_IP, Sources, Target},
};

/// Options of `presence`.
#[derive(Clone, Debug, clap::Args)]
pub struct PresenceOptions {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// Server process id (RSS and CPU from /proc).
    #[arg(long)]
    pub pid: u32,
    /// Members to hold on channel A (at most ~15k per bench process under a 20000
    /// open-files limit).
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// Transport of the members and of the churn: ws, sse or stream.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Channel A is `{prefix}/{random}`: the prefix must be in a namespace with
    /// `presence = true` (with `join_leave = true` or not: both are worth measuring).
    #[arg(long, default_value = "pbench")]
    pub channel_prefix: String,
    /// `GET .../presence` and `.../presence/stats` requests timed, each.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Subscribers of channel B.
    #[arg(long, default_value_t = 5)]
    pub b_subscribers: usize,
    /// Events published on B per phase.
    #[arg(long, default_value_t = 200)]
    pub b_events: u64,
    /// Events per second published on B.
    #[arg(long, default_value_t = 20.0)]
    pub b_rate: f64,
    /// Members joining (and at once leaving: their connection closes once subscribed) A per
    /// second during the churn phase; with `join_leave`, each join and leave is pushed to
    /// every member of A. 0 skips the phase.
    #[arg(long, default_value_t = 20.0)]
    pub churn: f64,
    /// Seconds to let the server settle after the last member joined.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Source addresses: `auto` (rotate 127.0.0.2.. for a loopback server), `none`, or a
    /// comma-separated list.
    #[arg(long, default_value = "auto")]
    pub source_ips: String,
    /// Give up when no member got subscribed for this many seconds.
    #[arg(long, default_value_t = 20)]
    pub stall_secs: u64,
}

/// Result of `presence`.
#[derive(Clone, Debug, Serialize)]
pub struct PresenceReport {
    /// `"presence"`.
    pub scenario: &'static str,
    /// Transport of the members.
    pub transport: &'static str,
    /// Members asked for.
    pub members: usize,
    /// Channel A.
    pub channel: String,
    /// Seconds to open every member.
    pub open_secs: f64,
    /// Seconds until every member had joined and received every join pushed to it.
    pub joined_secs: f64,
    /// Server CPU seconds while the members joined (until `joined_secs`).
    pub join_cpu_secs: f64,
    /// Events the members received while joining (with `join_leave`, ~members²/2 joins).
    pub join_events_received: u64,
    /// Server RSS before the members and after they settled.
    pub server_rss_before_kib: u64,
    /// See `server_rss_before_kib`.
    pub server_rss_after_kib: u64,
    /// `(after - before) / members`: a member's connection and its presence entry.
    pub server_kib_per_member: f64,
    /// Members `GET .../presence` listed (should be `members`).
    pub listed: usize,
    /// Bytes of that answer.
    pub presence_body_bytes: usize,
    /// `{clients, users}` of `GET .../presence/stats`.
    pub stats: serde_json::Value,
    /// Time of `GET .../presence`, over `requests` requests.
    pub presence_get: Latency,
    /// Time of `GET .../presence/stats`.
    pub stats_get: Latency,
    /// Channel B's delivery latency without churn.
    pub b_quiet: Phase,
    /// Channel B's delivery latency while members join and leave A.
    pub b_churn: Option<Phase>,
    /// Joins (each followed by its leave) done on A during the churn phase.
    pub churn_joins: u64,
    /// Achieved joins per second.
    pub churn_rate: f64,
    /// Churn members that failed (not subscribed within 10 s, or refused).
    pub churn_failures: u64,
    /// Errors, first few.
    pub errors: Vec<String>,
    /// No loss on B, every member listed, no failure.
    pub ok: bool,
}

/// One `fanout` run on channel B.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// Publish → receive latency on B.
    pub latency: Latency,
    /// Events delivered on B over all its subscribers.
    pub delivered: u64,
    /// Events lost on B.
    pub lost: u64,
    /// Server CPU seconds over the phase.
    pub server_cpu_secs: f64,
    /// Seconds of the phase.
    pub window_secs: f64,
    /// Whether the fanout run found no problem.
    pub ok: bool,
}

impl PresenceReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let phase = |p: &Phase| {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} delivered, {} lost, server CPU {:.2}s over {:.1}s",
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms,
                p.delivered,
                p.lost,
                p.server_cpu_secs,
                p.window_secs
            )
        };
        let mut s = format!(
            "presence/{}: {} members on {} opened in {:.1}s, all joins delivered in {:.1}s (server CPU {:.1}s, {} join events received)\n\
             server RSS {} -> {} KiB: {:.2} KiB per member (connection + presence entry)\n\
             GET presence: {} members, {} bytes, p50 {:.2} ms, p99 {:.2} ms; GET stats {}: p50 {:.3} ms, p99 {:.3} ms\n\
             channel B quiet: {}\n",
            self.transport,
            self.members,
            self.channel,
            self.open_secs,
            self.joined_secs,
            self.join_cpu_secs,
            self.join_events_received,
            self.server_rss_before_kib,
            self.server_rss_after_kib,
            self.server_kib_per_member,
            self.listed,
            self.presence_body_bytes,
            self.presence_get.p50_ms,
            self.presence_get.p99_ms,
            self.stats,
            self.stats_get.p50_ms,
            self.stats_get.p99_ms,
            phase(&self.b_quiet),
        );
        if let Some(churn) = &self.b_churn {
            s.push_str(&format!(
                "channel B with {} joins+leaves on A ({:.1}/s, {} failed): {}\n",
                self.churn_joins,
                self.churn_rate,
                self.churn_failures,
                phase(churn)
            ));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!("errors: {:?}\n", self.errors));
        }
        s.push_str(if self.ok { "ok" } else { "NOT OK" });
        s
    }
}

/// A member of A: counts what it receives (joins and leaves of the others).
#[derive(Debug)]
struct Member {
    received: Arc<AtomicU64>,
}

impl Handler for Member {
    fn subscribed(&mut self) {}

    fn event(&mut self, _: &[u8]) -> Flow {
        self.received.fetch_add(1, Ordering::Relaxed);
        Flow::Continue
    }
}

/// A churning member: says when it is subscribed (the server joined it before answering),
/// and is then dropped, which closes its connection: it leaves.
struct JoinOnce(Option<tokio::sync::oneshot::Sender<()>>);

impl Handler for JoinOnce {
    fn subscribed(&mut self) {
        if let Some(joined) = self.0.take() {
            let _ = joined.send(());
        }
    }

    fn event(&mut self, _: &[u8]) -> Flow {
        Flow::Continue
    }
}

/// Runs `presence`.
///
/// # Errors
/// Bad options, an unreachable server or process, or members that could not join.
pub async fn run(opts: &PresenceOptions) -> anyhow::Result<PresenceReport> {
    if opts.transport == Transport::Poll {
        bail!("a long-poll is no presence member: use ws, sse or stream");
    }
    if opts.members == 0 || opts.requests == 0 {
        bail!("--members and --requests must be at least 1");
    }
    if let Some(limit) = limits::read()
        && (opts.members + opts.b_subscribers + 64) as u64 + limits::HEADROOM > limit.soft
    {
        bail!("{}", limits::too_many_message(opts.members));
    }
    let target = Target::parse(&opts.url)?;
    let sources = Sources::parse(&opts.source_ips, &target, DEFAULT_PER_SOURCE_IP)?;
    let server = Proc::pid(opts.pid);
    server.check()?;
    let channel = publisher::fresh_channel(&opts.channel_prefix);
    let client = ClientConfig {
        read_buffer: 4096,
        ..ClientConfig::default()
    };

    // 1. The members join A.
    let rss_before = server.rss_kib()?;
    let received = Arc::new(AtomicU64::new(0));
    let members = (0..opts.members)
        .map(|_| {
            let handler = Member {
                received: Arc::clone(&received),
            };
            (opts.transport, channel.clone(), handler)
        })
        .collect();
    let config = SwarmConfig {
        targets: vec![target.clone()],
        sources: sources.clone(),
        client: client.clone(),
        concurrency: opts.concurrency,
    };
    let cpu = CpuMeter::start(&server)?;
    let started = Instant::now();
    let mut swarm = Swarm::spawn(&config, members);
    swarm
        .wait_subscribed(Duration::from_secs(opts.stall_secs))
        .await?;
    let open_secs = started.elapsed().as_secs_f64();
    let mut errors = Vec::new();
    let mut conn = HttpConn::connect(&target).await?;
    // Joined once listed: the join of the last member may trail its `subscribed`.
    let listed_path = format!("/v1/channels/{channel}/presence");
    let stats_path = format!("{listed_path}/stats");
    let deadline = Instant::now() + Duration::from_secs(opts.stall_secs);
    let stats = loop {
        let (status, body) = conn
            .fetch(conn.request(Method::GET, &stats_path, None))
            .await?;
        let stats: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("{status}: {}", String::from_utf8_lossy(&body)))?;
        if !status.is_success() {
            bail!(
                "GET {stats_path}: {status} {stats} (is {} in a presence namespace?)",
                opts.channel_prefix
            );
        }
        if stats["clients"] == opts.members || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // With `join_leave`, the members still have joins queued: wait until none arrives for
    // a second, so that what follows is measured on a quiet server.
    let mut seen = received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = received.load(Ordering::Relaxed);
        if now == seen || Instant::now() > deadline + Duration::from_secs(600) {
            break;
        }
        seen = now;
    }
    let join_cpu_secs = cpu.read()?.0;
    let open_secs_all = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(opts.settle_secs)).await;
    swarm.drain_signals();
    let rss_after = server.rss_kib()?;
    let join_events_received = received.load(Ordering::Relaxed);

    // 2. The presence endpoints, timed, on a fresh connection (the server may have closed
    // the first one while it sat idle during the settling).
    let mut conn = HttpConn::connect(&target).await?;
    let mut listed = 0;
    let mut presence_body_bytes = 0;
    let mut presence_samples = Vec::with_capacity(opts.requests);
    let mut stats_samples = Vec::with_capacity(opts.requests);
    for _ in 0..opts.requests {
        let t = Instant::now();
        let (status, body) = conn
            .fetch(conn.request(Method::GET, &listed_path, None))
            .await?;
        presence_samples.push(micros(t));
        if !status.is_success() {
            bail!("GET {listed_path}: {status}");
        }
        presence_body_bytes = body.len();
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        listed = value["members"].as_array().map_or(0, Vec::len);
        let t = Instant::now();
        let (status, _) = conn
            .fetch(conn.request(Method::GET, &stats_path, None))
            .await?;
        stats_samples.push(micros(t));
        if !status.is_success() {
            bail!("GET {stats_path}: {status}");
        }
    }

    // 3. Channel B, quiet, then while members join and leave A.
    let b = |transport| {
        let mut b = FanoutOptions::new(
            opts.url.clone(),
            transport,
            opts.b_subscribers,
            opts.b_events,
            opts.pid,
        );
        b.rate = opts.b_rate;
        b.source_ips = "none".into();
        b
    };
    let b_transport = match opts.transport {
        Transport::Ws => FanoutTransport::Ws,
        Transport::Stream => FanoutTransport::Stream,
        _ => FanoutTransport::Sse,
    };
    let b_quiet = phase(&fanout::run(&b(b_transport)).await?);
    let (mut b_churn, mut churn_joins, mut churn_rate, mut churn_failures) = (None, 0, 0.0, 0);
    if opts.churn > 0.0 {
        let (stop, stopped) = watch::channel(false);
        let churning = tokio::spawn(churn(
            target.clone(),
            sources.clone(),
            opts.members + opts.b_subscribers,
            opts.transport,
            channel.clone(),
            client.clone(),
            opts.churn,
            stopped,
        ));
        let churn_started = Instant::now();
        let run = fanout::run(&b(b_transport)).await;
        let _ = stop.send(true);
        let (joins, failures) = churning.await.context("the churn task")?;
        let secs = churn_started.elapsed().as_secs_f64();
        b_churn = Some(phase(&run?));
        churn_joins = joins;
        churn_failures = failures;
        churn_rate = joins as f64 / secs;
    }

    errors.extend(swarm.end_errors.clone());
    let dropped = swarm.ended;
    swarm.stop(Duration::from_secs(5)).await;
    if dropped > 0 {
        errors.push(format!("{dropped} members dropped"));
    }
    let ok = listed == opts.members
        && dropped == 0
        && churn_failures == 0
        && b_quiet.ok
        && b_churn.as_ref().is_none_or(|p| p.ok);
    Ok(PresenceReport {
        scenario: "presence",
        transport: opts.transport.name(),
        members: opts.members,
        channel,
        open_secs,
        joined_secs: open_secs_all,
        join_cpu_secs,
        join_events_received,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_kib_per_member: (rss_after as f64 - rss_before as f64) / opts.members as f64,
        listed,
        presence_body_bytes,
        stats,
        presence_get: Latency::from_micros(&mut presence_samples),
        stats_get: Latency::from_micros(&mut stats_samples),
        b_quiet,
        b_churn,
        churn_joins,
        churn_rate,
        churn_failures,
        errors,
        ok,
    })
}

fn micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

fn phase(r: &crate::report::FanoutReport) -> Phase {
    Phase {
        latency: r.latency,
        delivered: r.delivered,
        lost: r.lost,
        server_cpu_secs: r.server_cpu_secs,
        window_secs: r.window_secs,
        ok: r.ok,
    }
}

/// Members joining A at `rate` per second, each leaving once its own join comes back,
/// until `stop`; returns the joins done and the members that failed.
#[allow(clippy::too_many_arguments)]
async fn churn(
    target: Target,
    sources: Sources,
    first_index: usize,
    transport: Transport,
    channel: String,
    client: ClientConfig,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) -> (u64, u64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = JoinSet::new();
    let mut i = first_index;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let (target, channel, client) = (target.clone(), channel.clone(), client.clone());
        let source = sources.for_index(i);
        i += 1;
        tasks.spawn(async move {
            let (joined, subscribed) = tokio::sync::oneshot::channel();
            let once = async {
                let stream = target::connect(&target, source)
                    .await
                    .map_err(anyhow::Error::from)?;
                let mut handler = JoinOnce(Some(joined));
                clients::run(transport, stream, &target, &channel, &client, &mut handler).await
            };
            tokio::time::timeout(Duration::from_secs(10), async {
                tokio::select! {
                    _ = once => false,
                    r = subscribed => r.is_ok(),
                }
            })
            .await
            .unwrap_or(false)
        });
    }
    let (mut joins, mut failures) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        if matches!(done, Ok(true)) {
            joins += 1;
        } else {
            failures += 1;
        }
    }
    (joins, failures)
}
