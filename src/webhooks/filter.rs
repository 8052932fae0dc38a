//! Which endpoints want an event: an in-memory copy of every enabled endpoint's channel
//! patterns and type filter, read on each publish and each committed job event.

use std::sync::RwLock;

use switchyard_protocol::ChannelPattern;

use crate::store::EndpointRecord;

/// One endpoint's filter.
#[derive(Clone, Debug)]
pub struct Filter {
    /// The endpoint.
    pub endpoint_id: String,
    /// Channel patterns; an event's channel must match one.
    pub channels: Vec<ChannelPattern>,
    /// Event types; empty means every type.
    pub types: Vec<String>,
}

impl Filter {
    /// The filters of the enabled endpoints among `endpoints`.
    pub fn of_enabled(endpoints: Vec<EndpointRecord>) -> Vec<Self> {
        endpoints
            .into_iter()
            .filter(|e| e.enabled)
            .map(|e| Self {
                endpoint_id: e.id,
                channels: e
                    .channels
                    .iter()
                    .filter_map(|p| ChannelPattern::new(p).ok())
                    .collect(),
                types: e.types,
            })
            .collect()
    }

    /// Whether an event of `event_type` on `channel` goes to this endpoint.
    pub fn matches(&self, channel: &str, event_type: &str) -> bool {
        self.matches_channel(channel)
            && (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
    }

    /// Whether events of some type on `channel` go to this endpoint.
    pub fn matches_channel(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| p.matches(channel))
    }
}

/// The filters of all enabled endpoints.
#[derive(Debug, Default)]
pub struct Filters(RwLock<Vec<Filter>>);

impl Filters {
    /// Replaces every filter (after an endpoint changed).
    pub fn replace(&self, filters: Vec<Filter>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = filters;
    }

    /// Whether any endpoint wants this event (no allocation: checked on every publish).
    pub fn any_matching(&self, channel: &str, event_type: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|f| f.matches(channel, event_type))
    }

    /// The endpoints that want this event.
    pub fn matching(&self, channel: &str, event_type: &str) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|f| f.matches(channel, event_type))
            .map(|f| f.endpoint_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_patterns_and_types_both_filter() {
        let f = Filter {
            endpoint_id: "ep".into(),
            channels: vec![
                ChannelPattern::new("orders/**").unwrap(),
                ChannelPattern::new("jobs/*").unwrap(),
            ],
            types: vec!["order.paid".into()],
        };
        assert!(f.matches("orders/1/items", "order.paid"));
        assert!(!f.matches("orders/1", "order.created"));
        assert!(!f.matches("news", "order.paid"));
        let all = Filter { types: vec![], ..f };
        assert!(all.matches("jobs/abc", "job.completed"));
        let filters = Filters::default();
        filters.replace(vec![all]);
        assert_eq!(filters.matching("jobs/abc", "x"), ["ep"]);
        assert!(filters.matching("other", "x").is_empty());
    }
}
