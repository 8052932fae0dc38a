//! Results: one JSON object per line on stdout (for scripts) and a readable summary on
//! stderr (for people).

use std::{collections::BTreeMap, fmt::Write as _, io::Write as _};

use serde::Serialize;

use crate::{presence::PresenceReport, stats::Latency};

/// Result of the `idle` scenario.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    /// `"idle"`.
    pub scenario: &'static str,
    /// The server measured: `switchyard` or `nchan`.
    pub server: &'static str,
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
    /// `switchyard_connections{transport=..}` before opening (Nchan: its stub status's
    /// `subscribers`).
    pub metrics_connections_before: Option<f64>,
    /// The same after settling.
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

/// One transport's share of a `mix` fan-out, or one node's share of a fan-out over several
/// nodes.
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
    /// The server driven: `switchyard` or `nchan`.
    pub server: &'static str,
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
    /// The nodes the subscribers were spread over (`--url`), in equal contiguous blocks.
    pub nodes: Vec<String>,
    /// The node the events were published to.
    pub publish_url: String,
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
    /// Server CPU seconds (utime + stime) from the first publish to the last delivery,
    /// summed over the server processes (`--pid`).
    pub server_cpu_secs: f64,
    /// The same per server process, when there are several.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub server_cpu_secs_by_pid: BTreeMap<u32, f64>,
    /// `delivered / server_cpu_secs`.
    pub deliveries_per_server_cpu_sec: f64,
    /// `server_cpu_secs / delivered`, microseconds: the server's CPU per delivery, the
    /// figure `floor` measures for one bare `write()`.
    pub server_cpu_us_per_delivery: f64,
    /// Server VmRSS at the end, KiB (summed over the server processes).
    pub server_rss_kib: u64,
    /// Server VmHWM (peak RSS since it started), KiB (summed over the server processes).
    pub server_peak_rss_kib: u64,
    /// The Redis server's CPU seconds over the same window (`--redis-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cpu_secs: Option<f64>,
    /// The Redis server's VmRSS at the end, KiB (`--redis-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_rss_kib: Option<u64>,
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
    /// Per-node figures, by subscriber node URL (only when the run used several nodes).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_node: BTreeMap<String, TransportShare>,
    /// The first few errors (publisher, subscribers).
    pub errors: Vec<String>,
    /// No stall, loss, duplicate or error.
    pub ok: bool,
}

/// Result of the `floor` scenario.
#[derive(Clone, Debug, Serialize)]
pub struct FloorReport {
    /// `"floor"`.
    pub scenario: &'static str,
    /// Connections written to.
    pub subscribers: usize,
    /// Rounds: one message to every connection each.
    pub events: u64,
    /// Target rounds per second (0 = back to back).
    pub rate: f64,
    /// Message size, bytes.
    pub size: usize,
    /// Seconds to open and accept every connection.
    pub connect_secs: f64,
    /// `subscribers * events`.
    pub expected_deliveries: u64,
    /// Messages written whole.
    pub writes: u64,
    /// `write()` calls that took only part of a message (finished with more calls).
    pub partial_writes: u64,
    /// Failed writes.
    pub write_errors: u64,
    /// Seconds from the first round to the end of the last.
    pub write_secs: f64,
    /// Achieved rounds per second.
    pub round_rate: f64,
    /// `expected_deliveries * size`.
    pub expected_bytes: u64,
    /// Bytes the readers received.
    pub received_bytes: u64,
    /// The writer thread's CPU seconds (utime + stime) over the rounds: the "server".
    pub server_cpu_secs: f64,
    /// `server_cpu_secs / writes`, microseconds: the floor of a delivery's server CPU.
    pub server_cpu_us_per_delivery: f64,
    /// `writes / server_cpu_secs`.
    pub deliveries_per_server_cpu_sec: f64,
    /// The readers' CPU seconds (the bench process's, less the writer's) over the rounds.
    pub bench_cpu_secs: f64,
    /// The readers' share of the runtime's threads, see [`FanoutReport::bench_busy`].
    pub bench_busy: f64,
    /// Whether the run stopped because nothing moved for `--stall-secs`.
    pub stalled: bool,
    /// The first few errors (writer, readers).
    pub errors: Vec<String>,
    /// Every message written in one piece or finished, every byte read, no stall.
    pub ok: bool,
}

/// One load and transport of the `compare` scenario: every server's CPU per delivery and
/// p99 latency, and the floor's CPU per delivery at the same load. Maps are keyed by server
/// name (`switchyard`, `nchan`); a server without the transport has no entry.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    /// Subscribers.
    pub subscribers: usize,
    /// Events per second.
    pub rate: f64,
    /// `ws`, `sse`, `stream` or `poll`.
    pub transport: &'static str,
    /// The floor's server CPU per delivery at this load, microseconds.
    pub floor_us: Option<f64>,
    /// Server CPU per delivery, microseconds.
    pub us_per_delivery: BTreeMap<&'static str, f64>,
    /// `us_per_delivery / floor_us`.
    pub vs_floor: BTreeMap<&'static str, f64>,
    /// Publish → deliver p99, milliseconds.
    pub p99_ms: BTreeMap<&'static str, f64>,
    /// switchyard's p99 over Nchan's.
    pub p99_switchyard_vs_nchan: Option<f64>,
    /// Servers whose run here found problems or could not run (their figures, if any, are
    /// marked in the table).
    pub problems: Vec<&'static str>,
}

/// One transport's idle memory in the `compare` scenario.
#[derive(Clone, Debug, Serialize)]
pub struct IdleRow {
    /// Idle connections held.
    pub connections: usize,
    /// `ws`, `sse` or `stream`.
    pub transport: &'static str,
    /// Server RSS growth per connection, KiB, by server name.
    pub kib_per_connection: BTreeMap<&'static str, f64>,
    /// switchyard's over Nchan's.
    pub switchyard_vs_nchan: Option<f64>,
}

/// Result of the `compare` scenario (printed after every run's own result).
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// `"compare"`.
    pub scenario: &'static str,
    /// The servers compared with the floor: `switchyard`, and `nchan` when given.
    pub servers: Vec<&'static str>,
    /// The loads (subscriber counts).
    pub subscribers: Vec<usize>,
    /// Events per second.
    pub rate: f64,
    /// Events per run.
    pub events: u64,
    /// Event data size (and the floor's message size), bytes.
    pub size: usize,
    /// One row per load and transport.
    pub rows: Vec<CompareRow>,
    /// Idle memory, one row per transport (`--idle-connections`).
    pub idle: Vec<IdleRow>,
    /// Runs that could not run or found problems.
    pub errors: Vec<String>,
    /// Every run ran and found no problem.
    pub ok: bool,
}

/// Result of the `jobs` scenario, and of `durable` (its submits are publishes).
#[derive(Clone, Debug, Serialize)]
pub struct JobsReport {
    /// `"jobs"`.
    pub scenario: &'static str,
    /// Clients (connections), one submit in flight each.
    pub concurrency: usize,
    /// Body size of each submit, bytes.
    pub size: usize,
    /// Requested run time, seconds (`None` with `requests`).
    pub duration_secs: Option<f64>,
    /// Requested submit count, when given.
    pub requests: Option<u64>,
    /// Submits sent.
    pub sent: u64,
    /// Submits answered `202 Accepted`.
    pub accepted: u64,
    /// Everything else: `sent - accepted`, unless the run was cut short.
    pub errors: u64,
    /// Errors by kind: the HTTP status (`"429"`, `"503"`, ...), `connection` or `timeout`.
    pub errors_by_status: BTreeMap<String, u64>,
    /// Seconds from the first submit to the last answer.
    pub elapsed_secs: f64,
    /// `accepted / elapsed_secs`.
    pub submits_per_sec: f64,
    /// Accepted body bytes per second, MiB.
    pub mib_per_sec: f64,
    /// Submit → `202` latency of accepted submits (every one is sampled).
    pub latency: Latency,
    /// Server CPU seconds (utime + stime) over the run.
    pub server_cpu_secs: f64,
    /// `accepted / server_cpu_secs`.
    pub submits_per_server_cpu_sec: f64,
    /// Server VmRSS at the end, KiB.
    pub server_rss_kib: u64,
    /// Server VmHWM (peak RSS since it started), KiB.
    pub server_peak_rss_kib: u64,
    /// The bench's CPU seconds over the run.
    pub bench_cpu_secs: f64,
    /// The bench's share of its runtime's threads, see [`FanoutReport::bench_busy`].
    pub bench_busy: f64,
    /// The first few error answers or failures.
    pub error_samples: Vec<String>,
    /// Every submit answered 202 (and all `requests` were made).
    pub ok: bool,
}

/// Result of the `webhooks` scenario.
#[derive(Clone, Debug, Serialize)]
pub struct WebhooksReport {
    /// `"webhooks"`.
    pub scenario: &'static str,
    /// Events to publish, one delivery each.
    pub events: u64,
    /// Target publish rate, events/s (0 = as fast as accepted).
    pub rate: f64,
    /// Payload (`data`) size, bytes.
    pub size: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// The channel used.
    pub channel: String,
    /// The endpoint registered for the run (deleted at its end).
    pub endpoint_id: String,
    /// Where the built-in receiver listened.
    pub receiver_url: String,
    /// Extra endpoints on the channel pointing at a listener that never answers
    /// (`--dead-endpoints`); every other figure is the healthy receiver's.
    pub dead_endpoints: usize,
    /// Connections the dead endpoints' listener accepted (the server's attempts to them).
    pub dead_connections: u64,
    /// Events the server accepted (201).
    pub published: u64,
    /// Seconds from the first publish to the last accepted one.
    pub publish_secs: f64,
    /// Achieved publish rate, events/s.
    pub publish_rate: f64,
    /// Requests the receiver got (deliveries, duplicates and bad ones).
    pub requests: u64,
    /// Distinct verified deliveries (first arrival of each `webhook-id`).
    pub delivered: u64,
    /// Seconds from the first publish to the last delivery.
    pub window_secs: f64,
    /// `delivered / window_secs`.
    pub deliveries_per_sec: f64,
    /// Publish → receipt latency of first arrivals (`ts_us` in the event to receive time).
    pub latency: Latency,
    /// Verified deliveries whose `webhook-id` had arrived before (allowed: at least once).
    pub duplicates: u64,
    /// New `webhook-id`s carrying an offset already delivered (a duplicate the receiver
    /// cannot recognise; must be 0).
    pub duplicate_offsets: u64,
    /// Deliveries with an offset outside `1..=events` or no offset.
    pub unexpected: u64,
    /// Events accepted by the server but never delivered.
    pub lost: u64,
    /// Deliveries whose signature did not verify, or lacked the headers.
    pub bad_signatures: u64,
    /// Whether the run stopped because nothing moved for `--stall-secs`.
    pub stalled: bool,
    /// Server CPU seconds (utime + stime) from the first publish to the last delivery.
    pub server_cpu_secs: f64,
    /// `delivered / server_cpu_secs`.
    pub deliveries_per_server_cpu_sec: f64,
    /// Server VmRSS at the end, KiB.
    pub server_rss_kib: u64,
    /// Server VmHWM (peak RSS since it started), KiB.
    pub server_peak_rss_kib: u64,
    /// The bench's CPU seconds over the same window (publishers and receiver).
    pub bench_cpu_secs: f64,
    /// The bench's share of its runtime's threads, see [`FanoutReport::bench_busy`].
    pub bench_busy: f64,
    /// Publisher, receiver and endpoint errors (the first few).
    pub errors: Vec<String>,
    /// Everything published and delivered, no bad signature, no stall, no error.
    pub ok: bool,
}

/// Above this [`FanoutReport::bench_busy`], the summary warns that the bench was the limit.
pub const BUSY_WARNING: f64 = 0.8;

/// A scenario's result: a JSON object for scripts, a summary for people, and a verdict.
pub trait Report: Serialize {
    /// The human summary.
    fn summary(&self) -> String;
    /// Whether the run found no problem.
    fn is_ok(&self) -> bool;
}

macro_rules! impl_report {
    ($($report:ty),*) => {$(
        impl Report for $report {
            fn summary(&self) -> String {
                <$report>::summary(self)
            }
            fn is_ok(&self) -> bool {
                self.ok
            }
        }
    )*};
}

impl_report!(
    IdleReport,
    CompareReport,
    FanoutReport,
    FloorReport,
    JobsReport,
    WebhooksReport,
    PresenceReport
);

/// [`emit`]s `report` and returns its verdict.
///
/// # Errors
/// Writing to stdout failed.
pub fn finish(report: &impl Report) -> anyhow::Result<bool> {
    emit(report, &report.summary())?;
    Ok(report.is_ok())
}

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
        let on = if self.server == "switchyard" {
            String::new()
        } else {
            format!(" on {}", self.server)
        };
        let _ = writeln!(
            s,
            "idle/{}{on}: {} connections on {} channels, opened in {:.1}s {}",
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
            "  {} {} -> {} (match: {}); dropped {}; events {}",
            if self.server == "switchyard" {
                "/metrics connections"
            } else {
                "nchan_stub_status subscribers"
            },
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
        let on = if self.server == "switchyard" {
            String::new()
        } else {
            format!(" on {}", self.server)
        };
        let _ = writeln!(
            s,
            "fanout/{}{on}: {} subscribers x {} events of {} B at {rate} {}",
            self.transport,
            self.subscribers,
            self.events,
            self.size,
            verdict(self.ok)
        );
        if self.nodes.len() > 1 || self.nodes.first() != Some(&self.publish_url) {
            let _ = writeln!(
                s,
                "  subscribers on {}; publishing to {}",
                self.nodes.join(", "),
                self.publish_url
            );
        }
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
        let _ = writeln!(s, "  latency ms: {}", latency_line(&self.latency));
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
        server_line(
            &mut s,
            self.server_cpu_secs,
            (self.deliveries_per_server_cpu_sec, "deliveries"),
            self.server_rss_kib,
            self.server_peak_rss_kib,
        );
        let _ = writeln!(
            s,
            "  server CPU per delivery: {:.2} us",
            self.server_cpu_us_per_delivery
        );
        // Nchan has no such counters.
        let counted = if self.server_deliveries.is_some() || self.server == "switchyard" {
            format!(
                "; server counted {} deliveries, {} slow-consumer disconnects",
                opt(self.server_deliveries),
                opt(self.server_slow_consumer_disconnects)
            )
        } else {
            String::new()
        };
        if !self.server_cpu_secs_by_pid.is_empty() {
            let each: Vec<String> = self
                .server_cpu_secs_by_pid
                .iter()
                .map(|(pid, cpu)| format!("{pid}: {cpu:.2}"))
                .collect();
            let _ = writeln!(s, "  server CPU s by process: {}", each.join(", "));
        }
        if let Some(cpu) = self.redis_cpu_secs {
            let _ = writeln!(
                s,
                "  redis: {cpu:.2} CPU s, RSS {} KiB",
                self.redis_rss_kib
                    .map_or_else(|| "?".to_owned(), |r| r.to_string())
            );
        }
        bench_line(&mut s, self.bench_cpu_secs, self.bench_busy, &counted);
        for (url, t) in &self.by_node {
            let _ = write!(
                s,
                "\n  {url}: {} subs, delivered {}, lost {}, dup {}, p50 {:.2} p99 {:.2} ms",
                t.subscribers,
                t.delivered,
                t.lost,
                t.duplicated,
                t.latency.p50_ms,
                t.latency.p99_ms
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

impl FloorReport {
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
            "floor: {} connections x {} messages of {} B at {rate}, one write() each {}",
            self.subscribers,
            self.events,
            self.size,
            verdict(self.ok)
        );
        let _ = writeln!(
            s,
            "  connected in {:.1}s; wrote {} of {} in {:.2}s ({:.1} rounds/s); partial {}, \
             failed {}",
            self.connect_secs,
            self.writes,
            self.expected_deliveries,
            self.write_secs,
            self.round_rate,
            self.partial_writes,
            self.write_errors
        );
        let _ = writeln!(
            s,
            "  read {} of {} bytes{}",
            self.received_bytes,
            self.expected_bytes,
            if self.stalled { "  STALLED" } else { "" }
        );
        let _ = writeln!(
            s,
            "  writer: {:.2} CPU s: {:.2} us per delivery ({:.0} deliveries per CPU s)",
            self.server_cpu_secs,
            self.server_cpu_us_per_delivery,
            self.deliveries_per_server_cpu_sec
        );
        bench_line(&mut s, self.bench_cpu_secs, self.bench_busy, "");
        for e in &self.errors {
            let _ = write!(s, "\n  error: {e}");
        }
        s
    }
}

impl CompareReport {
    /// The human summary: the comparison as markdown tables.
    pub fn summary(&self) -> String {
        let nchan = self.servers.contains(&"nchan");
        let mut s = String::new();
        let _ = writeln!(
            s,
            "compare: {} against the floor, {} events of {} B at {}/s {}\n",
            self.servers.join(" and "),
            self.events,
            self.size,
            self.rate,
            verdict(self.ok)
        );
        let mut head = vec!["load", "transport", "switchyard µs/delivery"];
        if nchan {
            head.push("Nchan µs/delivery");
        }
        head.extend(["floor µs/delivery", "switchyard / floor"]);
        if nchan {
            head.push("Nchan / floor");
        }
        head.push("switchyard p99 ms");
        if nchan {
            head.extend(["Nchan p99 ms", "p99 switchyard / Nchan"]);
        }
        table_head(&mut s, &head);
        for r in &self.rows {
            let mark = |server: &str, v: Option<String>| match v {
                Some(v) if r.problems.contains(&server) => format!("{v} (!)"),
                Some(v) => v,
                None if r.problems.contains(&server) => "(!)".to_owned(),
                None => "-".to_owned(),
            };
            let us = |server| {
                mark(
                    server,
                    r.us_per_delivery.get(server).map(|v| format!("{v:.2}")),
                )
            };
            let vs = |server| mark(server, r.vs_floor.get(server).map(|v| format!("{v:.2}")));
            let p99 = |server| mark(server, r.p99_ms.get(server).map(|v| format!("{v:.1}")));
            let mut cells = vec![
                format!("{} x {}/s", r.subscribers, r.rate),
                r.transport.to_owned(),
                us("switchyard"),
            ];
            if nchan {
                cells.push(us("nchan"));
            }
            cells.push(
                r.floor_us
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            );
            cells.push(vs("switchyard"));
            if nchan {
                cells.push(vs("nchan"));
            }
            cells.push(p99("switchyard"));
            if nchan {
                cells.push(p99("nchan"));
                cells.push(dash(r.p99_switchyard_vs_nchan, 2));
            }
            table_row(&mut s, &cells);
        }
        if !self.idle.is_empty() {
            s.push('\n');
            let mut head = vec!["idle connections", "transport", "switchyard KiB/connection"];
            if nchan {
                head.extend(["Nchan KiB/connection", "switchyard / Nchan"]);
            }
            table_head(&mut s, &head);
            for r in &self.idle {
                let kib = |server| dash(r.kib_per_connection.get(server).copied(), 2);
                let mut cells = vec![
                    r.connections.to_string(),
                    r.transport.to_owned(),
                    kib("switchyard"),
                ];
                if nchan {
                    cells.push(kib("nchan"));
                    cells.push(dash(r.switchyard_vs_nchan, 2));
                }
                table_row(&mut s, &cells);
            }
        }
        if self.rows.iter().any(|r| !r.problems.is_empty()) {
            let _ = write!(
                s,
                "\n(!): that run found problems or could not run; see its report"
            );
        }
        for e in &self.errors {
            let _ = write!(s, "\n  error: {e}");
        }
        s
    }
}

/// `| a | b |` and the `| --- | --- |` line under it.
fn table_head(s: &mut String, cells: &[&str]) {
    let _ = writeln!(s, "| {} |", cells.join(" | "));
    let _ = writeln!(s, "|{}", " --- |".repeat(cells.len()));
}

fn table_row(s: &mut String, cells: &[String]) {
    let _ = writeln!(s, "| {} |", cells.join(" | "));
}

/// `v` with `decimals`, or `-`.
fn dash(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

impl JobsReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        // The same load posts durable publishes in the `durable` scenario.
        let what = if self.scenario == "durable" {
            "publishes"
        } else {
            "submits"
        };
        let _ = writeln!(
            s,
            "{}: {} clients x {} B bodies, {} of {} {what} accepted in {:.2}s {}",
            self.scenario,
            self.concurrency,
            self.size,
            self.accepted,
            self.sent,
            self.elapsed_secs,
            verdict(self.ok)
        );
        let _ = writeln!(
            s,
            "  {:.0} {what}/s ({:.1} MiB/s); errors {}{}",
            self.submits_per_sec,
            self.mib_per_sec,
            self.errors,
            by_kind(&self.errors_by_status)
        );
        let _ = writeln!(s, "  latency ms: {}", latency_line(&self.latency));
        server_line(
            &mut s,
            self.server_cpu_secs,
            (self.submits_per_server_cpu_sec, what),
            self.server_rss_kib,
            self.server_peak_rss_kib,
        );
        bench_line(&mut s, self.bench_cpu_secs, self.bench_busy, "");
        if self.errors_by_status.contains_key("429") {
            let _ = write!(
                s,
                "\n  note: 429 = the server's per-client rate or connection limits refused \
                 submits; raise them on the server for a load test"
            );
        }
        for e in &self.error_samples {
            let _ = write!(s, "\n  error: {e}");
        }
        s
    }
}

impl WebhooksReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "webhooks: {} events x {} B on {} -> {} {}",
            self.events,
            self.size,
            self.channel,
            self.receiver_url,
            verdict(self.ok)
        );
        let _ = writeln!(
            s,
            "  published {} in {:.2}s ({:.0}/s, {} connections)",
            self.published, self.publish_secs, self.publish_rate, self.publishers
        );
        if self.dead_endpoints > 0 {
            let _ = writeln!(
                s,
                "  {} dead endpoints on the channel ({} connections to them accepted)",
                self.dead_endpoints, self.dead_connections
            );
        }
        let _ = writeln!(
            s,
            "  delivered {} ({} requests) in {:.2}s: {:.0} deliveries/s",
            self.delivered, self.requests, self.window_secs, self.deliveries_per_sec
        );
        let _ = writeln!(s, "  latency ms: {}", latency_line(&self.latency));
        let _ = writeln!(
            s,
            "  lost {}  duplicates {}  duplicate offsets {}  unexpected {}  bad signatures {}{}",
            self.lost,
            self.duplicates,
            self.duplicate_offsets,
            self.unexpected,
            self.bad_signatures,
            if self.stalled { "  STALLED" } else { "" }
        );
        server_line(
            &mut s,
            self.server_cpu_secs,
            (self.deliveries_per_server_cpu_sec, "deliveries"),
            self.server_rss_kib,
            self.server_peak_rss_kib,
        );
        bench_line(&mut s, self.bench_cpu_secs, self.bench_busy, "");
        for e in &self.errors {
            let _ = write!(s, "\n  error: {e}");
        }
        s
    }
}

/// `p50 .. p99 .. p99.9 .. max .. (n samples)`.
fn latency_line(l: &Latency) -> String {
    format!(
        "p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
    )
}

/// ` (429: 3, timeout: 1)`, or nothing.
fn by_kind(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return String::new();
    }
    let list: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    format!(" ({})", list.join(", "))
}

/// `  server: 1.20 CPU s (9000 deliveries per CPU s), RSS .. KiB, peak .. KiB` and a newline.
fn server_line(s: &mut String, cpu_secs: f64, per_cpu: (f64, &str), rss: u64, peak: u64) {
    let _ = writeln!(
        s,
        "  server: {cpu_secs:.2} CPU s ({:.0} {} per CPU s), RSS {rss} KiB, peak {peak} KiB",
        per_cpu.0, per_cpu.1
    );
}

/// `  bench: 0.50 CPU s (25% busy){extra}`, and a warning when `busy` is above
/// [`BUSY_WARNING`].
fn bench_line(s: &mut String, cpu_secs: f64, busy: f64, extra: &str) {
    let _ = write!(
        s,
        "  bench: {cpu_secs:.2} CPU s ({:.0}% busy){extra}",
        busy * 100.0
    );
    if busy > BUSY_WARNING {
        let _ = write!(
            s,
            "\n  WARNING: the bench was {:.0}% busy: it, not the server, limited this run \
             (try --threads 2, or run the bench on another machine)",
            busy * 100.0
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "[ok]" } else { "[PROBLEMS]" }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}
