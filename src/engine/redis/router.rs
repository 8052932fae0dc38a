//! The webhook router of the Redis engine: turns events marked `unrouted` into deliveries,
//! so no event's deliveries are lost between its append and their enqueue.
//!
//! The embedded store records an event's deliveries in the event's own transaction. On
//! Redis the append scripts (the hub's publish, every job script) instead *mark* the event
//! in `sy:wh:unrouted` while any endpoint exists, in the same atomic step. The mark is the
//! durable promise of its deliveries; routing it (matching the endpoints' filters, then the
//! `ENQUEUE` script, which removes the mark as it creates the deliveries) can then happen
//! on any node, exactly once:
//! - a publish is routed inline by the node that took it, before the 201 (its mark is
//!   scored [`PUBLISH_ROUTE_GRACE_MS`](crate::hub::redis::scripts::PUBLISH_ROUTE_GRACE_MS)
//!   ahead, so routers leave it to that node meanwhile);
//! - job events are routed by the node's router, woken by the job operation;
//! - marks left behind by a node that died (or lost Redis) between the two steps are taken
//!   by any node's router once due: taking re-scores a mark [`RETAKE_AFTER`] ahead, so one
//!   router at a time works on it, and a router that dies mid-way leaves it to the next.

use std::{sync::Arc, time::Duration};

use redis::Value;
use switchyard_protocol::ChannelName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    RedisStore,
    hub::event_from_entry,
    reply::{malformed, text},
    webhooks::prefix,
};
use crate::{store::StoreError, time::now_ms};

/// Marks taken per round trip.
const TAKE_BATCH: usize = 256;
/// How long a mark a router took is left to it before another router may take it.
const RETAKE_AFTER: Duration = Duration::from_secs(30);
/// How often a router looks for marks nobody woke it for (another node's leftovers).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pass {
    /// Marks taken.
    pub(super) taken: usize,
    /// Deliveries created.
    pub(super) deliveries: usize,
    /// Marks whose event was no longer in history (trimmed or pruned before routing).
    pub(super) lost: usize,
}

impl RedisStore {
    /// Takes the due marks (up to [`TAKE_BATCH`]) and routes each.
    ///
    /// # Errors
    /// When Redis cannot be reached; the marks stay for a later pass.
    pub(super) async fn route_pass(&self) -> Result<Pass, StoreError> {
        self.refresh_filters().await?;
        let now = now_ms();
        let again = now + RETAKE_AFTER.as_millis() as i64;
        let mut call = self.webhook_scripts.take_unrouted.prepare_invoke();
        call.arg(prefix()).arg(now).arg(TAKE_BATCH).arg(again);
        let mut conn = self.conn.clone();
        let reply: Value = self.timed(call.invoke_async(&mut conn)).await?;
        let Value::Array(rows) = reply else {
            return Err(malformed("take unrouted"));
        };
        let mut pass = Pass {
            taken: rows.len(),
            ..Pass::default()
        };
        for row in &rows {
            let Value::Array(row) = row else {
                return Err(malformed("unrouted row"));
            };
            let [mark, channel, epoch, offset, entry] = row.as_slice() else {
                pass.lost += 1;
                tracing::warn!(
                    mark = ?row.first().and_then(text),
                    "an event left history before its webhook deliveries were recorded; they are lost"
                );
                continue;
            };
            let mark = text(mark).ok_or_else(|| malformed("mark"))?;
            let channel = text(channel)
                .and_then(|c| ChannelName::new(&c).ok())
                .ok_or_else(|| malformed("mark channel"))?;
            let number = |v: &Value| text(v).and_then(|t| t.parse::<u64>().ok());
            let (epoch, offset) = number(epoch)
                .zip(number(offset))
                .ok_or_else(|| malformed("mark position"))?;
            let Some(event) = event_from_entry(&channel, epoch, entry) else {
                return Err(malformed("unrouted event"));
            };
            let endpoints = self
                .webhook_filters
                .matching(channel.as_str(), event.event_type());
            pass.deliveries += self
                .enqueue_to(
                    &endpoints,
                    channel.as_str(),
                    offset,
                    event.event_type(),
                    event.envelope(),
                    now,
                    Some(&mark),
                )
                .await?;
        }
        Ok(pass)
    }
}

/// Routes marks until `stop`: whenever `wake` fires (this node ran a job operation) and
/// every [`SWEEP_EVERY`] (marks another node left).
pub(crate) async fn run(store: Arc<RedisStore>, wake: Arc<Notify>, stop: CancellationToken) {
    let mut failing = false;
    loop {
        loop {
            match store.route_pass().await {
                Ok(pass) => {
                    if failing {
                        tracing::info!("webhook router: Redis answers again");
                        failing = false;
                    }
                    if pass.taken < TAKE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "webhook router: cannot route events; retrying");
                        failing = true;
                    }
                    break;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}
