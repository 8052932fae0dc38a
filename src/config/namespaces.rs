//! `[channels]` and `[[namespaces]]`: the rules of channel families, checked at startup
//! (patterns that can never match, or overlap ambiguously, are named) and turned into the
//! transports' [`Namespaces`].

use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use switchyard_protocol::ChannelPattern;
use switchyard_transports::namespaces::{ChannelRules, JOBS_PREFIX, Namespaces};

use super::HistoryConfig;

/// Most namespaces, and most patterns in one.
const MAX_NAMESPACES: usize = 256;
const MAX_PATTERNS: usize = 64;
/// Largest presence `info` a namespace may allow (a token's `info` is bounded too).
const MAX_INFO_BYTES: usize = 8192;

/// `[channels]`: the rules of channels no namespace matches (their history bounds are
/// `[history]`'s).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Events are stored durably before a publish is acknowledged.
    pub durable: bool,
    /// Track who is subscribed.
    pub presence: bool,
    /// Push `presence.join` / `presence.leave` to subscribers.
    pub join_leave: bool,
    /// Push them only while a channel has at most this many members.
    pub join_leave_max_members: usize,
    /// Consumers without a token may subscribe.
    pub anonymous_subscribe: bool,
    /// Consumers whose token allows it may publish over their WebSocket.
    pub client_publish: bool,
    /// Most subscribers of one channel on one node (0: no limit of its own).
    pub max_subscribers: usize,
    /// Most presence members of one channel.
    pub max_members: usize,
    /// Largest presence `info` of one member, in bytes.
    pub max_info_bytes: usize,
}

/// One `[[namespaces]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Its name, in errors, metrics and `GET /v1/channels/{c}/presence`.
    pub name: String,
    /// Channel patterns (`*` one segment, a final `**` any further segments).
    pub patterns: Vec<String>,
    /// Events kept per channel (default: `history.size`).
    #[serde(default)]
    pub history_size: Option<usize>,
    /// Seconds an event is kept (default: `history.ttl_secs`).
    #[serde(default)]
    pub history_ttl_secs: Option<u64>,
    /// Events are stored durably before a publish is acknowledged (default off).
    #[serde(default)]
    pub durable: bool,
    /// Track who is subscribed (default off).
    #[serde(default)]
    pub presence: bool,
    /// Push `presence.join` / `presence.leave` to subscribers (default off).
    #[serde(default)]
    pub join_leave: bool,
    /// Push them only while a channel has at most this many members (default 1000).
    #[serde(default = "default_join_leave_max_members")]
    pub join_leave_max_members: usize,
    /// Consumers without a token may subscribe (default off).
    #[serde(default)]
    pub anonymous_subscribe: bool,
    /// Consumers whose token allows it may publish over their WebSocket (default off).
    #[serde(default)]
    pub client_publish: bool,
    /// Most subscribers of one channel on one node (default 0: no limit of its own).
    #[serde(default)]
    pub max_subscribers: usize,
    /// Default 1000.
    #[serde(default = "default_max_members")]
    pub max_members: usize,
    /// Default 1024.
    #[serde(default = "default_max_info_bytes")]
    pub max_info_bytes: usize,
}

fn default_max_members() -> usize {
    1000
}

fn default_join_leave_max_members() -> usize {
    1000
}

fn default_max_info_bytes() -> usize {
    1024
}

/// The rules both forms carry: `[channels]` itself, or a namespace entry's
/// ([`NamespaceConfig::flags`]).
impl ChannelsConfig {
    fn check(&self, what: &str) -> anyhow::Result<()> {
        if self.join_leave && !self.presence {
            bail!("{what}: `join_leave` needs `presence = true`");
        }
        if !(1..=1_000_000).contains(&self.join_leave_max_members) {
            bail!(
                "{what}: `join_leave_max_members` must be from 1 to 1000000, got {}",
                self.join_leave_max_members
            );
        }
        if self.max_subscribers > 10_000_000 {
            bail!(
                "{what}: `max_subscribers` must be 0 (no limit) to 10000000, got {}",
                self.max_subscribers
            );
        }
        if !(1..=1_000_000).contains(&self.max_members) {
            bail!(
                "{what}: `max_members` must be from 1 to 1000000, got {}",
                self.max_members
            );
        }
        if self.max_info_bytes > MAX_INFO_BYTES {
            bail!(
                "{what}: `max_info_bytes` must be from 0 to {MAX_INFO_BYTES}, got {}",
                self.max_info_bytes
            );
        }
        Ok(())
    }

    fn rules(&self, name: &str, history_size: usize, history_ttl_secs: u64) -> ChannelRules {
        ChannelRules {
            name: name.into(),
            history_size,
            history_ttl: Duration::from_secs(history_ttl_secs),
            durable: self.durable,
            presence: self.presence,
            join_leave: self.join_leave,
            join_leave_max_members: self.join_leave_max_members,
            anonymous_subscribe: self.anonymous_subscribe,
            client_publish: self.client_publish,
            max_subscribers: self.max_subscribers,
            max_members: self.max_members,
            max_info_bytes: self.max_info_bytes,
        }
    }
}

impl NamespaceConfig {
    /// A namespace of `patterns` with every rule at its default.
    pub fn new(name: &str, patterns: &[&str]) -> Self {
        Self {
            name: name.into(),
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            history_size: None,
            history_ttl_secs: None,
            durable: false,
            presence: false,
            join_leave: false,
            join_leave_max_members: default_join_leave_max_members(),
            anonymous_subscribe: false,
            client_publish: false,
            max_subscribers: 0,
            max_members: default_max_members(),
            max_info_bytes: default_max_info_bytes(),
        }
    }

    /// Its rules, in the form `[channels]` has them.
    fn flags(&self) -> ChannelsConfig {
        ChannelsConfig {
            durable: self.durable,
            presence: self.presence,
            join_leave: self.join_leave,
            join_leave_max_members: self.join_leave_max_members,
            anonymous_subscribe: self.anonymous_subscribe,
            client_publish: self.client_publish,
            max_subscribers: self.max_subscribers,
            max_members: self.max_members,
            max_info_bytes: self.max_info_bytes,
        }
    }
}

/// Checks the namespaces and builds them.
///
/// # Errors
/// A bad name or value, a pattern that is invalid, reaches into `jobs/`, can never match
/// (an earlier pattern takes every channel it would), or overlaps another namespace's
/// pattern without either being the more specific one.
pub(super) fn build(
    channels: &ChannelsConfig,
    namespaces: &[NamespaceConfig],
    history: &HistoryConfig,
) -> anyhow::Result<Namespaces> {
    channels.check("`channels`")?;
    if namespaces.len() > MAX_NAMESPACES {
        bail!("at most {MAX_NAMESPACES} `namespaces`");
    }
    let jobs = ChannelPattern::new(&format!("{JOBS_PREFIX}**")).expect("a valid pattern");
    let mut seen: Vec<(ChannelPattern, &str)> = Vec::new();
    let mut entries = Vec::new();
    for ns in namespaces {
        let name = ns.name.as_str();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid_name {
            bail!("namespace name {name:?}: use 1-64 of a-z 0-9 _ -");
        }
        if name == "default" || name == "jobs" {
            bail!("namespace name {name:?} is built in; choose another");
        }
        if seen.iter().any(|(_, other)| *other == name)
            || namespaces.iter().filter(|n| n.name == name).count() > 1
        {
            bail!("namespace {name:?} is defined twice");
        }
        let what = format!("namespace {name:?}");
        ns.flags().check(&what)?;
        let history_size = ns.history_size.unwrap_or(history.size);
        let ttl = ns.history_ttl_secs.unwrap_or(history.ttl_secs);
        if !(1..=1_000_000).contains(&history_size) {
            bail!("{what}: `history_size` must be from 1 to 1000000, got {history_size}");
        }
        if !(1..=365 * 86400).contains(&ttl) {
            bail!("{what}: `history_ttl_secs` must be from 1 to 31536000, got {ttl}");
        }
        if ns.patterns.is_empty() || ns.patterns.len() > MAX_PATTERNS {
            bail!("{what}: `patterns` must list 1 to {MAX_PATTERNS} channel patterns");
        }
        for text in &ns.patterns {
            let pattern = ChannelPattern::new(text)
                .map_err(|e| anyhow::anyhow!("{what}: pattern {text:?}: {e}"))?;
            // Job channels always follow the built-in `jobs` namespace; a pattern that
            // could match nothing else is a mistake.
            if jobs.covers(&pattern) {
                bail!(
                    "{what}: pattern {text:?} names job channels (`jobs/...`), a built-in namespace"
                );
            }
            for (earlier, owner) in &seen {
                if earlier.covers(&pattern) {
                    bail!(
                        "{what}: pattern {text:?} can never match: {:?} of namespace {owner:?} comes first and takes every channel it would",
                        earlier.as_str()
                    );
                }
                if *owner != name && pattern.overlaps(earlier) && !pattern.covers(earlier) {
                    bail!(
                        "{what}: pattern {text:?} overlaps {:?} of namespace {owner:?}: a channel could match both, and neither is the more specific; make one of them narrower",
                        earlier.as_str()
                    );
                }
            }
            seen.push((pattern.clone(), name));
            entries.push((pattern, ns.flags().rules(name, history_size, ttl)));
        }
    }
    let default = channels.rules("default", history.size, history.ttl_secs);
    Ok(Namespaces::new(entries, default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> HistoryConfig {
        HistoryConfig {
            size: 100,
            ttl_secs: 60,
            max_bytes_per_channel: 1 << 25,
            max_bytes: 1 << 29,
        }
    }

    fn channels() -> ChannelsConfig {
        ChannelsConfig {
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

    fn ns(name: &str, patterns: &[&str]) -> NamespaceConfig {
        NamespaceConfig::new(name, patterns)
    }

    fn err(list: &[NamespaceConfig]) -> String {
        format!("{:#}", build(&channels(), list, &history()).unwrap_err())
    }

    #[test]
    fn specific_patterns_go_first_and_the_rest_follow_the_defaults() {
        let vip = NamespaceConfig {
            presence: true,
            history_size: Some(5),
            ..ns("vip", &["chat/vip/*"])
        };
        let built = build(&channels(), &[vip, ns("chat", &["chat/**"])], &history()).unwrap();
        assert_eq!(&*built.rules("chat/vip/a").name, "vip");
        assert_eq!(built.rules("chat/vip/a").history_size, 5);
        assert_eq!(&*built.rules("chat/other").name, "chat");
        assert_eq!(built.rules("chat/other").history_size, 100);
        assert_eq!(&*built.rules("orders").name, "default");
    }

    #[test]
    fn ambiguous_shadowed_or_impossible_namespaces_are_refused_by_name() {
        let shadowed = err(&[ns("chat", &["chat/**"]), ns("vip", &["chat/vip/*"])]);
        assert!(
            shadowed.contains("can never match") && shadowed.contains("\"chat\""),
            "{shadowed}"
        );
        let ambiguous = err(&[ns("a", &["x/*/c"]), ns("b", &["x/b/*"])]);
        assert!(
            ambiguous.contains("overlaps") && ambiguous.contains("x/*/c"),
            "{ambiguous}"
        );
        assert!(err(&[ns("j", &["jobs/*"])]).contains("job channels"));
        assert!(err(&[ns("j", &["jobs/**"])]).contains("job channels"));
        assert!(build(&channels(), &[ns("j", &["*/x"])], &history()).is_ok());
        assert!(err(&[ns("default", &["a"])]).contains("built in"));
        assert!(err(&[ns("a", &["a"]), ns("a", &["b"])]).contains("twice"));
        assert!(err(&[ns("Bad Name", &["a"])]).contains("a-z"));
        assert!(err(&[ns("a", &[])]).contains("patterns"));
        assert!(err(&[ns("a", &["a*"])]).contains("pattern \"a*\""));
        let leave = NamespaceConfig {
            join_leave: true,
            ..ns("a", &["a"])
        };
        assert!(err(&[leave]).contains("join_leave"));
        let size = NamespaceConfig {
            history_size: Some(0),
            ..ns("a", &["a"])
        };
        assert!(err(&[size]).contains("history_size"));
    }
}
