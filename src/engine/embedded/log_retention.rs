//! The durable channels' retention: a background task that trims each channel's log in
//! the store to its namespace's `history_size` and `history_ttl`, as memory trims its
//! history, in short passes whose deletes are small writer batches.

use std::{sync::Arc, time::Duration};

use switchyard_transports::namespaces::Namespaces;
use tokio_util::sync::CancellationToken;

use super::SqliteStore;
use crate::time::now_ms;

/// Time between passes: a TTL is kept to about this much.
const EVERY: Duration = Duration::from_secs(1);

/// Runs passes until `stop` fires; a failed pass is logged and tried again at the next.
pub(super) async fn run(
    store: Arc<SqliteStore>,
    namespaces: Arc<Namespaces>,
    stop: CancellationToken,
) {
    let mut next = String::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let from = std::mem::take(&mut next);
        match store.prune_logs(&namespaces, from.clone(), now_ms()).await {
            Ok(after) => next = after,
            Err(e) => {
                tracing::warn!(error = %e, "durable channels' retention failed; trying again");
                next = from;
            }
        }
    }
}
