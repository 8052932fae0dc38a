//! The embedded store: SQLite in `data_dir`, one group-committing writer thread, one
//! reader connection, and the job channels' logs served to the hub.

mod jobs;
mod schema;
mod writer;

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use futures_util::future::{BoxFuture, FutureExt};
use rusqlite::{Connection, OpenFlags};
use switchyard_protocol::ChannelName;

pub use jobs::job_channel;
pub use writer::{EventSink, WriterStats};

use super::{Claimed, JobRecord, NewJob, Report, Store, StoreError, Submitted};
use crate::hub::{DurableChannels, HubError, LoadedChannel};
use writer::Writer;

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
    /// Commit counters, for `/metrics`.
    pub stats: Arc<WriterStats>,
}

impl SqliteStore {
    /// Opens (creating when missing) the store in `dir`. Call [`SqliteStore::start`] before
    /// writing.
    ///
    /// # Errors
    /// When the directory or database cannot be created or opened.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
        let path = dir.join(DB_FILE);
        let write_conn =
            Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        schema::configure(&write_conn)?;
        let epoch = schema::migrate(&write_conn).context("cannot create the schema")?;
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
            stats: Arc::default(),
        }))
    }

    /// Starts the writer; committed events go to `sink` in commit order.
    pub fn start(&self, sink: EventSink) {
        let conn = self
            .write_conn
            .lock()
            .expect("not poisoned")
            .take()
            .expect("started once");
        let (writer, thread) = Writer::start(conn, sink, Arc::clone(&self.stats));
        *self.writer.lock().expect("not poisoned") = Some(writer);
        *self.writer_thread.lock().expect("not poisoned") = Some(thread);
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

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<(T, Vec<writer::Appended>), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.writer()?.write(f).await
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        let lease = random_token();
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
    fn ping_now(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
    }

    async fn close_now(&self, deadline: std::time::Duration) {
        // Dropping the last sender ends the writer after what is queued; closing its
        // connection checkpoints the WAL into the database file.
        self.writer.lock().expect("not poisoned").take();
        let Some(thread) = self.writer_thread.lock().expect("not poisoned").take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(deadline, joined).await {
            Ok(_) => tracing::info!("store closed"),
            Err(_) => tracing::warn!(?deadline, "the store writer did not finish in time"),
        }
    }
}

impl DurableChannels for SqliteStore {
    fn owns(&self, channel: &str) -> bool {
        channel.starts_with("jobs/")
    }

    fn load(&self, channel: &ChannelName, max_events: usize) -> Result<LoadedChannel, HubError> {
        let id = channel.as_str().strip_prefix("jobs/").unwrap_or("");
        let (last_offset, events) = self
            .read(|conn| jobs::load_events(conn, id, max_events))
            .map_err(|e| HubError::Unavailable(e.to_string()))?;
        Ok(LoadedChannel {
            epoch: self.epoch,
            last_offset,
            events,
        })
    }
}
