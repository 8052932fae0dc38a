//! WAL checkpoints on a thread and connection of their own, so the writer's group commits
//! do not stop to copy the WAL into the database and fsync it.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
//! committing connection: under a steady publish load that was 13% of the writer thread's
//! CPU, plus a database fsync in the middle of the commit path. A `PASSIVE` checkpoint from
//! another connection runs concurrently with the writer's transactions and never blocks
//! them; the writer keeps a high automatic threshold only as a backstop, should this thread
//! fall behind.

use std::{
    path::Path,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::Duration,
};

use rusqlite::Connection;

/// Time between checkpoints: the WAL holds about this much of the write load.
const EVERY: Duration = Duration::from_millis(500);
/// The writer's own automatic checkpoint, in pages (a backstop: 64 MiB of 4 KiB pages).
pub(super) const WRITER_BACKSTOP_PAGES: i64 = 16_384;

/// The checkpoint thread; stopped by [`Checkpointer::stop`] (or when dropped).
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` every [`EVERY`].
    ///
    /// # Errors
    /// When the database cannot be opened.
    pub(super) fn start(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(1))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("switchyard-checkpoint".into())
            .spawn(move || run(&conn, &flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the thread after its current checkpoint.
    pub(super) fn stop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar)) {
    let (stopped, wake) = stop;
    let mut guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        guard = wake
            .wait_timeout(guard, EVERY)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if *guard {
            return;
        }
        // A busy answer (the writer's backstop checkpoint is running) is fine: next time.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint skipped");
        }
    }
}
