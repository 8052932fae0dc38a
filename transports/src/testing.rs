//! Test doubles for the transports' unit tests: a scripted in-memory hub, tokens, events, requests.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use http::request::Parts;
use http_body_util::BodyExt;
use serde_json::value::RawValue;
use switchyard_protocol::{ChannelName, Cursor, ErrorCode, Position};
use tokio::sync::{Notify, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Context, TransportConfig,
    access::{Grant, Verifier},
    http::Body,
    hub::{Event, Hub, HubError, Opened, Sink, StartFrom},
    metrics::TransportMetrics,
    params::ParamError,
};

/// The publish time every test event carries.
pub(crate) const TIME: &str = "2026-01-02T03:04:05.678Z";

/// The epoch of every test history unless a test says otherwise.
pub(crate) const EPOCH: u64 = 1;

/// Longest a test waits for anything. The clock is paused in these tests, so a wait that
/// never ends costs no real time: the runtime jumps from timer to timer until this fires.
const WAIT: Duration = Duration::from_secs(3600);

/// Awaits `f`, failing the test with `what` if it takes longer than [`WAIT`].
pub(crate) async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Lets every other task run until it waits on something: with the clock paused, this
/// sleep ends only once the runtime is otherwise idle.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A channel name.
pub(crate) fn name(channel: &str) -> ChannelName {
    ChannelName::new(channel).expect("valid test channel")
}

/// A position in the test epoch.
pub(crate) fn pos(offset: u64) -> Position {
    Position {
        epoch: EPOCH,
        offset,
    }
}

/// Event `offset` of `channel`: type `tick`, data `{"n": offset}`.
pub(crate) fn event(channel: &str, offset: u64) -> Arc<Event> {
    event_at(channel, pos(offset), &format!("{{\"n\":{offset}}}"))
}

/// Event `offset` of `channel` whose data is a string of `bytes` characters.
pub(crate) fn big_event(channel: &str, offset: u64, bytes: usize) -> Arc<Event> {
    event_at(channel, pos(offset), &format!("\"{}\"", "x".repeat(bytes)))
}

/// An event at `position` with `data` (JSON text).
pub(crate) fn event_at(channel: &str, position: Position, data: &str) -> Arc<Event> {
    let data = RawValue::from_string(data.to_owned()).expect("valid JSON");
    Arc::new(Event::new(name(channel), position, "tick", TIME, &data))
}

/// The cursor a consumer holds after reaching each `(channel, offset)` of the test epoch.
pub(crate) fn cursor(positions: &[(&str, u64)]) -> String {
    let mut cursor = Cursor::new();
    for (channel, offset) in positions {
        cursor.set(name(channel), pos(*offset));
    }
    cursor.encode()
}

/// The envelope a consumer receives for [`event`]`(channel, offset)`, written out by hand.
pub(crate) fn envelope(channel: &str, offset: u64) -> serde_json::Value {
    serde_json::json!({
        "id": format!("{channel}:{offset}"),
        "channel": channel,
        "offset": offset,
        "cursor": cursor(&[(channel, offset)]),
        "type": "tick",
        "time": TIME,
        "data": {"n": offset},
    })
}

// === impl FakeHub ===

/// An in-memory [`Hub`] that a test scripts: it answers each subscribe as told (by default:
/// from where it was asked, nothing to replay), records every subscribe and unsubscribe,
/// and offers the events a test publishes to the registered sinks, as the real hubs do.
#[derive(Default)]
pub(crate) struct FakeHub {
    state: Mutex<State>,
    /// Woken on every subscribe and unsubscribe, for [`FakeHub::until_sinks`].
    changed: Notify,
}

#[derive(Default)]
struct State {
    sinks: HashMap<ChannelName, Vec<Sink>>,
    answers: HashMap<ChannelName, VecDeque<Result<Opened, HubError>>>,
    holds: HashMap<ChannelName, oneshot::Receiver<()>>,
    subscribed: Vec<(ChannelName, StartFrom)>,
    unsubscribed: Vec<ChannelName>,
}

impl FakeHub {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The next subscribe of `channel` starts after `start`, reports `reset`, and replays
    /// `replay`.
    pub(crate) fn answer(
        &self,
        channel: &str,
        start: Position,
        reset: Option<u64>,
        replay: Vec<Arc<Event>>,
    ) {
        self.push_answer(
            channel,
            Ok(Opened {
                start,
                reset,
                replay,
            }),
        );
    }

    /// The next subscribe of `channel` fails with `error`.
    pub(crate) fn fail(&self, channel: &str, error: HubError) {
        self.push_answer(channel, Err(error));
    }

    fn push_answer(&self, channel: &str, answer: Result<Opened, HubError>) {
        let mut state = self.state.lock().expect("not poisoned");
        state
            .answers
            .entry(name(channel))
            .or_default()
            .push_back(answer);
    }

    /// The next subscribe of `channel` registers its sink, then waits for the returned
    /// sender to fire (or to be dropped) before answering: events published meanwhile
    /// reach the sink while the subscriber still waits for its replay.
    pub(crate) fn hold(&self, channel: &str) -> oneshot::Sender<()> {
        let (release, held) = oneshot::channel();
        let mut state = self.state.lock().expect("not poisoned");
        state.holds.insert(name(channel), held);
        release
    }

    /// Offers `event` to every sink of its channel, dropping those that refuse it (gone,
    /// or overflowed); returns how many took it.
    pub(crate) fn publish(&self, event: &Arc<Event>) -> usize {
        let mut state = self.state.lock().expect("not poisoned");
        let sinks = state.sinks.entry(event.channel().clone()).or_default();
        sinks.retain(|sink| sink.offer(event));
        sinks.len()
    }

    /// Interrupts the live feed of every subscriber of `channel` ([`Sink::disconnect`]).
    pub(crate) fn interrupt(&self, channel: &str) {
        let mut state = self.state.lock().expect("not poisoned");
        for sink in state.sinks.remove(channel).unwrap_or_default() {
            sink.disconnect();
        }
    }

    /// A registered sink of `channel`, to offer it events the hub no longer routes (an
    /// event in flight when its subscriber unsubscribed).
    pub(crate) fn sink(&self, channel: &str) -> Sink {
        let state = self.state.lock().expect("not poisoned");
        state
            .sinks
            .get(channel)
            .and_then(|s| s.first())
            .cloned()
            .expect("a subscriber")
    }

    /// Every subscribe so far: channel and where it asked to start.
    pub(crate) fn subscribed(&self) -> Vec<(String, StartFrom)> {
        let state = self.state.lock().expect("not poisoned");
        state
            .subscribed
            .iter()
            .map(|(c, from)| (c.to_string(), *from))
            .collect()
    }

    /// Every unsubscribe so far.
    pub(crate) fn unsubscribed(&self) -> Vec<String> {
        let state = self.state.lock().expect("not poisoned");
        state.unsubscribed.iter().map(ToString::to_string).collect()
    }

    /// How many sinks `channel` has.
    pub(crate) fn sinks(&self, channel: &str) -> usize {
        let state = self.state.lock().expect("not poisoned");
        state.sinks.get(channel).map_or(0, Vec::len)
    }

    /// Waits until `channel` has `n` sinks.
    pub(crate) async fn until_sinks(&self, channel: &str, n: usize) {
        within(&format!("{n} subscribers of {channel:?}"), async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.sinks(channel) == n {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
}

impl Hub for FakeHub {
    fn subscribe<'a>(
        &'a self,
        channel: &'a ChannelName,
        from: StartFrom,
        sink: &'a Sink,
    ) -> BoxFuture<'a, Result<Opened, HubError>> {
        Box::pin(async move {
            let (answer, held) = {
                let mut state = self.state.lock().expect("not poisoned");
                state.subscribed.push((channel.clone(), from));
                let answer = state
                    .answers
                    .get_mut(channel)
                    .and_then(VecDeque::pop_front)
                    .unwrap_or_else(|| {
                        let start = match from {
                            StartFrom::Now => pos(0),
                            StartFrom::Offset(offset) => pos(offset),
                            StartFrom::Position(p) => p,
                        };
                        Ok(Opened {
                            start,
                            reset: None,
                            replay: Vec::new(),
                        })
                    });
                if answer.is_ok() {
                    state
                        .sinks
                        .entry(channel.clone())
                        .or_default()
                        .push(sink.clone());
                }
                (answer, state.holds.remove(channel))
            };
            self.changed.notify_waiters();
            if let Some(held) = held {
                let _ = held.await;
            }
            answer
        })
    }

    fn unsubscribe(&self, channel: &ChannelName, sink_id: u64) {
        {
            let mut state = self.state.lock().expect("not poisoned");
            state.unsubscribed.push(channel.clone());
            if let Some(sinks) = state.sinks.get_mut(channel) {
                sinks.retain(|s| s.id() != sink_id);
            }
        }
        self.changed.notify_waiters();
    }
}

// === impl Tokens ===

/// A [`Verifier`] that knows a fixed set of tokens.
pub(crate) struct Tokens(pub(crate) HashMap<&'static str, Grant>);

impl Verifier for Tokens {
    fn verify(&self, token: &str) -> Result<Grant, ParamError> {
        self.0
            .get(token)
            .cloned()
            .ok_or_else(|| ParamError::new(ErrorCode::Unauthorized, "unknown token"))
    }
}

/// A context around `hub` in open mode (no verifier).
pub(crate) fn context(hub: &Arc<FakeHub>, config: TransportConfig) -> Arc<Context> {
    build_context(hub, config, None)
}

/// A context around `hub` that checks credentials against `tokens`.
pub(crate) fn context_with_tokens(
    hub: &Arc<FakeHub>,
    config: TransportConfig,
    tokens: Tokens,
) -> Arc<Context> {
    build_context(hub, config, Some(Arc::new(tokens)))
}

fn build_context(
    hub: &Arc<FakeHub>,
    config: TransportConfig,
    verifier: Option<Arc<dyn Verifier>>,
) -> Arc<Context> {
    Arc::new(Context {
        hub: Arc::clone(hub) as Arc<dyn Hub>,
        config,
        metrics: Arc::new(TransportMetrics::default()),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        verifier,
        subscriptions: crate::allowance::SubscriptionBudgets::new(0, 0),
        namespaces: Default::default(),
        occupancy: Default::default(),
        presence: None,
        publisher: None,
    })
}

/// The value of one series of the transports' metrics (`name{labels}`), as rendered.
pub(crate) fn metric(ctx: &Context, series: &str) -> String {
    let mut out = String::new();
    ctx.metrics.render(&mut out);
    let prefix = format!("{series} ");
    out.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no series {series}"))
        .to_owned()
}

/// The head of a `GET` request to `uri` with `headers`, as the server hands it to a transport.
pub(crate) fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut req = http::Request::get(uri);
    for (key, value) in headers {
        req = req.header(*key, *value);
    }
    req.body(()).expect("valid request").into_parts().0
}

/// The next data frame of a streaming body as text; `None` once the body ended.
pub(crate) async fn next_chunk(body: &mut Body) -> Option<String> {
    let frame = within("a body frame", body.frame()).await?;
    let data = frame
        .expect("infallible")
        .into_data()
        .expect("a data frame");
    Some(String::from_utf8(data.to_vec()).expect("UTF-8"))
}

/// A whole (non-streaming) body as JSON.
pub(crate) async fn json_body(body: Body) -> serde_json::Value {
    let bytes = within("the body", body.collect())
        .await
        .expect("infallible")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON body")
}
