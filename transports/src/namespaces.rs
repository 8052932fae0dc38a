//! Channel namespaces: families of channels, chosen by pattern (first match wins), each
//! with its own rules for history, durability, presence, who may subscribe and who may
//! publish. Built by the server from its configuration; read by transports and engines.

use std::{sync::Arc, time::Duration};

use switchyard_protocol::ChannelPattern;

/// The rules of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRules {
    /// The namespace's name (`default` for channels no pattern matches, `jobs` for job
    /// channels).
    pub name: Arc<str>,
    /// Events kept per channel for resume.
    pub history_size: usize,
    /// Age after which events leave the history.
    pub history_ttl: Duration,
    /// Whether events are written to durable storage before the publish is acknowledged,
    /// so cursors survive a restart of the gateway.
    pub durable: bool,
    /// Whether the gateway tracks who is subscribed (WebSocket, SSE, NDJSON).
    pub presence: bool,
    /// Whether joins and leaves are pushed to the channel's subscribers (with `presence`).
    pub join_leave: bool,
    /// Joins and leaves are pushed only while the channel has at most this many members
    /// (the one joining or leaving included): each is one delivery per subscriber, so a
    /// crowd's churn would cost members × churn deliveries a second.
    pub join_leave_max_members: usize,
    /// Whether consumers without a token may subscribe (public channels).
    pub anonymous_subscribe: bool,
    /// Whether a consumer whose token allows it may publish over its WebSocket.
    pub client_publish: bool,
    /// Most subscribers of one channel (on this node); 0: no limit beyond the others.
    pub max_subscribers: usize,
    /// Most presence members of one channel.
    pub max_members: usize,
    /// Largest presence `info` object of one member, in bytes of JSON.
    pub max_info_bytes: usize,
}

impl ChannelRules {
    /// Rules with the given history bounds and every feature off.
    pub fn plain(name: &str, history_size: usize, history_ttl: Duration) -> Self {
        Self {
            name: name.into(),
            history_size,
            history_ttl,
            durable: false,
            presence: false,
            join_leave: false,
            join_leave_max_members: 1000,
            anonymous_subscribe: false,
            client_publish: false,
            max_subscribers: 0,
            max_members: 1000,
            max_info_bytes: 1024,
        }
    }
}

impl ChannelRules {
    /// Whether a join or leave is pushed when the channel has `members` members, counting
    /// the one joining or leaving.
    pub fn announces(&self, members: usize) -> bool {
        self.join_leave && members <= self.join_leave_max_members
    }
}

impl Default for ChannelRules {
    fn default() -> Self {
        Self::plain("default", 1000, Duration::from_secs(3600))
    }
}

/// The configured namespaces, in order, with the rules for job channels and for the rest.
#[derive(Clone, Debug)]
pub struct Namespaces {
    entries: Vec<(ChannelPattern, Arc<ChannelRules>)>,
    jobs: Arc<ChannelRules>,
    default: Arc<ChannelRules>,
}

/// What job channels' names start with (the jobs API owns them).
pub const JOBS_PREFIX: &str = "jobs/";

impl Namespaces {
    /// Namespaces from `entries` (first match wins); channels no pattern matches follow
    /// `default`. Job channels follow `default`'s history bounds and are always durable.
    pub fn new(entries: Vec<(ChannelPattern, ChannelRules)>, default: ChannelRules) -> Self {
        let jobs = ChannelRules {
            name: "jobs".into(),
            durable: true,
            ..ChannelRules::plain("jobs", default.history_size, default.history_ttl)
        };
        Self {
            entries: entries.into_iter().map(|(p, r)| (p, Arc::new(r))).collect(),
            jobs: Arc::new(jobs),
            default: Arc::new(default),
        }
    }

    /// Only the default namespace.
    pub fn only(default: ChannelRules) -> Self {
        Self::new(Vec::new(), default)
    }

    /// The rules of `channel`.
    pub fn rules(&self, channel: &str) -> &Arc<ChannelRules> {
        if channel.starts_with(JOBS_PREFIX) {
            return &self.jobs;
        }
        self.entries
            .iter()
            .find(|(p, _)| p.matches(channel))
            .map_or(&self.default, |(_, rules)| rules)
    }

    /// Every namespace's rules: the configured ones in order, then `jobs` and `default`.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ChannelRules>> {
        self.entries
            .iter()
            .map(|(_, r)| r)
            .chain([&self.jobs, &self.default])
    }

    /// Whether any namespace has public channels.
    pub fn any_anonymous(&self) -> bool {
        self.all().any(|r| r.anonymous_subscribe)
    }

    /// Whether any namespace tracks presence.
    pub fn any_presence(&self) -> bool {
        self.all().any(|r| r.presence)
    }

    /// The configured patterns with their namespaces, in order.
    pub fn patterns(&self) -> impl Iterator<Item = (&ChannelPattern, &Arc<ChannelRules>)> {
        self.entries.iter().map(|(p, r)| (p, r))
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::only(ChannelRules::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_pattern_wins_and_jobs_are_durable() {
        let p = |s: &str| ChannelPattern::new(s).unwrap();
        let vip = ChannelRules {
            presence: true,
            ..ChannelRules::plain("vip", 10, Duration::from_secs(1))
        };
        let chat = ChannelRules {
            anonymous_subscribe: true,
            ..ChannelRules::plain("chat", 20, Duration::from_secs(1))
        };
        let ns = Namespaces::new(
            vec![(p("chat/vip/*"), vip), (p("chat/**"), chat)],
            ChannelRules::default(),
        );
        assert_eq!(&*ns.rules("chat/vip/1").name, "vip");
        assert_eq!(&*ns.rules("chat/vip/1/x").name, "chat");
        assert_eq!(&*ns.rules("orders").name, "default");
        assert!(ns.rules("jobs/abc").durable);
        assert!(ns.any_presence());
        assert!(!Namespaces::default().any_presence());
    }
}
