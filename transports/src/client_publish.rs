//! The client-publish seam: a consumer whose token allows it publishes over its WebSocket
//! (`{"op":"publish"}`) on channels whose namespace has `client_publish`. The server
//! implements [`ClientPublisher`] with the same checks and the same event path as the
//! publish API.

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use switchyard_protocol::ChannelName;

use crate::{context::ClientAddr, params::ParamError};

/// Where a client's publish landed.
#[derive(Clone, Debug)]
pub struct ClientPublished {
    /// The event's offset in its channel.
    pub offset: u64,
    /// The cursor right after it.
    pub cursor: String,
}

/// Publishes on behalf of a consumer; implemented by the server.
pub trait ClientPublisher: Send + Sync + 'static {
    /// Publishes `data` as an event of `event_type` on `channel`, for a client at
    /// `client` (its per-address request rate applies).
    ///
    /// # Errors
    /// The same refusals as the publish API (a bad type, a body too large, a full server,
    /// a client over its request rate).
    fn publish<'a>(
        &'a self,
        client: Option<ClientAddr>,
        channel: &'a ChannelName,
        event_type: &'a str,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<ClientPublished, ParamError>>;
}
