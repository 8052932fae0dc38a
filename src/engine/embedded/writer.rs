//! The single writer: one thread owns the write connection and commits whatever is pending
//! as one transaction with one fsync (group commit), each operation in its own savepoint so
//! one failure does not undo the others. After the commit, events go to the hub in commit
//! order, then each caller gets its answer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
};

use rusqlite::Connection;
use switchyard_protocol::ChannelName;
use tokio::sync::{mpsc, oneshot};

use super::hub::StoredEvent;
use crate::store::StoreError;

/// Operations waiting for the writer; past it, callers wait (backpressure).
const QUEUE: usize = 4096;
/// Most operations in one transaction.
const MAX_BATCH: usize = 512;

/// An event appended by an operation, handed to the hub after the commit.
pub(super) type Appended = (ChannelName, StoredEvent);

/// Receives committed events, in commit order (the hub's `append_stored`).
pub type EventSink = Box<dyn Fn(&ChannelName, StoredEvent) + Send>;

/// Runs inside an operation's transaction for each event it appends: records the webhook
/// deliveries the event calls for, so they commit (or roll back) with it. Returns whether
/// it recorded any.
pub(super) type OutboxHook =
    Box<dyn Fn(&Connection, &ChannelName, &StoredEvent) -> Result<bool, StoreError> + Send>;

/// What the writer thread runs with.
pub(super) struct WriterParts {
    pub(super) sink: EventSink,
    pub(super) outbox: OutboxHook,
    /// Woken after a commit that recorded webhook deliveries.
    pub(super) outbox_ready: Arc<tokio::sync::Notify>,
    pub(super) stats: Arc<WriterStats>,
}

struct Applied {
    events: Vec<Appended>,
    finish: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

type Op = Box<dyn FnOnce(&Connection) -> Result<Applied, Applied> + Send>;

/// Counters of the writer, for `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Operations committed.
    pub ops: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
}

/// The writer's handle: send operations, await their durable result.
#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Op>,
}

/// The writer thread; it ends (closing its connection) once every [`Writer`] is dropped.
pub(super) type WriterThread = thread::JoinHandle<()>;

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(super) fn start(conn: Connection, parts: WriterParts) -> (Self, WriterThread) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = thread::Builder::new()
            .name("switchyard-store-writer".into())
            .spawn(move || run(conn, rx, &parts))
            .expect("can spawn the store writer thread");
        (Self { tx }, thread)
    }

    /// Runs `f` in the next transaction; resolves once it is committed (fsync'd) or failed.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<(T, Vec<Appended>), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let op: Op = Box::new(move |conn| match f(conn) {
            Ok((value, events)) => Ok(Applied {
                events,
                finish: Box::new(move |committed| {
                    let _ = reply_tx.send(committed.map(|()| value));
                }),
            }),
            Err(e) => Err(Applied {
                events: Vec::new(),
                finish: Box::new(move |_| {
                    let _ = reply_tx.send(Err(e));
                }),
            }),
        });
        self.tx
            .send(op)
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        reply_rx
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Op>, parts: &WriterParts) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let stats = &parts.stats;
        if commit_batch(&conn, &mut batch, parts) {
            stats.commits.fetch_add(1, Relaxed);
            stats.ops.fetch_add(n, Relaxed);
            stats.max_batch.fetch_max(n, Relaxed);
        }
    }
}

/// Runs a cached statement (savepoints run once per operation: parse them once).
fn statement(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Commits the batch; returns whether the commit succeeded.
fn commit_batch(conn: &Connection, batch: &mut Vec<Op>, parts: &WriterParts) -> bool {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, ops = batch.len(), "cannot begin a store transaction");
        // Dropping an op drops its reply channel: each caller gets `Unavailable`.
        batch.clear();
        return false;
    }
    let mut applied = Vec::with_capacity(batch.len());
    let mut enqueued = false;
    for op in batch.drain(..) {
        let _ = statement(conn, "SAVEPOINT op");
        let result = op(conn).and_then(|a| {
            for (channel, event) in &a.events {
                match (parts.outbox)(conn, channel, event) {
                    Ok(any) => enqueued |= any,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record webhook deliveries");
                        (a.finish)(Err(e));
                        return Err(Applied {
                            events: Vec::new(),
                            finish: Box::new(|_| {}),
                        });
                    }
                }
            }
            Ok(a)
        });
        match result {
            Ok(a) => {
                let _ = statement(conn, "RELEASE op");
                applied.push(Ok(a));
            }
            Err(a) => {
                let _ =
                    statement(conn, "ROLLBACK TO op").and_then(|()| statement(conn, "RELEASE op"));
                applied.push(Err(a));
            }
        }
    }
    let committed = conn.execute_batch("COMMIT").map_err(|e| {
        tracing::error!(error = %e, "store commit failed");
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    });
    if enqueued && committed.is_ok() {
        parts.outbox_ready.notify_one();
    }
    for result in applied {
        match (result, &committed) {
            (Ok(a), Ok(())) => {
                for (channel, event) in a.events {
                    (parts.sink)(&channel, event);
                }
                (a.finish)(Ok(()));
            }
            (Ok(a), Err(e)) => {
                (a.finish)(Err(StoreError::Unavailable(format!("commit failed: {e}"))))
            }
            (Err(a), _) => (a.finish)(Ok(())),
        }
    }
    committed.is_ok()
}
