//! Redis key and pub/sub topic names for a channel, in one place so every node (and the
//! Redis store's scripts) agrees on them.
//!
//! The channel name sits between braces: it is the Redis Cluster *hash tag*, so all of a
//! channel's keys land in one slot and the append script may touch them together. Channel
//! names cannot contain `{` or `}` (see `ChannelName`), so the tag is always the whole name.

use switchyard_protocol::ChannelName;

/// Prefix of every key and topic this hub writes.
pub(crate) const PREFIX: &str = "sy:";

/// The pub/sub topic of cross-node wake-ups (`jobs`, `outbox`), published by the store's
/// scripts (which spell it out: keep them in step).
pub(crate) const SIGNALS: &str = "sy:signals";

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

/// The pub/sub topic that carries the channel's new events to every node subscribed to it.
pub(crate) fn live(channel: &ChannelName) -> String {
    format!("{PREFIX}{{{channel}}}:live")
}

/// `jobs/*` channels are durable: the job store writes them (the hub refuses publishes) and
/// their events stay until the store prunes the job, whatever `history.ttl_secs` says.
pub(crate) fn is_durable(channel: &ChannelName) -> bool {
    channel.as_str().starts_with("jobs/")
}

/// The channel a live topic belongs to, or `None` for a topic this hub does not use.
pub(super) fn channel_of_live(topic: &str) -> Option<ChannelName> {
    let name = topic.strip_prefix(PREFIX)?.strip_prefix('{')?;
    let name = name.strip_suffix("}:live")?;
    ChannelName::new(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channel_as_hash_tag_and_topics_round_trip() {
        let c = ChannelName::new("orders/eu:1").unwrap();
        assert_eq!(history(&c), "sy:{orders/eu:1}:h");
        assert_eq!(meta(&c), "sy:{orders/eu:1}:meta");
        assert_eq!(idempotency(&c, "k"), "sy:{orders/eu:1}:idem:k");
        assert_eq!(channel_of_live(&live(&c)), Some(c));
        assert_eq!(channel_of_live("sy:{a}:h"), None);
        assert_eq!(channel_of_live("other"), None);
        assert_eq!(channel_of_live(SIGNALS), None);
        // The scripts write these names literally.
        let prelude = super::super::scripts::PRELUDE;
        assert!(prelude.contains(&format!("'{SIGNALS}'")));
        assert!(prelude.contains(&format!("'{PREFIX}wh:endpoints'")));
        assert!(prelude.contains(&format!("'{PREFIX}wh:unrouted'")));
    }
}
