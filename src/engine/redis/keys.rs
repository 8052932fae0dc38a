//! Redis key and pub/sub topic names, in one place so every node (and every script) agrees
//! on them: a channel's keys and topics, a job's keys and the job indexes, and the webhook
//! keys' prefix (the scripts name webhook keys themselves, see `scripts`).
//!
//! The channel name sits between braces: it is the Redis Cluster *hash tag*, so all of a
//! channel's keys land in one slot and the append script may touch them together. Channel
//! names cannot contain `{` or `}` (see `ChannelName`), so the tag is always the whole name.
//! A job's own hash carries its channel (`jobs/{id}`) as hash tag too, next to the
//! channel's `meta`/`h` keys, so a job and its event log share a slot. The queue, lease and
//! retention indexes are three global sorted sets.

use switchyard_protocol::ChannelName;

/// Prefix of every key and topic this hub writes.
pub(crate) const PREFIX: &str = "sy:";

/// How the scripts' source names the topic of cross-node wake-ups; [`Topics::in_script`]
/// puts the database's own topic in its place.
pub(crate) const SIGNALS_IN_SCRIPTS: &str = "'sy:signals'";

/// The channel's history: a stream whose entry ids are `{offset}-0`.
pub(crate) fn history(channel: &ChannelName) -> String {
    format!("{PREFIX}{{{channel}}}:h")
}

/// The channel's meta hash: `epoch` (decimal) and `last` (the last offset assigned).
pub(crate) fn meta(channel: &ChannelName) -> String {
    format!("{PREFIX}{{{channel}}}:meta")
}

/// One remembered `Idempotency-Key` of the channel.
pub(super) fn idempotency(channel: &ChannelName, key: &str) -> String {
    format!("{PREFIX}{{{channel}}}:idem:{key}")
}

/// The pub/sub topic names of one Redis database.
///
/// Keys are per database but pub/sub is per instance: the topics of a database other than 0
/// carry its number (`sy:db3:...`), so gateway clusters on different databases of one
/// instance never hear each other's events or wake-ups. Database 0 keeps the plain names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Topics {
    prefix: String,
    signals: String,
}

impl Topics {
    /// The topics of database `db`.
    pub(crate) fn for_db(db: i64) -> Self {
        let prefix = if db == 0 {
            PREFIX.to_owned()
        } else {
            format!("{PREFIX}db{db}:")
        };
        Self {
            signals: format!("{prefix}signals"),
            prefix,
        }
    }

    /// The topics of the database `client` connects to (`redis://host:port/db`, 0 without).
    pub(crate) fn for_client(client: &redis::Client) -> Self {
        Self::for_db(client.get_connection_info().redis_settings().db())
    }

    /// The topic that carries the channel's new events to every node subscribed to it.
    pub(crate) fn live(&self, channel: &ChannelName) -> String {
        format!("{}{{{channel}}}:live", self.prefix)
    }

    /// The topic of cross-node wake-ups (`jobs`, `outbox`), which the scripts publish to.
    pub(crate) fn signals(&self) -> &str {
        &self.signals
    }

    /// The channel a live topic belongs to, or `None` for a topic these names do not use.
    pub(super) fn channel_of_live(&self, topic: &str) -> Option<ChannelName> {
        let name = topic.strip_prefix(&self.prefix)?.strip_prefix('{')?;
        let name = name.strip_suffix("}:live")?;
        ChannelName::new(name).ok()
    }

    /// A script's `source` publishing its wake-ups to this database's signals topic.
    pub(crate) fn in_script(&self, source: &str) -> String {
        source.replace(SIGNALS_IN_SCRIPTS, &format!("'{}'", self.signals()))
    }
}

/// `jobs/*` channels are durable: the job store writes them (the hub refuses publishes) and
/// their events stay until the store prunes the job, whatever `history.ttl_secs` says.
pub(crate) fn is_durable(channel: &ChannelName) -> bool {
    crate::jobs::channel::is_job_channel(channel.as_str())
}

/// The prefix of every webhook key (endpoints, deliveries, their indexes).
pub(crate) fn webhooks_prefix() -> String {
    format!("{PREFIX}wh:")
}

/// Every key a script on one job touches, in the order the scripts expect them.
#[derive(Debug)]
pub(super) struct JobKeys {
    /// `jobs/ID`, the job's channel.
    pub(super) channel: String,
    /// `sy:{jobs/ID}:job`, the job's hash.
    pub(super) job: String,
    /// `sy:{jobs/ID}:meta`, the channel's epoch and last offset (the hub's layout).
    pub(super) meta: String,
    /// `sy:{jobs/ID}:h`, the channel's history stream (the hub's layout).
    pub(super) history: String,
    /// `sy:{jobs/ID}:live`, the channel's pub/sub topic (an argument, not a key).
    pub(super) live: String,
}

impl JobKeys {
    pub(super) fn new(channel: &ChannelName, topics: &Topics) -> Self {
        Self {
            channel: channel.to_string(),
            job: format!("{PREFIX}{{{channel}}}:job"),
            meta: meta(channel),
            history: history(channel),
            live: topics.live(channel),
        }
    }
}

/// Queued job ids, scored by the unix ms they were (re)queued at: claims take the lowest.
pub(super) fn queue() -> String {
    format!("{PREFIX}jobs:queue")
}

/// Running job ids, scored by the unix ms their lease runs out at.
pub(super) fn leases() -> String {
    format!("{PREFIX}jobs:leases")
}

/// Finished job ids, scored by the unix ms they ended at (what retention prunes by).
pub(super) fn ended() -> String {
    format!("{PREFIX}jobs:ended")
}

/// An `Idempotency-Key` of a submit: `{request hash} {job id}`, until the job is pruned.
pub(super) fn job_idempotency(key: &str) -> String {
    format!("{PREFIX}jobs:idem:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::channel::job_channel;

    #[test]
    fn keys_share_the_channel_as_hash_tag_and_topics_round_trip() {
        let c = ChannelName::new("orders/eu:1").unwrap();
        assert_eq!(history(&c), "sy:{orders/eu:1}:h");
        assert_eq!(meta(&c), "sy:{orders/eu:1}:meta");
        assert_eq!(idempotency(&c, "k"), "sy:{orders/eu:1}:idem:k");
        let topics = Topics::for_db(0);
        assert_eq!(topics.live(&c), "sy:{orders/eu:1}:live");
        assert_eq!(topics.channel_of_live(&topics.live(&c)), Some(c.clone()));
        assert_eq!(topics.channel_of_live("sy:{a}:h"), None);
        assert_eq!(topics.channel_of_live("other"), None);
        assert_eq!(topics.channel_of_live(topics.signals()), None);
        // The scripts write these names literally.
        let prelude = super::super::scripts::PRELUDE;
        assert!(prelude.contains(SIGNALS_IN_SCRIPTS));
        assert!(prelude.contains(&format!("local WH = '{PREFIX}wh:'")));
    }

    #[test]
    fn each_database_has_its_own_topics() {
        let c = ChannelName::new("orders").unwrap();
        let (zero, three) = (Topics::for_db(0), Topics::for_db(3));
        let client = |url| redis::Client::open(url).unwrap();
        assert_eq!(Topics::for_client(&client("redis://h:1")), zero);
        assert_eq!(Topics::for_client(&client("redis://h:1/3")), three);
        assert_eq!(three.live(&c), "sy:db3:{orders}:live");
        assert_eq!(three.signals(), "sy:db3:signals");
        assert_eq!(zero.channel_of_live(&three.live(&c)), None);
        assert_eq!(three.channel_of_live(&zero.live(&c)), None);
        assert_eq!(three.channel_of_live(&three.live(&c)), Some(c));
        let source = "redis.call('PUBLISH', 'sy:signals', what)";
        assert_eq!(
            three.in_script(source),
            "redis.call('PUBLISH', 'sy:db3:signals', what)"
        );
        assert_eq!(zero.in_script(source), source);
    }

    #[test]
    fn a_job_and_its_channel_share_the_hash_tag() {
        let k = JobKeys::new(&job_channel("abc"), &Topics::for_db(0));
        assert_eq!(k.job, "sy:{jobs/abc}:job");
        assert_eq!(k.meta, "sy:{jobs/abc}:meta");
        assert_eq!(k.history, "sy:{jobs/abc}:h");
        assert_eq!(k.live, "sy:{jobs/abc}:live");
        assert_eq!(job_idempotency("k 1"), "sy:jobs:idem:k 1");
    }
}
