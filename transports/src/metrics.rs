//! Counters of the consumer transports: connections, deliveries, slow consumers, and the
//! publish → deliver latency histogram. Plain atomics: the hot path pays one relaxed add.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// A consumer transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `GET /v1/ws`
    WebSocket = 0,
    /// `GET /v1/sse`
    Sse = 1,
    /// `GET /v1/stream`
    Stream = 2,
    /// `GET /v1/poll`
    LongPoll = 3,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 4] = [Self::WebSocket, Self::Sse, Self::Stream, Self::LongPoll];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::Stream => "stream",
            Self::LongPoll => "longpoll",
        }
    }
}

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Transport counters, shared by every connection.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    connections: [AtomicI64; 4],
    deliveries: [AtomicU64; 4],
    slow_consumers: [AtomicU64; 4],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    presence_members: AtomicI64,
    presence_joins: AtomicU64,
    presence_leaves: AtomicU64,
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub struct ConnectionGuard<'a> {
    metrics: &'a TransportMetrics,
    transport: Transport,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.metrics.connections[self.transport as usize].fetch_sub(1, Relaxed);
    }
}

impl TransportMetrics {
    /// Counts a connection as open until the guard drops.
    pub fn connection(&self, transport: Transport) -> ConnectionGuard<'_> {
        self.connections[transport as usize].fetch_add(1, Relaxed);
        ConnectionGuard {
            metrics: self,
            transport,
        }
    }

    /// Open connections of a transport.
    pub fn connections(&self, transport: Transport) -> i64 {
        self.connections[transport as usize].load(Relaxed)
    }

    /// Counts `n` delivered events.
    pub fn delivered(&self, transport: Transport, n: u64) {
        self.deliveries[transport as usize].fetch_add(n, Relaxed);
    }

    /// Records the publish → deliver latency of one live event: one bucket (they are made
    /// cumulative when rendered), the count and the sum.
    pub fn observe_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|bound| secs <= *bound) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(
            latency.as_micros().min(u128::from(u64::MAX)) as u64,
            Relaxed,
        );
    }

    /// Counts a presence member joined by this node's connections.
    pub fn presence_joined(&self) {
        self.presence_members.fetch_add(1, Relaxed);
        self.presence_joins.fetch_add(1, Relaxed);
    }

    /// Counts a presence member of this node's connections gone.
    pub fn presence_left(&self) {
        self.presence_members.fetch_sub(1, Relaxed);
        self.presence_leaves.fetch_add(1, Relaxed);
    }

    /// Presence members held by this node's connections.
    pub fn presence_members(&self) -> i64 {
        self.presence_members.load(Relaxed)
    }

    /// Counts a slow-consumer disconnect.
    pub fn slow_consumer(&self, transport: Transport) {
        self.slow_consumers[transport as usize].fetch_add(1, Relaxed);
    }

    /// Appends these metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let per_transport = |values: &[AtomicU64; 4]| {
            Transport::ALL.map(|t| {
                (
                    format!("transport=\"{}\"", t.label()),
                    values[t as usize].load(Relaxed),
                )
            })
        };
        let connections =
            Transport::ALL.map(|t| (format!("transport=\"{}\"", t.label()), self.connections(t)));
        write_family(
            out,
            "switchyard_connections",
            "Open consumer connections.",
            "gauge",
            connections,
        );
        write_family(
            out,
            "switchyard_deliveries_total",
            "Events written to consumers.",
            "counter",
            per_transport(&self.deliveries),
        );
        write_family(
            out,
            "switchyard_slow_consumer_disconnects_total",
            "Consumers closed because they could not keep up (queue overflow or write timeout).",
            "counter",
            per_transport(&self.slow_consumers),
        );
        let one = |v: u64| [(String::new(), v)];
        write_family(
            out,
            "switchyard_presence_members",
            "Presence members held by this node's connections (all channels).",
            "gauge",
            [(String::new(), self.presence_members())],
        );
        write_family(
            out,
            "switchyard_presence_joins_total",
            "Presence joins by this node's connections.",
            "counter",
            one(self.presence_joins.load(Relaxed)),
        );
        write_family(
            out,
            "switchyard_presence_leaves_total",
            "Presence leaves by this node's connections (unsubscribes and closed connections).",
            "counter",
            one(self.presence_leaves.load(Relaxed)),
        );
        out.push_str("# HELP switchyard_delivery_latency_seconds Publish to deliver latency of live events.\n");
        out.push_str("# TYPE switchyard_delivery_latency_seconds histogram\n");
        let mut cumulative = 0;
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(
                out,
                "switchyard_delivery_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "switchyard_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "switchyard_delivery_latency_seconds_sum {sum}");
        let _ = writeln!(out, "switchyard_delivery_latency_seconds_count {count}");
    }
}

/// Writes one metric family: `# HELP`, `# TYPE`, then a sample per `(labels, value)`
/// (labels as `k="v"` text, empty for none).
pub fn write_family<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = TransportMetrics::default();
        m.observe_latency(Duration::from_micros(300));
        m.observe_latency(Duration::from_millis(3));
        m.observe_latency(Duration::from_secs(60));
        let mut out = String::new();
        m.render(&mut out);
        let bucket = |le: &str| {
            let prefix = format!("switchyard_delivery_latency_seconds_bucket{{le=\"{le}\"}} ");
            out.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap()
                .to_owned()
        };
        assert_eq!(bucket("0.0005"), "1");
        assert_eq!(bucket("0.005"), "2");
        assert_eq!(bucket("10"), "2");
        assert_eq!(bucket("+Inf"), "3");
        assert!(out.contains("switchyard_delivery_latency_seconds_count 3"));
    }
}
