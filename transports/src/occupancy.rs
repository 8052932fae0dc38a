//! Subscribers per channel, for namespaces with `max_subscribers`: a subscribe past it is
//! refused with `channel_full`. Counted on this node, over every transport; channels of
//! namespaces without the limit are not counted at all.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use switchyard_protocol::{ChannelName, ErrorCode};

use crate::{namespaces::ChannelRules, params::ParamError};

/// Subscribers held per limited channel; entries go when they reach zero.
#[derive(Debug, Default)]
pub struct Occupancy {
    held: Mutex<HashMap<ChannelName, usize>>,
}

impl Occupancy {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribers of `channel` counted now.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.held().get(channel).copied().unwrap_or(0)
    }

    fn take(&self, channel: &ChannelName, rules: &ChannelRules) -> Result<(), ParamError> {
        let mut held = self.held();
        let n = held.entry(channel.clone()).or_default();
        if *n >= rules.max_subscribers {
            return Err(ParamError::new(
                ErrorCode::ChannelFull,
                format!(
                    "channel {:?} has {} subscribers, the most its namespace {:?} allows (max_subscribers); try again later",
                    channel.as_str(),
                    rules.max_subscribers,
                    &*rules.name
                ),
            ));
        }
        *n += 1;
        Ok(())
    }

    fn give_back(&self, channel: &str) {
        let mut held = self.held();
        if let Some(n) = held.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                held.remove(channel);
            }
        }
    }
}

/// A seat: the count it is in, and its channel.
type Seat = (Arc<Occupancy>, ChannelName);

/// The seats one session holds in limited channels; dropping it gives them back. Boxed:
/// every idle connection's task holds one, and most never take a seat.
#[derive(Debug, Default)]
pub(crate) struct Seats {
    taken: Option<Box<Taken>>,
}

/// The seats of a session that took any.
#[derive(Debug, Default)]
struct Taken(Vec<Seat>);

impl Seats {
    /// Takes a seat in `channel` when its namespace limits subscribers.
    pub(crate) fn take(
        &mut self,
        occupancy: &Arc<Occupancy>,
        channel: &ChannelName,
        rules: &ChannelRules,
    ) -> Result<(), ParamError> {
        if rules.max_subscribers == 0 {
            return Ok(());
        }
        occupancy.take(channel, rules)?;
        self.taken
            .get_or_insert_default()
            .0
            .push((Arc::clone(occupancy), channel.clone()));
        Ok(())
    }

    /// Gives back the seat in `channel`, if one is held.
    pub(crate) fn give_back(&mut self, channel: &str) {
        let Some(taken) = self.taken.as_mut() else {
            return;
        };
        if let Some(i) = taken.0.iter().position(|(_, c)| c.as_str() == channel) {
            let (occupancy, channel) = taken.0.swap_remove(i);
            occupancy.give_back(channel.as_str());
        }
    }
}

impl Drop for Seats {
    fn drop(&mut self) {
        for (occupancy, channel) in self.taken.take().map(|t| t.0).unwrap_or_default() {
            occupancy.give_back(channel.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn seats_are_bounded_per_channel_and_given_back() {
        let occupancy = Arc::new(Occupancy::default());
        let rules = ChannelRules {
            max_subscribers: 2,
            ..ChannelRules::plain("room", 10, Duration::from_secs(1))
        };
        let c = ChannelName::new("room/1").unwrap();
        let (mut a, mut b, mut c3) = (Seats::default(), Seats::default(), Seats::default());
        a.take(&occupancy, &c, &rules).unwrap();
        b.take(&occupancy, &c, &rules).unwrap();
        let err = c3.take(&occupancy, &c, &rules).unwrap_err();
        assert_eq!(err.code, ErrorCode::ChannelFull);
        a.give_back("room/1");
        c3.take(&occupancy, &c, &rules).unwrap();
        drop((b, c3));
        assert_eq!(occupancy.subscribers("room/1"), 0);
        let unlimited = ChannelRules::plain("x", 10, Duration::from_secs(1));
        a.take(&occupancy, &c, &unlimited).unwrap();
        assert_eq!(occupancy.subscribers("room/1"), 0, "not counted");
    }
}
