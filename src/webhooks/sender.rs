//! The HTTP exchange of one webhook attempt behind a seam: [`WebhookSender`], done in
//! production by [`HttpSender`] (reqwest, SSRF-guarded resolver) and in tests by a fake.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, future::BoxFuture};
use http::{HeaderMap, StatusCode};
use reqwest::redirect::Policy;

use super::ssrf;
use crate::config::WebhooksConfig;

/// One attempt as it goes on the wire: the dispatcher has checked the URL and signed it.
#[derive(Clone, Debug)]
pub struct WebhookRequest {
    /// The endpoint URL, already checked by [`ssrf::check_url`].
    pub url: reqwest::Url,
    /// `content-type` and the Standard Webhooks headers.
    pub headers: HeaderMap,
    /// The event envelope, exactly the bytes signed.
    pub body: Bytes,
}

/// The receiver's answer. Its body is never read.
#[derive(Debug)]
pub struct WebhookResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers (the dispatcher reads `Retry-After`).
    pub headers: HeaderMap,
}

/// Sends one webhook attempt (a POST) and reports what came back.
pub trait WebhookSender: Send + Sync + 'static {
    /// POSTs `request`: the answer's status and headers, or a readable reason why none
    /// came (cannot connect, the SSRF guard's refusal, ...).
    ///
    /// The dispatcher bounds the call by `webhooks.attempt_timeout_secs` and drops it when
    /// that passes, so an implementation needs no overall timeout of its own.
    fn send(&self, request: WebhookRequest) -> BoxFuture<'_, Result<WebhookResponse, String>>;
}

/// Attempts over HTTP(S) with reqwest: no redirects, no proxy, and names resolved by the
/// SSRF guard at every connection.
pub struct HttpSender {
    client: reqwest::Client,
}

impl HttpSender {
    /// The client for `config`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(config: &WebhooksConfig) -> anyhow::Result<Self> {
        // rustls needs its crypto provider once per process; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_secs_f64(config.attempt_timeout_secs);
        let client = reqwest::Client::builder()
            .redirect(Policy::none())
            // A proxy from the environment would resolve names itself, past the SSRF guard.
            .no_proxy()
            .dns_resolver(ssrf::resolver(config.allow_private_networks))
            // The whole attempt is timed by the dispatcher; this only bounds connecting.
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(config.max_per_endpoint)
            .user_agent(concat!("switchyard-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }
}

impl WebhookSender for HttpSender {
    fn send(&self, request: WebhookRequest) -> BoxFuture<'_, Result<WebhookResponse, String>> {
        async move {
            let mut response = self
                .client
                .post(request.url)
                .headers(request.headers)
                .body(request.body)
                .send()
                .await
                .map_err(describe)?;
            Ok(WebhookResponse {
                status: response.status(),
                headers: std::mem::take(response.headers_mut()),
            })
        }
        .boxed()
    }
}

/// A readable reason for a failed request, including the SSRF guard's refusal.
fn describe(e: reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    if ssrf::is_refusal(&e) {
        return ssrf::LookupError::Refused.to_string();
    }
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
