//! A connection's presence memberships: it joins the presence of the channels it subscribes
//! (where their namespace tracks presence) and leaves on unsubscribe and when it ends.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use switchyard_protocol::{ChannelName, ErrorCode};

use crate::{
    Context,
    access::Grant,
    metrics::TransportMetrics,
    namespaces::ChannelRules,
    params::ParamError,
    presence::{Member, Presence, PresenceError},
    session::hub_error,
};

/// The memberships of one connection. Empty (one null pointer in every idle connection's
/// task) until its first join in a presence channel.
#[derive(Default)]
pub(crate) struct Memberships(Option<Box<Joined>>);

/// What a connection that joined somewhere holds.
struct Joined {
    presence: Arc<dyn Presence>,
    metrics: Arc<TransportMetrics>,
    /// The connection's id in every channel it joins.
    client_id: Arc<str>,
    channels: Vec<(ChannelName, Arc<ChannelRules>)>,
}

impl Memberships {
    /// Refuses a grant whose `info` is larger than `rules` allow, before anything is
    /// subscribed: a member is shown as its token says or not at all.
    ///
    /// # Errors
    /// `payload_too_large`, naming the sizes.
    pub(crate) fn check(
        rules: &ChannelRules,
        channel: &ChannelName,
        grant: &Grant,
    ) -> Result<(), ParamError> {
        let size = grant.info().map_or(0, |info| info.get().len());
        if size > rules.max_info_bytes {
            return Err(ParamError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "your token's `info` is {size} bytes; presence on {:?} (namespace {:?}) shows at most {}",
                    channel.as_str(),
                    &*rules.name,
                    rules.max_info_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Joins `channel` as the member `grant` describes.
    ///
    /// # Errors
    /// `presence_full` when the channel has its namespace's `max_members`; `unavailable`
    /// when the engine cannot answer.
    pub(crate) async fn join(
        &mut self,
        ctx: &Context,
        presence: &Arc<dyn Presence>,
        channel: &ChannelName,
        rules: &Arc<ChannelRules>,
        grant: &Grant,
    ) -> Result<(), ParamError> {
        let joined = self.0.get_or_insert_with(|| {
            Box::new(Joined {
                presence: Arc::clone(presence),
                metrics: Arc::clone(&ctx.metrics),
                client_id: new_client_id(),
                channels: Vec::new(),
            })
        });
        let member = Member {
            client_id: joined.client_id.to_string(),
            user: grant.user().map(|u| u.to_string()),
            info: grant.info().map(|i| i.as_ref().to_owned()),
        };
        match joined.presence.join(channel, rules, member).await {
            Ok(()) => {
                joined.metrics.presence_joined();
                joined.channels.push((channel.clone(), Arc::clone(rules)));
                Ok(())
            }
            Err(PresenceError::Full { .. }) => Err(ParamError::new(
                ErrorCode::PresenceFull,
                format!(
                    "channel {:?} has the most presence members its namespace allows ({})",
                    channel.as_str(),
                    rules.max_members
                ),
            )),
            Err(PresenceError::Hub(e)) => Err(hub_error(e)),
        }
    }

    /// Leaves `channel` if joined there.
    pub(crate) fn leave(&mut self, channel: &ChannelName) {
        let Some(joined) = &mut self.0 else { return };
        if let Some(i) = joined.channels.iter().position(|(c, _)| c == channel) {
            let (channel, rules) = joined.channels.swap_remove(i);
            joined.left(&channel, &rules);
        }
    }
}

impl Joined {
    fn left(&self, channel: &ChannelName, rules: &ChannelRules) {
        self.presence.leave(channel, rules, &self.client_id);
        self.metrics.presence_left();
    }
}

impl Drop for Joined {
    /// The connection ended: it leaves everywhere (`leave` never waits).
    fn drop(&mut self) {
        for (channel, rules) in &self.channels {
            self.left(channel, rules);
        }
    }
}

/// A connection id unique across restarts and nodes: a random prefix per process and a
/// counter (cheap, and never the same twice in one process).
fn new_client_id() -> Arc<str> {
    use std::{
        hash::{BuildHasher, Hasher},
        sync::OnceLock,
    };
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // `RandomState` is seeded from the OS's randomness: no extra dependency for 48 bits.
    let prefix = *PREFIX.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            & 0xffff_ffff_ffff
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:012x}-{n:x}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_differ() {
        let a = new_client_id();
        let b = new_client_id();
        assert_ne!(a, b);
        assert_eq!(
            a.split('-').next(),
            b.split('-').next(),
            "one prefix per process"
        );
    }

    #[test]
    fn an_info_larger_than_the_namespace_allows_is_refused() {
        let rules = ChannelRules {
            max_info_bytes: 8,
            ..ChannelRules::default()
        };
        let channel = ChannelName::new("room").unwrap();
        let info =
            serde_json::value::RawValue::from_string(r#"{"name":"a long name"}"#.into()).unwrap();
        let grant = Grant::everything().with_user(Some("u"), Some(info));
        let err = Memberships::check(&rules, &channel, &grant).unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        assert!(err.message.contains("at most 8"), "{}", err.message);
        assert!(Memberships::check(&rules, &channel, &Grant::everything()).is_ok());
    }
}
