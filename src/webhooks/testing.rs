//! Test doubles for the dispatcher: an in-memory outbox, a scripted receiver, and a wall
//! clock that follows Tokio's paused time.

mod clock;
mod fake_sender;
mod fake_store;

pub(crate) use clock::{EPOCH_MS, TestClock};
pub(crate) use fake_sender::{FakeSender, Reply, SentRequest};
pub(crate) use fake_store::FakeStore;
