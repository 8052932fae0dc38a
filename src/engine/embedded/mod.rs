//! The embedded engine: one node, no external service. Channels live in memory ([`hub`]);
//! jobs, their event logs, durable namespaces' channel logs, webhook endpoints and the
//! delivery outbox live in SQLite under `data_dir` ([`store`]), written by one
//! group-committing thread ([`writer`]).
//!
//! # Layout
//! - [`hub`]: channels with offsets, bounded history and fan-out ([`MemoryHub`]); job
//!   channels and durable namespaces' channels are read from the store on first use and
//!   fed by its commits.
//! - `channel_log`: the SQL of durable namespaces' channel logs; `log_retention`: the
//!   background task that trims them to their namespaces' bounds.
//! - `idempotency`: the per-channel memory of `Idempotency-Key`s.
//! - [`presence`]: who is subscribed to presence channels ([`MemoryPresence`]); joins and
//!   leaves go out through the hub as transient events.
//! - [`store`]: the SQLite store ([`SqliteStore`]): a reader connection, the writer, and
//!   the [`crate::store`] contracts over the SQL of `jobs`, `webhooks` and `retention`.
//! - [`writer`]: group commit: one transaction and one fsync for whatever is pending;
//!   `checkpoint`: WAL checkpoints beside it, on a thread of their own.
//! - `schema`: tables, indexes and the store's epoch.
//! - `lock`: one gateway per data directory.

pub mod budget;
mod channel_log;
mod checkpoint;
pub mod hub;
mod idempotency;
mod jobs;
mod lock;
mod log_retention;
pub mod presence;
mod retention;
mod schema;
pub mod store;
mod webhooks;
pub mod writer;

use std::{sync::Arc, time::Duration};

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;
use switchyard_protocol::ChannelName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::lock::DataDirLock;
pub use self::{
    hub::{MemoryHub, MemoryHubConfig},
    presence::MemoryPresence,
    store::SqliteStore,
};
use crate::{
    auth::job_token::JobTokens,
    config::Config,
    hub::{HubError, Publish, PublishError, Published},
    jobs::channel::is_job_channel,
    store::Store,
};
use switchyard_transports::{metrics::write_family, namespaces::Namespaces};

/// The embedded engine's parts, wired; see the module docs.
pub struct Embedded {
    /// Held while the engine lives: one gateway per data directory.
    _lock: DataDirLock,
    hub: Arc<MemoryHub>,
    /// Boxed: its map is large, and `Engine` should not be sized by it.
    presence: Box<MemoryPresence>,
    store: Arc<SqliteStore>,
    /// Channel rules: the durable logs' retention reads their bounds.
    namespaces: Arc<Namespaces>,
    job_tokens: JobTokens,
    /// Claims wait on it; only this node's submits and requeues fire it.
    claimable: Arc<Notify>,
}

impl Embedded {
    /// Opens (creating when missing) the store in `config.data_dir` and starts its writer.
    ///
    /// # Errors
    /// When the data directory, the database or the job token key cannot be opened.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let lock = DataDirLock::take(&config.data_dir)?;
        let store = SqliteStore::open(&config.data_dir)?;
        let namespaces = Arc::new(config.namespaces()?);
        let hub = Arc::new(MemoryHub::new(
            MemoryHubConfig {
                namespaces: Arc::clone(&namespaces),
                max_channels: config.limits.max_channels,
                channel_bytes: config.history.max_bytes_per_channel,
                total_bytes: config.history.max_bytes,
            },
            Some(Arc::clone(&store) as _),
        ));
        // Committed events reach the hub in commit order, straight from the writer.
        store.start(Arc::clone(&hub));
        Ok(Self {
            _lock: lock,
            presence: Box::new(MemoryPresence::new(Arc::clone(&hub))),
            hub,
            store,
            namespaces,
            job_tokens: JobTokens::open(&config.data_dir)?,
            claimable: Arc::new(Notify::new()),
        })
    }

    pub(super) fn hub(&self) -> &MemoryHub {
        &self.hub
    }

    pub(super) fn presence(&self) -> &MemoryPresence {
        &self.presence
    }

    pub(super) fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// Publishes one event: at once when it owes no webhook delivery, its channel is not
    /// durable and has nothing in the writer; otherwise through the writer, so the event
    /// (durable channels) and its deliveries are fsync'd before anyone sees it (see
    /// [`hub`]).
    pub(super) fn publish<'a>(
        &'a self,
        req: Publish<'a>,
    ) -> BoxFuture<'a, Result<Published, PublishError>> {
        async move {
            if is_job_channel(req.channel.as_str()) {
                return Err(PublishError::Reserved);
            }
            let owes_deliveries = self
                .store
                .webhook_filters
                .any_matching(req.channel.as_str(), req.event_type);
            if !owes_deliveries && let Some(published) = self.hub.publish_now(&req)? {
                return Ok(published);
            }
            let ticket = self.hub.ticket(req.channel)?;
            let owned = OwnedPublish::from(&req);
            let hub = Arc::clone(&self.hub);
            self.store
                .publish(move || hub.assign(ticket, &owned.as_publish()))
                .await
                .map_err(|e| {
                    PublishError::Hub(HubError::Unavailable(format!(
                        "the event and its webhook deliveries could not be stored: {e}"
                    )))
                })?
        }
        .boxed()
    }

    pub(super) fn job_tokens(&self) -> JobTokens {
        self.job_tokens.clone()
    }

    pub(super) fn claimable(&self) -> Arc<Notify> {
        Arc::clone(&self.claimable)
    }

    pub(super) fn outbox_changed(&self) -> Arc<Notify> {
        Arc::clone(&self.store.outbox_ready)
    }

    pub(super) async fn ready(&self) -> Result<(), String> {
        self.store
            .ping()
            .await
            .map_err(|e| format!("the store does not answer: {e}"))?;
        self.store.can_commit().await
    }

    pub(super) fn write_metrics(&self, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        let one = |v: u64| [(String::new(), v)];
        let budget = self.hub.budget();
        write_family(
            out,
            "switchyard_history_bytes",
            "Bytes of channel history and idempotency keys held in memory (history.max_bytes).",
            "gauge",
            one(budget.held() as u64),
        );
        write_family(
            out,
            "switchyard_history_evicted_events_total",
            "Events dropped from history before their time to stay within a byte budget.",
            "counter",
            [
                (
                    "reason=\"channel_bytes\"".to_owned(),
                    budget.evicted_for_channel.load(Relaxed),
                ),
                (
                    "reason=\"total_bytes\"".to_owned(),
                    budget.evicted_for_total.load(Relaxed),
                ),
            ],
        );
        write_family(
            out,
            "switchyard_idempotency_keys_evicted_total",
            "Idempotency keys forgotten before their 24 h to stay within a channel's byte budget.",
            "counter",
            one(budget.keys_evicted.load(Relaxed)),
        );
        write_family(
            out,
            "switchyard_channels_published",
            "Channels holding published state (limits.max_channels counts these).",
            "gauge",
            one(budget.published_channels() as u64),
        );
        let stats = &self.store.stats;
        write_family(
            out,
            "switchyard_store_commits_total",
            "Store transactions committed (one fsync each).",
            "counter",
            one(stats.commits.load(Relaxed)),
        );
        write_family(
            out,
            "switchyard_store_ops_total",
            "Store write operations committed (group commit: several per transaction).",
            "counter",
            one(stats.ops.load(Relaxed)),
        );
        let logs = &self.store.log_stats;
        write_family(
            out,
            "switchyard_durable_events_written_total",
            "Events of durable namespaces' channels committed to the store (fsync'd before the 2xx).",
            "counter",
            one(logs.written.load(Relaxed)),
        );
        write_family(
            out,
            "switchyard_durable_events_deleted_total",
            "Events of durable channels retention deleted (beyond history_size or older than history_ttl).",
            "counter",
            one(logs.deleted.load(Relaxed)),
        );
        write_family(
            out,
            "switchyard_store_max_batch",
            "Most operations committed in one transaction.",
            "gauge",
            one(stats.max_batch.load(Relaxed)),
        );
    }

    pub(super) fn sweep(&self) {
        self.hub.sweep();
    }

    pub(super) fn spawn_tasks(&self, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        vec![tokio::spawn(log_retention::run(
            Arc::clone(&self.store),
            Arc::clone(&self.namespaces),
            stop.clone(),
        ))]
    }

    pub(super) async fn close(&self, deadline: Duration) {
        self.store.close_now(deadline).await;
    }
}

/// A publish request the writer thread can own.
struct OwnedPublish {
    channel: ChannelName,
    event_type: String,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
}

impl OwnedPublish {
    fn from(req: &Publish<'_>) -> Self {
        Self {
            channel: req.channel.clone(),
            event_type: req.event_type.to_owned(),
            data: req.data.to_owned(),
            idempotency_key: req.idempotency_key.map(str::to_owned),
        }
    }

    fn as_publish(&self) -> Publish<'_> {
        Publish {
            channel: &self.channel,
            event_type: &self.event_type,
            data: &self.data,
            idempotency_key: self.idempotency_key.as_deref(),
        }
    }
}
