//! Per-channel memory of idempotency keys, so a retried publish returns its first result.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::hub::Published;

/// How long a key is remembered.
pub(super) const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most keys remembered per channel; the oldest is forgotten first.
pub(super) const MAX_KEYS_PER_CHANNEL: usize = 10_000;

#[derive(Debug, Default)]
pub(super) struct IdempotencyKeys {
    entries: HashMap<Box<str>, (u64, Published)>,
    order: VecDeque<(Instant, Box<str>)>,
}

/// What a lookup found.
pub(super) enum Seen {
    /// The key is new.
    New,
    /// The same request was published before.
    Same(Published),
    /// The key was used for a different request.
    Different,
}

impl IdempotencyKeys {
    pub(super) fn check(&self, key: &str, request_hash: u64) -> Seen {
        match self.entries.get(key) {
            None => Seen::New,
            Some((hash, published)) if *hash == request_hash => Seen::Same(published.clone()),
            Some(_) => Seen::Different,
        }
    }

    pub(super) fn remember(
        &mut self,
        key: &str,
        request_hash: u64,
        published: Published,
        now: Instant,
    ) {
        if self.order.len() >= MAX_KEYS_PER_CHANNEL
            && let Some((_, old)) = self.order.pop_front()
        {
            self.entries.remove(&old);
        }
        self.entries.insert(key.into(), (request_hash, published));
        self.order.push_back((now, key.into()));
    }

    /// Forgets the key remembered last (its publish was withdrawn).
    pub(super) fn forget(&mut self, key: &str) {
        if self.order.back().is_some_and(|(_, k)| &**k == key) {
            self.order.pop_back();
            self.entries.remove(key);
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            if now.duration_since(*at) < KEY_TTL {
                break;
            }
            self.entries.remove(key);
            self.order.pop_front();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
