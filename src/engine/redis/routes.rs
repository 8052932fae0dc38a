//! Which webhook endpoints an event owes deliveries to, as the scripts take them: this
//! node's copy of the enabled endpoints' filters and the endpoints `version` it was read
//! at (see [`super::scripts`] for how a script checks it).

use std::sync::RwLock;

use redis::ScriptInvocation;

use crate::{ids, store::EndpointRecord, webhooks::filter::Filter};

/// Runs of a script whose routes turned out stale (the endpoints changed meanwhile) before
/// the operation gives up as unavailable: endpoints change rarely, so a second run
/// practically always succeeds.
pub(super) const REROUTE_ATTEMPTS: usize = 3;

/// This node's copy of the endpoints' filters.
#[derive(Debug, Default)]
pub(super) struct FilterCache {
    snapshot: RwLock<Snapshot>,
}

#[derive(Debug, Default)]
struct Snapshot {
    /// The endpoints `version` the filters were read at; `None` before the first read.
    version: Option<i64>,
    filters: Vec<Filter>,
}

impl FilterCache {
    /// Replaces the copy with `endpoints`, read at `version`.
    pub(super) fn replace(&self, version: i64, endpoints: Vec<EndpointRecord>) {
        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        *snapshot = Snapshot {
            version: Some(version),
            filters: Filter::of_enabled(endpoints),
        };
    }

    /// The routes of an event of `event_type` on `channel`, or, when the type is not known
    /// yet (a job script decides it), of every type the channel's endpoints take. Delivery
    /// ids are made now, sorted by `now_ms`.
    pub(super) fn routes(&self, channel: &str, event_type: Option<&str>, now_ms: i64) -> Routes {
        let snapshot = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        let routes = snapshot
            .filters
            .iter()
            .filter(|f| match event_type {
                Some(ty) => f.matches(channel, ty),
                None => f.matches_channel(channel),
            })
            .map(|f| Route {
                endpoint: f.endpoint_id.clone(),
                delivery: ids::delivery_id(now_ms),
                types: types_arg(&f.types),
            })
            .collect();
        Routes {
            // A version no script sees: the first use reads the endpoints.
            version: snapshot.version.unwrap_or(-1).to_string(),
            now_ms,
            routes,
        }
    }
}

/// A type filter as the scripts match it: `''` for every type, else each type between
/// newlines (types have no whitespace).
fn types_arg(types: &[String]) -> String {
    if types.is_empty() {
        String::new()
    } else {
        format!("\n{}\n", types.join("\n"))
    }
}

/// The deliveries one event owes, for a script's arguments.
#[derive(Debug)]
pub(super) struct Routes {
    /// The endpoints version these were matched at; `''` checks nothing.
    version: String,
    now_ms: i64,
    routes: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    endpoint: String,
    delivery: String,
    types: String,
}

impl Routes {
    /// No delivery and no version check: for a hub used on its own (tests, benches) and
    /// scripts that append no event.
    pub(super) fn none() -> Self {
        Self {
            version: String::new(),
            now_ms: 0,
            routes: Vec::new(),
        }
    }

    /// Appends the routes block the scripts read: version, now, count, then endpoint,
    /// delivery id and types of each route.
    pub(super) fn add_args(&self, call: &mut ScriptInvocation) {
        call.arg(&self.version)
            .arg(self.now_ms)
            .arg(self.routes.len());
        for r in &self.routes {
            call.arg(&r.endpoint).arg(&r.delivery).arg(&r.types);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, channels: &[&str], types: &[&str], enabled: bool) -> EndpointRecord {
        EndpointRecord {
            id: id.into(),
            url: "https://example.com/".into(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            types: types.iter().map(|t| t.to_string()).collect(),
            secret: "whsec_x".into(),
            previous_secret: None,
            previous_secret_until_ms: None,
            enabled,
            disabled_reason: None,
            failing_since_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn routes_follow_the_enabled_filters_and_their_version() {
        let cache = FilterCache::default();
        assert_eq!(cache.routes("a", Some("t"), 1).version, "-1", "never read");
        cache.replace(
            7,
            vec![
                endpoint("ep_all", &["orders/*"], &[], true),
                endpoint("ep_paid", &["orders/*"], &["order.paid", "x"], true),
                endpoint("ep_off", &["orders/*"], &[], false),
                endpoint("ep_jobs", &["jobs/*"], &[], true),
            ],
        );
        let typed = cache.routes("orders/1", Some("order.created"), 1);
        assert_eq!(typed.version, "7");
        let ids: Vec<&str> = typed.routes.iter().map(|r| r.endpoint.as_str()).collect();
        assert_eq!(ids, ["ep_all"]);
        let untyped = cache.routes("orders/1", None, 1);
        let types: Vec<(&str, &str)> = untyped
            .routes
            .iter()
            .map(|r| (r.endpoint.as_str(), r.types.as_str()))
            .collect();
        assert_eq!(types, [("ep_all", ""), ("ep_paid", "\norder.paid\nx\n")]);
        assert_ne!(untyped.routes[0].delivery, untyped.routes[1].delivery);
        assert!(cache.routes("news", None, 1).routes.is_empty());
    }
}
