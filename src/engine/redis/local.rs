//! This node's side of fan-out: the channels it has local subscribers for, each with its
//! sinks and the position this node has delivered up to. Pure bookkeeping (no I/O), so the
//! gap-free handover from history to live events is unit-tested without Redis.
//!
//! A subscribe runs in three steps: [`Table::begin`] registers a *pending* subscriber, which
//! from then on buffers every live event the node receives for the channel; the caller makes
//! sure the node is subscribed to the channel's live topic and reads the history snapshot;
//! [`Table::complete`] appends the buffered events that the snapshot did not contain to the
//! replay and makes the sink *active*. Every event published after the snapshot was taken
//! was published after the topic subscription was confirmed, so it reaches the buffer (or,
//! once active, the sink): no gap; and events at or below the replay's end are skipped: no
//! duplicate.
//!
//! Live events are fanned out one `Arc<Event>` to all local sinks. An event that does not
//! follow the node's last delivered offset reveals a gap (a lost pub/sub message or a
//! reconnection): [`Table::dispatch`] asks for a catch-up read instead of delivering out of
//! order. An event from another epoch, or a gap history no longer covers, disconnects the
//! channel's sinks: their consumers resume from their cursors and are told `reset`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use switchyard_protocol::{ChannelName, Position};
use switchyard_transports::{
    fanout,
    hub::{Event, HubError, Opened, Sink},
};

/// Most live events buffered for one pending subscriber (the time of one history read);
/// past it the subscribe fails as unavailable rather than growing memory.
const PENDING_BUFFER_MAX: usize = 10_000;

/// What this node has delivered on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Known {
    pub(super) epoch: u64,
    /// The last offset fanned out to the active sinks.
    pub(super) last: u64,
}

#[derive(Debug)]
struct Active {
    sink: Sink,
    /// Events up to this offset were in the sink's replay.
    skip_through: u64,
}

#[derive(Debug)]
struct Pending {
    ticket: u64,
    sink_id: u64,
    /// The pub/sub connection it was registered on; a reconnection in between may have
    /// lost events it would have buffered.
    generation: u64,
    buffer: Vec<Arc<Event>>,
    overflowed: bool,
}

#[derive(Debug, Default)]
struct Local {
    known: Option<Known>,
    active: Vec<Active>,
    pending: Vec<Pending>,
    /// Whether fan-outs write to idle connections directly (see [`fanout::Pace`]).
    pace: fanout::Pace,
}

impl Local {
    fn is_empty(&self) -> bool {
        self.active.is_empty() && self.pending.is_empty()
    }

    /// Ends every active sink's stream (they resume from their cursors and get `reset`)
    /// and forgets the position.
    fn disconnect_all(&mut self) {
        for a in self.active.drain(..) {
            a.sink.disconnect();
        }
        self.known = None;
    }
}

/// A pending subscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ticket {
    id: u64,
    pub(super) generation: u64,
}

/// The history a subscribe read, as events.
#[derive(Debug)]
pub(super) struct Read {
    pub(super) epoch: u64,
    /// The last offset assigned when the history was read.
    pub(super) last: u64,
    pub(super) start: u64,
    pub(super) reset: Option<u64>,
    pub(super) replay: Vec<Arc<Event>>,
}

/// A subscribe that raced a reconnection, an epoch change or a burst, and should be retried
/// from the start.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Raced(pub(super) &'static str);

/// What [`Table::dispatch`] needs next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Dispatched {
    /// Delivered, skipped as a duplicate, or nobody here wants it.
    Done,
    /// Events between the node's position and this one are missing: read them after
    /// `known.last`, then dispatch again.
    Gap(Known),
}

/// The node's channels.
#[derive(Debug, Default)]
pub(super) struct Table {
    channels: HashMap<ChannelName, Local>,
    /// Counts pub/sub (re)connections.
    generation: u64,
    next_ticket: u64,
    /// Channels that lost their last subscriber: their topic may be unsubscribed.
    dirty: HashSet<ChannelName>,
}

impl Table {
    /// Channels held.
    pub(super) fn len(&self) -> usize {
        self.channels.len()
    }

    /// A new pub/sub connection: returns its generation and the channels to subscribe.
    pub(super) fn reconnected(&mut self) -> (u64, Vec<ChannelName>) {
        self.generation += 1;
        self.dirty.clear();
        (self.generation, self.channels.keys().cloned().collect())
    }

    /// Whether the node needs `channel`'s live topic.
    pub(super) fn wants(&self, channel: &ChannelName) -> bool {
        self.channels.contains_key(channel)
    }

    /// Channels whose topic may no longer be needed.
    pub(super) fn take_dirty(&mut self) -> Vec<ChannelName> {
        self.dirty.drain().collect()
    }

    /// Channels with a delivered position, to catch up after a reconnection.
    pub(super) fn positions(&self) -> Vec<(ChannelName, Known)> {
        self.channels
            .iter()
            .filter_map(|(c, l)| l.known.map(|k| (c.clone(), k)))
            .collect()
    }

    /// Registers a pending subscriber of `channel`.
    ///
    /// # Errors
    /// [`HubError::TooManyChannels`] when the channel is new and `max_channels` are held.
    pub(super) fn begin(
        &mut self,
        channel: &ChannelName,
        sink_id: u64,
        max_channels: usize,
    ) -> Result<Ticket, HubError> {
        if !self.channels.contains_key(channel) && self.channels.len() >= max_channels {
            return Err(HubError::TooManyChannels);
        }
        self.next_ticket += 1;
        let ticket = Ticket {
            id: self.next_ticket,
            generation: self.generation,
        };
        self.channels
            .entry(channel.clone())
            .or_default()
            .pending
            .push(Pending {
                ticket: ticket.id,
                sink_id,
                generation: ticket.generation,
                buffer: Vec::new(),
                overflowed: false,
            });
        Ok(ticket)
    }

    /// Drops a pending subscriber that failed; returns true when the channel's topic may
    /// now be unsubscribed.
    pub(super) fn abandon(&mut self, channel: &ChannelName, ticket: Ticket) -> bool {
        let Some(local) = self.channels.get_mut(channel) else {
            return false;
        };
        local.pending.retain(|p| p.ticket != ticket.id);
        self.forget_if_empty(channel)
    }

    fn forget_if_empty(&mut self, channel: &ChannelName) -> bool {
        if self.channels.get(channel).is_some_and(Local::is_empty) {
            self.channels.remove(channel);
            self.dirty.insert(channel.clone());
            return true;
        }
        false
    }

    /// Turns a pending subscriber into an active one, given the history it read.
    ///
    /// # Errors
    /// [`Raced`] when live events may have been missed while it was pending (the pub/sub
    /// connection was re-established, too many arrived, or the channel changed epoch in the
    /// meantime); the pending subscriber is dropped and a retry starts afresh.
    pub(super) fn complete(
        &mut self,
        channel: &ChannelName,
        ticket: Ticket,
        sink: &Sink,
        read: Read,
    ) -> Result<Opened, Raced> {
        let generation = self.generation;
        let abandoned = Raced("the subscription was abandoned");
        let local = self.channels.get_mut(channel).ok_or(abandoned)?;
        let index = local
            .pending
            .iter()
            .position(|p| p.ticket == ticket.id)
            .ok_or(Raced("the subscription was abandoned"))?;
        let pending = local.pending.swap_remove(index);
        let outcome = handover(local, pending, generation, sink, read);
        if outcome.is_err() {
            self.forget_if_empty(channel);
        }
        outcome
    }

    /// Fans a live event out to the channel's sinks (and pending buffers).
    pub(super) fn dispatch(&mut self, event: &Arc<Event>) -> Dispatched {
        let Some(local) = self.channels.get_mut(event.channel()) else {
            return Dispatched::Done;
        };
        for p in &mut local.pending {
            if p.buffer.len() >= PENDING_BUFFER_MAX {
                p.overflowed = true;
            } else if !p.overflowed {
                p.buffer.push(Arc::clone(event));
            }
        }
        let Some(known) = local.known else {
            return Dispatched::Done;
        };
        let offset = event.offset();
        if event.position().epoch != known.epoch {
            // The channel's history was lost (a wiped or restarted Redis, expired keys):
            // offsets of the new epoch mean nothing to these consumers.
            local.disconnect_all();
            let channel = event.channel().clone();
            self.forget_if_empty(&channel);
            return Dispatched::Done;
        }
        if offset <= known.last {
            return Dispatched::Done;
        }
        if offset > known.last + 1 {
            return Dispatched::Gap(known);
        }
        let subscribers = local.active.len();
        let direct = local.pace.direct(event.published_at(), subscribers);
        let started = Instant::now();
        fanout::retain_offered(&mut local.active, |a| {
            offset <= a.skip_through || a.sink.offer_with(event, direct)
        });
        if direct {
            local.pace.record(started.elapsed(), subscribers);
        }
        local.known = Some(Known {
            epoch: known.epoch,
            last: offset,
        });
        let channel = event.channel().clone();
        self.forget_if_empty(&channel);
        Dispatched::Done
    }

    /// Offers a transient event (a presence join or leave) to the channel's active sinks:
    /// no offset to check, nothing to buffer for pending ones (it is not in history).
    pub(super) fn dispatch_transient(&mut self, event: &Arc<Event>) {
        if let Some(local) = self.channels.get_mut(event.channel()) {
            fanout::retain_offered(&mut local.active, |a| a.sink.offer_with(event, false));
        }
    }

    /// Delivers what a catch-up read found after `from` (events in order), or, when history
    /// no longer covers the gap (`None`), disconnects the channel's sinks.
    pub(super) fn caught_up(
        &mut self,
        channel: &ChannelName,
        from: Known,
        events: Option<Vec<Arc<Event>>>,
    ) {
        let Some(local) = self.channels.get_mut(channel) else {
            return;
        };
        if local.known.is_none() {
            // Its sinks were disconnected meanwhile: nobody here follows the old position.
            return;
        }
        match events {
            None => {
                tracing::warn!(%channel, after = from.last, "live events were missed and are no longer in history: disconnecting this node's subscribers (they resume with a reset)");
                local.disconnect_all();
                self.forget_if_empty(channel);
            }
            Some(events) => {
                for event in events {
                    if self.dispatch(&event) != Dispatched::Done {
                        // Still not consecutive: the history changed under us.
                        if let Some(local) = self.channels.get_mut(channel) {
                            local.disconnect_all();
                        }
                        self.forget_if_empty(channel);
                        return;
                    }
                }
            }
        }
    }

    /// Removes `sink_id` from `channel`; returns true when the channel's topic may now be
    /// unsubscribed.
    pub(super) fn unsubscribe(&mut self, channel: &ChannelName, sink_id: u64) -> bool {
        let Some(local) = self.channels.get_mut(channel) else {
            return false;
        };
        local.active.retain(|a| a.sink.id() != sink_id);
        local.pending.retain(|p| p.sink_id != sink_id);
        self.forget_if_empty(channel)
    }

    /// Drops closed sinks and forgets channels left without any; returns true when some
    /// topic may now be unsubscribed.
    pub(super) fn sweep(&mut self) -> bool {
        let mut emptied = Vec::new();
        for (channel, local) in &mut self.channels {
            local.active.retain(|a| !a.sink.is_closed());
            if local.is_empty() {
                emptied.push(channel.clone());
            }
        }
        let any = !emptied.is_empty();
        for channel in emptied {
            self.forget_if_empty(&channel);
        }
        any
    }
}

/// The second half of a subscribe: the read history plus what was buffered meanwhile.
fn handover(
    local: &mut Local,
    pending: Pending,
    generation: u64,
    sink: &Sink,
    read: Read,
) -> Result<Opened, Raced> {
    if pending.generation != generation {
        return Err(Raced(
            "the Redis pub/sub connection was re-established during the subscription",
        ));
    }
    if pending.overflowed {
        return Err(Raced("too many live events arrived while reading history"));
    }
    let mut replay = read.replay;
    let mut current = replay.last().map_or(read.start, |e| e.offset());
    for event in pending.buffer {
        if event.position().epoch != read.epoch {
            return Err(Raced(
                "the channel's history changed epoch during the subscription",
            ));
        }
        if event.offset() <= current.max(read.last) {
            continue;
        }
        if event.offset() != current + 1 {
            return Err(Raced("live events were missed during the subscription"));
        }
        current = event.offset();
        replay.push(event);
    }
    // Events the snapshot held (up to `read.last`) but this node has not fanned out yet are
    // still on their way through the live topic: skip them for this sink, not for others.
    let skip_through = current.max(read.last);
    match local.known {
        Some(k) if k.epoch == read.epoch => {}
        Some(_) => {
            // This snapshot is newer than what the active sinks were following.
            local.disconnect_all();
            local.known = Some(Known {
                epoch: read.epoch,
                last: skip_through,
            });
        }
        None => {
            local.known = Some(Known {
                epoch: read.epoch,
                last: skip_through,
            });
        }
    }
    local.active.push(Active {
        sink: sink.clone(),
        skip_through,
    });
    Ok(Opened {
        start: Position {
            epoch: read.epoch,
            offset: read.start,
        },
        reset: read.reset,
        replay,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;
    use switchyard_transports::hub::{Received, new_pair};

    use super::*;

    fn ch() -> ChannelName {
        ChannelName::new("c").unwrap()
    }

    fn ev(epoch: u64, offset: u64) -> Arc<Event> {
        Arc::new(Event::new(
            ch(),
            Position { epoch, offset },
            "t",
            "2026-11-22T00:00:00.000Z",
            &RawValue::from_string(offset.to_string()).unwrap(),
        ))
    }

    fn read(epoch: u64, start: u64, last: u64) -> Read {
        Read {
            epoch,
            last,
            start,
            reset: None,
            replay: (start + 1..=last).map(|o| ev(epoch, o)).collect(),
        }
    }

    fn offsets(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.offset()).collect()
    }

    fn drain(inbox: &mut switchyard_transports::hub::Inbox) -> Vec<u64> {
        std::iter::from_fn(|| inbox.try_recv().map(|e| e.offset())).collect()
    }

    #[test]
    fn events_arriving_during_the_history_read_extend_the_replay_once() {
        let mut t = Table::default();
        let (sink, mut inbox) = new_pair(16, None);
        let ticket = t.begin(&ch(), sink.id(), 10).unwrap();
        // 3 and 4 were published before the snapshot, 5 after it: all three arrive live.
        for o in 3..=5 {
            assert_eq!(t.dispatch(&ev(7, o)), Dispatched::Done);
        }
        let opened = t.complete(&ch(), ticket, &sink, read(7, 1, 4)).unwrap();
        assert_eq!(offsets(&opened.replay), [2, 3, 4, 5]);
        assert_eq!(
            opened.start,
            Position {
                epoch: 7,
                offset: 1
            }
        );
        t.dispatch(&ev(7, 5));
        t.dispatch(&ev(7, 6));
        assert_eq!(drain(&mut inbox), [6], "no duplicate of 5, then live");
    }

    #[test]
    fn a_second_subscriber_skips_what_its_snapshot_had_but_others_still_get_it() {
        let mut t = Table::default();
        let (a, mut a_inbox) = new_pair(16, None);
        let ticket = t.begin(&ch(), a.id(), 10).unwrap();
        t.complete(&ch(), ticket, &a, read(7, 2, 2)).unwrap();
        // 3 is published; b's snapshot sees it before this node receives it live.
        let (b, mut b_inbox) = new_pair(16, None);
        let ticket = t.begin(&ch(), b.id(), 10).unwrap();
        let opened = t.complete(&ch(), ticket, &b, read(7, 2, 3)).unwrap();
        assert_eq!(offsets(&opened.replay), [3]);
        t.dispatch(&ev(7, 3));
        t.dispatch(&ev(7, 4));
        assert_eq!(drain(&mut a_inbox), [3, 4]);
        assert_eq!(drain(&mut b_inbox), [4]);
    }

    #[test]
    fn a_gap_asks_for_a_catch_up_and_delivers_in_order() {
        let mut t = Table::default();
        let (sink, mut inbox) = new_pair(16, None);
        let ticket = t.begin(&ch(), sink.id(), 10).unwrap();
        t.complete(&ch(), ticket, &sink, read(7, 0, 0)).unwrap();
        t.dispatch(&ev(7, 1));
        let known = Known { epoch: 7, last: 1 };
        assert_eq!(t.dispatch(&ev(7, 4)), Dispatched::Gap(known));
        t.caught_up(&ch(), known, Some(vec![ev(7, 2), ev(7, 3), ev(7, 4)]));
        t.dispatch(&ev(7, 4));
        t.dispatch(&ev(7, 5));
        assert_eq!(drain(&mut inbox), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn lost_history_or_a_new_epoch_disconnects_the_sinks() {
        let mut t = Table::default();
        let (sink, mut inbox) = new_pair(16, None);
        let ticket = t.begin(&ch(), sink.id(), 10).unwrap();
        t.complete(&ch(), ticket, &sink, read(7, 0, 0)).unwrap();
        t.caught_up(&ch(), Known { epoch: 7, last: 0 }, None);
        assert!(matches!(
            futures_util::FutureExt::now_or_never(inbox.recv()),
            Some(Received::Interrupted)
        ));
        let (sink, mut inbox) = new_pair(16, None);
        let ticket = t.begin(&ch(), sink.id(), 10).unwrap();
        t.complete(&ch(), ticket, &sink, read(7, 0, 0)).unwrap();
        t.dispatch(&ev(8, 1));
        assert!(matches!(
            futures_util::FutureExt::now_or_never(inbox.recv()),
            Some(Received::Interrupted)
        ));
    }

    #[test]
    fn a_reconnection_during_a_subscribe_makes_it_retry() {
        let mut t = Table::default();
        let (sink, _inbox) = new_pair(16, None);
        let ticket = t.begin(&ch(), sink.id(), 10).unwrap();
        t.reconnected();
        assert!(t.complete(&ch(), ticket, &sink, read(7, 0, 0)).is_err());
        assert_eq!(t.len(), 0, "the failed subscriber is forgotten");
        assert_eq!(t.take_dirty(), [ch()]);
    }

    #[test]
    fn the_last_unsubscribe_releases_the_topic_and_the_limit_holds() {
        let mut t = Table::default();
        let (sink, _inbox) = new_pair(16, None);
        let ticket = t.begin(&ch(), sink.id(), 1).unwrap();
        t.complete(&ch(), ticket, &sink, read(7, 0, 0)).unwrap();
        assert!(t.wants(&ch()));
        assert!(matches!(
            t.begin(&ChannelName::new("d").unwrap(), sink.id(), 1),
            Err(HubError::TooManyChannels)
        ));
        assert!(t.unsubscribe(&ch(), sink.id()));
        assert!(!t.wants(&ch()));
        assert_eq!(t.take_dirty(), [ch()]);
    }
}
