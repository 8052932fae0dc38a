//! The SQL of durable namespaces' channel logs: written in the writer's transaction, read
//! back when a channel is first used, trimmed by retention to the namespace's bounds.
//!
//! `channel_events` holds the events (one row each, keyed by channel and offset);
//! `channel_heads` holds a channel's last offset once retention has deleted events, so a
//! channel whose every event is gone still continues its offsets after a restart. The
//! publish path writes one row per event and nothing else: the head is only needed when
//! the events that carry it are deleted, and retention writes it then.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::value::RawValue;

use super::hub::StoredEvent;
use crate::store::StoreError;

/// Appends one event to `channel`'s log (in the publish's savepoint).
pub(super) fn append(
    conn: &Connection,
    channel: &str,
    event: &StoredEvent,
    at_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO channel_events (channel, offset, type, time, data, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        channel,
        event.offset as i64,
        event.event_type,
        event.time,
        event.data.get(),
        at_ms
    ])?;
    Ok(())
}

/// An event from a row of `offset, type, time, data` (a channel's or a job's log).
pub(super) fn event_from_row(r: &Row<'_>, at_ms: Option<i64>) -> rusqlite::Result<StoredEvent> {
    let offset: i64 = r.get(0)?;
    let data: String = r.get(3)?;
    Ok(StoredEvent {
        offset: offset as u64,
        event_type: r.get(1)?,
        time: r.get(2)?,
        data: RawValue::from_string(data)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        at_ms,
    })
}

/// `channel`'s last offset (0 when it never had an event) and its latest `max` events,
/// oldest first.
pub(super) fn load(
    conn: &Connection,
    channel: &str,
    max: usize,
) -> Result<(u64, Vec<StoredEvent>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT offset, type, time, data, at_ms FROM channel_events WHERE channel = ?1 ORDER BY offset DESC LIMIT ?2",
    )?;
    let mut events: Vec<StoredEvent> = stmt
        .query_map(params![channel, max as i64], |r| {
            event_from_row(r, Some(r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    events.reverse();
    let head: i64 = conn
        .prepare_cached("SELECT last_offset FROM channel_heads WHERE channel = ?1")?
        .query_row([channel], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let newest = events.last().map_or(0, |e| e.offset);
    Ok((newest.max(head as u64), events))
}

/// The first channel with events whose name sorts after `after` (`""`: the first one), so
/// retention walks the channels a few at a time by the primary key, never in one scan.
pub(super) fn channel_after(conn: &Connection, after: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT channel FROM channel_events WHERE channel > ?1 ORDER BY channel LIMIT 1",
        )?
        .query_row([after], |r| r.get(0))
        .optional()?)
}

/// The offsets retention must delete from `channel`: those beyond the latest `size` and
/// those written before `before_ms`, as an inclusive range from the oldest; `None` when
/// every event is within bounds. The same events the hub drops from memory (by count on
/// publish, by age when read), so `reset` answers the same before and after a restart.
pub(super) fn beyond_bounds(
    conn: &Connection,
    channel: &str,
    size: usize,
    before_ms: i64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let ends: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT MIN(offset), MAX(offset) FROM channel_events WHERE channel = ?1 HAVING COUNT(*) > 0",
        )?
        .query_row([channel], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((oldest, newest)) = ends else {
        return Ok(None);
    };
    let by_count = newest - size as i64;
    // Offsets grow with time: the first young event ends the scan (a channel's old events
    // are read once, and they are the ones about to go).
    let first_young: Option<i64> = conn
        .prepare_cached(
            "SELECT offset FROM channel_events WHERE channel = ?1 AND at_ms >= ?2 ORDER BY offset LIMIT 1",
        )?
        .query_row(params![channel, before_ms], |r| r.get(0))
        .optional()?;
    let by_age = first_young.map_or(newest, |young| young - 1);
    let last = by_count.max(by_age);
    Ok((last >= oldest).then_some((oldest as u64, last as u64)))
}

/// Deletes `channel`'s events from `from` to `to` (inclusive), first keeping its last
/// offset in `channel_heads`; returns how many were deleted.
pub(super) fn delete(
    conn: &Connection,
    channel: &str,
    from: u64,
    to: u64,
) -> Result<usize, StoreError> {
    conn.prepare_cached(
        "INSERT INTO channel_heads (channel, last_offset)
         SELECT channel, MAX(offset) FROM channel_events WHERE channel = ?1 GROUP BY channel
         ON CONFLICT (channel) DO UPDATE SET last_offset = MAX(last_offset, excluded.last_offset)",
    )?
    .execute([channel])?;
    Ok(conn
        .prepare_cached(
            "DELETE FROM channel_events WHERE channel = ?1 AND offset >= ?2 AND offset <= ?3",
        )?
        .execute(params![channel, from as i64, to as i64])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&conn).unwrap();
        conn
    }

    fn event(offset: u64) -> StoredEvent {
        StoredEvent {
            offset,
            event_type: "t".into(),
            time: "2026-01-01T00:00:00Z".into(),
            data: RawValue::from_string(offset.to_string()).unwrap(),
            at_ms: None,
        }
    }

    #[test]
    fn retention_deletes_beyond_size_and_age_and_offsets_survive_an_empty_log() {
        let conn = db();
        for offset in 1..=10 {
            // Offsets 1-4 written at 1000, the rest at 5000.
            let at = if offset <= 4 { 1000 } else { 5000 };
            append(&conn, "d/a", &event(offset), at).unwrap();
        }
        append(&conn, "d/b", &event(1), 5000).unwrap();
        let (last, events) = load(&conn, "d/a", 3).unwrap();
        assert_eq!(last, 10);
        assert_eq!(
            events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        assert_eq!(events[0].at_ms, Some(5000));
        // By count: the latest 8 stay (3-10); by age (before 2000): 1-4 go. The larger wins.
        assert_eq!(beyond_bounds(&conn, "d/a", 8, 2000).unwrap(), Some((1, 4)));
        assert_eq!(beyond_bounds(&conn, "d/a", 5, 0).unwrap(), Some((1, 5)));
        assert_eq!(beyond_bounds(&conn, "d/a", 100, 0).unwrap(), None);
        assert_eq!(delete(&conn, "d/a", 1, 4).unwrap(), 4);
        // Everything old: all of it goes, the last offset stays.
        assert_eq!(
            beyond_bounds(&conn, "d/a", 100, 9999).unwrap(),
            Some((5, 10))
        );
        assert_eq!(delete(&conn, "d/a", 5, 10).unwrap(), 6);
        assert_eq!(load(&conn, "d/a", 3).unwrap().0, 10);
        assert!(load(&conn, "d/a", 3).unwrap().1.is_empty());
        assert_eq!(channel_after(&conn, "").unwrap().as_deref(), Some("d/b"));
        assert_eq!(channel_after(&conn, "d/b").unwrap(), None);
        assert_eq!(load(&conn, "never", 3).unwrap().0, 0);
    }
}
