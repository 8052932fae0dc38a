//! One error type for every handler, [`ApiError`]: built from each error a handler meets and
//! turned into the API's JSON error answer in one place, [`ApiError::into_response`].
//!
//! Client faults (4xx) carry their message to the client and are not logged. Internal faults
//! (a store or the event hub failing) answer a generic 5xx sentence and log the details at
//! `error`, with the request's id (`x-request-id`), which the client also receives.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, header};
use switchyard_protocol::ErrorCode;
use switchyard_transports::{http::error as error_response, params::ParamError};
use tower::BoxError;

use super::{body::BodyError, headers::InvalidHeader, router::Reply};
use crate::{
    hub::{HubError, PublishError},
    store::StoreError,
    webhooks::WebhookError,
};

/// What a handler returns.
pub type ApiResult<T = Reply> = Result<T, ApiError>;

/// A refused or failed request, as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: Cow<'static, str>,
    /// Headers the answer carries besides the error body (`Allow`, `Retry-After`,
    /// `Connection: close`).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The internal fault behind a 5xx: logged when answered, never sent.
    fault: Option<BoxError>,
    /// The request's `x-request-id`, for the fault's log line.
    request_id: Option<HeaderValue>,
}

impl ApiError {
    /// A refusal whose message is meant for the client.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            headers: Vec::new(),
            fault: None,
            request_id: None,
        }
    }

    /// An internal fault: the client reads `message` (generic), the log gets `fault`.
    pub fn internal(code: ErrorCode, message: &'static str, fault: impl Into<BoxError>) -> Self {
        Self {
            fault: Some(fault.into()),
            ..Self::new(code, message)
        }
    }

    /// `404 not_found` with `message`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// Adds a header to the answer.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Asks hyper to close the connection after the answer (`Connection: close`): the rest
    /// of the request body could not be read.
    #[must_use]
    pub fn closing(self) -> Self {
        self.with_header(header::CONNECTION, HeaderValue::from_static("close"))
    }

    /// Names what was missing when this is `not_found` (a store's own message names no
    /// resource); any other error is left as it is.
    #[must_use]
    pub fn naming(mut self, missing: impl FnOnce() -> String) -> Self {
        if self.code == ErrorCode::NotFound {
            self.message = missing().into();
        }
        self
    }

    /// Names the request in the log line of an internal fault.
    #[must_use]
    pub fn for_request(mut self, request_id: Option<&HeaderValue>) -> Self {
        self.request_id = request_id.cloned();
        self
    }

    /// The error code (and so the status).
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message the client reads.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The answer: the JSON error shape with the code's status; internal faults are logged
    /// here, once.
    pub fn into_response(self) -> Reply {
        if let Some(fault) = &self.fault {
            let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok());
            tracing::error!(
                code = self.code.as_str(),
                request_id,
                error = %fault,
                "{}",
                self.message
            );
        }
        let mut res = error_response(self.code, self.message);
        for (name, value) in self.headers {
            res.headers_mut().append(name, value);
        }
        res
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// Names what was missing in a `not_found` result (see [`ApiError::naming`]).
pub trait NotFoundAs<T> {
    /// Converts the error, naming the missing resource when it is `not_found`.
    ///
    /// # Errors
    /// The converted error.
    fn not_found_as(self, missing: impl FnOnce() -> String) -> ApiResult<T>;
}

impl<T, E: Into<ApiError>> NotFoundAs<T> for Result<T, E> {
    fn not_found_as(self, missing: impl FnOnce() -> String) -> ApiResult<T> {
        self.map_err(|e| e.into().naming(missing))
    }
}

// === conversions: every error a handler meets ===

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found(e.to_string()),
            StoreError::StaleLease(_)
            | StoreError::Finished(_)
            | StoreError::IdempotencyConflict => Self::new(ErrorCode::Conflict, e.to_string()),
            StoreError::Limit(why) => Self::new(ErrorCode::Conflict, why),
            StoreError::Unavailable(_) => Self::internal(
                ErrorCode::Unavailable,
                "the store is unavailable; retry later",
                e,
            ),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            // A capacity limit, not a fault: the client may retry later or elsewhere.
            HubError::TooManyChannels => Self::new(ErrorCode::Unavailable, e.to_string()),
            HubError::Unavailable(_) => Self::internal(
                ErrorCode::Unavailable,
                "the event hub is unavailable; retry later",
                e,
            ),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        // No wildcard: a new variant must be given its answer here.
        match e {
            PublishError::IdempotencyConflict => Self::new(ErrorCode::Conflict, e.to_string()),
            PublishError::Reserved => Self::new(ErrorCode::Forbidden, e.to_string()),
            PublishError::Hub(e) => e.into(),
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(why) => Self::new(ErrorCode::InvalidRequest, why),
            WebhookError::Url(refused) => Self::new(ErrorCode::InvalidRequest, refused.to_string()),
            WebhookError::Store(e) => e.into(),
        }
    }
}

impl From<InvalidHeader> for ApiError {
    fn from(e: InvalidHeader) -> Self {
        Self::new(ErrorCode::InvalidParameter, e.0)
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let code = match &e {
            BodyError::NotJson(_) => ErrorCode::UnsupportedMediaType,
            BodyError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            BodyError::TimedOut(_) => ErrorCode::RequestTimeout,
            BodyError::Read(_) => ErrorCode::InvalidRequest,
        };
        let closing = matches!(e, BodyError::TimedOut(_));
        let err = Self::new(code, e.to_string());
        // The rest of a body that stopped arriving cannot be skipped: the connection goes.
        if closing { err.closing() } else { err }
    }
}

impl From<serde_json::Error> for ApiError {
    /// `bad_json` (not JSON at all) or `invalid_request` (JSON of the wrong shape).
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                Self::new(ErrorCode::BadJson, format!("body is not valid JSON: {e}"))
            }
            Category::Data => Self::new(ErrorCode::InvalidRequest, format!("unexpected body: {e}")),
        }
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        Self::new(e.code, e.message)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::*;
    use crate::webhooks::ssrf::UrlRefused;

    /// Status, code, message and headers of the answer to `e`.
    async fn answer(e: impl Into<ApiError>) -> (u16, String, String, http::HeaderMap) {
        let res = e.into().into_response();
        let (parts, body) = res.into_parts();
        let body: Value =
            serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
        (
            parts.status.as_u16(),
            body["error"]["code"].as_str().unwrap().to_owned(),
            body["error"]["message"].as_str().unwrap().to_owned(),
            parts.headers,
        )
    }

    #[tokio::test]
    async fn store_errors() {
        let (s, c, m, _) = answer(StoreError::NotFound).await;
        assert_eq!((s, c.as_str()), (404, "not_found"), "{m}");
        for conflict in [
            StoreError::StaleLease("running"),
            StoreError::Finished("succeeded"),
            StoreError::IdempotencyConflict,
            StoreError::Limit("too many queued jobs".into()),
        ] {
            let (s, c, _, _) = answer(conflict).await;
            assert_eq!((s, c.as_str()), (409, "conflict"));
        }
        let (s, c, m, _) = answer(StoreError::Unavailable("disk on fire at /var/x".into())).await;
        assert_eq!((s, c.as_str()), (503, "unavailable"));
        assert!(
            !m.contains("disk"),
            "an internal fault's details stay in the log: {m}"
        );
    }

    #[tokio::test]
    async fn missing_resources_are_named() {
        let named: ApiResult<()> =
            Err::<(), _>(StoreError::NotFound).not_found_as(|| "no job \"x\"".into());
        let (s, _, m, _) = answer(named.unwrap_err()).await;
        assert_eq!((s, m.as_str()), (404, "no job \"x\""));
        // Only `not_found` is renamed.
        let other: ApiResult<()> =
            Err::<(), _>(StoreError::IdempotencyConflict).not_found_as(|| "no job".into());
        assert_eq!(other.unwrap_err().code(), ErrorCode::Conflict);
    }

    #[tokio::test]
    async fn hub_and_publish_errors() {
        let (s, c, m, _) = answer(HubError::TooManyChannels).await;
        assert_eq!((s, c.as_str()), (503, "unavailable"));
        assert!(m.contains("most channels"), "{m}");
        let (s, c, m, _) = answer(HubError::Unavailable("redis at 10.0.0.7 down".into())).await;
        assert_eq!((s, c.as_str()), (503, "unavailable"));
        assert!(!m.contains("10.0.0.7"), "{m}");
        let (s, c, _, _) = answer(PublishError::IdempotencyConflict).await;
        assert_eq!((s, c.as_str()), (409, "conflict"));
        let (s, c, _, _) = answer(PublishError::Reserved).await;
        assert_eq!((s, c.as_str()), (403, "forbidden"));
        let (s, c, _, _) = answer(PublishError::Hub(HubError::TooManyChannels)).await;
        assert_eq!((s, c.as_str()), (503, "unavailable"));
    }

    #[tokio::test]
    async fn webhook_errors() {
        let (s, c, m, _) = answer(WebhookError::Invalid("`url` is required".into())).await;
        assert_eq!(
            (s, c.as_str(), m.as_str()),
            (400, "invalid_request", "`url` is required")
        );
        let refused = WebhookError::Url(UrlRefused::NonPublicAddress("127.0.0.1".parse().unwrap()));
        let (s, c, m, _) = answer(refused).await;
        assert_eq!((s, c.as_str()), (400, "invalid_request"));
        assert!(m.contains("allow_private_networks"), "{m}");
        let (s, c, _, _) = answer(WebhookError::Store(StoreError::Limit("full".into()))).await;
        assert_eq!((s, c.as_str()), (409, "conflict"));
    }

    #[tokio::test]
    async fn request_errors() {
        let (s, c, _, _) = answer(InvalidHeader("Idempotency-Key is bad".into())).await;
        assert_eq!((s, c.as_str()), (400, "invalid_parameter"));
        let (s, c, _, _) = answer(serde_json::from_str::<Value>("{").unwrap_err()).await;
        assert_eq!((s, c.as_str()), (400, "bad_json"));
        let (s, c, _, _) = answer(serde_json::from_str::<u8>("\"x\"").unwrap_err()).await;
        assert_eq!((s, c.as_str()), (400, "invalid_request"));
        let (s, c, _, _) = answer(ParamError {
            code: ErrorCode::TokenExpired,
            message: "expired".into(),
        })
        .await;
        assert_eq!((s, c.as_str()), (401, "token_expired"));
    }

    #[tokio::test]
    async fn body_errors() {
        let cases = [
            (
                BodyError::NotJson("text/plain".into()),
                415,
                "unsupported_media_type",
            ),
            (BodyError::TooLarge(10), 413, "payload_too_large"),
            (
                BodyError::Read("reset by peer".into()),
                400,
                "invalid_request",
            ),
        ];
        for (e, status, code) in cases {
            let (s, c, _, h) = answer(e).await;
            assert_eq!((s, c.as_str()), (status, code));
            assert!(!h.contains_key(header::CONNECTION));
        }
        let (s, c, _, h) = answer(BodyError::TimedOut(Duration::from_secs(60))).await;
        assert_eq!((s, c.as_str()), (408, "request_timeout"));
        assert_eq!(h[header::CONNECTION], "close");
    }

    #[tokio::test]
    async fn extra_headers_and_challenges() {
        let e = ApiError::new(ErrorCode::RateLimited, "slow down")
            .with_header(header::RETRY_AFTER, HeaderValue::from(3));
        let (s, _, _, h) = answer(e).await;
        assert_eq!((s, &h[header::RETRY_AFTER]), (429, &HeaderValue::from(3)));
        let (s, _, _, h) = answer(ApiError::new(ErrorCode::Unauthorized, "who?")).await;
        assert_eq!(s, 401);
        assert!(h.contains_key(header::WWW_AUTHENTICATE));
    }

    #[tokio::test]
    async fn internal_faults_are_logged_with_the_request_id_and_client_faults_are_not() {
        let log = crate::api::testing::CapturedLog::default();
        let _guard = log.install(tracing::Level::INFO);
        let id = HeaderValue::from_static("req-fault-1");
        ApiError::from(StoreError::Unavailable("disk full at /var/x".into()))
            .for_request(Some(&id))
            .into_response();
        let text = log.text();
        assert!(text.contains("ERROR"), "{text}");
        assert!(text.contains("request_id=\"req-fault-1\""), "{text}");
        assert!(text.contains("disk full at /var/x"), "the cause: {text}");
        ApiError::from(StoreError::NotFound)
            .for_request(Some(&id))
            .into_response();
        assert_eq!(log.text(), text, "a client fault logged something");
    }
}
