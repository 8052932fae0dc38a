//! The single writer: one thread owns the write connection and commits whatever is pending
//! as one transaction with one fsync (group commit), each operation in its own savepoint so
//! one failure does not undo the others.
//!
//! Every event an operation appends (a job's event, or a publish the hub sequenced through
//! here, see [`super::hub`]) takes one path: inside the operation's savepoint the outbox hook
//! records the webhook deliveries it owes; after the commit the events reach the hub in
//! commit order (history, then fan-out), and only then does each caller get its answer. If
//! an operation or the commit fails, its events never reach anyone: a publish's offset is
//! withdrawn before the next operation runs, so no offset is skipped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::hub::{MemoryHub, Pending};
use crate::{hub::Event, store::StoreError};

/// Operations waiting for the writer; past it, callers wait (backpressure).
const QUEUE: usize = 4096;
/// Most operations in one transaction.
const MAX_BATCH: usize = 512;

/// An event an operation appended, handed to the hub after the commit.
pub(crate) enum Appended {
    /// A job's event, written to the job's log in this transaction.
    Job(Arc<Event>),
    /// A publish on an in-memory channel whose offset the operation assigned.
    Publish(Pending),
}

impl Appended {
    fn event(&self) -> &Event {
        match self {
            Self::Job(event) => event,
            Self::Publish(pending) => pending.event(),
        }
    }

    /// After the commit: the event joins its channel.
    fn commit(self, hub: &MemoryHub) {
        match self {
            Self::Job(event) => hub.append_stored(event),
            Self::Publish(pending) => pending.release(hub),
        }
    }

    /// The transaction did not happen: nobody sees the event.
    fn abandon(self) {
        if let Self::Publish(pending) = self {
            pending.withdraw();
        }
    }
}

/// Runs inside an operation's savepoint for each event it appends: records the webhook
/// deliveries the event calls for, so they commit (or roll back) with it. Returns whether
/// it recorded any.
pub(super) type OutboxHook = Box<dyn Fn(&Connection, &Event) -> Result<bool, StoreError> + Send>;

/// What the writer thread runs with.
pub(super) struct WriterParts {
    /// Where committed events go, in commit order.
    pub(super) hub: Arc<MemoryHub>,
    pub(super) outbox: OutboxHook,
    /// Woken after a commit that recorded webhook deliveries.
    pub(super) outbox_ready: Arc<tokio::sync::Notify>,
    pub(super) stats: Arc<WriterStats>,
}

/// An operation that ran in the transaction: its events, and how to answer its caller.
struct Applied {
    events: Vec<Appended>,
    finish: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

type Op = Box<dyn FnOnce(&Connection) -> Result<Applied, Failed> + Send>;

/// An operation that failed on its own (rolled back to its savepoint): its caller's answer.
struct Failed(Box<dyn FnOnce() + Send>);

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

    /// Runs `f` in the next transaction; resolves once it is committed (fsync'd) and its
    /// events reached the hub, or failed (and its events reached nobody).
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
            Err(e) => Err(Failed(Box::new(move || {
                let _ = reply_tx.send(Err(e));
            }))),
        });
        let stopped = || StoreError::Unavailable("the store writer has stopped".into());
        self.tx.send(op).await.map_err(|_| stopped())?;
        reply_rx.await.map_err(|_| stopped())?
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

/// Runs one operation in its own savepoint, with the outbox hook on each event it appends.
/// A failure rolls the savepoint back and withdraws the operation's events at once, before
/// the next operation runs (it may publish on the same channel).
fn apply(conn: &Connection, op: Op, parts: &WriterParts, enqueued: &mut bool) -> Option<Applied> {
    let _ = statement(conn, "SAVEPOINT op");
    let outcome = op(conn).and_then(|applied| {
        let mut failure = None;
        for appended in &applied.events {
            match (parts.outbox)(conn, appended.event()) {
                Ok(any) => *enqueued |= any,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(e) = failure else {
            return Ok(applied);
        };
        tracing::error!(error = %e, "cannot record webhook deliveries");
        let Applied { events, finish } = applied;
        events.into_iter().rev().for_each(Appended::abandon);
        Err(Failed(Box::new(move || finish(Err(e)))))
    });
    match outcome {
        Ok(applied) => {
            let _ = statement(conn, "RELEASE op");
            Some(applied)
        }
        Err(Failed(answer)) => {
            let _ = statement(conn, "ROLLBACK TO op").and_then(|()| statement(conn, "RELEASE op"));
            answer();
            None
        }
    }
}

/// Commits the batch; returns whether the commit succeeded.
fn commit_batch(conn: &Connection, batch: &mut Vec<Op>, parts: &WriterParts) -> bool {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, ops = batch.len(), "cannot begin a store transaction");
        // Dropping an op drops its reply channel (each caller gets `Unavailable`) and, for a
        // publish, its ticket on the channel; nothing was assigned yet.
        batch.clear();
        return false;
    }
    let mut enqueued = false;
    let applied: Vec<Applied> = batch
        .drain(..)
        .filter_map(|op| apply(conn, op, parts, &mut enqueued))
        .collect();
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            if enqueued {
                parts.outbox_ready.notify_one();
            }
            for Applied { events, finish } in applied {
                for appended in events {
                    appended.commit(&parts.hub);
                }
                finish(Ok(()));
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "store commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            // Newest first, so each channel's offsets go back to where the batch found them.
            for Applied { events, finish } in applied.into_iter().rev() {
                events.into_iter().rev().for_each(Appended::abandon);
                finish(Err(StoreError::Unavailable(format!("commit failed: {e}"))));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::value::RawValue;
    use switchyard_protocol::ChannelName;
    use switchyard_transports::hub::{Hub as _, Received, StartFrom, new_pair};

    use super::*;
    use crate::{
        engine::embedded::hub::{Assigned, MemoryHubConfig},
        hub::{Bus as _, Publish, Published},
    };

    /// A writer whose outbox refuses events of type `refused`, over an in-memory database.
    fn writer(hub: &Arc<MemoryHub>) -> (Writer, WriterThread) {
        let outbox: OutboxHook = Box::new(|_, event| {
            if event.event_type() == "refused" {
                Err(StoreError::Unavailable("injected".into()))
            } else {
                Ok(false)
            }
        });
        let parts = WriterParts {
            hub: Arc::clone(hub),
            outbox,
            outbox_ready: Arc::default(),
            stats: Arc::default(),
        };
        Writer::start(Connection::open_in_memory().unwrap(), parts)
    }

    async fn publish(
        writer: &Writer,
        hub: &Arc<MemoryHub>,
        channel: &ChannelName,
        event_type: &'static str,
    ) -> Result<Published, StoreError> {
        let ticket = hub.ticket(channel).unwrap();
        let (hub, channel) = (Arc::clone(hub), channel.clone());
        writer
            .write(move |_| {
                let data = RawValue::from_string("{}".into()).unwrap();
                let req = Publish {
                    channel: &channel,
                    event_type,
                    data: &data,
                    idempotency_key: None,
                };
                match hub.assign(ticket, &req) {
                    Assigned::New(pending) => Ok((
                        pending.published().clone(),
                        vec![Appended::Publish(pending)],
                    )),
                    _ => unreachable!("no idempotency key"),
                }
            })
            .await
    }

    #[tokio::test]
    async fn a_failed_operation_is_withdrawn_before_the_next_one_runs() {
        let hub = Arc::new(MemoryHub::new(
            MemoryHubConfig {
                namespaces: crate::engine::embedded::hub::single_namespace(
                    10,
                    Duration::from_secs(60),
                ),
                max_channels: 10,
                channel_bytes: 1 << 30,
                total_bytes: 1 << 30,
            },
            None,
        ));
        let c = ChannelName::new("a").unwrap();
        let (sink, mut inbox) = new_pair(16, None);
        hub.subscribe(&c, StartFrom::Now, &sink).await.unwrap();
        let (writer, thread) = writer(&hub);
        // Sent together, they may share a transaction: each is settled on its own.
        let (ok, refused, after) = tokio::join!(
            publish(&writer, &hub, &c, "ok"),
            publish(&writer, &hub, &c, "refused"),
            publish(&writer, &hub, &c, "ok"),
        );
        assert!(refused.is_err(), "its deliveries could not be recorded");
        let mut offsets = [ok.unwrap().offset, after.unwrap().offset];
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            [1, 2],
            "the refused publish's offset was taken back"
        );
        for want in [1, 2] {
            let Received::Event(e) = inbox.recv().await else {
                panic!("overflow")
            };
            assert_eq!((e.offset(), e.event_type()), (want, "ok"));
        }
        assert!(inbox.try_recv().is_none(), "nobody saw the refused event");
        assert_eq!(hub.published_count(), 2);
        drop(writer);
        thread.join().unwrap();
    }
}
