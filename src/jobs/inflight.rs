//! Job bodies being received: memory is reserved chunk by chunk as bytes arrive, within a
//! server-wide bound and a per-client share, so slow or stalled senders cannot starve
//! anyone else's submits.
//!
//! Reserving a body's announced size before reading it let 26 clients that announced
//! 10 MiB and sent one byte hold the whole bound, and every other submit waited for them.
//! Reserved as it arrives, a stalled body holds only what it sent; an API key that sends many
//! large bodies at once is refused past its share instead of filling the bound for everyone
//! (submits need a key with `jobs`, or open mode, where every caller is this machine's).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Who a job body is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// A configured API key, by its index.
    Key(usize),
    /// Not counted against a share: open mode's callers, and in-process tests.
    Unshared,
}

/// Why more room was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoRoom {
    /// The sender's bodies in flight already hold its share, in bytes.
    #[error(
        "job bodies being received with this API key already hold {0} bytes (jobs.max_inflight_bytes_per_client); retry once they are in"
    )]
    Share(usize),
    /// The server-wide bound stayed full for this long.
    #[error(
        "the gateway is receiving as many job bytes as it may hold (jobs.max_inflight_bytes); retry shortly"
    )]
    Full(Duration),
}

/// The server-wide bound and every sender's share of it.
#[derive(Debug)]
pub struct Inflight {
    room: Arc<Semaphore>,
    total: usize,
    share: usize,
    /// Bytes held per sender; entries go when they reach zero.
    held: Mutex<HashMap<Sender, usize>>,
    /// Longest wait for room before a body is refused with [`NoRoom::Full`].
    wait: Duration,
}

impl Inflight {
    /// At most `total` bytes at once, `share` of them per sender; a chunk waits at most
    /// `wait` for room.
    pub fn new(total: usize, share: usize, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            room: Arc::new(Semaphore::new(total)),
            total,
            share: share.min(total),
            held: Mutex::default(),
            wait,
        })
    }

    /// An empty reservation for one body from `sender`.
    pub fn reservation(self: &Arc<Self>, sender: Sender) -> Reservation {
        Reservation {
            inflight: Arc::clone(self),
            sender,
            bytes: 0,
            permits: None,
        }
    }

    /// Bytes free under the server-wide bound.
    pub fn available(&self) -> usize {
        self.room.available_permits()
    }

    /// Bytes held by bodies being received.
    pub fn held_bytes(&self) -> usize {
        self.total - self.available()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Sender, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The room one body holds; dropping it gives the room back.
#[derive(Debug)]
pub struct Reservation {
    inflight: Arc<Inflight>,
    sender: Sender,
    bytes: usize,
    permits: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Reserves `n` more bytes: refused at once past the sender's share, waiting (at most
    /// the configured time) for the server-wide bound.
    ///
    /// # Errors
    /// [`NoRoom`].
    pub async fn grow(&mut self, n: usize) -> Result<(), NoRoom> {
        if n == 0 {
            return Ok(());
        }
        let inflight = Arc::clone(&self.inflight);
        if self.is_shared() {
            let mut held = inflight.held();
            let mine = held.entry(self.sender).or_default();
            if *mine + n > inflight.share {
                let share = inflight.share;
                if *mine == 0 {
                    held.remove(&self.sender);
                }
                return Err(NoRoom::Share(share));
            }
            *mine += n;
        }
        // Counted in the share before the wait, so one sender's waiting chunks cannot add up
        // past it either; given back below if the wait fails.
        self.bytes += n;
        let permits = u32::try_from(n.min(inflight.total)).unwrap_or(u32::MAX);
        let acquire = Arc::clone(&inflight.room).acquire_many_owned(permits);
        match tokio::time::timeout(inflight.wait, acquire).await {
            Ok(permit) => {
                let permit = permit.expect("the semaphore is never closed");
                match &mut self.permits {
                    Some(held) => held.merge(permit),
                    None => self.permits = Some(permit),
                }
                Ok(())
            }
            Err(_) => {
                self.release_share(n);
                Err(NoRoom::Full(inflight.wait))
            }
        }
    }

    fn is_shared(&self) -> bool {
        self.sender != Sender::Unshared
    }

    fn release_share(&mut self, n: usize) {
        self.bytes -= n;
        if !self.is_shared() {
            return;
        }
        let mut held = self.inflight.held();
        if let Some(mine) = held.get_mut(&self.sender) {
            *mine = mine.saturating_sub(n);
            if *mine == 0 {
                held.remove(&self.sender);
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release_share(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_holds_only_what_it_sent() {
        let inflight = Inflight::new(100, 100, WAIT);
        let mut stalled = inflight.reservation(Sender::Unshared);
        stalled.grow(1).await.unwrap();
        let mut other = inflight.reservation(Sender::Unshared);
        other.grow(99).await.unwrap();
        assert_eq!(inflight.available(), 0);
        drop(other);
        drop(stalled);
        assert_eq!(inflight.available(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_share_a_sender_is_refused_while_others_still_get_room() {
        let inflight = Inflight::new(100, 40, WAIT);
        let key = Sender::Key(0);
        let mut first = inflight.reservation(key);
        first.grow(30).await.unwrap();
        let mut second = inflight.reservation(key);
        assert_eq!(
            second.grow(11).await,
            Err(NoRoom::Share(40)),
            "30 + 11 > 40"
        );
        second.grow(10).await.unwrap();
        let mut other = inflight.reservation(Sender::Key(1));
        other.grow(40).await.unwrap();
        drop(first);
        second.grow(30).await.unwrap();
        drop(second);
        drop(other);
        assert_eq!(inflight.available(), 100);
        assert!(inflight.held().is_empty(), "{:?}", inflight.held());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bound_waits_then_refuses_and_gives_the_share_back() {
        let inflight = Inflight::new(100, 100, WAIT);
        let mut all = inflight.reservation(Sender::Unshared);
        all.grow(100).await.unwrap();
        let mut waiting = inflight.reservation(Sender::Key(7));
        let started = tokio::time::Instant::now();
        assert_eq!(waiting.grow(10).await, Err(NoRoom::Full(WAIT)));
        assert_eq!(started.elapsed(), WAIT);
        assert!(inflight.held().is_empty());
        // Room that frees up during the wait is taken.
        let freed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(all);
        });
        waiting.grow(10).await.unwrap();
        freed.await.unwrap();
        assert_eq!(inflight.available(), 90);
    }
}
