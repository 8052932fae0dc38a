//! The embedded store: SQLite in `data_dir`, one group-committing writer thread, one
//! reader connection, and the durable channels' logs (jobs', and durable namespaces')
//! served to the hub.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use anyhow::Context as _;
use futures_util::future::{BoxFuture, FutureExt};
use rusqlite::{Connection, OpenFlags};
use switchyard_protocol::ChannelName;
use switchyard_transports::namespaces::Namespaces;
use tokio::sync::Notify;

use super::{
    channel_log,
    checkpoint::{self, Checkpointer},
    hub::{Assigned, DurableChannels, LoadedChannel, MemoryHub, stored_to_event},
    jobs::{self, JobEvent},
    retention, schema, webhooks,
    writer::{self, Writer, WriterStats},
};
use crate::{
    hub::{HubError, PublishError, Published},
    jobs::channel::{is_job_channel, job_id_of},
    store::{
        AttemptOutcome, Claimed, Delivery, DueDelivery, EndpointRecord, JobRecord, NewJob,
        OutboxHead, Report, Store, StoreError, Submitted, WebhookStore,
    },
    time::now_ms,
    webhooks::filter::{Filter, Filters},
};

/// Rows deleted per transaction when pruning, so pruning never holds the writer long.
const PRUNE_BATCH: usize = 1000;
/// Durable channels one retention pass looks at, so a pass is short however many there are.
const LOG_CHANNELS_PER_PASS: usize = 1000;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The store's file inside `data_dir`.
pub const DB_FILE: &str = "switchyard.db";

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    epoch: u64,
    /// Reads go through their own connection so they never wait on a commit's fsync.
    reader: Mutex<Connection>,
    writer: Mutex<Option<Writer>>,
    writer_thread: Mutex<Option<writer::WriterThread>>,
    write_conn: Mutex<Option<Connection>>,
    /// Checkpoints the WAL beside the writer; stopped once the writer has finished.
    checkpointer: Mutex<Option<Checkpointer>>,
    /// Commit counters, for `/metrics`.
    pub stats: Arc<WriterStats>,
    /// Durable channels' events written and deleted, for `/metrics`.
    pub log_stats: LogStats,
    /// The enabled endpoints' filters, matched against every event.
    pub webhook_filters: Arc<Filters>,
    /// Woken when the outbox changed: deliveries recorded or retried by hand, an endpoint
    /// created, changed or deleted.
    pub outbox_ready: Arc<Notify>,
}

/// Counters of the durable channels' log, for `/metrics`.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Events committed to the log (each acknowledged after its fsync).
    pub written: AtomicU64,
    /// Events retention deleted (beyond their namespace's `history_size` or TTL).
    pub deleted: AtomicU64,
}

/// How long `/readyz`'s probe write may take before the store counts as unable to commit.
const COMMIT_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SqliteStore {
    /// Opens (creating when missing) the store in `dir`. Call [`SqliteStore::start`] before
    /// writing.
    ///
    /// # Errors
    /// When the directory or database cannot be created or opened.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Self>> {
        crate::private_files::create_dir(dir)?;
        let path = dir.join(DB_FILE);
        // Created 0600 before SQLite sees it: SQLite gives its -wal and -shm files the
        // database file's mode, and the database holds webhook signing secrets.
        crate::private_files::open_or_create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        crate::private_files::warn_if_shared(&path, "the database (webhook signing secrets)");
        let write_conn =
            Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        schema::configure(&write_conn)?;
        schema::configure_writer(&write_conn, checkpoint::WRITER_BACKSTOP_PAGES)?;
        let epoch = schema::migrate(&write_conn).context("cannot create the schema")?;
        let checkpointer = Checkpointer::start(&path).context("cannot start checkpoints")?;
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Arc::new(Self {
            epoch,
            reader: Mutex::new(reader),
            writer: Mutex::new(None),
            writer_thread: Mutex::new(None),
            write_conn: Mutex::new(Some(write_conn)),
            checkpointer: Mutex::new(Some(checkpointer)),
            stats: Arc::default(),
            log_stats: LogStats::default(),
            webhook_filters: Arc::default(),
            outbox_ready: Arc::default(),
        }))
    }

    /// Starts the writer; committed events reach `hub` in commit order.
    ///
    /// # Panics
    /// When called twice.
    pub fn start(&self, hub: Arc<MemoryHub>) {
        if let Err(e) = self.refresh_filters() {
            tracing::error!(error = %e, "cannot load webhook endpoints");
        }
        let conn = self
            .write_conn
            .lock()
            .expect("not poisoned")
            .take()
            .expect("started once");
        let filters = Arc::clone(&self.webhook_filters);
        let outbox: writer::OutboxHook = Box::new(move |conn, event| {
            let channel = event.channel().as_str();
            let endpoints = filters.matching(channel, event.event_type());
            if endpoints.is_empty() {
                return Ok(false);
            }
            webhooks::enqueue(conn, &endpoints, event, now_ms())?;
            Ok(true)
        });
        let parts = writer::WriterParts {
            hub,
            outbox,
            outbox_ready: Arc::clone(&self.outbox_ready),
            stats: Arc::clone(&self.stats),
        };
        let (writer, thread) = Writer::start(conn, parts);
        *self.writer.lock().expect("not poisoned") = Some(writer);
        *self.writer_thread.lock().expect("not poisoned") = Some(thread);
    }

    /// Publishes through the writer (see [`super::hub`]): `assign` runs in the transaction
    /// and gives the event its offset; a durable namespace's event is written to its
    /// channel's log there; the writer records the deliveries the event owes; the answer
    /// comes once the event is committed (fsync'd) and visible, or failed and seen by
    /// nobody.
    ///
    /// # Errors
    /// When the transaction fails or the writer has stopped.
    pub(super) async fn publish(
        &self,
        assign: impl FnOnce() -> Assigned + Send + 'static,
    ) -> Result<Result<Published, PublishError>, StoreError> {
        let (answer, logged) = self
            .writer()?
            .write(move |conn| {
                Ok(match assign() {
                    Assigned::New(pending) => {
                        let logged = if let Some(record) = pending.log_record() {
                            let channel = pending.event().channel().as_str();
                            if let Err(e) = channel_log::append(conn, channel, record, now_ms()) {
                                // Nobody saw it: the offset goes back before the next op.
                                pending.withdraw();
                                return Err(e);
                            }
                            true
                        } else {
                            false
                        };
                        let published = pending.published().clone();
                        (
                            (Ok(published), logged),
                            vec![writer::Appended::Publish(pending)],
                        )
                    }
                    Assigned::Replayed(first) => ((Ok(first), false), Vec::new()),
                    Assigned::Refused(e) => ((Err(e), false), Vec::new()),
                })
            })
            .await?;
        if logged {
            self.log_stats.written.fetch_add(1, Relaxed);
        }
        Ok(answer)
    }

    fn writer(&self) -> Result<Writer, StoreError> {
        self.writer
            .lock()
            .expect("not poisoned")
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is not started".into()))
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Runs a job or webhook operation `f` in the writer's next transaction; the job events
    /// it appends reach the hub after the commit.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<(T, Vec<JobEvent>), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let epoch = self.epoch;
        self.writer()?
            .write(move |conn| {
                let (value, events) = f(conn)?;
                let events = events
                    .into_iter()
                    .map(|(channel, e)| {
                        writer::Appended::Job(Arc::new(stored_to_event(&channel, epoch, e)))
                    })
                    .collect();
                Ok((value, events))
            })
            .await
    }
}

impl Store for SqliteStore {
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<Submitted, StoreError>> {
        self.write(move |conn| jobs::submit(conn, &job)).boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, StoreError>> {
        async move { self.read(|conn| jobs::get(conn, id)) }.boxed()
    }

    fn claim(
        &self,
        lease_ms: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<Claimed>, StoreError>> {
        let lease = crate::ids::token();
        self.write(move |conn| jobs::claim(conn, lease, lease_ms, now_ms))
            .boxed()
    }

    fn report(
        &self,
        id: String,
        lease: String,
        report: Report,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<JobRecord, StoreError>> {
        self.write(move |conn| jobs::report(conn, &id, &lease, report, now_ms))
            .boxed()
    }

    fn cancel(&self, id: String, now_ms: i64) -> BoxFuture<'_, Result<JobRecord, StoreError>> {
        self.write(move |conn| jobs::cancel(conn, &id, now_ms))
            .boxed()
    }

    fn prune(
        &self,
        jobs_before_ms: i64,
        deliveries_before_ms: i64,
    ) -> BoxFuture<'_, Result<(usize, usize), StoreError>> {
        async move {
            let jobs = self
                .prune_finished(&retention::JOBS, jobs_before_ms)
                .await?;
            let deliveries = self
                .prune_finished(&retention::DELIVERIES, deliveries_before_ms)
                .await?;
            Ok((jobs, deliveries))
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move { self.ping_now() }.boxed()
    }

    fn close(&self, deadline: std::time::Duration) -> BoxFuture<'_, ()> {
        self.close_now(deadline).boxed()
    }

    fn expire_leases(&self, now_ms: i64) -> BoxFuture<'_, Result<usize, StoreError>> {
        async move {
            if !self.read(|conn| jobs::has_expired_leases(conn, now_ms))? {
                return Ok(0);
            }
            self.write(move |conn| jobs::expire_leases(conn, now_ms))
                .await
        }
        .boxed()
    }
}

impl SqliteStore {
    /// Deletes finished rows of `kind` older than `before_ms`, a batch per transaction.
    async fn prune_finished(
        &self,
        kind: &'static retention::Finished,
        before_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut deleted = 0;
        loop {
            let ids =
                self.read(|conn| retention::finished_before(conn, kind, before_ms, PRUNE_BATCH))?;
            let more = ids.len() == PRUNE_BATCH;
            if !ids.is_empty() {
                deleted += self
                    .write(move |conn| {
                        Ok((
                            retention::delete_finished(conn, kind, &ids, before_ms)?,
                            Vec::new(),
                        ))
                    })
                    .await?;
            }
            if !more {
                return Ok(deleted);
            }
        }
    }

    /// One pass of the durable channels' retention, over at most [`LOG_CHANNELS_PER_PASS`]
    /// channels from the first one after `after`: deletes each one's events beyond its
    /// namespace's `history_size` and older than its `history_ttl`, a batch per
    /// transaction. Returns where the next pass starts (`""`: from the first channel).
    pub(super) async fn prune_logs(
        &self,
        namespaces: &Namespaces,
        mut after: String,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        for _ in 0..LOG_CHANNELS_PER_PASS {
            let Some(channel) = self.read(|conn| channel_log::channel_after(conn, &after))? else {
                return Ok(String::new());
            };
            let rules = namespaces.rules(&channel);
            let ttl_ms = i64::try_from(rules.history_ttl.as_millis()).unwrap_or(i64::MAX);
            let before_ms = now_ms.saturating_sub(ttl_ms);
            let beyond = self.read(|conn| {
                channel_log::beyond_bounds(conn, &channel, rules.history_size, before_ms)
            })?;
            if let Some((oldest, last)) = beyond {
                let mut from = oldest;
                while from <= last {
                    let to = last.min(from + PRUNE_BATCH as u64 - 1);
                    let name = channel.clone();
                    let deleted = self
                        .write(move |conn| {
                            Ok((channel_log::delete(conn, &name, from, to)?, Vec::new()))
                        })
                        .await?;
                    self.log_stats.deleted.fetch_add(deleted as u64, Relaxed);
                    from = to + 1;
                }
            }
            after = channel;
        }
        Ok(after)
    }

    fn ping_now(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
    }

    /// Whether the store can commit: a small write (one row of `meta`) must commit, fsync'd,
    /// within [`COMMIT_PROBE_WAIT`]. A read alone answers while the disk is full or
    /// read-only, or another process holds the database's write lock. The probe joins the
    /// writer's group commit, so under load it costs no transaction of its own.
    pub(super) async fn can_commit(&self) -> Result<(), String> {
        let probe = self.write(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('ready_probe', ?1)",
                [crate::time::now_ms()],
            )?;
            Ok(((), Vec::new()))
        });
        match tokio::time::timeout(COMMIT_PROBE_WAIT, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the store cannot commit: {e}")),
            Err(_) => Err(format!(
                "the store cannot commit: a write did not commit within {COMMIT_PROBE_WAIT:?}"
            )),
        }
    }

    pub(super) async fn close_now(&self, deadline: std::time::Duration) {
        // Dropping the last sender ends the writer after what is queued; closing its
        // connection checkpoints the WAL into the database file.
        self.writer.lock().expect("not poisoned").take();
        let Some(thread) = self.writer_thread.lock().expect("not poisoned").take() else {
            return;
        };
        let mut checkpointer = self.checkpointer.lock().expect("not poisoned").take();
        let joined = tokio::task::spawn_blocking(move || {
            let joined = thread.join();
            // After the writer's last commit, so its checkpoints cover everything.
            if let Some(c) = checkpointer.as_mut() {
                c.stop();
            }
            joined
        });
        match tokio::time::timeout(deadline, joined).await {
            Ok(_) => tracing::info!("store closed"),
            Err(_) => tracing::warn!(?deadline, "the store writer did not finish in time"),
        }
    }
}

impl DurableChannels for SqliteStore {
    fn owns(&self, channel: &str) -> bool {
        is_job_channel(channel)
    }

    fn load(&self, channel: &ChannelName, max_events: usize) -> Result<LoadedChannel, HubError> {
        let name = channel.as_str();
        let (last_offset, events) = self
            .read(|conn| match job_id_of(name) {
                Some(id) => jobs::load_events(conn, id, max_events),
                None => channel_log::load(conn, name, max_events),
            })
            .map_err(|e| HubError::Unavailable(e.to_string()))?;
        Ok(LoadedChannel {
            epoch: self.epoch,
            last_offset,
            events,
        })
    }
}

impl SqliteStore {
    /// Reloads the enabled endpoints' filters (after any endpoint change, and at start).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn refresh_filters(&self) -> Result<(), StoreError> {
        let endpoints = self.read(webhooks::list_endpoints)?;
        self.webhook_filters.replace(Filter::of_enabled(endpoints));
        Ok(())
    }
}

impl WebhookStore for SqliteStore {
    fn list_endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointRecord>, StoreError>> {
        async move { self.read(webhooks::list_endpoints) }.boxed()
    }

    fn get_endpoint<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<EndpointRecord>, StoreError>> {
        async move { self.read(|conn| webhooks::get_endpoint(conn, id)) }.boxed()
    }

    fn put_endpoint(
        &self,
        endpoint: EndpointRecord,
        max: Option<usize>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.write(move |conn| {
                if let Some(max) = max
                    && webhooks::count_endpoints(conn)? >= max
                {
                    return Err(StoreError::Limit(format!(
                        "at most {max} webhook endpoints"
                    )));
                }
                webhooks::put_endpoint(conn, &endpoint)?;
                Ok(((), Vec::new()))
            })
            .await?;
            // The dispatcher drops what it holds of a changed or disabled endpoint, and
            // picks up a re-enabled one's pending deliveries, at its next scan: now.
            self.outbox_ready.notify_one();
            self.refresh_filters()
        }
        .boxed()
    }

    fn delete_endpoint(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            let deleted = self
                .write(move |conn| Ok((webhooks::delete_endpoint(conn, &id)?, Vec::new())))
                .await?;
            self.outbox_ready.notify_one();
            self.refresh_filters()?;
            Ok(deleted)
        }
        .boxed()
    }

    fn outbox_heads(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<OutboxHead>, StoreError>> {
        async move { self.read(|conn| webhooks::outbox_heads(conn, now_ms)) }.boxed()
    }

    fn due_for(
        &self,
        endpoint_id: String,
        now_ms: i64,
        limit: usize,
        skip: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<DueDelivery>, StoreError>> {
        async move { self.read(|conn| webhooks::due_for(conn, &endpoint_id, now_ms, limit, &skip)) }
            .boxed()
    }

    fn record(&self, outcome: AttemptOutcome) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let disables = outcome.disable_endpoint.is_some();
            self.write(move |conn| Ok((webhooks::record(conn, &outcome)?, Vec::new())))
                .await?;
            if disables {
                self.outbox_ready.notify_one();
                self.refresh_filters()?;
            }
            Ok(())
        }
        .boxed()
    }

    fn deliveries<'a>(
        &'a self,
        endpoint_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StoreError>> {
        async move { self.read(|conn| webhooks::deliveries(conn, endpoint_id, limit)) }.boxed()
    }

    fn retry_delivery(
        &self,
        endpoint_id: String,
        delivery_id: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.write(move |conn| {
                Ok((
                    webhooks::retry(conn, &endpoint_id, &delivery_id, now_ms)?,
                    Vec::new(),
                ))
            })
            .await?;
            self.outbox_ready.notify_one();
            Ok(())
        }
        .boxed()
    }
}
