//! `/v1/webhooks`: endpoint management and the delivery log. Handlers answer
//! `Result<Reply, ApiError>`; a store's `not_found` is named after the endpoint (or
//! delivery) here.

use std::sync::Arc;

use http::{Request, StatusCode};
use serde::Serialize;
use switchyard_protocol::ErrorCode;
use switchyard_transports::{http::json, params::form_urlencoded_pairs};

use super::{
    AppState,
    body::{ApiBody, parse_object, read_json},
    error::{ApiError, ApiResult, NotFoundAs},
};
use crate::{
    store::{Delivery, EndpointRecord},
    time::rfc3339,
    webhooks::EndpointInput,
};

/// Largest endpoint request body.
const MAX_BODY: usize = 64 * 1024;
/// Default and most deliveries in one delivery-log page.
const DEFAULT_DELIVERIES: usize = 50;
const MAX_DELIVERIES: usize = 500;

#[derive(Serialize)]
struct EndpointView<'a> {
    id: &'a str,
    url: &'a str,
    channels: &'a [String],
    types: &'a [String],
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failing_since: Option<String>,
    created_at: String,
    updated_at: String,
    /// Only when just created or rotated: the one time the secret is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
}

fn view(e: &EndpointRecord, with_secret: bool) -> EndpointView<'_> {
    EndpointView {
        id: &e.id,
        url: &e.url,
        channels: &e.channels,
        types: &e.types,
        enabled: e.enabled,
        disabled_reason: e.disabled_reason.as_deref(),
        failing_since: e.failing_since_ms.map(rfc3339),
        created_at: rfc3339(e.created_at_ms),
        updated_at: rfc3339(e.updated_at_ms),
        secret: with_secret.then_some(e.secret.as_str()),
    }
}

/// The `not_found` message of endpoint `id`.
fn no_endpoint(id: &str) -> impl FnOnce() -> String + '_ {
    move || format!("no endpoint {id:?}")
}

async fn input(req: Request<ApiBody>) -> ApiResult<EndpointInput> {
    let (_, body) = read_json(req, MAX_BODY).await?;
    parse_object(&body)
}

/// `POST /v1/webhooks`
///
/// # Errors
/// A bad body or URL (400); the endpoint limit (409); the store's refusal.
pub async fn create(state: Arc<AppState>, req: Request<ApiBody>) -> ApiResult {
    let input = input(req).await?;
    let endpoint = state.webhooks.create(input).await?;
    Ok(json(StatusCode::CREATED, &view(&endpoint, true)))
}

/// `GET /v1/webhooks`
///
/// # Errors
/// The store's refusal.
pub async fn list(state: Arc<AppState>) -> ApiResult {
    let all = state.webhooks.list().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"webhooks": all.iter().map(|e| view(e, false)).collect::<Vec<_>>()}),
    ))
}

/// `GET /v1/webhooks/{id}`
///
/// # Errors
/// `not_found`; the store's refusal.
pub async fn get(state: Arc<AppState>, id: &str) -> ApiResult {
    let endpoint = state
        .webhooks
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(no_endpoint(id)()))?;
    Ok(json(StatusCode::OK, &view(&endpoint, false)))
}

/// `PATCH /v1/webhooks/{id}`
///
/// # Errors
/// A bad body or URL (400); `not_found`; the store's refusal.
pub async fn update(state: Arc<AppState>, id: &str, req: Request<ApiBody>) -> ApiResult {
    let input = input(req).await?;
    let (endpoint, rotated) = state
        .webhooks
        .update(id, input)
        .await
        .not_found_as(no_endpoint(id))?;
    Ok(json(StatusCode::OK, &view(&endpoint, rotated)))
}

/// `DELETE /v1/webhooks/{id}`
///
/// # Errors
/// `not_found`; the store's refusal.
pub async fn delete(state: Arc<AppState>, id: &str) -> ApiResult {
    if !state.webhooks.delete(id).await? {
        return Err(ApiError::not_found(no_endpoint(id)()));
    }
    let mut res = http::Response::new(switchyard_transports::http::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    Ok(res)
}

#[derive(Serialize)]
struct DeliveryView<'a> {
    id: &'a str,
    channel: &'a str,
    offset: u64,
    #[serde(rename = "type")]
    event_type: &'a str,
    status: &'a str,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    created_at: String,
    updated_at: String,
    attempt_log: Vec<serde_json::Value>,
}

fn delivery_view(d: &Delivery) -> DeliveryView<'_> {
    DeliveryView {
        id: &d.id,
        channel: &d.channel,
        offset: d.offset,
        event_type: &d.event_type,
        status: &d.status,
        attempts: d.attempts,
        next_attempt_at: d
            .next_attempt_at_ms
            .filter(|_| d.status == "pending")
            .map(rfc3339),
        created_at: rfc3339(d.created_at_ms),
        updated_at: rfc3339(d.updated_at_ms),
        attempt_log: d
            .log
            .iter()
            .map(|a| {
                serde_json::json!({
                    "attempt": a.n,
                    "at": rfc3339(a.at_ms),
                    "status_code": a.status_code,
                    "latency_ms": a.latency_ms,
                    "error": a.error,
                })
            })
            .collect(),
    }
}

/// `GET /v1/webhooks/{id}/deliveries?limit=N`: newest first, with every attempt.
///
/// # Errors
/// A bad `limit`; `not_found`; the store's refusal.
pub async fn deliveries(state: Arc<AppState>, id: &str, query: Option<&str>) -> ApiResult {
    let mut limit = DEFAULT_DELIVERIES;
    for (k, v) in form_urlencoded_pairs(query.unwrap_or("")) {
        if k == "limit" {
            match v.parse::<usize>() {
                Ok(n) if (1..=MAX_DELIVERIES).contains(&n) => limit = n,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("`limit` must be an integer from 1 to {MAX_DELIVERIES}"),
                    ));
                }
            }
        }
    }
    if state.webhooks.get(id).await?.is_none() {
        return Err(ApiError::not_found(no_endpoint(id)()));
    }
    let list = state
        .webhooks
        .deliveries(id, limit)
        .await
        .not_found_as(no_endpoint(id))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"deliveries": list.iter().map(delivery_view).collect::<Vec<_>>()}),
    ))
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery}/retry`: send it again now.
///
/// # Errors
/// `not_found` (no such endpoint or delivery); the store's refusal.
pub async fn retry(state: Arc<AppState>, id: &str, delivery: &str) -> ApiResult {
    state
        .webhooks
        .retry(id, delivery)
        .await
        .not_found_as(|| format!("no delivery {delivery:?} on endpoint {id:?}"))?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"id": delivery, "status": "pending"}),
    ))
}
