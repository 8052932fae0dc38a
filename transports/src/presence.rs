//! The presence seam: who is subscribed to a channel whose namespace tracks presence. The
//! engine implements [`Presence`]; sessions join when they subscribe (WebSocket, SSE,
//! NDJSON: the transports that hold a connection) and leave when they unsubscribe or close.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchyard_protocol::ChannelName;

use switchyard_protocol::ErrorCode;

use crate::{Context, hub::HubError, namespaces::ChannelRules, params::ParamError};

/// One subscribed client as presence lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    /// The connection's id (unique per connection, made by the gateway).
    pub client_id: String,
    /// The user: the consumer token's `sub`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The consumer token's `info` claim, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// How many are present on a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStats {
    /// Connections present.
    pub clients: usize,
    /// Distinct users among them (clients without a user are not counted).
    pub users: usize,
}

/// Why a member could not join.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The channel has the most members its namespace allows.
    #[error("channel {channel:?} has the most presence members it may ({max})")]
    Full {
        /// The channel.
        channel: String,
        /// Its namespace's `max_members`.
        max: usize,
    },
    /// The engine cannot serve the request now.
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Presence, as the engine keeps it.
pub trait Presence: Send + Sync + 'static {
    /// Adds `member` to `channel` (its namespace's `rules` bound it and say whether a
    /// `presence.join` event is pushed to the channel's subscribers).
    fn join<'a>(
        &'a self,
        channel: &'a ChannelName,
        rules: &'a ChannelRules,
        member: Member,
    ) -> BoxFuture<'a, Result<(), PresenceError>>;

    /// Removes the member with `client_id` from `channel` (and pushes `presence.leave` when
    /// the namespace says so). Never waits: called when a connection ends.
    fn leave(&self, channel: &ChannelName, rules: &ChannelRules, client_id: &str);

    /// The members of `channel`.
    fn members<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<Member>, HubError>>;

    /// How many clients and distinct users are present on `channel`.
    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<PresenceStats, HubError>>;
}

/// The presence of `channel`, where its namespace tracks it.
///
/// # Errors
/// `presence_disabled` when the channel's namespace does not track presence.
pub fn of<'a>(
    ctx: &'a Context,
    channel: &ChannelName,
) -> Result<&'a Arc<dyn Presence>, ParamError> {
    let rules = ctx.namespaces.rules(channel.as_str());
    match &ctx.presence {
        Some(presence) if rules.presence => Ok(presence),
        _ => Err(ParamError::new(
            ErrorCode::PresenceDisabled,
            format!(
                "channel {:?} is in namespace {:?}, which does not track presence",
                channel.as_str(),
                &*rules.name
            ),
        )),
    }
}
