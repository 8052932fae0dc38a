//! The engine `engine` names, assembled: the hub, the stores, their wake-ups and their
//! background tasks, so [`crate::run`] wires one shape whichever engine it runs on.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::job_token::JobTokens,
    config::{self, Config},
    hub::{
        Bus, MemoryHub,
        memory::MemoryHubConfig,
        redis::{RedisHub, RedisHubConfig, RedisStats, client::client as redis_client},
    },
    store::{
        SqliteStore, Store, WebhookStore,
        redis::{RedisStore, RedisStoreConfig, keep_job_token_key, router},
        sqlite::WriterStats,
    },
};

/// What the rest of the server runs on.
pub(crate) struct Engine {
    /// Publishes, history, and the transports' subscriptions.
    pub(crate) bus: Arc<dyn Bus>,
    /// Jobs and their event logs.
    pub(crate) store: Arc<dyn Store>,
    /// Webhook endpoints and the delivery outbox.
    pub(crate) webhook_store: Arc<dyn WebhookStore>,
    /// Wakes the webhook dispatcher: deliveries became due or an endpoint changed.
    pub(crate) outbox_ready: Arc<Notify>,
    /// Wakes waiting claims when another node queued a job (Redis only).
    pub(crate) claimable: Option<Arc<Notify>>,
    /// The embedded store's commit counters (zero on Redis).
    pub(crate) store_stats: Arc<WriterStats>,
    /// The Redis connections' counters (Redis only).
    pub(crate) redis_stats: Option<Arc<RedisStats>>,
    /// What job tokens are signed with: per data directory, or shared through Redis.
    pub(crate) job_tokens: JobTokens,
    /// Periodic upkeep of the hub (expired history, idle channels, closed sinks).
    pub(crate) sweep: Box<dyn Fn() + Send + Sync>,
    /// The engine's own background work, run until shutdown.
    tasks: Vec<Task>,
}

/// A background task, started by [`Engine::spawn_tasks`].
type Task = Box<dyn FnOnce(CancellationToken) -> tokio::task::JoinHandle<()> + Send>;

impl Engine {
    /// Opens the engine `config.engine` names.
    ///
    /// # Errors
    /// When the embedded store cannot be opened, or Redis cannot be reached.
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Self> {
        match config.engine() {
            config::Engine::Embedded => Self::embedded(config),
            config::Engine::Redis(url) => Self::redis(config, &url).await,
        }
    }

    fn embedded(config: &Config) -> anyhow::Result<Self> {
        let store = SqliteStore::open(&config.data_dir)?;
        let hub = Arc::new(MemoryHub::new(
            MemoryHubConfig {
                history_size: config.history.size,
                history_ttl: Duration::from_secs(config.history.ttl_secs),
                max_channels: config.limits.max_channels,
            },
            Some(Arc::clone(&store) as _),
        ));
        // Committed job events reach the hub in commit order, straight from the writer.
        let hub_for_store = Arc::clone(&hub);
        store.start(Box::new(move |channel, event| {
            hub_for_store.append_stored(channel, event)
        }));
        let sweep_hub = Arc::clone(&hub);
        Ok(Self {
            bus: hub,
            store_stats: Arc::clone(&store.stats),
            outbox_ready: Arc::clone(&store.outbox_ready),
            claimable: None,
            redis_stats: None,
            job_tokens: JobTokens::open(&config.data_dir)?,
            webhook_store: Arc::clone(&store) as _,
            store: store as _,
            sweep: Box::new(move || {
                sweep_hub.sweep();
            }),
            tasks: Vec::new(),
        })
    }

    async fn redis(config: &Config, url: &str) -> anyhow::Result<Self> {
        warn_if_leases_can_run_out(config);
        let op_timeout = Duration::from_millis(config.redis.op_timeout_ms);
        let shown = config.engine_redacted();
        let client = redis_client(url, config)?;
        let redis_stats = Arc::new(RedisStats::default());
        let hub = RedisHub::connect_with(
            client.clone(),
            RedisHubConfig {
                op_timeout,
                ..RedisHubConfig::from_config(config)
            },
            Arc::clone(&redis_stats),
        )
        .await
        .map_err(|e| anyhow::anyhow!("engine {shown}: {e}"))?;
        let store = RedisStore::connect_with(
            &client,
            RedisStoreConfig {
                op_timeout,
                delivery_lease: Duration::from_secs(config.redis.delivery_lease_secs),
            },
            Arc::clone(&redis_stats),
        )
        .await
        .map_err(|e| anyhow::anyhow!("engine {shown}: {e}"))?;
        let job_key = store
            .shared_job_token_key()
            .await
            .map_err(|e| anyhow::anyhow!("engine {shown}: {e}"))?;
        let store = Arc::new(store);
        let hub = Arc::new(hub);
        let signals = hub.signals();
        let (claimable, outbox_ready) = (Arc::clone(&signals.jobs), Arc::clone(&signals.outbox));
        let router_store = Arc::clone(&store);
        let route_wake = store.route_wake();
        let key_store = Arc::clone(&store);
        let kept_key = job_key.clone();
        let sweep_hub = Arc::clone(&hub);
        Ok(Self {
            bus: hub,
            store_stats: Arc::default(),
            outbox_ready,
            claimable: Some(claimable),
            redis_stats: Some(redis_stats),
            job_tokens: JobTokens::from_key(&job_key),
            webhook_store: Arc::clone(&store) as _,
            store: store as _,
            sweep: Box::new(move || sweep_hub.sweep()),
            tasks: vec![
                Box::new(move |stop| tokio::spawn(router::run(router_store, route_wake, stop))),
                Box::new(move |stop| tokio::spawn(keep_job_token_key(key_store, kept_key, stop))),
            ],
        })
    }

    /// Starts the engine's background tasks; they end when `stop` fires.
    pub(crate) fn spawn_tasks(
        &mut self,
        stop: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.tasks.drain(..).map(|t| t(stop.clone())).collect()
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
