//! The dispatcher: picks due deliveries from the outbox, signs and POSTs them with bounded
//! concurrency (overall and per endpoint, so a slow or dead endpoint never holds up the
//! others), and records each attempt with its next retry.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::{StatusCode, redirect::Policy};
use switchyard_protocol::webhook::{self, WebhookSecret};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{schedule, ssrf};
use crate::{
    config::WebhooksConfig,
    store::{AttemptOutcome, DueDelivery, WebhookStore, now_ms},
};

/// Deliveries read from the outbox per pass.
const BATCH: usize = 256;
/// Most deliveries held in the ready queue; past it, blocked ones wait in the outbox.
const MAX_QUEUED: usize = 4 * BATCH;
/// Shortest time between outbox reads while the ready queue holds only blocked deliveries.
const TOP_UP_INTERVAL: Duration = Duration::from_millis(100);
/// Longest sleep between passes when nothing wakes the dispatcher.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Counters of the dispatcher, for `/metrics`.
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Attempts answered 2xx.
    pub succeeded: std::sync::atomic::AtomicU64,
    /// Attempts that failed (any other status, timeout, connection error, refusal).
    pub failed: std::sync::atomic::AtomicU64,
    /// Attempts in flight now.
    pub in_flight: std::sync::atomic::AtomicI64,
}

/// Sends webhook deliveries.
pub struct Dispatcher {
    /// Attempt counters.
    pub stats: Arc<DispatchStats>,
    store: Arc<dyn WebhookStore>,
    config: WebhooksConfig,
    client: reqwest::Client,
    /// Woken when deliveries are recorded and when an attempt ends (a slot freed up).
    ready: Arc<Notify>,
    /// Bounds deliveries in flight overall.
    slots: Arc<Semaphore>,
    in_flight: Mutex<InFlight>,
    /// Due deliveries read in one query and handed out as slots free up: reading the
    /// outbox once per attempt cost more than the attempts themselves.
    ready_queue: Mutex<std::collections::VecDeque<DueDelivery>>,
    /// When the ready queue was last topped up while it still held blocked deliveries.
    last_top_up: Mutex<Instant>,
}

#[derive(Default)]
struct InFlight {
    deliveries: HashSet<String>,
    per_endpoint: HashMap<String, usize>,
}

impl Dispatcher {
    /// A dispatcher over `store`, woken by `ready`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        store: Arc<dyn WebhookStore>,
        config: WebhooksConfig,
        ready: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        // rustls needs its crypto provider once per process; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_secs_f64(config.attempt_timeout_secs);
        let client = reqwest::Client::builder()
            .redirect(Policy::none())
            // A proxy from the environment would resolve names itself, past the SSRF guard.
            .no_proxy()
            .dns_resolver(ssrf::resolver(config.allow_private_networks))
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .pool_max_idle_per_host(config.max_per_endpoint)
            .user_agent(concat!("switchyard-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let slots = Arc::new(Semaphore::new(config.max_concurrency));
        Ok(Self {
            stats: Arc::default(),
            store,
            config,
            client,
            ready,
            slots,
            in_flight: Mutex::default(),
            ready_queue: Mutex::default(),
            last_top_up: Mutex::new(Instant::now()),
        })
    }

    /// Delivers until `shutdown`; attempts run on `tracker` so shutdown waits for them.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tracker: TaskTracker) {
        loop {
            if let Err(e) = self.pass(&tracker).await {
                tracing::warn!(error = %e, "webhook dispatch pass failed");
            }
            let wait = match self.store.next_due().await {
                Ok(Some(at)) => Duration::from_millis(
                    (at - now_ms()).clamp(0, IDLE_POLL.as_millis() as i64) as u64,
                ),
                _ => IDLE_POLL,
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.ready.notified() => {}
                () = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
            }
        }
    }

    /// Starts an attempt for each due delivery that has a free slot, from the ready queue,
    /// refilled from the outbox when it runs dry (or holds only blocked deliveries).
    async fn pass(self: &Arc<Self>, tracker: &TaskTracker) -> Result<(), crate::store::StoreError> {
        let mut refilled = false;
        loop {
            if self.slots.available_permits() == 0 {
                return Ok(());
            }
            if let Some(delivery) = self.next_ready() {
                let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
                    self.ready_queue
                        .lock()
                        .expect("not poisoned")
                        .push_front(delivery);
                    return Ok(());
                };
                let this = Arc::clone(self);
                tracker.spawn(async move { this.attempt(delivery, slot).await });
                continue;
            }
            if refilled {
                return Ok(());
            }
            refilled = true;
            // What is queued is blocked (its endpoints are at their limit) or nothing is.
            // Look for other endpoints' deliveries: always when the queue is empty, and at
            // most every TOP_UP_INTERVAL otherwise, so a busy endpoint does not cost a
            // query per finished attempt, nor can its backlog starve the others.
            let queued: Vec<String> = {
                let queue = self.ready_queue.lock().expect("not poisoned");
                queue.iter().map(|d| d.id.clone()).collect()
            };
            if !queued.is_empty() {
                let mut last = self.last_top_up.lock().expect("not poisoned");
                if last.elapsed() < TOP_UP_INTERVAL || queued.len() >= MAX_QUEUED {
                    return Ok(());
                }
                *last = Instant::now();
            }
            let (busy, mut skip) = self.exclusions();
            skip.extend(queued);
            let due = self.store.due(now_ms(), BATCH, busy, skip).await?;
            self.ready_queue.lock().expect("not poisoned").extend(due);
        }
    }

    /// The first queued delivery that may start now (claimed in flight), if any.
    fn next_ready(&self) -> Option<DueDelivery> {
        let mut queue = self.ready_queue.lock().expect("not poisoned");
        let i = queue.iter().position(|d| self.claim(d))?;
        queue.remove(i)
    }

    /// Endpoints at their in-flight limit, and deliveries in flight.
    fn exclusions(&self) -> (Vec<String>, Vec<String>) {
        let f = self.in_flight.lock().expect("not poisoned");
        let busy = f
            .per_endpoint
            .iter()
            .filter(|(_, n)| **n >= self.config.max_per_endpoint)
            .map(|(e, _)| e.clone())
            .collect();
        (busy, f.deliveries.iter().cloned().collect())
    }

    /// Marks a delivery in flight, unless it already is or its endpoint is at its limit.
    fn claim(&self, d: &DueDelivery) -> bool {
        let mut f = self.in_flight.lock().expect("not poisoned");
        let n = f.per_endpoint.get(&d.endpoint_id).copied().unwrap_or(0);
        if n >= self.config.max_per_endpoint || f.deliveries.contains(&d.id) {
            return false;
        }
        f.deliveries.insert(d.id.clone());
        f.per_endpoint.insert(d.endpoint_id.clone(), n + 1);
        true
    }

    /// The endpoint's slot is free once the HTTP exchange is over.
    fn release_endpoint(&self, d: &DueDelivery) {
        let mut f = self.in_flight.lock().expect("not poisoned");
        if let Some(n) = f.per_endpoint.get_mut(&d.endpoint_id) {
            *n -= 1;
            if *n == 0 {
                f.per_endpoint.remove(&d.endpoint_id);
            }
        }
    }

    /// The delivery itself stays in flight until its outcome is committed, so it is never
    /// picked again while the store still says `pending`.
    fn release_delivery(&self, d: &DueDelivery) {
        self.in_flight
            .lock()
            .expect("not poisoned")
            .deliveries
            .remove(&d.id);
    }

    async fn attempt(self: Arc<Self>, d: DueDelivery, slot: OwnedSemaphorePermit) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.in_flight.fetch_add(1, Relaxed);
        let at_ms = now_ms();
        let started = Instant::now();
        let result = self.send(&d, at_ms).await;
        let latency_ms = started.elapsed().as_millis() as i64;
        // The endpoint and the overall slot are free again: recording the outcome (a
        // commit) need not hold them, and concurrent records then share one fsync.
        self.release_endpoint(&d);
        drop(slot);
        self.ready.notify_one();
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
        let gone = matches!(&result, Ok((s, _)) if *s == StatusCode::GONE);
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
        if let Err(e) = self.store.record(outcome).await {
            tracing::error!(error = %e, delivery = %d.id, "cannot record a webhook attempt");
        }
        self.release_delivery(&d);
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
    async fn send(
        &self,
        d: &DueDelivery,
        at_ms: i64,
    ) -> Result<(StatusCode, Option<Duration>), String> {
        ssrf::check_url(&d.url, self.config.allow_private_networks)?;
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
        let response = self
            .client
            .post(&d.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.body.clone())
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| {
            response
                .headers()
                .get("retry-after")?
                .to_str()
                .ok()
                .and_then(schedule::parse_retry_after)
        })
        .flatten();
        Ok((status, retry_after))
    }
}

/// A readable reason for a failed request, including the SSRF guard's refusal.
fn describe(e: reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if s_text.contains(ssrf::REFUSED) {
            return ssrf::REFUSED.to_owned();
        }
        text.push_str(": ");
        text.push_str(&s_text);
        source = s.source();
    }
    text
}
