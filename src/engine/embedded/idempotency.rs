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
    /// What the entries hold, as [`entry_bytes`] counts it.
    bytes: usize,
}

/// The memory one remembered key holds: the key twice (map and order), the first result's
/// strings, and the fixed parts of both entries.
fn entry_bytes(key: &str, published: &Published) -> usize {
    2 * key.len() + published.id.len() + published.cursor.len() + 128
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
        if self.order.len() >= MAX_KEYS_PER_CHANNEL {
            self.forget_oldest();
        }
        self.bytes += entry_bytes(key, &published);
        self.entries.insert(key.into(), (request_hash, published));
        self.order.push_back((now, key.into()));
    }

    /// Forgets the key remembered last (its publish was withdrawn).
    pub(super) fn forget(&mut self, key: &str) {
        if self.order.back().is_some_and(|(_, k)| &**k == key) {
            self.order.pop_back();
            self.remove(key);
        }
    }

    /// Forgets the oldest key; false when there is none.
    pub(super) fn forget_oldest(&mut self) -> bool {
        let Some((_, key)) = self.order.pop_front() else {
            return false;
        };
        self.remove(&key);
        true
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, published)) = self.entries.remove(key) {
            self.bytes -= entry_bytes(key, &published);
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < KEY_TTL {
                break;
            }
            self.forget_oldest();
        }
    }

    /// The memory the remembered keys hold, in bytes.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
