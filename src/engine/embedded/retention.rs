//! Retention: deletes finished rows past their age (jobs with their events, webhook
//! deliveries with their attempts), in bounded batches.

use rusqlite::{Connection, params};

use crate::store::StoreError;

/// One kind of finished row and its SQL. `?1` is the cut-off (unix ms); ids are read first,
/// on the reader, so the unindexed scan never runs inside the writer's transaction.
pub(super) struct Finished {
    /// Selects ids of finished rows changed before `?1`, at most `?2`.
    select: &'static str,
    /// Deletes row `?1` if it is still finished and older than `?2` (it may have changed
    /// since it was read).
    delete: &'static str,
    /// Deletes the rows that belong to row `?1`.
    delete_children: &'static str,
}

/// Succeeded, failed and canceled jobs, with their events (and so their idempotency keys).
pub(super) const JOBS: Finished = Finished {
    select: "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled') AND updated_at < ?1 LIMIT ?2",
    delete: "DELETE FROM jobs WHERE id = ?1 AND status IN ('succeeded', 'failed', 'canceled') AND updated_at < ?2",
    delete_children: "DELETE FROM job_events WHERE job_id = ?1",
};

/// Succeeded and failed webhook deliveries, with their attempts.
pub(super) const DELIVERIES: Finished = Finished {
    select: "SELECT id FROM webhook_deliveries WHERE status IN ('succeeded', 'failed') AND updated_at < ?1 LIMIT ?2",
    delete: "DELETE FROM webhook_deliveries WHERE id = ?1 AND status IN ('succeeded', 'failed') AND updated_at < ?2",
    delete_children: "DELETE FROM webhook_attempts WHERE delivery_id = ?1",
};

/// Ids of finished rows changed before `before_ms`, at most `limit`.
pub(super) fn finished_before(
    conn: &Connection,
    kind: &Finished,
    before_ms: i64,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(kind.select)?;
    let ids = stmt
        .query_map(params![before_ms, limit as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Deletes those of `ids` still finished and old, with their children; returns how many.
pub(super) fn delete_finished(
    conn: &Connection,
    kind: &Finished,
    ids: &[String],
    before_ms: i64,
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for id in ids {
        if conn
            .prepare_cached(kind.delete)?
            .execute(params![id, before_ms])?
            > 0
        {
            conn.prepare_cached(kind.delete_children)?.execute([id])?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
