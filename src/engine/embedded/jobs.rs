//! The SQL of job operations, run by the writer inside its transaction (or by readers).

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::value::RawValue;

use switchyard_protocol::ChannelName;

use super::{channel_log::event_from_row, hub::StoredEvent};
use crate::{
    jobs::channel::job_channel,
    store::{Claimed, JobRecord, JobStatus, NewJob, Report, StoreError, Submitted},
    time::now_rfc3339,
};

/// An event a job operation appended to its job's log: the writer hands it to the hub after
/// the commit.
pub(super) type JobEvent = (ChannelName, StoredEvent);

const GET_JOB: &str = "SELECT id, status, created_at, updated_at, attempts, max_attempts, result, error FROM jobs WHERE id = ?1";

fn raw(text: Option<String>) -> Option<Box<RawValue>> {
    text.and_then(|t| RawValue::from_string(t).ok())
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let status: String = row.get(1)?;
    Ok(JobRecord {
        id: row.get(0)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        created_at_ms: row.get(2)?,
        updated_at_ms: row.get(3)?,
        attempts: row.get(4)?,
        max_attempts: row.get(5)?,
        result: raw(row.get(6)?),
        error: raw(row.get(7)?),
    })
}

pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<JobRecord>, StoreError> {
    Ok(conn
        .prepare_cached(GET_JOB)?
        .query_row([id], job_from_row)
        .optional()?)
}

fn must_get(conn: &Connection, id: &str) -> Result<JobRecord, StoreError> {
    get(conn, id)?.ok_or(StoreError::NotFound)
}

/// Appends an event to a job's log, assigning the next offset.
fn append(
    conn: &Connection,
    id: &str,
    event_type: &str,
    data: String,
) -> Result<JobEvent, StoreError> {
    let offset: i64 = conn
        .prepare_cached(
            "UPDATE jobs SET last_offset = last_offset + 1 WHERE id = ?1 RETURNING last_offset",
        )?
        .query_row([id], |r| r.get(0))?;
    let time = now_rfc3339();
    conn.prepare_cached(
        "INSERT INTO job_events (job_id, offset, type, time, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, offset, event_type, time, data])?;
    let data = RawValue::from_string(data).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok((
        job_channel(id),
        StoredEvent {
            offset: offset as u64,
            event_type: event_type.to_owned(),
            time,
            data,
            at_ms: None,
        },
    ))
}

pub(super) fn submit(
    conn: &Connection,
    job: &NewJob,
) -> Result<(Submitted, Vec<JobEvent>), StoreError> {
    if let Some((key, hash)) = &job.idempotency {
        let existing: Option<(String, i64)> = conn
            .prepare_cached("SELECT id, request_hash FROM jobs WHERE idempotency_key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((id, stored_hash)) = existing {
            if stored_hash != *hash {
                return Err(StoreError::IdempotencyConflict);
            }
            let first = must_get(conn, &id)?;
            return Ok((
                Submitted {
                    job: first,
                    replayed: true,
                },
                Vec::new(),
            ));
        }
    }
    let (key, hash) = job.idempotency.clone().unzip();
    conn.prepare_cached(
        "INSERT INTO jobs (id, status, payload, max_attempts, queued_at, created_at, updated_at, idempotency_key, request_hash)
         VALUES (?1, 'queued', ?2, ?3, ?4, ?4, ?4, ?5, ?6)",
    )?
    .execute(
        params![job.id, &job.payload[..], job.max_attempts, job.now_ms, key, hash],
    )?;
    let event = append(
        conn,
        &job.id,
        "job.queued",
        r#"{"status":"queued","attempts":0}"#.to_owned(),
    )?;
    Ok((
        Submitted {
            job: must_get(conn, &job.id)?,
            replayed: false,
        },
        vec![event],
    ))
}

pub(super) fn claim(
    conn: &Connection,
    lease: String,
    lease_ms: u64,
    now_ms: i64,
) -> Result<(Option<Claimed>, Vec<JobEvent>), StoreError> {
    let next: Option<String> = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE status = 'queued' ORDER BY queued_at, rowid LIMIT 1",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    let Some(id) = next else {
        return Ok((None, Vec::new()));
    };
    let expires = now_ms + lease_ms as i64;
    let payload: Vec<u8> = conn.prepare_cached(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease = ?2, lease_ms = ?3,
                lease_expires_at = ?4, updated_at = ?5
         WHERE id = ?1 RETURNING payload",
    )?
    .query_row(
        params![id, lease, lease_ms as i64, expires, now_ms],
        |r| r.get(0),
    )?;
    let job = must_get(conn, &id)?;
    let event = append(
        conn,
        &id,
        "job.started",
        format!(r#"{{"status":"running","attempt":{}}}"#, job.attempts),
    )?;
    Ok((
        Some(Claimed {
            job,
            payload: Bytes::from(payload),
            lease,
            lease_expires_at_ms: expires,
        }),
        vec![event],
    ))
}

/// Checks the lease: the job must be running under exactly this lease.
fn check_lease(conn: &Connection, id: &str, lease: &str) -> Result<JobRecord, StoreError> {
    let current: Option<Option<String>> = conn
        .prepare_cached("SELECT lease FROM jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let job = must_get(conn, id)?;
    match current {
        Some(Some(l)) if l == lease && job.status == JobStatus::Running => Ok(job),
        _ => Err(StoreError::StaleLease(job.status.as_str())),
    }
}

pub(super) fn report(
    conn: &Connection,
    id: &str,
    lease: &str,
    report: Report,
    now_ms: i64,
) -> Result<(JobRecord, Vec<JobEvent>), StoreError> {
    let job = check_lease(conn, id, lease)?;
    let event = match report {
        Report::Progress(data) => {
            conn.prepare_cached(
                "UPDATE jobs SET lease_expires_at = ?2 + lease_ms, updated_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, now_ms])?;
            append(conn, id, "job.progress", data.get().to_owned())?
        }
        Report::Complete(result) => {
            conn.prepare_cached(
                "UPDATE jobs SET status = 'succeeded', result = ?2, lease = NULL, lease_expires_at = NULL,
                        updated_at = ?3 WHERE id = ?1",
            )?
            .execute(
                params![id, result.get(), now_ms],
            )?;
            let data = format!(r#"{{"status":"succeeded","result":{}}}"#, result.get());
            append(conn, id, "job.completed", data)?
        }
        Report::Fail { error, retry: true } if job.attempts < job.max_attempts => {
            requeue(conn, id, job.attempts, "retry", Some(error.get()), now_ms)?
        }
        Report::Fail { error, .. } => fail(conn, id, job.attempts, error.get(), now_ms)?,
    };
    Ok((must_get(conn, id)?, vec![event]))
}

/// Puts a running job back in the queue; the event says why (and the worker's error, if any).
fn requeue(
    conn: &Connection,
    id: &str,
    attempts: u32,
    reason: &str,
    error: Option<&str>,
    now_ms: i64,
) -> Result<JobEvent, StoreError> {
    conn.prepare_cached(
        "UPDATE jobs SET status = 'queued', lease = NULL, lease_expires_at = NULL, queued_at = ?2,
                updated_at = ?2 WHERE id = ?1",
    )?
    .execute(params![id, now_ms])?;
    let data = match error {
        Some(error) => format!(
            r#"{{"status":"queued","attempts":{attempts},"reason":"{reason}","error":{error}}}"#
        ),
        None => format!(r#"{{"status":"queued","attempts":{attempts},"reason":"{reason}"}}"#),
    };
    append(conn, id, "job.queued", data)
}

fn fail(
    conn: &Connection,
    id: &str,
    attempts: u32,
    error: &str,
    now_ms: i64,
) -> Result<JobEvent, StoreError> {
    conn.prepare_cached(
        "UPDATE jobs SET status = 'failed', error = ?2, lease = NULL, lease_expires_at = NULL,
                updated_at = ?3 WHERE id = ?1",
    )?
    .execute(params![id, error, now_ms])?;
    let data = format!(r#"{{"status":"failed","error":{error},"attempts":{attempts}}}"#);
    append(conn, id, "job.failed", data)
}

pub(super) fn cancel(
    conn: &Connection,
    id: &str,
    now_ms: i64,
) -> Result<(JobRecord, Vec<JobEvent>), StoreError> {
    let job = must_get(conn, id)?;
    if job.status.is_terminal() {
        return Err(StoreError::Finished(job.status.as_str()));
    }
    conn.prepare_cached(
        "UPDATE jobs SET status = 'canceled', lease = NULL, lease_expires_at = NULL, updated_at = ?2
         WHERE id = ?1",
    )?
    .execute(
        params![id, now_ms],
    )?;
    let event = append(
        conn,
        id,
        "job.canceled",
        r#"{"status":"canceled"}"#.to_owned(),
    )?;
    Ok((must_get(conn, id)?, vec![event]))
}

/// Whether any running job's lease has run out (a cheap read before asking the writer).
pub(super) fn has_expired_leases(conn: &Connection, now_ms: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE status = 'running' AND lease_expires_at <= ?1 LIMIT 1",
        )?
        .query_row([now_ms], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn expire_leases(
    conn: &Connection,
    now_ms: i64,
) -> Result<(usize, Vec<JobEvent>), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, attempts, max_attempts FROM jobs
         WHERE status = 'running' AND lease_expires_at <= ?1 LIMIT 1000",
    )?;
    let expired: Vec<(String, u32, u32)> = stmt
        .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut events = Vec::with_capacity(expired.len());
    let mut requeued = 0;
    for (id, attempts, max_attempts) in expired {
        if attempts < max_attempts {
            events.push(requeue(conn, &id, attempts, "lease_expired", None, now_ms)?);
            requeued += 1;
        } else {
            let error = r#"{"code":"lease_expired","message":"the worker's lease ran out on the last attempt"}"#;
            events.push(fail(conn, &id, attempts, error, now_ms)?);
        }
    }
    Ok((requeued, events))
}

/// A job channel's epoch-less state: last offset and the latest `max` events.
pub(super) fn load_events(
    conn: &Connection,
    id: &str,
    max: usize,
) -> Result<(u64, Vec<StoredEvent>), StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT last_offset FROM jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(last) = last.map(|l| l as u64) else {
        return Ok((0, Vec::new()));
    };
    let mut stmt = conn.prepare_cached(
        "SELECT offset, type, time, data FROM job_events WHERE job_id = ?1 AND offset > ?2 ORDER BY offset",
    )?;
    let from = last.saturating_sub(max as u64) as i64;
    let events = stmt
        .query_map(params![id, from], |r| event_from_row(r, None))?
        .collect::<Result<_, _>>()?;
    Ok((last, events))
}
