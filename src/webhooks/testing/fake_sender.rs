//! A scripted receiver behind [`WebhookSender`]: it records every request and answers each
//! URL from its script (status, headers, error, delay, or never), counting attempts in
//! flight so tests can check the concurrency bounds.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{FutureExt, future::BoxFuture};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::{Semaphore, mpsc};

use super::TestClock;
use crate::webhooks::sender::{WebhookRequest, WebhookResponse, WebhookSender};

/// A request as the receiver saw it.
#[derive(Clone, Debug)]
pub(crate) struct SentRequest {
    pub(crate) url: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// [`TestClock::elapsed_ms`] when it arrived.
    pub(crate) at_ms: i64,
}

impl SentRequest {
    /// A header's value as text.
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("ASCII")
    }
}

#[derive(Clone, Debug)]
enum Answer {
    Status(StatusCode, HeaderMap),
    Error(String),
    Never,
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    answer: Answer,
    after: Duration,
    /// Answer only once a permit is added (then after `after`).
    gate: Option<Arc<Semaphore>>,
}

impl Reply {
    /// Answers with `status`.
    pub(crate) fn status(status: u16) -> Self {
        Self {
            answer: Answer::Status(
                StatusCode::from_u16(status).expect("a status"),
                HeaderMap::new(),
            ),
            after: Duration::ZERO,
            gate: None,
        }
    }

    /// Fails without an answer (a connection error).
    pub(crate) fn error(text: &str) -> Self {
        Self {
            answer: Answer::Error(text.into()),
            ..Self::status(200)
        }
    }

    /// Never answers.
    pub(crate) fn never() -> Self {
        Self {
            answer: Answer::Never,
            ..Self::status(200)
        }
    }

    /// With this header.
    pub(crate) fn header(mut self, name: &'static str, value: &'static str) -> Self {
        if let Answer::Status(_, headers) = &mut self.answer {
            headers.insert(name, HeaderValue::from_static(value));
        }
        self
    }

    /// Answers only after `delay`.
    pub(crate) fn after(mut self, delay: Duration) -> Self {
        self.after = delay;
        self
    }

    /// Answers only once `gate` gives it a permit.
    pub(crate) fn gated(mut self, gate: &Arc<Semaphore>) -> Self {
        self.gate = Some(Arc::clone(gate));
        self
    }
}

#[derive(Debug)]
struct State {
    /// Replies per URL, used in order; then `default`.
    scripts: HashMap<String, VecDeque<Reply>>,
    default: Reply,
    in_flight: HashMap<String, usize>,
    in_flight_total: usize,
    peak: HashMap<String, usize>,
    peak_total: usize,
    sent: Vec<SentRequest>,
}

/// A fake receiver for every URL.
pub(crate) struct FakeSender {
    clock: TestClock,
    state: Mutex<State>,
    requests_tx: mpsc::UnboundedSender<SentRequest>,
    requests_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<SentRequest>>,
}

/// Counts a request in flight until its future ends or is dropped (timed out).
struct InFlight<'a> {
    sender: &'a FakeSender,
    url: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.sender.state();
        *state.in_flight.get_mut(&self.url).expect("counted") -= 1;
        state.in_flight_total -= 1;
    }
}

impl FakeSender {
    /// A receiver that answers `default` unless a URL has a script.
    pub(crate) fn new(clock: TestClock, default: Reply) -> Self {
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        Self {
            clock,
            state: Mutex::new(State {
                scripts: HashMap::new(),
                default,
                in_flight: HashMap::new(),
                in_flight_total: 0,
                peak: HashMap::new(),
                peak_total: 0,
                sent: Vec::new(),
            }),
            requests_tx,
            requests_rx: tokio::sync::Mutex::new(requests_rx),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Answers the next requests to `url` with `replies`, in order.
    pub(crate) fn script(&self, url: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state()
            .scripts
            .entry(url.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Answers every request without a script with `reply`.
    pub(crate) fn set_default(&self, reply: Reply) {
        self.state().default = reply;
    }

    /// The next request received, waiting at most `within` (Tokio time) for it.
    pub(crate) async fn next_request(&self, within: Duration) -> Option<SentRequest> {
        let mut rx = self.requests_rx.lock().await;
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }

    /// Every request received so far.
    pub(crate) fn sent(&self) -> Vec<SentRequest> {
        self.state().sent.clone()
    }

    /// Requests in flight to `url` now.
    pub(crate) fn in_flight(&self, url: &str) -> usize {
        self.state().in_flight.get(url).copied().unwrap_or(0)
    }

    /// Requests in flight now.
    pub(crate) fn in_flight_total(&self) -> usize {
        self.state().in_flight_total
    }

    /// The most requests ever in flight to `url` at once.
    pub(crate) fn peak(&self, url: &str) -> usize {
        self.state().peak.get(url).copied().unwrap_or(0)
    }

    /// The most requests ever in flight at once.
    pub(crate) fn peak_total(&self) -> usize {
        self.state().peak_total
    }
}

impl WebhookSender for FakeSender {
    fn send(&self, request: WebhookRequest) -> BoxFuture<'_, Result<WebhookResponse, String>> {
        let url = request.url.to_string();
        let reply = {
            let mut state = self.state();
            let n = state.in_flight.entry(url.clone()).or_default();
            *n += 1;
            let n = *n;
            let peak = state.peak.entry(url.clone()).or_default();
            *peak = (*peak).max(n);
            state.in_flight_total += 1;
            state.peak_total = state.peak_total.max(state.in_flight_total);
            let sent = SentRequest {
                url: url.clone(),
                headers: request.headers,
                body: request.body,
                at_ms: self.clock.elapsed_ms(),
            };
            state.sent.push(sent.clone());
            let _ = self.requests_tx.send(sent);
            let scripted = state.scripts.get_mut(&url).and_then(VecDeque::pop_front);
            scripted.unwrap_or_else(|| state.default.clone())
        };
        let guard = InFlight { sender: self, url };
        async move {
            let _guard = guard;
            if let Some(gate) = &reply.gate {
                gate.acquire().await.expect("never closed").forget();
            }
            tokio::time::sleep(reply.after).await;
            match reply.answer {
                Answer::Status(status, headers) => Ok(WebhookResponse { status, headers }),
                Answer::Error(text) => Err(text),
                Answer::Never => std::future::pending().await,
            }
        }
        .boxed()
    }
}
