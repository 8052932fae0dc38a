//! Outbound webhooks: endpoint management, the durable outbox, and the dispatcher that
//! signs and delivers with retries.

pub mod dispatcher;
pub mod filter;
pub mod lanes;
pub mod schedule;
pub mod sender;
pub mod ssrf;
#[cfg(test)]
mod testing;
pub mod url_syntax;

use std::sync::Arc;

use switchyard_protocol::{ChannelPattern, envelope::is_valid_event_type, webhook::WebhookSecret};

use crate::{
    config::WebhooksConfig,
    store::{Delivery, EndpointRecord, StoreError, WebhookStore},
    time::now_ms,
};

/// How long the secret before a rotation keeps signing deliveries (beside the new one).
const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;
/// Most channel patterns and event types per endpoint.
const MAX_FILTERS: usize = 100;
/// Longest endpoint URL.
const MAX_URL_LEN: usize = 2048;

/// Why an endpoint request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Bad input (400).
    #[error("{0}")]
    Invalid(String),
    /// A URL the SSRF guard (or URL syntax) refuses (400).
    #[error(transparent)]
    Url(#[from] ssrf::UrlRefused),
    /// From the store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a create or update asks for (absent fields are left as they are).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointInput {
    /// Destination URL.
    pub url: Option<String>,
    /// Channel patterns.
    pub channels: Option<Vec<String>>,
    /// Event types (empty: all).
    pub types: Option<Vec<String>>,
    /// A `whsec_...` secret to use (generated when absent on create).
    pub secret: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Generate a new secret; the old one keeps signing for 24 hours.
    #[serde(default)]
    pub rotate_secret: bool,
}

/// Endpoint management and the outbox's entry for published events.
pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    config: WebhooksConfig,
}

fn new_secret() -> String {
    WebhookSecret::from_bytes(crate::ids::random_bytes::<32>().to_vec())
        .expect("32 bytes is a valid key")
        .as_whsec()
}

impl Webhooks {
    /// The service over `store`.
    pub fn new(store: Arc<dyn WebhookStore>, config: WebhooksConfig) -> Self {
        Self { store, config }
    }

    async fn check_url(&self, url: &str) -> Result<(), WebhookError> {
        if url.len() > MAX_URL_LEN {
            return Err(WebhookError::Invalid(format!(
                "`url` is longer than {MAX_URL_LEN} characters"
            )));
        }
        url_syntax::check(url).map_err(WebhookError::Invalid)?;
        let parsed = ssrf::check_url(url, self.config.allow_private_networks)?;
        // A name is checked again at every connection; refusing an obviously internal one
        // now gives a clear answer. A name that does not resolve yet is accepted.
        let host = parsed
            .host_str()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_err() {
            let resolver = ssrf::GuardedResolver {
                allow_private: self.config.allow_private_networks,
            };
            if let Err(ssrf::LookupError::Refused) = resolver.lookup(host).await {
                return Err(ssrf::UrlRefused::NonPublicName(host.to_owned()).into());
            }
        }
        Ok(())
    }

    fn check_filters(
        channels: Option<&Vec<String>>,
        types: Option<&Vec<String>>,
    ) -> Result<(), WebhookError> {
        if let Some(channels) = channels {
            if channels.is_empty() || channels.len() > MAX_FILTERS {
                return Err(WebhookError::Invalid(format!(
                    "`channels` must list 1-{MAX_FILTERS} channel patterns"
                )));
            }
            for c in channels {
                ChannelPattern::new(c)
                    .map_err(|e| WebhookError::Invalid(format!("`channels`: {c:?}: {e}")))?;
            }
        }
        if let Some(types) = types {
            if types.len() > MAX_FILTERS {
                return Err(WebhookError::Invalid(format!(
                    "`types` may list at most {MAX_FILTERS} event types"
                )));
            }
            if let Some(bad) = types.iter().find(|t| !is_valid_event_type(t)) {
                return Err(WebhookError::Invalid(format!(
                    "`types`: {bad:?} is not a valid event type"
                )));
            }
        }
        Ok(())
    }

    fn check_secret(secret: &str) -> Result<(), WebhookError> {
        WebhookSecret::parse(secret).map(drop).map_err(|e| {
            WebhookError::Invalid(format!(
                "`secret` must be whsec_ + base64 of 24-64 bytes: {e}"
            ))
        })
    }

    /// Registers an endpoint, durably.
    ///
    /// # Errors
    /// [`WebhookError::Invalid`] for bad input, or the store's error.
    pub async fn create(&self, input: EndpointInput) -> Result<EndpointRecord, WebhookError> {
        let url = input
            .url
            .ok_or_else(|| WebhookError::Invalid("`url` is required".into()))?;
        let channels = input
            .channels
            .ok_or_else(|| WebhookError::Invalid("`channels` is required".into()))?;
        if input.rotate_secret {
            return Err(WebhookError::Invalid(
                "`rotate_secret` applies to an existing endpoint".into(),
            ));
        }
        Self::check_filters(Some(&channels), input.types.as_ref())?;
        self.check_url(&url).await?;
        let secret = match input.secret {
            Some(s) => {
                Self::check_secret(&s)?;
                s
            }
            None => new_secret(),
        };
        let now = now_ms();
        let endpoint = EndpointRecord {
            id: crate::ids::endpoint_id(),
            url,
            channels,
            types: input.types.unwrap_or_default(),
            secret,
            previous_secret: None,
            previous_secret_until_ms: None,
            enabled: input.enabled.unwrap_or(true),
            disabled_reason: None,
            failing_since_ms: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.store
            .put_endpoint(endpoint.clone(), Some(self.config.max_endpoints))
            .await?;
        Ok(endpoint)
    }

    /// Changes an endpoint; returns it and whether its secret was rotated.
    ///
    /// # Errors
    /// [`WebhookError::Invalid`] for bad input, `NotFound`, or the store's error.
    pub async fn update(
        &self,
        id: &str,
        input: EndpointInput,
    ) -> Result<(EndpointRecord, bool), WebhookError> {
        let mut e = self
            .store
            .get_endpoint(id)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::check_filters(input.channels.as_ref(), input.types.as_ref())?;
        if let Some(url) = input.url {
            self.check_url(&url).await?;
            e.url = url;
        }
        if let Some(channels) = input.channels {
            e.channels = channels;
        }
        if let Some(types) = input.types {
            e.types = types;
        }
        let now = now_ms();
        let rotated = input.rotate_secret || input.secret.is_some();
        if rotated {
            let next = match input.secret {
                Some(s) => {
                    Self::check_secret(&s)?;
                    s
                }
                None => new_secret(),
            };
            e.previous_secret = Some(std::mem::replace(&mut e.secret, next));
            e.previous_secret_until_ms = Some(now + ROTATION_OVERLAP_MS);
        }
        if let Some(enabled) = input.enabled {
            if enabled && !e.enabled {
                // A fresh start: it is no longer counted as failing.
                e.disabled_reason = None;
                e.failing_since_ms = None;
            }
            if !enabled && e.enabled {
                e.disabled_reason = Some("disabled by request".into());
            }
            e.enabled = enabled;
        }
        e.updated_at_ms = now;
        self.store.put_endpoint(e.clone(), None).await?;
        Ok((e, rotated))
    }

    /// Every endpoint.
    pub async fn list(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        self.store.list_endpoints().await
    }

    /// One endpoint.
    pub async fn get(&self, id: &str) -> Result<Option<EndpointRecord>, StoreError> {
        self.store.get_endpoint(id).await
    }

    /// Removes an endpoint and its deliveries.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.store.delete_endpoint(id.to_owned()).await
    }

    /// An endpoint's newest deliveries.
    pub async fn deliveries(&self, id: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.store.deliveries(id, limit).await
    }

    /// Sends a delivery again now.
    pub async fn retry(&self, id: &str, delivery: &str) -> Result<(), StoreError> {
        self.store
            .retry_delivery(id.to_owned(), delivery.to_owned(), now_ms())
            .await
    }
}
