//! The two Lua scripts that touch a channel's keys, and their replies.
//!
//! Every write goes through [`APPEND`]: one atomic script assigns the offset (`HINCRBY` on
//! the meta hash), checks and records the idempotency key (`SET NX EX`), appends to the
//! history stream (`XADD MAXLEN`, exact), trims by age, and `PUBLISH`es the event on the
//! channel's live topic. Being one script, no node can observe an offset without its event,
//! two publishes cannot interleave, and live order is offset order.
//!
//! Reads go through [`READ`]: it resolves the requested position against the retained
//! history (the same rules as the memory hub: out of reach or another epoch means reset)
//! and returns the events after it, all in one atomic snapshot.
//!
//! Age trimming is done *in the scripts* ("trim on write and on read") rather than with
//! `XTRIM MINID <time>`: entry ids are `{offset}-0` so that reads can start at an offset with
//! a plain `XRANGE`, which leaves no time in the id. Each entry carries its Redis-clock time
//! in field `ms`; the scripts drop entries older than the TTL from the front, so an expired
//! event is never served even on a channel nobody publishes to.
//!
//! `redis::Script` runs them with `EVALSHA` and falls back to loading the script when a
//! (restarted or flushed) Redis answers `NOSCRIPT`.

use redis::{Script, Value, aio::ConnectionManager};
use switchyard_protocol::ChannelName;

use super::{
    keys::{self, Topics},
    routes::Routes,
    scripts::script,
    wire::Parts,
};

/// How long an idempotency key is remembered, as the memory hub does.
pub(super) const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

/// KEYS: meta, history, [idempotency key]. ARGV: epoch for a new history, type, time,
/// data, history size, history TTL (ms), key lifetime (s), live topic, idempotency TTL (s),
/// channel name, the routes' endpoints version (`''`: record no deliveries, check nothing),
/// now (unix ms, for the deliveries), the number of routes, then the routes (see
/// [`super::scripts`]).
/// Returns `{'new', epoch, offset, deliveries}`, `{'seen', epoch, offset}`,
/// `{'conflict'}`, or `{'reroute'}` (the endpoints changed: nothing was written).
const APPEND: &str = r#"
local meta, stream, idem = KEYS[1], KEYS[2], KEYS[3]
if not routes_current(ARGV[11]) then return {'reroute'} end
local digest
if idem then
  digest = redis.sha1hex(ARGV[2] .. '\0' .. ARGV[4])
  local seen = redis.call('GET', idem)
  if seen then
    local d, e, o = string.match(seen, '^(%x+) (%d+) (%d+)$')
    if d == digest then return {'seen', e, o} end
    return {'conflict'}
  end
end
local epoch = open_history(meta, stream, ARGV[1])
local offset = redis.call('HINCRBY', meta, 'last', 1)
local now = now_ms()
redis.call('XADD', stream, 'MAXLEN', ARGV[5], fmt(offset) .. '-0',
  'ty', ARGV[2], 'tm', ARGV[3], 'ms', fmt(now), 'd', ARGV[4])
trim_age(stream, now - tonumber(ARGV[6]))
local n = record_deliveries(14, tonumber(ARGV[13]), ARGV[10], epoch, offset, ARGV[2], ARGV[3],
  ARGV[4], ARGV[12])
if idem then
  redis.call('SET', idem, digest .. ' ' .. epoch .. ' ' .. fmt(offset), 'NX', 'EX', ARGV[9])
end
redis.call('EXPIRE', meta, ARGV[7])
redis.call('EXPIRE', stream, ARGV[7])
redis.call('PUBLISH', ARGV[8], epoch .. ' ' .. fmt(offset) .. ' ' .. fmt(#ARGV[2]) .. ' '
  .. fmt(#ARGV[3]) .. '\n' .. ARGV[2] .. ARGV[3] .. ARGV[4])
return {'new', epoch, offset, n}
"#;

/// KEYS: meta, history. ARGV: epoch for a new history ('' = do not create), mode (`now`,
/// `oldest` or `after`), after offset, expected epoch ('' = the current one), limit,
/// history TTL (ms), key lifetime (s), durable window ('' for an ordinary channel).
/// Returns `{}` for a channel with no history, else `{epoch, last, oldest, start, reset,
/// entries}` where entries are `XRANGE` replies after `start`.
///
/// A durable channel (`jobs/*`, written by the job store) keeps every event until the store
/// prunes its job: the read neither trims it by age nor sets an expiry on keys that already
/// exist, and, as the memory hub's durable channels, serves only its latest `window` events.
const READ: &str = r#"
local meta, stream = KEYS[1], KEYS[2]
local durable = ARGV[8] ~= ''
local existed = redis.call('EXISTS', meta) == 1
local epoch = open_history(meta, stream, ARGV[1])
if not epoch then return {} end
if ARGV[1] ~= '' and not (durable and existed) then
  redis.call('EXPIRE', meta, ARGV[7])
  redis.call('EXPIRE', stream, ARGV[7])
end
if not durable then trim_age(stream, now_ms() - tonumber(ARGV[6])) end
local last = tonumber(redis.call('HGET', meta, 'last'))
local oldest = last + 1
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if #first > 0 then oldest = id_offset(first[1][1]) end
if durable then oldest = math.max(oldest, last + 1 - tonumber(ARGV[8])) end
local start, reset = last, 0
if ARGV[2] == 'oldest' then
  start = oldest - 1
elseif ARGV[2] == 'after' then
  local after = tonumber(ARGV[3])
  if (ARGV[4] ~= '' and ARGV[4] ~= epoch) or after > last or after + 1 < oldest then
    start, reset = oldest - 1, 1
  else
    start = after
  end
end
local entries = {}
if start < last then
  entries = redis.call('XRANGE', stream, fmt(start + 1) .. '-0', '+', 'COUNT', ARGV[5])
end
return {epoch, last, oldest, start, reset, entries}
"#;

/// The scripts, hashed once.
pub(super) struct Scripts {
    append: Script,
    read: Script,
    /// The database's topics: where the append script publishes.
    pub(super) topics: Topics,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripts").finish_non_exhaustive()
    }
}

/// Bounds the scripts apply.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    /// Events kept per channel (`MAXLEN`).
    pub(super) history_size: usize,
    /// Age after which events leave the history, in milliseconds.
    pub(super) history_ttl_ms: u64,
    /// Lifetime of a channel's keys after its last publish or subscribe, in seconds.
    pub(super) key_lifetime_secs: u64,
}

/// What the append script did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Appended {
    /// A new event at this position, with the deliveries its routes owe.
    New { epoch: u64, offset: u64 },
    /// The idempotency key was seen with the same request: its first result.
    Seen { epoch: u64, offset: u64 },
    /// The idempotency key was seen with a different request.
    Conflict,
    /// The endpoints changed since the routes were matched: nothing was written.
    Stale,
}

/// Where a read starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum ReadFrom {
    /// After the last event (live only).
    Now,
    /// Before the oldest event kept.
    Oldest,
    /// After `offset`, in `epoch` (any epoch when `None`); reset when out of reach.
    After { offset: u64, epoch: Option<u64> },
}

/// An atomic view of a channel's retained history.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) epoch: u64,
    /// The last offset assigned.
    pub(super) last: u64,
    /// The oldest offset kept (`last + 1` when nothing is kept).
    pub(super) oldest: u64,
    /// The offset the events start after.
    pub(super) start: u64,
    /// The requested position was out of reach (or of another epoch).
    pub(super) reset: bool,
    /// Events after `start`, oldest first, at most the limit.
    pub(super) entries: Vec<Parts>,
}

/// A reply that is not what the scripts return.
fn malformed(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected reply from a switchyard script",
        what.to_owned(),
    ))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// One history stream entry (`[id, [field, value, ...]]`) as its parts.
pub(super) fn entry(v: &Value) -> Option<Parts> {
    let Value::Array(pair) = v else { return None };
    let [id, Value::Array(fields)] = pair.as_slice() else {
        return None;
    };
    let offset = text(id)?.split('-').next()?.parse().ok()?;
    let (mut event_type, mut time, mut data) = (None, None, None);
    for kv in fields.chunks_exact(2) {
        match text(&kv[0])?.as_str() {
            "ty" => event_type = text(&kv[1]),
            "tm" => time = text(&kv[1]),
            "d" => data = text(&kv[1]),
            _ => {}
        }
    }
    Some(Parts {
        offset,
        event_type: event_type?,
        time: time?,
        data: data?,
    })
}

impl Scripts {
    pub(super) fn new(topics: Topics) -> Self {
        Self {
            append: script(&topics, APPEND),
            read: script(&topics, READ),
            topics,
        }
    }

    /// Runs the append script.
    ///
    /// # Errors
    /// When Redis cannot be reached or answers with an error.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn append(
        &self,
        conn: &mut ConnectionManager,
        bounds: Bounds,
        channel: &ChannelName,
        new_epoch: u64,
        event_type: &str,
        time: &str,
        data: &str,
        idempotency_key: Option<&str>,
        routes: &Routes,
    ) -> redis::RedisResult<Appended> {
        let mut call = self.append.prepare_invoke();
        call.key(keys::meta(channel)).key(keys::history(channel));
        if let Some(key) = idempotency_key {
            call.key(keys::idempotency(channel, key));
        }
        call.arg(new_epoch)
            .arg(event_type)
            .arg(time)
            .arg(data)
            .arg(bounds.history_size.max(1))
            .arg(bounds.history_ttl_ms)
            .arg(bounds.key_lifetime_secs)
            .arg(self.topics.live(channel))
            .arg(IDEMPOTENCY_TTL_SECS)
            .arg(channel.as_str());
        routes.add_args(&mut call);
        let reply: Value = call.invoke_async(conn).await?;
        let Value::Array(items) = reply else {
            return Err(malformed("append: not an array"));
        };
        let kind = items.first().and_then(text);
        let position = || -> redis::RedisResult<(u64, u64)> {
            let epoch = items.get(1).and_then(number);
            let offset = items.get(2).and_then(number);
            epoch
                .zip(offset)
                .ok_or_else(|| malformed("append: position"))
        };
        match kind.as_deref() {
            Some("new") => position().map(|(epoch, offset)| Appended::New { epoch, offset }),
            Some("reroute") => Ok(Appended::Stale),
            Some("seen") => position().map(|(epoch, offset)| Appended::Seen { epoch, offset }),
            Some("conflict") => Ok(Appended::Conflict),
            _ => Err(malformed("append: kind")),
        }
    }

    /// Runs the read script; `None` when the channel has no history and `create` is false.
    ///
    /// # Errors
    /// When Redis cannot be reached or answers with an error.
    pub(super) async fn read(
        &self,
        conn: &mut ConnectionManager,
        bounds: Bounds,
        channel: &ChannelName,
        create: Option<u64>,
        from: ReadFrom,
        limit: usize,
    ) -> redis::RedisResult<Option<Snapshot>> {
        let (mode, after, expected) = match from {
            ReadFrom::Now => ("now", 0, None),
            ReadFrom::Oldest => ("oldest", 0, None),
            ReadFrom::After { offset, epoch } => ("after", offset, epoch),
        };
        let reply: Value = self
            .read
            .key(keys::meta(channel))
            .key(keys::history(channel))
            .arg(create.map_or_else(String::new, |e| e.to_string()))
            .arg(mode)
            .arg(after)
            .arg(expected.map_or_else(String::new, |e| e.to_string()))
            .arg(limit.max(1))
            .arg(bounds.history_ttl_ms)
            .arg(bounds.key_lifetime_secs)
            .arg(if keys::is_durable(channel) {
                bounds.history_size.max(1).to_string()
            } else {
                String::new()
            })
            .invoke_async(conn)
            .await?;
        let Value::Array(items) = reply else {
            return Err(malformed("read: not an array"));
        };
        if items.is_empty() {
            return Ok(None);
        }
        let [epoch, last, oldest, start, reset, Value::Array(entries)] = items.as_slice() else {
            return Err(malformed("read: shape"));
        };
        let n = |v: &Value, what: &str| number(v).ok_or_else(|| malformed(what));
        Ok(Some(Snapshot {
            epoch: n(epoch, "read: epoch")?,
            last: n(last, "read: last")?,
            oldest: n(oldest, "read: oldest")?,
            start: n(start, "read: start")?,
            reset: n(reset, "read: reset")? == 1,
            entries: entries
                .iter()
                .map(|e| entry(e).ok_or_else(|| malformed("read: entry")))
                .collect::<Result<_, _>>()?,
        }))
    }
}
