//! `prune_periodically`: every half of the shorter retention (between 200 ms and a minute),
//! finished jobs and webhook deliveries are pruned, each past its own retention; it goes on
//! after an error and stops at shutdown.

use super::*;
use crate::jobs::{prune_on_clock, prune_periodically};

impl Harness {
    /// The pruner on the harness's clock, in its own task.
    fn spawn_pruner(
        &self,
        job_retention: Duration,
        delivery_retention: Duration,
    ) -> JoinHandle<((), Duration)> {
        let store = Arc::clone(&self.store) as _;
        let clock = clock(self.start);
        let run = prune_on_clock(
            store,
            job_retention,
            delivery_retention,
            clock,
            self.shutdown.clone(),
        );
        self.spawn(run)
    }
}

#[tokio::test(start_paused = true)]
async fn each_retention_has_its_cut_off_and_the_shorter_one_sets_the_period() {
    let (short, long) = (secs(4), secs(10));
    for (jobs, deliveries) in [(long, short), (short, long)] {
        let h = Harness::new();
        let _pruner = h.spawn_pruner(jobs, deliveries);

        let mut expected = Vec::new();
        for tick in 0..4 {
            let now = Harness::wall_ms(secs(2) * tick);
            let before = |retention: Duration| now - retention.as_millis() as i64;
            expected.push((before(jobs), before(deliveries)));
            h.sleep_until(secs(2) * tick + secs(1)).await;
            assert_eq!(
                h.store.prunes(),
                expected,
                "jobs {jobs:?}, deliveries {deliveries:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pruning_runs_at_most_every_200_ms() {
    let h = Harness::new();
    let retention = millis(100);
    let _pruner = h.spawn(prune_periodically(
        Arc::clone(&h.store) as _,
        retention,
        retention,
        h.shutdown.clone(),
    ));

    h.sleep_until(millis(150)).await;
    assert_eq!(h.store.prunes().len(), 1);
    h.sleep_until(millis(350)).await;
    assert_eq!(h.store.prunes().len(), 2);
    h.sleep_until(millis(950)).await;
    assert_eq!(h.store.prunes().len(), 5);
    // On the wall clock, whatever it says: both cut-offs come from the same moment.
    assert!(
        h.store
            .prunes()
            .iter()
            .all(|(jobs, deliveries)| jobs == deliveries)
    );
}

#[tokio::test(start_paused = true)]
async fn pruning_runs_at_least_once_a_minute() {
    let h = Harness::new();
    let jobs = secs(Config::default().jobs.retention_secs);
    let deliveries = secs(Config::default().webhooks.delivery_retention_secs);
    let _pruner = h.spawn(prune_periodically(
        Arc::clone(&h.store) as _,
        jobs,
        deliveries + secs(3600),
        h.shutdown.clone(),
    ));

    h.sleep_until(secs(59)).await;
    assert_eq!(h.store.prunes().len(), 1);
    h.sleep_until(secs(61)).await;
    assert_eq!(h.store.prunes().len(), 2);
    h.sleep_until(secs(3 * 60 + 1)).await;
    assert_eq!(h.store.prunes().len(), 4);
    // The deliveries' cut-off is an hour before the jobs' one, taken at the same moment.
    for (jobs, deliveries) in h.store.prunes() {
        assert_eq!(jobs - deliveries, 3_600_000);
    }
}

#[tokio::test(start_paused = true)]
async fn pruning_goes_on_after_an_error_and_stops_at_shutdown() {
    let h = Harness::new();
    h.store.fail_prunes(1);
    let pruner = h.spawn_pruner(secs(1), secs(1));
    h.sleep_until(millis(600)).await;
    assert_eq!(h.store.prunes().len(), 2, "pruned again after the failure");

    h.shutdown.cancel();

    let ((), at) = Harness::finish(pruner).await;
    assert_eq!(at, millis(600));
    h.sleep_until(secs(5)).await;
    assert_eq!(h.store.prunes().len(), 2, "pruned after shutdown");
}
