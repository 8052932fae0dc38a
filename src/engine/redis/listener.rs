//! The node's one pub/sub connection: it subscribes to the live topics of the channels this
//! node has local subscribers for (and only those), fans incoming events out through the
//! local table, and reconnects with backoff when Redis goes away.
//!
//! One task owns the connection, so subscribe and unsubscribe commands are serialized and
//! always follow the table's *current* state: a topic is never left unsubscribed while a
//! local subscriber needs it, whatever the order in which subscribers come and go.
//!
//! After a reconnection the task subscribes every needed topic again and, since live events
//! may have been published while it was away, reads each channel's history after the last
//! offset this node delivered and delivers that gap in order before any newer live event
//! (or disconnects the channel's subscribers, who then resume with a `reset`, when the gap
//! is no longer retained or the channel's epoch changed, as after a wiped Redis).

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::StreamExt;
use redis::aio::{PubSub, PubSubSink};
use switchyard_protocol::ChannelName;
use switchyard_transports::hub::HubError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    hub::Inner,
    local::{Dispatched, Known},
    wire,
};

/// First wait before reconnecting; doubled after each failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Topics per `SUBSCRIBE` when resubscribing after a reconnection.
const SUBSCRIBE_BATCH: usize = 256;
/// How often an idle connection is checked with `PING` (a half-open TCP connection would
/// otherwise go unnoticed until the next event fails to arrive).
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Requests from subscribers to the listener task.
#[derive(Debug)]
pub(super) enum Control {
    /// Make sure the channel's live topic is subscribed (when a local subscriber still
    /// wants it); answers the connection's generation, or why it cannot.
    Ensure {
        channel: ChannelName,
        reply: oneshot::Sender<Result<u64, HubError>>,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The hub was dropped.
    Stopped,
    /// The connection failed: reconnect.
    Lost,
}

fn down() -> HubError {
    HubError::Unavailable("the Redis pub/sub connection is down".into())
}

/// Runs the listener until `stop`; `first` is the connection made by `connect`.
pub(super) async fn run(
    inner: Arc<Inner>,
    client: redis::Client,
    first: PubSub,
    mut control_rx: mpsc::Receiver<Control>,
    stop: CancellationToken,
) {
    let mut next = Some(first);
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let pubsub = match next.take() {
            Some(p) => Some(p),
            None => {
                let connect =
                    tokio::time::timeout(inner.config.op_timeout, client.get_async_pubsub());
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = connect => match r {
                        Ok(Ok(p)) => Some(p),
                        Ok(Err(e)) => {
                            if failures == 0 {
                                tracing::warn!(error = %e, "cannot reach Redis for pub/sub; retrying with backoff");
                            }
                            None
                        }
                        Err(_) => None,
                    },
                }
            }
        };
        if let Some(pubsub) = pubsub {
            if failures > 0 {
                inner.stats.reconnected();
                tracing::info!(
                    attempts = failures,
                    "Redis pub/sub connection re-established"
                );
            }
            failures = 0;
            backoff = BACKOFF_MIN;
            let end = serve(&inner, pubsub, &mut control_rx, &stop).await;
            inner.set_live(false);
            if end == End::Stopped {
                return;
            }
            tracing::warn!("Redis pub/sub connection lost; reconnecting");
        }
        failures += 1;
        // Wait, refusing subscriptions meanwhile (they fail as unavailable, not hang).
        let sleep = tokio::time::sleep(jittered(backoff));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut sleep => break,
                c = control_rx.recv() => match c {
                    Some(Control::Ensure { reply, .. }) => { let _ = reply.send(Err(down())); }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A random 75-100% of `d`, so nodes that lost Redis together do not reconnect in lockstep.
fn jittered(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    d.mul_f64(0.75 + f64::from(b[0]) / 1024.0)
}

/// Serves one connection until it fails or the hub stops.
async fn serve(
    inner: &Arc<Inner>,
    pubsub: PubSub,
    control_rx: &mut mpsc::Receiver<Control>,
    stop: &CancellationToken,
) -> End {
    let timeout = inner.config.op_timeout;
    let (mut sink, mut stream) = pubsub.split();
    let (generation, channels) = inner.table().reconnected();
    let mut subscribed = HashSet::new();
    for batch in channels.chunks(SUBSCRIBE_BATCH) {
        let topics: Vec<String> = batch.iter().map(|c| inner.topics().live(c)).collect();
        if !matches!(
            tokio::time::timeout(timeout, sink.subscribe(&topics)).await,
            Ok(Ok(()))
        ) {
            return End::Lost;
        }
        subscribed.extend(batch.iter().cloned());
    }
    if !matches!(
        tokio::time::timeout(timeout, sink.subscribe(inner.topics().signals())).await,
        Ok(Ok(()))
    ) {
        return End::Lost;
    }
    inner.set_live(true);
    // Wake-ups published while no connection was up reached nobody here.
    inner.signals.fire_all();
    // Events published while no connection was up reached nobody here: deliver the gaps.
    let positions = inner.table().positions();
    for (channel, known) in positions {
        catch_up(inner, &channel, known).await;
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.reset();
    loop {
        tokio::select! {
            () = stop.cancelled() => return End::Stopped,
            msg = stream.next() => match msg {
                Some(msg) => on_message(inner, &msg).await,
                None => return End::Lost,
            },
            c = control_rx.recv() => {
                let Some(Control::Ensure { channel, reply }) = c else {
                    return End::Stopped;
                };
                let ok = ensure(inner, &mut sink, &mut subscribed, &channel).await;
                let _ = reply.send(if ok { Ok(generation) } else { Err(down()) });
                if !ok {
                    return End::Lost;
                }
            }
            () = inner.dirty.notified() => {
                let dirty = inner.table().take_dirty();
                for channel in dirty {
                    if !ensure(inner, &mut sink, &mut subscribed, &channel).await {
                        return End::Lost;
                    }
                }
            }
            _ = ping.tick() => {
                let pong = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return End::Lost;
                }
            }
        }
    }
}

/// Brings the channel's topic subscription in line with the table; false when the
/// connection failed.
async fn ensure(
    inner: &Inner,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<ChannelName>,
    channel: &ChannelName,
) -> bool {
    let wanted = inner.table().wants(channel);
    let timeout = inner.config.op_timeout;
    if wanted && !subscribed.contains(channel) {
        let r = tokio::time::timeout(timeout, sink.subscribe(inner.topics().live(channel))).await;
        if !matches!(r, Ok(Ok(()))) {
            return false;
        }
        subscribed.insert(channel.clone());
    } else if !wanted && subscribed.contains(channel) {
        let r = tokio::time::timeout(timeout, sink.unsubscribe(inner.topics().live(channel))).await;
        if !matches!(r, Ok(Ok(()))) {
            return false;
        }
        subscribed.remove(channel);
    }
    true
}

async fn on_message(inner: &Inner, msg: &redis::Msg) {
    let topics = inner.topics();
    if msg.get_channel_name() == topics.signals() {
        inner.signals.fire(msg.get_payload_bytes());
        return;
    }
    let Some(channel) = topics.channel_of_live(msg.get_channel_name()) else {
        return;
    };
    let Some((epoch, parts)) = wire::decode_live(msg.get_payload_bytes()) else {
        tracing::warn!(%channel, "ignoring a malformed live message");
        return;
    };
    if parts.offset == 0 {
        if let Some(event) = parts.into_transient(&channel) {
            inner.table().dispatch_transient(&event);
        }
        return;
    }
    let Some(event) = parts.into_event(&channel, epoch) else {
        tracing::warn!(%channel, "ignoring a malformed live message");
        return;
    };
    // At most twice: a catch-up either reaches this event or disconnects the channel.
    for _ in 0..2 {
        let gap = inner.table().dispatch(&event);
        match gap {
            Dispatched::Done => return,
            Dispatched::Gap(known) => catch_up(inner, &channel, known).await,
        }
    }
}

/// Reads the channel's history after `known` and delivers it, or disconnects the channel's
/// subscribers when it is no longer there (trimmed, another epoch, Redis unreachable).
async fn catch_up(inner: &Inner, channel: &ChannelName, known: Known) {
    let mut events = None;
    // The command connection may still be re-establishing itself right after Redis came
    // back: a few quick retries before giving the subscribers up.
    for wait_ms in [0u64, 50, 200, 500] {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        match inner.read_after(channel, known).await {
            Ok(found) => {
                events = found;
                break;
            }
            Err(e) => tracing::debug!(%channel, error = %e, "catch-up read failed"),
        }
    }
    inner.table().caught_up(channel, known, events);
}
