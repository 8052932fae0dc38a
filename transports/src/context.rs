//! What every transport needs: the hub, limits, metrics, and the shutdown signal.

use std::{sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    access::Verifier, allowance::SubscriptionBudgets, client_publish::ClientPublisher, hub::Hub,
    metrics::TransportMetrics, namespaces::Namespaces, occupancy::Occupancy, presence::Presence,
};

/// Limits and timings of the consumer transports (built from the server's config).
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Live events queued per connection before it counts as a slow consumer and is closed.
    pub queue_capacity: usize,
    /// Most channels one SSE, stream or long-poll request may name.
    pub max_channels_per_request: usize,
    /// Interval of SSE comment / NDJSON blank-line heartbeats.
    pub heartbeat_interval: Duration,
    /// The `retry:` reconnection hint sent to SSE clients.
    pub sse_retry: Duration,
    /// Most subscriptions on one WebSocket connection.
    pub ws_max_subscriptions: usize,
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    pub ws_max_message_bytes: usize,
    /// tungstenite's per-connection read buffer, allocated up front: keep it small, since
    /// clients send only small control frames.
    pub ws_read_buffer_bytes: usize,
    /// Interval of protocol pings to detect dead peers.
    pub ws_ping_interval: Duration,
    /// A peer silent (no frame, no pong) for this long is closed as dead.
    pub ws_idle_timeout: Duration,
    /// Time a WebSocket opened without a credential has to send its `auth` frame.
    pub ws_auth_timeout: Duration,
    /// Longest a single write to a consumer may block before it is dropped as slow.
    pub send_timeout: Duration,
    /// Default long-poll hold when `timeout` is not given.
    pub poll_default_timeout: Duration,
    /// Longest long-poll hold a client may ask for.
    pub poll_max_timeout: Duration,
    /// Default and maximum events per long-poll response.
    pub poll_default_limit: usize,
    /// Maximum events per long-poll response.
    pub poll_max_limit: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_channels_per_request: 64,
            heartbeat_interval: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            ws_max_subscriptions: 256,
            ws_max_message_bytes: 64 * 1024,
            ws_read_buffer_bytes: 256,
            ws_ping_interval: Duration::from_secs(25),
            ws_idle_timeout: Duration::from_secs(60),
            ws_auth_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            poll_default_timeout: Duration::from_secs(30),
            poll_max_timeout: Duration::from_secs(60),
            poll_default_limit: 100,
            poll_max_limit: 1000,
        }
    }
}

/// Shared by all transports of one server.
pub struct Context {
    /// The event hub.
    pub hub: Arc<dyn Hub>,
    /// Limits and timings.
    pub config: TransportConfig,
    /// Counters rendered by the server's `/metrics`.
    pub metrics: Arc<TransportMetrics>,
    /// Fires when the server shuts down: sessions tell their clients and end.
    pub shutdown: CancellationToken,
    /// Upgraded WebSocket sessions run outside hyper's connection; the server waits on
    /// this tracker at shutdown so they get to send their close frame.
    pub tracker: TaskTracker,
    /// Checks consumer credentials; `None` is open mode (every channel, no token).
    pub verifier: Option<Arc<dyn Verifier>>,
    /// Subscriptions per client address and per token subject.
    pub subscriptions: Arc<SubscriptionBudgets>,
    /// Each channel family's rules.
    pub namespaces: Arc<Namespaces>,
    /// Subscribers per channel of namespaces with `max_subscribers`.
    pub occupancy: Arc<Occupancy>,
    /// Who is subscribed, for namespaces that track presence.
    pub presence: Option<Arc<dyn Presence>>,
    /// Publishes for consumers, on namespaces that allow it (`None`: nowhere).
    pub publisher: Option<Arc<dyn ClientPublisher>>,
}

/// The client's address as per-address limits count it (behind a trusted proxy, the
/// client it names; an IPv6 address by its /64), put into each request's extensions by
/// the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

/// Put into each HTTP request's extensions by the server: cancelling `abort` asks the
/// server to close that connection (a slow consumer whose body hyper no longer polls).
#[derive(Clone)]
pub struct ConnectionHandle {
    /// Cancelled to close the connection after a short grace period.
    pub abort: CancellationToken,
    /// What the connection holds while open (its connection-limit permit); an upgraded
    /// WebSocket session keeps a clone so the limit still counts it.
    pub hold: Arc<dyn std::any::Any + Send + Sync>,
    /// The client's address (per-address limits).
    pub peer: std::net::SocketAddr,
}
