//! The jobs service: submit, claim (with a wait), report, cancel and read jobs over a
//! [`Store`], plus the lease sweeper and waiting for a job's next status change.

pub mod channel;
pub mod inflight;
#[cfg(test)]
mod testing;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use switchyard_transports::hub::{Hub, Received, StartFrom, new_pair};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    config::JobsConfig,
    ids,
    store::{Claimed, JobRecord, JobStatus, NewJob, Report, Store, StoreError, Submitted},
    // The dispatcher's clock seam, shared rather than written twice.
    time::WallClock,
    time::now_ms,
};
use channel::job_channel;
use inflight::{Inflight, Reservation, Sender};

/// Longest a received chunk of a job body waits for room under `jobs.max_inflight_bytes`.
const ROOM_WAIT: Duration = Duration::from_secs(10);

/// How often expired leases are looked for.
const LEASE_SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// Jobs over a store, with workers waiting for work.
pub struct Jobs {
    store: Arc<dyn Store>,
    hub: Arc<dyn Hub>,
    config: JobsConfig,
    /// Woken when a job becomes claimable (submitted or requeued), here or, with the
    /// Redis engine, on another node.
    claimable: Arc<Notify>,
    /// Bounds payload bytes held in memory by submits in progress.
    inflight: Arc<Inflight>,
    /// Where `now_ms` arguments to the store come from: [`now_ms`] in production.
    clock: WallClock,
}

/// FNV-1a: a stable hash of a request (std's hasher may change between Rust versions, and
/// this one is stored).
fn request_hash(bytes: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

impl Jobs {
    /// The service over `store`, whose job events reach `hub`; claims wait on `claimable`,
    /// which fires when a job may have become claimable (on Redis: on any node).
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<dyn Hub>,
        config: JobsConfig,
        claimable: Arc<Notify>,
    ) -> Self {
        Self::with_clock(store, hub, config, claimable, Arc::new(now_ms))
    }

    /// [`Self::new`], reading the wall clock (the `now_ms` it gives the store) from `clock`
    /// (tests: a clock that follows paused Tokio time).
    pub fn with_clock(
        store: Arc<dyn Store>,
        hub: Arc<dyn Hub>,
        config: JobsConfig,
        claimable: Arc<Notify>,
        clock: WallClock,
    ) -> Self {
        let inflight = Inflight::new(
            config.max_inflight_bytes,
            config.max_inflight_bytes_per_client,
            ROOM_WAIT,
        );
        Self {
            store,
            hub,
            config,
            claimable,
            inflight,
            clock,
        }
    }

    fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// The configuration.
    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// Job body bytes held by submits in progress.
    pub fn receiving_bytes(&self) -> usize {
        self.inflight.held_bytes()
    }

    /// Room for one job body from `sender`, taken as its bytes arrive (see [`inflight`]).
    pub fn reservation(&self, sender: Sender) -> Reservation {
        self.inflight.reservation(sender)
    }

    /// Stores a job durably; resolves once it is fsync'd.
    pub async fn submit(
        &self,
        payload: Bytes,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, StoreError> {
        let idempotency = idempotency_key.map(|k| (k, request_hash(&payload)));
        let submitted = self
            .store
            .submit(NewJob {
                id: ids::job_id(self.now_ms()),
                payload,
                idempotency,
                max_attempts: self.config.max_attempts,
                now_ms: self.now_ms(),
            })
            .await?;
        if !submitted.replayed {
            self.claimable.notify_waiters();
        }
        Ok(submitted)
    }

    /// Reads a job.
    pub async fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.store.get(id).await
    }

    /// Claims the oldest queued job, waiting up to `wait` for one to arrive.
    pub async fn claim(
        &self,
        wait: Duration,
        lease_ms: u64,
        shutdown: &CancellationToken,
    ) -> Result<Option<Claimed>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a job queued in between still wakes us.
            let notified = self.claimable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(claimed) = self.store.claim(lease_ms, self.now_ms()).await? {
                return Ok(Some(claimed));
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(None),
                () = shutdown.cancelled() => return Ok(None),
            }
        }
    }

    /// Applies a worker's report.
    pub async fn report(
        &self,
        id: String,
        lease: String,
        report: Report,
    ) -> Result<JobRecord, StoreError> {
        let job = self.store.report(id, lease, report, self.now_ms()).await?;
        if job.status == JobStatus::Queued {
            self.claimable.notify_waiters();
        }
        Ok(job)
    }

    /// Cancels a queued or running job.
    pub async fn cancel(&self, id: String) -> Result<JobRecord, StoreError> {
        self.store.cancel(id, self.now_ms()).await
    }

    /// Reads a job, first waiting up to `wait` for its status to change (progress reports
    /// do not count). Returns `None` for an unknown job.
    ///
    /// With `known`, the status the client last saw, it answers at once when the job's
    /// status already differs, so no change between two polls is missed.
    pub async fn get_after_change(
        &self,
        id: &str,
        wait: Duration,
        known: Option<JobStatus>,
        shutdown: &CancellationToken,
    ) -> Result<Option<JobRecord>, StoreError> {
        if wait.is_zero() {
            return self.get(id).await;
        }
        // Subscribe first, then read: a change in between is then in the inbox.
        let (sink, mut inbox) = new_pair(64, None);
        let channel = job_channel(id);
        self.hub
            .subscribe(&channel, StartFrom::Now, &sink)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let _unsubscribe = Unsubscribe {
            hub: &*self.hub,
            channel: &channel,
            sink_id: sink.id(),
        };
        let Some(job) = self.get(id).await? else {
            return Ok(None);
        };
        if job.status.is_terminal() || known.is_some_and(|k| k != job.status) {
            return Ok(Some(job));
        }
        let changed = async {
            loop {
                match inbox.recv().await {
                    Received::Event(e) if e.event_type() == "job.progress" => continue,
                    _ => return,
                }
            }
        };
        tokio::select! {
            () = changed => self.get(id).await,
            // Read again, to answer with the job as it now is: progress reports may have
            // moved its `updated_at`.
            () = tokio::time::sleep(wait) => self.get(id).await,
            () = shutdown.cancelled() => Ok(Some(job)),
        }
    }

    /// Requeues or fails jobs whose lease ran out, until `shutdown`.
    pub async fn sweep_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(LEASE_SWEEP_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => match self.store.expire_leases(self.now_ms()).await {
                    Ok(0) => {}
                    Ok(_) => self.claimable.notify_waiters(),
                    Err(e) => tracing::warn!(error = %e, "cannot expire job leases"),
                },
            }
        }
    }
}

/// Deletes finished jobs and webhook deliveries past their retention, until `shutdown`.
pub async fn prune_periodically(
    store: Arc<dyn Store>,
    job_retention: Duration,
    delivery_retention: Duration,
    shutdown: CancellationToken,
) {
    prune_on_clock(
        store,
        job_retention,
        delivery_retention,
        Arc::new(now_ms),
        shutdown,
    )
    .await;
}

/// [`prune_periodically`], with cut-offs taken from `clock` (tests: paused Tokio time).
async fn prune_on_clock(
    store: Arc<dyn Store>,
    job_retention: Duration,
    delivery_retention: Duration,
    clock: WallClock,
    shutdown: CancellationToken,
) {
    // Often enough that nothing outlives its retention by much, at most once a minute.
    let every = (job_retention.min(delivery_retention) / 2)
        .clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let now = clock();
                let before = |d: Duration| now - d.as_millis() as i64;
                match store.prune(before(job_retention), before(delivery_retention)).await {
                    Ok((0, 0)) => {}
                    Ok((jobs, deliveries)) => tracing::info!(jobs, deliveries, "pruned past retention"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune past retention"),
                }
            }
        }
    }
}

struct Unsubscribe<'a> {
    hub: &'a dyn Hub,
    channel: &'a switchyard_protocol::ChannelName,
    sink_id: u64,
}

impl Drop for Unsubscribe<'_> {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.channel, self.sink_id);
    }
}

#[cfg(test)]
mod tests;
