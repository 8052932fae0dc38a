//! The in-process hub: each channel is a mutex-guarded log (bounded by count and age) plus
//! its subscribers' sinks. Publishing appends and offers the shared event to every sink
//! under the channel's lock, which is what makes "replay, then live" gap- and duplicate-free.
//!
//! # Publishes that wait for the store
//! A publish that owes webhook deliveries must not reach a consumer before those are
//! durable, nor be acknowledged without them. Such a publish goes through the store's
//! writer ([`super::writer`]), which is then the channel's sequencer:
//! 1. [`MemoryHub::ticket`] marks the channel as having work in the writer, so every later
//!    publish on it goes through the writer too and order is kept;
//! 2. in the writer's transaction, [`MemoryHub::assign`] gives the event the next offset
//!    (nobody can see it yet: subscribers start after the last *released* offset) and the
//!    writer records its deliveries;
//! 3. after the commit [`Pending::release`] appends it to history and fans it out, in
//!    commit order; if the transaction fails, [`Pending::withdraw`] takes the offset back,
//!    so no consumer ever saw it and no offset is skipped.
//!
//! A publish that owes no delivery, on a channel with nothing in the writer, is appended
//! and fanned out at once ([`MemoryHub::publish_now`]).
//!
//! # Bounds and durability per namespace
//! Each channel follows its namespace's rules ([`Namespaces`]): `history_size` and
//! `history_ttl` bound its history. A channel of a `durable` namespace ([`Kind::Log`]) keeps
//! its log in the store: every publish goes through the writer (which writes the event in
//! the same transaction), the channel is read back from the store on first use (so cursors
//! survive a restart), and the byte budgets never cut it. Job channels ([`Kind::Jobs`]) are
//! written by the store's job operations only, never by a publish.

use std::{
    collections::VecDeque,
    hash::{Hash, Hasher},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;
use switchyard_protocol::{ChannelName, Position};
use switchyard_transports::{
    fanout,
    hub::{Opened, Sink, StartFrom},
    namespaces::{ChannelRules, Namespaces},
};

use super::{
    budget::{Budget, level_to_free},
    idempotency::{IdempotencyKeys, Seen},
};
use crate::{
    hub::{Bus, Event, HistoryPage, Hub, HubError, Publish, PublishError, Published},
    ids,
    time::now_rfc3339,
};

/// An event already written to a durable log, with its offset assigned there.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Offset in its channel.
    pub offset: u64,
    /// Event type.
    pub event_type: String,
    /// Publish time, RFC 3339.
    pub time: String,
    /// JSON payload.
    pub data: Box<RawValue>,
    /// When it was written (unix ms), for logs that expire by age; `None`: never by age.
    pub at_ms: Option<i64>,
}

/// A durable channel's state as its log holds it.
#[derive(Debug)]
pub struct LoadedChannel {
    /// The log's epoch (stable across restarts of the same store).
    pub epoch: u64,
    /// The last offset written (0 when none).
    pub last_offset: u64,
    /// The latest events, oldest first, at most the history size.
    pub events: Vec<StoredEvent>,
}

/// Channels whose log lives in a durable store: job channels, which the store alone writes
/// (the hub learns of their events through [`MemoryHub::append_stored`], never by
/// `publish`), and channels of durable namespaces, whose publishes the writer stores (see
/// [`Pending::log_record`]). The hub loads either on first use.
pub trait DurableChannels: Send + Sync + 'static {
    /// Whether `channel` belongs to the store alone (job channels): publishes are refused.
    fn owns(&self, channel: &str) -> bool;
    /// Reads the channel's epoch, last offset and latest `max_events` events (job channels
    /// from the jobs' logs, others from the durable channels' log).
    ///
    /// # Errors
    /// When the store cannot be read.
    fn load(&self, channel: &ChannelName, max_events: usize) -> Result<LoadedChannel, HubError>;
}

/// Bounds of the memory hub.
#[derive(Clone, Debug)]
pub struct MemoryHubConfig {
    /// Each channel's rules: history bounds (`history_size`, `history_ttl`) and durability.
    pub namespaces: Arc<Namespaces>,
    /// Most channels holding published state (history, idempotency keys, an offset) at
    /// once; channels that only have subscribers cost nothing here (they are bounded by
    /// the subscription budgets), so consumers cannot fill the table publishers need.
    pub max_channels: usize,
    /// Bytes of history and idempotency keys one channel may hold; its oldest events go
    /// first.
    pub channel_bytes: usize,
    /// Bytes of history and idempotency keys all channels may hold; past it, the largest
    /// channels lose their oldest events first.
    pub total_bytes: usize,
}

/// One namespace with these history bounds for every channel (tests and tools).
pub fn single_namespace(history_size: usize, history_ttl: Duration) -> Arc<Namespaces> {
    Arc::new(Namespaces::only(ChannelRules::plain(
        "default",
        history_size,
        history_ttl,
    )))
}

/// Where a channel's history lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// In memory only: gone at a restart.
    Memory,
    /// A job's log, written by the store's job operations; never trimmed by age here
    /// (the job's retention removes it).
    Jobs,
    /// A durable namespace's channel: published through the writer into the store's log,
    /// trimmed by its namespace's bounds like a memory channel (and in the store alike).
    Log,
}

/// The embedded, single-node hub.
pub struct MemoryHub {
    channels: DashMap<ChannelName, Arc<Mutex<Channel>>>,
    config: MemoryHubConfig,
    budget: Arc<Budget>,
    published: AtomicU64,
    durable: Option<Arc<dyn DurableChannels>>,
}

impl std::fmt::Debug for MemoryHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHub")
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

/// How long a durable channel with no subscriber stays in memory; it reloads on demand.
const DURABLE_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Channel {
    /// Random per channel incarnation: a channel dropped and created again starts a new
    /// history, and cursors into the old one get `reset` rather than wrong events.
    epoch: u64,
    /// The last offset consumers can see (released).
    last_offset: u64,
    /// The last offset given out; above `last_offset` while publishes wait for the writer.
    assigned: u64,
    /// Publishes of this channel in the store's writer (queued, or assigned and not yet
    /// released or withdrawn): while any is, every publish goes through the writer.
    in_writer: usize,
    history: VecDeque<Arc<Event>>,
    /// The history's bytes, as [`footprint`] counts them.
    history_bytes: usize,
    /// History and idempotency bytes as last reported to the budget.
    bytes: usize,
    /// Whether it counts as a channel with published state (`max_channels`).
    counted: bool,
    budget: Arc<Budget>,
    sinks: Vec<Sink>,
    /// Whether fan-outs write to idle connections directly (see [`fanout::Pace`]).
    pace: fanout::Pace,
    idempotency: IdempotencyKeys,
    /// Set when the sweeper removed the channel from the map; whoever still holds the Arc
    /// must look the channel up again.
    removed: bool,
    /// Durable channels: whether the log has been read in yet (memory channels start true).
    loaded: bool,
    /// Where its history lives; not [`Kind::Memory`]: the store's, never cut by bytes.
    kind: Kind,
    /// Its namespace's rules (history bounds).
    rules: Arc<ChannelRules>,
    last_used: Instant,
}

/// The memory an event in history holds: its envelope and strings, and the fixed parts.
/// Encodings for live transports, made when first sent, are not counted: they are the
/// envelope's size again per wire format used.
fn footprint(event: &Event) -> usize {
    event.envelope().len()
        + event.cursor().len()
        + event.event_type().len()
        + event.channel().as_str().len()
        + 256
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.budget.moved(self.bytes, 0);
        if self.counted {
            self.budget.release_channel();
        }
    }
}

impl Channel {
    fn new(kind: Kind, rules: Arc<ChannelRules>, budget: Arc<Budget>) -> Self {
        let durable = kind != Kind::Memory;
        Self {
            epoch: ids::epoch(),
            last_offset: 0,
            assigned: 0,
            in_writer: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            bytes: 0,
            counted: false,
            budget,
            sinks: Vec::new(),
            pace: fanout::Pace::default(),
            idempotency: IdempotencyKeys::default(),
            removed: false,
            loaded: !durable,
            kind,
            rules,
            last_used: Instant::now(),
        }
    }

    fn durable(&self) -> bool {
        self.kind != Kind::Memory
    }

    fn load(&mut self, channel: &ChannelName, log: &dyn DurableChannels) -> Result<(), HubError> {
        let loaded = log.load(channel, self.rules.history_size)?;
        self.epoch = loaded.epoch;
        self.last_offset = loaded.last_offset;
        self.assigned = loaded.last_offset;
        let (now, now_ms) = (Instant::now(), crate::time::now_ms());
        self.history = loaded
            .events
            .into_iter()
            .map(|e| {
                // Aged from when it was written, so memory expires it when retention
                // deletes it from the store.
                let age = e.at_ms.map(|at| (now_ms - at).max(0));
                let event = stored_to_event(channel, loaded.epoch, e);
                Arc::new(match age {
                    Some(ms) => event.with_age(now, Duration::from_millis(ms as u64)),
                    None => event,
                })
            })
            .collect();
        self.history_bytes = self.history.iter().map(|e| footprint(e)).sum();
        self.settle();
        self.loaded = true;
        Ok(())
    }

    /// Reports the channel's bytes to the budget.
    fn settle(&mut self) {
        let bytes = self.history_bytes + self.idempotency.bytes();
        self.budget.moved(self.bytes, bytes);
        self.bytes = bytes;
    }

    /// Counts the channel as holding published state before it takes a publish.
    ///
    /// # Errors
    /// [`HubError::TooManyChannels`] when `max_channels` channels already do.
    fn admit(&mut self) -> Result<(), HubError> {
        // Job channels are bounded by the jobs' retention; every other channel, durable
        // or not, holds memory here while it is loaded.
        if !self.counted && self.kind != Kind::Jobs {
            self.budget.admit_channel()?;
            self.counted = true;
        }
        Ok(())
    }

    fn drop_oldest(&mut self) -> bool {
        let Some(oldest) = self.history.pop_front() else {
            return false;
        };
        self.history_bytes -= footprint(&oldest);
        true
    }

    /// Cuts the channel down to `level` bytes: oldest events first, then (a channel's own
    /// budget only) its oldest idempotency keys. Durable channels are never cut: their
    /// history is their store's, and memory holds what `history.size` reads back.
    fn trim_to(&mut self, level: usize, for_total: bool) {
        if self.durable() {
            return;
        }
        let mut events = 0;
        while self.history_bytes + self.idempotency.bytes() > level && self.drop_oldest() {
            events += 1;
        }
        let mut keys = 0;
        while !for_total
            && self.history_bytes + self.idempotency.bytes() > level
            && self.idempotency.forget_oldest()
        {
            keys += 1;
        }
        let counter = if for_total {
            &self.budget.evicted_for_total
        } else {
            &self.budget.evicted_for_channel
        };
        counter.fetch_add(events, Ordering::Relaxed);
        self.budget.keys_evicted.fetch_add(keys, Ordering::Relaxed);
        self.settle();
    }

    /// The next offset, with its event published at `time`; visible only once pushed.
    fn assign(&mut self, req: &Publish<'_>, time: &str) -> Arc<Event> {
        self.assigned += 1;
        Arc::new(Event::new(
            req.channel.clone(),
            self.position(self.assigned),
            req.event_type,
            time,
            req.data,
        ))
    }

    fn push(&mut self, event: Arc<Event>) {
        let size = self.rules.history_size;
        self.last_offset = event.offset();
        let subscribers = self.sinks.len();
        let direct = self.pace.direct(event.published_at(), subscribers);
        let started = Instant::now();
        fanout::retain_offered(&mut self.sinks, |sink| sink.offer_with(&event, direct));
        if direct {
            self.pace.record(started.elapsed(), subscribers);
        }
        if self.history.len() >= size {
            self.drop_oldest();
        }
        self.history_bytes += footprint(&event);
        self.history.push_back(event);
        self.settle();
        if self.bytes > self.budget.channel_bytes {
            self.trim_to(self.budget.channel_bytes, false);
        }
    }

    fn oldest_kept(&self) -> u64 {
        self.history
            .front()
            .map_or(self.last_offset + 1, |e| e.offset())
    }

    /// Drops events past the namespace's TTL (job channels: never by age).
    fn expire(&mut self, now: Instant) {
        let ttl = self.rules.history_ttl;
        while let Some(front) = self.history.front().filter(|_| self.kind != Kind::Jobs) {
            if now.duration_since(front.published_at()) < ttl {
                break;
            }
            self.drop_oldest();
        }
        self.idempotency.expire(now);
        self.settle();
    }

    /// The position to start after, and `Some(oldest kept)` when `after` is out of reach.
    fn resolve(&self, after: u64) -> (Position, Option<u64>) {
        let oldest = self.oldest_kept();
        if after > self.last_offset || after + 1 < oldest {
            (self.position(oldest - 1), Some(oldest))
        } else {
            (self.position(after), None)
        }
    }

    fn position(&self, offset: u64) -> Position {
        Position {
            epoch: self.epoch,
            offset,
        }
    }

    fn events_after(&self, after: u64, limit: usize) -> Vec<Arc<Event>> {
        let skip = (after + 1).saturating_sub(self.oldest_kept()) as usize;
        self.history
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// The event a durable store's log holds, as consumers receive it.
pub fn stored_to_event(channel: &ChannelName, epoch: u64, e: StoredEvent) -> Event {
    let position = Position {
        epoch,
        offset: e.offset,
    };
    Event::new(channel.clone(), position, &e.event_type, &e.time, &e.data)
}

impl Channel {
    /// The first result of a publish with the same idempotency key, if any.
    fn seen(
        &self,
        req: &Publish<'_>,
        hash: Option<u64>,
    ) -> Result<Option<Published>, PublishError> {
        let (Some(key), Some(hash)) = (req.idempotency_key, hash) else {
            return Ok(None);
        };
        match self.idempotency.check(key, hash) {
            Seen::New => Ok(None),
            Seen::Same(first) => Ok(Some(Published {
                replayed: true,
                ..first
            })),
            Seen::Different => Err(PublishError::IdempotencyConflict),
        }
    }

    fn remember(&mut self, req: &Publish<'_>, hash: Option<u64>, published: &Published) {
        if let (Some(key), Some(hash)) = (req.idempotency_key, hash) {
            self.idempotency
                .remember(key, hash, published.clone(), Instant::now());
            self.settle();
        }
    }
}

/// A channel's mark while one of its publishes is in the store's writer (see the module
/// docs); dropping it removes the mark.
pub struct Ticket {
    channel: Arc<Mutex<Channel>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.channel).in_writer -= 1;
    }
}

/// What [`MemoryHub::assign`] made of a publish.
pub enum Assigned {
    /// A new event, waiting for the transaction.
    New(Pending),
    /// The first result of a publish with the same idempotency key.
    Replayed(Published),
    /// The publish cannot be taken (an idempotency conflict).
    Refused(PublishError),
}

/// A publish with its offset, not yet visible: released after its transaction commits, or
/// withdrawn if it fails.
pub struct Pending {
    event: Arc<Event>,
    key: Option<Box<str>>,
    /// A durable namespace's event: what the writer stores in the channel's log.
    log: Option<StoredEvent>,
    published: Published,
    ticket: Ticket,
}

impl Pending {
    /// The event as consumers will receive it.
    pub fn event(&self) -> &Arc<Event> {
        &self.event
    }

    /// The record the writer must store in the channel's log in the same transaction,
    /// when the channel is a durable namespace's.
    pub fn log_record(&self) -> Option<&StoredEvent> {
        self.log.as_ref()
    }

    /// What the publisher is answered once the event is released.
    pub fn published(&self) -> &Published {
        &self.published
    }

    /// Makes the event visible: history and fan-out, in the order the writer commits.
    pub fn release(self, hub: &MemoryHub) {
        let mut c = lock(&self.ticket.channel);
        debug_assert_eq!(self.event.offset(), c.last_offset + 1);
        c.push(Arc::clone(&self.event));
        drop(c);
        hub.published.fetch_add(1, Ordering::Relaxed);
        hub.keep_within_budget();
    }

    /// Takes the offset back: the transaction failed and nobody saw the event. Withdrawn
    /// newest first, so the channel's next offset is the one before them again.
    pub fn withdraw(self) {
        let mut c = lock(&self.ticket.channel);
        debug_assert_eq!(self.event.offset(), c.assigned);
        c.assigned = self.event.offset() - 1;
        if let Some(key) = &self.key {
            c.idempotency.forget(key);
            c.settle();
        }
    }
}

fn lock(channel: &Mutex<Channel>) -> MutexGuard<'_, Channel> {
    // A panic while holding the lock cannot leave a channel half-updated in a way that
    // matters more than losing the whole hub; keep serving.
    channel
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryHub {
    /// An empty hub; channels that `durable` owns are read from and written by it.
    pub fn new(config: MemoryHubConfig, durable: Option<Arc<dyn DurableChannels>>) -> Self {
        Self {
            channels: DashMap::new(),
            budget: Arc::new(Budget::new(
                config.channel_bytes,
                config.total_bytes,
                config.max_channels,
            )),
            config,
            published: AtomicU64::new(0),
            durable,
        }
    }

    /// Where `name`'s history lives: job channels are the store's alone; a durable
    /// namespace's channels are logged in the store when there is one.
    fn kind_of(&self, name: &str) -> Kind {
        match &self.durable {
            Some(d) if d.owns(name) => Kind::Jobs,
            Some(_) if self.config.namespaces.rules(name).durable => Kind::Log,
            _ => Kind::Memory,
        }
    }

    /// The rules of `name`'s namespace.
    pub fn rules(&self, name: &str) -> &Arc<ChannelRules> {
        self.config.namespaces.rules(name)
    }

    /// Takes in an event a durable store has committed (in commit order) and fans it out.
    /// A channel not in memory is skipped: it is read from the store when next used.
    pub fn append_stored(&self, event: Arc<Event>) {
        let name = event.channel();
        let Some(channel) = self.channels.get(name).map(|c| Arc::clone(&c)) else {
            return;
        };
        let mut c = lock(&channel);
        if c.removed || !c.loaded || event.offset() <= c.last_offset {
            return;
        }
        if event.offset() != c.last_offset + 1 || event.position().epoch != c.epoch {
            // Should not happen (the store commits in order); read the log again next time.
            tracing::warn!(channel = %name, offset = event.offset(), last = c.last_offset, "gap in a durable channel; reloading");
            c.loaded = false;
            return;
        }
        c.assigned = event.offset();
        c.last_used = Instant::now();
        c.push(event);
        drop(c);
        self.published.fetch_add(1, Ordering::Relaxed);
        self.keep_within_budget();
    }

    /// The memory budgets and their counters.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Past the server-wide byte budget, cuts the largest channels' oldest history down to
    /// a common level until 90% of the budget is held (one caller at a time; the others
    /// go on publishing). Durable channels are not cut (see [`Channel::trim_to`]).
    fn keep_within_budget(&self) {
        if !self.budget.begin_trim() {
            return;
        }
        // The handles first, so no map shard is locked while a channel is.
        let handles: Vec<_> = self
            .channels
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        let mut sizes: Vec<(usize, Arc<Mutex<Channel>>)> = handles
            .into_iter()
            .filter_map(|h| {
                let c = lock(&h);
                let bytes = c.bytes;
                drop(c);
                (bytes > 0).then_some((bytes, h))
            })
            .collect();
        sizes.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let excess = self.budget.held().saturating_sub(self.budget.trim_target());
        let amounts: Vec<usize> = sizes.iter().map(|(bytes, _)| *bytes).collect();
        let level = level_to_free(&amounts, excess);
        for (bytes, handle) in sizes {
            if bytes <= level {
                break;
            }
            lock(&handle).trim_to(level, true);
        }
        self.budget.trimmed();
    }

    /// Publishes at once, unless the channel has publishes in the store's writer or is
    /// durable (`None`: this one must go through the writer, see the module docs).
    ///
    /// # Errors
    /// An idempotency conflict, or a channel the hub cannot hold.
    pub fn publish_now(&self, req: &Publish<'_>) -> Result<Option<Published>, PublishError> {
        let hash = req.idempotency_key.map(|_| request_hash(req));
        let published = self.with_channel(req.channel, true, |c| {
            if c.in_writer > 0 || c.durable() {
                return Ok(None);
            }
            if let Some(first) = c.seen(req, hash)? {
                return Ok(Some(first));
            }
            c.admit()?;
            let event = c.assign(req, &now_rfc3339());
            let published = Published::of(&event, false);
            c.remember(req, hash, &published);
            c.push(event);
            self.published.fetch_add(1, Ordering::Relaxed);
            Ok(Some(published))
        })?;
        self.keep_within_budget();
        published.expect("created on demand")
    }

    /// Marks `channel` (created if need be) as having a publish in the store's writer,
    /// until the [`Ticket`] is dropped.
    ///
    /// # Errors
    /// When the hub holds the most channels it may.
    pub fn ticket(&self, channel: &ChannelName) -> Result<Ticket, HubError> {
        let ticket = self.with_channel_handle(channel, true, |handle, c| {
            c.admit()?;
            c.in_writer += 1;
            Ok(Ticket {
                channel: Arc::clone(handle),
            })
        })?;
        ticket.expect("created on demand")
    }

    /// In the writer's transaction: gives the publish its offset without showing it (see
    /// the module docs), or answers it from its idempotency key.
    pub fn assign(&self, ticket: Ticket, req: &Publish<'_>) -> Assigned {
        let hash = req.idempotency_key.map(|_| request_hash(req));
        let mut c = lock(&ticket.channel);
        c.expire(Instant::now());
        match c.seen(req, hash) {
            Err(e) => return Assigned::Refused(e),
            Ok(Some(first)) => return Assigned::Replayed(first),
            Ok(None) => {}
        }
        let time = now_rfc3339();
        let event = c.assign(req, &time);
        let published = Published::of(&event, false);
        c.remember(req, hash, &published);
        let log = (c.kind == Kind::Log).then(|| StoredEvent {
            offset: event.offset(),
            event_type: req.event_type.to_owned(),
            time,
            data: req.data.to_owned(),
            at_ms: None,
        });
        drop(c);
        Assigned::New(Pending {
            event,
            key: req.idempotency_key.map(Box::from),
            log,
            published,
            ticket,
        })
    }

    /// Runs `f` on the live channel named `name`, creating it when `create` allows.
    fn with_channel<T>(
        &self,
        name: &ChannelName,
        create: bool,
        f: impl FnOnce(&mut Channel) -> T,
    ) -> Result<Option<T>, HubError> {
        self.with_channel_handle(name, create, |_, c| f(c))
    }

    /// [`Self::with_channel`], with the channel's shared handle too.
    fn with_channel_handle<T>(
        &self,
        name: &ChannelName,
        create: bool,
        f: impl FnOnce(&Arc<Mutex<Channel>>, &mut Channel) -> T,
    ) -> Result<Option<T>, HubError> {
        loop {
            let channel = match self.channels.get(name) {
                Some(c) => Arc::clone(&c),
                None if !create => return Ok(None),
                None => {
                    // Free until something is published (see `Channel::admit`).
                    let kind = self.kind_of(name.as_str());
                    let rules = Arc::clone(self.rules(name.as_str()));
                    Arc::clone(&self.channels.entry(name.clone()).or_insert_with(|| {
                        Arc::new(Mutex::new(Channel::new(
                            kind,
                            rules,
                            Arc::clone(&self.budget),
                        )))
                    }))
                }
            };
            let mut guard = lock(&channel);
            if guard.removed {
                continue;
            }
            if !guard.loaded
                && let Some(log) = &self.durable
            {
                guard.load(name, log.as_ref())?;
            }
            let now = Instant::now();
            guard.expire(now);
            guard.last_used = now;
            return Ok(Some(f(&channel, &mut guard)));
        }
    }

    /// Offers a transient event (a presence join or leave) to its channel's live
    /// subscribers, under the channel's lock, leaving history and offsets alone; a channel
    /// nobody holds gets nothing. Queued, never written directly: the caller holds its
    /// presence lock meanwhile, and a push per subscriber is the shortest hold.
    pub fn offer_transient(&self, event: &Arc<Event>) {
        debug_assert!(event.is_transient());
        let _ = self.with_channel(event.channel(), false, |c| {
            fanout::retain_offered(&mut c.sinks, |sink| sink.offer_with(event, false));
        });
    }

    /// Drops expired history and closed sinks, and evicts idle channels; returns how many
    /// channels were evicted. Call it periodically.
    ///
    /// An idle memory channel keeps its epoch and offsets while the table has room, since
    /// evicting it restarts its offsets under a new epoch (old positions then get `reset`);
    /// past 90% of `max_channels`, the least recently used idle ones go. Idle durable
    /// channels go at once: they reload from their store; so do idle channels nothing was
    /// ever published to (a cursor into one is at offset 0, which any epoch resumes).
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        // Idle channels that go at once: durable ones (they reload from their store) and
        // those nothing was ever published to (nothing to keep).
        let mut idle_now = Vec::new();
        let mut memory_idle = Vec::new();
        for entry in &self.channels {
            let mut c = lock(entry.value());
            c.expire(now);
            c.sinks.retain(|s| !s.is_closed());
            match c.idleness(now) {
                Idle::No => {}
                Idle::Durable | Idle::Unused => idle_now.push(entry.key().clone()),
                Idle::Memory => memory_idle.push((c.last_used, entry.key().clone())),
            }
        }
        let room = self.config.max_channels * 9 / 10;
        let excess = self.budget.published_channels().saturating_sub(room);
        memory_idle.sort_unstable_by_key(|(last_used, _)| *last_used);
        let victims = idle_now
            .into_iter()
            .chain(memory_idle.into_iter().take(excess).map(|(_, name)| name));
        let mut evicted = 0;
        for name in victims {
            // Checked again under the lock: it may have been used since.
            let removed = self.channels.remove_if(&name, |_, channel| {
                let mut c = lock(channel);
                let still_idle = c.idleness(now) != Idle::No;
                c.removed = still_idle;
                still_idle
            });
            evicted += usize::from(removed.is_some());
        }
        evicted
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Idle {
    No,
    /// Published to once; its history is gone but its epoch and offsets are kept while
    /// the table has room.
    Memory,
    Durable,
    /// Nothing was ever published to it (it only had subscribers).
    Unused,
}

impl Channel {
    fn idleness(&self, now: Instant) -> Idle {
        if !self.sinks.is_empty() || self.in_writer > 0 {
            Idle::No
        } else if self.durable() {
            if now.duration_since(self.last_used) > DURABLE_IDLE {
                Idle::Durable
            } else {
                Idle::No
            }
        } else if self.history.is_empty() && self.idempotency.is_empty() {
            if self.assigned == 0 {
                Idle::Unused
            } else {
                Idle::Memory
            }
        } else {
            Idle::No
        }
    }
}

fn request_hash(req: &Publish<'_>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.event_type.hash(&mut h);
    req.data.get().hash(&mut h);
    h.finish()
}

impl Hub for MemoryHub {
    fn subscribe<'a>(
        &'a self,
        channel: &'a ChannelName,
        from: StartFrom,
        sink: &'a Sink,
    ) -> BoxFuture<'a, Result<Opened, HubError>> {
        let opened = self.with_channel(channel, true, |c| {
            let (start, reset) = match from {
                StartFrom::Now => (c.position(c.last_offset), None),
                StartFrom::Offset(after) => c.resolve(after),
                // Offset 0 saw nothing, so it resumes in any incarnation of the channel.
                StartFrom::Position(p) if p.epoch == c.epoch || p.offset == 0 => {
                    c.resolve(p.offset)
                }
                StartFrom::Position(_) => {
                    let oldest = c.oldest_kept();
                    (c.position(oldest - 1), Some(oldest))
                }
            };
            let replay = c.events_after(start.offset, usize::MAX);
            c.sinks.push(sink.clone());
            Opened {
                start,
                reset,
                replay,
            }
        });
        async move { opened.map(|o| o.expect("created on demand")) }.boxed()
    }

    fn unsubscribe(&self, channel: &ChannelName, sink_id: u64) {
        let _ = self.with_channel(channel, false, |c| c.sinks.retain(|s| s.id() != sink_id));
    }
}

impl Bus for MemoryHub {
    /// Publishes at once (the hub alone knows no webhooks; the embedded engine's publish
    /// goes through the store when an event owes deliveries).
    fn publish<'a>(&'a self, req: Publish<'a>) -> BoxFuture<'a, Result<Published, PublishError>> {
        let published = match self.kind_of(req.channel.as_str()) {
            Kind::Jobs => Err(PublishError::Reserved),
            Kind::Log => Err(PublishError::Hub(HubError::Unavailable(
                "a durable channel is published through the store's writer".into(),
            ))),
            Kind::Memory => self.publish_now(&req).and_then(|p| {
                p.ok_or_else(|| {
                    PublishError::Hub(HubError::Unavailable(
                        "the channel has publishes waiting for the store".into(),
                    ))
                })
            }),
        };
        async move { published }.boxed()
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, HubError>> {
        // A durable channel not in memory is read in from its store; a memory one that does
        // not exist has no events, and is not created by reading it.
        let load = self.kind_of(channel.as_str()) != Kind::Memory;
        let page = self.with_channel(channel, load, |c| {
            let (start, reset) = match after {
                None => (c.oldest_kept() - 1, false),
                Some(after) => {
                    let (start, reset) = c.resolve(after);
                    (start.offset, reset.is_some())
                }
            };
            let events = c.events_after(start, limit);
            let next = events.last().map_or(start, |e| e.offset());
            HistoryPage {
                events,
                next,
                reset,
            }
        });
        let page = page.map(|p| {
            p.unwrap_or_else(|| HistoryPage {
                events: Vec::new(),
                // An unknown channel has no events: any position past 0 is out of reach.
                next: 0,
                reset: after.is_some_and(|a| a > 0),
            })
        });
        async move { page }.boxed()
    }

    fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn published_count(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use switchyard_protocol::Cursor;
    use switchyard_transports::hub::{Received, new_pair};

    use super::*;

    fn hub(size: usize) -> MemoryHub {
        MemoryHub::new(
            MemoryHubConfig {
                namespaces: single_namespace(size, Duration::from_secs(3600)),
                max_channels: 10,
                channel_bytes: 1 << 30,
                total_bytes: 1 << 30,
            },
            None,
        )
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    async fn publish(hub: &MemoryHub, channel: &ChannelName, n: u64) -> Published {
        let data = RawValue::from_string(n.to_string()).unwrap();
        hub.publish(Publish {
            channel,
            event_type: "t",
            data: &data,
            idempotency_key: None,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn replay_then_live_has_no_gap_and_no_duplicate() {
        let hub = hub(100);
        let c = ch("a");
        for i in 1..=5 {
            publish(&hub, &c, i).await;
        }
        let (sink, mut inbox) = new_pair(16, None);
        let opened = hub
            .subscribe(&c, StartFrom::Offset(2), &sink)
            .await
            .unwrap();
        assert_eq!(opened.reset, None);
        let replayed: Vec<u64> = opened.replay.iter().map(|e| e.offset()).collect();
        assert_eq!(replayed, [3, 4, 5]);
        publish(&hub, &c, 6).await;
        let Received::Event(e) = inbox.recv().await else {
            panic!("overflow")
        };
        assert_eq!(e.offset(), 6);
        assert!(inbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn positions_out_of_reach_reset_to_the_oldest_kept() {
        let hub = hub(3);
        let c = ch("a");
        for i in 1..=5 {
            publish(&hub, &c, i).await;
        }
        let (sink, _inbox) = new_pair(16, None);
        let o = hub
            .subscribe(&c, StartFrom::Offset(1), &sink)
            .await
            .unwrap();
        assert_eq!(o.reset, Some(3));
        assert_eq!(
            o.replay.iter().map(|e| e.offset()).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        // Offset 2 is just before the oldest kept: nothing was lost.
        let o = hub
            .subscribe(&c, StartFrom::Offset(2), &sink)
            .await
            .unwrap();
        assert_eq!(o.reset, None);
        // A future offset, or another epoch, cannot be trusted.
        assert_eq!(
            hub.subscribe(&c, StartFrom::Offset(9), &sink)
                .await
                .unwrap()
                .reset,
            Some(3)
        );
        let other_epoch = Position {
            epoch: 1,
            offset: 4,
        };
        assert_eq!(
            hub.subscribe(&c, StartFrom::Position(other_epoch), &sink)
                .await
                .unwrap()
                .reset,
            Some(3)
        );
    }

    #[tokio::test]
    async fn full_inbox_drops_the_sink_and_flags_overflow() {
        let hub = hub(100);
        let c = ch("a");
        let (sink, mut inbox) = new_pair(2, None);
        hub.subscribe(&c, StartFrom::Now, &sink).await.unwrap();
        for i in 1..=3 {
            publish(&hub, &c, i).await;
        }
        assert!(matches!(inbox.recv().await, Received::Overflowed));
        let count = hub
            .with_channel(&c, false, |c| c.sinks.len())
            .unwrap()
            .unwrap();
        assert_eq!(
            count, 0,
            "the slow sink is dropped, so it cannot hold memory"
        );
    }

    #[tokio::test]
    async fn idempotency_returns_the_first_result_or_conflicts() {
        let hub = hub(100);
        let c = ch("a");
        let data = RawValue::from_string("1".into()).unwrap();
        let other = RawValue::from_string("2".into()).unwrap();
        let req = |data| Publish {
            channel: &c,
            event_type: "t",
            data,
            idempotency_key: Some("k"),
        };
        let first = hub.publish(req(&data)).await.unwrap();
        let again = hub.publish(req(&data)).await.unwrap();
        assert_eq!((again.offset, again.replayed), (first.offset, true));
        assert!(matches!(
            hub.publish(req(&other)).await,
            Err(PublishError::IdempotencyConflict)
        ));
        assert_eq!(hub.published_count(), 1);
    }

    #[tokio::test]
    async fn sweep_drops_idle_channels_and_a_new_incarnation_resets_old_cursors() {
        let hub = MemoryHub::new(
            MemoryHubConfig {
                namespaces: single_namespace(10, Duration::from_millis(1)),
                max_channels: 1,
                channel_bytes: 1 << 30,
                total_bytes: 1 << 30,
            },
            None,
        );
        let c = ch("a");
        let first = publish(&hub, &c, 1).await;
        let old = Cursor::decode(&first.cursor).unwrap().get("a").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(hub.sweep(), 1);
        assert_eq!(hub.channel_count(), 0);
        let (sink, _inbox) = new_pair(4, None);
        let o = hub
            .subscribe(&c, StartFrom::Position(old), &sink)
            .await
            .unwrap();
        assert_eq!(o.reset, Some(1));
        // Subscribing costs nothing; publishing to a second channel is past the limit.
        hub.subscribe(&ch("b"), StartFrom::Now, &sink)
            .await
            .unwrap();
        publish(&hub, &c, 1).await;
        assert!(matches!(
            hub.publish(request(
                &ch("b"),
                &RawValue::from_string("1".into()).unwrap(),
                None
            ))
            .await,
            Err(PublishError::Hub(HubError::TooManyChannels))
        ));
    }

    #[tokio::test]
    async fn subscribers_alone_never_take_a_publishers_channel_and_leave_nothing_behind() {
        let hub = MemoryHub::new(
            MemoryHubConfig {
                namespaces: single_namespace(10, Duration::from_secs(3600)),
                max_channels: 1,
                channel_bytes: 1 << 30,
                total_bytes: 1 << 30,
            },
            None,
        );
        let (sink, inbox) = new_pair(4, None);
        for i in 0..100 {
            hub.subscribe(&ch(&format!("s{i}")), StartFrom::Now, &sink)
                .await
                .unwrap();
        }
        let first = publish(&hub, &ch("backend"), 1).await;
        assert_eq!(first.offset, 1);
        // Unsubscribed, the channels nothing was published to go at the next sweep, with
        // their cursors (offset 0) still good in the next incarnation.
        let at_zero = hub
            .subscribe(&ch("s0"), StartFrom::Now, &sink)
            .await
            .unwrap()
            .start;
        drop((sink, inbox));
        assert_eq!(hub.sweep(), 100);
        assert_eq!(hub.channel_count(), 1);
        let (sink, _inbox) = new_pair(4, None);
        let o = hub
            .subscribe(&ch("s0"), StartFrom::Position(at_zero), &sink)
            .await
            .unwrap();
        assert_eq!(o.reset, None);
    }

    #[tokio::test]
    async fn byte_budgets_drop_a_channels_oldest_events_then_the_largest_channels_first() {
        let data = RawValue::from_string(format!("\"{}\"", "x".repeat(1000))).unwrap();
        let hub = MemoryHub::new(
            MemoryHubConfig {
                namespaces: single_namespace(1000, Duration::from_secs(3600)),
                max_channels: 5,
                // About 9 events of 1.5 KB per channel, 15 in all.
                channel_bytes: 14_000,
                total_bytes: 22_000,
            },
            None,
        );
        let (big, small) = (ch("big"), ch("small"));
        for _ in 0..50 {
            hub.publish(request(&big, &data, None)).await.unwrap();
        }
        let kept = hub.history(&big, None, 1000).await.unwrap().events;
        assert!((9..=11).contains(&kept.len()), "{}", kept.len());
        assert_eq!(kept.last().unwrap().offset(), 50, "the newest are kept");
        assert!(hub.budget().held() <= 14_000);
        for _ in 0..5 {
            hub.publish(request(&small, &data, None)).await.unwrap();
        }
        for n in 0..3 {
            hub.publish(request(&ch(&format!("c{n}")), &data, None))
                .await
                .unwrap();
        }
        assert!(hub.budget().held() <= 22_000, "{}", hub.budget().held());
        // The largest channel paid first; the small one kept all five.
        let small_kept = hub.history(&small, None, 1000).await.unwrap().events.len();
        assert_eq!(small_kept, 5);
        assert!(hub.budget().evicted_for_total.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn idle_channels_keep_their_offsets_while_there_is_room() {
        let hub = MemoryHub::new(
            MemoryHubConfig {
                namespaces: single_namespace(10, Duration::from_millis(1)),
                max_channels: 100,
                channel_bytes: 1 << 30,
                total_bytes: 1 << 30,
            },
            None,
        );
        let c = ch("a");
        let first = publish(&hub, &c, 1).await;
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(hub.sweep(), 0);
        let (sink, _inbox) = new_pair(4, None);
        let old = Cursor::decode(&first.cursor).unwrap().get("a").unwrap();
        let o = hub
            .subscribe(&c, StartFrom::Position(old), &sink)
            .await
            .unwrap();
        assert_eq!(
            o.reset, None,
            "nothing was lost: the position is still valid"
        );
        assert_eq!(
            publish(&hub, &c, 2).await.offset,
            2,
            "offsets are never reused"
        );
    }

    #[tokio::test]
    async fn each_namespace_bounds_its_channels_history() {
        let pattern = |p: &str| switchyard_protocol::ChannelPattern::new(p).unwrap();
        let namespaces = Namespaces::new(
            vec![(
                pattern("short/**"),
                ChannelRules::plain("short", 2, Duration::from_secs(3600)),
            )],
            ChannelRules::plain("default", 4, Duration::from_secs(3600)),
        );
        let hub = MemoryHub::new(
            MemoryHubConfig {
                namespaces: Arc::new(namespaces),
                max_channels: 10,
                channel_bytes: 1 << 30,
                total_bytes: 1 << 30,
            },
            None,
        );
        for c in [ch("short/a"), ch("other")] {
            for i in 1..=6 {
                publish(&hub, &c, i).await;
            }
        }
        let kept = |c: &'static str| {
            let hub = &hub;
            async move {
                let page = hub.history(&ch(c), None, 100).await.unwrap();
                page.events.iter().map(|e| e.offset()).collect::<Vec<_>>()
            }
        };
        assert_eq!(kept("short/a").await, [5, 6]);
        assert_eq!(kept("other").await, [3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn history_pages_and_flags_reset() {
        let hub = hub(3);
        let c = ch("a");
        for i in 1..=5 {
            publish(&hub, &c, i).await;
        }
        let p = hub.history(&c, None, 2).await.unwrap();
        assert_eq!((p.events.len(), p.next, p.reset), (2, 4, false));
        let p = hub.history(&c, Some(p.next), 10).await.unwrap();
        assert_eq!((p.events.len(), p.next, p.reset), (1, 5, false));
        let p = hub.history(&c, Some(0), 10).await.unwrap();
        assert_eq!((p.events[0].offset(), p.reset), (3, true));
        let p = hub.history(&ch("never"), Some(3), 10).await.unwrap();
        assert!(p.reset && p.events.is_empty());
    }

    fn request<'a>(
        channel: &'a ChannelName,
        data: &'a RawValue,
        key: Option<&'a str>,
    ) -> Publish<'a> {
        Publish {
            channel,
            event_type: "t",
            data,
            idempotency_key: key,
        }
    }

    fn assigned(a: Assigned) -> Pending {
        match a {
            Assigned::New(pending) => pending,
            _ => panic!("expected a new event"),
        }
    }

    #[tokio::test]
    async fn a_publish_waiting_for_the_writer_is_seen_by_nobody_until_released_in_order() {
        let hub = hub(100);
        let c = ch("a");
        publish(&hub, &c, 1).await;
        let (sink, mut inbox) = new_pair(16, None);
        hub.subscribe(&c, StartFrom::Now, &sink).await.unwrap();
        let data = RawValue::from_string("2".into()).unwrap();
        let first = assigned(hub.assign(hub.ticket(&c).unwrap(), &request(&c, &data, None)));
        assert_eq!(first.published().offset, 2);
        // Later publishes queue behind it (through the writer), whatever they owe.
        assert!(
            hub.publish_now(&request(&c, &data, None))
                .unwrap()
                .is_none()
        );
        let second = assigned(hub.assign(hub.ticket(&c).unwrap(), &request(&c, &data, None)));
        assert_eq!(second.published().offset, 3);
        let page = hub.history(&c, Some(0), 10).await.unwrap();
        assert_eq!((page.events.len(), page.next), (1, 1), "not visible yet");
        let (late, _late_inbox) = new_pair(16, None);
        let o = hub.subscribe(&c, StartFrom::Now, &late).await.unwrap();
        assert_eq!(
            o.start.offset, 1,
            "a new subscriber starts after what is visible"
        );
        assert!(inbox.try_recv().is_none());
        first.release(&hub);
        second.release(&hub);
        for want in [2, 3] {
            let Received::Event(e) = inbox.recv().await else {
                panic!("overflow")
            };
            assert_eq!(e.offset(), want);
        }
        assert_eq!(
            publish(&hub, &c, 4).await.offset,
            4,
            "the writer's publishes done, the channel publishes at once again"
        );
    }

    #[tokio::test]
    async fn a_withdrawn_publish_takes_back_its_offset_and_its_idempotency_key() {
        let hub = hub(100);
        let c = ch("a");
        let data = RawValue::from_string("1".into()).unwrap();
        let first = assigned(hub.assign(hub.ticket(&c).unwrap(), &request(&c, &data, Some("k"))));
        let second = assigned(hub.assign(hub.ticket(&c).unwrap(), &request(&c, &data, None)));
        // The transaction failed: newest first, as the writer withdraws them.
        second.withdraw();
        first.withdraw();
        let again = hub
            .publish_now(&request(&c, &data, Some("k")))
            .unwrap()
            .expect("nothing left in the writer");
        assert_eq!(
            (again.offset, again.replayed),
            (1, false),
            "no offset skipped, key free"
        );
        assert_eq!(hub.published_count(), 1);
    }

    #[tokio::test]
    async fn a_channel_with_publishes_in_the_writer_is_never_evicted() {
        let hub = MemoryHub::new(
            MemoryHubConfig {
                namespaces: single_namespace(10, Duration::from_millis(1)),
                max_channels: 1,
                channel_bytes: 1 << 30,
                total_bytes: 1 << 30,
            },
            None,
        );
        let c = ch("a");
        let ticket = hub.ticket(&c).unwrap();
        assert_eq!(hub.sweep(), 0);
        drop(ticket);
        assert_eq!(hub.sweep(), 1, "idle once its ticket is gone");
    }
}
