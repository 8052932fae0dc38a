//! The contract of durable storage, whatever engine runs it: jobs and their event logs
//! ([`Store`]), webhook endpoints and the delivery outbox ([`WebhookStore`]), and the
//! records they exchange. The engines implement it in [`crate::engine`]: the embedded one
//! fsyncs every acknowledgement; Redis is as durable as its persistence settings.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

/// A job's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// Completed with a result.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Canceled by a client.
    Canceled,
}

impl JobStatus {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// No further change is possible.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// A job as stored (without its payload).
#[derive(Clone, Debug)]
pub struct JobRecord {
    /// Opaque, unguessable id.
    pub id: String,
    /// Current state.
    pub status: JobStatus,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds of the last change.
    pub updated_at_ms: i64,
    /// Times a worker has claimed it.
    pub attempts: u32,
    /// Claims allowed before an expired lease or a retryable failure fails it for good.
    pub max_attempts: u32,
    /// The worker's result, once succeeded.
    pub result: Option<Box<RawValue>>,
    /// The failure, once failed.
    pub error: Option<Box<RawValue>>,
}

/// A job to store.
#[derive(Debug)]
pub struct NewJob {
    /// Its new id.
    pub id: String,
    /// The client's JSON payload (already validated).
    pub payload: Bytes,
    /// `Idempotency-Key` and a hash of the request, to return the first job on a retry.
    pub idempotency: Option<(String, i64)>,
    /// Claims allowed.
    pub max_attempts: u32,
    /// Unix milliseconds.
    pub now_ms: i64,
}

/// What a submit produced.
#[derive(Debug)]
pub struct Submitted {
    /// The stored job (the first one, on an idempotent retry).
    pub job: JobRecord,
    /// True when an earlier submit with the same key is returned.
    pub replayed: bool,
}

/// A job handed to a worker.
#[derive(Debug)]
pub struct Claimed {
    /// The job (now `running`).
    pub job: JobRecord,
    /// The client's payload.
    pub payload: Bytes,
    /// The lease token the worker must present.
    pub lease: String,
    /// When the lease runs out, unix milliseconds.
    pub lease_expires_at_ms: i64,
}

/// How a worker reports on its job.
#[derive(Debug)]
pub enum Report {
    /// `job.progress` with this data; extends the lease.
    Progress(Box<RawValue>),
    /// `job.completed` with this result.
    Complete(Box<RawValue>),
    /// `job.failed` with this error, requeued when `retry` and attempts remain.
    Fail {
        /// What went wrong.
        error: Box<RawValue>,
        /// Whether another attempt may be made.
        retry: bool,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such job.
    #[error("no such job")]
    NotFound,
    /// The lease is not the job's current one (expired, superseded, or the job ended).
    #[error("the lease is not current: the job is {0}")]
    StaleLease(&'static str),
    /// The job already ended.
    #[error("the job already ended ({0})")]
    Finished(&'static str),
    /// The idempotency key was used for a different request.
    #[error("Idempotency-Key was already used for a different job")]
    IdempotencyConflict,
    /// A limit was reached.
    #[error("{0}")]
    Limit(String),
    /// The store cannot be written or read.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Durable job storage.
pub trait Store: Send + Sync + 'static {
    /// Stores a new job (and its `job.queued` event), durably, before resolving.
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<Submitted, StoreError>>;
    /// Reads a job.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, StoreError>>;
    /// Hands the oldest queued job to a worker with a new lease.
    fn claim(
        &self,
        lease_ms: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<Claimed>, StoreError>>;
    /// Applies a worker's report under its lease.
    fn report(
        &self,
        id: String,
        lease: String,
        report: Report,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<JobRecord, StoreError>>;
    /// Cancels a queued or running job.
    fn cancel(&self, id: String, now_ms: i64) -> BoxFuture<'_, Result<JobRecord, StoreError>>;
    /// Requeues (or fails, past `max_attempts`) jobs whose lease ran out; returns how many
    /// were requeued.
    fn expire_leases(&self, now_ms: i64) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// Deletes finished jobs last changed before `jobs_before_ms` and finished webhook
    /// deliveries last changed before `deliveries_before_ms`; returns (jobs, deliveries)
    /// deleted. Works in bounded batches; call it periodically.
    fn prune(
        &self,
        jobs_before_ms: i64,
        deliveries_before_ms: i64,
    ) -> BoxFuture<'_, Result<(usize, usize), StoreError>>;
    /// Checks that the store answers (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Finishes pending writes and closes, waiting up to `deadline`.
    fn close(&self, deadline: std::time::Duration) -> BoxFuture<'_, ()>;
}

/// A registered webhook endpoint, as stored.
#[derive(Clone, Debug)]
pub struct EndpointRecord {
    /// `ep_...`
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Channel patterns.
    pub channels: Vec<String>,
    /// Event types (empty: all).
    pub types: Vec<String>,
    /// `whsec_...`
    pub secret: String,
    /// The secret before the last rotation, still signed with until `previous_secret_until_ms`.
    pub previous_secret: Option<String>,
    /// Unix ms.
    pub previous_secret_until_ms: Option<i64>,
    /// Deliveries are only sent to enabled endpoints (others keep theirs pending).
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Unix ms of the first failure since the last success.
    pub failing_since_ms: Option<i64>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub updated_at_ms: i64,
}

/// A delivery ready to be attempted, with what is needed to send it.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    /// `msg_...`, the `webhook-id` header (stable across attempts).
    pub id: String,
    /// Its endpoint.
    pub endpoint_id: String,
    /// The event envelope, exactly the bytes signed and sent.
    pub body: Bytes,
    /// Attempts made so far.
    pub attempts: u32,
    /// Endpoint URL.
    pub url: String,
    /// Endpoint secret.
    pub secret: String,
    /// Endpoint secret before rotation.
    pub previous_secret: Option<String>,
    /// Until when the previous secret signs too.
    pub previous_secret_until_ms: Option<i64>,
}

/// Where one enabled endpoint stands in the outbox, for the dispatcher's scan.
#[derive(Clone, Debug)]
pub struct OutboxHead {
    /// The endpoint.
    pub endpoint_id: String,
    /// Unix ms of its last change (URL, secret, enabled): deliveries read before it carry
    /// stale values.
    pub updated_at_ms: i64,
    /// It has a pending delivery due at the scan's `now_ms` (whether or not the dispatcher
    /// already holds it).
    pub has_due: bool,
    /// When its first pending delivery due after `now_ms` falls due.
    pub next_due_ms: Option<i64>,
}

/// The result of one attempt.
#[derive(Clone, Debug)]
pub struct AttemptOutcome {
    /// The delivery.
    pub delivery_id: String,
    /// Its endpoint.
    pub endpoint_id: String,
    /// Unix ms the attempt started.
    pub at_ms: i64,
    /// HTTP status, when one came back.
    pub status_code: Option<u16>,
    /// Milliseconds the attempt took.
    pub latency_ms: i64,
    /// What went wrong, when it failed.
    pub error: Option<String>,
    /// 2xx within the timeout.
    pub succeeded: bool,
    /// When to try again (`None` after a success or the last attempt).
    pub next_attempt_at_ms: Option<i64>,
    /// Disable the endpoint, for this reason (410 Gone, or failing too long).
    pub disable_endpoint: Option<String>,
}

/// A delivery with its attempt log, for the delivery log API.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `msg_...`
    pub id: String,
    /// The event's channel.
    pub channel: String,
    /// The event's offset.
    pub offset: u64,
    /// The event's type.
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Unix ms of the next attempt, while pending.
    pub next_attempt_at_ms: Option<i64>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub updated_at_ms: i64,
    /// Every attempt, oldest first.
    pub log: Vec<DeliveryAttempt>,
}

/// One logged attempt.
#[derive(Clone, Debug)]
pub struct DeliveryAttempt {
    /// 1-based attempt number.
    pub n: u32,
    /// Unix ms.
    pub at_ms: i64,
    /// HTTP status, when one came back.
    pub status_code: Option<u16>,
    /// Milliseconds.
    pub latency_ms: i64,
    /// What went wrong.
    pub error: Option<String>,
}

/// Durable webhook endpoints and the delivery outbox. Deliveries are recorded by the
/// engine, in the same atomic step as the event they deliver (see [`crate::engine`]).
pub trait WebhookStore: Send + Sync + 'static {
    /// Every endpoint.
    fn list_endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointRecord>, StoreError>>;
    /// One endpoint.
    fn get_endpoint<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<EndpointRecord>, StoreError>>;
    /// Creates (refusing past `max` endpoints) or replaces an endpoint, durably.
    fn put_endpoint(
        &self,
        endpoint: EndpointRecord,
        max: Option<usize>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Deletes an endpoint and its deliveries; false when it did not exist.
    fn delete_endpoint(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Every enabled endpoint, with whether it has pending deliveries due at `now_ms` and
    /// when its next one after that falls due. Cheap: two index seeks per endpoint.
    fn outbox_heads(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<OutboxHead>, StoreError>>;
    /// Up to `limit` of one enabled endpoint's deliveries due at `now_ms`, oldest first,
    /// leaving out `skip` (those the dispatcher already holds).
    fn due_for(
        &self,
        endpoint_id: String,
        now_ms: i64,
        limit: usize,
        skip: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<DueDelivery>, StoreError>>;
    /// Logs an attempt's outcome.
    fn record(&self, outcome: AttemptOutcome) -> BoxFuture<'_, Result<(), StoreError>>;
    /// An endpoint's newest deliveries with their attempts.
    fn deliveries<'a>(
        &'a self,
        endpoint_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StoreError>>;
    /// Makes a delivery due now.
    fn retry_delivery(
        &self,
        endpoint_id: String,
        delivery_id: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
}
