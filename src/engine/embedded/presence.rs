//! The embedded engine's presence: each presence channel's members in memory, bounded by its
//! namespace's `max_members`, with joins and leaves pushed to the channel's subscribers.

use std::{
    collections::{BTreeMap, HashMap, hash_map},
    sync::Arc,
};

use dashmap::{DashMap, mapref::entry::Entry};
use futures_util::future::{BoxFuture, FutureExt};
use switchyard_protocol::ChannelName;
use switchyard_transports::{
    namespaces::ChannelRules,
    presence::{Member, Presence, PresenceError, PresenceStats},
};

use super::hub::MemoryHub;
use crate::{
    hub::{Event, HubError},
    time::now_rfc3339,
};

/// The event type of a join and of a leave.
pub const JOIN: &str = "presence.join";
/// See [`JOIN`].
pub const LEAVE: &str = "presence.leave";

/// Who is present, per channel (only channels with at least one member are kept).
pub struct MemoryPresence {
    channels: DashMap<ChannelName, Members>,
    hub: Arc<MemoryHub>,
}

/// One channel's members.
#[derive(Default)]
struct Members {
    /// By client id: listed in that order (ids are made in order per process).
    by_client: BTreeMap<Arc<str>, Member>,
    /// Connections per user, for `stats` in constant time.
    users: HashMap<Arc<str>, usize>,
}

impl Members {
    fn insert(&mut self, member: Member) {
        let user = member.user.as_deref().map(Arc::<str>::from);
        let previous = self
            .by_client
            .insert(member.client_id.as_str().into(), member);
        // A client joins a channel once; should it join again, the old entry goes.
        if let Some(previous) = previous {
            self.forget_user(previous.user.as_deref());
        }
        if let Some(user) = user {
            *self.users.entry(user).or_default() += 1;
        }
    }

    fn remove(&mut self, client_id: &str) -> Option<Member> {
        let member = self.by_client.remove(client_id)?;
        self.forget_user(member.user.as_deref());
        Some(member)
    }

    fn forget_user(&mut self, user: Option<&str>) {
        let Some(user) = user else { return };
        if let hash_map::Entry::Occupied(mut n) = self.users.entry(Arc::from(user)) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

impl MemoryPresence {
    /// Presence whose joins and leaves go out through `hub`.
    pub fn new(hub: Arc<MemoryHub>) -> Self {
        Self {
            channels: DashMap::new(),
            hub,
        }
    }

    fn join_now(
        &self,
        channel: &ChannelName,
        rules: &ChannelRules,
        member: Member,
    ) -> Result<(), PresenceError> {
        let mut members = self.channels.entry(channel.clone()).or_default();
        if members.by_client.len() >= rules.max_members
            && !members.by_client.contains_key(member.client_id.as_str())
        {
            // `max_members` is at least 1, so a refused join never leaves an empty entry.
            return Err(PresenceError::Full {
                channel: channel.to_string(),
                max: rules.max_members,
            });
        }
        let announce = rules.announces(members.by_client.len() + 1);
        let event = announce.then(|| transient(channel, JOIN, &member));
        members.insert(member);
        // Offered while this channel's members are locked: joins and leaves of one channel
        // reach every subscriber in the order they happened.
        if let Some(event) = event {
            self.hub.offer_transient(&event);
        }
        Ok(())
    }

    /// How many channels have members (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

/// A join or leave event carrying `member`.
fn transient(channel: &ChannelName, event_type: &str, member: &Member) -> Arc<Event> {
    let data = serde_json::value::to_raw_value(member).expect("a member is JSON");
    Arc::new(Event::transient(
        channel.clone(),
        event_type,
        &now_rfc3339(),
        &data,
    ))
}

impl Presence for MemoryPresence {
    fn join<'a>(
        &'a self,
        channel: &'a ChannelName,
        rules: &'a ChannelRules,
        member: Member,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        let joined = self.join_now(channel, rules, member);
        async move { joined }.boxed()
    }

    fn leave(&self, channel: &ChannelName, rules: &ChannelRules, client_id: &str) {
        let Entry::Occupied(mut members) = self.channels.entry(channel.clone()) else {
            return;
        };
        let before = members.get().by_client.len();
        let Some(member) = members.get_mut().remove(client_id) else {
            return;
        };
        if rules.announces(before) {
            self.hub
                .offer_transient(&transient(channel, LEAVE, &member));
        }
        if members.get().by_client.is_empty() {
            members.remove();
        }
    }

    fn members<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<Member>, HubError>> {
        let members = self
            .channels
            .get(channel)
            .map(|m| m.by_client.values().cloned().collect())
            .unwrap_or_default();
        async move { Ok(members) }.boxed()
    }

    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<PresenceStats, HubError>> {
        let stats = self
            .channels
            .get(channel)
            .map(|m| PresenceStats {
                clients: m.by_client.len(),
                users: m.users.len(),
            })
            .unwrap_or_default();
        async move { Ok(stats) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchyard_transports::hub::{Hub, StartFrom, new_pair};

    use super::*;
    use crate::engine::embedded::MemoryHubConfig;

    fn presence() -> MemoryPresence {
        let hub = MemoryHub::new(
            MemoryHubConfig {
                namespaces: crate::engine::embedded::hub::single_namespace(
                    100,
                    Duration::from_secs(60),
                ),
                max_channels: 100,
                channel_bytes: 1 << 20,
                total_bytes: 1 << 24,
            },
            None,
        );
        MemoryPresence::new(Arc::new(hub))
    }

    fn rules(max_members: usize, join_leave: bool) -> ChannelRules {
        ChannelRules {
            presence: true,
            join_leave,
            max_members,
            ..ChannelRules::default()
        }
    }

    fn member(client_id: &str, user: Option<&str>) -> Member {
        Member {
            client_id: client_id.into(),
            user: user.map(Into::into),
            info: None,
        }
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    async fn ids(p: &MemoryPresence, channel: &ChannelName) -> Vec<String> {
        let members = p.members(channel).await.unwrap();
        members.into_iter().map(|m| m.client_id).collect()
    }

    #[tokio::test]
    async fn members_join_and_leave_and_stats_count_distinct_users() {
        let p = presence();
        let (c, r) = (ch("room/1"), rules(10, false));
        p.join(&c, &r, member("a", Some("ann"))).await.unwrap();
        p.join(&c, &r, member("b", Some("ann"))).await.unwrap();
        p.join(&c, &r, member("c", Some("bob"))).await.unwrap();
        p.join(&c, &r, member("d", None)).await.unwrap();
        assert_eq!(ids(&p, &c).await, ["a", "b", "c", "d"]);
        let stats = p.stats(&c).await.unwrap();
        assert_eq!((stats.clients, stats.users), (4, 2));
        p.leave(&c, &r, "a");
        p.leave(&c, &r, "a");
        p.leave(&c, &r, "nobody");
        assert_eq!(p.stats(&c).await.unwrap().users, 2, "ann is still on b");
        p.leave(&c, &r, "b");
        let stats = p.stats(&c).await.unwrap();
        assert_eq!((stats.clients, stats.users), (2, 1));
        p.leave(&c, &r, "c");
        p.leave(&c, &r, "d");
        assert_eq!(p.channel_count(), 0, "an empty channel is forgotten");
        assert!(ids(&p, &c).await.is_empty());
    }

    #[tokio::test]
    async fn a_full_channel_refuses_the_next_member() {
        let p = presence();
        let (c, r) = (ch("room/full"), rules(2, false));
        p.join(&c, &r, member("a", None)).await.unwrap();
        p.join(&c, &r, member("b", None)).await.unwrap();
        let err = p.join(&c, &r, member("c", None)).await.unwrap_err();
        assert!(matches!(err, PresenceError::Full { max: 2, .. }), "{err}");
        p.join(&c, &r, member("b", None))
            .await
            .expect("a member already there may join again");
        p.leave(&c, &r, "a");
        p.join(&c, &r, member("c", None)).await.unwrap();
        assert_eq!(ids(&p, &c).await, ["b", "c"]);
    }

    /// What a subscriber of a channel gets while `a` and `b` join and `a` leaves.
    async fn pushed(p: &MemoryPresence, c: &ChannelName, join_leave: bool) -> Vec<String> {
        let r = rules(10, join_leave);
        let (sink, mut inbox) = new_pair(16, None);
        p.hub.subscribe(c, StartFrom::Now, &sink).await.unwrap();
        p.join(c, &r, member("a", Some("ann"))).await.unwrap();
        p.join(c, &r, member("b", None)).await.unwrap();
        p.leave(c, &r, "a");
        let mut got = Vec::new();
        while let Some(e) = inbox.try_recv() {
            assert!(e.is_transient());
            let data: serde_json::Value = serde_json::from_slice(e.envelope()).unwrap();
            got.push(format!(
                "{} {}",
                e.event_type(),
                data["data"]["client_id"].as_str().unwrap()
            ));
        }
        got
    }

    #[tokio::test]
    async fn joins_and_leaves_reach_subscribers_in_order_without_history() {
        let p = presence();
        let c = ch("room/events");
        assert_eq!(
            pushed(&p, &c, true).await,
            ["presence.join a", "presence.join b", "presence.leave a"]
        );
        let page = crate::hub::Bus::history(&*p.hub, &c, None, 10)
            .await
            .unwrap();
        assert!(page.events.is_empty(), "not kept in history");
        assert!(
            pushed(&p, &ch("room/quiet"), false).await.is_empty(),
            "without join_leave nothing is pushed"
        );
    }
}
