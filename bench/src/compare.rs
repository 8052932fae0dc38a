//! The `compare` scenario: the floor, switchyard and (when given) Nchan at the same loads,
//! one after the other in one invocation, and a table of their CPU per delivery, their
//! ratios to the floor, and their p99 latencies side by side.
//!
//! Each run is an ordinary `floor`, `fanout` or `idle` run whose JSON line and summary are
//! printed as it ends; the comparison comes last. A run that cannot start is recorded as an
//! error in the comparison and the others still run.

use std::collections::BTreeMap;

use anyhow::bail;

use crate::{
    clients::Transport,
    fanout::{self, FanoutOptions, FanoutTransport},
    floor::{self, FloorOptions},
    idle::{self, IdleOptions},
    report::{self, CompareReport, CompareRow, IdleRow},
    server::Server,
    target::{DEFAULT_PER_SOURCE_IP, Target},
};

/// Options of `compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareOptions {
    /// switchyard's base URL, e.g. http://127.0.0.1:9000.
    #[arg(long)]
    pub switchyard_url: String,
    /// switchyard's process id.
    #[arg(long)]
    pub switchyard_pid: u32,
    /// Nchan's base URL (`NCHAN_URL` of `bench/nchan/run.sh`); without it, Nchan is left
    /// out.
    #[arg(long, requires = "nchan_pids")]
    pub nchan_url: Option<String>,
    /// Nchan's worker pids, comma-separated (`NCHAN_PIDS` of `bench/nchan/run.sh`).
    #[arg(long = "nchan-pid", value_delimiter = ',', requires = "nchan_url")]
    pub nchan_pids: Vec<u32>,
    /// Loads: subscriber counts, comma-separated; every transport runs at each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub subscribers: Vec<usize>,
    /// Events per second of every fan-out run (and rounds per second of the floor).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Events per run.
    #[arg(long, default_value_t = 200)]
    pub events: u64,
    /// Size of each event's data (the floor's message size), bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Transports, comma-separated: ws, sse, stream, poll (Nchan runs ws and sse only; its
    /// other cells show "-").
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ws,sse,stream"
    )]
    pub transports: Vec<FanoutTransport>,
    /// Also measure idle RSS per connection with this many connections per transport
    /// (ws, sse, stream of `--transports`), before any fan-out run: a server's memory is
    /// only comparable while it has not yet grown for earlier connections, so start both
    /// servers afresh for it. At most ~15k (one bench process's open files).
    #[arg(long)]
    pub idle_connections: Option<usize>,
    /// Seconds to let each server settle after the last idle connection, before reading
    /// its memory.
    #[arg(long, default_value_t = 2.0)]
    pub idle_settle_secs: f64,
    /// Stop a run that made no progress for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub stall_secs: u64,
    /// Keep each run's JSON line and summary to itself (the comparison still has every
    /// figure); for callers that print only the comparison, such as tests.
    #[arg(skip)]
    pub quiet_runs: bool,
}

/// One server under comparison.
struct Contender {
    server: Server,
    url: String,
    pids: Vec<u32>,
}

/// Runs `compare`: prints each run's JSON line and summary as it ends, and returns the
/// comparison.
///
/// # Errors
/// Bad options. Runs that fail are recorded in the comparison, not returned.
pub async fn run(opts: &CompareOptions) -> anyhow::Result<CompareReport> {
    if opts.subscribers.is_empty() || opts.transports.is_empty() {
        bail!("--subscribers and --transports need at least one value each");
    }
    if opts.transports.contains(&FanoutTransport::Mix) {
        bail!("--transports: mix is not comparable (Nchan has neither NDJSON nor long-poll)");
    }
    let mut contenders = vec![Contender {
        server: Server::Switchyard,
        url: opts.switchyard_url.clone(),
        pids: vec![opts.switchyard_pid],
    }];
    if let Some(url) = &opts.nchan_url {
        contenders.push(Contender {
            server: Server::Nchan,
            url: url.clone(),
            pids: opts.nchan_pids.clone(),
        });
    }
    let mut out = CompareReport {
        scenario: "compare",
        servers: contenders.iter().map(|c| c.server.name()).collect(),
        subscribers: opts.subscribers.clone(),
        rate: opts.rate,
        events: opts.events,
        size: opts.size,
        rows: Vec::new(),
        idle: Vec::new(),
        errors: Vec::new(),
        ok: true,
    };
    let mut runs = 0usize;

    if let Some(connections) = opts.idle_connections {
        for &transport in &opts.transports {
            let Some(transport) = idle_transport(transport) else {
                continue;
            };
            let mut row = IdleRow {
                connections,
                transport: transport.name(),
                kib_per_connection: BTreeMap::new(),
                switchyard_vs_nchan: None,
            };
            for c in &contenders {
                if !supports(c.server, transport) {
                    continue;
                }
                let mut idle_opts = IdleOptions::new(&c.url, transport, connections, 0);
                idle_opts.server = c.server;
                idle_opts.pids.clone_from(&c.pids);
                idle_opts.stall_secs = opts.stall_secs;
                idle_opts.settle_secs = opts.idle_settle_secs;
                idle_opts.source_ips = sources_for_run(&c.url, runs);
                runs += 1;
                let label = format!("idle/{} on {}", transport.name(), c.server.name());
                let result = idle::run(&idle_opts).await;
                if let Some(r) = settle(&mut out, &label, result, opts.quiet_runs)? {
                    row.kib_per_connection
                        .insert(c.server.name(), r.server_kib_per_connection);
                }
            }
            row.switchyard_vs_nchan = ratio(
                row.kib_per_connection.get("switchyard").copied(),
                row.kib_per_connection.get("nchan").copied(),
            );
            out.idle.push(row);
        }
    }

    for &n in &opts.subscribers {
        let mut floor_opts = FloorOptions::new(n, opts.events);
        floor_opts.rate = opts.rate;
        floor_opts.size = opts.size;
        floor_opts.stall_secs = opts.stall_secs;
        let result = floor::run(&floor_opts).await;
        let floor_us = settle(&mut out, &format!("floor {n}"), result, opts.quiet_runs)?
            .map(|r| r.server_cpu_us_per_delivery);
        for &transport in &opts.transports {
            let mut row = CompareRow {
                subscribers: n,
                rate: opts.rate,
                transport: transport.name(),
                floor_us,
                us_per_delivery: BTreeMap::new(),
                vs_floor: BTreeMap::new(),
                p99_ms: BTreeMap::new(),
                p99_switchyard_vs_nchan: None,
                problems: Vec::new(),
            };
            for c in &contenders {
                if !supports_fanout(c.server, transport) {
                    continue;
                }
                let mut fan = FanoutOptions::new(&c.url, transport, n, opts.events, 0);
                fan.server = c.server;
                fan.pids.clone_from(&c.pids);
                fan.rate = opts.rate;
                fan.size = opts.size;
                fan.stall_secs = opts.stall_secs;
                fan.source_ips = sources_for_run(&c.url, runs);
                runs += 1;
                let label = format!("fanout/{} on {} {n}", transport.name(), c.server.name());
                let result = fanout::run(&fan).await;
                let Some(r) = settle(&mut out, &label, result, opts.quiet_runs)? else {
                    row.problems.push(c.server.name());
                    continue;
                };
                if !r.ok {
                    row.problems.push(c.server.name());
                }
                let name = c.server.name();
                row.us_per_delivery
                    .insert(name, r.server_cpu_us_per_delivery);
                if let Some(v) = ratio(Some(r.server_cpu_us_per_delivery), floor_us) {
                    row.vs_floor.insert(name, v);
                }
                row.p99_ms.insert(name, r.latency.p99_ms);
            }
            row.p99_switchyard_vs_nchan = ratio(
                row.p99_ms.get("switchyard").copied(),
                row.p99_ms.get("nchan").copied(),
            );
            out.rows.push(row);
        }
    }
    Ok(out)
}

/// Prints a finished run (its JSON line and summary, unless `quiet`) and returns it; a run
/// that could not run, or found problems, makes the comparison not ok.
fn settle<R: report::Report>(
    out: &mut CompareReport,
    label: &str,
    result: anyhow::Result<R>,
    quiet: bool,
) -> anyhow::Result<Option<R>> {
    match result {
        Ok(r) => {
            if !quiet {
                report::emit(&r, &r.summary())?;
            }
            if !r.is_ok() {
                out.ok = false;
                out.errors
                    .push(format!("{label}: problems (see its report)"));
            }
            Ok(Some(r))
        }
        Err(e) => {
            if !quiet {
                eprintln!("{label}: could not run: {e:#}");
            }
            out.ok = false;
            out.errors.push(format!("{label}: {e:#}"));
            Ok(None)
        }
    }
}

/// `a / b`, when both are known and `b` is not 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Whether `server` has `transport` for a fan-out run.
fn supports_fanout(server: Server, transport: FanoutTransport) -> bool {
    match server {
        Server::Switchyard => true,
        Server::Nchan => matches!(transport, FanoutTransport::Ws | FanoutTransport::Sse),
    }
}

/// Whether `server` has `transport` for an idle run.
fn supports(server: Server, transport: Transport) -> bool {
    match server {
        Server::Switchyard => true,
        Server::Nchan => matches!(transport, Transport::Ws | Transport::Sse),
    }
}

/// The idle counterpart of a fan-out transport (long-poll holds nothing idle).
fn idle_transport(t: FanoutTransport) -> Option<Transport> {
    match t {
        FanoutTransport::Ws => Some(Transport::Ws),
        FanoutTransport::Sse => Some(Transport::Sse),
        FanoutTransport::Stream => Some(Transport::Stream),
        FanoutTransport::Poll | FanoutTransport::Mix => None,
    }
}

/// Source addresses for the `run`-th run: every loopback address from 127.0.0.2 on, each
/// run starting further along. Back-to-back runs in one process would otherwise start on
/// the same address, whose ports the previous runs' connections still hold in
/// `TIME_WAIT` for a minute (5k per run at 5k subscribers, ~28k ports per address).
fn sources_for_run(url: &str, run: usize) -> String {
    let loopback_v4 =
        Target::parse(url).is_ok_and(|t| t.addr.is_ipv4() && t.addr.ip().is_loopback());
    if !loopback_v4 {
        return "auto".into();
    }
    // Each run may span several addresses (`DEFAULT_PER_SOURCE_IP` connections each).
    let step = 15_000usize.div_ceil(DEFAULT_PER_SOURCE_IP);
    let first = (std::process::id() as usize + run * step) % 253;
    (0..253)
        .map(|i| format!("127.0.0.{}", 2 + (first + i) % 253))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(20.0), Some(10.0)), Some(2.0));
        assert_eq!(ratio(Some(20.0), None), None);
        assert_eq!(ratio(Some(20.0), Some(0.0)), None);
    }

    #[test]
    fn runs_start_on_different_source_addresses() {
        let a = sources_for_run("http://127.0.0.1:9", 0);
        let b = sources_for_run("http://127.0.0.1:9", 1);
        assert_ne!(a.split(',').next(), b.split(',').next());
        assert_eq!(a.split(',').count(), 253);
        assert_eq!(sources_for_run("http://[::1]:9", 0), "auto");
    }

    #[test]
    fn nchan_has_ws_and_sse_only() {
        assert!(supports_fanout(Server::Nchan, FanoutTransport::Sse));
        assert!(!supports_fanout(Server::Nchan, FanoutTransport::Stream));
        assert!(supports_fanout(Server::Switchyard, FanoutTransport::Poll));
        assert!(!supports(Server::Nchan, Transport::Stream));
    }
}
