//! The Redis hub: channel history, offsets, epochs and idempotency keys live in Redis, and
//! Redis pub/sub carries new events to every gateway node that has subscribers for them, so
//! N nodes behind a load balancer serve the same channels.
//!
//! It works with the engine's other modules: `keys` (key and topic names), `channel_scripts`
//! (the append script: offset, idempotency, history, trim, webhook deliveries and publish in
//! one atomic step; the read script: resolve a position, return the events after it), `wire`
//! (an event's parts as stored and published, and the rebuilt shared `Event`), `local` (this
//! node's subscribers per channel and the gap-free history → live handover) and `listener`
//! (the node's one pub/sub connection, reconnection and catch-up).
//!
//! Semantics follow the embedded engine's hub: the same offsets from 1, the same `reset`
//! rules, the same idempotency answers, whichever node is asked. `jobs/*` channels are
//! written by the job scripts in the same layout; the hub serves them like the embedded hub
//! serves the SQLite store's job channels (never trimmed by age, the latest `history.size`
//! events replayable). Each channel's history bounds are its namespace's (`history_size`,
//! `history_ttl`), passed to the scripts with every call. History lives in Redis, so every
//! channel's cursors survive a restart of the gateway; a `durable` namespace is as durable
//! as Redis's own persistence (`appendonly yes`, `appendfsync always` for a write fsync'd
//! before it is acknowledged).

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::ConnectionManager;
use switchyard_protocol::{ChannelName, Cursor, Position};
use switchyard_transports::{
    hub::{Opened, Sink, StartFrom},
    namespaces::{ChannelRules, Namespaces},
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    RedisStats,
    channel_scripts::{self as scripts, Appended, Bounds, ReadFrom, Scripts},
    client::{ConnectError, connection_manager},
    keys::{self, Topics},
    listener::{self, Control},
    local::{self, Known, Read, Table},
    routes::Routes,
};
use crate::{
    config::Config,
    hub::{Bus, Event, HistoryPage, Hub, HubError, Publish, PublishError, Published},
    ids::epoch as random_epoch,
    time::now_rfc3339,
};

/// Default for [`RedisHubConfig::op_timeout`].
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Subscribe requests waiting for the listener task; past it, subscribers wait their turn.
const CONTROL_CAPACITY: usize = 1024;
/// Tries of one subscribe that raced a reconnection or an epoch change.
const OPEN_ATTEMPTS: usize = 3;

/// Bounds and timeouts of the Redis hub.
#[derive(Clone, Debug)]
pub struct RedisHubConfig {
    /// Each channel's rules: its history bounds (`history_size`, `history_ttl`).
    pub namespaces: Arc<Namespaces>,
    /// Most channels this node holds local subscribers for (`limits.max_channels`).
    pub max_channels: usize,
    /// Longest one Redis round trip may take before the operation fails as unavailable
    /// (publish: 503; subscribe: an `unavailable` error). Default [`DEFAULT_OP_TIMEOUT`].
    pub op_timeout: Duration,
}

impl RedisHubConfig {
    /// The hub's settings from the gateway's configuration.
    ///
    /// # Errors
    /// When the namespaces are invalid.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            namespaces: Arc::new(config.namespaces()?),
            max_channels: config.limits.max_channels,
            op_timeout: DEFAULT_OP_TIMEOUT,
        })
    }

    /// Settings with one namespace of these history bounds for every channel (tests).
    pub fn with_history(history_size: usize, history_ttl: Duration) -> Self {
        Self {
            namespaces: Arc::new(Namespaces::only(ChannelRules::plain(
                "default",
                history_size,
                history_ttl,
            ))),
            max_channels: 100,
            op_timeout: DEFAULT_OP_TIMEOUT,
        }
    }

    /// The bounds the scripts apply to `channel`: its namespace's.
    fn bounds(&self, channel: &ChannelName) -> Bounds {
        let rules = self.namespaces.rules(channel.as_str());
        Bounds {
            history_size: rules.history_size.max(1),
            history_ttl_ms: u64::try_from(rules.history_ttl.as_millis()).unwrap_or(u64::MAX / 2),
            // A channel's keys outlive its events and its idempotency keys; an idle channel
            // then expires whole, and its next use starts a new epoch (old cursors: reset).
            key_lifetime_secs: rules
                .history_ttl
                .as_secs()
                .saturating_add(scripts::IDEMPOTENCY_TTL_SECS)
                .max(1),
        }
    }
}

/// Cross-node wake-ups carried on the signals topic (`Topics::signals`), which the store's scripts
/// publish to: a submit or requeue on any node wakes claims waiting on every node, and new
/// due deliveries (or an endpoint change) wake every node's dispatcher. After the pub/sub
/// connection is (re)established both fire, since signals may have been missed meanwhile.
#[derive(Debug, Default)]
pub struct Signals {
    /// A job became claimable.
    pub jobs: Arc<Notify>,
    /// Webhook deliveries became due or an endpoint changed.
    pub outbox: Arc<Notify>,
}

impl Signals {
    pub(super) fn fire(&self, what: &[u8]) {
        match what {
            b"jobs" => self.jobs.notify_waiters(),
            b"outbox" => self.outbox.notify_one(),
            _ => {}
        }
    }

    pub(super) fn fire_all(&self) {
        self.jobs.notify_waiters();
        self.outbox.notify_one();
    }
}

/// The state shared by the hub's handle and its listener task.
pub(super) struct Inner {
    table: Mutex<Table>,
    /// Commands (scripts, PING): multiplexed, and re-established by the manager itself.
    conn: ConnectionManager,
    scripts: Scripts,
    pub(super) config: RedisHubConfig,
    /// Whether the pub/sub connection is up (for readiness), reconnections and failed
    /// operations, shared with the node's store.
    pub(super) stats: Arc<RedisStats>,
    /// Wakes the listener to unsubscribe topics no local subscriber needs any more.
    pub(super) dirty: Notify,
    published: AtomicU64,
    pub(super) signals: Signals,
}

impl Inner {
    /// The pub/sub topics of the database this hub is on.
    pub(super) fn topics(&self) -> &Topics {
        &self.scripts.topics
    }

    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        // The table's invariants hold between statements that could panic; keep serving.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn set_live(&self, up: bool) {
        self.stats.set_up(up);
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The events after `known` in its epoch; `Ok(None)` when history no longer reaches it.
    pub(super) async fn read_after(
        &self,
        channel: &ChannelName,
        known: Known,
    ) -> Result<Option<Vec<Arc<Event>>>, HubError> {
        let from = ReadFrom::After {
            offset: known.last,
            epoch: Some(known.epoch),
        };
        let bounds = self.config.bounds(channel);
        let snapshot = self
            .timed(self.scripts.read(
                &mut self.conn(),
                bounds,
                channel,
                None,
                from,
                bounds.history_size,
            ))
            .await?;
        Ok(snapshot.filter(|s| !s.reset).map(|s| {
            let epoch = s.epoch;
            s.entries
                .into_iter()
                .filter_map(|p| p.into_event(channel, epoch))
                .collect()
        }))
    }

    /// Runs one Redis operation within `op_timeout`.
    async fn timed<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, HubError> {
        self.stats
            .bounded(self.config.op_timeout, op)
            .await
            .map_err(HubError::Unavailable)
    }
}

/// The Redis-backed hub of one gateway node; see the module docs.
pub struct RedisHub {
    inner: Arc<Inner>,
    control_tx: mpsc::Sender<Control>,
    /// Stops the listener task when the hub is dropped.
    _stop: DropGuard,
}

impl std::fmt::Debug for RedisHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHub")
            .field("channels", &self.inner.table().len())
            .finish_non_exhaustive()
    }
}

impl RedisHub {
    /// Connects to Redis at `url` (`redis://host:port/db`): one multiplexed connection for
    /// commands and one pub/sub connection, kept by a background task. Must be called
    /// inside a Tokio runtime.
    ///
    /// # Errors
    /// When the URL is invalid or Redis does not answer within `config.op_timeout`.
    pub async fn connect(url: &str, config: RedisHubConfig) -> Result<Self, ConnectError> {
        let client = redis::Client::open(url).map_err(ConnectError::Url)?;
        Self::connect_with(client, config, Arc::default()).await
    }

    /// [`Self::connect`] with a client already built (TLS settings included), counting in
    /// `stats` (shared with the node's store, so `/metrics` shows one figure per node).
    ///
    /// # Errors
    /// When Redis does not answer within `config.op_timeout`.
    pub async fn connect_with(
        client: redis::Client,
        config: RedisHubConfig,
        stats: Arc<RedisStats>,
    ) -> Result<Self, ConnectError> {
        let unreachable = |e: String| ConnectError::Unreachable(e);
        let conn = connection_manager(&client, config.op_timeout).await?;
        let pubsub = tokio::time::timeout(config.op_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let inner = Arc::new(Inner {
            table: Mutex::new(Table::default()),
            conn,
            scripts: Scripts::new(Topics::for_client(&client)),
            config,
            stats,
            dirty: Notify::new(),
            published: AtomicU64::new(0),
            signals: Signals::default(),
        });
        let (control_tx, control_rx) = mpsc::channel(CONTROL_CAPACITY);
        let stop = CancellationToken::new();
        tokio::spawn(listener::run(
            Arc::clone(&inner),
            client,
            pubsub,
            control_rx,
            stop.clone(),
        ));
        Ok(Self {
            inner,
            control_tx,
            _stop: stop.drop_guard(),
        })
    }

    /// Checks that Redis answers `PING` and that the pub/sub connection is up (`/readyz`).
    ///
    /// # Errors
    /// [`HubError::Unavailable`] when either is down.
    pub async fn ping(&self) -> Result<(), HubError> {
        let mut conn = self.inner.conn();
        self.inner
            .timed(redis::cmd("PING").query_async::<String>(&mut conn))
            .await?;
        if !self.inner.stats.is_up() {
            return Err(HubError::Unavailable(
                "the Redis pub/sub connection is down".into(),
            ));
        }
        Ok(())
    }

    /// The cross-node wake-ups this node's listener receives.
    pub fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    /// Drops closed sinks and releases topics nobody here needs; call it periodically.
    pub fn sweep(&self) {
        if self.inner.table().sweep() {
            self.inner.dirty.notify_one();
        }
    }

    /// Appends an event and records the webhook deliveries `routes` say it owes, in one
    /// script; `None` when the endpoints changed since the routes were matched (nothing was
    /// written: match again and retry).
    ///
    /// # Errors
    /// A job channel, an idempotency conflict, or Redis unavailable.
    pub(super) async fn append(
        &self,
        req: &Publish<'_>,
        routes: &Routes,
    ) -> Result<Option<Published>, PublishError> {
        if is_reserved(req.channel) {
            return Err(PublishError::Reserved);
        }
        let inner = &self.inner;
        let appended = inner
            .timed(inner.scripts.append(
                &mut inner.conn(),
                inner.config.bounds(req.channel),
                req.channel,
                random_epoch(),
                req.event_type,
                &now_rfc3339(),
                req.data.get(),
                req.idempotency_key,
                routes,
            ))
            .await?;
        let (epoch, offset, replayed) = match appended {
            Appended::New { epoch, offset } => (epoch, offset, false),
            Appended::Seen { epoch, offset } => (epoch, offset, true),
            Appended::Conflict => return Err(PublishError::IdempotencyConflict),
            Appended::Stale => return Ok(None),
        };
        if !replayed {
            inner.published.fetch_add(1, Ordering::Relaxed);
        }
        let position = Position { epoch, offset };
        Ok(Some(Published {
            offset,
            id: format!("{}:{offset}", req.channel),
            cursor: Cursor::encode_single(req.channel, position),
            replayed,
        }))
    }

    /// One subscribe attempt; see [`local`] for the handover.
    async fn try_open(
        &self,
        channel: &ChannelName,
        from: StartFrom,
        sink: &Sink,
    ) -> Result<Result<Opened, local::Raced>, HubError> {
        let ticket =
            self.inner
                .table()
                .begin(channel, sink.id(), self.inner.config.max_channels)?;
        // Abandons the pending subscriber if this future fails or is dropped midway.
        let mut pending = PendingGuard {
            inner: &self.inner,
            channel,
            ticket: Some(ticket),
        };
        // 1. The live topic first, so nothing published after the read below is missed.
        let (reply_tx, reply_rx) = oneshot::channel();
        let ensure = Control::Ensure {
            channel: channel.clone(),
            reply: reply_tx,
        };
        let stopped = || HubError::Unavailable("the hub is stopping".into());
        self.control_tx.send(ensure).await.map_err(|_| stopped())?;
        let generation = tokio::time::timeout(self.inner.config.op_timeout * 2, reply_rx)
            .await
            .map_err(|_| HubError::Unavailable("the Redis pub/sub connection is busy".into()))?
            .map_err(|_| stopped())??;
        if generation != ticket.generation {
            return Ok(Err(local::Raced("the pub/sub connection changed")));
        }
        // 2. The history after the requested position, in one atomic snapshot.
        let read_from = match from {
            StartFrom::Now => ReadFrom::Now,
            StartFrom::Offset(offset) => ReadFrom::After {
                offset,
                epoch: None,
            },
            StartFrom::Position(p) => ReadFrom::After {
                offset: p.offset,
                epoch: Some(p.epoch),
            },
        };
        let inner = &self.inner;
        let bounds = inner.config.bounds(channel);
        let snapshot = inner
            .timed(inner.scripts.read(
                &mut inner.conn(),
                bounds,
                channel,
                Some(random_epoch()),
                read_from,
                bounds.history_size,
            ))
            .await?
            .ok_or_else(|| HubError::Unavailable("the channel's history vanished".into()))?;
        let epoch = snapshot.epoch;
        let read = Read {
            epoch,
            last: snapshot.last,
            start: snapshot.start,
            reset: snapshot.reset.then_some(snapshot.oldest),
            replay: snapshot
                .entries
                .into_iter()
                .filter_map(|p| p.into_event(channel, epoch))
                .collect(),
        };
        // 3. Replay plus what arrived live meanwhile; the sink is live from here on.
        let ticket = pending.ticket.take().expect("taken once");
        let opened = inner.table().complete(channel, ticket, sink, read);
        if opened.is_err() {
            inner.dirty.notify_one();
        }
        Ok(opened)
    }
}

/// Abandons a pending subscriber whose subscribe did not complete.
struct PendingGuard<'a> {
    inner: &'a Inner,
    channel: &'a ChannelName,
    ticket: Option<local::Ticket>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take()
            && self.inner.table().abandon(self.channel, ticket)
        {
            self.inner.dirty.notify_one();
        }
    }
}

/// `jobs/*` channels belong to the job store ([`crate::store::redis`] appends their events
/// in this hub's layout); the hub only reads them.
fn is_reserved(channel: &ChannelName) -> bool {
    keys::is_durable(channel)
}

impl Hub for RedisHub {
    fn subscribe<'a>(
        &'a self,
        channel: &'a ChannelName,
        from: StartFrom,
        sink: &'a Sink,
    ) -> BoxFuture<'a, Result<Opened, HubError>> {
        async move {
            let mut raced = local::Raced("");
            for _ in 0..OPEN_ATTEMPTS {
                match self.try_open(channel, from, sink).await? {
                    Ok(opened) => return Ok(opened),
                    Err(r) => raced = r,
                }
            }
            Err(HubError::Unavailable(format!("{}; retry", raced.0)))
        }
        .boxed()
    }

    fn unsubscribe(&self, channel: &ChannelName, sink_id: u64) {
        if self.inner.table().unsubscribe(channel, sink_id) {
            self.inner.dirty.notify_one();
        }
    }
}

impl Bus for RedisHub {
    /// Appends without webhook deliveries (a hub on its own); the engine appends through
    /// [`RedisHub::append`] with the event's routes.
    fn publish<'a>(&'a self, req: Publish<'a>) -> BoxFuture<'a, Result<Published, PublishError>> {
        async move {
            self.append(&req, &Routes::none())
                .await?
                .ok_or_else(|| unreachable!("nothing to check: never stale"))
        }
        .boxed()
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, HubError>> {
        async move {
            let inner = &self.inner;
            let from = match after {
                None => ReadFrom::Oldest,
                Some(offset) => ReadFrom::After {
                    offset,
                    epoch: None,
                },
            };
            let snapshot = inner
                .timed(inner.scripts.read(
                    &mut inner.conn(),
                    inner.config.bounds(channel),
                    channel,
                    None,
                    from,
                    limit,
                ))
                .await?;
            let Some(s) = snapshot else {
                // Reading history does not create the channel; past 0 is out of reach.
                return Ok(HistoryPage {
                    events: Vec::new(),
                    next: 0,
                    reset: after.is_some_and(|a| a > 0),
                });
            };
            let epoch = s.epoch;
            let events: Vec<Arc<Event>> = s
                .entries
                .into_iter()
                .take(limit)
                .filter_map(|p| p.into_event(channel, epoch))
                .collect();
            let next = events.last().map_or(s.start, |e| e.offset());
            Ok(HistoryPage {
                events,
                next,
                reset: s.reset,
            })
        }
        .boxed()
    }

    fn channel_count(&self) -> usize {
        self.inner.table().len()
    }

    fn published_count(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), HubError>> {
        self.ping().boxed()
    }
}
