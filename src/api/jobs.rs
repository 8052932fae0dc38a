//! The jobs API: `POST /v1/jobs`, `GET`/`DELETE /v1/jobs/{id}`, and the worker API
//! (`claim`, `progress`, `complete`, `fail`). Handlers answer `Result<Reply, ApiError>`; a
//! store's `not_found` is named after the job here.

use std::{sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchyard_protocol::ErrorCode;
use switchyard_transports::{
    http::{Body, empty, json_bytes},
    params::form_urlencoded_pairs,
};

use super::{
    AppState,
    body::{
        ApiBody, ChunkRoom, body_timeout, check_json_content_type, content_length, parse_object,
        read_json, read_limited, refuse,
    },
    error::{ApiError, ApiResult, NotFoundAs},
    headers::idempotency_key,
    router::Reply,
};
use crate::{
    jobs::{
        channel::job_channel,
        inflight::{NoRoom, Reservation, Sender},
    },
    store::{Claimed, JobRecord, JobStatus, Report},
    time::rfc3339,
};
/// Longest `?wait=` on `GET /v1/jobs/{id}` and `wait_ms` on a claim.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest worker report body (progress data, result, error); results above this belong in
/// your own storage, with a link in the result.
const MAX_REPORT_BYTES: usize = 1024 * 1024;

#[derive(Serialize)]
struct JobView<'a> {
    id: &'a str,
    status: &'static str,
    channel: switchyard_protocol::ChannelName,
    created_at: String,
    updated_at: String,
    attempts: u32,
    max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RawValue>,
}

impl<'a> From<&'a JobRecord> for JobView<'a> {
    fn from(job: &'a JobRecord) -> Self {
        Self {
            id: &job.id,
            status: job.status.as_str(),
            channel: job_channel(&job.id),
            created_at: rfc3339(job.created_at_ms),
            updated_at: rfc3339(job.updated_at_ms),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            result: job.result.as_deref(),
            error: job.error.as_deref(),
        }
    }
}

fn job_reply(status: StatusCode, job: &JobRecord) -> Reply {
    json_bytes(
        status,
        serde_json::to_vec(&JobView::from(job)).expect("infallible"),
    )
}

/// The `not_found` message of job `id`.
fn no_job(id: &str) -> impl FnOnce() -> String + '_ {
    move || format!("no job {id:?}")
}

/// `POST /v1/jobs`: stores the JSON body durably, then answers 202.
///
/// # Errors
/// A bad `Idempotency-Key` or body; the store's refusal.
pub async fn submit(state: Arc<AppState>, req: Request<ApiBody>) -> ApiResult {
    let (parts, body) = req.into_parts();
    let declared = content_length(&parts);
    let key = match idempotency_key(&parts.headers) {
        Ok(key) => key.map(str::to_owned),
        Err(e) => return Err(refuse(body, declared, e.into()).await),
    };
    if let Err(e) = check_json_content_type(&parts) {
        return Err(refuse(body, declared, e.into()).await);
    }
    let max = state.config.limits.max_job_bytes;
    // Memory for the payload is taken as it arrives, within the server-wide bound and the
    // sender's share (see `jobs::inflight`); held until the job is stored.
    let sender = parts
        .extensions
        .get::<Sender>()
        .copied()
        .unwrap_or(Sender::Unshared);
    let mut room = JobRoom(state.jobs.reservation(sender));
    let payload = read_limited(body, declared, max, body_timeout(&parts), &mut room).await?;
    // JSON is UTF-8 (RFC 8259), and serde skips the strings it ignores without checking
    // them: a job that workers could not decode would be accepted otherwise.
    let text = std::str::from_utf8(&payload).map_err(|e| {
        ApiError::new(
            ErrorCode::BadJson,
            format!(
                "body is not valid JSON: not UTF-8 at byte {}",
                e.valid_up_to()
            ),
        )
    })?;
    super::json_limits::check(text.as_bytes())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)?;
    let submitted = state.jobs.submit(payload, key).await?;
    let job = &submitted.job;
    let id = &job.id;
    let channel = job_channel(id);
    let body = serde_json::json!({
                "id": id,
                "status": job.status.as_str(),
                "channel": channel,
        "token": state.auth.job_tokens.issue(id),
        "created_at": rfc3339(job.created_at_ms),
        "links": {
            "self": format!("/v1/jobs/{id}"),
            "ws": "/v1/ws",
            "sse": format!("/v1/sse?channel={channel}&after=0"),
            "stream": format!("/v1/stream?channel={channel}&after=0"),
            "poll": format!("/v1/poll?channel={channel}&after=0"),
        },
    });
    let mut res = json_bytes(
        StatusCode::ACCEPTED,
        serde_json::to_vec(&body).expect("infallible"),
    );
    let h = res.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        h.insert(header::LOCATION, location);
    }
    if submitted.replayed {
        h.insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

/// A job body's [`Reservation`], refusing as the API answers: 429 past the sender's share,
/// 503 when the server-wide bound stays full.
struct JobRoom(Reservation);

impl ChunkRoom for JobRoom {
    async fn take(&mut self, n: usize) -> Result<(), ApiError> {
        self.0.grow(n).await.map_err(|refused| {
            let code = match refused {
                NoRoom::Share(..) => ErrorCode::RateLimited,
                NoRoom::Full(_) => ErrorCode::Unavailable,
            };
            ApiError::new(code, refused.to_string())
                .with_header(header::RETRY_AFTER, HeaderValue::from(1))
        })
    }
}

/// Whether a read of a job may hold until the job changes (`?wait=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// `GET`: wait as asked.
    AsAsked,
    /// `HEAD`: check `wait` like `GET`, then answer at once (nobody reads the job).
    Never,
}

/// `GET /v1/jobs/{id}?wait=S&status=<last seen>`.
///
/// # Errors
/// A bad `status` or `wait`; `not_found`; the store's refusal.
pub async fn get(state: Arc<AppState>, id: &str, query: Option<&str>, hold: Hold) -> ApiResult {
    let mut wait = Duration::ZERO;
    let mut known = None;
    for (k, v) in form_urlencoded_pairs(query.unwrap_or("")) {
        if k == "status" {
            match JobStatus::parse(&v) {
                Some(status) => known = Some(status),
                None => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameter,
                        "`status` must be queued, running, succeeded, failed or canceled",
                    ));
                }
            }
        }
        if k == "wait" {
            match v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_WAIT.as_secs_f64())
            {
                Some(s) => wait = Duration::from_secs_f64(s),
                None => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameter,
                        "`wait` must be a number of seconds from 0 to 60",
                    ));
                }
            }
        }
    }
    if hold == Hold::Never {
        wait = Duration::ZERO;
    }
    let job = state
        .jobs
        .get_after_change(id, wait, known, &state.shutdown)
        .await
        .not_found_as(no_job(id))?
        .ok_or_else(|| ApiError::not_found(no_job(id)()))?;
    Ok(job_reply(StatusCode::OK, &job))
}

/// `DELETE /v1/jobs/{id}`: cancels a queued or running job.
///
/// # Errors
/// `not_found`, `conflict` (the job already ended), or the store's refusal.
pub async fn cancel(state: Arc<AppState>, id: &str) -> ApiResult {
    let job = state
        .jobs
        .cancel(id.to_owned())
        .await
        .not_found_as(no_job(id))?;
    Ok(job_reply(StatusCode::OK, &job))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClaimRequest {
    #[serde(default)]
    wait_ms: Millis,
    lease_ms: Option<Millis>,
}

/// A whole number of milliseconds: a JSON number without a fractional part, written `1500`
/// or `1500.0` alike (JSON does not tell integers from floats, and some encoders write
/// every number with a fraction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Millis(u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected, Visitor};

        struct Whole;

        impl Visitor<'_> for Whole {
            type Value = Millis;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number of milliseconds")
            }

            fn visit_u64<E: Error>(self, v: u64) -> Result<Millis, E> {
                Ok(Millis(v))
            }

            fn visit_i64<E: Error>(self, v: i64) -> Result<Millis, E> {
                u64::try_from(v)
                    .map(Millis)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }

            fn visit_f64<E: Error>(self, v: f64) -> Result<Millis, E> {
                // 2^64 is exactly representable; every whole f64 below it fits a u64.
                if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                    Ok(Millis(v as u64))
                } else {
                    Err(E::invalid_value(Unexpected::Float(v), &self))
                }
            }
        }

        d.deserialize_any(Whole)
    }
}

/// `POST /v1/jobs/claim`: 200 with a job, its payload and a lease; 204 when none came in time.
///
/// # Errors
/// A bad body, `wait_ms` or `lease_ms`; the store's refusal.
pub async fn claim(state: Arc<AppState>, req: Request<ApiBody>) -> ApiResult {
    let (_, body) = read_json(req, 64 * 1024).await?;
    // The body is optional: none at all means no options. Whitespace is not "none": it is
    // a body, and not JSON (`parse_object` refuses it).
    let request: ClaimRequest = if body.is_empty() {
        ClaimRequest::default()
    } else {
        parse_object(&body)?
    };
    let cfg = state.jobs.config();
    let wait_ms = request.wait_ms.0;
    if wait_ms > MAX_WAIT.as_millis() as u64 {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "`wait_ms` must be at most 60000",
        ));
    }
    let lease_ms = request.lease_ms.map_or(cfg.default_lease_ms, |m| m.0);
    if !(100..=cfg.max_lease_ms).contains(&lease_ms) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("`lease_ms` must be from 100 to {}", cfg.max_lease_ms),
        ));
    }
    let claimed = state
        .jobs
        .claim(Duration::from_millis(wait_ms), lease_ms, &state.shutdown)
        .await?;
    Ok(match claimed {
        Some(claimed) => claim_reply(&claimed),
        None => {
            let mut res = Response::new(empty());
            *res.status_mut() = StatusCode::NO_CONTENT;
            res
        }
    })
}

/// `{"job": {..., "payload": <as submitted>}, "lease", "lease_expires_at"}`, with the
/// payload's bytes spliced in rather than parsed and written again.
fn claim_reply(claimed: &Claimed) -> Response<Body> {
    let job = serde_json::to_vec(&JobView::from(&claimed.job)).expect("infallible");
    let tail = serde_json::json!({
        "lease": claimed.lease,
        "lease_expires_at": rfc3339(claimed.lease_expires_at_ms),
    })
    .to_string();
    let mut out = BytesMut::with_capacity(job.len() + claimed.payload.len() + tail.len() + 32);
    out.put_slice(b"{\"job\":");
    out.put_slice(&job[..job.len() - 1]);
    out.put_slice(b",\"payload\":");
    out.put_slice(&claimed.payload);
    out.put_slice(b"},");
    out.put_slice(&tail.as_bytes()[1..]);
    json_bytes(StatusCode::OK, out.freeze())
}

/// Which worker report a path names.
#[derive(Clone, Copy, Debug)]
pub enum ReportKind {
    /// `/progress`
    Progress,
    /// `/complete`
    Complete,
    /// `/fail`
    Fail,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    lease: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<Box<RawValue>>,
    #[serde(default)]
    retry: bool,
}

/// `POST /v1/jobs/{id}/{progress,complete,fail}` under the worker's lease.
///
/// # Errors
/// A bad body; `not_found`; `conflict` (a lease that is not current, a job that ended);
/// the store's refusal.
pub async fn report(
    state: Arc<AppState>,
    id: &str,
    kind: ReportKind,
    req: Request<ApiBody>,
) -> ApiResult {
    let (_, body): (_, Bytes) = read_json(req, MAX_REPORT_BYTES).await?;
    let body: ReportBody = parse_object(&body)?;
    let null = || RawValue::from_string("null".into()).expect("valid JSON");
    let report = match kind {
        ReportKind::Progress => Report::Progress(body.data.unwrap_or_else(null)),
        ReportKind::Complete => Report::Complete(body.result.unwrap_or_else(null)),
        ReportKind::Fail => Report::Fail {
            error: body.error.unwrap_or_else(null),
            retry: body.retry,
        },
    };
    let job = state
        .jobs
        .report(id.to_owned(), body.lease, report)
        .await
        .not_found_as(no_job(id))?;
    Ok(job_reply(StatusCode::OK, &job))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(body: &str) -> Result<ClaimRequest, serde_json::Error> {
        serde_json::from_str(body)
    }

    #[test]
    fn claim_millis_are_whole_numbers_however_written() {
        let c = claim(r#"{"wait_ms": 1500.0, "lease_ms": 2e3}"#).unwrap();
        assert_eq!((c.wait_ms, c.lease_ms), (Millis(1500), Some(Millis(2000))));
        let c = claim(r#"{"lease_ms": null}"#).unwrap();
        assert_eq!((c.wait_ms, c.lease_ms), (Millis(0), None));
        for bad in [
            r#"{"wait_ms": 1.5}"#,
            r#"{"wait_ms": -1}"#,
            r#"{"wait_ms": null}"#,
            r#"{"wait_ms": "5"}"#,
            r#"{"lease_ms": 1e20}"#,
        ] {
            assert!(claim(bad).is_err(), "{bad} accepted");
        }
    }
}
