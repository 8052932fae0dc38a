//! Test doubles for the jobs service: an in-memory [`Store`](crate::store::Store) that
//! records its calls, and the memory hub with its subscriptions recorded.

mod fake_store;
mod spy_hub;

pub(crate) use fake_store::{Call, Expiry, FakeStore};
pub(crate) use spy_hub::SpyHub;
