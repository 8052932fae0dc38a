//! The real memory hub behind a [`Hub`] that records every subscribe and unsubscribe, so a
//! test sees whether the service leaves a sink behind.
//!
//! The memory hub alone cannot tell: the service's inbox is dropped when it answers, which
//! closes its sink, and the hub then drops closed sinks on its own (at the next publish or
//! [`MemoryHub::sweep`]), unsubscribed or not.

use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{FutureExt, future::BoxFuture};
use switchyard_protocol::ChannelName;
use switchyard_transports::hub::{Hub, HubError, Opened, Sink, StartFrom};

use crate::engine::embedded::{MemoryHub, MemoryHubConfig};

#[derive(Debug, Default)]
struct Subscriptions {
    /// `(channel, sink id)` of every subscribe, in order.
    made: Vec<(String, u64)>,
    /// Those not unsubscribed yet.
    live: Vec<(String, u64)>,
    /// Refuse subscribes, as a hub at its channel limit or a Redis hub that is down does.
    refuse: bool,
}

/// A [`MemoryHub`] whose subscriptions are recorded.
pub(crate) struct SpyHub {
    hub: Arc<MemoryHub>,
    subscriptions: Mutex<Subscriptions>,
}

impl SpyHub {
    /// Over a new memory hub with no durable store: `jobs/*` channels take publishes.
    pub(crate) fn new() -> Self {
        let config = MemoryHubConfig {
            namespaces: crate::engine::embedded::hub::single_namespace(
                100,
                std::time::Duration::from_secs(3600),
            ),
            max_channels: 100,
            channel_bytes: 1 << 30,
            total_bytes: 1 << 30,
        };
        Self {
            hub: Arc::new(MemoryHub::new(config, None)),
            subscriptions: Mutex::default(),
        }
    }

    fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().expect("not poisoned")
    }

    /// The memory hub, to publish on.
    pub(crate) fn memory(&self) -> &MemoryHub {
        &self.hub
    }

    /// The channel of every subscribe so far.
    pub(crate) fn subscribed(&self) -> Vec<String> {
        let subscriptions = self.subscriptions();
        subscriptions.made.iter().map(|(c, _)| c.clone()).collect()
    }

    /// The channel of every subscription not undone.
    pub(crate) fn live(&self) -> Vec<String> {
        let subscriptions = self.subscriptions();
        subscriptions.live.iter().map(|(c, _)| c.clone()).collect()
    }

    /// Makes every later subscribe fail.
    pub(crate) fn refuse_subscribes(&self) {
        self.subscriptions().refuse = true;
    }
}

impl Hub for SpyHub {
    fn subscribe<'a>(
        &'a self,
        channel: &'a ChannelName,
        from: StartFrom,
        sink: &'a Sink,
    ) -> BoxFuture<'a, Result<Opened, HubError>> {
        let mut subscriptions = self.subscriptions();
        if subscriptions.refuse {
            return async { Err(HubError::Unavailable("refused by the test".into())) }.boxed();
        }
        let entry = (channel.as_str().to_owned(), sink.id());
        subscriptions.made.push(entry.clone());
        subscriptions.live.push(entry);
        drop(subscriptions);
        self.hub.subscribe(channel, from, sink)
    }

    fn unsubscribe(&self, channel: &ChannelName, sink_id: u64) {
        self.subscriptions()
            .live
            .retain(|(c, id)| !(c == channel.as_str() && *id == sink_id));
        self.hub.unsubscribe(channel, sink_id);
    }
}
