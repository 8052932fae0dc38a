//! Wire types of switchyard, shared by the server, its transports, clients, tests and examples.
//!
//! # Layout
//! - [`channel`]: channel names and channel patterns (validation and matching).
//! - [`cursor`]: opaque, URL-safe resume positions (`epoch` + `offset` per channel).
//! - [`envelope`]: the event envelope every transport delivers.
//! - [`frame`]: WebSocket client and server frames.
//! - [`error`]: the JSON error shape and its codes.
//! - [`webhook`]: Standard Webhooks signing and verification of webhook deliveries.
#![warn(missing_docs)]

pub mod channel;
pub mod cursor;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod webhook;

pub use channel::{ChannelName, ChannelPattern};
pub use cursor::{Cursor, Position};
pub use envelope::Envelope;
pub use error::{ErrorBody, ErrorCode, ErrorResponse};
pub use frame::{ClientFrame, ServerFrame};

/// Errors from decoding wire input (cursors, channel names, frames).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A channel name broke the naming rules.
    #[error("invalid channel name: {0}")]
    InvalidChannel(&'static str),
    /// A channel pattern broke the pattern rules.
    #[error("invalid channel pattern: {0}")]
    InvalidPattern(&'static str),
    /// A cursor string was not one this server produces.
    #[error("invalid cursor: {0}")]
    InvalidCursor(&'static str),
}
