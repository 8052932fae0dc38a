//! Which server a scenario drives: switchyard itself, or Nchan (nginx's pub/sub module) for
//! comparison. Everything that differs between them on the wire is dispatched from here.

use serde::Serialize;

use crate::{envelope::EventInfo, nchan};

/// `--server` of `fanout` and `idle`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// switchyard: events in its envelope, offsets assigned by the server.
    #[default]
    Switchyard,
    /// Nchan (nginx with `nchan_subscriber websocket eventsource` on `/sub/{channel}` and
    /// `nchan_publisher` on `/pub/{channel}`, as `bench/nchan/nginx.conf.template`): the raw
    /// body is delivered, so the bench numbers its events itself (`seq`).
    Nchan,
}

impl Server {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Switchyard => "switchyard",
            Self::Nchan => "nchan",
        }
    }

    /// Reads an event's position (1, 2, ... on a fresh channel) and send time: switchyard's
    /// envelope `offset`, or the `seq` the bench put in an Nchan message.
    pub fn event_info(self, bytes: &[u8]) -> Option<EventInfo> {
        match self {
            Self::Switchyard => crate::envelope::parse(bytes),
            Self::Nchan => nchan::parse(bytes),
        }
    }
}
