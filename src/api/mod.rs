//! The HTTP API: [`app`] (the tower `Service` the server serves), its middleware, the
//! router, one error type ([`error::ApiError`]), and one module per resource.

pub mod app;
pub mod assets;
pub mod body;
pub mod channels;
pub mod client_publish;
pub mod cors;
pub mod error;
pub mod guard;
pub mod head;
pub mod headers;
pub mod index;
pub mod jobs;
pub mod json_limits;
pub mod openapi;
pub mod ops;
pub mod presence;
pub mod request_id;
pub mod router;
pub mod routes;
pub mod static_asset;
#[cfg(test)]
pub(crate) mod testing;
pub mod trace;
pub mod webhooks;

pub use app::app;

use std::sync::{Arc, atomic::AtomicI64};

use switchyard_transports::Context;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, engine::Engine};

/// Counts of refusals operators watch: credential failures and limits hit.
#[derive(Debug, Default)]
pub struct Refusals {
    /// 401 answers.
    pub unauthorized: std::sync::atomic::AtomicU64,
    /// 403 answers.
    pub forbidden: std::sync::atomic::AtomicU64,
    /// 429 answers to requests over their rate.
    pub rate_limited: std::sync::atomic::AtomicU64,
    /// Connections refused for `limits.max_connections_per_ip`.
    pub connections_per_ip: std::sync::atomic::AtomicU64,
    /// Connections refused for `limits.max_connections`.
    pub connections_total: std::sync::atomic::AtomicU64,
}

impl Refusals {
    /// Counts `status` when it is a refusal.
    pub fn count(&self, status: http::StatusCode) {
        let counter = match status.as_u16() {
            401 => &self.unauthorized,
            403 => &self.forbidden,
            429 => &self.rate_limited,
            _ => return,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Everything a request handler may use; built once by [`crate::run`].
pub struct AppState {
    /// The engine: publish and history, its readiness and metrics.
    pub engine: Arc<Engine>,
    /// The jobs service.
    pub jobs: Arc<crate::jobs::Jobs>,
    /// Webhook endpoints and the outbox.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Webhook attempt counters.
    pub dispatch_stats: Arc<crate::webhooks::dispatcher::DispatchStats>,
    /// What the consumer transports share.
    pub consumers: Arc<Context>,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Fires at shutdown.
    pub shutdown: CancellationToken,
    /// Set when a stop was asked for: `/readyz` answers 503 during the drain period.
    pub draining: std::sync::atomic::AtomicBool,
    /// Open HTTP connections (before any upgrade).
    pub http_connections: AtomicI64,
    /// API keys, consumer tokens, job tokens.
    pub auth: Arc<crate::auth::Auth>,
    /// Requests and connections refused for credentials or limits (for `/metrics`).
    pub refusals: Refusals,
    /// Reverse proxies whose forwarding header names the client.
    pub proxies: crate::auth::proxies::TrustedProxies,
    /// Request rate per client address (callers without an API key).
    pub ip_limiter: Arc<crate::auth::rate::RateLimiter<std::net::IpAddr>>,
    /// Request rate per API key (by its index in the configuration).
    pub key_limiter: crate::auth::rate::RateLimiter<usize>,
}
