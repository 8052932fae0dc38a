//! Outbound webhooks: endpoint management, the durable outbox, and the dispatcher that
//! signs and delivers with retries.

pub mod filter;
