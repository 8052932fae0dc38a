//! Jobs on Redis (`engine = "redis://..."`), so N gateway nodes share one queue of jobs:
//! the same [`Store`] semantics as the embedded engine's, every state change one atomic
//! Lua script (`job_scripts`), which also appends the job's event and records the webhook
//! deliveries it owes.
//!
//! # Why sorted sets, not a stream with a consumer group
//! The embedded store's semantics are: claims take the job queued longest ago (a requeued
//! job goes to the back); a lease lasts the `lease_ms` *its claim* asked for, and each
//! progress report extends it by that much; an expired lease requeues the job with a
//! `job.queued` event (`reason: lease_expired`), or fails it on the last attempt; a
//! canceled job leaves the queue at once. A consumer group's pending list has one idle
//! threshold for everybody (`XAUTOCLAIM min-idle-time`), hands an expired entry straight to
//! another consumer (no requeue event, no `max_attempts` check) and cannot take an entry out
//! of the middle of the queue. So the queue is a sorted set scored by the (re)queue time
//! (ties: by id, which sorts by creation), running jobs sit in a lease sorted set scored by
//! their expiry, and finished jobs in a third one scored by their end time, for retention.
//!
//! Exactly-once claims: a node reads the head of the queue, then runs the claim script on
//! one id; the script removes the id from the queue and starts the job only if it is still
//! queued. Two nodes racing for the same head: one wins, the other's script answers `gone`
//! and it tries the next id. Lease expiry and pruning work the same way (read the index,
//! re-check in the script), so any node's sweeper may run them at any time.
//!
//! Every script appends the job's event to `jobs/{id}` in the hub's layout
//! (`HINCRBY meta last`, `XADD h`, `PUBLISH live`) inside the same atomic step, so a
//! `RedisHub` on any node serves the events in commit order, live and from history. Job
//! channels are never trimmed: their events go with the job when retention prunes it.
//!
//! The scripts touch global keys and a job's keys together, so they need a single Redis
//! (or Valkey) primary, not Redis Cluster.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use redis::Value;

use super::{
    RedisStore,
    job_scripts::{Common, Op},
    keys::{self, JobKeys, Topics},
    reply::{self, int, malformed, must_record, split},
    routes::{REROUTE_ATTEMPTS, Routes},
};
use crate::{
    ids::epoch as random_epoch,
    jobs::channel::job_channel,
    store::{Claimed, JobRecord, NewJob, Report, Store, StoreError, Submitted},
    time::{now_ms, now_rfc3339},
};

/// Queue heads read at once by a claim; a node that loses the race for one tries the next.
const CLAIM_PEEK: isize = 8;
/// Rounds of a claim (each reading the head again) before it answers "nothing queued".
const CLAIM_ROUNDS: usize = 64;
/// Ids read from an index at once by lease expiry and pruning (as the embedded store's
/// batches).
const BATCH: isize = 1000;
/// The error of a job whose lease ran out on its last attempt (as the embedded store's).
const LEASE_EXPIRED_ERROR: &str =
    r#"{"code":"lease_expired","message":"the worker's lease ran out on the last attempt"}"#;

/// A job's keys and the common script arguments for one operation.
struct OnJob {
    id: String,
    keys: JobKeys,
    time: String,
    now_ms: i64,
    idempotency: Option<String>,
}

impl OnJob {
    fn new(id: &str, now_ms: i64, topics: &Topics) -> Self {
        Self {
            id: id.to_owned(),
            keys: JobKeys::new(&job_channel(id), topics),
            time: now_rfc3339(),
            now_ms,
            idempotency: None,
        }
    }

    fn common(&self) -> Common<'_> {
        Common {
            id: &self.id,
            keys: &self.keys,
            new_epoch: random_epoch(),
            time: &self.time,
            now_ms: self.now_ms,
            idempotency: self.idempotency.as_deref(),
        }
    }
}

impl RedisStore {
    /// Runs `op` on one job with the webhook routes of the event it may append (every type
    /// its channel's endpoints take: the script picks by the event's type), and again with
    /// fresh routes if the endpoints changed since they were matched.
    async fn run(
        &self,
        op: Op,
        on: &OnJob,
        extra: &[&[u8]],
    ) -> Result<(String, Vec<Value>), StoreError> {
        for _ in 0..REROUTE_ATTEMPTS {
            let routes = match op {
                Op::Prune => Routes::none(),
                _ => self.routes.routes(&on.keys.channel, None, on.now_ms),
            };
            let mut conn = self.conn.clone();
            let reply = self
                .timed(
                    self.scripts
                        .run(&mut conn, op, &on.common(), &routes, extra),
                )
                .await?;
            let (kind, rest) = split(reply)?;
            if kind != "reroute" {
                return Ok((kind, rest));
            }
            self.reload_routes().await?;
        }
        Err(StoreError::Unavailable(
            "the webhook endpoints kept changing while the job was written; retry".into(),
        ))
    }

    async fn read(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let keys = JobKeys::new(&job_channel(id), &self.topics);
        let mut conn = self.conn.clone();
        let fields: Value = self
            .timed(
                redis::cmd("HMGET")
                    .arg(&keys.job)
                    .arg(&[
                        "status",
                        "created_at",
                        "updated_at",
                        "attempts",
                        "max_attempts",
                        "result",
                        "error",
                    ])
                    .query_async(&mut conn),
            )
            .await?;
        reply::record(id, &fields)
    }

    async fn submit_job(&self, job: NewJob) -> Result<Submitted, StoreError> {
        let mut on = OnJob::new(&job.id, job.now_ms, &self.topics);
        on.idempotency = job
            .idempotency
            .as_ref()
            .map(|(key, _)| keys::job_idempotency(key));
        let hash = job.idempotency.as_ref().map_or(0, |(_, h)| *h).to_string();
        let max_attempts = job.max_attempts.to_string();
        let (kind, rest) = self
            .run(
                Op::Submit,
                &on,
                &[&job.payload, max_attempts.as_bytes(), hash.as_bytes()],
            )
            .await?;
        match kind.as_str() {
            "ok" => Ok(Submitted {
                job: must_record(&job.id, rest.first())?,
                replayed: false,
            }),
            "seen" => {
                let first = rest
                    .first()
                    .and_then(reply::text)
                    .ok_or_else(|| malformed("seen"))?;
                // The key and its job are created and pruned together: it is there.
                let job = self
                    .read(&first)
                    .await?
                    .ok_or_else(|| StoreError::Unavailable("the first job vanished".into()))?;
                Ok(Submitted {
                    job,
                    replayed: true,
                })
            }
            "conflict" => Err(StoreError::IdempotencyConflict),
            _ => Err(malformed("submit")),
        }
    }

    async fn claim_job(&self, lease_ms: u64, now_ms: i64) -> Result<Option<Claimed>, StoreError> {
        let lease = crate::ids::token();
        let lease_ms_arg = lease_ms.to_string();
        for _ in 0..CLAIM_ROUNDS {
            let mut conn = self.conn.clone();
            let heads: Vec<String> = self
                .timed(
                    redis::cmd("ZRANGE")
                        .arg(keys::queue())
                        .arg(0)
                        .arg(CLAIM_PEEK - 1)
                        .query_async(&mut conn),
                )
                .await?;
            if heads.is_empty() {
                return Ok(None);
            }
            for id in heads {
                let on = OnJob::new(&id, now_ms, &self.topics);
                let (kind, rest) = self
                    .run(Op::Claim, &on, &[lease.as_bytes(), lease_ms_arg.as_bytes()])
                    .await?;
                match kind.as_str() {
                    // Another node took it (or it was canceled): the next one.
                    "gone" => continue,
                    "ok" => {
                        let job = must_record(&id, rest.first())?;
                        let payload = rest
                            .get(1)
                            .and_then(reply::bytes)
                            .ok_or_else(|| malformed("payload"))?;
                        return Ok(Some(Claimed {
                            job,
                            payload: Bytes::from(payload),
                            lease,
                            lease_expires_at_ms: int(rest.get(2), "lease expiry")?,
                        }));
                    }
                    _ => return Err(malformed("claim")),
                }
            }
        }
        Ok(None)
    }

    async fn report_job(
        &self,
        id: String,
        lease: String,
        report: Report,
        now_ms: i64,
    ) -> Result<JobRecord, StoreError> {
        let (kind, data) = match &report {
            Report::Progress(d) => ("progress", d),
            Report::Complete(r) => ("complete", r),
            Report::Fail { error, retry: true } => ("retry", error),
            Report::Fail { error, .. } => ("fail", error),
        };
        let on = OnJob::new(&id, now_ms, &self.topics);
        let (answer, rest) = self
            .run(
                Op::Report,
                &on,
                &[lease.as_bytes(), kind.as_bytes(), data.get().as_bytes()],
            )
            .await?;
        match answer.as_str() {
            "ok" => must_record(&id, rest.first()),
            "not_found" => Err(StoreError::NotFound),
            "stale" => Err(StoreError::StaleLease(
                reply::status(rest.first().ok_or_else(|| malformed("stale"))?)?.as_str(),
            )),
            _ => Err(malformed("report")),
        }
    }

    async fn cancel_job(&self, id: String, now_ms: i64) -> Result<JobRecord, StoreError> {
        let on = OnJob::new(&id, now_ms, &self.topics);
        let (answer, rest) = self.run(Op::Cancel, &on, &[]).await?;
        match answer.as_str() {
            "ok" => must_record(&id, rest.first()),
            "not_found" => Err(StoreError::NotFound),
            "finished" => Err(StoreError::Finished(
                reply::status(rest.first().ok_or_else(|| malformed("finished"))?)?.as_str(),
            )),
            _ => Err(malformed("cancel")),
        }
    }

    async fn expire(&self, now_ms: i64) -> Result<usize, StoreError> {
        let expired = self.ids(keys::leases(), now_ms.to_string(), BATCH).await?;
        let mut requeued = 0;
        for id in expired {
            let on = OnJob::new(&id, now_ms, &self.topics);
            let (answer, _) = self
                .run(Op::Expire, &on, &[LEASE_EXPIRED_ERROR.as_bytes()])
                .await?;
            match answer.as_str() {
                "requeued" => requeued += 1,
                "failed" | "skip" => {}
                _ => return Err(malformed("expire")),
            }
        }
        Ok(requeued)
    }

    async fn prune_jobs(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut deleted = 0;
        loop {
            let ids = self
                .ids(keys::ended(), format!("({before_ms}"), BATCH)
                .await?;
            let more = ids.len() == BATCH as usize;
            let mut progressed = false;
            for id in ids {
                let mut on = OnJob::new(&id, now_ms(), &self.topics);
                let mut conn = self.conn.clone();
                on.idempotency = self
                    .timed(
                        redis::cmd("HGET")
                            .arg(&on.keys.job)
                            .arg("idempotency_key")
                            .query_async::<Option<String>>(&mut conn),
                    )
                    .await?;
                let before = before_ms.to_string();
                let (answer, _) = self.run(Op::Prune, &on, &[before.as_bytes()]).await?;
                match answer.as_str() {
                    "deleted" => {
                        deleted += 1;
                        progressed = true;
                    }
                    // Changed since it was read; the next round sees it as it is now.
                    "kept" | "raced" => {}
                    _ => return Err(malformed("prune")),
                }
            }
            if !more || !progressed {
                return Ok(deleted);
            }
        }
    }
}

impl Store for RedisStore {
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<Submitted, StoreError>> {
        self.submit_job(job).boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, StoreError>> {
        self.read(id).boxed()
    }

    fn claim(
        &self,
        lease_ms: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<Claimed>, StoreError>> {
        self.claim_job(lease_ms, now_ms).boxed()
    }

    fn report(
        &self,
        id: String,
        lease: String,
        report: Report,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<JobRecord, StoreError>> {
        self.report_job(id, lease, report, now_ms).boxed()
    }

    fn cancel(&self, id: String, now_ms: i64) -> BoxFuture<'_, Result<JobRecord, StoreError>> {
        self.cancel_job(id, now_ms).boxed()
    }

    fn expire_leases(&self, now_ms: i64) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.expire(now_ms).boxed()
    }

    fn prune(
        &self,
        jobs_before_ms: i64,
        deliveries_before_ms: i64,
    ) -> BoxFuture<'_, Result<(usize, usize), StoreError>> {
        async move {
            let jobs = self.prune_jobs(jobs_before_ms).await?;
            let deliveries = self.prune_deliveries(deliveries_before_ms).await?;
            Ok((jobs, deliveries))
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut conn = self.conn.clone();
            self.timed(redis::cmd("PING").query_async::<String>(&mut conn))
                .await
                .map(drop)
        }
        .boxed()
    }

    /// Nothing to flush (every operation is answered only after Redis applied it), but the
    /// webhook deliveries this node's dispatcher still held (queued, never started, or
    /// attempts cut off by the grace period) are handed back, and the other nodes woken:
    /// otherwise they would wait out `delivery_lease` after every rolling restart.
    fn close(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        async move {
            let release = async {
                let (_, endpoints) = self.list_all_endpoints().await?;
                for e in endpoints {
                    // Settles this node's leases; holding nothing, it hands them all back.
                    self.due(e.id, now_ms(), 0, Vec::new()).await?;
                }
                let mut conn = self.conn.clone();
                self.timed(
                    redis::cmd("PUBLISH")
                        .arg(self.topics.signals())
                        .arg("outbox")
                        .query_async::<i64>(&mut conn),
                )
                .await?;
                Ok::<_, StoreError>(())
            };
            match tokio::time::timeout(deadline.max(Duration::from_secs(1)), release).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot hand back webhook delivery leases; other nodes send them once the leases run out"),
                Err(_) => tracing::warn!("handing back webhook delivery leases timed out; other nodes send them once the leases run out"),
            }
        }
        .boxed()
    }
}
