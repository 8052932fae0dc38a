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

/// Fewer subscribers than this are offered to by the publishing thread alone: handing a
/// part to another thread costs tens of microseconds, about ten writes.
const MIN_PART: usize = 256;

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
