//! The Lua scripts of the webhook store: one per operation, each one atomic step, on the
//! keys of the shared prelude ([`super::scripts`]; layout in `webhooks`). Which delivery
//! and endpoint keys a script touches depends on what it reads, so, like the job scripts,
//! they need one Redis (or Valkey) primary, not Redis Cluster. Deliveries are created by the
//! scripts that append their events (see [`super::scripts`]), not here.

use redis::Script;

use super::{keys::Topics, scripts::script};

/// The fields of an endpoint's hash, in the order [`LIST_ENDPOINTS`] returns them.
const ENDPOINT_FIELDS: &str = r#"
local ENDPOINT_FIELDS = {'url', 'channels', 'types', 'secret', 'previous_secret',
  'previous_secret_until', 'enabled', 'disabled_reason', 'failing_since', 'created_at', 'updated_at'}
"#;

/// ARGV: id, max endpoints (`''`: no limit), created_at, then the hash's field/value pairs.
/// Replaces the endpoint whole (as `INSERT OR REPLACE`). Returns `{'ok'}` or `{'limit'}`.
const PUT_ENDPOINT: &str = r#"
local id, max, created = ARGV[1], ARGV[2], ARGV[3]
if max ~= '' and redis.call('ZCARD', index) >= tonumber(max) then return {'limit'} end
local k = ep_key(id)
redis.call('DEL', k)
redis.call('HSET', k, unpack(ARGV, 4))
redis.call('ZADD', index, created, id)
redis.call('INCR', version)
signal('outbox')
return {'ok'}
"#;

/// ARGV: id. Deletes the endpoint, its deliveries and their attempt logs. Returns 1 when
/// the endpoint existed.
const DELETE_ENDPOINT: &str = r#"
local id = ARGV[1]
for _, d in ipairs(redis.call('ZRANGE', all_key(id), 0, -1)) do
  redis.call('DEL', d_key(d), log_key(d))
  redis.call('ZREM', finished, d)
end
redis.call('DEL', all_key(id), pending_key(id), leased_key(id))
redis.call('ZREM', index, id)
local existed = redis.call('DEL', ep_key(id))
redis.call('INCR', version)
return existed
"#;

/// No arguments. Returns `{version, {{id, fields}, ...}}` in creation order (ties by id).
const LIST_ENDPOINTS: &str = r#"
local out = {}
for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local f = redis.call('HMGET', ep_key(id), unpack(ENDPOINT_FIELDS))
  if f[1] then table.insert(out, {id, f}) end
end
return {redis.call('GET', version) or '0', out}
"#;

/// ARGV: now. For each enabled endpoint: `{id, updated_at, has_due (0/1), first pending
/// score after now or false, first lease expiry or false}`. An expired lease counts as due.
const HEADS: &str = r#"
local now_s = ARGV[1]
local now = tonumber(now_s)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local enabled, updated = unpack(redis.call('HMGET', ep_key(id), 'enabled', 'updated_at'))
  if enabled == '1' then
    local due = #redis.call('ZRANGE', pending_key(id), '-inf', now_s, 'BYSCORE', 'LIMIT', 0, 1) > 0
    local after = redis.call('ZRANGE', pending_key(id), '(' .. now_s, '+inf', 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')[2]
    local lease = redis.call('ZRANGE', leased_key(id), 0, 0, 'WITHSCORES')[2]
    if lease and tonumber(lease) <= now then
      due = true
      lease = nil
    end
    table.insert(out, {id, updated, due and 1 or 0, after or false, lease or false})
  end
end
return out
"#;

/// ARGV: endpoint id, now, limit, lease expiry, this node's token, then the ids to skip (the
/// ones this node's dispatcher holds). First settles the endpoint's leases: this node's
/// leases on skipped ids are renewed; its other leases (dropped by its dispatcher), expired
/// leases and leases of deleted deliveries go back to the pending set (if still pending).
/// Then leases up to `limit` due, unskipped deliveries to this node, oldest due first.
/// Returns `{endpoint fields (enabled, url, secret, previous_secret, previous_secret_until),
/// {{id, attempts, body, channel, epoch, offset, type, time, data}, ...}}`: a delivery
/// recorded before deliveries kept their event's parts has its `body` (the envelope), the
/// others have the parts; no deliveries for a missing or disabled endpoint.
const DUE_FOR: &str = r#"
local ep, now_s, limit, lease_until, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local now = tonumber(now_s)
local e = redis.call('HMGET', ep_key(ep), 'enabled', 'url', 'secret', 'previous_secret', 'previous_secret_until')
if e[1] ~= '1' then return {e, {}} end
local skip, skipped = {}, 0
for i = 6, #ARGV do
  skip[ARGV[i]] = true
  skipped = skipped + 1
end
local pending, leased = pending_key(ep), leased_key(ep)
local held = redis.call('ZRANGE', leased, 0, -1, 'WITHSCORES')
for i = 1, #held, 2 do
  local id, expires = held[i], tonumber(held[i + 1])
  local d = d_key(id)
  local owner = redis.call('HGET', d, 'lease')
  if owner == token and skip[id] then
    redis.call('ZADD', leased, lease_until, id)
  elseif owner == token or expires <= now or not owner then
    redis.call('ZREM', leased, id)
    redis.call('HDEL', d, 'lease')
    local st, next = unpack(redis.call('HMGET', d, 'status', 'next_attempt_at'))
    if st == 'pending' then redis.call('ZADD', pending, next, id) end
  end
end
local out = {}
if limit <= 0 then return {e, out} end
local ids = redis.call('ZRANGE', pending, '-inf', now_s, 'BYSCORE', 'LIMIT', 0, limit + skipped)
for _, id in ipairs(ids) do
  if #out >= limit then break end
  if not skip[id] then
    local d = d_key(id)
    local f = redis.call('HMGET', d, 'attempts', 'body', 'channel', 'epoch', 'offset', 'type',
      'time', 'data')
    redis.call('ZREM', pending, id)
    if f[1] then
      redis.call('ZADD', leased, lease_until, id)
      redis.call('HSET', d, 'lease', token)
      table.insert(out, {id, unpack(f)})
    end
  end
end
return {e, out}
"#;

/// ARGV: delivery id, endpoint id, attempt start (ms), the attempt's log entry (JSON),
/// new status, next attempt (`''`: none), disable reason (`''`: none), this node's token.
/// Returns `{'ok'}` or `{'not_found'}`.
const RECORD: &str = r#"
local id, ep, at, entry, status, next, disable, token = unpack(ARGV, 1, 8)
local d = d_key(id)
if redis.call('EXISTS', d) == 0 then return {'not_found'} end
local n = redis.call('HINCRBY', d, 'attempts', 1)
redis.call('HSET', log_key(id), n, entry)
redis.call('HSET', d, 'updated_at', at, 'status', status)
if next ~= '' then
  redis.call('HSET', d, 'next_attempt_at', next)
else
  redis.call('HDEL', d, 'next_attempt_at')
end
local owner, dep = unpack(redis.call('HMGET', d, 'lease', 'endpoint'))
-- A lease another node took after ours ran out stays with it: it is sending now.
if not owner or owner == token then
  redis.call('HDEL', d, 'lease')
  redis.call('ZREM', leased_key(dep), id)
  if status == 'pending' then
    redis.call('ZADD', pending_key(dep), next, id)
  else
    redis.call('ZREM', pending_key(dep), id)
  end
end
if status == 'pending' then
  redis.call('ZREM', finished, id)
else
  redis.call('ZADD', finished, at, id)
end
local e = ep_key(ep)
if redis.call('EXISTS', e) == 1 then
  if status == 'succeeded' then
    redis.call('HDEL', e, 'failing_since')
  elseif redis.call('HEXISTS', e, 'failing_since') == 0 then
    redis.call('HSET', e, 'failing_since', at)
  end
  if disable ~= '' then
    redis.call('HSET', e, 'enabled', '0', 'disabled_reason', disable, 'updated_at', at)
    redis.call('INCR', version)
  end
end
return {'ok'}
"#;

/// ARGV: endpoint id, delivery id, now. Makes the delivery pending and due now (a leased
/// one becomes due when its lease ends). Returns 1, or 0 when there is no such delivery of
/// that endpoint.
const RETRY: &str = r#"
local ep, id, now = ARGV[1], ARGV[2], ARGV[3]
local d = d_key(id)
if redis.call('HGET', d, 'endpoint') ~= ep then return 0 end
redis.call('HSET', d, 'status', 'pending', 'next_attempt_at', now, 'updated_at', now)
redis.call('ZREM', finished, id)
if not redis.call('HGET', d, 'lease') then redis.call('ZADD', pending_key(ep), now, id) end
signal('outbox')
return 1
"#;

/// ARGV: endpoint id, limit. The endpoint's newest deliveries (by creation, ties by id):
/// `{{id, fields, attempt log as HGETALL}, ...}`.
const DELIVERIES: &str = r#"
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', all_key(ARGV[1]), 0, tonumber(ARGV[2]) - 1)) do
  local f = redis.call('HMGET', d_key(id), 'channel', 'offset', 'type', 'status', 'attempts',
    'next_attempt_at', 'created_at', 'updated_at')
  if f[1] then table.insert(out, {id, f, redis.call('HGETALL', log_key(id))}) end
end
return out
"#;

/// ARGV: cut-off (ms), then delivery ids read from the `finished` index. Deletes those
/// still finished and last changed before the cut-off, with their logs. Returns how many.
const PRUNE: &str = r#"
local before, n = tonumber(ARGV[1]), 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local d = d_key(id)
  local st, updated, ep = unpack(redis.call('HMGET', d, 'status', 'updated_at', 'endpoint'))
  if not st then
    redis.call('ZREM', finished, id)
  elseif (st == 'succeeded' or st == 'failed') and tonumber(updated) < before then
    redis.call('DEL', d, log_key(id))
    redis.call('ZREM', finished, id)
    redis.call('ZREM', all_key(ep), id)
    redis.call('ZREM', pending_key(ep), id)
    redis.call('ZREM', leased_key(ep), id)
    n = n + 1
  end
end
return n
"#;

/// The webhook scripts, hashed once.
pub(super) struct WebhookScripts {
    pub(super) put_endpoint: Script,
    pub(super) delete_endpoint: Script,
    pub(super) list_endpoints: Script,
    pub(super) heads: Script,
    pub(super) due_for: Script,
    pub(super) record: Script,
    pub(super) retry: Script,
    pub(super) deliveries: Script,
    pub(super) prune: Script,
}

impl std::fmt::Debug for WebhookScripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookScripts").finish_non_exhaustive()
    }
}

impl WebhookScripts {
    pub(super) fn new(topics: &Topics) -> Self {
        let make = |body: &str| script(topics, &format!("{ENDPOINT_FIELDS}{body}"));
        Self {
            put_endpoint: make(PUT_ENDPOINT),
            delete_endpoint: make(DELETE_ENDPOINT),
            list_endpoints: make(LIST_ENDPOINTS),
            heads: make(HEADS),
            due_for: make(DUE_FOR),
            record: make(RECORD),
            retry: make(RETRY),
            deliveries: make(DELIVERIES),
            prune: make(PRUNE),
        }
    }
}
