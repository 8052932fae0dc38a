//! The `idle` scenario: open N connections that each subscribe to one channel and then sit
//! idle; report how much the server's resident memory grew per connection. Against Nchan
//! (`--server nchan`), over its WebSocket or EventSource endpoint, with memory summed over
//! the nginx workers and the subscriber count read from `nchan_stub_status`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::time::Instant;

use crate::{
    clients::{ClientConfig, Flow, Handler, Transport},
    limits, nchan,
    procstat::Proc,
    report::IdleReport,
    scrape,
    server::Server,
    swarm::{Swarm, SwarmConfig},
    target::{DEFAULT_PER_SOURCE_IP, Sources, Target},
};

/// Options of `idle`.
#[derive(Clone, Debug, clap::Args)]
pub struct IdleOptions {
    /// The server: switchyard, or Nchan (ws and sse; started with `bench/nchan/run.sh`,
    /// whose worker pids go to `--pid`).
    #[arg(long, value_enum, default_value_t = Server::Switchyard)]
    pub server: Server,
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// Transport of the idle connections: ws, sse or stream.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Connections to open (at most ~15k per bench process under a 20000 open-files limit).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Server process id: its RSS is read from /proc/PID/status. Several, comma-separated
    /// (Nchan's nginx workers): their RSS is summed.
    #[arg(long = "pid", value_delimiter = ',', required = true)]
    pub pids: Vec<u32>,
    /// Channel name prefix: connection i subscribes to `{prefix}/{i % channels}`.
    #[arg(long, default_value = "idle")]
    pub channel_prefix: String,
    /// Distinct channels to spread the connections over.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Seconds to wait after the last subscription before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Client read buffer per connection, bytes (small: idle connections receive little).
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,
    /// Source addresses: `auto` (rotate 127.0.0.2.. for a loopback server), `none`, or a
    /// comma-separated list.
    #[arg(long, default_value = "auto")]
    pub source_ips: String,
    /// Connections per source address before rotating to the next.
    #[arg(long, default_value_t = DEFAULT_PER_SOURCE_IP)]
    pub per_source_ip: usize,
    /// Give up when no connection got subscribed for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub stall_secs: u64,
}

impl IdleOptions {
    /// Options with the command line's defaults.
    pub fn new(url: impl Into<String>, transport: Transport, connections: usize, pid: u32) -> Self {
        Self {
            server: Server::Switchyard,
            url: url.into(),
            transport,
            connections,
            pids: vec![pid],
            channel_prefix: "idle".into(),
            channels: 100,
            settle_secs: 2.0,
            concurrency: 256,
            read_buffer: 4096,
            source_ips: "auto".into(),
            per_source_ip: DEFAULT_PER_SOURCE_IP,
            stall_secs: 10,
        }
    }
}

/// Counts what an idle connection receives (nothing, normally).
#[derive(Debug, Default)]
struct Idle {
    events: u64,
}

impl Handler for Idle {
    fn subscribed(&mut self) {}

    fn event(&mut self, _: &[u8]) -> Flow {
        self.events += 1;
        Flow::Continue
    }
}

/// Runs `idle`.
///
/// # Errors
/// Bad options, an unreachable server or process, or connections that could not be opened
/// (with a clear message when out of file descriptors).
pub async fn run(opts: &IdleOptions) -> anyhow::Result<IdleReport> {
    if opts.transport == Transport::Poll {
        bail!("idle supports ws, sse and stream: a long-poll is not held open between events");
    }
    if opts.server == Server::Nchan && opts.transport == Transport::Stream {
        bail!("--server nchan: the bench drives Nchan over ws and sse only, not stream");
    }
    if opts.connections == 0 || opts.channels == 0 {
        bail!("--connections and --channels must be at least 1");
    }
    if let Some(limit) = limits::read()
        && opts.connections as u64 + limits::HEADROOM > limit.soft
    {
        bail!("{}", limits::too_many_message(opts.connections));
    }
    let target = Target::parse(&opts.url)?;
    let sources = Sources::parse(&opts.source_ips, &target, opts.per_source_ip)?;
    let servers: Vec<Proc> = opts.pids.iter().map(|&p| Proc::pid(p)).collect();
    if servers.is_empty() {
        bail!("--pid needs the server's process id");
    }
    for server in &servers {
        server.check()?;
    }
    let me = Proc::this();
    let count = Counter::new(opts.server, opts.transport);

    let metrics_before = count.read(&target).await.context("before opening")?;
    let rss_before = sum_kib(&servers, Proc::rss_kib)?;
    let bench_rss_before = me.rss_kib()?;
    let bench_cpu_before = me.cpu_secs()?;

    let config = SwarmConfig {
        targets: vec![target.clone()],
        sources,
        client: ClientConfig {
            server: opts.server,
            read_buffer: opts.read_buffer,
            ..ClientConfig::default()
        },
        concurrency: opts.concurrency,
    };
    let members = (0..opts.connections)
        .map(|i| {
            let channel = format!("{}/{}", opts.channel_prefix, i % opts.channels);
            (opts.transport, channel, Idle::default())
        })
        .collect();
    let started = Instant::now();
    let mut swarm = Swarm::spawn(&config, members);
    swarm
        .wait_subscribed(Duration::from_secs(opts.stall_secs))
        .await?;
    let open_secs = started.elapsed().as_secs_f64();

    tokio::time::sleep(Duration::from_secs_f64(opts.settle_secs)).await;
    swarm.drain_signals();
    let dropped = swarm.ended;
    let rss_after = sum_kib(&servers, Proc::rss_kib)?;
    let peak = sum_kib(&servers, Proc::peak_rss_kib)?;
    let bench_rss_after = me.rss_kib()?;
    let metrics_after = count.read(&target).await.context("after settling")?;

    let errors = swarm.end_errors.clone();
    let members = swarm.stop(Duration::from_secs(5)).await;
    let events_received = members.iter().map(|m| m.handler.events).sum();
    let n = opts.connections as f64;
    let metrics_match = match (metrics_before, metrics_after) {
        (Some(b), Some(a)) => (a - b - n).abs() < 0.5,
        _ => false,
    };
    let report = IdleReport {
        scenario: "idle",
        server: opts.server.name(),
        transport: opts.transport.name(),
        connections: opts.connections,
        channels: opts.channels.min(opts.connections),
        open_secs,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_kib_per_connection: (rss_after as f64 - rss_before as f64) / n,
        server_peak_rss_kib: peak,
        metrics_connections_before: metrics_before,
        metrics_connections_after: metrics_after,
        metrics_match,
        dropped,
        events_received,
        bench_kib_per_connection: (bench_rss_after as f64 - bench_rss_before as f64) / n,
        bench_cpu_secs: me.cpu_secs()? - bench_cpu_before,
        errors,
        ok: metrics_match && dropped == 0 && events_received == 0,
    };
    Ok(report)
}

/// Where the server counts its connections: switchyard's `switchyard_connections` of the
/// transport on /metrics, Nchan's `subscribers:` on its stub status.
enum Counter {
    Metrics(String),
    Nchan,
}

impl Counter {
    fn new(server: Server, transport: Transport) -> Self {
        match server {
            Server::Switchyard => Self::Metrics(format!(
                "switchyard_connections{{transport=\"{}\"}}",
                transport.metrics_label()
            )),
            Server::Nchan => Self::Nchan,
        }
    }

    async fn read(&self, target: &Target) -> anyhow::Result<Option<f64>> {
        Ok(match self {
            Self::Metrics(series) => scrape::fetch(target)
                .await
                .context("reading /metrics")?
                .get(series),
            Self::Nchan => Some(
                nchan::subscribers(target)
                    .await
                    .context("reading Nchan's subscriber count")?,
            ),
        })
    }
}

/// A memory figure summed over the server's processes.
fn sum_kib(servers: &[Proc], read: fn(&Proc) -> anyhow::Result<u64>) -> anyhow::Result<u64> {
    servers.iter().map(read).sum()
}
