//! The Lua scripts of the job store: one per operation, each one atomic step that checks
//! the job's state and lease, changes it, maintains the queue/lease/retention indexes and
//! appends the job's event to its channel (`XADD` + `PUBLISH`, in the hub's layout).
//!
//! Every per-job script takes the same keys (job hash, channel meta, channel history,
//! queue, leases, ended, then an optional idempotency key) and starts with the same
//! arguments (job id, the job's channel, live topic, epoch for a new channel, event time,
//! now in unix ms, then the routes block of [`super::scripts`]: endpoints version, now,
//! count, routes), so the helpers below can be shared; the script's own arguments follow
//! the routes (`ARGV[X]`, `ARGV[X + 1]`, ...). The event a script appends records its
//! webhook deliveries in the same step. A script only ever touches the keys it is given: the
//! claim, lease-expiry and prune paths first read candidate ids from an index, then run
//! the script on one id, which re-checks it (another node may have taken it meanwhile).

use redis::{Script, Value, aio::ConnectionManager};

use super::{
    keys::{self, JobKeys, Topics},
    routes::Routes,
    scripts::script,
};

/// Helpers of the job scripts (after the shared prelude: `fmt`, `now_ms`, `open_history`,
/// `record_deliveries`); a script whose routes are stale stops here, having written nothing.
const JOB_PRELUDE: &str = r#"
local job, meta, stream, queue, leases, ended, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id, channel, live, new_epoch, time, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local routes = tonumber(ARGV[9])
local X = 10 + 3 * routes
if not routes_current(ARGV[7]) then return {'reroute'} end
-- The next event of the job's channel, exactly as the hub's append script writes one, with
-- the webhook deliveries it owes.
local function append_event(ty, data)
  local epoch = open_history(meta, stream, new_epoch)
  local offset = redis.call('HINCRBY', meta, 'last', 1)
  redis.call('XADD', stream, fmt(offset) .. '-0', 'ty', ty, 'tm', time, 'ms', fmt(now_ms()), 'd', data)
  record_deliveries(10, routes, channel, epoch, offset, ty, time, data, ARGV[8])
  redis.call('PUBLISH', live, epoch .. ' ' .. fmt(offset) .. ' ' .. fmt(#ty) .. ' ' .. fmt(#time)
    .. '\n' .. ty .. time .. data)
end
local function record()
  return redis.call('HMGET', job, 'status', 'created_at', 'updated_at', 'attempts',
    'max_attempts', 'result', 'error')
end
local function is_terminal(st)
  return st == 'succeeded' or st == 'failed' or st == 'canceled'
end
-- Ends the lease (if any) and records when the job ended, for retention.
local function finish(fields)
  redis.call('HSET', job, 'updated_at', now, unpack(fields))
  redis.call('HDEL', job, 'lease', 'lease_expires_at')
  redis.call('ZREM', queue, id)
  redis.call('ZREM', leases, id)
  redis.call('ZADD', ended, now, id)
end
-- Back to the end of the queue; the event says why (and carries the worker's error, if any).
local function requeue(attempts, reason, err)
  redis.call('HSET', job, 'status', 'queued', 'queued_at', now, 'updated_at', now)
  redis.call('HDEL', job, 'lease', 'lease_expires_at')
  redis.call('ZREM', leases, id)
  redis.call('ZADD', queue, now, id)
  signal('jobs')
  local data = '{"status":"queued","attempts":' .. attempts .. ',"reason":"' .. reason .. '"'
  if err then data = data .. ',"error":' .. err end
  append_event('job.queued', data .. '}')
end
local function fail(attempts, err)
  finish({'status', 'failed', 'error', err})
  append_event('job.failed', '{"status":"failed","error":' .. err .. ',"attempts":' .. attempts .. '}')
end
"#;

/// ARGV X: payload, X + 1: max attempts, X + 2: request hash. Returns `{'ok', record}`,
/// `{'seen', first job id}` or `{'conflict'}`.
const SUBMIT: &str = r#"
if idem then
  local seen = redis.call('GET', idem)
  if seen then
    local hash, first = string.match(seen, '^(%S+) (%S+)$')
    if hash ~= ARGV[X + 2] then return {'conflict'} end
    return {'seen', first}
  end
end
redis.call('HSET', job, 'status', 'queued', 'payload', ARGV[X], 'attempts', 0,
  'max_attempts', ARGV[X + 1], 'queued_at', now, 'created_at', now, 'updated_at', now)
if idem then
  redis.call('HSET', job, 'idempotency_key', idem)
  redis.call('SET', idem, ARGV[X + 2] .. ' ' .. id)
end
redis.call('ZADD', queue, now, id)
signal('jobs')
append_event('job.queued', '{"status":"queued","attempts":0}')
-- A subscriber may have opened the channel before the job existed (with an expiry).
redis.call('PERSIST', meta)
redis.call('PERSIST', stream)
return {'ok', record()}
"#;

/// ARGV X: lease, X + 1: lease ms. Returns `{'ok', record, payload, lease expiry}` or
/// `{'gone'}` when the job is no longer queued (another node claimed or canceled it).
const CLAIM: &str = r#"
if not redis.call('ZSCORE', queue, id) then return {'gone'} end
redis.call('ZREM', queue, id)
if redis.call('HGET', job, 'status') ~= 'queued' then return {'gone'} end
local expires = fmt(tonumber(now) + tonumber(ARGV[X + 1]))
local attempts = redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'status', 'running', 'lease', ARGV[X], 'lease_ms', ARGV[X + 1],
  'lease_expires_at', expires, 'updated_at', now)
redis.call('ZADD', leases, expires, id)
append_event('job.started', '{"status":"running","attempt":' .. fmt(attempts) .. '}')
return {'ok', record(), redis.call('HGET', job, 'payload'), expires}
"#;

/// ARGV X: lease, X + 1: `progress`, `complete`, `retry` or `fail`, X + 2: the worker's JSON.
/// Returns `{'ok', record}`, `{'not_found'}` or `{'stale', status}`.
const REPORT: &str = r#"
local st, lease, attempts, max = unpack(redis.call('HMGET', job, 'status', 'lease', 'attempts', 'max_attempts'))
if not st then return {'not_found'} end
if st ~= 'running' or lease ~= ARGV[X] then return {'stale', st} end
local kind, data = ARGV[X + 1], ARGV[X + 2]
if kind == 'progress' then
  local expires = fmt(tonumber(now) + tonumber(redis.call('HGET', job, 'lease_ms')))
  redis.call('HSET', job, 'lease_expires_at', expires, 'updated_at', now)
  redis.call('ZADD', leases, expires, id)
  append_event('job.progress', data)
elseif kind == 'complete' then
  finish({'status', 'succeeded', 'result', data})
  append_event('job.completed', '{"status":"succeeded","result":' .. data .. '}')
elseif kind == 'retry' and tonumber(attempts) < tonumber(max) then
  requeue(attempts, 'retry', data)
else
  fail(attempts, data)
end
return {'ok', record()}
"#;

/// Returns `{'ok', record}`, `{'not_found'}` or `{'finished', status}`.
const CANCEL: &str = r#"
local st = redis.call('HGET', job, 'status')
if not st then return {'not_found'} end
if is_terminal(st) then return {'finished', st} end
finish({'status', 'canceled'})
append_event('job.canceled', '{"status":"canceled"}')
return {'ok', record()}
"#;

/// ARGV X: the error of a last attempt whose lease ran out. Returns `{'requeued'}`,
/// `{'failed'}` or `{'skip'}` (the lease was extended, or the job ended, meanwhile).
const EXPIRE: &str = r#"
local st, expires, attempts, max = unpack(redis.call('HMGET', job, 'status', 'lease_expires_at', 'attempts', 'max_attempts'))
if st ~= 'running' or not expires then
  redis.call('ZREM', leases, id)
  return {'skip'}
end
if tonumber(expires) > tonumber(now) then
  redis.call('ZADD', leases, expires, id)
  return {'skip'}
end
if tonumber(attempts) < tonumber(max) then
  requeue(attempts, 'lease_expired', nil)
  return {'requeued'}
end
fail(attempts, ARGV[X])
return {'failed'}
"#;

/// ARGV X: the cut-off (unix ms). Deletes the job, its channel and its idempotency key
/// when it is still finished and ended before the cut-off. Returns `{'deleted'}`,
/// `{'kept'}` or `{'raced'}` (its idempotency key is not the one given).
const PRUNE: &str = r#"
local st, updated, key = unpack(redis.call('HMGET', job, 'status', 'updated_at', 'idempotency_key'))
if not st then
  redis.call('DEL', meta, stream)
  redis.call('ZREM', ended, id)
  return {'deleted'}
end
if not is_terminal(st) or tonumber(updated) >= tonumber(ARGV[X]) then return {'kept'} end
if key and key ~= idem then return {'raced'} end
redis.call('DEL', job, meta, stream)
if key then redis.call('DEL', idem) end
redis.call('ZREM', ended, id)
return {'deleted'}
"#;

/// The scripts, hashed once.
pub(super) struct Scripts {
    submit: Script,
    claim: Script,
    report: Script,
    cancel: Script,
    expire: Script,
    prune: Script,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripts").finish_non_exhaustive()
    }
}

/// The arguments every per-job script starts with.
#[derive(Debug)]
pub(super) struct Common<'a> {
    pub(super) id: &'a str,
    pub(super) keys: &'a JobKeys,
    /// Epoch of the job's channel if this creates it.
    pub(super) new_epoch: u64,
    /// The event's RFC 3339 time, as envelopes carry it.
    pub(super) time: &'a str,
    pub(super) now_ms: i64,
    /// The idempotency key (a key name), for submit and prune.
    pub(super) idempotency: Option<&'a str>,
}

/// Which script to run.
#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
    Submit,
    Claim,
    Report,
    Cancel,
    Expire,
    Prune,
}

impl Scripts {
    pub(super) fn new(topics: &Topics) -> Self {
        let script = |body: &str| script(topics, &format!("{JOB_PRELUDE}{body}"));
        Self {
            submit: script(SUBMIT),
            claim: script(CLAIM),
            report: script(REPORT),
            cancel: script(CANCEL),
            expire: script(EXPIRE),
            prune: script(PRUNE),
        }
    }

    /// Runs `op` on one job with its `extra` arguments (after the common ones).
    ///
    /// # Errors
    /// When Redis cannot be reached or answers with an error.
    pub(super) async fn run(
        &self,
        conn: &mut ConnectionManager,
        op: Op,
        common: &Common<'_>,
        routes: &Routes,
        extra: &[&[u8]],
    ) -> redis::RedisResult<Value> {
        let script = match op {
            Op::Submit => &self.submit,
            Op::Claim => &self.claim,
            Op::Report => &self.report,
            Op::Cancel => &self.cancel,
            Op::Expire => &self.expire,
            Op::Prune => &self.prune,
        };
        let mut call = script.prepare_invoke();
        let k = common.keys;
        call.key(&k.job)
            .key(&k.meta)
            .key(&k.history)
            .key(keys::queue())
            .key(keys::leases())
            .key(keys::ended());
        if let Some(idem) = common.idempotency {
            call.key(idem);
        }
        call.arg(common.id)
            .arg(&k.channel)
            .arg(&k.live)
            .arg(common.new_epoch)
            .arg(common.time)
            .arg(common.now_ms);
        routes.add_args(&mut call);
        for a in extra {
            call.arg(*a);
        }
        call.invoke_async(conn).await
    }
}
