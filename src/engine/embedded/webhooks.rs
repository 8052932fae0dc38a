//! The SQL of webhook endpoints, the delivery outbox and the attempt log.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::hub::Event;
use crate::store::{
    AttemptOutcome, Delivery, DeliveryAttempt, DueDelivery, EndpointRecord, OutboxHead, StoreError,
};

const ENDPOINT_COLUMNS: &str = "id, url, channels, types, secret, previous_secret, previous_secret_until, \
     enabled, disabled_reason, failing_since, created_at, updated_at";

fn endpoint_from_row(row: &Row<'_>) -> rusqlite::Result<EndpointRecord> {
    let json_list = |i: usize| -> rusqlite::Result<Vec<String>> {
        let text: String = row.get(i)?;
        serde_json::from_str(&text)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    };
    Ok(EndpointRecord {
        id: row.get(0)?,
        url: row.get(1)?,
        channels: json_list(2)?,
        types: json_list(3)?,
        secret: row.get(4)?,
        previous_secret: row.get(5)?,
        previous_secret_until_ms: row.get(6)?,
        enabled: row.get(7)?,
        disabled_reason: row.get(8)?,
        failing_since_ms: row.get(9)?,
        created_at_ms: row.get(10)?,
        updated_at_ms: row.get(11)?,
    })
}

pub(super) fn list_endpoints(conn: &Connection) -> Result<Vec<EndpointRecord>, StoreError> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map([], endpoint_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn get_endpoint(
    conn: &Connection,
    id: &str,
) -> Result<Option<EndpointRecord>, StoreError> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], endpoint_from_row)
        .optional()?)
}

pub(super) fn count_endpoints(conn: &Connection) -> Result<usize, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM webhook_endpoints")?
        .query_row([], |r| r.get(0))?;
    Ok(n as usize)
}

/// Inserts or replaces an endpoint.
pub(super) fn put_endpoint(conn: &Connection, e: &EndpointRecord) -> Result<(), StoreError> {
    let channels = serde_json::to_string(&e.channels).expect("infallible");
    let types = serde_json::to_string(&e.types).expect("infallible");
    conn.prepare_cached(
        "INSERT OR REPLACE INTO webhook_endpoints (id, url, channels, types, secret, previous_secret,
             previous_secret_until, enabled, disabled_reason, failing_since, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        e.id,
        e.url,
        channels,
        types,
        e.secret,
        e.previous_secret,
        e.previous_secret_until_ms,
        e.enabled,
        e.disabled_reason,
        e.failing_since_ms,
        e.created_at_ms,
        e.updated_at_ms
    ])?;
    Ok(())
}

pub(super) fn delete_endpoint(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE endpoint_id = ?1)",
    )?
    .execute([id])?;
    conn.prepare_cached("DELETE FROM webhook_deliveries WHERE endpoint_id = ?1")?
        .execute([id])?;
    Ok(conn
        .prepare_cached("DELETE FROM webhook_endpoints WHERE id = ?1")?
        .execute([id])?
        > 0)
}

/// Records one delivery of `event` per endpoint (the outbox), its body the event's envelope.
pub(super) fn enqueue(
    conn: &Connection,
    endpoints: &[String],
    event: &Event,
    now_ms: i64,
) -> Result<(), StoreError> {
    let channel = event.channel().as_str();
    let (offset, event_type, body) = (event.offset(), event.event_type(), &event.envelope()[..]);
    let mut stmt = conn.prepare_cached(
        "INSERT INTO webhook_deliveries (id, endpoint_id, channel, event_offset, event_type, body, status,
             attempts, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7)",
    )?;
    for endpoint in endpoints {
        stmt.execute(params![
            crate::ids::delivery_id(now_ms),
            endpoint,
            channel,
            offset as i64,
            event_type,
            body,
            now_ms
        ])?;
    }
    Ok(())
}

/// Every enabled endpoint with whether it has a pending delivery due at `now_ms` and when
/// its next one after that falls due: two seeks in `webhook_pending` per endpoint, however
/// long any endpoint's backlog is.
pub(super) fn outbox_heads(conn: &Connection, now_ms: i64) -> Result<Vec<OutboxHead>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.id, e.updated_at,
             (SELECT MIN(d.next_attempt_at) FROM webhook_deliveries d
              WHERE d.endpoint_id = e.id AND d.status = 'pending'),
             (SELECT MIN(d.next_attempt_at) FROM webhook_deliveries d
              WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at > ?1)
         FROM webhook_endpoints e WHERE e.enabled = 1",
    )?;
    let rows = stmt
        .query_map([now_ms], |r| {
            let first: Option<i64> = r.get(2)?;
            Ok(OutboxHead {
                endpoint_id: r.get(0)?,
                updated_at_ms: r.get(1)?,
                has_due: first.is_some_and(|at| at <= now_ms),
                next_due_ms: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Up to `limit` of an enabled endpoint's deliveries due at `now_ms`, oldest first, leaving
/// out `skip` (those the dispatcher holds already: queued or in flight). Reads only this
/// endpoint's range of `webhook_pending`, so another endpoint's backlog costs nothing here.
pub(super) fn due_for(
    conn: &Connection,
    endpoint_id: &str,
    now_ms: i64,
    limit: usize,
    skip: &[String],
) -> Result<Vec<DueDelivery>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.endpoint_id, d.body, d.attempts, e.url, e.secret, e.previous_secret, e.previous_secret_until
         FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
         WHERE d.endpoint_id = ?1 AND d.status = 'pending' AND d.next_attempt_at <= ?2
           AND e.enabled = 1 AND d.id NOT IN (SELECT value FROM json_each(?4))
         ORDER BY d.next_attempt_at LIMIT ?3",
    )?;
    let skip = serde_json::to_string(skip).expect("infallible");
    let rows = stmt
        .query_map(params![endpoint_id, now_ms, limit as i64, skip], |r| {
            Ok(DueDelivery {
                id: r.get(0)?,
                endpoint_id: r.get(1)?,
                body: r.get::<_, Vec<u8>>(2)?.into(),
                attempts: r.get(3)?,
                url: r.get(4)?,
                secret: r.get(5)?,
                previous_secret: r.get(6)?,
                previous_secret_until_ms: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Logs an attempt and moves the delivery (and its endpoint's health) on.
pub(super) fn record(conn: &Connection, o: &AttemptOutcome) -> Result<(), StoreError> {
    let n: i64 = conn
        .prepare_cached("UPDATE webhook_deliveries SET attempts = attempts + 1, updated_at = ?2 WHERE id = ?1 RETURNING attempts")?
        .query_row(params![o.delivery_id, o.at_ms], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound)?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO webhook_attempts (delivery_id, n, at, status_code, latency_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![o.delivery_id, n, o.at_ms, o.status_code, o.latency_ms, o.error])?;
    let (status, next) = match (o.succeeded, o.next_attempt_at_ms) {
        (true, _) => ("succeeded", None),
        (false, Some(next)) => ("pending", Some(next)),
        (false, None) => ("failed", None),
    };
    conn.prepare_cached(
        "UPDATE webhook_deliveries SET status = ?2, next_attempt_at = ?3 WHERE id = ?1",
    )?
    .execute(params![o.delivery_id, status, next])?;
    if o.succeeded {
        conn.prepare_cached("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ?1 AND failing_since IS NOT NULL")?
            .execute([&o.endpoint_id])?;
    } else {
        conn.prepare_cached("UPDATE webhook_endpoints SET failing_since = ?2 WHERE id = ?1 AND failing_since IS NULL")?
            .execute(params![o.endpoint_id, o.at_ms])?;
    }
    if let Some(reason) = &o.disable_endpoint {
        conn.prepare_cached("UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![o.endpoint_id, reason, o.at_ms])?;
    }
    Ok(())
}

pub(super) fn deliveries(
    conn: &Connection,
    endpoint_id: &str,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, channel, event_offset, event_type, status, attempts, next_attempt_at, created_at, updated_at
         FROM webhook_deliveries WHERE endpoint_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2",
    )?;
    let mut list: Vec<Delivery> = stmt
        .query_map(params![endpoint_id, limit as i64], |r| {
            Ok(Delivery {
                id: r.get(0)?,
                channel: r.get(1)?,
                offset: r.get::<_, i64>(2)? as u64,
                event_type: r.get(3)?,
                status: r.get(4)?,
                attempts: r.get(5)?,
                next_attempt_at_ms: r.get(6)?,
                created_at_ms: r.get(7)?,
                updated_at_ms: r.get(8)?,
                log: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut attempts = conn.prepare_cached(
        "SELECT n, at, status_code, latency_ms, error FROM webhook_attempts WHERE delivery_id = ?1 ORDER BY n",
    )?;
    for d in &mut list {
        d.log = attempts
            .query_map([&d.id], |r| {
                Ok(DeliveryAttempt {
                    n: r.get(0)?,
                    at_ms: r.get(1)?,
                    status_code: r.get(2)?,
                    latency_ms: r.get(3)?,
                    error: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(list)
}

/// Sends a delivery again now (whatever its state).
pub(super) fn retry(
    conn: &Connection,
    endpoint_id: &str,
    delivery_id: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?3, updated_at = ?3
             WHERE id = ?2 AND endpoint_id = ?1",
        )?
        .execute(params![endpoint_id, delivery_id, now_ms])?;
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}
