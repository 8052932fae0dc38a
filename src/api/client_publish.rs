//! The server's side of `{"op":"publish"}` over WebSocket: the publish API's checks (event
//! type, size, JSON limits, the per-address request rate) and its one event path.

use std::{net::IpAddr, sync::Arc, time::Instant};

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;
use switchyard_protocol::{ChannelName, ErrorCode, envelope::is_valid_event_type};
use switchyard_transports::{
    client_publish::{ClientPublished, ClientPublisher},
    context::ClientAddr,
    params::ParamError,
};

use super::{error::ApiError, json_limits};
use crate::{
    auth::rate::{RateLimiter, retry_after_secs},
    engine::Engine,
    hub::{Bus, Publish},
};

/// Publishes for WebSocket clients through the engine.
pub struct ServerPublisher {
    engine: Arc<Engine>,
    max_event_bytes: usize,
    /// The per-address request budget the HTTP API uses: a client's WebSocket publishes
    /// and its requests draw on the same bucket.
    ip_limiter: Arc<RateLimiter<IpAddr>>,
    /// Open mode: a client on this machine is not rate limited (as for requests).
    open_mode: bool,
}

impl ServerPublisher {
    /// A publisher over `engine`.
    pub fn new(
        engine: Arc<Engine>,
        max_event_bytes: usize,
        ip_limiter: Arc<RateLimiter<IpAddr>>,
        open_mode: bool,
    ) -> Self {
        Self {
            engine,
            max_event_bytes,
            ip_limiter,
            open_mode,
        }
    }

    fn rate_limit(&self, client: Option<ClientAddr>) -> Result<(), ParamError> {
        let Some(ClientAddr(ip)) = client else {
            return Ok(());
        };
        if self.open_mode && ip.to_canonical().is_loopback() {
            return Ok(());
        }
        self.ip_limiter.check(&ip, Instant::now()).map_err(|wait| {
            ParamError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many requests from this client address; retry after {} s",
                    retry_after_secs(wait)
                ),
            )
        })
    }
}

fn param(e: ApiError) -> ParamError {
    ParamError::new(e.code(), e.message().to_owned())
}

impl ClientPublisher for ServerPublisher {
    fn publish<'a>(
        &'a self,
        client: Option<ClientAddr>,
        channel: &'a ChannelName,
        event_type: &'a str,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<ClientPublished, ParamError>> {
        async move {
            self.rate_limit(client)?;
            if !is_valid_event_type(event_type) {
                return Err(ParamError::new(
                    ErrorCode::InvalidParameter,
                    "`type` must be 1-100 visible ASCII characters without spaces",
                ));
            }
            if data.get().len() > self.max_event_bytes {
                return Err(ParamError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "`data` is larger than limits.max_event_bytes ({} bytes)",
                        self.max_event_bytes
                    ),
                ));
            }
            json_limits::check(data.get().as_bytes()).map_err(param)?;
            let published = self
                .engine
                .publish(Publish {
                    channel,
                    event_type,
                    data,
                    idempotency_key: None,
                })
                .await
                .map_err(|e| param(e.into()))?;
            Ok(ClientPublished {
                offset: published.offset,
                cursor: published.cursor,
            })
        }
        .boxed()
    }
}
