//! `Jobs::get_after_change`, the long-poll of `GET /v1/jobs/{id}?wait=S&status=..`: at once
//! for an ended job or a status the client does not know yet, otherwise at the next status
//! change (progress does not count), at `wait`, or at shutdown; never leaving a subscription
//! behind in the hub.

use super::*;
use crate::store::{JobRecord, JobStatus, Report, StoreError};

/// `?wait=30`.
const WAIT: Duration = Duration::from_secs(30);

impl Harness {
    /// A long-poll of job `id` in its own task.
    fn spawn_get(
        &self,
        id: &str,
        wait: Duration,
        known: Option<JobStatus>,
    ) -> JoinHandle<(Option<JobRecord>, Duration)> {
        let (jobs, shutdown, id) = (Arc::clone(&self.jobs), self.shutdown.clone(), id.to_owned());
        self.spawn(async move {
            jobs.get_after_change(&id, wait, known, &shutdown)
                .await
                .expect("the store answers")
        })
    }

    /// The long-poll subscribed to job `id`'s channel once, and unsubscribed since.
    fn assert_unsubscribed(&self, id: &str) {
        assert_eq!(self.hub.subscribed(), [job_channel(id).as_str()]);
        assert_eq!(self.hub.live(), Vec::<String>::new(), "a sink left behind");
    }

    /// Claims job `id` as a worker would; its lease.
    async fn start(&self, id: &str) -> String {
        let claimed = self.jobs.claim(Duration::ZERO, 30_000, &self.shutdown);
        let claimed = claimed.await.unwrap().expect("a queued job");
        assert_eq!(claimed.job.id, id);
        self.publish(id, "job.started", r#"{"status":"running","attempt":1}"#)
            .await;
        claimed.lease
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_wait_it_answers_at_once_without_subscribing() {
    let h = Harness::new();
    let id = h.submit().await;

    let (job, at) = Harness::finish(h.spawn_get(&id, Duration::ZERO, None)).await;

    assert_eq!(job.expect("a stored job").status, JobStatus::Queued);
    assert_eq!(at, Duration::ZERO);
    assert!(h.hub.subscribed().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_unknown_job_is_none_at_once() {
    let h = Harness::new();
    let id = crate::ids::job_id(EPOCH_MS);

    let (job, at) = Harness::finish(h.spawn_get(&id, WAIT, None)).await;

    assert!(job.is_none());
    assert_eq!(at, Duration::ZERO);
    h.assert_unsubscribed(&id);
}

#[tokio::test(start_paused = true)]
async fn an_ended_job_answers_at_once_whatever_the_client_knows() {
    for status in [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled] {
        for known in [None, Some(status)] {
            let h = Harness::new();
            let id = h.submit().await;
            h.store.set_status(&id, status, EPOCH_MS);

            let (job, at) = Harness::finish(h.spawn_get(&id, WAIT, known)).await;

            assert_eq!(job.expect("a stored job").status, status);
            assert_eq!(at, Duration::ZERO, "{status:?} known as {known:?}");
            h.assert_unsubscribed(&id);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_status_other_than_the_known_one_answers_at_once() {
    let h = Harness::new();
    let id = h.submit().await;
    h.start(&id).await;

    let (job, at) = Harness::finish(h.spawn_get(&id, WAIT, Some(JobStatus::Queued))).await;

    assert_eq!(job.expect("a stored job").status, JobStatus::Running);
    assert_eq!(at, Duration::ZERO);
    h.assert_unsubscribed(&id);
}

#[tokio::test(start_paused = true)]
async fn the_next_status_change_ends_the_wait() {
    let h = Harness::new();
    let id = h.submit().await;
    let poll = h.spawn_get(&id, WAIT, None);
    h.sleep_until(secs(3)).await;
    assert!(!poll.is_finished());

    h.start(&id).await;

    let (job, at) = Harness::finish(poll).await;
    assert_eq!(job.expect("a stored job").status, JobStatus::Running);
    assert_eq!(at, secs(3));
    h.assert_unsubscribed(&id);
}

#[tokio::test(start_paused = true)]
async fn progress_reports_do_not_end_the_wait_a_status_change_does() {
    let h = Harness::new();
    let id = h.submit().await;
    let lease = h.start(&id).await;
    let poll = h.spawn_get(&id, WAIT, Some(JobStatus::Running));

    for (n, done) in [(1, "1"), (2, "2")] {
        h.sleep_until(secs(n)).await;
        let progress = Report::Progress(raw(done));
        h.jobs
            .report(id.clone(), lease.clone(), progress)
            .await
            .unwrap();
        h.publish(&id, "job.progress", done).await;
    }
    h.sleep_until(secs(4)).await;
    assert!(!poll.is_finished(), "answered on a progress report");
    let result = Report::Complete(raw(r#"{"rows":[]}"#));
    h.jobs.report(id.clone(), lease, result).await.unwrap();
    h.publish(&id, "job.completed", r#"{"status":"succeeded"}"#)
        .await;

    let (job, at) = Harness::finish(poll).await;
    let job = job.expect("a stored job");
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(
        job.result.map(|r| r.get().to_owned()).as_deref(),
        Some(r#"{"rows":[]}"#)
    );
    assert_eq!(at, secs(4));
    h.assert_unsubscribed(&id);
}

#[tokio::test(start_paused = true)]
async fn with_no_change_it_answers_at_its_wait_with_the_job_as_it_then_is() {
    let h = Harness::new();
    let id = h.submit().await;
    let lease = h.start(&id).await;
    let poll = h.spawn_get(&id, WAIT, Some(JobStatus::Running));
    h.sleep_until(secs(2)).await;
    let progress = Report::Progress(raw("{}"));
    h.jobs.report(id.clone(), lease, progress).await.unwrap();
    h.publish(&id, "job.progress", "{}").await;

    h.sleep_until(WAIT - millis(1)).await;
    assert!(!poll.is_finished(), "answered before its wait");
    let (job, at) = Harness::finish(poll).await;

    assert_eq!(at, WAIT);
    let job = job.expect("a stored job");
    assert_eq!(job.status, JobStatus::Running);
    // docs/jobs.md: "answers with the job as it then is"; `updated_at` moves with every
    // progress report.
    assert_eq!(job.updated_at_ms, Harness::wall_ms(secs(2)));
    h.assert_unsubscribed(&id);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_wait_at_once() {
    let h = Harness::new();
    let id = h.submit().await;
    let poll = h.spawn_get(&id, WAIT, Some(JobStatus::Queued));
    h.sleep_until(secs(3)).await;

    h.shutdown.cancel();

    let (job, at) = Harness::finish(poll).await;
    assert_eq!(job.expect("a stored job").status, JobStatus::Queued);
    assert_eq!(at, secs(3));
    h.assert_unsubscribed(&id);
}

#[tokio::test(start_paused = true)]
async fn a_change_between_subscribing_and_reading_is_not_missed() {
    let h = Harness::new();
    let id = h.submit().await;
    // The job starts (in the store, then on its channel) after the long-poll subscribed
    // and before it reads the job: the event must reach it.
    let (store, hub, started) = (Arc::clone(&h.store), Arc::clone(&h.hub), id.clone());
    h.store.before_next_get(move || {
        store.set_status(&started, JobStatus::Running, EPOCH_MS);
        let data = raw(r#"{"status":"running","attempt":1}"#);
        let channel = job_channel(&started);
        let publish = Publish {
            channel: &channel,
            event_type: "job.started",
            data: &data,
            idempotency_key: None,
        };
        hub.memory().publish_now(&publish).expect("published");
    });

    let (job, at) = Harness::finish(h.spawn_get(&id, WAIT, None)).await;

    assert_eq!(job.expect("a stored job").status, JobStatus::Running);
    assert_eq!(at, Duration::ZERO);
    h.assert_unsubscribed(&id);
}

#[tokio::test(start_paused = true)]
async fn a_hub_that_cannot_subscribe_makes_the_long_poll_unavailable() {
    let h = Harness::new();
    let id = h.submit().await;
    h.hub.refuse_subscribes();

    let (answer, at) = Harness::finish(h.spawn({
        let jobs = Arc::clone(&h.jobs);
        let shutdown = h.shutdown.clone();
        async move { jobs.get_after_change(&id, WAIT, None, &shutdown).await }
    }))
    .await;

    assert!(
        matches!(answer, Err(StoreError::Unavailable(_))),
        "{answer:?}"
    );
    assert_eq!(at, Duration::ZERO);
}
