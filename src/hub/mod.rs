//! The event hub's contract, whatever engine runs it: channels with offsets, bounded
//! history and live fan-out. [`Bus`] is what the API publishes through; transports only see
//! its [`Hub`] side. The engines implement it in [`crate::engine`].

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use switchyard_protocol::ChannelName;
pub use switchyard_transports::hub::{Event, Hub, HubError};

/// A publish request.
#[derive(Debug)]
pub struct Publish<'a> {
    /// Target channel (created on first use).
    pub channel: &'a ChannelName,
    /// Event type.
    pub event_type: &'a str,
    /// JSON payload, carried byte for byte.
    pub data: &'a RawValue,
    /// `Idempotency-Key`: a retry with the same key returns the first result.
    pub idempotency_key: Option<&'a str>,
}

/// What a publish produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The event's offset in its channel.
    pub offset: u64,
    /// The event's id (`channel:offset`).
    pub id: String,
    /// The cursor that resumes right after the event.
    pub cursor: String,
    /// True when an earlier publish with the same idempotency key is being returned.
    pub replayed: bool,
}

impl Published {
    /// What publishing `event` produced (`replayed` when an earlier publish is returned).
    pub fn of(event: &Event, replayed: bool) -> Self {
        Self {
            offset: event.offset(),
            id: format!("{}:{}", event.channel(), event.offset()),
            cursor: event.cursor().to_owned(),
            replayed,
        }
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel's log is written by the jobs API, not by publishers.
    #[error("channels under jobs/ are written by the jobs API only")]
    Reserved,
    /// The idempotency key was used before for a different request.
    #[error("Idempotency-Key was already used for a different event on this channel")]
    IdempotencyConflict,
    /// The hub cannot take it.
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// A page of a channel's history.
#[derive(Debug)]
pub struct HistoryPage {
    /// Events after the requested offset, oldest first.
    pub events: Vec<Arc<Event>>,
    /// The offset to pass as `after` for the next page.
    pub next: u64,
    /// History no longer reaches the requested offset (events were lost to its bounds).
    pub reset: bool,
}

/// The hub as the API sees it: publish, read history, and everything transports need.
pub trait Bus: Hub {
    /// Appends an event to its channel's log (assigning its offset) and fans it out.
    fn publish<'a>(&'a self, req: Publish<'a>) -> BoxFuture<'a, Result<Published, PublishError>>;

    /// Reads up to `limit` events after offset `after` (from the oldest kept when `None`).
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, HubError>>;

    /// Channels currently held.
    fn channel_count(&self) -> usize;

    /// Events published since start.
    fn published_count(&self) -> u64;

    /// Checks that the hub can serve (for `/readyz`): always, in memory; Redis answering
    /// and this node's pub/sub connection up, on Redis.
    fn ready(&self) -> BoxFuture<'_, Result<(), HubError>> {
        Box::pin(async { Ok(()) })
    }
}
