//! The webhook store on Redis: endpoints and the delivery outbox with the semantics of the
//! embedded store ([`crate::engine::embedded::SqliteStore`]'s `WebhookStore`), every change one Lua
//! script (`webhook_scripts`), plus a per-delivery lease so several nodes never send the
//! same delivery at once.
//!
//! # Keys (prefix `sy:wh:`)
//! - `ep:{id}`: hash of an endpoint: `url`, `channels` and `types` (JSON lists), `secret`,
//!   `previous_secret`, `previous_secret_until`, `enabled` (`1`/`0`), `disabled_reason`,
//!   `failing_since`, `created_at`, `updated_at` (secrets as the embedded store keeps them:
//!   as given). Absent fields are `None`.
//! - `endpoints`: sorted set of endpoint ids by `created_at` (listing order: created, id).
//! - `version`: counter bumped by every endpoint change; a script that records deliveries
//!   checks it against the version the node's routes were matched at.
//! - `d:{msg id}`: hash of a delivery: `endpoint`, its event's `channel`, `epoch`,
//!   `offset`, `type`, `time` and `data`, `status`, `attempts`, `next_attempt_at`,
//!   `created_at`, `updated_at`, `lease` (the node token holding it).
//! - `log:{msg id}`: hash of its attempts, `n` → JSON `{at, status_code, latency_ms, error}`.
//! - `pending:{endpoint}`: sorted set of its pending, unleased deliveries by
//!   `next_attempt_at`: [`WebhookStore::outbox_heads`] is two `ZRANGE ... LIMIT 0 1` per
//!   endpoint, [`WebhookStore::due_for`] one range of this endpoint's set.
//! - `leased:{endpoint}`: sorted set of its leased deliveries by lease expiry.
//! - `all:{endpoint}`: sorted set of all its deliveries by `created_at` (the delivery log,
//!   newest first, ties by id as the embedded `ORDER BY created_at DESC, id DESC`).
//! - `finished`: sorted set of succeeded and failed deliveries by `updated_at`, for
//!   retention.
//!
//! # Multi-node: per-delivery leases
//! The dispatcher's holds (its `skip` list) are per process. On Redis, [`WebhookStore::due_for`]
//! *leases* what it returns: the script moves each delivery from `pending:{ep}` to
//! `leased:{ep}` scored by `now + delivery_lease`, and writes this store's random node
//! token into the delivery's `lease` field. Another node's `due_for` does not see it (it is
//! not in the pending set), and its `outbox_heads` reports the lease's expiry as the
//! endpoint's next due time, so it wakes then. [`WebhookStore::record`] ends the lease and
//! puts the delivery back in `pending` at its next attempt (or takes it out for good).
//! Each `due_for` first settles the endpoint's leases (a small set: what the nodes hold):
//! - this node's leases on deliveries it still holds (in `skip`) are renewed;
//! - this node's leases on deliveries its dispatcher no longer holds (it dropped its copy
//!   after an endpoint change) go back to pending at once, rather than after the lease;
//! - expired leases of any node go back to pending: a node that died (or stalled past its
//!   lease) has its deliveries re-sent by another. That is the at-least-once guarantee;
//!   the receiver deduplicates by `webhook-id`, which stays the same.
//!
//! A lease in a set (rather than `SET NX PX` keys) is one atomic step with the pending set,
//! lets the head scan report when leases run out, and leaves no key to expire on its own.
//! A node whose lease ran out and was taken over still logs its attempt when it records,
//! but leaves the new holder's lease alone. The lease must outlast the time a delivery sits
//! in the dispatcher's lane plus its attempt ([`super::RedisStoreConfig::delivery_lease`]); a lane
//! refill of the endpoint renews the leases of what the node holds.
//!
//! A difference with the embedded store: its `outbox_heads` counts deliveries the
//! dispatcher holds as due; here leased deliveries are not due (for anyone) until the lease
//! ends, so a node does not refill for deliveries it or another node already holds.
//!
//! # Where deliveries come from
//! As on the embedded engine, an event's deliveries are recorded in the same atomic step
//! as the event: the append script of a publish and every job script create them (see
//! [`super::scripts`]), from the routes this node matched against its copy of the
//! endpoints' filters ([`super::routes::FilterCache`], reloaded when a script says the
//! endpoints changed). A delivery keeps its event's parts; [`RedisStore::due`] rebuilds the
//! envelope the dispatcher signs and sends, byte for byte the one consumers receive.
//! Deliveries recorded by an older version kept the envelope itself (`body`), and are sent
//! as they are.

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use redis::{Script, Value};

use switchyard_protocol::ChannelName;

use super::{
    RedisStore,
    keys::webhooks_prefix,
    reply::{malformed, split, text},
    wire::Parts,
};
use crate::store::{
    AttemptOutcome, Delivery, DeliveryAttempt, DueDelivery, EndpointRecord, OutboxHead, StoreError,
    WebhookStore,
};

/// Ids read from the `finished` index at once by pruning (as the embedded store's batches).
const PRUNE_BATCH: isize = 1000;

/// A due delivery's body from `[body, channel, epoch, offset, type, time, data]`: the
/// envelope an older version stored, or the one rebuilt from the event's parts (the same
/// bytes consumers got).
fn envelope(f: &[Value]) -> Result<Bytes, StoreError> {
    if let Some(Value::BulkString(body)) = f.first() {
        return Ok(Bytes::from(body.clone()));
    }
    let channel = opt_text(f.get(1))
        .and_then(|c| ChannelName::new(&c).ok())
        .ok_or_else(|| malformed("delivery channel"))?;
    let parts = Parts {
        offset: need_int(f.get(3), "delivery offset")? as u64,
        event_type: opt_text(f.get(4)).ok_or_else(|| malformed("delivery type"))?,
        time: opt_text(f.get(5)).ok_or_else(|| malformed("delivery time"))?,
        data: opt_text(f.get(6)).ok_or_else(|| malformed("delivery data"))?,
    };
    let epoch = opt_text(f.get(2))
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| malformed("delivery epoch"))?;
    let event = parts
        .into_event(&channel, epoch)
        .ok_or_else(|| malformed("delivery data is not JSON"))?;
    Ok(event.envelope().clone())
}

fn opt_text(v: Option<&Value>) -> Option<String> {
    v.and_then(text)
}

fn opt_int(v: Option<&Value>) -> Option<i64> {
    opt_text(v)
        .and_then(|t| t.parse::<f64>().ok())
        .map(|f| f as i64)
}

fn need_int(v: Option<&Value>, what: &str) -> Result<i64, StoreError> {
    opt_int(v).ok_or_else(|| malformed(what))
}

fn array(v: &Value) -> Result<&[Value], StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(malformed("not an array")),
    }
}

/// An endpoint from its id and `ENDPOINT_FIELDS`.
fn endpoint(id: String, f: &[Value]) -> Result<EndpointRecord, StoreError> {
    let list = |i: usize| -> Result<Vec<String>, StoreError> {
        serde_json::from_str(&opt_text(f.get(i)).unwrap_or_else(|| "[]".into()))
            .map_err(|_| malformed("endpoint list"))
    };
    Ok(EndpointRecord {
        url: opt_text(f.first()).ok_or_else(|| malformed("url"))?,
        channels: list(1)?,
        types: list(2)?,
        secret: opt_text(f.get(3)).ok_or_else(|| malformed("secret"))?,
        previous_secret: opt_text(f.get(4)),
        previous_secret_until_ms: opt_int(f.get(5)),
        enabled: opt_text(f.get(6)).as_deref() == Some("1"),
        disabled_reason: opt_text(f.get(7)),
        failing_since_ms: opt_int(f.get(8)),
        created_at_ms: need_int(f.get(9), "created_at")?,
        updated_at_ms: need_int(f.get(10), "updated_at")?,
        id,
    })
}

/// An attempt as kept in the log hash.
#[derive(serde::Serialize, serde::Deserialize)]
struct LoggedAttempt {
    at: i64,
    status_code: Option<u16>,
    latency_ms: i64,
    error: Option<String>,
}

impl RedisStore {
    /// Runs a webhook script with the key prefix and `args`.
    async fn wh(&self, script: &Script, args: Vec<Vec<u8>>) -> Result<Value, StoreError> {
        let mut call = script.prepare_invoke();
        for a in &args {
            call.arg(a.as_slice());
        }
        let mut conn = self.conn.clone();
        self.timed(call.invoke_async(&mut conn)).await
    }

    pub(super) async fn list_all_endpoints(
        &self,
    ) -> Result<(i64, Vec<EndpointRecord>), StoreError> {
        let reply = self
            .wh(&self.webhook_scripts.list_endpoints, vec![])
            .await?;
        let items = array(&reply)?;
        let version = need_int(items.first(), "version")?;
        let mut list = Vec::new();
        for pair in array(items.get(1).ok_or_else(|| malformed("endpoints"))?)? {
            let pair = array(pair)?;
            let id = opt_text(pair.first()).ok_or_else(|| malformed("endpoint id"))?;
            list.push(endpoint(id, array(pair.get(1).unwrap_or(&Value::Nil))?)?);
        }
        Ok((version, list))
    }

    async fn read_endpoint(&self, id: &str) -> Result<Option<EndpointRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: Vec<Value> = self
            .timed(
                redis::cmd("HMGET")
                    .arg(format!("{}ep:{id}", webhooks_prefix()))
                    .arg(&[
                        "url",
                        "channels",
                        "types",
                        "secret",
                        "previous_secret",
                        "previous_secret_until",
                        "enabled",
                        "disabled_reason",
                        "failing_since",
                        "created_at",
                        "updated_at",
                    ])
                    .query_async(&mut conn),
            )
            .await?;
        if matches!(fields.first(), None | Some(Value::Nil)) {
            return Ok(None);
        }
        endpoint(id.to_owned(), &fields).map(Some)
    }

    async fn store_endpoint(
        &self,
        e: EndpointRecord,
        max: Option<usize>,
    ) -> Result<(), StoreError> {
        let mut args: Vec<Vec<u8>> = vec![
            e.id.clone().into(),
            max.map_or_else(String::new, |m| m.to_string()).into(),
            e.created_at_ms.to_string().into(),
        ];
        let mut field = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(name.into());
                args.push(v.into());
            }
        };
        field("url", Some(e.url));
        field(
            "channels",
            Some(serde_json::to_string(&e.channels).expect("infallible")),
        );
        field(
            "types",
            Some(serde_json::to_string(&e.types).expect("infallible")),
        );
        field("secret", Some(e.secret));
        field("previous_secret", e.previous_secret);
        field(
            "previous_secret_until",
            e.previous_secret_until_ms.map(|v| v.to_string()),
        );
        field("enabled", Some(if e.enabled { "1" } else { "0" }.into()));
        field("disabled_reason", e.disabled_reason);
        field("failing_since", e.failing_since_ms.map(|v| v.to_string()));
        field("created_at", Some(e.created_at_ms.to_string()));
        field("updated_at", Some(e.updated_at_ms.to_string()));
        let (kind, _) = split(self.wh(&self.webhook_scripts.put_endpoint, args).await?)?;
        match kind.as_str() {
            "ok" => Ok(()),
            "limit" => Err(StoreError::Limit(format!(
                "at most {} webhook endpoints",
                max.unwrap_or_default()
            ))),
            _ => Err(malformed("put endpoint")),
        }
    }

    async fn remove_endpoint(&self, id: String) -> Result<bool, StoreError> {
        let reply = self
            .wh(&self.webhook_scripts.delete_endpoint, vec![id.into()])
            .await?;
        Ok(opt_int(Some(&reply)).ok_or_else(|| malformed("delete endpoint"))? > 0)
    }

    /// Reads the endpoints again into this node's copy of their filters (at start, and when
    /// a script answered that the endpoints changed since the copy was read).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub(super) async fn reload_routes(&self) -> Result<(), StoreError> {
        let (version, endpoints) = self.list_all_endpoints().await?;
        self.routes.replace(version, endpoints);
        Ok(())
    }

    async fn heads(&self, now_ms: i64) -> Result<Vec<OutboxHead>, StoreError> {
        let reply = self
            .wh(&self.webhook_scripts.heads, vec![now_ms.to_string().into()])
            .await?;
        array(&reply)?
            .iter()
            .map(|row| {
                let row = array(row)?;
                let after = opt_int(row.get(3));
                let lease = opt_int(row.get(4));
                let next_due_ms = match (after, lease) {
                    (Some(a), Some(l)) => Some(a.min(l)),
                    (a, l) => a.or(l),
                };
                Ok(OutboxHead {
                    endpoint_id: opt_text(row.first()).ok_or_else(|| malformed("head id"))?,
                    updated_at_ms: need_int(row.get(1), "updated_at")?,
                    has_due: opt_int(row.get(2)) == Some(1),
                    next_due_ms,
                })
            })
            .collect()
    }

    pub(super) async fn due(
        &self,
        endpoint_id: String,
        now_ms: i64,
        limit: usize,
        skip: Vec<String>,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let lease_until = now_ms + self.config.delivery_lease.as_millis() as i64;
        let mut args: Vec<Vec<u8>> = vec![
            endpoint_id.clone().into(),
            now_ms.to_string().into(),
            limit.to_string().into(),
            lease_until.to_string().into(),
            self.node_token.clone().into(),
        ];
        args.extend(skip.into_iter().map(Vec::from));
        let reply = self.wh(&self.webhook_scripts.due_for, args).await?;
        let parts = array(&reply)?;
        let e = array(parts.first().ok_or_else(|| malformed("due endpoint"))?)?;
        let rows = array(parts.get(1).ok_or_else(|| malformed("due rows"))?)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let url = opt_text(e.get(1)).ok_or_else(|| malformed("url"))?;
        let secret = opt_text(e.get(2)).ok_or_else(|| malformed("secret"))?;
        let previous_secret = opt_text(e.get(3));
        let previous_secret_until_ms = opt_int(e.get(4));
        rows.iter()
            .map(|row| {
                let row = array(row)?;
                Ok(DueDelivery {
                    id: opt_text(row.first()).ok_or_else(|| malformed("delivery id"))?,
                    endpoint_id: endpoint_id.clone(),
                    attempts: need_int(row.get(1), "attempts")? as u32,
                    body: envelope(&row[2..])?,
                    url: url.clone(),
                    secret: secret.clone(),
                    previous_secret: previous_secret.clone(),
                    previous_secret_until_ms,
                })
            })
            .collect()
    }

    async fn record_outcome(&self, o: AttemptOutcome) -> Result<(), StoreError> {
        let status = match (o.succeeded, o.next_attempt_at_ms) {
            (true, _) => "succeeded",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let next = if o.succeeded {
            None
        } else {
            o.next_attempt_at_ms
        };
        let entry = serde_json::to_string(&LoggedAttempt {
            at: o.at_ms,
            status_code: o.status_code,
            latency_ms: o.latency_ms,
            error: o.error,
        })
        .expect("infallible");
        let args: Vec<Vec<u8>> = vec![
            o.delivery_id.into(),
            o.endpoint_id.into(),
            o.at_ms.to_string().into(),
            entry.into(),
            status.into(),
            next.map_or_else(String::new, |n| n.to_string()).into(),
            o.disable_endpoint.unwrap_or_default().into(),
            self.node_token.clone().into(),
        ];
        let (kind, _) = split(self.wh(&self.webhook_scripts.record, args).await?)?;
        match kind.as_str() {
            "ok" => Ok(()),
            "not_found" => Err(StoreError::NotFound),
            _ => Err(malformed("record")),
        }
    }

    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply = self
            .wh(
                &self.webhook_scripts.deliveries,
                vec![endpoint_id.into(), limit.to_string().into()],
            )
            .await?;
        let mut out = Vec::new();
        for row in array(&reply)? {
            let row = array(row)?;
            let f = array(row.get(1).ok_or_else(|| malformed("delivery"))?)?;
            let log_fields = array(row.get(2).ok_or_else(|| malformed("log"))?)?;
            let mut log = Vec::new();
            for pair in log_fields.chunks(2) {
                let n = need_int(pair.first(), "attempt n")? as u32;
                let a: LoggedAttempt =
                    serde_json::from_str(&opt_text(pair.get(1)).unwrap_or_default())
                        .map_err(|_| malformed("attempt"))?;
                log.push(DeliveryAttempt {
                    n,
                    at_ms: a.at,
                    status_code: a.status_code,
                    latency_ms: a.latency_ms,
                    error: a.error,
                });
            }
            log.sort_by_key(|a| a.n);
            out.push(Delivery {
                id: opt_text(row.first()).ok_or_else(|| malformed("delivery id"))?,
                channel: opt_text(f.first()).ok_or_else(|| malformed("channel"))?,
                offset: need_int(f.get(1), "offset")? as u64,
                event_type: opt_text(f.get(2)).ok_or_else(|| malformed("type"))?,
                status: opt_text(f.get(3)).ok_or_else(|| malformed("status"))?,
                attempts: need_int(f.get(4), "attempts")? as u32,
                next_attempt_at_ms: opt_int(f.get(5)),
                created_at_ms: need_int(f.get(6), "created_at")?,
                updated_at_ms: need_int(f.get(7), "updated_at")?,
                log,
            });
        }
        Ok(out)
    }

    async fn retry(
        &self,
        endpoint_id: String,
        delivery_id: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let reply = self
            .wh(
                &self.webhook_scripts.retry,
                vec![
                    endpoint_id.into(),
                    delivery_id.into(),
                    now_ms.to_string().into(),
                ],
            )
            .await?;
        match opt_int(Some(&reply)) {
            Some(1) => Ok(()),
            Some(0) => Err(StoreError::NotFound),
            _ => Err(malformed("retry")),
        }
    }

    /// Deletes succeeded and failed deliveries last changed before `before_ms`, with their
    /// attempt logs, in batches; returns how many.
    pub(super) async fn prune_deliveries(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut deleted = 0;
        loop {
            let ids = self
                .ids(
                    format!("{}finished", webhooks_prefix()),
                    format!("({before_ms}"),
                    PRUNE_BATCH,
                )
                .await?;
            if ids.is_empty() {
                return Ok(deleted);
            }
            let more = ids.len() == PRUNE_BATCH as usize;
            let mut args: Vec<Vec<u8>> = vec![before_ms.to_string().into()];
            args.extend(ids.into_iter().map(Vec::from));
            let reply = self.wh(&self.webhook_scripts.prune, args).await?;
            let n = opt_int(Some(&reply)).ok_or_else(|| malformed("prune"))? as usize;
            deleted += n;
            // Rows changed since they were read are left for the next call.
            if !more || n == 0 {
                return Ok(deleted);
            }
        }
    }
}

impl WebhookStore for RedisStore {
    fn list_endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointRecord>, StoreError>> {
        async move { Ok(self.list_all_endpoints().await?.1) }.boxed()
    }

    fn get_endpoint<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<EndpointRecord>, StoreError>> {
        self.read_endpoint(id).boxed()
    }

    fn put_endpoint(
        &self,
        endpoint: EndpointRecord,
        max: Option<usize>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.store_endpoint(endpoint, max).boxed()
    }

    fn delete_endpoint(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.remove_endpoint(id).boxed()
    }

    fn outbox_heads(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<OutboxHead>, StoreError>> {
        self.heads(now_ms).boxed()
    }

    /// Also leases what it returns to this node (see the module docs).
    fn due_for(
        &self,
        endpoint_id: String,
        now_ms: i64,
        limit: usize,
        skip: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<DueDelivery>, StoreError>> {
        self.due(endpoint_id, now_ms, limit, skip).boxed()
    }

    fn record(&self, outcome: AttemptOutcome) -> BoxFuture<'_, Result<(), StoreError>> {
        self.record_outcome(outcome).boxed()
    }

    fn deliveries<'a>(
        &'a self,
        endpoint_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StoreError>> {
        self.list_deliveries(endpoint_id, limit).boxed()
    }

    fn retry_delivery(
        &self,
        endpoint_id: String,
        delivery_id: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.retry(endpoint_id, delivery_id, now_ms).boxed()
    }
}
