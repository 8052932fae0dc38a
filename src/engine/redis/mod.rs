//! The Redis engine (`engine = "redis://..."`): several gateway nodes share one Redis (or
//! Valkey) primary. Channel history, offsets, epochs and idempotency keys, jobs, webhook
//! endpoints and the delivery outbox live in Redis, every change one atomic Lua script; Redis
//! pub/sub carries new events and wake-ups between nodes.
//!
//! # Layout
//! - [`client`]: the client from the `engine` URL and `[redis]` TLS settings, and the
//!   command connection every part shares.
//! - [`keys`]: key and topic names, in one place so every node agrees.
//! - `scripts`: the prelude every Lua script shares, and how an event's webhook
//!   deliveries are recorded in the script that appends it; `channel_scripts`,
//!   `job_scripts`, `webhook_scripts`: the scripts, one per change.
//! - `routes`: which endpoints an event owes deliveries to, matched by this node against
//!   its copy of the endpoints' filters.
//! - [`hub`]: channels ([`RedisHub`]); `local` holds this node's subscribers and the
//!   history → live handover, `listener` the node's one pub/sub connection, `wire` an
//!   event's parts as Redis carries them.
//! - [`store`]: the node's store ([`RedisStore`]): `jobs` (the queue, leases, one script
//!   per change) and `webhooks` (endpoints, the outbox, per-delivery leases across nodes).
//! - [`presence`]: who is subscribed to presence channels, across nodes, with a liveness
//!   key per node so that a dead node's members leave.
//! - `job_token_key`: the job token signing key every node shares.
//! - `stats`: connection health and failed operations, for `/metrics`.
//!
//! The scripts touch global keys and a job's keys together, so the engine needs a single
//! Redis (or Valkey) primary, not Redis Cluster.

mod channel_scripts;
pub mod client;
pub mod hub;
mod job_scripts;
mod job_token_key;
mod jobs;
pub mod keys;
mod listener;
mod local;
pub mod presence;
mod reply;
mod routes;
mod scripts;
mod stats;
pub mod store;
mod webhook_scripts;
mod webhooks;
mod wire;

use std::{sync::Arc, time::Duration};

use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::{
    client::ConnectError,
    hub::{RedisHub, RedisHubConfig},
    stats::RedisStats,
    store::{RedisStore, RedisStoreConfig},
};
use crate::{
    auth::job_token::JobTokens,
    config::Config,
    hub::{HubError, Publish, PublishError, Published},
    store::Store,
};
use switchyard_transports::metrics::write_family;

/// The Redis engine of one node; see the module docs.
pub struct Redis {
    hub: Arc<RedisHub>,
    store: Arc<RedisStore>,
    stats: Arc<RedisStats>,
    presence: Arc<presence::RedisPresence>,
    /// The job token key every node shares, kept in Redis by a background task.
    job_key: Vec<u8>,
}

impl Redis {
    /// Connects the hub and the store to the Redis at `url` and reads (or creates) the
    /// shared job token key.
    ///
    /// # Errors
    /// When the URL or its TLS settings are invalid, or Redis does not answer.
    pub async fn connect(config: &Config, url: &str) -> anyhow::Result<Self> {
        warn_if_leases_can_run_out(config);
        let op_timeout = Duration::from_millis(config.redis.op_timeout_ms);
        let shown = config.engine_redacted();
        let client = client::client(url, config)?;
        let stats = Arc::new(RedisStats::default());
        let hub = RedisHub::connect_with(
            client.clone(),
            RedisHubConfig {
                op_timeout,
                ..RedisHubConfig::from_config(config)?
            },
            Arc::clone(&stats),
        )
        .await
        .map_err(|e| anyhow::anyhow!("engine {shown}: {e}"))?;
        let store = RedisStore::connect_with(
            &client,
            RedisStoreConfig {
                op_timeout,
                delivery_lease: Duration::from_secs(config.redis.delivery_lease_secs),
            },
            Arc::clone(&stats),
        )
        .await
        .map_err(|e| anyhow::anyhow!("engine {shown}: {e}"))?;
        let job_key = store
            .shared_job_token_key()
            .await
            .map_err(|e| anyhow::anyhow!("engine {shown}: {e}"))?;
        let presence = presence::RedisPresence::new(
            client::connection_manager(&client, op_timeout)
                .await
                .map_err(|e| anyhow::anyhow!("engine {shown}: {e}"))?,
            keys::Topics::for_client(&client),
            presence::PresenceTimes {
                ttl: Duration::from_secs(config.redis.presence_ttl_secs),
                op_timeout,
            },
            Arc::clone(&stats),
            Arc::new(config.namespaces()?),
        );
        Ok(Self {
            hub: Arc::new(hub),
            store: Arc::new(store),
            stats,
            presence: Arc::new(presence),
            job_key,
        })
    }

    pub(super) fn hub(&self) -> &RedisHub {
        &self.hub
    }

    /// Who is subscribed to presence channels, across nodes.
    pub(super) fn presence(&self) -> &presence::RedisPresence {
        &self.presence
    }

    pub(super) fn store(&self) -> &RedisStore {
        &self.store
    }

    /// Publishes one event with the webhook deliveries it owes, in one script (see
    /// [`scripts`]); matched again and retried if the endpoints changed meanwhile.
    pub(super) fn publish<'a>(
        &'a self,
        req: Publish<'a>,
    ) -> BoxFuture<'a, Result<Published, PublishError>> {
        async move {
            for _ in 0..routes::REROUTE_ATTEMPTS {
                let routes = self.store.routes_for(req.channel, Some(req.event_type));
                if let Some(published) = self.hub.append(&req, &routes).await? {
                    return Ok(published);
                }
                self.store
                    .reload_routes()
                    .await
                    .map_err(|e| PublishError::Hub(HubError::Unavailable(e.to_string())))?;
            }
            Err(PublishError::Hub(HubError::Unavailable(
                "the webhook endpoints kept changing while the event was published; retry".into(),
            )))
        }
        .boxed()
    }

    pub(super) fn job_tokens(&self) -> JobTokens {
        JobTokens::from_key(&self.job_key)
    }

    pub(super) fn claimable(&self) -> Arc<Notify> {
        Arc::clone(&self.hub.signals().jobs)
    }

    pub(super) fn outbox_changed(&self) -> Arc<Notify> {
        Arc::clone(&self.hub.signals().outbox)
    }

    pub(super) async fn ready(&self) -> Result<(), String> {
        self.store
            .ping()
            .await
            .map_err(|e| format!("the store does not answer: {e}"))?;
        self.hub
            .ping()
            .await
            .map_err(|e| format!("the hub is not ready: {e}"))
    }

    pub(super) fn write_metrics(&self, out: &mut String) {
        let one = |v: u64| [(String::new(), v)];
        write_family(
            out,
            "switchyard_redis_up",
            "1 while this node's Redis pub/sub connection is up (events from other nodes arrive only then).",
            "gauge",
            one(u64::from(self.stats.is_up())),
        );
        write_family(
            out,
            "switchyard_redis_reconnects_total",
            "Times this node's Redis pub/sub connection was made again after a loss.",
            "counter",
            one(self.stats.reconnects()),
        );
        write_family(
            out,
            "switchyard_redis_errors_total",
            "Redis operations that failed or timed out (answered 503, or retried by a background task).",
            "counter",
            one(self.stats.errors()),
        );
    }

    pub(super) fn sweep(&self) {
        self.hub.sweep();
    }

    pub(super) fn spawn_tasks(&self, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let key_keeper = tokio::spawn(job_token_key::keep_job_token_key(
            Arc::clone(&self.store),
            self.job_key.clone(),
            stop.clone(),
        ));
        let mut tasks = vec![key_keeper];
        tasks.extend(self.presence.start(stop));
        tasks
    }

    pub(super) async fn close(&self, deadline: Duration) {
        self.store.close(deadline).await;
    }
}

/// A delivery leased to this node waits in its endpoint's lane (at most two refills) behind
/// `max_per_endpoint` attempts of up to `attempt_timeout_secs` each. If that can outlast
/// `redis.delivery_lease_secs`, another node may send it too (at least once still holds, but
/// receivers see more duplicates): say so at startup.
fn warn_if_leases_can_run_out(config: &Config) {
    let queued = 2 * crate::webhooks::lanes::REFILL;
    let per_endpoint = config.webhooks.max_per_endpoint.max(1);
    let worst = (queued.div_ceil(per_endpoint) + 1) as f64 * config.webhooks.attempt_timeout_secs;
    if worst > config.redis.delivery_lease_secs as f64 {
        tracing::warn!(
            worst_wait_secs = worst,
            delivery_lease_secs = config.redis.delivery_lease_secs,
            "a webhook delivery can wait longer than redis.delivery_lease_secs behind a slow endpoint, and then be sent by another node too; raise redis.delivery_lease_secs or webhooks.max_per_endpoint"
        );
    }
}
