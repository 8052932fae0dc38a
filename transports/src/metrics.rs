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

    /// Records the publish → deliver latency of one live event.
    pub fn observe_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(
            latency.as_micros().min(u128::from(u64::MAX)) as u64,
            Relaxed,
        );
    }

    /// Counts a slow-consumer disconnect.
    pub fn slow_consumer(&self, transport: Transport) {
        self.slow_consumers[transport as usize].fetch_add(1, Relaxed);
    }

    /// Appends these metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP switchyard_connections Open consumer connections.\n");
        out.push_str("# TYPE switchyard_connections gauge\n");
        for t in Transport::ALL {
            let _ = writeln!(
                out,
                "switchyard_connections{{transport=\"{}\"}} {}",
                t.label(),
                self.connections(t)
            );
        }
        out.push_str("# HELP switchyard_deliveries_total Events written to consumers.\n");
        out.push_str("# TYPE switchyard_deliveries_total counter\n");
        for t in Transport::ALL {
            let n = self.deliveries[t as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "switchyard_deliveries_total{{transport=\"{}\"}} {n}",
                t.label()
            );
        }
        out.push_str("# HELP switchyard_slow_consumer_disconnects_total Consumers closed because their queue overflowed.\n");
        out.push_str("# TYPE switchyard_slow_consumer_disconnects_total counter\n");
        for t in Transport::ALL {
            let n = self.slow_consumers[t as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "switchyard_slow_consumer_disconnects_total{{transport=\"{}\"}} {n}",
                t.label()
            );
        }
        out.push_str("# HELP switchyard_delivery_latency_seconds Publish to deliver latency of live events.\n");
        out.push_str("# TYPE switchyard_delivery_latency_seconds histogram\n");
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                out,
                "switchyard_delivery_latency_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
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
