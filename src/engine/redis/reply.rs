//! Turning the scripts' replies (Redis values) into the store's records and errors.

use redis::Value;
use serde_json::value::RawValue;

use crate::store::{JobRecord, JobStatus, StoreError};

/// A reply that is not what the scripts return.
pub(super) fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from a job script: {what}"))
}

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(super) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        _ => None,
    }
}

fn number<T: std::str::FromStr>(v: &Value) -> Option<T> {
    text(v)?.parse().ok()
}

/// A status name as the `'static` str the errors carry.
pub(super) fn status(v: &Value) -> Result<JobStatus, StoreError> {
    text(v)
        .as_deref()
        .and_then(JobStatus::parse)
        .ok_or_else(|| malformed("status"))
}

/// The script's reply: its kind and the rest.
pub(super) fn split(v: Value) -> Result<(String, Vec<Value>), StoreError> {
    let Value::Array(mut items) = v else {
        return Err(malformed("not an array"));
    };
    if items.is_empty() {
        return Err(malformed("empty"));
    }
    let kind = text(&items.remove(0)).ok_or_else(|| malformed("kind"))?;
    Ok((kind, items))
}

/// A job from `HMGET status created_at updated_at attempts max_attempts result error`;
/// `None` when the job does not exist.
pub(super) fn record(id: &str, v: &Value) -> Result<Option<JobRecord>, StoreError> {
    let Value::Array(f) = v else {
        return Err(malformed("record"));
    };
    let [st, created, updated, attempts, max_attempts, result, error] = f.as_slice() else {
        return Err(malformed("record fields"));
    };
    if matches!(st, Value::Nil) {
        return Ok(None);
    }
    let raw = |v: &Value| text(v).and_then(|t| RawValue::from_string(t).ok());
    Ok(Some(JobRecord {
        id: id.to_owned(),
        // As the embedded store: an unreadable status reads as failed.
        status: text(st)
            .as_deref()
            .and_then(JobStatus::parse)
            .unwrap_or(JobStatus::Failed),
        created_at_ms: number(created).ok_or_else(|| malformed("created_at"))?,
        updated_at_ms: number(updated).ok_or_else(|| malformed("updated_at"))?,
        attempts: number(attempts).ok_or_else(|| malformed("attempts"))?,
        max_attempts: number(max_attempts).ok_or_else(|| malformed("max_attempts"))?,
        result: raw(result),
        error: raw(error),
    }))
}

/// A record that must be there (the script just wrote it).
pub(super) fn must_record(id: &str, v: Option<&Value>) -> Result<JobRecord, StoreError> {
    record(id, v.ok_or_else(|| malformed("no record"))?)?.ok_or_else(|| malformed("no job"))
}

/// A number in a reply.
pub(super) fn int(v: Option<&Value>, what: &str) -> Result<i64, StoreError> {
    v.and_then(number).ok_or_else(|| malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn records_parse_with_raw_json_kept_byte_for_byte() {
        let v = Value::Array(vec![
            bulk("succeeded"),
            bulk("10"),
            bulk("20"),
            bulk("1"),
            bulk("3"),
            bulk("{\"a\": 1}"),
            Value::Nil,
        ]);
        let r = record("x", &v).unwrap().unwrap();
        assert_eq!(r.status, JobStatus::Succeeded);
        assert_eq!((r.created_at_ms, r.updated_at_ms), (10, 20));
        assert_eq!((r.attempts, r.max_attempts), (1, 3));
        assert_eq!(r.result.unwrap().get(), "{\"a\": 1}");
        assert!(r.error.is_none());
        let missing = Value::Array(vec![Value::Nil; 7]);
        assert!(record("x", &missing).unwrap().is_none());
    }
}
