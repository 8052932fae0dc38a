//! The dispatcher's in-memory schedule: one lane (a bounded queue of due deliveries) per
//! endpoint, and the endpoints' turns for free slots. No I/O here; the
//! [dispatcher](super::dispatcher) reads the outbox and sends.
//!
//! # Why lanes
//! With one queue for every endpoint, an endpoint that never answers fills it: its
//! deliveries sit in front of everyone else's, and the outbox is read again and again past
//! its backlog. Here each endpoint's deliveries wait in their own lane, endpoints with
//! something to send and a free slot take turns (round robin), and a lane is refilled from
//! the outbox only when its endpoint could use more: it has a free slot and at most
//! [`REFILL`] queued. A blocked endpoint (all its slots taken, e.g. waiting for timeouts)
//! reads nothing more and delays no one.
//!
//! # Invariants
//! - The outbox stays the source of truth: a lane is a cache of pending deliveries, and
//!   dropping it loses nothing (its deliveries are read again later). That is how memory is
//!   bounded past [`MAX_QUEUED`] / [`MAX_QUEUED_BYTES`] and how a changed or disabled
//!   endpoint's stale copies (old URL or secret) go away.
//! - A delivery is *held* from the read that queues it until its outcome is committed (or
//!   its copy is dropped while still queued). Refills skip held deliveries, so none is
//!   queued twice or attempted twice at once.
//! - An attempt takes one of its endpoint's `max_per_endpoint` slots and one of the
//!   `max_concurrency` overall slots, from [`Lanes::next_start`] until [`Lanes::slot_freed`].

use std::collections::{HashMap, HashSet, VecDeque};

use crate::store::{DueDelivery, OutboxHead};

/// Deliveries read per refill; a lane is refilled when it holds at most this many, so a
/// lane holds at most twice this. Large enough that a busy endpoint costs one outbox read
/// per this many deliveries; small enough that a blocked endpoint pins little.
pub const REFILL: usize = 64;
/// Most deliveries queued over all lanes. Past it, blocked lanes' queues are dropped to make
/// room, then refills wait for queued deliveries to start.
pub const MAX_QUEUED: usize = 2048;
/// Most body bytes queued over all lanes (events may be up to `limits.max_event_bytes`).
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

/// The limits of concurrent attempts.
#[derive(Clone, Copy, Debug)]
pub struct SlotLimits {
    /// `webhooks.max_concurrency`: attempts in flight overall.
    pub overall: usize,
    /// `webhooks.max_per_endpoint`: attempts in flight to one endpoint.
    pub per_endpoint: usize,
}

/// One endpoint's queue and counters.
#[derive(Debug, Default)]
struct Lane {
    /// Due deliveries read from the outbox, oldest first.
    queue: VecDeque<DueDelivery>,
    /// Ids of the deliveries this lane holds: queued, in flight, or in flight with the
    /// outcome being committed. Refills skip them.
    held: HashSet<String>,
    /// Attempts holding one of the endpoint's slots.
    sending: usize,
    /// The outbox may hold due deliveries for it that are not held: the last scan said it
    /// has due ones, or the last refill came back full.
    backlog: bool,
    /// The endpoint's `updated_at` at the last scan: when it changes, the queued copies
    /// (with the old URL or secret) are dropped.
    version: i64,
    /// Enabled at the last scan. A lane of a disabled or deleted endpoint queues nothing and
    /// is removed once nothing of it is in flight.
    enabled: bool,
    /// In [`Lanes::turns`] (at most once).
    in_turns: bool,
}

impl Lane {
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.held.is_empty() && self.sending == 0
    }
}

/// Running totals over all lanes.
#[derive(Debug, Default)]
struct Totals {
    queued: usize,
    queued_bytes: usize,
    sending: usize,
}

impl Totals {
    /// Drops a lane's queued copies (they stay pending in the outbox).
    fn drop_queue(&mut self, lane: &mut Lane) {
        for d in lane.queue.drain(..) {
            lane.held.remove(&d.id);
            self.queued -= 1;
            self.queued_bytes -= d.body.len();
        }
    }

    fn has_room(&self) -> bool {
        self.queued + REFILL <= MAX_QUEUED && self.queued_bytes < MAX_QUEUED_BYTES
    }
}

/// A refill to make: read up to [`REFILL`] of `endpoint_id`'s due deliveries, skipping
/// `skip`, and hand them to [`Lanes::refilled`].
#[derive(Debug, PartialEq, Eq)]
pub struct Refill {
    /// The endpoint.
    pub endpoint_id: String,
    /// The deliveries its lane holds.
    pub skip: Vec<String>,
}

/// Every endpoint's lane, and whose turn it is.
#[derive(Debug, Default)]
pub struct Lanes {
    by_endpoint: HashMap<String, Lane>,
    /// Endpoints with a queued delivery and a free slot of their own, in turn order.
    turns: VecDeque<String>,
    totals: Totals,
    /// The earliest time a retry falls due that no lane holds (unix ms): from the last
    /// scan, and from outcomes recorded since.
    wake_at: Option<i64>,
}

impl Lanes {
    /// Deliveries queued over all lanes.
    pub fn queued(&self) -> usize {
        self.totals.queued
    }

    /// Attempts in flight.
    pub fn sending(&self) -> usize {
        self.totals.sending
    }

    /// When the next retry falls due, if one is known.
    pub fn wake_at(&self) -> Option<i64> {
        self.wake_at
    }

    /// Called just before a scan reads the outbox: the scan finds every retry committed
    /// before it, and [`Lanes::outcome_recorded`] brings any committed after.
    pub fn scan_started(&mut self) {
        self.wake_at = None;
    }

    /// Takes in a scan of the outbox: which enabled endpoints have due deliveries, and when
    /// the next retry falls due. Lanes of endpoints that changed drop their queued copies;
    /// lanes of endpoints that are gone or disabled drop theirs and are removed once idle.
    /// Returns the endpoints the scan found due deliveries for that were not known to have
    /// any (which a wake-up should have announced).
    pub fn scanned(&mut self, heads: Vec<OutboxHead>) -> HashSet<String> {
        let mut seen = HashSet::with_capacity(heads.len());
        let mut news = HashSet::new();
        for head in heads {
            if let Some(at) = head.next_due_ms {
                self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
            }
            let lane = self
                .by_endpoint
                .entry(head.endpoint_id.clone())
                .or_insert_with(|| Lane {
                    version: head.updated_at_ms,
                    ..Lane::default()
                });
            // Dropped copies are read again by a refill: on Redis they stay leased to this
            // node, so no scan reports them due, until a refill hands the leases back.
            let mut dropped = false;
            if lane.version != head.updated_at_ms {
                dropped = !lane.queue.is_empty();
                self.totals.drop_queue(lane);
                lane.version = head.updated_at_ms;
            }
            lane.enabled = true;
            if head.has_due && !lane.backlog {
                news.insert(head.endpoint_id.clone());
            }
            lane.backlog = head.has_due || dropped;
            seen.insert(head.endpoint_id);
        }
        let totals = &mut self.totals;
        self.by_endpoint.retain(|id, lane| {
            if !seen.contains(id) {
                totals.drop_queue(lane);
                lane.enabled = false;
                lane.backlog = false;
            }
            lane.enabled || !lane.is_idle()
        });
        news
    }

    /// The next refill worth making, if any: a lane with a backlog, a free slot and at most
    /// [`REFILL`] queued; emptier lanes first, so none starves while others top up. When
    /// the overall bounds leave no room, blocked lanes' queues are dropped first.
    pub fn next_refill(&mut self, limits: SlotLimits) -> Option<Refill> {
        let (id, _) = self
            .by_endpoint
            .iter()
            .filter(|(_, l)| {
                l.enabled && l.backlog && l.sending < limits.per_endpoint && l.queue.len() <= REFILL
            })
            .min_by_key(|(_, l)| l.queue.len())?;
        let id = id.clone();
        if !self.totals.has_room() {
            for lane in self.by_endpoint.values_mut() {
                if lane.sending >= limits.per_endpoint {
                    // Read again by a later refill (see `scanned`).
                    lane.backlog |= !lane.queue.is_empty();
                    self.totals.drop_queue(lane);
                }
            }
            if !self.totals.has_room() {
                return None;
            }
        }
        let lane = &self.by_endpoint[&id];
        Some(Refill {
            skip: lane.held.iter().cloned().collect(),
            endpoint_id: id,
        })
    }

    /// Queues what a refill read (`asked` was its limit), within the overall bounds.
    pub fn refilled(
        &mut self,
        endpoint_id: &str,
        deliveries: Vec<DueDelivery>,
        asked: usize,
        limits: SlotLimits,
    ) {
        let Some(lane) = self.by_endpoint.get_mut(endpoint_id) else {
            return;
        };
        if !lane.enabled {
            // Disabled or deleted while the refill was read.
            return;
        }
        let full = deliveries.len() >= asked;
        let mut cut = false;
        for d in deliveries {
            let over =
                self.totals.queued >= MAX_QUEUED || self.totals.queued_bytes >= MAX_QUEUED_BYTES;
            if over && !lane.queue.is_empty() {
                cut = true;
                break;
            }
            if !lane.held.insert(d.id.clone()) {
                continue;
            }
            self.totals.queued += 1;
            self.totals.queued_bytes += d.body.len();
            lane.queue.push_back(d);
        }
        lane.backlog = full || cut;
        if !lane.queue.is_empty() && lane.sending < limits.per_endpoint && !lane.in_turns {
            lane.in_turns = true;
            self.turns.push_back(endpoint_id.to_owned());
        }
    }

    /// The next delivery to attempt, taking a slot of its endpoint and an overall one:
    /// endpoints take turns, each endpoint's deliveries go oldest first.
    pub fn next_start(&mut self, limits: SlotLimits) -> Option<DueDelivery> {
        if self.totals.sending >= limits.overall {
            return None;
        }
        while let Some(id) = self.turns.pop_front() {
            let Some(lane) = self.by_endpoint.get_mut(&id) else {
                continue;
            };
            lane.in_turns = false;
            if lane.sending >= limits.per_endpoint {
                continue;
            }
            let Some(d) = lane.queue.pop_front() else {
                continue;
            };
            lane.sending += 1;
            self.totals.sending += 1;
            self.totals.queued -= 1;
            self.totals.queued_bytes -= d.body.len();
            if !lane.queue.is_empty() && lane.sending < limits.per_endpoint {
                lane.in_turns = true;
                self.turns.push_back(id);
            }
            return Some(d);
        }
        None
    }

    /// The dispatcher is disabling `endpoint_id` (410 Gone, or failing too long): its
    /// queued copies are dropped and none of its deliveries is started or read any more,
    /// without waiting for a scan to see it disabled. Attempts in flight run their course.
    /// A scan that still finds it enabled (the store could not record the change) turns it
    /// back on.
    pub fn disable(&mut self, endpoint_id: &str) {
        if let Some(lane) = self.by_endpoint.get_mut(endpoint_id) {
            self.totals.drop_queue(lane);
            lane.enabled = false;
            lane.backlog = false;
        }
    }

    /// An attempt's HTTP exchange is over: its endpoint's slot and the overall one are free.
    pub fn slot_freed(&mut self, endpoint_id: &str, limits: SlotLimits) {
        self.totals.sending -= 1;
        // A lane with an attempt in flight is never removed.
        let Some(lane) = self.by_endpoint.get_mut(endpoint_id) else {
            return;
        };
        lane.sending -= 1;
        if !lane.queue.is_empty() && lane.sending < limits.per_endpoint && !lane.in_turns {
            lane.in_turns = true;
            self.turns.push_back(endpoint_id.to_owned());
        }
    }

    /// An attempt's outcome is committed (or could not be): the delivery is no longer held,
    /// and a retry at `retry_at_ms` is remembered so the dispatcher wakes for it.
    pub fn outcome_recorded(
        &mut self,
        endpoint_id: &str,
        delivery_id: &str,
        retry_at_ms: Option<i64>,
    ) {
        if let Some(lane) = self.by_endpoint.get_mut(endpoint_id) {
            lane.held.remove(delivery_id);
        }
        if let Some(at) = retry_at_ms {
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SlotLimits = SlotLimits {
        overall: 4,
        per_endpoint: 2,
    };

    fn head(endpoint: &str, has_due: bool) -> OutboxHead {
        OutboxHead {
            endpoint_id: endpoint.into(),
            updated_at_ms: 1,
            has_due,
            next_due_ms: None,
        }
    }

    fn deliveries(endpoint: &str, range: std::ops::Range<usize>) -> Vec<DueDelivery> {
        range
            .map(|n| DueDelivery {
                id: format!("{endpoint}-{n}"),
                endpoint_id: endpoint.into(),
                body: bytes::Bytes::from_static(b"{}"),
                attempts: 0,
                url: "http://x/".into(),
                secret: "s".into(),
                previous_secret: None,
                previous_secret_until_ms: None,
            })
            .collect()
    }

    /// Refills every lane that asks, from `outbox` (endpoint -> its due deliveries).
    fn refill_all(lanes: &mut Lanes, outbox: &HashMap<&str, Vec<DueDelivery>>) -> usize {
        let mut reads = 0;
        while let Some(r) = lanes.next_refill(LIMITS) {
            reads += 1;
            let rows: Vec<_> = outbox[r.endpoint_id.as_str()]
                .iter()
                .filter(|d| !r.skip.contains(&d.id))
                .take(REFILL)
                .cloned()
                .collect();
            lanes.refilled(&r.endpoint_id, rows, REFILL, LIMITS);
        }
        reads
    }

    fn start_all(lanes: &mut Lanes) -> Vec<String> {
        std::iter::from_fn(|| lanes.next_start(LIMITS))
            .map(|d| d.id)
            .collect()
    }

    #[test]
    fn a_blocked_endpoints_backlog_does_not_hold_up_another() {
        let mut lanes = Lanes::default();
        let outbox = HashMap::from([
            ("dead", deliveries("dead", 0..10_000)),
            ("ok", deliveries("ok", 0..10)),
        ]);
        lanes.scanned(vec![head("dead", true), head("ok", true)]);
        refill_all(&mut lanes, &outbox);
        // Both endpoints start at once, however long the dead one's backlog is.
        let started = start_all(&mut lanes);
        assert_eq!(started.len(), 4);
        assert_eq!(started.iter().filter(|id| id.starts_with("ok")).count(), 2);
        // The dead endpoint's attempts never end; the healthy one's do, and each freed
        // slot starts its next delivery without reading the outbox.
        let mut delivered = 2;
        while delivered < 10 {
            lanes.slot_freed("ok", LIMITS);
            let next = lanes.next_start(LIMITS).expect("the healthy lane has work");
            assert!(next.id.starts_with("ok"), "{}", next.id);
            delivered += 1;
        }
        assert!(
            lanes.next_refill(LIMITS).is_none(),
            "the blocked lane reads nothing more"
        );
        assert!(lanes.queued() <= 2 * REFILL);
    }

    #[test]
    fn endpoints_take_turns_and_each_goes_oldest_first() {
        let mut lanes = Lanes::default();
        let outbox = HashMap::from([("a", deliveries("a", 0..3)), ("b", deliveries("b", 0..3))]);
        lanes.scanned(vec![head("a", true), head("b", true)]);
        refill_all(&mut lanes, &outbox);
        let limits = SlotLimits {
            overall: 1,
            per_endpoint: 1,
        };
        let mut order = Vec::new();
        for _ in 0..6 {
            let d = lanes.next_start(limits).unwrap();
            assert!(lanes.next_start(limits).is_none(), "one slot overall");
            lanes.slot_freed(&d.endpoint_id, limits);
            order.push(d.id);
        }
        let a: Vec<_> = order.iter().filter(|id| id.starts_with('a')).collect();
        assert_eq!(a, ["a-0", "a-1", "a-2"]);
        for pair in order.chunks(2) {
            assert_ne!(pair[0][..1], pair[1][..1], "turns alternate: {order:?}");
        }
    }

    #[test]
    fn held_deliveries_are_never_read_again_until_their_outcome_is_recorded() {
        let mut lanes = Lanes::default();
        lanes.scanned(vec![head("a", true)]);
        let r = lanes.next_refill(LIMITS).unwrap();
        assert!(r.skip.is_empty());
        lanes.refilled("a", deliveries("a", 0..2), REFILL, LIMITS);
        let d = lanes.next_start(LIMITS).unwrap();
        lanes.slot_freed("a", LIMITS);
        lanes.scanned(vec![head("a", true)]);
        let r = lanes.next_refill(LIMITS).unwrap();
        assert_eq!(
            r.skip.len(),
            2,
            "queued and committing deliveries are skipped"
        );
        assert!(r.skip.contains(&d.id));
        // A duplicate handed back anyway is not queued twice.
        lanes.refilled("a", deliveries("a", 0..2), REFILL, LIMITS);
        assert_eq!(lanes.queued(), 1);
        lanes.outcome_recorded("a", &d.id, Some(5_000));
        assert_eq!(lanes.wake_at(), Some(5_000));
        lanes.scanned(vec![head("a", true)]);
        let r = lanes.next_refill(LIMITS).unwrap();
        assert_eq!(r.skip, ["a-1"]);
    }

    #[test]
    fn a_short_refill_ends_the_backlog_until_a_scan_finds_more() {
        let mut lanes = Lanes::default();
        lanes.scanned(vec![head("a", true)]);
        assert!(lanes.next_refill(LIMITS).is_some());
        lanes.refilled("a", deliveries("a", 0..3), REFILL, LIMITS);
        start_all(&mut lanes);
        lanes.slot_freed("a", LIMITS);
        assert!(
            lanes.next_refill(LIMITS).is_none(),
            "everything due was read"
        );
        lanes.scanned(vec![head("a", true)]);
        assert!(lanes.next_refill(LIMITS).is_some());
        // A full one means more may wait: read again once the lane could use more.
        lanes.refilled("a", deliveries("a", 10..10 + REFILL), REFILL, LIMITS);
        assert!(
            lanes.next_refill(LIMITS).is_none(),
            "more than REFILL queued"
        );
        let d = lanes.next_start(LIMITS).unwrap();
        lanes.slot_freed(&d.endpoint_id, LIMITS);
        assert!(lanes.next_refill(LIMITS).is_some());
    }

    #[test]
    fn changed_and_disabled_endpoints_drop_their_queued_copies() {
        let mut lanes = Lanes::default();
        lanes.scanned(vec![head("a", true), head("b", true)]);
        lanes.refilled("a", deliveries("a", 0..5), REFILL, LIMITS);
        lanes.refilled("b", deliveries("b", 0..5), REFILL, LIMITS);
        let started = lanes.next_start(LIMITS).unwrap();
        assert_eq!(lanes.queued(), 9);
        let mut changed = head(&started.endpoint_id, true);
        changed.updated_at_ms = 2;
        lanes.scanned(vec![changed]);
        assert_eq!(
            lanes.queued(),
            0,
            "a changed endpoint's copies and a disabled one's go"
        );
        let r = lanes.next_refill(LIMITS).unwrap();
        assert_eq!(r.endpoint_id, started.endpoint_id);
        assert_eq!(
            r.skip,
            [started.id.as_str()],
            "the one in flight stays held"
        );
        // The disabled endpoint's lane lives until its last attempt is over.
        lanes.slot_freed(&started.endpoint_id, LIMITS);
        lanes.outcome_recorded(&started.endpoint_id, &started.id, None);
        assert_eq!(lanes.sending(), 0);
        let other = if started.endpoint_id == "a" { "b" } else { "a" };
        lanes.refilled(other, deliveries(other, 0..5), REFILL, LIMITS);
        assert_eq!(
            lanes.queued(),
            0,
            "nothing is queued for a disabled endpoint"
        );
    }

    #[test]
    fn dropped_copies_are_read_again_though_the_scan_does_not_count_them() {
        // On Redis, queued copies are leased to this node: after an endpoint change the scan
        // reports none due, and only a refill hands the leases back.
        let mut lanes = Lanes::default();
        lanes.scanned(vec![head("a", true)]);
        lanes.refilled("a", deliveries("a", 0..3), REFILL, LIMITS);
        let mut changed = head("a", false);
        changed.updated_at_ms = 2;
        lanes.scanned(vec![changed]);
        assert_eq!(lanes.queued(), 0);
        let refill = lanes.next_refill(LIMITS).map(|r| r.endpoint_id);
        assert_eq!(refill.as_deref(), Some("a"));
    }

    #[test]
    fn a_lane_the_dispatcher_disables_starts_and_reads_nothing_more() {
        let limits = SlotLimits {
            overall: 1,
            per_endpoint: 1,
        };
        let mut lanes = Lanes::default();
        lanes.scanned(vec![head("a", true), head("b", true)]);
        // A full refill: more of a's may wait in the outbox.
        lanes.refilled("a", deliveries("a", 0..REFILL), REFILL, limits);
        lanes.refilled("b", deliveries("b", 0..3), REFILL, limits);
        let first = lanes.next_start(limits).unwrap();
        assert_eq!(first.endpoint_id, "a", "queued first, first turn");
        // Disabled before its slot is freed (410 Gone): the slot goes elsewhere.
        lanes.disable("a");
        lanes.slot_freed("a", limits);
        let next = lanes.next_start(limits).unwrap();
        assert_eq!(next.endpoint_id, "b");
        lanes.slot_freed("b", limits);
        assert_eq!(lanes.queued(), 2, "a's queued copies are gone");
        assert_eq!(lanes.next_refill(limits), None, "a is not read again");
        // The store could not record it: a scan that still finds it enabled turns it back on.
        lanes.outcome_recorded("a", &first.id, None);
        lanes.scanned(vec![head("a", true), head("b", true)]);
        let r = lanes.next_refill(limits).expect("read again");
        assert_eq!(r.endpoint_id, "a");
    }

    #[test]
    fn the_wake_up_time_is_the_earliest_retry_known() {
        let mut lanes = Lanes::default();
        let mut a = head("a", false);
        a.next_due_ms = Some(9_000);
        let mut b = head("b", false);
        b.next_due_ms = Some(7_000);
        lanes.scanned(vec![a.clone(), b]);
        assert_eq!(
            lanes.wake_at(),
            Some(7_000),
            "the earliest over all endpoints"
        );
        lanes.outcome_recorded("a", "x", Some(8_000));
        assert_eq!(
            lanes.wake_at(),
            Some(7_000),
            "a later retry changes nothing"
        );
        lanes.outcome_recorded("a", "y", Some(5_000));
        assert_eq!(lanes.wake_at(), Some(5_000), "an earlier one does");
        // A scan replaces it with what the outbox says now (the 5 s retry may be done).
        lanes.scan_started();
        assert_eq!(lanes.wake_at(), None);
        lanes.scanned(vec![a]);
        assert_eq!(lanes.wake_at(), Some(9_000));
        lanes.scan_started();
        lanes.scanned(vec![head("a", false)]);
        assert_eq!(lanes.wake_at(), None, "nothing to wake for");
    }

    #[test]
    fn memory_is_bounded_and_blocked_lanes_make_room_first() {
        let mut lanes = Lanes::default();
        let n = MAX_QUEUED / REFILL + 4;
        let heads = (0..n).map(|i| head(&format!("e{i:03}"), true)).collect();
        lanes.scanned(heads);
        let limits = SlotLimits {
            overall: 10_000,
            per_endpoint: 1,
        };
        let mut reads = 0;
        while let Some(r) = lanes.next_refill(limits) {
            reads += 1;
            let rows = deliveries(&r.endpoint_id, 0..REFILL);
            lanes.refilled(&r.endpoint_id, rows, REFILL, limits);
            assert!(reads <= n, "each lane is read once");
        }
        assert!(lanes.queued() <= MAX_QUEUED);
        assert!(reads < n, "the bound stopped some refills");
        // Starting one delivery of every lane blocks them all (one slot each): their
        // queues make room for the lanes that got nothing yet.
        while lanes.next_start(limits).is_some() {}
        let r = lanes.next_refill(limits).expect("room was made");
        assert_eq!(lanes.queued(), 0);
        lanes.refilled(
            &r.endpoint_id,
            deliveries(&r.endpoint_id, 0..REFILL),
            REFILL,
            limits,
        );
        assert_eq!(lanes.next_start(limits).unwrap().endpoint_id, r.endpoint_id);
    }
}
