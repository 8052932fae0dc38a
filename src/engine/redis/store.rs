//! The Redis store of one gateway node: the command connection and scripts its jobs
//! (`jobs`) and its webhook endpoints and outbox (`webhooks`) share, and this node's copy
//! of the endpoints' filters, which says which deliveries an event owes (`routes`).
//!
//! # Durability
//! An answer means Redis applied the script; it is on disk only as Redis's persistence
//! makes it (see docs/operations.md): `appendfsync always` matches the embedded store's
//! fsync-before-acknowledge, `everysec` may lose the last second on a crash.

use std::{sync::Arc, time::Duration};

use redis::aio::ConnectionManager;
use switchyard_protocol::ChannelName;

use super::{
    RedisStats,
    client::{ConnectError, connection_manager},
    job_scripts::Scripts,
    keys::Topics,
    routes::{FilterCache, Routes},
    webhook_scripts,
};
use crate::{store::StoreError, time::now_ms};

/// Default for [`RedisStoreConfig::op_timeout`].
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`RedisStoreConfig::delivery_lease`].
pub const DEFAULT_DELIVERY_LEASE: Duration = Duration::from_secs(300);

/// Timeouts of the Redis job store.
#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    /// Longest one Redis round trip may take before the operation fails as
    /// [`StoreError::Unavailable`] (503). Default [`DEFAULT_OP_TIMEOUT`].
    pub op_timeout: Duration,
    /// How long a webhook delivery read by this node's dispatcher (`due_for`) stays leased
    /// to it: no other node sends it meanwhile; when it runs out before the attempt is
    /// recorded (the node died or stalled), another node sends it again. Must outlast the
    /// time a delivery waits in the dispatcher's lane plus `webhooks.attempt_timeout_secs`.
    /// Default [`DEFAULT_DELIVERY_LEASE`].
    pub delivery_lease: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            op_timeout: DEFAULT_OP_TIMEOUT,
            delivery_lease: DEFAULT_DELIVERY_LEASE,
        }
    }
}

/// The Redis store of one gateway node (jobs, webhook endpoints and the outbox); see the
/// module docs.
pub struct RedisStore {
    /// Multiplexed, and re-established by the manager itself.
    pub(super) conn: ConnectionManager,
    pub(super) scripts: Scripts,
    pub(super) webhook_scripts: webhook_scripts::WebhookScripts,
    /// This node's copy of the endpoints' filters: which deliveries an event owes.
    pub(super) routes: FilterCache,
    /// Random per store: marks the webhook deliveries this node's dispatcher leased.
    pub(super) node_token: String,
    /// The pub/sub topics of this database, which job scripts publish to.
    pub(super) topics: Topics,
    /// Counts failed operations (shared with the node's hub).
    pub(super) stats: Arc<RedisStats>,
    pub(super) config: RedisStoreConfig,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://host:port/db`) with one multiplexed connection.
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// When the URL is invalid or Redis does not answer within `config.op_timeout`.
    pub async fn connect(url: &str, config: RedisStoreConfig) -> Result<Self, ConnectError> {
        let client = redis::Client::open(url).map_err(ConnectError::Url)?;
        Self::connect_with(&client, config, Arc::default()).await
    }

    /// [`Self::connect`] with a client already built (TLS settings included), counting in
    /// `stats` (the node's hub's).
    ///
    /// # Errors
    /// When Redis does not answer within `config.op_timeout`.
    pub async fn connect_with(
        client: &redis::Client,
        config: RedisStoreConfig,
        stats: Arc<RedisStats>,
    ) -> Result<Self, ConnectError> {
        let conn = connection_manager(client, config.op_timeout).await?;
        let topics = Topics::for_client(client);
        let store = Self {
            conn,
            scripts: Scripts::new(&topics),
            webhook_scripts: webhook_scripts::WebhookScripts::new(&topics),
            topics,
            routes: FilterCache::default(),
            stats,
            node_token: crate::ids::token(),
            config,
        };
        store
            .reload_routes()
            .await
            .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
        Ok(store)
    }

    /// The webhook routes of an event of `event_type` on `channel`, for a script that
    /// appends it (see [`super::scripts`]).
    pub(super) fn routes_for(&self, channel: &ChannelName, event_type: Option<&str>) -> Routes {
        self.routes.routes(channel.as_str(), event_type, now_ms())
    }

    /// Runs one Redis operation within `op_timeout`.
    pub(super) async fn timed<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.stats
            .bounded(self.config.op_timeout, op)
            .await
            .map_err(StoreError::Unavailable)
    }

    /// Up to `count` ids of an index scored at most `max` (`(x` excludes `x`), lowest first.
    pub(super) async fn ids(
        &self,
        index: String,
        max: String,
        count: isize,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("ZRANGE")
                .arg(index)
                .arg("-inf")
                .arg(max)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(count)
                .query_async(&mut conn),
        )
        .await
    }
}
