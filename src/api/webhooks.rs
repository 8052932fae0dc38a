//! `/v1/webhooks`: endpoint management and the delivery log.

use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use switchyard_protocol::ErrorCode;
use switchyard_transports::{
    http::{error, json},
    params::form_urlencoded_pairs,
};

use super::{
    AppState,
    body::{parse_object, read_json},
    router::Reply,
};
use crate::{
    store::{Delivery, EndpointRecord, StoreError},
    time::rfc3339,
    webhooks::{EndpointInput, WebhookError},
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

fn fail(e: WebhookError, what: &str) -> Reply {
    match e {
        WebhookError::Invalid(why) => error(ErrorCode::InvalidRequest, why),
        WebhookError::Url(refused) => error(ErrorCode::InvalidRequest, refused.to_string()),
        WebhookError::Store(e) => store_fail(e, what),
    }
}

fn store_fail(e: StoreError, what: &str) -> Reply {
    match e {
        StoreError::NotFound => error(ErrorCode::NotFound, format!("no {what}")),
        StoreError::Limit(why) => error(ErrorCode::Conflict, why),
        other => {
            tracing::error!(error = %other, "webhook store failed");
            error(
                ErrorCode::Unavailable,
                "the store is unavailable; retry later",
            )
        }
    }
}

async fn input(req: Request<Incoming>) -> Result<EndpointInput, Reply> {
    let (_, body) = read_json(req, MAX_BODY).await?;
    parse_object(&body)
}

/// `POST /v1/webhooks`
pub async fn create(state: Arc<AppState>, req: Request<Incoming>) -> Reply {
    let input = match input(req).await {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    match state.webhooks.create(input).await {
        Ok(e) => json(StatusCode::CREATED, &view(&e, true)),
        Err(e) => fail(e, "endpoint"),
    }
}

/// `GET /v1/webhooks`
pub async fn list(state: Arc<AppState>) -> Reply {
    match state.webhooks.list().await {
        Ok(all) => json(
            StatusCode::OK,
            &serde_json::json!({"webhooks": all.iter().map(|e| view(e, false)).collect::<Vec<_>>()}),
        ),
        Err(e) => store_fail(e, "endpoint"),
    }
}

/// `GET /v1/webhooks/{id}`
pub async fn get(state: Arc<AppState>, id: &str) -> Reply {
    match state.webhooks.get(id).await {
        Ok(Some(e)) => json(StatusCode::OK, &view(&e, false)),
        Ok(None) => error(ErrorCode::NotFound, format!("no endpoint {id:?}")),
        Err(e) => store_fail(e, "endpoint"),
    }
}

/// `PATCH /v1/webhooks/{id}`
pub async fn update(state: Arc<AppState>, id: &str, req: Request<Incoming>) -> Reply {
    let input = match input(req).await {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    match state.webhooks.update(id, input).await {
        Ok((e, rotated)) => json(StatusCode::OK, &view(&e, rotated)),
        Err(e) => fail(e, &format!("endpoint {id:?}")),
    }
}

/// `DELETE /v1/webhooks/{id}`
pub async fn delete(state: Arc<AppState>, id: &str) -> Reply {
    match state.webhooks.delete(id).await {
        Ok(true) => {
            let mut res = http::Response::new(switchyard_transports::http::empty());
            *res.status_mut() = StatusCode::NO_CONTENT;
            res
        }
        Ok(false) => error(ErrorCode::NotFound, format!("no endpoint {id:?}")),
        Err(e) => store_fail(e, "endpoint"),
    }
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
pub async fn deliveries(state: Arc<AppState>, id: &str, query: Option<&str>) -> Reply {
    let mut limit = DEFAULT_DELIVERIES;
    for (k, v) in form_urlencoded_pairs(query.unwrap_or("")) {
        if k == "limit" {
            match v.parse::<usize>() {
                Ok(n) if (1..=MAX_DELIVERIES).contains(&n) => limit = n,
                _ => {
                    return error(
                        ErrorCode::InvalidParameter,
                        format!("`limit` must be an integer from 1 to {MAX_DELIVERIES}"),
                    );
                }
            }
        }
    }
    match state.webhooks.get(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(ErrorCode::NotFound, format!("no endpoint {id:?}")),
        Err(e) => return store_fail(e, "endpoint"),
    }
    match state.webhooks.deliveries(id, limit).await {
        Ok(list) => json(
            StatusCode::OK,
            &serde_json::json!({"deliveries": list.iter().map(delivery_view).collect::<Vec<_>>()}),
        ),
        Err(e) => store_fail(e, "endpoint"),
    }
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery}/retry`: send it again now.
pub async fn retry(state: Arc<AppState>, id: &str, delivery: &str) -> Reply {
    match state.webhooks.retry(id, delivery).await {
        Ok(()) => json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"id": delivery, "status": "pending"}),
        ),
        Err(e) => store_fail(e, &format!("delivery {delivery:?} on endpoint {id:?}")),
    }
}
