//! One consumer connection's bounded queue of live events: the hub pushes through a
//! [`Sink`], the connection's task takes from its [`Inbox`]. Past the capacity the
//! consumer is flagged slow (never blocking the publisher) and its connection is closed.
//!
//! A mutex-guarded deque with an atomic waker rather than tokio's mpsc: an idle inbox
//! costs ~150 bytes instead of ~700 (the channel's semaphore, notifiers and first 32-slot
//! block), which matters at tens of thousands of idle connections; and the deque only
//! grows while events are actually waiting.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Poll,
};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    direct::{Direct, DirectIo, Gate, SharedStream},
    hub::Event,
};

static NEXT_SINK_ID: AtomicU64 = AtomicU64::new(1);

/// Capacity kept by an emptied queue; a burst's larger buffer is given back.
const KEEP_CAPACITY: usize = 16;

/// What the inbox's one lock guards: the queue, and who may write to a direct connection
/// (deciding both under one lock keeps events in order, see [`crate::direct`]).
#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Arc<Event>>,
    gate: Gate,
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// The inbox's task, woken by a push or an overflow.
    waker: AtomicWaker,
    overflowed: AtomicBool,
    /// The "overflow" was [`Sink::disconnect`]: the hub interrupted the feed.
    interrupted: AtomicBool,
    /// Wakes [`OverflowSignal::wait`] (which runs while the inbox is borrowed).
    overflow_notify: Notify,
    /// Fired too, so the connection's owner can close a consumer whose session is not
    /// being polled (an HTTP body that hyper stopped pulling because the socket is full).
    abort: Option<CancellationToken>,
    /// The inbox was dropped: the consumer is gone.
    closed: AtomicBool,
    /// The consumer's connection, when the fan-out may write to it directly while it is
    /// idle instead of queueing (see [`crate::direct`]).
    direct: Option<DirectIo>,
    /// A direct write left a frame's tail: the session must write it (`Received::Flush`).
    flush: AtomicBool,
}

impl Shared {
    fn overflow(&self) {
        self.overflowed.store(true, Ordering::Release);
        self.overflow_notify.notify_one();
        self.waker.wake();
        if let Some(abort) = &self.abort {
            abort.cancel();
        }
    }

    fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Why the stream ended, once it did.
    fn ended(&self) -> Received {
        if self.interrupted.load(Ordering::Acquire) {
            Received::Interrupted
        } else {
            Received::Overflowed
        }
    }

    /// Takes the next queued event; the session then holds the connection's writes (a
    /// direct write of a later event must not overtake it).
    fn pop(&self) -> Option<Arc<Event>> {
        let mut state = self.lock();
        let event = state.queue.pop_front();
        if event.is_some() {
            state.gate.claim();
        }
        if state.queue.is_empty() && state.queue.capacity() > KEEP_CAPACITY {
            state.queue.shrink_to(KEEP_CAPACITY);
        }
        event
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }
}

/// The hub's handle on one consumer connection's inbox.
#[derive(Clone, Debug)]
pub struct Sink {
    id: u64,
    shared: Arc<Shared>,
}

impl Sink {
    /// Identifies the sink for [`crate::hub::Hub::unsubscribe`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Offers an event without waiting. Returns `false` when the hub should drop this sink:
    /// the consumer is gone, or its inbox is full (it is then flagged as a slow consumer and
    /// its connection is closed; it resumes from its cursor).
    pub fn offer(&self, event: &Arc<Event>) -> bool {
        self.offer_with(event, true)
    }

    /// [`Sink::offer`], writing to an idle direct connection only when `direct` (the
    /// channel's [`crate::fanout::Pace`] decides); queued otherwise.
    pub fn offer_with(&self, event: &Arc<Event>, direct: bool) -> bool {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) || shared.is_overflowed() {
            return false;
        }
        {
            let mut state = shared.lock();
            // Nothing queued before it: an idle connection takes it straight away.
            if direct
                && state.queue.is_empty()
                && let Some(direct) = &shared.direct
            {
                match direct.deliver(&mut state.gate, event) {
                    Direct::Written => return true,
                    Direct::Partial => {
                        drop(state);
                        shared.flush.store(true, Ordering::Release);
                        shared.waker.wake();
                        return true;
                    }
                    Direct::NotNow => {}
                }
            }
            if state.queue.len() >= shared.capacity {
                drop(state);
                shared.overflow();
                return false;
            }
            state.queue.push_back(Arc::clone(event));
        }
        shared.waker.wake();
        true
    }

    /// Ends the consumer's stream as an overflow does (its connection is closed and it
    /// resumes from its cursor), for a hub that can no longer promise it a gap-free stream:
    /// its live feed was interrupted and the events it missed are no longer retained, or
    /// the channel's history changed epoch. Its resubscription then reports the `reset`.
    /// The consumer is told [`Received::Interrupted`], not that it was too slow.
    pub fn disconnect(&self) {
        self.shared.interrupted.store(true, Ordering::Release);
        self.shared.overflow();
    }

    /// Whether the consumer behind this sink has gone away.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

/// What [`Inbox::recv`] yields.
#[derive(Debug)]
pub enum Received {
    /// The next live event.
    Event(Arc<Event>),
    /// A direct write left part of a frame unwritten: flush the connection.
    Flush,
    /// The inbox overflowed: the consumer is too slow and must be disconnected.
    Overflowed,
    /// The hub interrupted the feed ([`Sink::disconnect`]): the consumer must reconnect
    /// and resume from its cursor (getting a `reset` if events were lost).
    Interrupted,
}

/// One consumer connection's bounded queue of live events, for all its channels.
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<Shared>,
}

/// Creates a sink and its inbox holding at most `capacity` events; on overflow, `abort`
/// (when given) is cancelled as well.
pub fn new_pair(capacity: usize, abort: Option<CancellationToken>) -> (Sink, Inbox) {
    new_pair_direct(capacity, abort, None)
}

/// [`new_pair`] for a connection the fan-out may write to directly (see [`crate::direct`]).
pub fn new_pair_direct(
    capacity: usize,
    abort: Option<CancellationToken>,
    direct: Option<DirectIo>,
) -> (Sink, Inbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        capacity: capacity.max(1),
        waker: AtomicWaker::new(),
        overflowed: AtomicBool::new(false),
        interrupted: AtomicBool::new(false),
        overflow_notify: Notify::new(),
        abort,
        closed: AtomicBool::new(false),
        direct,
        flush: AtomicBool::new(false),
    });
    let sink = Sink {
        id: NEXT_SINK_ID.fetch_add(1, Ordering::Relaxed),
        shared: Arc::clone(&shared),
    };
    (sink, Inbox { shared })
}

impl Inbox {
    /// Waits for the next event; an overflow takes precedence over queued events.
    ///
    /// # Cancel safety
    /// Cancel safe: an event is only taken in the poll that returns it.
    pub async fn recv(&mut self) -> Received {
        let shared = &*self.shared;
        poll_fn(|cx| {
            if shared.is_overflowed() {
                return Poll::Ready(shared.ended());
            }
            if let Some(event) = shared.pop() {
                return Poll::Ready(Received::Event(event));
            }
            if shared.flush.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Received::Flush);
            }
            // Register, then look again: a push between the first look and the
            // registration would otherwise find no waker to wake.
            shared.waker.register(cx.waker());
            if shared.is_overflowed() {
                return Poll::Ready(shared.ended());
            }
            if let Some(event) = shared.pop() {
                return Poll::Ready(Received::Event(event));
            }
            if shared.flush.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Received::Flush);
            }
            Poll::Pending
        })
        .await
    }

    /// Takes an already queued event without waiting (for batching writes).
    pub fn try_recv(&mut self) -> Option<Arc<Event>> {
        if self.shared.is_overflowed() {
            return None;
        }
        self.shared.pop()
    }

    /// The session is about to write something of its own: direct writes wait (see
    /// [`crate::direct`]). A no-op without a direct connection.
    pub fn claim_writes(&self) {
        if self.shared.direct.is_some() {
            self.shared.lock().gate.claim();
        }
    }

    /// The session wrote everything it had: if nothing is queued, direct writes may go
    /// again. Decided under the queue's lock, so an event queued meanwhile keeps the
    /// session in charge until it is written.
    pub fn release_writes(&self) {
        if self.shared.direct.is_some() {
            let mut state = self.shared.lock();
            if state.queue.is_empty() && !self.shared.flush.load(Ordering::Acquire) {
                state.gate.release();
            }
        }
    }

    /// The session's stream over its direct connection (`None` without one), reading
    /// `read_ahead` first.
    pub fn direct_stream(&self, read_ahead: &[u8]) -> Option<SharedStream> {
        self.shared.direct.as_ref()?;
        Some(SharedStream::new(
            Link(Arc::clone(&self.shared)),
            read_ahead,
        ))
    }

    /// A handle that resolves once this inbox overflows, usable while the inbox itself is
    /// borrowed (to abandon a write that a slow peer is blocking).
    pub fn overflow_signal(&self) -> OverflowSignal {
        OverflowSignal(Arc::clone(&self.shared))
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // Events still queued die with the connection, not with the last sink clone.
        self.shared.lock().queue.clear();
    }
}

/// A direct connection's session side reaching its gate and socket (for [`SharedStream`]).
#[derive(Debug)]
pub(crate) struct Link(Arc<Shared>);

impl Link {
    /// The connection (a link exists only for an inbox with one).
    pub(crate) fn io(&self) -> &DirectIo {
        self.0
            .direct
            .as_ref()
            .expect("a link has a direct connection")
    }

    /// Runs `f` with the connection and its gate, under the inbox's lock.
    pub(crate) fn with_gate<T>(&self, f: impl FnOnce(&DirectIo, &mut Gate) -> T) -> T {
        let mut state = self.0.lock();
        f(self.io(), &mut state.gate)
    }
}

/// Resolves when an inbox overflows; see [`Inbox::overflow_signal`].
#[derive(Clone, Debug)]
pub struct OverflowSignal(Arc<Shared>);

impl OverflowSignal {
    /// Waits for the overflow.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) {
        loop {
            let notified = self.0.overflow_notify.notified();
            if self.0.is_overflowed() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the end was the hub's interruption rather than an overflow.
    pub fn interrupted(&self) -> bool {
        matches!(self.0.ended(), Received::Interrupted)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::value::RawValue;
    use switchyard_protocol::{ChannelName, Position};

    use super::*;

    fn event(offset: u64) -> Arc<Event> {
        Arc::new(Event::new(
            ChannelName::new("c").unwrap(),
            Position { epoch: 1, offset },
            "t",
            "2026-11-22T00:00:00.000Z",
            &RawValue::from_string(offset.to_string()).unwrap(),
        ))
    }

    #[tokio::test]
    async fn delivers_in_order_and_wakes_a_waiting_reader() {
        let (sink, mut inbox) = new_pair(8, None);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 3 {
                match inbox.recv().await {
                    Received::Event(e) => got.push(e.offset()),
                    other => panic!("{other:?}"),
                }
            }
            got
        });
        tokio::task::yield_now().await;
        for n in 1..=3 {
            assert!(sink.offer(&event(n)));
        }
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, [1, 2, 3]);
    }

    #[tokio::test]
    async fn overflow_flags_aborts_and_takes_precedence() {
        let abort = CancellationToken::new();
        let (sink, mut inbox) = new_pair(2, Some(abort.clone()));
        let signal = inbox.overflow_signal();
        assert!(sink.offer(&event(1)));
        assert!(sink.offer(&event(2)));
        assert!(!sink.offer(&event(3)), "the third is past the capacity");
        assert!(abort.is_cancelled());
        tokio::time::timeout(Duration::from_secs(5), signal.wait())
            .await
            .unwrap();
        assert!(matches!(inbox.recv().await, Received::Overflowed));
        assert!(inbox.try_recv().is_none());
        assert!(
            !sink.offer(&event(4)),
            "an overflowed sink takes nothing more"
        );
    }

    #[tokio::test]
    async fn a_hub_disconnect_says_interrupted_not_overflowed() {
        let (sink, mut inbox) = new_pair(4, None);
        let signal = inbox.overflow_signal();
        assert!(sink.offer(&event(1)));
        sink.disconnect();
        tokio::time::timeout(Duration::from_secs(5), signal.wait())
            .await
            .unwrap();
        assert!(signal.interrupted());
        assert!(matches!(inbox.recv().await, Received::Interrupted));
        let (full, mut slow) = new_pair(1, None);
        assert!(full.offer(&event(1)));
        assert!(!full.offer(&event(2)));
        assert!(!slow.overflow_signal().interrupted());
        assert!(matches!(slow.recv().await, Received::Overflowed));
    }

    #[tokio::test]
    async fn a_dropped_inbox_closes_its_sinks() {
        let (sink, inbox) = new_pair(4, None);
        assert!(sink.offer(&event(1)));
        assert!(!sink.is_closed());
        drop(inbox);
        assert!(sink.is_closed());
        assert!(!sink.offer(&event(2)));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_back_a_burst_buffer() {
        let (sink, mut inbox) = new_pair(1024, None);
        for n in 1..=500 {
            assert!(sink.offer(&event(n)));
        }
        for n in 1..=500 {
            assert_eq!(inbox.try_recv().unwrap().offset(), n);
        }
        assert!(inbox.shared.lock().queue.capacity() <= KEEP_CAPACITY);
    }
}
