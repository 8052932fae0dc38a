//! The dispatcher against an in-memory outbox and a scripted receiver, under paused Tokio
//! time: no socket (with one, the paused runtime would auto-advance past timeouts while it
//! waited on I/O), and every wait bounded in Tokio time.

use std::{sync::Arc, time::Duration};

use switchyard_protocol::webhook::{self, WebhookError, WebhookSecret};
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Dispatcher, IDLE_POLL};
use crate::{
    config::{Config, WebhooksConfig},
    store::{AttemptOutcome, EndpointRecord, WebhookStore},
    webhooks::testing::{EPOCH_MS, FakeSender, FakeStore, Reply, SentRequest, TestClock},
};

/// Longest a single wait may take, in Tokio time (paused, so it costs no real time).
const PATIENCE: Duration = Duration::from_secs(600);
const HOUR: Duration = Duration::from_secs(3600);

/// The documented defaults (`config.default.toml`).
fn config() -> WebhooksConfig {
    Config::default().webhooks
}

fn secret(seed: u8) -> String {
    WebhookSecret::from_bytes(vec![seed; 32])
        .expect("32 bytes")
        .as_whsec()
}

fn url(name: &str) -> String {
    format!("https://{name}.example/hook")
}

/// A dispatcher over a [`FakeStore`] and a [`FakeSender`], with the clock at [`EPOCH_MS`].
struct Harness {
    clock: TestClock,
    store: Arc<FakeStore>,
    sender: Arc<FakeSender>,
    outbox_changed: Arc<Notify>,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    run: Option<JoinHandle<()>>,
}

impl Harness {
    /// Not started yet; the receiver answers `default` unless a URL has a script.
    fn new(config: WebhooksConfig, default: Reply) -> Self {
        let clock = TestClock::new();
        let outbox_changed = Arc::new(Notify::new());
        let store = Arc::new(FakeStore::new(Arc::clone(&outbox_changed)));
        let sender = Arc::new(FakeSender::new(clock, default));
        let dispatcher = Arc::new(Dispatcher::with_sender(
            Arc::clone(&store) as _,
            config,
            Arc::clone(&outbox_changed),
            Arc::clone(&sender) as _,
            clock.wall(),
        ));
        Self {
            clock,
            store,
            sender,
            outbox_changed,
            dispatcher,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            run: None,
        }
    }

    fn start(&mut self) {
        let run = Arc::clone(&self.dispatcher).run(self.shutdown.clone(), self.tracker.clone());
        self.run = Some(tokio::spawn(run));
    }

    /// Registers endpoint `name` (id `name`, URL [`url`]), signing with `secret(seed)`.
    fn endpoint(&self, name: &str, seed: u8) -> EndpointRecord {
        let endpoint = EndpointRecord {
            id: name.into(),
            url: url(name),
            channels: vec!["**".into()],
            types: Vec::new(),
            secret: secret(seed),
            previous_secret: None,
            previous_secret_until_ms: None,
            enabled: true,
            disabled_reason: None,
            failing_since_ms: None,
            created_at_ms: EPOCH_MS,
            updated_at_ms: EPOCH_MS,
        };
        self.store.add_endpoint(endpoint.clone());
        endpoint
    }

    /// Adds `n` deliveries to `endpoint`, due now, unannounced; returns their ids.
    fn add_due(&self, endpoint: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let id = format!("msg_{endpoint}_{i}");
                let body = format!(r#"{{"endpoint":"{endpoint}","n":{i}}}"#);
                self.store
                    .add_delivery(endpoint, &id, &body, self.clock.now_ms());
                id
            })
            .collect()
    }

    /// Changes an endpoint as the API does: a new `updated_at`, then the store's wake-up.
    async fn update(&self, mut endpoint: EndpointRecord) {
        endpoint.updated_at_ms = self.clock.now_ms();
        self.store.put_endpoint(endpoint, None).await.unwrap();
    }

    async fn request(&self) -> SentRequest {
        self.sender
            .next_request(PATIENCE)
            .await
            .expect("a request within the patience")
    }

    async fn outcome(&self) -> AttemptOutcome {
        self.store
            .next_outcome(PATIENCE)
            .await
            .expect("an outcome within the patience")
    }

    /// The requests sent while `period` (Tokio time) passes.
    async fn sent_during(&self, period: Duration) -> Vec<SentRequest> {
        let before = self.sender.sent().len();
        tokio::time::sleep(period).await;
        self.sender.sent().split_off(before)
    }

    fn stat(&self, pick: impl Fn(&super::DispatchStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        pick(&self.dispatcher.stats).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (Tokio time, at most [`PATIENCE`]) until the dispatcher has scanned again.
    async fn next_scan(&self) {
        let before = self.stat(|s| &s.scans);
        until("the next scan", || self.stat(|s| &s.scans) > before).await;
    }

    /// Cancels, then checks the run loop ends at once and every attempt within the grace.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(run) = self.run.take() {
            tokio::time::timeout(Duration::from_millis(10), run)
                .await
                .expect("the run loop ends at once on cancel")
                .expect("the run loop did not panic");
        }
        self.tracker.close();
        tokio::time::timeout(PATIENCE, self.tracker.wait())
            .await
            .expect("attempts end");
    }
}

/// Waits (Tokio time, at most [`PATIENCE`]) until `done` holds, checking every millisecond.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let check = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(PATIENCE, check)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// Verifies `request` as a receiver holding `secret` would, at the time it arrived.
fn verify(request: &SentRequest, secret: &str) -> Result<(), WebhookError> {
    webhook::verify(
        &WebhookSecret::parse(secret).unwrap(),
        request.header(webhook::HEADER_WEBHOOK_ID),
        request.header(webhook::HEADER_WEBHOOK_TIMESTAMP),
        request.header(webhook::HEADER_WEBHOOK_SIGNATURE),
        &request.body,
        (EPOCH_MS + request.at_ms) / 1000,
        webhook::DEFAULT_TOLERANCE_SECS,
    )
}

// === retries ===

#[tokio::test(start_paused = true)]
async fn failures_are_retried_on_the_default_schedule_then_the_delivery_fails() {
    let config = config();
    let schedule = config.retry_schedule_secs.clone();
    assert_eq!(
        schedule,
        [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        "docs/webhooks.md"
    );
    let mut h = Harness::new(config, Reply::status(500));
    h.endpoint("a", 1);
    let id = h.add_due("a", 1).remove(0);
    h.start();

    let mut previous: Option<AttemptOutcome> = None;
    for n in 1..=schedule.len() + 1 {
        let request = h
            .sender
            .next_request(12 * HOUR)
            .await
            .unwrap_or_else(|| panic!("attempt {n} never came"));
        let o = h.outcome().await;
        assert_eq!(o.delivery_id, id);
        assert_eq!(o.at_ms, EPOCH_MS + request.at_ms);
        assert_eq!(o.error.as_deref(), Some("HTTP 500 Internal Server Error"));
        if let Some(p) = &previous {
            // Picked up when it falls due (not at the next idle poll, a second later).
            let due = p.next_attempt_at_ms.unwrap();
            assert!(
                (due..=due + 10).contains(&o.at_ms),
                "attempt {n} at {} though due at {due}",
                o.at_ms
            );
        }
        if n <= schedule.len() {
            let delay = (o.next_attempt_at_ms.expect("a retry") - o.at_ms) as f64;
            let base = schedule[n - 1] * 1000.0;
            assert!(
                (0.8 * base..=1.2 * base).contains(&delay),
                "delay {delay} ms after attempt {n}, schedule says {base} ms ±20%"
            );
        } else {
            assert_eq!(o.next_attempt_at_ms, None, "the schedule is used up");
        }
        previous = Some(o);
    }
    assert_eq!(h.store.delivery(&id), ("failed", 8, None));
    assert!(
        h.sent_during(HOUR).await.is_empty(),
        "no attempt after the last"
    );
    // Failing for about 28 h is well within the 5 days that disable an endpoint.
    let a = h.store.endpoint("a");
    assert!(a.enabled);
    assert_eq!(a.failing_since_ms, Some(EPOCH_MS));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_429_and_503_replaces_the_delay_but_not_the_attempt_count() {
    let mut config = config();
    config.retry_schedule_secs = vec![5.0, 5.0];
    let mut h = Harness::new(config, Reply::status(200));
    h.endpoint("a", 1);
    let id = h.add_due("a", 1).remove(0);
    h.sender.script(
        &url("a"),
        [
            Reply::status(503).header("retry-after", "60"),
            // Only 429 and 503 are taken at their word.
            Reply::status(500).header("retry-after", "60"),
            Reply::status(429).header("retry-after", "60"),
        ],
    );
    h.start();

    let o = h.outcome().await;
    assert_eq!(o.error.as_deref(), Some("HTTP 503 Service Unavailable"));
    assert_eq!(
        o.next_attempt_at_ms,
        Some(o.at_ms + 60_000),
        "no jitter on Retry-After"
    );
    let o = h.outcome().await;
    let delay = o.next_attempt_at_ms.unwrap() - o.at_ms;
    assert!((4_000..=6_000).contains(&delay), "the schedule's: {delay}");
    let o = h.outcome().await;
    assert_eq!(o.status_code, Some(429));
    assert_eq!(
        o.next_attempt_at_ms, None,
        "ignored on the last attempt: the delivery fails"
    );
    assert_eq!(h.store.delivery(&id), ("failed", 3, None));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_failing_longer_than_disable_after_is_disabled_until_enabled_again() {
    let mut config = config();
    config.retry_schedule_secs = vec![60.0; 10];
    config.disable_after_secs = 200;
    let mut h = Harness::new(config, Reply::status(500));
    let a = h.endpoint("a", 1);
    let id = h.add_due("a", 1).remove(0);
    h.start();

    let first = h.outcome().await;
    assert_eq!(first.disable_endpoint, None);
    assert_eq!(h.store.endpoint("a").failing_since_ms, Some(first.at_ms));
    loop {
        let o = h.outcome().await;
        let failing_for = o.at_ms - first.at_ms;
        if failing_for > 200_000 {
            assert_eq!(
                o.disable_endpoint.as_deref(),
                Some("failing for more than 200 s")
            );
            break;
        }
        assert_eq!(o.disable_endpoint, None, "failing for {failing_for} ms");
    }
    let disabled = h.store.endpoint("a");
    assert!(!disabled.enabled);
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("failing for more than 200 s")
    );
    // A disabled endpoint gets no attempts; its delivery stays pending, past its due time.
    assert!(h.sent_during(HOUR).await.is_empty());
    assert_eq!(h.store.delivery(&id).0, "pending");

    h.sender.set_default(Reply::status(200));
    let mut enabled = a;
    enabled.enabled = true;
    h.update(enabled).await;
    let o = h.outcome().await;
    assert_eq!(o.delivery_id, id);
    assert!(o.succeeded, "its pending delivery is sent once enabled");
    h.stop().await;
}

// === answers ===

#[tokio::test(start_paused = true)]
async fn a_2xx_answer_ends_the_delivery() {
    let mut h = Harness::new(config(), Reply::status(204));
    h.endpoint("a", 1);
    let id = h.add_due("a", 1).remove(0);
    h.start();

    let o = h.outcome().await;
    assert!(o.succeeded);
    assert_eq!(
        (
            o.status_code,
            o.error,
            o.next_attempt_at_ms,
            o.disable_endpoint
        ),
        (Some(204), None, None, None)
    );
    assert_eq!(h.store.delivery(&id), ("succeeded", 1, None));
    assert!(h.sent_during(HOUR).await.is_empty(), "never again");
    assert_eq!((h.stat(|s| &s.succeeded), h.stat(|s| &s.failed)), (1, 0));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn gone_fails_the_delivery_and_disables_the_endpoint() {
    let mut config = config();
    config.max_per_endpoint = 1;
    let mut h = Harness::new(config, Reply::status(200));
    h.endpoint("a", 1);
    let ids = h.add_due("a", 2);
    h.sender.script(&url("a"), [Reply::status(410)]);
    h.start();

    let o = h.outcome().await;
    assert_eq!(o.delivery_id, ids[0]);
    assert!(!o.succeeded);
    assert_eq!(o.next_attempt_at_ms, None, "no retry");
    assert_eq!(
        o.disable_endpoint.as_deref(),
        Some("the endpoint answered 410 Gone")
    );
    assert_eq!(h.store.delivery(&ids[0]), ("failed", 1, None));
    assert!(!h.store.endpoint("a").enabled);
    h.sent_during(HOUR).await;
    assert_eq!(
        h.sender.sent().len(),
        1,
        "nothing more is sent to it, not even a delivery queued before the answer"
    );
    assert_eq!(h.store.delivery(&ids[1]), ("pending", 0, Some(EPOCH_MS)));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_attempt_without_an_answer_within_the_timeout_fails_and_frees_its_slot() {
    let mut config = config();
    config.attempt_timeout_secs = 2.0;
    config.max_per_endpoint = 1;
    let mut h = Harness::new(config, Reply::status(200));
    h.endpoint("a", 1);
    let ids = h.add_due("a", 2);
    h.sender.script(&url("a"), [Reply::never()]);
    h.start();

    let first = h.request().await;
    let o = h.outcome().await;
    assert_eq!(o.delivery_id, ids[0]);
    assert!(!o.succeeded);
    assert_eq!(
        (o.status_code, o.error.as_deref()),
        (None, Some("timed out"))
    );
    assert!(
        (2_000..=2_010).contains(&o.latency_ms),
        "latency {}",
        o.latency_ms
    );
    assert!(o.next_attempt_at_ms.is_some(), "retried on the schedule");
    assert_eq!(h.sender.in_flight(&url("a")), 0, "the request was dropped");
    // The endpoint's only slot goes to the next delivery.
    let second = h.request().await;
    assert_eq!(second.header("webhook-id"), ids[1]);
    assert!(
        (first.at_ms + 2_000..=first.at_ms + 2_010).contains(&second.at_ms),
        "{} then {}",
        first.at_ms,
        second.at_ms
    );
    assert!(h.outcome().await.succeeded);
    assert_eq!(h.stat(|s| &s.failed), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_non_public_address_is_refused_without_a_request() {
    for allow_private_networks in [false, true] {
        let mut config = config();
        config.allow_private_networks = allow_private_networks;
        let mut h = Harness::new(config, Reply::status(200));
        let mut a = h.endpoint("a", 1);
        a.url = "http://10.0.0.1/hook".into();
        h.store.add_endpoint(a);
        h.add_due("a", 1);
        h.start();

        let o = h.outcome().await;
        if allow_private_networks {
            assert!(o.succeeded);
            assert_eq!(h.sender.sent().len(), 1);
        } else {
            assert!(!o.succeeded);
            let error = o.error.unwrap();
            assert!(error.contains("non-public address (10.0.0.1)"), "{error}");
            assert!(o.next_attempt_at_ms.is_some(), "a failure like any other");
            assert!(h.sender.sent().is_empty(), "nothing was sent");
        }
        h.stop().await;
    }
}

// === concurrency and fairness ===

#[tokio::test(start_paused = true)]
async fn attempts_in_flight_stay_within_both_bounds() {
    let mut config = config();
    config.max_concurrency = 4;
    config.max_per_endpoint = 2;
    let mut h = Harness::new(config, Reply::status(200).after(Duration::from_millis(100)));
    let names = ["a", "b", "c", "d", "e"];
    for (seed, name) in (1..).zip(names) {
        h.endpoint(name, seed);
        h.add_due(name, 10);
    }
    h.start();

    for _ in 0..50 {
        assert!(h.outcome().await.succeeded);
    }
    assert_eq!(h.sender.peak_total(), 4, "max_concurrency, and reached");
    for name in names {
        assert!(h.sender.peak(&url(name)) <= 2, "max_per_endpoint: {name}");
    }
    assert_eq!(h.sender.in_flight_total(), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_busy_endpoint_gets_max_per_endpoint_at_once() {
    let mut config = config();
    config.max_per_endpoint = 3;
    let mut h = Harness::new(config, Reply::status(200).after(Duration::from_millis(100)));
    h.endpoint("a", 1);
    h.add_due("a", 20);
    h.start();

    for _ in 0..20 {
        assert!(h.outcome().await.succeeded);
    }
    assert_eq!(h.sender.peak(&url("a")), 3);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_endpoint_does_not_hold_up_a_healthy_one() {
    let mut config = config();
    config.max_concurrency = 4;
    config.max_per_endpoint = 2;
    // Whatever the dead endpoint's backlog, it holds only its own slots until they time out.
    let mut h = Harness::new(config, Reply::never());
    h.endpoint("dead", 1);
    h.add_due("dead", 300);
    h.endpoint("ok", 2);
    h.add_due("ok", 20);
    h.sender.script(
        &url("ok"),
        std::iter::repeat_n(Reply::status(200).after(Duration::from_millis(10)), 20),
    );
    h.start();

    for _ in 0..20 {
        let o = h.outcome().await;
        assert_eq!(o.endpoint_id, "ok");
        assert!(o.succeeded);
        assert!(h.sender.in_flight(&url("dead")) <= 2);
    }
    // Two slots for 20 deliveries of 10 ms each, long before the first timeout (15 s).
    assert!(h.clock.elapsed_ms() <= 150, "{} ms", h.clock.elapsed_ms());
    assert_eq!(h.sender.peak(&url("dead")), 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn endpoints_take_turns() {
    let mut config = config();
    config.max_concurrency = 1;
    config.max_per_endpoint = 1;
    let mut h = Harness::new(config, Reply::status(200));
    for (seed, name) in (1..).zip(["a", "b", "c"]) {
        h.endpoint(name, seed);
        h.add_due(name, 3);
    }
    h.start();

    let mut order = Vec::new();
    for _ in 0..9 {
        let request = h.request().await;
        order.push(request.url);
        let o = h.outcome().await;
        assert!(o.succeeded);
    }
    for window in order.windows(3) {
        assert!(
            window[0] != window[1] && window[1] != window[2] && window[0] != window[2],
            "round robin: {order:?}"
        );
    }
    h.stop().await;
}

// === finding work ===

#[tokio::test(start_paused = true)]
async fn a_wake_up_scans_the_outbox_at_once() {
    let mut h = Harness::new(config(), Reply::status(200));
    h.endpoint("a", 1);
    h.start();
    h.next_scan().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    h.add_due("a", 1);
    h.outbox_changed.notify_one();
    let request = h.request().await;
    assert!(
        (100..=102).contains(&request.at_ms),
        "sent at {} ms",
        request.at_ms
    );
    assert_eq!(h.stat(|s| &s.found_by_poll), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unannounced_delivery_is_found_by_the_idle_poll_and_counted() {
    let mut h = Harness::new(config(), Reply::status(200));
    h.endpoint("a", 1);
    h.start();
    h.next_scan().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    h.add_due("a", 1);
    let request = h.request().await;
    let poll = IDLE_POLL.as_millis() as i64;
    assert!(
        (poll..=poll + 2).contains(&request.at_ms),
        "sent at {} ms",
        request.at_ms
    );
    assert_eq!(h.stat(|s| &s.found_by_poll), 1, "a missed wake-up, counted");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_manual_retry_of_a_failed_delivery_is_one_attempt_made_at_once() {
    let mut config = config();
    config.retry_schedule_secs = vec![5.0];
    let mut h = Harness::new(config, Reply::status(500));
    h.endpoint("a", 1);
    let id = h.add_due("a", 1).remove(0);
    h.start();
    h.outcome().await;
    assert_eq!(h.outcome().await.next_attempt_at_ms, None);
    assert_eq!(h.store.delivery(&id).0, "failed");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // As `POST .../deliveries/{id}/retry` does; the store wakes the dispatcher.
    let asked = h.clock.now_ms();
    h.store
        .retry_delivery("a".into(), id.clone(), asked)
        .await
        .unwrap();
    let o = h.outcome().await;
    assert!(
        (asked..=asked + 2).contains(&o.at_ms),
        "at once: {}",
        o.at_ms
    );
    assert_eq!(
        h.store.delivery(&id),
        ("failed", 3, None),
        "failed again at once: the schedule is used up"
    );
    assert!(h.sent_during(HOUR).await.is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_delivery_due_later_is_sent_when_it_falls_due_without_a_wake_up() {
    let mut h = Harness::new(config(), Reply::status(200));
    h.endpoint("a", 1);
    // Between two idle polls, so only the known due time can explain a timely attempt.
    h.store
        .add_delivery("a", "msg_later", "{}", EPOCH_MS + 30_500);
    h.start();

    let request = h.request().await;
    assert!(
        (30_500..=30_510).contains(&request.at_ms),
        "sent at {} ms",
        request.at_ms
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_endpoints_queued_deliveries_are_read_again_with_its_new_url_and_secret() {
    let mut config = config();
    config.max_per_endpoint = 1;
    let mut h = Harness::new(config, Reply::status(200));
    let a = h.endpoint("a", 1);
    let ids = h.add_due("a", 3);
    let gate = Arc::new(Semaphore::new(0));
    h.sender
        .script(&url("a"), [Reply::status(200).gated(&gate)]);
    h.start();

    // The first is in flight; the other two wait in the lane with the old URL and secret.
    let first = h.request().await;
    assert_eq!(first.url, url("a"));
    // `updated_at` (ms) is the version the dispatcher compares: let it move.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut changed = a;
    changed.url = url("a-new");
    changed.secret = secret(2);
    h.update(changed).await;
    h.next_scan().await;
    gate.add_permits(1);

    for id in &ids[1..] {
        let request = h.request().await;
        assert_eq!(request.header("webhook-id"), id);
        assert_eq!(request.url, url("a-new"));
        verify(&request, &secret(2)).expect("signed with the new secret");
        assert!(verify(&request, &secret(1)).is_err(), "not the old one");
    }
    for _ in 0..3 {
        assert!(h.outcome().await.succeeded);
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_disabled_endpoints_queued_deliveries_wait_until_it_is_enabled() {
    let mut config = config();
    config.max_per_endpoint = 1;
    let mut h = Harness::new(config, Reply::status(200));
    let a = h.endpoint("a", 1);
    let ids = h.add_due("a", 3);
    let gate = Arc::new(Semaphore::new(0));
    h.sender
        .script(&url("a"), [Reply::status(200).gated(&gate)]);
    h.start();

    h.request().await;
    let mut disabled = a.clone();
    disabled.enabled = false;
    h.update(disabled).await;
    h.next_scan().await;
    gate.add_permits(1);
    // The attempt in flight finishes; the queued ones are not sent.
    assert!(h.outcome().await.succeeded);
    assert!(h.sent_during(HOUR).await.is_empty());
    assert_eq!(h.store.delivery(&ids[1]).0, "pending");

    let mut enabled = a;
    enabled.enabled = true;
    h.update(enabled).await;
    let mut rest: Vec<_> = Vec::new();
    for _ in 1..3 {
        rest.push(h.request().await.header("webhook-id").to_owned());
    }
    rest.sort();
    assert_eq!(rest, ids[1..]);
    h.stop().await;
}

// === signatures ===

#[tokio::test(start_paused = true)]
async fn every_attempt_is_signed_and_keeps_its_webhook_id() {
    let mut h = Harness::new(config(), Reply::status(200));
    h.endpoint("a", 1);
    let id = h.add_due("a", 1).remove(0);
    h.sender.script(&url("a"), [Reply::status(500)]);
    h.start();

    let attempts = [h.request().await, h.request().await];
    for request in &attempts {
        assert_eq!(request.header("webhook-id"), id, "stable across attempts");
        assert_eq!(
            request.header("webhook-timestamp"),
            ((EPOCH_MS + request.at_ms) / 1000).to_string(),
            "the attempt's own time"
        );
        assert_eq!(request.header("content-type"), "application/json");
        assert_eq!(&request.body[..], br#"{"endpoint":"a","n":0}"#);
        assert_eq!(
            request.header("webhook-signature").split(' ').count(),
            1,
            "one secret, one signature"
        );
        verify(request, &secret(1)).expect("verifies with the endpoint's secret");
        assert!(matches!(
            verify(request, &secret(7)),
            Err(WebhookError::Signature)
        ));
    }
    assert_ne!(
        attempts[0].header("webhook-timestamp"),
        attempts[1].header("webhook-timestamp")
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_previous_secret_signs_too_until_the_rotation_overlap_ends() {
    let mut config = config();
    config.retry_schedule_secs = vec![100.0];
    let mut h = Harness::new(config, Reply::status(500));
    let mut a = h.endpoint("a", 2);
    a.previous_secret = Some(secret(1));
    a.previous_secret_until_ms = Some(EPOCH_MS + 60_000);
    h.store.add_endpoint(a);
    h.add_due("a", 1);
    h.start();

    let during = h.request().await;
    assert_eq!(
        during.header("webhook-signature").split(' ').count(),
        2,
        "one per secret"
    );
    verify(&during, &secret(2)).expect("the new secret");
    verify(&during, &secret(1)).expect("the previous secret, during the overlap");

    let after = h.request().await;
    assert!(after.at_ms > 60_000, "retried at {} ms", after.at_ms);
    verify(&after, &secret(2)).expect("the new secret");
    assert!(
        verify(&after, &secret(1)).is_err(),
        "the previous secret no longer signs"
    );
    h.stop().await;
}

// === shutdown ===

#[tokio::test(start_paused = true)]
async fn at_shutdown_attempts_in_flight_finish_and_nothing_new_starts() {
    let mut config = config();
    config.max_per_endpoint = 1;
    let mut h = Harness::new(config, Reply::status(200).after(Duration::from_secs(2)));
    h.endpoint("a", 1);
    let ids = h.add_due("a", 3);
    h.start();

    let first = h.request().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.shutdown.cancel();
    tokio::time::timeout(Duration::from_millis(10), h.run.take().unwrap())
        .await
        .expect("the run loop ends at once")
        .unwrap();
    h.tracker.close();
    tokio::time::timeout(Duration::from_secs(5), h.tracker.wait())
        .await
        .expect("the attempt in flight ends within the grace");
    let ended = h.clock.elapsed_ms();
    assert!(
        (first.at_ms + 2_000..=first.at_ms + 2_002).contains(&ended),
        "it ran its course: {ended} ms"
    );
    let o = h.outcome().await;
    assert!(o.succeeded, "and its outcome is recorded");
    assert_eq!(o.delivery_id, ids[0]);

    assert!(
        h.sent_during(HOUR).await.is_empty(),
        "nothing new started after cancel"
    );
    assert_eq!(h.sender.sent().len(), 1);
    for id in &ids[1..] {
        assert_eq!(h.store.delivery(id), ("pending", 0, Some(EPOCH_MS)));
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_error_is_a_failure_logged_with_its_reason() {
    let mut h = Harness::new(config(), Reply::status(200));
    h.endpoint("a", 1);
    let id = h.add_due("a", 1).remove(0);
    h.sender.script(
        &url("a"),
        [Reply::error("cannot connect: connection refused")],
    );
    h.start();

    let o = h.outcome().await;
    assert!(!o.succeeded);
    assert_eq!(
        (o.status_code, o.error.as_deref()),
        (None, Some("cannot connect: connection refused"))
    );
    assert!(o.next_attempt_at_ms.is_some());
    assert!(h.outcome().await.succeeded, "the retry gets through");
    assert_eq!(h.store.delivery(&id), ("succeeded", 2, None));
    h.stop().await;
}
