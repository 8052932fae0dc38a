//! An in-memory [`WebhookStore`] with the embedded engine's semantics
//! (`engine/embedded/webhooks.rs`), which also hands each recorded outcome to the test.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{FutureExt, future::BoxFuture};
use tokio::sync::{Notify, mpsc};

use crate::store::{
    AttemptOutcome, Delivery, DeliveryAttempt, DueDelivery, EndpointRecord, OutboxHead, StoreError,
    WebhookStore,
};

/// One row of the outbox.
#[derive(Clone, Debug)]
struct Row {
    endpoint_id: String,
    body: Bytes,
    /// `pending`, `succeeded` or `failed`.
    status: &'static str,
    attempts: u32,
    next_attempt_at_ms: Option<i64>,
    created_at_ms: i64,
    updated_at_ms: i64,
    /// Insertion order: breaks ties of `next_attempt_at_ms` as SQLite's rowid order would.
    seq: u64,
    log: Vec<DeliveryAttempt>,
}

#[derive(Debug, Default)]
struct State {
    endpoints: BTreeMap<String, EndpointRecord>,
    deliveries: BTreeMap<String, Row>,
    next_seq: u64,
}

/// Endpoints and the outbox in memory. Like the real store, it wakes the dispatcher
/// (`outbox_changed`) when an endpoint changes, an outcome disables one, or a delivery is
/// retried by hand; [`FakeStore::add_delivery`] does not, so a test decides whether a new
/// delivery is announced.
pub(crate) struct FakeStore {
    state: Mutex<State>,
    outbox_changed: Arc<Notify>,
    outcomes_tx: mpsc::UnboundedSender<AttemptOutcome>,
    /// Every outcome recorded, in order, for [`FakeStore::next_outcome`].
    outcomes_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<AttemptOutcome>>,
}

impl FakeStore {
    /// An empty store that wakes `outbox_changed`.
    pub(crate) fn new(outbox_changed: Arc<Notify>) -> Self {
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        Self {
            state: Mutex::default(),
            outbox_changed,
            outcomes_tx,
            outcomes_rx: tokio::sync::Mutex::new(outcomes_rx),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Stores `endpoint` as it is, without waking the dispatcher.
    pub(crate) fn add_endpoint(&self, endpoint: EndpointRecord) {
        self.state().endpoints.insert(endpoint.id.clone(), endpoint);
    }

    /// Adds a pending delivery of `body` to `endpoint_id`, due at `due_ms`, without waking
    /// the dispatcher (as if recorded by another node or a missed wake-up).
    pub(crate) fn add_delivery(&self, endpoint_id: &str, id: &str, body: &str, due_ms: i64) {
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.deliveries.insert(
            id.to_owned(),
            Row {
                endpoint_id: endpoint_id.to_owned(),
                body: Bytes::copy_from_slice(body.as_bytes()),
                status: "pending",
                attempts: 0,
                next_attempt_at_ms: Some(due_ms),
                created_at_ms: due_ms,
                updated_at_ms: due_ms,
                seq,
                log: Vec::new(),
            },
        );
    }

    /// The endpoint as stored now.
    pub(crate) fn endpoint(&self, id: &str) -> EndpointRecord {
        self.state().endpoints[id].clone()
    }

    /// A delivery's status (`pending`, `succeeded`, `failed`), attempts and next due time.
    pub(crate) fn delivery(&self, id: &str) -> (&'static str, u32, Option<i64>) {
        let row = &self.state().deliveries[id];
        (row.status, row.attempts, row.next_attempt_at_ms)
    }

    /// The next outcome recorded, waiting at most `within` (Tokio time) for it.
    pub(crate) async fn next_outcome(&self, within: Duration) -> Option<AttemptOutcome> {
        let mut rx = self.outcomes_rx.lock().await;
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }
}

impl WebhookStore for FakeStore {
    fn list_endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointRecord>, StoreError>> {
        let mut list: Vec<_> = self.state().endpoints.values().cloned().collect();
        list.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        async move { Ok(list) }.boxed()
    }

    fn get_endpoint<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<EndpointRecord>, StoreError>> {
        let endpoint = self.state().endpoints.get(id).cloned();
        async move { Ok(endpoint) }.boxed()
    }

    fn put_endpoint(
        &self,
        endpoint: EndpointRecord,
        max: Option<usize>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = {
            let mut state = self.state();
            if max.is_some_and(|max| state.endpoints.len() >= max) {
                Err(StoreError::Limit(format!(
                    "at most {} webhook endpoints",
                    max.unwrap_or_default()
                )))
            } else {
                state.endpoints.insert(endpoint.id.clone(), endpoint);
                Ok(())
            }
        };
        if result.is_ok() {
            self.outbox_changed.notify_one();
        }
        async move { result }.boxed()
    }

    fn delete_endpoint(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        let existed = {
            let mut state = self.state();
            state.deliveries.retain(|_, row| row.endpoint_id != id);
            state.endpoints.remove(&id).is_some()
        };
        self.outbox_changed.notify_one();
        async move { Ok(existed) }.boxed()
    }

    fn outbox_heads(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<OutboxHead>, StoreError>> {
        let state = self.state();
        let heads = state
            .endpoints
            .values()
            .filter(|e| e.enabled)
            .map(|e| {
                let pending = state
                    .deliveries
                    .values()
                    .filter(|row| row.endpoint_id == e.id && row.status == "pending")
                    .filter_map(|row| row.next_attempt_at_ms);
                let first = pending.clone().min();
                OutboxHead {
                    endpoint_id: e.id.clone(),
                    updated_at_ms: e.updated_at_ms,
                    has_due: first.is_some_and(|at| at <= now_ms),
                    next_due_ms: pending.filter(|at| *at > now_ms).min(),
                }
            })
            .collect();
        async move { Ok(heads) }.boxed()
    }

    fn due_for(
        &self,
        endpoint_id: String,
        now_ms: i64,
        limit: usize,
        skip: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<DueDelivery>, StoreError>> {
        let state = self.state();
        let due = match state.endpoints.get(&endpoint_id).filter(|e| e.enabled) {
            None => Vec::new(),
            Some(e) => {
                let mut rows: Vec<_> = state
                    .deliveries
                    .iter()
                    .filter(|(id, row)| {
                        row.endpoint_id == endpoint_id
                            && row.status == "pending"
                            && row.next_attempt_at_ms.is_some_and(|at| at <= now_ms)
                            && !skip.contains(id)
                    })
                    .collect();
                rows.sort_by_key(|(_, row)| (row.next_attempt_at_ms, row.seq));
                rows.into_iter()
                    .take(limit)
                    .map(|(id, row)| DueDelivery {
                        id: id.clone(),
                        endpoint_id: endpoint_id.clone(),
                        body: row.body.clone(),
                        attempts: row.attempts,
                        url: e.url.clone(),
                        secret: e.secret.clone(),
                        previous_secret: e.previous_secret.clone(),
                        previous_secret_until_ms: e.previous_secret_until_ms,
                    })
                    .collect()
            }
        };
        async move { Ok(due) }.boxed()
    }

    fn record(&self, o: AttemptOutcome) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = (|| {
            let mut state = self.state();
            let row = state
                .deliveries
                .get_mut(&o.delivery_id)
                .ok_or(StoreError::NotFound)?;
            row.attempts += 1;
            row.updated_at_ms = o.at_ms;
            row.log.push(DeliveryAttempt {
                n: row.attempts,
                at_ms: o.at_ms,
                status_code: o.status_code,
                latency_ms: o.latency_ms,
                error: o.error.clone(),
            });
            (row.status, row.next_attempt_at_ms) = match (o.succeeded, o.next_attempt_at_ms) {
                (true, _) => ("succeeded", None),
                (false, Some(next)) => ("pending", Some(next)),
                (false, None) => ("failed", None),
            };
            if let Some(e) = state.endpoints.get_mut(&o.endpoint_id) {
                if o.succeeded {
                    e.failing_since_ms = None;
                } else {
                    e.failing_since_ms.get_or_insert(o.at_ms);
                }
                if let Some(reason) = &o.disable_endpoint {
                    e.enabled = false;
                    e.disabled_reason = Some(reason.clone());
                    e.updated_at_ms = o.at_ms;
                }
            }
            Ok(())
        })();
        if result.is_ok() {
            if o.disable_endpoint.is_some() {
                self.outbox_changed.notify_one();
            }
            let _ = self.outcomes_tx.send(o);
        }
        async move { result }.boxed()
    }

    fn deliveries<'a>(
        &'a self,
        endpoint_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StoreError>> {
        let mut list: Vec<_> = self
            .state()
            .deliveries
            .iter()
            .filter(|(_, row)| row.endpoint_id == endpoint_id)
            .map(|(id, row)| Delivery {
                id: id.clone(),
                channel: "test".into(),
                offset: row.seq,
                event_type: "test.event".into(),
                status: row.status.into(),
                attempts: row.attempts,
                next_attempt_at_ms: row.next_attempt_at_ms,
                created_at_ms: row.created_at_ms,
                updated_at_ms: row.updated_at_ms,
                log: row.log.clone(),
            })
            .collect();
        list.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        list.truncate(limit);
        async move { Ok(list) }.boxed()
    }

    fn retry_delivery(
        &self,
        endpoint_id: String,
        delivery_id: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = {
            let mut state = self.state();
            match state
                .deliveries
                .get_mut(&delivery_id)
                .filter(|row| row.endpoint_id == endpoint_id)
            {
                Some(row) => {
                    row.status = "pending";
                    row.next_attempt_at_ms = Some(now_ms);
                    row.updated_at_ms = now_ms;
                    Ok(())
                }
                None => Err(StoreError::NotFound),
            }
        };
        if result.is_ok() {
            self.outbox_changed.notify_one();
        }
        async move { result }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str) -> EndpointRecord {
        EndpointRecord {
            id: id.into(),
            url: format!("https://{id}.example/hook"),
            channels: vec!["**".into()],
            types: Vec::new(),
            secret: "whsec_x".into(),
            previous_secret: None,
            previous_secret_until_ms: None,
            enabled: true,
            disabled_reason: None,
            failing_since_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn outcome(delivery: &str, at_ms: i64, succeeded: bool, next: Option<i64>) -> AttemptOutcome {
        AttemptOutcome {
            delivery_id: delivery.into(),
            endpoint_id: "a".into(),
            at_ms,
            status_code: Some(if succeeded { 200 } else { 500 }),
            latency_ms: 1,
            error: None,
            succeeded,
            next_attempt_at_ms: next,
            disable_endpoint: None,
        }
    }

    // The fake is only worth its tests if it answers like the SQL it stands in for.
    #[tokio::test]
    async fn heads_and_due_follow_the_outbox_like_the_sql() {
        let store = FakeStore::new(Arc::default());
        store.add_endpoint(endpoint("a"));
        let mut off = endpoint("off");
        off.enabled = false;
        store.add_endpoint(off);
        store.add_delivery("a", "d3", "{}", 30);
        store.add_delivery("a", "d1", "{}", 10);
        store.add_delivery("a", "d2", "{}", 10);
        store.add_delivery("a", "later", "{}", 500);
        store.add_delivery("off", "x", "{}", 0);

        let heads = store.outbox_heads(20).await.unwrap();
        assert_eq!(heads.len(), 1, "only enabled endpoints");
        assert!(heads[0].has_due);
        assert_eq!(heads[0].next_due_ms, Some(30));

        let ids = |due: Vec<DueDelivery>| due.into_iter().map(|d| d.id).collect::<Vec<_>>();
        let due = store.due_for("a".into(), 30, 10, Vec::new()).await.unwrap();
        assert_eq!(ids(due), ["d1", "d2", "d3"], "oldest due first");
        let due = store.due_for("a".into(), 30, 1, vec!["d1".into()]).await;
        assert_eq!(ids(due.unwrap()), ["d2"], "skip, then limit");
        assert!(
            store
                .due_for("off".into(), 30, 10, Vec::new())
                .await
                .unwrap()
                .is_empty()
        );

        store
            .record(outcome("d1", 40, false, Some(90)))
            .await
            .unwrap();
        assert_eq!(store.delivery("d1"), ("pending", 1, Some(90)));
        assert_eq!(store.endpoint("a").failing_since_ms, Some(40));
        store.record(outcome("d1", 90, false, None)).await.unwrap();
        assert_eq!(store.delivery("d1"), ("failed", 2, None));
        assert_eq!(store.endpoint("a").failing_since_ms, Some(40), "kept");
        store
            .record(outcome("d2", 95, true, Some(1)))
            .await
            .unwrap();
        assert_eq!(store.delivery("d2"), ("succeeded", 1, None));
        assert_eq!(store.endpoint("a").failing_since_ms, None);
        assert!(matches!(
            store.record(outcome("gone", 1, true, None)).await,
            Err(StoreError::NotFound)
        ));

        store
            .retry_delivery("a".into(), "d1".into(), 100)
            .await
            .unwrap();
        assert_eq!(store.delivery("d1"), ("pending", 2, Some(100)));
        assert!(
            store
                .retry_delivery("off".into(), "d1".into(), 100)
                .await
                .is_err(),
            "another endpoint's delivery"
        );
        let log = store.deliveries("a", 10).await.unwrap();
        let d1 = log.iter().find(|d| d.id == "d1").unwrap();
        assert_eq!(d1.log.iter().map(|a| a.n).collect::<Vec<_>>(), [1, 2]);

        let mut disabled = outcome("d3", 120, false, Some(200));
        disabled.disable_endpoint = Some("gone".into());
        store.record(disabled).await.unwrap();
        assert!(!store.endpoint("a").enabled);
        assert_eq!(store.endpoint("a").updated_at_ms, 120);
        assert!(store.outbox_heads(200).await.unwrap().is_empty());
    }
}
