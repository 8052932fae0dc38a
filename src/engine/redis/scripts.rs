//! What every Lua script of the engine shares: one prelude of helpers (channel history,
//! webhook keys, recording deliveries, wake-ups) and how a script is built from it.
//!
//! # Events and their webhook deliveries, in one step
//! Every script that appends an event (a publish, or a job operation) also records the
//! webhook deliveries the event owes, before it returns: an event and its deliveries commit
//! together or not at all. Which endpoints want the event is matched by the node, against
//! its copy of the endpoints' filters (`webhooks::FilterCache`), and passed in as *routes*
//! with the `version` of the endpoints that copy was read at. The script first checks that
//! version ([`PRELUDE`]'s `routes_current`): if any endpoint changed since, it writes
//! nothing and answers `reroute`, and the node reloads its copy and runs it again. Each
//! route is an endpoint id, a new delivery id and the endpoint's type filter (`''` for
//! every type, else `\n`-separated and -enclosed), so a job script, which learns its
//! event's type only as it runs, records exactly the deliveries the embedded engine would.
//!
//! A delivery keeps the event's parts (channel, epoch, offset, type, time, data), not an
//! envelope: the node rebuilds the envelope when it sends it, byte for byte the one
//! consumers get (see `wire`), and Lua never has to encode a cursor.
//!
//! Redis does not roll a script back when a command fails halfway, so every script checks
//! all it can (version, idempotency, state, lease) before its first write.

use redis::Script;

use super::keys::Topics;

/// The helpers every script starts with. Webhook keys are under `sy:wh:` (see
/// `webhooks`), channel keys under `sy:{channel}:` (see [`super::keys`]).
pub(crate) const PRELUDE: &str = r#"
local function fmt(n) return string.format('%d', n) end
local function id_offset(id) return tonumber(string.match(id, '^(%d+)')) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
-- The channel's epoch; a missing history starts with `candidate` (none when '').
local function open_history(meta, stream, candidate)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then return epoch end
  if candidate == '' then return nil end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', candidate, 'last', 0)
  return candidate
end
-- Drops entries older than `cutoff` (ms, Redis clock) from the front of the stream.
local function trim_age(stream, cutoff)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if not first or tonumber(field(first[2], 'ms') or 0) > cutoff then return end
  local from, last_old = '-', nil
  for _ = 1, 1000 do
    local batch = redis.call('XRANGE', stream, from, '+', 'COUNT', 64)
    local young = false
    for _, entry in ipairs(batch) do
      if tonumber(field(entry[2], 'ms') or 0) > cutoff then young = true break end
      last_old = id_offset(entry[1])
    end
    if young or #batch < 64 then break end
    from = '(' .. batch[#batch][1]
  end
  if last_old then redis.call('XTRIM', stream, 'MINID', fmt(last_old + 1) .. '-0') end
end
-- Wakes every node's waiters of a kind (`jobs`: claimable work; `outbox`: deliveries due).
local function signal(what)
  redis.call('PUBLISH', 'sy:signals', what)
end
local WH = 'sy:wh:'
local index, finished, version = WH .. 'endpoints', WH .. 'finished', WH .. 'version'
local function ep_key(id) return WH .. 'ep:' .. id end
local function d_key(id) return WH .. 'd:' .. id end
local function log_key(id) return WH .. 'log:' .. id end
local function pending_key(ep) return WH .. 'pending:' .. ep end
local function leased_key(ep) return WH .. 'leased:' .. ep end
local function all_key(ep) return WH .. 'all:' .. ep end
-- Whether the endpoints are still as the node's routes saw them (`''`: no check).
local function routes_current(seen)
  return seen == '' or (redis.call('GET', version) or '0') == seen
end
-- Records the deliveries an event owes: one per route (ARGV[first .. first + 3 * count - 1]
-- as endpoint, delivery id, types) whose types take `ty`. Returns how many.
local function record_deliveries(first, count, channel, epoch, offset, ty, tm, data, now)
  local n = 0
  for i = first, first + 3 * count - 1, 3 do
    local ep, id, types = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if types == '' or string.find(types, '\n' .. ty .. '\n', 1, true) then
      redis.call('HSET', d_key(id), 'endpoint', ep, 'channel', channel, 'epoch', epoch,
        'offset', offset, 'type', ty, 'time', tm, 'data', data, 'status', 'pending',
        'attempts', 0, 'next_attempt_at', now, 'created_at', now, 'updated_at', now)
      redis.call('ZADD', pending_key(ep), now, id)
      redis.call('ZADD', all_key(ep), now, id)
      n = n + 1
    end
  end
  if n > 0 then signal('outbox') end
  return n
end
"#;

/// A script of `body` after the [`PRELUDE`], publishing to the topics of `topics`'s
/// database.
pub(super) fn script(topics: &Topics, body: &str) -> Script {
    Script::new(&topics.in_script(&format!("{PRELUDE}{body}")))
}
