//! One consumer connection's subscriptions: its inbox, the channels it holds, and the
//! position reached in each (to drop stale duplicates and to build combined cursors).

use std::sync::Arc;

use switchyard_protocol::{ChannelName, Cursor, ErrorCode, Position};
use tokio_util::sync::CancellationToken;

use crate::{
    Context,
    hub::{Event, HubError, Inbox, Opened, StartFrom, SubscriptionGuard, new_pair},
    params::ParamError,
};

pub(crate) struct Session {
    pub(crate) inbox: Inbox,
    sink: crate::hub::Sink,
    guard: SubscriptionGuard,
    /// Last position delivered per subscribed channel; doubles as the combined cursor.
    positions: Cursor,
}

impl Session {
    pub(crate) fn new(ctx: &Context, abort: Option<CancellationToken>) -> Self {
        let (sink, inbox) = new_pair(ctx.config.queue_capacity, abort);
        let guard = SubscriptionGuard::new(Arc::clone(&ctx.hub), &sink);
        Self {
            inbox,
            sink,
            guard,
            positions: Cursor::new(),
        }
    }

    /// Subscribes `channel`; the replay is returned for the caller to deliver through
    /// [`Session::accept`].
    pub(crate) async fn open(
        &mut self,
        ctx: &Context,
        channel: &ChannelName,
        from: StartFrom,
    ) -> Result<Opened, ParamError> {
        let opened = ctx
            .hub
            .subscribe(channel, from, &self.sink)
            .await
            .map_err(hub_error)?;
        self.guard.add(channel.clone());
        self.positions.set(channel.clone(), opened.start);
        Ok(opened)
    }

    /// Unsubscribes `channel`; events of it still queued are dropped by [`Session::accept`].
    pub(crate) fn close(&mut self, channel: &ChannelName) {
        self.guard.remove(channel);
        self.positions.remove(channel.as_str());
    }

    pub(crate) fn is_subscribed(&self, channel: &str) -> bool {
        self.positions.get(channel).is_some()
    }

    /// The subscribed channels.
    pub(crate) fn channels(&self) -> Vec<ChannelName> {
        self.positions.iter().map(|(c, _)| c.clone()).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether `event` is the next one to deliver (it advances the position) or a stale
    /// copy, e.g. one queued before an unsubscribe and re-subscribe.
    pub(crate) fn accept(&mut self, event: &Event) -> bool {
        match self.positions.get(event.channel().as_str()) {
            Some(p) if event.offset() > p.offset || event.position().epoch != p.epoch => {
                self.positions
                    .set(event.channel().clone(), event.position());
                true
            }
            _ => false,
        }
    }

    /// The position reached in `channel`.
    pub(crate) fn position(&self, channel: &str) -> Option<Position> {
        self.positions.get(channel)
    }

    /// The combined cursor of every subscribed channel.
    pub(crate) fn cursor(&self) -> String {
        self.positions.encode()
    }
}

pub(crate) fn hub_error(e: HubError) -> ParamError {
    ParamError::new(ErrorCode::Unavailable, e.to_string())
}
