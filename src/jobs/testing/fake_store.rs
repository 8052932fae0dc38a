//! An in-memory [`Store`] for the jobs service's tests: jobs in a map and a FIFO queue, with
//! the embedded engine's transitions (`engine/embedded/jobs.rs`), every call recorded with
//! its `now_ms`, scripted `expire_leases` results, and hooks to act in the middle of a call.
//! It publishes no events: a test publishes on the hub what it wants the service to see.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{FutureExt, future::BoxFuture};

use crate::store::{Claimed, JobRecord, JobStatus, NewJob, Report, Store, StoreError, Submitted};

/// A call the store received, with its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Submit {
        id: String,
        now_ms: i64,
    },
    Get {
        id: String,
    },
    Claim {
        lease_ms: u64,
        now_ms: i64,
    },
    Report {
        id: String,
        lease: String,
        /// `progress`, `complete` or `fail`.
        kind: &'static str,
        now_ms: i64,
    },
    Cancel {
        id: String,
        now_ms: i64,
    },
    ExpireLeases {
        now_ms: i64,
    },
    Prune {
        jobs_before_ms: i64,
        deliveries_before_ms: i64,
    },
}

/// What the next `expire_leases` call does (with none scripted: nothing, `Ok(0)`).
#[derive(Debug)]
pub(crate) enum Expiry {
    /// Puts these running jobs back at the end of the queue and returns how many.
    Requeue(Vec<String>),
    /// Returns this count and changes nothing (jobs requeued by another node, say).
    Count(usize),
    /// Fails with [`StoreError::Unavailable`].
    Fail,
}

type Hook = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
struct Row {
    job: JobRecord,
    payload: Bytes,
    lease: Option<String>,
    idempotency: Option<(String, i64)>,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<String, Row>,
    /// Queued job ids, oldest first: claims take the front.
    queue: VecDeque<String>,
    calls: Vec<Call>,
    expiries: VecDeque<Expiry>,
    prune_failures: usize,
    leases_made: u64,
    before_next_get: Option<Hook>,
    after_next_claim: Option<Hook>,
}

/// Jobs in memory; see the module docs.
#[derive(Default)]
pub(crate) struct FakeStore {
    state: Mutex<State>,
}

impl FakeStore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Stores a queued job directly, as another node's submit would: nobody is woken.
    pub(crate) fn insert_queued(&self, id: &str, now_ms: i64) {
        let mut state = self.state();
        state.jobs.insert(
            id.to_owned(),
            Row {
                job: record(id, now_ms, 3),
                payload: Bytes::from_static(b"{}"),
                lease: None,
                idempotency: None,
            },
        );
        state.queue.push_back(id.to_owned());
    }

    /// Sets a job's status directly (as another node's report would), leaving the queue
    /// and lease as they are unless the job leaves `queued`.
    pub(crate) fn set_status(&self, id: &str, status: JobStatus, now_ms: i64) {
        let mut state = self.state();
        let row = state.jobs.get_mut(id).expect("a stored job");
        row.job.status = status;
        row.job.updated_at_ms = now_ms;
        if status != JobStatus::Queued {
            state.queue.retain(|q| q != id);
        }
    }

    /// The job as stored now.
    pub(crate) fn job(&self, id: &str) -> JobRecord {
        self.state().jobs[id].job.clone()
    }

    /// Every call so far, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The `now_ms` of every claim so far.
    pub(crate) fn claims(&self) -> Vec<i64> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Claim { now_ms, .. } => Some(now_ms),
                _ => None,
            })
            .collect()
    }

    /// The `now_ms` of every `expire_leases` so far.
    pub(crate) fn expiries(&self) -> Vec<i64> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::ExpireLeases { now_ms } => Some(now_ms),
                _ => None,
            })
            .collect()
    }

    /// The cut-offs `(jobs_before_ms, deliveries_before_ms)` of every prune so far.
    pub(crate) fn prunes(&self) -> Vec<(i64, i64)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Prune {
                    jobs_before_ms,
                    deliveries_before_ms,
                } => Some((jobs_before_ms, deliveries_before_ms)),
                _ => None,
            })
            .collect()
    }

    /// Scripts the next `expire_leases` calls, in order.
    pub(crate) fn script_expiries(&self, expiries: impl IntoIterator<Item = Expiry>) {
        self.state().expiries.extend(expiries);
    }

    /// Makes the next `n` prunes fail.
    pub(crate) fn fail_prunes(&self, n: usize) {
        self.state().prune_failures = n;
    }

    /// Runs `hook` at the start of the next `get`, before the job is read.
    pub(crate) fn before_next_get(&self, hook: impl FnOnce() + Send + 'static) {
        self.state().before_next_get = Some(Box::new(hook));
    }

    /// Runs `hook` at the end of the next `claim`, after the queue was looked at.
    pub(crate) fn after_next_claim(&self, hook: impl FnOnce() + Send + 'static) {
        self.state().after_next_claim = Some(Box::new(hook));
    }

    fn claim_now(&self, lease_ms: u64, now_ms: i64) -> Option<Claimed> {
        let mut state = self.state();
        state.calls.push(Call::Claim { lease_ms, now_ms });
        let id = state.queue.pop_front()?;
        state.leases_made += 1;
        let lease = format!("lease-{}", state.leases_made);
        let row = state.jobs.get_mut(&id).expect("queued jobs are stored");
        row.job.status = JobStatus::Running;
        row.job.attempts += 1;
        row.job.updated_at_ms = now_ms;
        row.lease = Some(lease.clone());
        Some(Claimed {
            job: row.job.clone(),
            payload: row.payload.clone(),
            lease,
            lease_expires_at_ms: now_ms + lease_ms as i64,
        })
    }

    fn report_now(
        &self,
        id: String,
        lease: String,
        report: Report,
        now_ms: i64,
    ) -> Result<JobRecord, StoreError> {
        let mut state = self.state();
        let kind = match report {
            Report::Progress(_) => "progress",
            Report::Complete(_) => "complete",
            Report::Fail { .. } => "fail",
        };
        state.calls.push(Call::Report {
            id: id.clone(),
            lease: lease.clone(),
            kind,
            now_ms,
        });
        let row = state.jobs.get_mut(&id).ok_or(StoreError::NotFound)?;
        if row.job.status != JobStatus::Running || row.lease.as_deref() != Some(&*lease) {
            return Err(StoreError::StaleLease(row.job.status.as_str()));
        }
        row.job.updated_at_ms = now_ms;
        match report {
            Report::Progress(_) => {}
            Report::Complete(result) => {
                row.job.status = JobStatus::Succeeded;
                row.job.result = Some(result);
                row.lease = None;
            }
            Report::Fail { retry: true, .. } if row.job.attempts < row.job.max_attempts => {
                row.job.status = JobStatus::Queued;
                row.lease = None;
                state.queue.push_back(id.clone());
            }
            Report::Fail { error, .. } => {
                row.job.status = JobStatus::Failed;
                row.job.error = Some(error);
                row.lease = None;
            }
        }
        Ok(state.jobs[&id].job.clone())
    }

    fn expire_now(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mut state = self.state();
        state.calls.push(Call::ExpireLeases { now_ms });
        match state.expiries.pop_front().unwrap_or(Expiry::Count(0)) {
            Expiry::Count(n) => Ok(n),
            Expiry::Fail => Err(StoreError::Unavailable("scripted".into())),
            Expiry::Requeue(ids) => {
                for id in &ids {
                    let row = state.jobs.get_mut(id).expect("a stored job");
                    assert_eq!(row.job.status, JobStatus::Running, "only leases expire");
                    row.job.status = JobStatus::Queued;
                    row.job.updated_at_ms = now_ms;
                    row.lease = None;
                    state.queue.push_back(id.clone());
                }
                Ok(ids.len())
            }
        }
    }
}

/// A new queued job's record.
fn record(id: &str, now_ms: i64, max_attempts: u32) -> JobRecord {
    JobRecord {
        id: id.to_owned(),
        status: JobStatus::Queued,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        attempts: 0,
        max_attempts,
        result: None,
        error: None,
    }
}

impl Store for FakeStore {
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<Submitted, StoreError>> {
        let mut state = self.state();
        state.calls.push(Call::Submit {
            id: job.id.clone(),
            now_ms: job.now_ms,
        });
        let first = job.idempotency.as_ref().and_then(|(key, hash)| {
            state
                .jobs
                .values()
                .find(|row| row.idempotency.as_ref().is_some_and(|(k, _)| k == key))
                .map(|row| {
                    (
                        row.idempotency.as_ref().is_some_and(|(_, h)| h == hash),
                        row,
                    )
                })
        });
        let submitted = match first {
            Some((true, row)) => Ok(Submitted {
                job: row.job.clone(),
                replayed: true,
            }),
            Some((false, _)) => Err(StoreError::IdempotencyConflict),
            None => {
                let row = Row {
                    job: record(&job.id, job.now_ms, job.max_attempts),
                    payload: job.payload,
                    lease: None,
                    idempotency: job.idempotency,
                };
                let submitted = Submitted {
                    job: row.job.clone(),
                    replayed: false,
                };
                state.queue.push_back(job.id.clone());
                state.jobs.insert(job.id, row);
                Ok(submitted)
            }
        };
        async move { submitted }.boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, StoreError>> {
        let hook = self.state().before_next_get.take();
        if let Some(hook) = hook {
            hook();
        }
        let mut state = self.state();
        state.calls.push(Call::Get { id: id.to_owned() });
        let job = state.jobs.get(id).map(|row| row.job.clone());
        async move { Ok(job) }.boxed()
    }

    fn claim(
        &self,
        lease_ms: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<Claimed>, StoreError>> {
        let claimed = self.claim_now(lease_ms, now_ms);
        let hook = self.state().after_next_claim.take();
        if let Some(hook) = hook {
            hook();
        }
        async move { Ok(claimed) }.boxed()
    }

    fn report(
        &self,
        id: String,
        lease: String,
        report: Report,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<JobRecord, StoreError>> {
        let job = self.report_now(id, lease, report, now_ms);
        async move { job }.boxed()
    }

    fn cancel(&self, id: String, now_ms: i64) -> BoxFuture<'_, Result<JobRecord, StoreError>> {
        let mut state = self.state();
        state.calls.push(Call::Cancel {
            id: id.clone(),
            now_ms,
        });
        let job = match state.jobs.get_mut(&id) {
            None => Err(StoreError::NotFound),
            Some(row) if row.job.status.is_terminal() => {
                Err(StoreError::Finished(row.job.status.as_str()))
            }
            Some(row) => {
                row.job.status = JobStatus::Canceled;
                row.job.updated_at_ms = now_ms;
                row.lease = None;
                let job = row.job.clone();
                state.queue.retain(|q| *q != id);
                Ok(job)
            }
        };
        async move { job }.boxed()
    }

    fn expire_leases(&self, now_ms: i64) -> BoxFuture<'_, Result<usize, StoreError>> {
        let expired = self.expire_now(now_ms);
        async move { expired }.boxed()
    }

    fn prune(
        &self,
        jobs_before_ms: i64,
        deliveries_before_ms: i64,
    ) -> BoxFuture<'_, Result<(usize, usize), StoreError>> {
        let mut state = self.state();
        state.calls.push(Call::Prune {
            jobs_before_ms,
            deliveries_before_ms,
        });
        let pruned = if state.prune_failures > 0 {
            state.prune_failures -= 1;
            Err(StoreError::Unavailable("scripted".into()))
        } else {
            Ok((0, 0))
        };
        async move { pruned }.boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn close(&self, _deadline: Duration) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}
