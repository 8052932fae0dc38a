//! The dispatcher: reads due deliveries from the outbox, signs and POSTs them with bounded
//! concurrency (overall and per endpoint, so a slow or dead endpoint never holds up the
//! others), and records each attempt with its next retry.
//!
//! # How it finds work
//! The outbox is the source of truth; the dispatcher keeps a bounded copy of what is due in
//! per-endpoint [lanes](super::lanes) and reads the outbox in two ways:
//! - a **scan** ([`WebhookStore::outbox_heads`]: two index seeks per enabled endpoint) says
//!   which endpoints have due deliveries and when the next retry falls due. It runs when the
//!   store says the outbox changed (deliveries recorded, a manual retry, an endpoint
//!   changed), when a known retry falls due, and at least every `IDLE_POLL` (1 s) as a safety
//!   net;
//! - a **refill** ([`WebhookStore::due_for`]) reads one endpoint's next due deliveries from
//!   that endpoint's own index range, only when the endpoint could use more (see
//!   [`Lanes::next_refill`]).
//!
//! When an attempt ends, its slot goes to the next queued delivery (endpoints take turns)
//! without reading the outbox.
//!
//! # Seams
//! The HTTP exchange goes through a [`WebhookSender`] and wall-clock time through a
//! [`crate::time::WallClock`], so the unit tests run it against a fake receiver under paused Tokio time.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use switchyard_protocol::webhook::{self, WebhookSecret};
// Tokio's `Instant` is std's unless time is paused (in tests), where it follows the paused
// clock like the dispatcher's sleeps do.
use tokio::{sync::Notify, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    lanes::{Lanes, REFILL, SlotLimits},
    schedule,
    sender::{HttpSender, WebhookRequest, WebhookSender},
    ssrf,
};
use crate::{
    config::WebhooksConfig,
    store::{AttemptOutcome, DueDelivery, StoreError, WebhookStore},
    time::{WallClock, now_ms},
};

/// Longest time between scans of the outbox. Nothing should depend on it: every change of
/// the outbox wakes the dispatcher, and it knows when the next retry falls due. It is there
/// so a missed wake-up costs at most this long ([`DispatchStats::found_by_poll`] counts
/// them).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// A scan starts at least this long per endpoint it read after the previous one started. A
/// scan costs about 2-3 µs per enabled endpoint, so with many endpoints scans take at most
/// about a quarter of the dispatcher's time (1000 endpoints: a scan at most every 10 ms);
/// with a few a scan takes microseconds and this delays nothing. Counted per endpoint, not
/// timed: a scan that was merely preempted must not space the next one out.
const SCAN_SPACING_PER_ENDPOINT: Duration = Duration::from_micros(10);
/// Pause after a failed outbox read before the next try.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Counters of the dispatcher: the attempt counters are on `/metrics`; the others are
/// logged when the dispatcher stops.
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Attempts answered 2xx.
    pub succeeded: std::sync::atomic::AtomicU64,
    /// Attempts that failed (any other status, timeout, connection error, refusal).
    pub failed: std::sync::atomic::AtomicU64,
    /// Attempts in flight now.
    pub in_flight: std::sync::atomic::AtomicI64,
    /// Scans of the outbox.
    pub scans: std::sync::atomic::AtomicU64,
    /// Refills of an endpoint's lane (outbox reads of due deliveries).
    pub refills: std::sync::atomic::AtomicU64,
    /// Deliveries first found by a scan that only the `IDLE_POLL` safety net started: a
    /// wake-up that went missing. Should stay 0.
    pub found_by_poll: std::sync::atomic::AtomicU64,
}

/// Sends webhook deliveries.
pub struct Dispatcher {
    /// Attempt counters.
    pub stats: Arc<DispatchStats>,
    store: Arc<dyn WebhookStore>,
    config: WebhooksConfig,
    /// Makes the HTTP exchange of each attempt.
    sender: Arc<dyn WebhookSender>,
    /// `webhooks.attempt_timeout_secs`: an attempt with no answer by then fails.
    attempt_timeout: Duration,
    clock: WallClock,
    /// Woken by the store when the outbox changed: scan it.
    outbox_changed: Arc<Notify>,
    /// Woken when an attempt freed its slot or recorded its outcome: start the next
    /// delivery, and sleep until the retry it may have scheduled.
    attempt_ended: Notify,
    /// The per-endpoint queues and slots. A std mutex: held for a few map operations,
    /// never across an await.
    lanes: Mutex<Lanes>,
    limits: SlotLimits,
}

/// When the last scan started and how far the next must be from it.
#[derive(Debug, Default)]
struct ScanTimer {
    last: Option<(Instant, Duration)>,
}

impl ScanTimer {
    fn scanned(&mut self, started: Instant, endpoints: usize) {
        let spacing = SCAN_SPACING_PER_ENDPOINT * u32::try_from(endpoints).unwrap_or(u32::MAX);
        self.last = Some((started, spacing));
    }

    /// Long enough since the last scan, see [`SCAN_SPACING_PER_ENDPOINT`].
    fn may_scan(&self) -> bool {
        self.spacing_left().is_zero()
    }

    fn spacing_left(&self) -> Duration {
        self.last.map_or(Duration::ZERO, |(at, spacing)| {
            spacing.saturating_sub(at.elapsed())
        })
    }

    fn since_last(&self) -> Duration {
        self.last.map_or(IDLE_POLL, |(at, _)| at.elapsed())
    }
}

/// Why the dispatcher loop woke up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// The outbox changed, a retry fell due, or at the start.
    Scan,
    /// An attempt ended.
    Attempt,
    /// [`IDLE_POLL`] passed without anything else.
    Poll,
}

impl Dispatcher {
    /// A dispatcher over `store`, woken by `outbox_changed` (the store's notification).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        store: Arc<dyn WebhookStore>,
        config: WebhooksConfig,
        outbox_changed: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        let sender = Arc::new(HttpSender::new(&config)?);
        Ok(Self::with_sender(
            store,
            config,
            outbox_changed,
            sender,
            Arc::new(now_ms),
        ))
    }

    /// A dispatcher that makes its attempts through `sender` and reads the time from
    /// `clock` (tests: a fake receiver and paused time).
    pub fn with_sender(
        store: Arc<dyn WebhookStore>,
        config: WebhooksConfig,
        outbox_changed: Arc<Notify>,
        sender: Arc<dyn WebhookSender>,
        clock: WallClock,
    ) -> Self {
        let limits = SlotLimits {
            overall: config.max_concurrency,
            per_endpoint: config.max_per_endpoint,
        };
        Self {
            stats: Arc::default(),
            attempt_timeout: Duration::from_secs_f64(config.attempt_timeout_secs),
            store,
            config,
            sender,
            clock,
            outbox_changed,
            attempt_ended: Notify::new(),
            lanes: Mutex::default(),
            limits,
        }
    }

    fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().expect("not poisoned")
    }

    /// Delivers until `shutdown`; attempts run on `tracker` so shutdown waits for them.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tracker: TaskTracker) {
        let mut wake = Wake::Scan;
        let mut timer = ScanTimer::default();
        let mut scan_wanted = false;
        loop {
            scan_wanted |= wake != Wake::Attempt || self.retry_is_due();
            let scan = scan_wanted && timer.may_scan();
            if scan {
                scan_wanted = false;
            }
            let passed = self
                .pass(&tracker, scan.then_some(&mut timer), wake == Wake::Poll)
                .await;
            if let Err(e) = passed {
                tracing::warn!(error = %e, "webhook dispatch pass failed");
                scan_wanted = true;
                tokio::select! {
                    () = shutdown.cancelled() => {
                        self.log_stats();
                        return;
                    }
                    () = tokio::time::sleep(ERROR_PAUSE) => {}
                }
            }
            let sleep = self.sleep_time(&timer, scan_wanted);
            wake = tokio::select! {
                () = shutdown.cancelled() => {
                    self.log_stats();
                    return;
                }
                () = self.outbox_changed.notified() => Wake::Scan,
                () = self.attempt_ended.notified() => Wake::Attempt,
                () = tokio::time::sleep(sleep) => {
                    if scan_wanted || self.retry_is_due() {
                        Wake::Scan
                    } else {
                        // Only the idle poll bounded the sleep.
                        Wake::Poll
                    }
                }
            };
        }
    }

    /// How long to sleep when nothing wakes the dispatcher: until the next known retry falls
    /// due, or a wanted scan is no longer too close to the last one, or [`IDLE_POLL`] after
    /// the last scan.
    fn sleep_time(&self, timer: &ScanTimer, scan_wanted: bool) -> Duration {
        let spacing_left = timer.spacing_left();
        let mut sleep = IDLE_POLL.saturating_sub(timer.since_last());
        if scan_wanted {
            sleep = sleep.min(spacing_left);
        }
        if let Some(wake_at) = self.lanes().wake_at() {
            let until = Duration::from_millis(u64::try_from(wake_at - self.now_ms()).unwrap_or(0));
            sleep = sleep.min(until.max(spacing_left));
        }
        sleep
    }

    fn log_stats(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        tracing::info!(
            succeeded = s.succeeded.load(Relaxed),
            failed = s.failed.load(Relaxed),
            scans = s.scans.load(Relaxed),
            refills = s.refills.load(Relaxed),
            found_by_poll = s.found_by_poll.load(Relaxed),
            "webhook dispatcher stopped"
        );
    }

    /// Whether a known retry has fallen due.
    fn retry_is_due(&self) -> bool {
        self.lanes().wake_at().is_some_and(|at| at <= self.now_ms())
    }

    /// Scans the outbox when asked (`scan`), then starts what can start and refills the
    /// lanes that could use more, until neither is possible.
    async fn pass(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        scan: Option<&mut ScanTimer>,
        poll: bool,
    ) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        // Endpoints an idle-poll scan found due deliveries for that nothing announced.
        let mut unannounced = std::collections::HashSet::new();
        if let Some(timer) = scan {
            let started = Instant::now();
            self.lanes().scan_started();
            let heads = self.store.outbox_heads(self.now_ms()).await;
            timer.scanned(started, heads.as_ref().map_or(0, Vec::len));
            let news = self.lanes().scanned(heads?);
            self.stats.scans.fetch_add(1, Relaxed);
            if poll {
                unannounced = news;
            }
        }
        loop {
            self.start_ready(tracker);
            let Some(refill) = self.lanes().next_refill(self.limits) else {
                return Ok(());
            };
            let due = self
                .store
                .due_for(
                    refill.endpoint_id.clone(),
                    self.now_ms(),
                    REFILL,
                    refill.skip,
                )
                .await?;
            self.stats.refills.fetch_add(1, Relaxed);
            if !due.is_empty() && unannounced.remove(&refill.endpoint_id) {
                self.stats
                    .found_by_poll
                    .fetch_add(due.len() as u64, Relaxed);
                tracing::warn!(
                    endpoint = %refill.endpoint_id,
                    deliveries = due.len(),
                    "webhook deliveries were found only by the idle poll (a missed wake-up)"
                );
            }
            self.lanes()
                .refilled(&refill.endpoint_id, due, REFILL, self.limits);
        }
    }

    /// Starts an attempt for every queued delivery that has a free slot.
    fn start_ready(self: &Arc<Self>, tracker: &TaskTracker) {
        loop {
            let Some(delivery) = self.lanes().next_start(self.limits) else {
                return;
            };
            let claim = Claim {
                dispatcher: Arc::clone(self),
                endpoint_id: delivery.endpoint_id.clone(),
                delivery_id: delivery.id.clone(),
                has_slot: true,
                retry_at_ms: None,
            };
            let this = Arc::clone(self);
            tracker.spawn(async move { this.attempt(delivery, claim).await });
        }
    }

    async fn attempt(self: Arc<Self>, d: DueDelivery, mut claim: Claim) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.in_flight.fetch_add(1, Relaxed);
        let at_ms = self.now_ms();
        let started = Instant::now();
        let result = self.send(&d, at_ms).await;
        let latency_ms = started.elapsed().as_millis() as i64;
        let gone = matches!(&result, Ok((s, _)) if *s == StatusCode::GONE);
        if gone {
            // Before the slot is freed, which would start the endpoint's next queued
            // delivery: the scan that sees it disabled comes only after the record.
            self.lanes().disable(&d.endpoint_id);
        }
        // The endpoint's slot and the overall one are free again: recording the outcome (a
        // commit) need not hold them, and concurrent records then share one fsync.
        claim.free_slot();
        let attempts = d.attempts + 1;
        let (status_code, error, retry_after) = match &result {
            Ok((status, retry_after)) => (
                Some(status.as_u16()),
                (!status.is_success()).then(|| format!("HTTP {status}")),
                *retry_after,
            ),
            Err(e) => (None, Some(e.clone()), None),
        };
        let succeeded = matches!(&result, Ok((s, _)) if s.is_success());
        let counter = if succeeded {
            &self.stats.succeeded
        } else {
            &self.stats.failed
        };
        counter.fetch_add(1, Relaxed);
        self.stats.in_flight.fetch_sub(1, Relaxed);
        let next_attempt_at_ms = if succeeded || gone {
            None
        } else {
            schedule::next_delay(
                &self.config.retry_schedule_secs,
                attempts,
                retry_after,
                schedule::unit_random(),
            )
            .map(|delay| at_ms + delay.as_millis() as i64)
        };
        let failing_too_long = !succeeded
            && self
                .failing_since(&d.endpoint_id)
                .await
                .is_some_and(|since| {
                    at_ms - since > (self.config.disable_after_secs as i64) * 1000
                });
        let disable_endpoint = if gone {
            Some("the endpoint answered 410 Gone".to_owned())
        } else if failing_too_long {
            self.lanes().disable(&d.endpoint_id);
            Some(format!(
                "failing for more than {} s",
                self.config.disable_after_secs
            ))
        } else {
            None
        };
        let outcome = AttemptOutcome {
            delivery_id: d.id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            at_ms,
            status_code,
            latency_ms,
            error,
            succeeded,
            next_attempt_at_ms,
            disable_endpoint,
        };
        match self.store.record(outcome).await {
            Ok(()) => claim.retry_at_ms = next_attempt_at_ms,
            // Deleted with its endpoint while the attempt ran.
            Err(StoreError::NotFound) => {
                tracing::debug!(delivery = %d.id, "the delivery was deleted during its attempt");
            }
            Err(e) => {
                tracing::error!(error = %e, delivery = %d.id, "cannot record a webhook attempt");
            }
        }
        // Dropping the claim releases the delivery: from now on a refill may read it again.
    }

    async fn failing_since(&self, endpoint_id: &str) -> Option<i64> {
        self.store
            .get_endpoint(endpoint_id)
            .await
            .ok()
            .flatten()
            .and_then(|e| e.failing_since_ms)
    }

    /// One signed POST: the status and any `Retry-After` (on 429/503), or why it failed.
    /// Bounded by `attempt_timeout_secs`, connecting included.
    async fn send(
        &self,
        d: &DueDelivery,
        at_ms: i64,
    ) -> Result<(StatusCode, Option<Duration>), String> {
        let url = ssrf::check_url(&d.url, self.config.allow_private_networks)
            .map_err(|e| e.to_string())?;
        let secret =
            WebhookSecret::parse(&d.secret).map_err(|e| format!("bad endpoint secret: {e}"))?;
        let previous = d
            .previous_secret
            .as_deref()
            .filter(|_| {
                d.previous_secret_until_ms
                    .is_some_and(|until| until > at_ms)
            })
            .and_then(|s| WebhookSecret::parse(s).ok());
        let mut secrets = vec![&secret];
        secrets.extend(previous.as_ref());
        let timestamp = at_ms / 1000;
        let signature = webhook::signature_header(&secrets, &d.id, timestamp, &d.body);
        let value =
            |text: &str| HeaderValue::from_str(text).map_err(|e| format!("request failed: {e}"));
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(webhook::HEADER_WEBHOOK_ID, value(&d.id)?);
        headers.insert(
            webhook::HEADER_WEBHOOK_TIMESTAMP,
            value(&timestamp.to_string())?,
        );
        headers.insert(webhook::HEADER_WEBHOOK_SIGNATURE, value(&signature)?);
        let request = WebhookRequest {
            url,
            headers,
            body: d.body.clone(),
        };
        let response = tokio::time::timeout(self.attempt_timeout, self.sender.send(request))
            .await
            .map_err(|_| "timed out".to_owned())??;
        let status = response.status;
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| {
            response
                .headers
                .get(header::RETRY_AFTER)?
                .to_str()
                .ok()
                .and_then(schedule::parse_retry_after)
        })
        .flatten();
        Ok((status, retry_after))
    }
}

/// An attempt's hold on its delivery and slots. Freed by hand at the right moments, and on
/// drop in any case (also if the attempt panics), so neither a slot nor a delivery can leak.
struct Claim {
    dispatcher: Arc<Dispatcher>,
    endpoint_id: String,
    delivery_id: String,
    /// Still holds a slot of its endpoint and an overall one.
    has_slot: bool,
    /// The retry its committed outcome scheduled.
    retry_at_ms: Option<i64>,
}

impl Claim {
    /// The HTTP exchange is over: the slots go to the next delivery.
    fn free_slot(&mut self) {
        if std::mem::take(&mut self.has_slot) {
            let d = &self.dispatcher;
            d.lanes().slot_freed(&self.endpoint_id, d.limits);
            d.attempt_ended.notify_one();
        }
    }
}

impl Drop for Claim {
    /// The outcome is committed (or failed to be): the delivery may be read again, and the
    /// dispatcher learns when its retry falls due.
    fn drop(&mut self) {
        self.free_slot();
        let d = &self.dispatcher;
        d.lanes()
            .outcome_recorded(&self.endpoint_id, &self.delivery_id, self.retry_at_ms);
        if self.retry_at_ms.is_some() {
            d.attempt_ended.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;
