//! The engines: everything that stores or moves events, one folder each. [`Engine`] is the
//! closed set the rest of the server runs on; nothing outside this folder names SQLite or
//! Redis.
//!
//! # Layout
//! - [`embedded`]: one node, no external service: the in-memory hub and the SQLite store
//!   (one group-committing writer thread) in `data_dir`.
//! - [`redis`]: several nodes on one Redis (or Valkey) primary: channel history, jobs and
//!   the webhook outbox in Redis, one Lua script per change, pub/sub between nodes.
//!
//! Each engine offers the same contracts ([`crate::hub::Bus`], [`crate::store::Store`],
//! [`crate::store::WebhookStore`]), and [`Engine`] adds what the server needs of either:
//! wake-ups, readiness, metrics, background tasks and closing.
//!
//! # One path for every event
//! Whatever produced it (a publish, a job operation), an engine appends an event and records
//! the webhook deliveries it owes in one atomic step: one SQLite transaction (see
//! [`embedded::writer`]), or one Lua script (see the `scripts` module of [`redis`]). So a
//! publish answered `2xx` has its deliveries recorded, and one answered `5xx` reached no
//! consumer and took no offset. Fan-out to live consumers follows the append. The dispatcher
//! ([`crate::webhooks::dispatcher`]) then only reads the outbox.

pub mod embedded;
pub mod redis;

use std::{sync::Arc, time::Duration};

use futures_util::future::{BoxFuture, FutureExt};
use switchyard_protocol::ChannelName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::job_token::JobTokens,
    config::{self, Config},
    hub::{Bus, HistoryPage, Hub, HubError, Publish, PublishError, Published},
    store::{
        AttemptOutcome, Claimed, Delivery, DueDelivery, EndpointRecord, JobRecord, NewJob,
        OutboxHead, Report, Store, StoreError, Submitted, WebhookStore,
    },
};
use switchyard_transports::{
    hub::{Opened, Sink, StartFrom},
    metrics::write_family,
    namespaces::ChannelRules,
    presence::{Member, Presence, PresenceError, PresenceStats},
};

/// The engine `engine` names in the configuration.
pub enum Engine {
    /// SQLite in `data_dir` and in-process fan-out (the default).
    Embedded(embedded::Embedded),
    /// A Redis (or Valkey) primary shared by every node.
    Redis(redis::Redis),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// Runs `$body` with `$e` bound to whichever engine `$self` is.
macro_rules! on_engine {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            Engine::Embedded($e) => $body,
            Engine::Redis($e) => $body,
        }
    };
}

impl Engine {
    /// Opens the engine `config.engine` names.
    ///
    /// # Errors
    /// When the embedded store cannot be opened, or Redis cannot be reached.
    pub async fn open(config: &Config) -> anyhow::Result<Arc<Self>> {
        let engine = match config.engine() {
            config::Engine::Embedded => Self::Embedded(embedded::Embedded::open(config)?),
            config::Engine::Redis(url) => Self::Redis(redis::Redis::connect(config, &url).await?),
        };
        Ok(Arc::new(engine))
    }

    /// The kind of engine, as `/readyz` names it (never a URL: it may carry a password).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Redis(_) => "redis",
        }
    }

    /// What job tokens are signed with: per data directory, or shared through Redis.
    pub fn job_tokens(&self) -> JobTokens {
        on_engine!(self, e => e.job_tokens())
    }

    /// Fires when a job may have become claimable (here, or on another node).
    pub fn claimable(&self) -> Arc<Notify> {
        on_engine!(self, e => e.claimable())
    }

    /// Fires when the webhook outbox changed: deliveries recorded or due, an endpoint
    /// created, changed or deleted (here, or on another node).
    pub fn outbox_changed(&self) -> Arc<Notify> {
        on_engine!(self, e => e.outbox_changed())
    }

    /// Whether the engine can serve (`/readyz`): the store answers; on Redis, also this
    /// node's pub/sub connection is up.
    ///
    /// # Errors
    /// What does not answer, for the operator.
    pub fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        on_engine!(self, e => e.ready().boxed())
    }

    /// Appends the engine's series to a Prometheus exposition: events published and
    /// channels held, then the embedded store's commits or the Redis connections' health.
    pub fn write_metrics(&self, out: &mut String) {
        let one = |v: u64| [(String::new(), v)];
        write_family(
            out,
            "switchyard_events_published_total",
            "Events published through this node.",
            "counter",
            one(self.published_count()),
        );
        write_family(
            out,
            "switchyard_channels",
            "Channels this node holds (embedded: in memory; Redis: those with local subscribers).",
            "gauge",
            one(self.channel_count() as u64),
        );
        on_engine!(self, e => e.write_metrics(out))
    }

    /// Periodic upkeep: expired history, idle channels, closed sinks. Call it every second.
    pub fn sweep(&self) {
        on_engine!(self, e => e.sweep())
    }

    /// Starts the engine's own background tasks; they end when `stop` fires.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        stop: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        on_engine!(&**self, e => e.spawn_tasks(stop))
    }

    /// Finishes pending writes (and hands back what this node holds), waiting up to
    /// `deadline`. Call it last, when nothing writes any more.
    pub async fn close(&self, deadline: Duration) {
        on_engine!(self, e => e.close(deadline).await)
    }
}

impl Hub for Engine {
    fn subscribe<'a>(
        &'a self,
        channel: &'a ChannelName,
        from: StartFrom,
        sink: &'a Sink,
    ) -> BoxFuture<'a, Result<Opened, HubError>> {
        on_engine!(self, e => e.hub().subscribe(channel, from, sink))
    }

    fn unsubscribe(&self, channel: &ChannelName, sink_id: u64) {
        on_engine!(self, e => e.hub().unsubscribe(channel, sink_id))
    }
}

/// Presence: in memory on the embedded engine, in Redis (across nodes) on the Redis one.
impl Presence for Engine {
    fn join<'a>(
        &'a self,
        channel: &'a ChannelName,
        rules: &'a ChannelRules,
        member: Member,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        on_engine!(self, e => e.presence().join(channel, rules, member))
    }

    fn leave(&self, channel: &ChannelName, rules: &ChannelRules, client_id: &str) {
        on_engine!(self, e => e.presence().leave(channel, rules, client_id))
    }

    fn members<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<Member>, HubError>> {
        on_engine!(self, e => e.presence().members(channel))
    }

    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<PresenceStats, HubError>> {
        on_engine!(self, e => e.presence().stats(channel))
    }
}

impl Bus for Engine {
    fn publish<'a>(&'a self, req: Publish<'a>) -> BoxFuture<'a, Result<Published, PublishError>> {
        on_engine!(self, e => e.publish(req))
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, HubError>> {
        on_engine!(self, e => e.hub().history(channel, after, limit))
    }

    fn channel_count(&self) -> usize {
        on_engine!(self, e => e.hub().channel_count())
    }

    fn published_count(&self) -> u64 {
        on_engine!(self, e => e.hub().published_count())
    }
}

impl Store for Engine {
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<Submitted, StoreError>> {
        on_engine!(self, e => e.store().submit(job))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, StoreError>> {
        on_engine!(self, e => e.store().get(id))
    }

    fn claim(
        &self,
        lease_ms: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<Claimed>, StoreError>> {
        on_engine!(self, e => e.store().claim(lease_ms, now_ms))
    }

    fn report(
        &self,
        id: String,
        lease: String,
        report: Report,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<JobRecord, StoreError>> {
        on_engine!(self, e => e.store().report(id, lease, report, now_ms))
    }

    fn cancel(&self, id: String, now_ms: i64) -> BoxFuture<'_, Result<JobRecord, StoreError>> {
        on_engine!(self, e => e.store().cancel(id, now_ms))
    }

    fn expire_leases(&self, now_ms: i64) -> BoxFuture<'_, Result<usize, StoreError>> {
        on_engine!(self, e => e.store().expire_leases(now_ms))
    }

    fn prune(
        &self,
        jobs_before_ms: i64,
        deliveries_before_ms: i64,
    ) -> BoxFuture<'_, Result<(usize, usize), StoreError>> {
        on_engine!(self, e => e.store().prune(jobs_before_ms, deliveries_before_ms))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        on_engine!(self, e => e.store().ping())
    }

    fn close(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        Engine::close(self, deadline).boxed()
    }
}

impl WebhookStore for Engine {
    fn list_endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointRecord>, StoreError>> {
        on_engine!(self, e => e.store().list_endpoints())
    }

    fn get_endpoint<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<EndpointRecord>, StoreError>> {
        on_engine!(self, e => e.store().get_endpoint(id))
    }

    fn put_endpoint(
        &self,
        endpoint: EndpointRecord,
        max: Option<usize>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        on_engine!(self, e => e.store().put_endpoint(endpoint, max))
    }

    fn delete_endpoint(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        on_engine!(self, e => e.store().delete_endpoint(id))
    }

    fn outbox_heads(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<OutboxHead>, StoreError>> {
        on_engine!(self, e => e.store().outbox_heads(now_ms))
    }

    fn due_for(
        &self,
        endpoint_id: String,
        now_ms: i64,
        limit: usize,
        skip: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<DueDelivery>, StoreError>> {
        on_engine!(self, e => e.store().due_for(endpoint_id, now_ms, limit, skip))
    }

    fn record(&self, outcome: AttemptOutcome) -> BoxFuture<'_, Result<(), StoreError>> {
        on_engine!(self, e => e.store().record(outcome))
    }

    fn deliveries<'a>(
        &'a self,
        endpoint_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StoreError>> {
        on_engine!(self, e => e.store().deliveries(endpoint_id, limit))
    }

    fn retry_delivery(
        &self,
        endpoint_id: String,
        delivery_id: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        on_engine!(self, e => e.store().retry_delivery(endpoint_id, delivery_id, now_ms))
    }
}
