//! switchyard's consumer transports. Each adapts the hub's subscription stream to one wire
//! format and knows nothing of storage.
//!
//! # Layout
//! - [`hub`]: the seam: [`hub::Hub`] (subscribe from a cursor), [`hub::Event`] (encoded once
//!   per wire format, shared by every subscriber); [`hub::Inbox`] is the bounded
//!   per-connection queue (its own module, `inbox`).
//! - [`websocket`], [`sse`], [`stream`], [`longpoll`]: the four consumer transports.
//! - [`context`]: what every transport needs (hub, limits, metrics, shutdown, task tracker).
//! - [`metrics`]: connection, delivery, slow-consumer and latency counters.
//! - [`http`]: response helpers and the JSON error shape.
//! - [`params`]: channels and cursors from a consumer request.
//! - [`access`]: consumer grants (which channels, until when) and the credential seam.
//! - [`namespaces`]: per-family channel rules; [`presence`] and [`client_publish`]: the
//!   seams through which the engine tracks members and the server publishes for clients.
//! - [`direct`], [`raw`], [`chunked`]: direct writes from the fan-out to idle connections,
//!   and the streaming `GET`s the server serves on the raw connection.
//! - [`hyper_io`]: the connection as hyper serves it, with hyper's own error answers made
//!   JSON.
#![warn(missing_docs)]

pub mod access;
pub mod allowance;
pub mod chunked;
pub mod client_publish;
pub mod context;
pub mod direct;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod hyper_io;
mod inbox;
pub mod longpoll;
mod membership;
pub mod metrics;
pub mod namespaces;
pub mod occupancy;
pub mod params;
pub mod presence;
mod push;
pub mod raw;
pub mod sse;
pub mod stream;
pub mod websocket;

mod session;
#[cfg(test)]
mod testing;

pub use context::{Context, TransportConfig};
