//! Results: one JSON object per line on stdout (for scripts) and a readable summary on
//! stderr (for people).

use std::{collections::BTreeMap, fmt::Write as _, io::Write as _};

use serde::Serialize;

use crate::stats::Latency;

/// Result of the `idle` scenario.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    /// `"idle"`.
    pub scenario: &'static str,
    /// `ws`, `sse` or `stream`.
    pub transport: &'static str,
    /// Connections opened and subscribed.
    pub connections: usize,
    /// Distinct channels they subscribed to.
    pub channels: usize,
    /// Seconds to open and subscribe them all.
    pub open_secs: f64,
    /// Server VmRSS before opening, KiB.
    pub server_rss_before_kib: u64,
    /// Server VmRSS after opening and settling, KiB.
    pub server_rss_after_kib: u64,
    /// `(after - before) / connections`.
    pub server_kib_per_connection: f64,
    /// Server VmHWM (peak RSS), KiB.
    pub server_peak_rss_kib: u64,
    /// `switchyard_connections{transport=..}` before opening.
    pub metrics_connections_before: Option<f64>,
    /// `switchyard_connections{transport=..}` after settling.
    pub metrics_connections_after: Option<f64>,
    /// Whether the metric grew by exactly `connections`.
    pub metrics_match: bool,
    /// Connections that ended while settling (should be 0).
    pub dropped: usize,
    /// Events received on the idle connections (should be 0).
    pub events_received: u64,
    /// The bench's own VmRSS per connection, KiB (client-side cost).
    pub bench_kib_per_connection: f64,
    /// The bench's CPU seconds for the whole run.
    pub bench_cpu_secs: f64,
    /// Errors of connections that dropped.
    pub errors: Vec<String>,
    /// Everything as expected.
    pub ok: bool,
}

/// One transport's share of a `mix` fan-out.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TransportShare {
    /// Subscribers on it.
    pub subscribers: usize,
    /// Distinct events delivered.
    pub delivered: u64,
    /// Missing offsets.
    pub lost: u64,
    /// Repeated offsets.
    pub duplicated: u64,
    /// Its latency.
    pub latency: Latency,
}

/// Result of the `fanout` scenario.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutReport {
    /// `"fanout"`.
    pub scenario: &'static str,
    /// `ws`, `sse`, `stream`, `poll` or `mix`.
    pub transport: String,
    /// Subscribers on the channel.
    pub subscribers: usize,
    /// Events to publish.
    pub events: u64,
    /// Target rate, events/s (0 = as fast as accepted).
    pub rate: f64,
    /// Payload (`data`) size, bytes.
    pub size: usize,
    /// The channel used.
    pub channel: String,
    /// Seconds to open and subscribe every subscriber.
    pub subscribe_secs: f64,
    /// Events the server accepted.
    pub published: u64,
    /// Seconds from the first publish to the last accepted one.
    pub publish_secs: f64,
    /// Achieved publish rate, events/s.
    pub publish_rate: f64,
    /// `subscribers * events`.
    pub expected_deliveries: u64,
    /// Distinct events received over all subscribers.
    pub delivered: u64,
    /// Seconds from the first publish to the last delivery.
    pub window_secs: f64,
    /// `delivered / window_secs`.
    pub deliveries_per_sec: f64,
    /// Publish → receive latency over all subscribers (sampled when huge).
    pub latency: Latency,
    /// Offsets in `1..=events` never received, summed over subscribers.
    pub lost: u64,
    /// Offsets received more than once, summed over subscribers.
    pub duplicated: u64,
    /// Offsets received after a higher one.
    pub out_of_order: u64,
    /// Offsets outside `1..=events` or unreadable events.
    pub unexpected: u64,
    /// `reset` notices received.
    pub resets: u64,
    /// Subscribers whose connection ended with an error (e.g. slow-consumer close).
    pub disconnected: usize,
    /// Subscribers that never reported back when stopped.
    pub missing: usize,
    /// Whether deliveries stalled (the run was cut short).
    pub stalled: bool,
    /// Server CPU seconds (utime + stime) from the first publish to the last delivery.
    pub server_cpu_secs: f64,
    /// `delivered / server_cpu_secs`.
    pub deliveries_per_server_cpu_sec: f64,
    /// Server VmRSS at the end, KiB.
    pub server_rss_kib: u64,
    /// Server VmHWM (peak RSS since it started), KiB.
    pub server_peak_rss_kib: u64,
    /// The bench's CPU seconds over the same window.
    pub bench_cpu_secs: f64,
    /// `bench_cpu_secs / (window_secs * bench worker threads)`: near 1, the bench itself set
    /// the pace, and deliveries/s and latency describe the bench, not the server.
    pub bench_busy: f64,
    /// Increase of the server's `switchyard_deliveries_total` (all transports).
    pub server_deliveries: Option<f64>,
    /// Increase of the server's `switchyard_slow_consumer_disconnects_total`.
    pub server_slow_consumer_disconnects: Option<f64>,
    /// Per-transport figures (`mix` only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_transport: BTreeMap<&'static str, TransportShare>,
    /// The first few errors (publisher, subscribers).
    pub errors: Vec<String>,
    /// No stall, loss, duplicate or error.
    pub ok: bool,
}

/// Above this [`FanoutReport::bench_busy`], the summary warns that the bench was the limit.
pub const BUSY_WARNING: f64 = 0.8;

/// Prints `report` as one JSON line on stdout and `summary` on stderr.
///
/// # Errors
/// Writing to stdout failed.
pub fn emit(report: &impl Serialize, summary: &str) -> anyhow::Result<()> {
    let line = serde_json::to_string(report)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    eprintln!("{summary}");
    Ok(())
}

impl IdleReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "idle/{}: {} connections on {} channels, opened in {:.1}s {}",
            self.transport,
            self.connections,
            self.channels,
            self.open_secs,
            verdict(self.ok)
        );
        let _ = writeln!(
            s,
            "  server RSS {} -> {} KiB: {:.2} KiB per connection (peak {} KiB)",
            self.server_rss_before_kib,
            self.server_rss_after_kib,
            self.server_kib_per_connection,
            self.server_peak_rss_kib
        );
        let _ = writeln!(
            s,
            "  /metrics connections {} -> {} (match: {}); dropped {}; events {}",
            opt(self.metrics_connections_before),
            opt(self.metrics_connections_after),
            self.metrics_match,
            self.dropped,
            self.events_received
        );
        let _ = write!(
            s,
            "  bench: {:.2} KiB per connection, {:.2} CPU s",
            self.bench_kib_per_connection, self.bench_cpu_secs
        );
        for e in &self.errors {
            let _ = write!(s, "\n  error: {e}");
        }
        s
    }
}

impl FanoutReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let rate = if self.rate > 0.0 {
            format!("{}/s", self.rate)
        } else {
            "max rate".to_owned()
        };
        let _ = writeln!(
            s,
            "fanout/{}: {} subscribers x {} events of {} B at {rate} {}",
            self.transport,
            self.subscribers,
            self.events,
            self.size,
            verdict(self.ok)
        );
        let _ = writeln!(
            s,
            "  subscribed in {:.1}s; published {} in {:.2}s ({:.0}/s)",
            self.subscribe_secs, self.published, self.publish_secs, self.publish_rate
        );
        let _ = writeln!(
            s,
            "  delivered {} of {} in {:.2}s: {:.0} deliveries/s",
            self.delivered, self.expected_deliveries, self.window_secs, self.deliveries_per_sec
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
            l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
        );
        let _ = writeln!(
            s,
            "  lost {}  duplicated {}  out-of-order {}  unexpected {}  resets {}  disconnected {}{}",
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.unexpected,
            self.resets,
            self.disconnected,
            if self.stalled { "  STALLED" } else { "" }
        );
        let _ = writeln!(
            s,
            "  server: {:.2} CPU s ({:.0} deliveries per CPU s), RSS {} KiB, peak {} KiB",
            self.server_cpu_secs,
            self.deliveries_per_server_cpu_sec,
            self.server_rss_kib,
            self.server_peak_rss_kib
        );
        let _ = write!(
            s,
            "  bench: {:.2} CPU s ({:.0}% busy); server counted {} deliveries, {} slow-consumer \
             disconnects",
            self.bench_cpu_secs,
            self.bench_busy * 100.0,
            opt(self.server_deliveries),
            opt(self.server_slow_consumer_disconnects)
        );
        if self.bench_busy > BUSY_WARNING {
            let _ = write!(
                s,
                "\n  WARNING: the bench was {:.0}% busy: it, not the server, limited this run \
                 (try --threads 2, or run the bench on another machine)",
                self.bench_busy * 100.0
            );
        }
        for (name, t) in &self.by_transport {
            let _ = write!(
                s,
                "\n  {name:>6}: {} subs, delivered {}, lost {}, dup {}, p50 {:.2} p99 {:.2} ms",
                t.subscribers,
                t.delivered,
                t.lost,
                t.duplicated,
                t.latency.p50_ms,
                t.latency.p99_ms
            );
        }
        for e in &self.errors {
            let _ = write!(s, "\n  error: {e}");
        }
        s
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "[ok]" } else { "[PROBLEMS]" }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}
