//! Presence across nodes: each channel's members live in one Redis hash (client id →
//! the joining node's id and the member's JSON), so every node lists the same members.
//!
//! A node proves it is alive with a key that expires after `redis.presence_ttl_secs`,
//! renewed three times per period. Members of a node whose key expired (it was killed, or
//! cut off from Redis) are removed by whichever node reaps first, with a `presence.leave`
//! where the namespace pushes joins and leaves: a killed node's members leave within
//! `presence_ttl_secs` plus one renewal period. Listing skips them even before they are
//! reaped. A node that comes back after its key expired writes its members again.
//!
//! Joins and leaves of one node run in order through one task, so a leave spawned when a
//! connection unsubscribes can never overtake the join of its next subscription. Each is
//! one script: the membership change and its `presence.join` / `presence.leave` message on
//! the channel's live topic (offset 0: a transient event, see `wire`) happen together.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::{BoxFuture, FutureExt};
use redis::{Script, aio::ConnectionManager};
use switchyard_protocol::ChannelName;
use switchyard_transports::{
    hub::HubError,
    namespaces::{ChannelRules, Namespaces},
    presence::{Member, Presence, PresenceError, PresenceStats},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{keys::Topics, stats::RedisStats};
use crate::time::now_rfc3339;

/// The Lua that writes a transient event's live message (`wire::decode_live`'s layout, at
/// epoch 0 and offset 0) for a member's JSON.
const TRANSIENT_LUA: &str = r"
local function transient(kind, time, member)
  return '0 0 ' .. #kind .. ' ' .. #time .. '\n' .. kind .. time .. member
end
local function member_of(stored)
  local nl = string.find(stored, '\n', 1, true)
  return string.sub(stored, 1, nl - 1), string.sub(stored, nl + 1)
end
";

/// KEYS: members hash, channels set. ARGV: client id, `node\nmember`, max members, live
/// topic (empty: no join event), time, channel, most members for which a join is pushed.
/// Returns 1, or 0 when the channel is full.
const JOIN: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[6])
if ARGV[4] ~= '' and redis.call('HLEN', KEYS[1]) <= tonumber(ARGV[7]) then
  local _, member = member_of(ARGV[2])
  redis.call('PUBLISH', ARGV[4], transient('presence.join', ARGV[5], member))
end
return 1
";

/// KEYS: members hash, channels set. ARGV: client id, live topic (empty: no leave event),
/// time, channel, most members for which a leave is pushed. Returns 1 when the member was
/// there.
const LEAVE: &str = r"
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then return 0 end
local before = redis.call('HLEN', KEYS[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and before <= tonumber(ARGV[5]) then
  local _, member = member_of(stored)
  redis.call('PUBLISH', ARGV[2], transient('presence.leave', ARGV[3], member))
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[4]) end
return 1
";

/// KEYS: members hash, channels set. ARGV: live topic (empty: no leave events), time,
/// channel, node key prefix, most members for which a leave is pushed. Removes the members
/// of nodes whose key expired; returns how many.
const REAP: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local alive = {}
local gone = 0
local left = #all / 2
for i = 1, #all, 2 do
  local node, member = member_of(all[i + 1])
  if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[4] .. node) == 1 end
  if not alive[node] then
    redis.call('HDEL', KEYS[1], all[i])
    gone = gone + 1
    if ARGV[1] ~= '' and left <= tonumber(ARGV[5]) then
      redis.call('PUBLISH', ARGV[1], transient('presence.leave', ARGV[2], member))
    end
    left = left - 1
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
return gone
";

/// KEYS: members hash. ARGV: node key prefix. The members' JSON, those of live nodes only.
const MEMBERS: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local alive = {}
local out = {}
for i = 2, #all, 2 do
  local node, member = member_of(all[i])
  if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1 end
  if alive[node] then out[#out + 1] = member end
end
return out
";

fn members_key(channel: &ChannelName) -> String {
    format!("{}{{{channel}}}:presence", super::keys::PREFIX)
}

fn channels_key() -> String {
    format!("{}presence:channels", super::keys::PREFIX)
}

fn node_prefix() -> String {
    format!("{}node:", super::keys::PREFIX)
}

/// Timing of the node's liveness key.
#[derive(Clone, Copy, Debug)]
pub struct PresenceTimes {
    /// How long a node's key lives without renewal (`redis.presence_ttl_secs`).
    pub ttl: Duration,
    /// Longest one Redis operation may take.
    pub op_timeout: Duration,
}

enum Op {
    Join {
        channel: ChannelName,
        client_id: String,
        stored: String,
        max: usize,
        announce: bool,
        /// Most members for which a join or leave is pushed.
        announce_up_to: usize,
        reply: oneshot::Sender<Result<bool, HubError>>,
    },
    Leave {
        channel: ChannelName,
        client_id: String,
        announce: bool,
        announce_up_to: usize,
    },
}

struct Scripts {
    join: Script,
    leave: Script,
    reap: Script,
    members: Script,
}

/// This node's presence on Redis; see the module docs.
pub struct RedisPresence {
    node: String,
    conn: ConnectionManager,
    topics: Topics,
    scripts: Arc<Scripts>,
    times: PresenceTimes,
    stats: Arc<RedisStats>,
    namespaces: Arc<Namespaces>,
    ops: mpsc::UnboundedSender<Op>,
    /// What this node has joined (channel → client id → stored value), to write again
    /// when its liveness key had expired.
    local: Arc<Mutex<HashMap<ChannelName, HashMap<String, String>>>>,
    ops_rx: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
}

impl RedisPresence {
    /// Presence for the node using `conn`, publishing on `topics`.
    pub(crate) fn new(
        conn: ConnectionManager,
        topics: Topics,
        times: PresenceTimes,
        stats: Arc<RedisStats>,
        namespaces: Arc<Namespaces>,
    ) -> Self {
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let script = |body: &str| Script::new(&format!("{TRANSIENT_LUA}{body}"));
        Self {
            node: crate::ids::token(),
            conn,
            topics,
            scripts: Arc::new(Scripts {
                join: script(JOIN),
                leave: script(LEAVE),
                reap: script(REAP),
                members: script(MEMBERS),
            }),
            times,
            stats,
            namespaces,
            ops,
            local: Arc::default(),
            ops_rx: Mutex::new(Some(ops_rx)),
        }
    }

    fn topic(&self, channel: &ChannelName, announce: bool) -> String {
        if announce {
            self.topics.live(channel)
        } else {
            String::new()
        }
    }

    async fn timed<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, HubError> {
        self.stats
            .bounded(self.times.op_timeout, op)
            .await
            .map_err(HubError::Unavailable)
    }

    /// Runs the node's joins and leaves in order; ends when `stop` fires.
    async fn run_ops(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut rx) = self.ops_rx.lock().expect("not poisoned").take() else {
            return;
        };
        // The key first, so this node's first members are never taken for a dead node's.
        if let Err(e) = self.renew().await {
            tracing::warn!(error = %e, "cannot write this node's presence key yet");
        }
        loop {
            let op = tokio::select! {
                () = stop.cancelled() => return,
                op = rx.recv() => match op {
                    Some(op) => op,
                    None => return,
                },
            };
            match op {
                Op::Join {
                    channel,
                    client_id,
                    stored,
                    max,
                    announce,
                    announce_up_to,
                    reply,
                } => {
                    let mut conn = self.conn.clone();
                    let joined = self
                        .timed(
                            self.scripts
                                .join
                                .key(members_key(&channel))
                                .key(channels_key())
                                .arg(&client_id)
                                .arg(&stored)
                                .arg(max)
                                .arg(self.topic(&channel, announce))
                                .arg(now_rfc3339())
                                .arg(channel.as_str())
                                .arg(announce_up_to)
                                .invoke_async::<i64>(&mut conn),
                        )
                        .await
                        .map(|n| n == 1);
                    if matches!(joined, Ok(true)) {
                        let mut local = self.local.lock().expect("not poisoned");
                        local.entry(channel).or_default().insert(client_id, stored);
                    }
                    let _ = reply.send(joined);
                }
                Op::Leave {
                    channel,
                    client_id,
                    announce,
                    announce_up_to,
                } => {
                    {
                        let mut local = self.local.lock().expect("not poisoned");
                        if let Some(members) = local.get_mut(&channel) {
                            members.remove(&client_id);
                            if members.is_empty() {
                                local.remove(&channel);
                            }
                        }
                    }
                    // A few tries: a leave that never reaches Redis leaves a member behind
                    // for as long as this node lives.
                    for wait in [0u64, 100, 1000] {
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        let mut conn = self.conn.clone();
                        let left = self
                            .timed(
                                self.scripts
                                    .leave
                                    .key(members_key(&channel))
                                    .key(channels_key())
                                    .arg(&client_id)
                                    .arg(self.topic(&channel, announce))
                                    .arg(now_rfc3339())
                                    .arg(channel.as_str())
                                    .arg(announce_up_to)
                                    .invoke_async::<i64>(&mut conn),
                            )
                            .await;
                        match left {
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(%channel, error = %e, "a presence leave failed");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Renews this node's liveness key and reaps the members of dead nodes, a third of
    /// the TTL apart; ends when `stop` fires (the key then expires on its own).
    async fn run_heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let period = self.times.ttl / 3;
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.renew().await {
                tracing::warn!(error = %e, "cannot renew this node's presence key");
                continue;
            }
            if let Err(e) = self.reap().await {
                tracing::warn!(error = %e, "cannot remove the presence members of dead nodes");
            }
        }
    }

    /// Renews the liveness key; when it had expired, writes this node's members again.
    async fn renew(&self) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(self.times.ttl.as_millis()).unwrap_or(u64::MAX);
        let before: Option<String> = self
            .timed(
                redis::cmd("SET")
                    .arg(format!("{}{}", node_prefix(), self.node))
                    .arg(1)
                    .arg("PX")
                    .arg(ttl_ms)
                    .arg("GET")
                    .query_async(&mut conn),
            )
            .await?;
        if before.is_some() {
            return Ok(());
        }
        let members: Vec<(ChannelName, Vec<(String, String)>)> = {
            let local = self.local.lock().expect("not poisoned");
            local
                .iter()
                .map(|(c, m)| {
                    (
                        c.clone(),
                        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    )
                })
                .collect()
        };
        for (channel, entries) in members {
            let mut pipe = redis::pipe();
            for (client_id, stored) in &entries {
                pipe.hset(members_key(&channel), client_id, stored).ignore();
            }
            pipe.sadd(channels_key(), channel.as_str()).ignore();
            self.timed(pipe.query_async::<()>(&mut conn)).await?;
        }
        Ok(())
    }

    /// Removes the members of nodes whose liveness key expired, in every channel with
    /// members.
    async fn reap(&self) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let channels: HashSet<String> = self
            .timed(
                redis::cmd("SMEMBERS")
                    .arg(channels_key())
                    .query_async(&mut conn),
            )
            .await?;
        for name in channels {
            let Ok(channel) = ChannelName::new(&name) else {
                continue;
            };
            let rules = self.namespaces.rules(channel.as_str());
            let announce = rules.join_leave;
            self.timed(
                self.scripts
                    .reap
                    .key(members_key(&channel))
                    .key(channels_key())
                    .arg(self.topic(&channel, announce))
                    .arg(now_rfc3339())
                    .arg(channel.as_str())
                    .arg(node_prefix())
                    .arg(rules.join_leave_max_members)
                    .invoke_async::<i64>(&mut conn),
            )
            .await?;
        }
        Ok(())
    }

    /// Starts the ordered joins and leaves and the heartbeat.
    pub fn start(self: &Arc<Self>, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(Arc::clone(self).run_ops(stop.clone())),
            tokio::spawn(Arc::clone(self).run_heartbeat(stop.clone())),
        ]
    }

    async fn member_list(&self, channel: &ChannelName) -> Result<Vec<Member>, HubError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = self
            .timed(
                self.scripts
                    .members
                    .key(members_key(channel))
                    .arg(node_prefix())
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(raw
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect())
    }
}

impl Presence for RedisPresence {
    fn join<'a>(
        &'a self,
        channel: &'a ChannelName,
        rules: &'a ChannelRules,
        member: Member,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        async move {
            let json = serde_json::to_string(&member).expect("a member serializes");
            let (reply, answer) = oneshot::channel();
            let op = Op::Join {
                channel: channel.clone(),
                client_id: member.client_id,
                stored: format!("{}\n{json}", self.node),
                max: rules.max_members,
                announce: rules.join_leave,
                announce_up_to: rules.join_leave_max_members,
                reply,
            };
            let gone = || HubError::Unavailable("presence has stopped".into());
            self.ops.send(op).map_err(|_| gone())?;
            match answer.await.map_err(|_| gone())? {
                Ok(true) => Ok(()),
                Ok(false) => Err(PresenceError::Full {
                    channel: channel.to_string(),
                    max: rules.max_members,
                }),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn leave(&self, channel: &ChannelName, rules: &ChannelRules, client_id: &str) {
        let _ = self.ops.send(Op::Leave {
            channel: channel.clone(),
            client_id: client_id.to_owned(),
            announce: rules.join_leave,
            announce_up_to: rules.join_leave_max_members,
        });
    }

    fn members<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<Member>, HubError>> {
        self.member_list(channel).boxed()
    }

    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<PresenceStats, HubError>> {
        async move {
            let members = self.member_list(channel).await?;
            let users: HashSet<&str> = members.iter().filter_map(|m| m.user.as_deref()).collect();
            Ok(PresenceStats {
                clients: members.len(),
                users: users.len(),
            })
        }
        .boxed()
    }
}
