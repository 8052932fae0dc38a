//! `Jobs::reserve`: submits hold room for their payload while they receive it; past
//! `jobs.max_inflight_bytes`, further submits wait for room.

use super::*;

#[tokio::test(start_paused = true)]
async fn submits_wait_for_room_and_one_larger_than_the_bound_takes_all_of_it() {
    let h = Harness::with_config(JobsConfig {
        max_inflight_bytes: 100,
        ..config()
    });
    let held = h.jobs.reserve(60).await;
    let next = h.spawn({
        let jobs = Arc::clone(&h.jobs);
        async move { jobs.reserve(60).await }
    });
    h.sleep_until(secs(1)).await;
    assert!(!next.is_finished(), "100 bytes may be held, not 120");

    drop(held);

    let (held, at) = Harness::finish(next).await;
    assert_eq!(at, secs(1));
    // More than the bound waits for all of it rather than forever.
    let huge = h.spawn({
        let jobs = Arc::clone(&h.jobs);
        async move { jobs.reserve(1_000).await }
    });
    h.sleep_until(secs(2)).await;
    assert!(!huge.is_finished(), "60 bytes are still held");
    drop(held);
    let (_all, at) = Harness::finish(huge).await;
    assert_eq!(at, secs(2));
    assert_eq!(h.jobs.inflight.available_permits(), 0);
}
