//! The `fanout` scenario: N subscribers on one fresh channel, one publisher sending E
//! timestamped events at a rate; every subscriber checks it got offsets `1..=E` exactly once
//! and in order, and samples publish → receive latency.
//!
//! Against a cluster (the Redis engine), the subscribers can be spread over several nodes
//! (`--url A,B`) and the events published to another node (`--publish-url`), so the figures
//! include the hop through Redis; the report then adds each node's share.
//!
//! Against Nchan (`--server nchan`), the same run over Nchan's WebSocket and EventSource
//! endpoints: the bench numbers its messages itself ([`crate::nchan`]), and the server's
//! CPU is summed over the nginx workers given to `--pid`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::time::Instant;

use crate::{
    clients::{ClientConfig, Flow, Handler, Transport},
    limits,
    procstat::{self, CpuMeter, Proc},
    publisher::{self, PublishPlan, Publishing},
    report::{FanoutReport, TransportShare},
    scrape::{self, Metrics},
    server::Server,
    stall::StallWatch,
    stats::{Latency, per_sec},
    swarm::{Swarm, SwarmConfig},
    target::{DEFAULT_PER_SOURCE_IP, Sources, Target},
    tracker::{Tracker, unix_micros},
};

/// Publisher connections by default.
pub const DEFAULT_PUBLISHERS: usize = 8;

/// `--transport` of `fanout`: one transport for all, or `mix` (round-robin over all four).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FanoutTransport {
    /// WebSocket.
    Ws,
    /// Server-Sent Events.
    Sse,
    /// NDJSON streaming.
    Stream,
    /// Long-poll.
    Poll,
    /// Subscriber i uses ws, sse, stream, poll for i % 4 = 0, 1, 2, 3.
    Mix,
}

impl FanoutTransport {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Sse => "sse",
            Self::Stream => "stream",
            Self::Poll => "poll",
            Self::Mix => "mix",
        }
    }

    fn for_index(self, i: usize) -> Transport {
        match self {
            Self::Ws => Transport::Ws,
            Self::Sse => Transport::Sse,
            Self::Stream => Transport::Stream,
            Self::Poll => Transport::Poll,
            Self::Mix => Transport::ALL[i % Transport::ALL.len()],
        }
    }
}

/// Options of `fanout`.
#[derive(Clone, Debug, clap::Args)]
pub struct FanoutOptions {
    /// The server: switchyard, or Nchan (WebSocket and SSE only; one node; started with
    /// `bench/nchan/run.sh`, whose worker pids go to `--pid`).
    #[arg(long, value_enum, default_value_t = Server::Switchyard)]
    pub server: Server,
    /// Server base URL, e.g. http://127.0.0.1:8080. Several, comma-separated (nodes of one
    /// cluster sharing a Redis engine): the subscribers are spread over them in equal
    /// contiguous blocks (the first N/2 on the first node, ...).
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    /// Node the publisher sends its events to [default: the first --url]. Another node of
    /// the cluster than the subscribers' measures cross-node publish → deliver.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Subscriber transport: ws, sse, stream, poll, or mix.
    #[arg(long, value_enum, default_value_t = FanoutTransport::Ws)]
    pub transport: FanoutTransport,
    /// Subscribers on the channel (over all nodes).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Events per second to publish; 0 = as fast as the server accepts.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Events to publish.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// Size of each event's data (JSON with a send timestamp and padding), bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Server process id: its CPU time and peak RSS are read from /proc/PID. With several
    /// nodes, every node's, comma-separated (including the publish node's): CPU time and
    /// RSS are summed over them, and CPU is also reported per process.
    #[arg(long = "pid", value_delimiter = ',', required = true)]
    pub pids: Vec<u32>,
    /// Process id of the Redis (or Valkey) server behind the nodes: its CPU time over the
    /// run and its RSS are reported apart (not in the server's figures).
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Keep-alive connections the publisher uses (one request in flight on each). At
    /// `--rate 0` fewer than ~8 leave the publisher waiting on round trips instead of
    /// finding the server's limit; at a fixed rate any count that keeps up will do. Nchan
    /// always gets one pipelined connection, which keeps its messages in order.
    #[arg(long, default_value_t = DEFAULT_PUBLISHERS)]
    pub publishers: usize,
    /// Channel to use [default: a fresh `fanout/<random>`]. It must be new: offsets are
    /// checked to be exactly 1..=events.
    #[arg(long)]
    pub channel: Option<String>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Client read buffer per connection, bytes.
    #[arg(long, default_value_t = 16384)]
    pub read_buffer: usize,
    /// Long-poll hold asked of the server, seconds.
    #[arg(long, default_value_t = 25)]
    pub poll_timeout_secs: u64,
    /// Source addresses: `auto` (rotate 127.0.0.2.. for a loopback server), `none`, or a
    /// comma-separated list.
    #[arg(long, default_value = "auto")]
    pub source_ips: String,
    /// Connections per source address before rotating to the next.
    #[arg(long, default_value_t = DEFAULT_PER_SOURCE_IP)]
    pub per_source_ip: usize,
    /// Stop and report when nothing was published or delivered for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub stall_secs: u64,
}

impl FanoutOptions {
    /// Options with the command line's defaults, for one server node.
    pub fn new(
        url: impl Into<String>,
        transport: FanoutTransport,
        subscribers: usize,
        events: u64,
        pid: u32,
    ) -> Self {
        Self {
            server: Server::Switchyard,
            url: vec![url.into()],
            publish_url: None,
            transport,
            subscribers,
            rate: 0.0,
            events,
            size: 200,
            pids: vec![pid],
            redis_pid: None,
            publishers: DEFAULT_PUBLISHERS,
            channel: None,
            concurrency: 256,
            read_buffer: 16384,
            poll_timeout_secs: 25,
            source_ips: "auto".into(),
            per_source_ip: DEFAULT_PER_SOURCE_IP,
            stall_secs: 10,
        }
    }
}

/// The nodes of a run: where subscribers connect, where events are published, and every
/// distinct one (for `/metrics`).
struct Nodes {
    subscribe: Vec<Target>,
    publish: Target,
    all: Vec<Target>,
}

impl Nodes {
    fn parse(opts: &FanoutOptions) -> anyhow::Result<Self> {
        let subscribe = opts
            .url
            .iter()
            .map(|u| Target::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let Some(first) = subscribe.first() else {
            bail!("--url needs at least one server URL");
        };
        let publish = match &opts.publish_url {
            Some(u) => Target::parse(u).context("--publish-url")?,
            None => first.clone(),
        };
        let mut all: Vec<Target> = Vec::new();
        for t in subscribe.iter().chain(std::iter::once(&publish)) {
            if !all.iter().any(|a| a.addr == t.addr) {
                all.push(t.clone());
            }
        }
        Ok(Self {
            subscribe,
            publish,
            all,
        })
    }

    /// Whether the run involves more than one node.
    fn several(&self) -> bool {
        self.all.len() > 1
    }
}

/// `/metrics` of every node.
async fn fetch_all(nodes: &[Target]) -> anyhow::Result<Vec<Metrics>> {
    let mut out = Vec::with_capacity(nodes.len());
    for t in nodes {
        out.push(
            scrape::fetch(t)
                .await
                .with_context(|| format!("reading /metrics of {}", t.authority))?,
        );
    }
    Ok(out)
}

/// One subscriber's handler: parse, check, count.
#[derive(Debug)]
struct Subscriber {
    server: Server,
    tracker: Tracker,
    progress: Arc<AtomicU64>,
}

impl Handler for Subscriber {
    fn subscribed(&mut self) {}

    fn event(&mut self, bytes: &[u8]) -> Flow {
        self.progress.fetch_add(1, Ordering::Relaxed);
        if self
            .tracker
            .record(self.server.event_info(bytes), unix_micros())
        {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn reset(&mut self) {
        self.tracker.resets += 1;
    }
}

/// Runs `fanout`.
///
/// # Errors
/// Bad options, an unreachable server or process, or subscribers that could not subscribe.
/// Loss, duplicates and stalls are not errors: they are in the report (`ok: false`).
pub async fn run(opts: &FanoutOptions) -> anyhow::Result<FanoutReport> {
    if opts.subscribers == 0 || opts.events == 0 {
        bail!("--subscribers and --events must be at least 1");
    }
    if !(opts.rate >= 0.0 && opts.rate.is_finite()) {
        bail!("--rate must be a number >= 0");
    }
    if let Some(limit) = limits::read()
        && (opts.subscribers + opts.publishers) as u64 + limits::HEADROOM > limit.soft
    {
        bail!("{}", limits::too_many_message(opts.subscribers));
    }
    let nodes = Nodes::parse(opts)?;
    if opts.server == Server::Nchan {
        if nodes.several() || opts.redis_pid.is_some() {
            bail!("--server nchan takes one --url (no --publish-url elsewhere, no --redis-pid)");
        }
        if !matches!(opts.transport, FanoutTransport::Ws | FanoutTransport::Sse) {
            bail!(
                "--server nchan: the bench drives Nchan over ws and sse only, not {}",
                opts.transport.name()
            );
        }
    }
    let sources = Sources::parse(&opts.source_ips, &nodes.subscribe[0], opts.per_source_ip)?;
    let servers: Vec<Proc> = opts.pids.iter().map(|&p| Proc::pid(p)).collect();
    if servers.is_empty() {
        bail!("--pid needs the server's process id");
    }
    for server in &servers {
        server.check()?;
    }
    let redis = opts.redis_pid.map(Proc::pid);
    if let Some(r) = &redis {
        r.check().context("--redis-pid")?;
    }
    let channel = opts
        .channel
        .clone()
        .unwrap_or_else(|| publisher::fresh_channel("fanout"));
    let stall = Duration::from_secs(opts.stall_secs);
    let n = opts.subscribers;

    // Nchan has no /metrics: its figures are the bench's own.
    let has_metrics = opts.server == Server::Switchyard;
    let metrics_before = if has_metrics {
        fetch_all(&nodes.all).await?
    } else {
        Vec::new()
    };
    let progress = Arc::new(AtomicU64::new(0));
    let stride = Tracker::stride_for(n as u64, opts.events);
    let members = (0..n)
        .map(|i| {
            let handler = Subscriber {
                server: opts.server,
                tracker: Tracker::new(opts.events, stride),
                progress: Arc::clone(&progress),
            };
            (opts.transport.for_index(i), channel.clone(), handler)
        })
        .collect();
    let config = SwarmConfig {
        targets: nodes.subscribe.clone(),
        sources,
        client: ClientConfig {
            server: opts.server,
            read_buffer: opts.read_buffer,
            poll_timeout_secs: opts.poll_timeout_secs,
        },
        concurrency: opts.concurrency,
    };
    let started = Instant::now();
    let mut swarm = Swarm::spawn(&config, members);
    swarm.wait_subscribed(stall).await?;
    let subscribe_secs = started.elapsed().as_secs_f64();

    let cpu = CpuMeter::start_many(&servers)?;
    let redis_cpu = redis.as_ref().map(CpuMeter::start).transpose()?;
    let publish_start = Instant::now();
    let plan = PublishPlan {
        channel: channel.clone(),
        events: opts.events,
        rate: opts.rate,
        size: opts.size,
        connections: opts.publishers,
        event_type: "bench".into(),
        api_key: None,
        server: opts.server,
    };
    let publishing = Publishing::spawn(&nodes.publish, plan);

    // Wait for every subscriber to finish, or for nothing to move for `stall`.
    let mut watch = StallWatch::new(stall);
    let mut stalled = false;
    while swarm.ended < n {
        swarm.next_signal(Duration::from_millis(100)).await;
        swarm.drain_signals();
        if watch.is_stalled((progress.load(Ordering::Relaxed), publishing.published())) {
            stalled = true;
            break;
        }
    }
    let (server_cpu_each, bench_cpu) = cpu.read_each()?;
    let server_cpu: f64 = server_cpu_each.iter().sum();
    let redis_cpu_secs = match &redis_cpu {
        Some(meter) => Some(meter.read()?.0),
        None => None,
    };

    let outcome = publishing.finish().await;
    let end_errors = swarm.end_errors.clone();
    let members = swarm.stop(Duration::from_secs(5)).await;
    let metrics_after = if has_metrics {
        fetch_all(&nodes.all).await.ok()
    } else {
        None
    };

    let mut by_transport: BTreeMap<&'static str, (TransportShare, Vec<u32>)> = BTreeMap::new();
    let mut by_node: BTreeMap<String, (TransportShare, Vec<u32>)> = BTreeMap::new();
    let mut all_samples = Vec::new();
    let mut report = FanoutReport {
        scenario: "fanout",
        server: opts.server.name(),
        transport: opts.transport.name().to_owned(),
        subscribers: n,
        events: opts.events,
        rate: opts.rate,
        size: opts.size,
        channel,
        nodes: opts.url.clone(),
        publish_url: opts
            .publish_url
            .clone()
            .unwrap_or_else(|| opts.url[0].clone()),
        subscribe_secs,
        published: outcome.published,
        publish_secs: 0.0,
        publish_rate: 0.0,
        expected_deliveries: n as u64 * opts.events,
        delivered: 0,
        window_secs: 0.0,
        deliveries_per_sec: 0.0,
        latency: Latency::default(),
        lost: 0,
        duplicated: 0,
        out_of_order: 0,
        unexpected: 0,
        resets: 0,
        disconnected: 0,
        missing: n - members.len(),
        stalled,
        server_cpu_secs: server_cpu,
        server_cpu_secs_by_pid: if servers.len() > 1 {
            opts.pids.iter().copied().zip(server_cpu_each).collect()
        } else {
            BTreeMap::new()
        },
        deliveries_per_server_cpu_sec: 0.0,
        server_cpu_us_per_delivery: 0.0,
        server_rss_kib: servers.iter().map(|s| s.rss_kib().unwrap_or(0)).sum(),
        server_peak_rss_kib: servers.iter().map(|s| s.peak_rss_kib().unwrap_or(0)).sum(),
        redis_cpu_secs,
        redis_rss_kib: redis.as_ref().and_then(|r| r.rss_kib().ok()),
        bench_cpu_secs: bench_cpu,
        bench_busy: 0.0,
        server_deliveries: delta(
            &metrics_before,
            metrics_after.as_ref(),
            "switchyard_deliveries_total",
        ),
        server_slow_consumer_disconnects: delta(
            &metrics_before,
            metrics_after.as_ref(),
            "switchyard_slow_consumer_disconnects_total",
        ),
        by_transport: BTreeMap::new(),
        by_node: BTreeMap::new(),
        errors: outcome.errors.clone(),
        ok: false,
    };
    report.lost = report.missing as u64 * opts.events;
    let mut last_delivery = None;
    for mut m in members {
        let t = &mut m.handler.tracker;
        report.delivered += t.distinct;
        report.lost += t.lost();
        report.duplicated += t.duplicated;
        report.out_of_order += t.out_of_order;
        report.unexpected += t.unexpected + t.malformed;
        report.resets += t.resets;
        last_delivery = last_delivery.max(t.last_us);
        if let Some(e) = m.error {
            report.disconnected += 1;
            if report.errors.len() < 5 && !end_errors.contains(&e) {
                report.errors.push(e);
            }
        }
        if opts.transport == FanoutTransport::Mix {
            let (share, samples) = by_transport.entry(m.transport.name()).or_default();
            share.subscribers += 1;
            share.delivered += t.distinct;
            share.lost += t.lost();
            share.duplicated += t.duplicated;
            samples.extend_from_slice(&t.samples);
        }
        if nodes.several() {
            let (share, samples) = by_node.entry(opts.url[m.node].clone()).or_default();
            share.subscribers += 1;
            share.delivered += t.distinct;
            share.lost += t.lost();
            share.duplicated += t.duplicated;
            samples.extend_from_slice(&t.samples);
        }
        all_samples.append(&mut t.samples);
    }
    report.errors.extend(end_errors);
    report.errors.truncate(8);
    report.latency = Latency::from_micros(&mut all_samples);
    report.by_transport = by_transport
        .into_iter()
        .map(|(name, (mut share, mut samples))| {
            share.latency = Latency::from_micros(&mut samples);
            (name, share)
        })
        .collect();
    report.by_node = by_node
        .into_iter()
        .map(|(url, (mut share, mut samples))| {
            share.latency = Latency::from_micros(&mut samples);
            (url, share)
        })
        .collect();
    let first_publish = outcome.first_at.unwrap_or(publish_start);
    if let Some(last) = outcome.last_at {
        report.publish_secs = last.duration_since(first_publish).as_secs_f64();
        report.publish_rate = per_sec(report.published, report.publish_secs);
    }
    // Both ends on the unix clock: `ts_us` stamps and receive times come from it too.
    if let (Some(last), Some(first)) = (last_delivery, outcome.first_us) {
        report.window_secs = last.saturating_sub(first) as f64 / 1e6;
        report.deliveries_per_sec = per_sec(report.delivered, report.window_secs);
        report.bench_busy = procstat::runtime_share(bench_cpu, report.window_secs);
    }
    report.deliveries_per_server_cpu_sec = per_sec(report.delivered, report.server_cpu_secs);
    report.server_cpu_us_per_delivery = us_per(report.server_cpu_secs, report.delivered);
    report.ok = !stalled
        && report.published == opts.events
        && report.delivered == report.expected_deliveries
        && report.lost == 0
        && report.duplicated == 0
        && report.unexpected == 0
        && report.disconnected == 0
        && report.missing == 0
        && outcome.errors.is_empty();
    Ok(report)
}

/// `cpu_secs` per `count`, in microseconds (0 when nothing was counted).
pub fn us_per(cpu_secs: f64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        cpu_secs * 1e6 / count as f64
    }
}

/// The increase of `name` (summed over its label sets) over every node.
fn delta(before: &[Metrics], after: Option<&Vec<Metrics>>, name: &str) -> Option<f64> {
    after.map(|after| {
        after
            .iter()
            .zip(before)
            .map(|(a, b)| a.sum(name) - b.sum(name))
            .sum()
    })
}
