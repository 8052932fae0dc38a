//! Offering one event to many subscribers on every core at once.
//!
//! An event is offered to its channel's subscribers under the channel's lock (that keeps
//! every subscriber's events in publish order), and an idle subscriber's offer is the socket
//! write itself (see [`crate::direct`]): a few microseconds each, so one event to 5,000
//! subscribers is ~30 ms of writes. Done by the publishing thread alone, that is the last
//! subscriber's latency, with the other cores idle; Nchan, for one, spreads its subscribers
//! over its worker processes. Here a large fan-out is split into one part per core: the
//! publishing thread offers one part and rayon's threads the others, and the lock is
//! released only once every part is done, so the order stays the same.
//!
//! Direct writes are one `write()` per event per connection; at high rates a connection's
//! own task writes many queued events with one (see [`Pace`]), so a busy channel queues.

use std::time::{Duration, Instant};

/// Fewer subscribers than this are offered to by the publishing thread alone: handing a
/// part to another thread costs tens of microseconds, about ten writes.
const MIN_PART: usize = 256;

/// Events closer together than this are queued: the connections' tasks then find several
/// at a time and write them with one `write()` (at 200 events/s and above, a channel is busy
/// enough for that to pay).
const MIN_DIRECT_GAP: Duration = Duration::from_millis(5);

/// When a channel's fan-out writes to idle connections directly, and when it queues events
/// for the connections' tasks instead.
///
/// Directly, one event costs every subscriber a `write()` in the publishing thread. Queued,
/// it costs a push per subscriber, and each connection's task writes whatever has queued
/// with one `write()`: cheaper per event as soon as events come faster than the tasks run,
/// since they then find several (at the maximum rate, direct fan-outs were 4-5x slower). So
/// a channel writes directly while its events are at least [`MIN_DIRECT_GAP`] apart and a
/// direct fan-out takes at most the time between them (at 20 events/s, 5,000 subscribers
/// take ~20 ms of a 50 ms gap; far more subscribers would make the fan-out set the pace).
/// The cost estimate follows a slower fan-out at once and a faster one gradually, and decays
/// while the channel queues, so a channel whose first, cold fan-out was slow tries again.
#[derive(Debug, Default)]
pub struct Pace {
    /// When the channel's previous event was published.
    previous: Option<Instant>,
    /// What a direct fan-out took lately per subscriber, in nanoseconds.
    per_subscriber_ns: u64,
}

impl Pace {
    /// Whether the fan-out of an event published at `published_at` to `subscribers` should
    /// write directly.
    pub fn direct(&mut self, published_at: Instant, subscribers: usize) -> bool {
        let gap = self
            .previous
            .map_or(Duration::MAX, |p| published_at.saturating_duration_since(p));
        self.previous = Some(published_at);
        if gap < MIN_DIRECT_GAP {
            return false;
        }
        let cost = self.per_subscriber_ns.saturating_mul(subscribers as u64);
        let direct = Duration::from_nanos(cost) <= gap;
        if !direct {
            // About one event in 50 tries again while the channel stays this large.
            self.per_subscriber_ns -= self.per_subscriber_ns / 64;
        }
        direct
    }

    /// Records that a direct fan-out to `subscribers` took `took`.
    pub fn record(&mut self, took: Duration, subscribers: usize) {
        let Some(per) = took.as_nanos().checked_div(subscribers as u128) else {
            return;
        };
        let per = u64::try_from(per).unwrap_or(u64::MAX);
        self.per_subscriber_ns = if per >= self.per_subscriber_ns {
            per
        } else {
            (self.per_subscriber_ns.saturating_mul(7).saturating_add(per)) / 8
        };
    }
}

/// Keeps the items of `items` for which `offer` returns `true` (as `Vec::retain`), calling
/// it from several threads at once for a large `items` (`offer` must not depend on the
/// order of the calls).
pub fn retain_offered<T, F>(items: &mut Vec<T>, offer: F)
where
    T: Sync,
    F: Fn(&T) -> bool + Sync,
{
    let parts = (items.len() / MIN_PART).min(rayon::current_num_threads());
    if parts < 2 {
        items.retain(|item| offer(item));
        return;
    }
    let size = items.len().div_ceil(parts);
    // Which items to drop, per part: nearly always none (no allocation then).
    let mut dropped: Vec<Vec<usize>> = vec![Vec::new(); parts];
    {
        let offer = &offer;
        let mut chunks = items.chunks(size).zip(dropped.iter_mut()).enumerate();
        let (_, (mine, my_dropped)) = chunks.next().expect("at least two parts");
        rayon::in_place_scope(|scope| {
            for (part, (chunk, part_dropped)) in chunks {
                scope.spawn(move |_| {
                    refused(chunk, part * size, offer, part_dropped);
                });
            }
            refused(mine, 0, offer, my_dropped);
        });
    }
    if dropped.iter().all(Vec::is_empty) {
        return;
    }
    let mut gone = dropped.into_iter().flatten().peekable();
    let mut index = 0;
    items.retain(|_| {
        let keep = gone.next_if_eq(&index).is_none();
        index += 1;
        keep
    });
}

/// Records in `dropped` the indexes (from `first`) of the items of `chunk` refused.
fn refused<T>(chunk: &[T], first: usize, offer: &impl Fn(&T) -> bool, dropped: &mut Vec<usize>) {
    for (i, item) in chunk.iter().enumerate() {
        if !offer(item) {
            dropped.push(first + i);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        sync::{Mutex, atomic::AtomicUsize, atomic::Ordering},
        thread::ThreadId,
    };

    use super::*;

    #[test]
    fn a_channel_writes_directly_while_its_events_are_apart_and_its_fanouts_fit_between() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(pace.direct(t0, 1000), "nothing known yet");
        // 1000 subscribers took 5 ms: 5 us each.
        pace.record(ms(5), 1000);
        assert!(pace.direct(t0 + ms(50), 1000), "5 ms of a 50 ms gap");
        assert!(
            pace.direct(t0 + ms(55), 1000),
            "5 ms of a 5 ms gap: at the limit"
        );
        assert!(
            !pace.direct(t0 + ms(59), 10),
            "events 4 ms apart queue, however few"
        );
        assert!(!pace.direct(t0 + ms(99), 10_000), "50 ms of a 40 ms gap");
        assert!(pace.direct(t0 + ms(199), 10_000), "50 ms of a 100 ms gap");
        pace.record(Duration::ZERO, 0);
        assert!(
            pace.direct(t0 + ms(299), 10_000),
            "an empty fan-out changes nothing"
        );
        // A slower fan-out counts at once, a faster one gradually.
        pace.record(ms(10), 1000);
        assert!(!pace.direct(t0 + ms(308), 1000), "10 ms of an 9 ms gap");
        // (~8.7 ms now: 10 ms, decayed once while queueing, then 1/8 of the way to 1 ms.)
        pace.record(ms(1), 1000);
        assert!(
            !pace.direct(t0 + ms(316), 1000),
            "still ~8.7 ms of an 8 ms gap"
        );
    }

    #[test]
    fn a_queueing_channel_tries_direct_writes_again_within_about_fifty_events() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        pace.direct(t0, 10_000);
        pace.record(Duration::from_millis(50), 10_000);
        // Events 25 ms apart: half the cost of a direct fan-out.
        let mut at = t0;
        let mut queued = 0;
        loop {
            at += Duration::from_millis(25);
            if pace.direct(at, 10_000) {
                break;
            }
            queued += 1;
            assert!(queued < 64, "never tried again");
        }
        assert!(queued > 30, "tried again after only {queued} events");
    }

    #[test]
    fn a_small_fanout_is_a_plain_retain() {
        let mut items: Vec<usize> = (0..100).collect();
        let threads = Mutex::new(HashSet::<ThreadId>::new());
        retain_offered(&mut items, |n| {
            threads.lock().unwrap().insert(std::thread::current().id());
            n % 3 != 0
        });
        assert_eq!(items, (0..100).filter(|n| n % 3 != 0).collect::<Vec<_>>());
        assert_eq!(threads.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_large_fanout_offers_each_once_and_keeps_the_rest_in_order() {
        let n = 10 * MIN_PART + 7;
        let mut items: Vec<usize> = (0..n).collect();
        let calls = AtomicUsize::new(0);
        retain_offered(&mut items, |i| {
            calls.fetch_add(1, Ordering::Relaxed);
            i % 97 != 5
        });
        assert_eq!(calls.load(Ordering::Relaxed), n);
        assert_eq!(items, (0..n).filter(|i| i % 97 != 5).collect::<Vec<_>>());
        let mut all: Vec<usize> = (0..n).collect();
        retain_offered(&mut all, |_| true);
        assert_eq!(all.len(), n);
    }

    #[test]
    fn a_large_fanout_uses_more_than_one_thread_when_there_are_cores() {
        let mut items: Vec<usize> = (0..4 * MIN_PART).collect();
        let threads = Mutex::new(HashSet::<ThreadId>::new());
        retain_offered(&mut items, |_| {
            threads.lock().unwrap().insert(std::thread::current().id());
            true
        });
        // The calling thread (not one of rayon's) offers its part and waits for the others,
        // which rayon's threads take: never all on one thread.
        let used = threads.lock().unwrap().len();
        if rayon::current_num_threads() >= 2 {
            assert!(used >= 2, "one thread did it all");
        } else {
            assert_eq!(used, 1);
        }
    }
}
