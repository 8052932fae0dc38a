//! `POST /v1/channels/{channel}/events` (publish) and `GET` of the same path (history);
//! errors are [`ApiError`]s from the body, the headers and the hub.

use std::{borrow::Cow, sync::Arc};

use bytes::{BufMut, BytesMut};
use http::{HeaderValue, Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchyard_protocol::{ChannelName, ErrorCode, envelope::is_valid_event_type};
use switchyard_transports::{
    http::{json, json_bytes},
    params::form_urlencoded_pairs,
};

use super::{
    AppState,
    body::{ApiBody, parse_object, read_json},
    error::{ApiError, ApiResult},
    headers::idempotency_key,
};
use crate::hub::{Bus, Publish};

/// Default and maximum events in one history page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(rename = "type", default, borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Publishes one event.
///
/// # Errors
/// A bad `Idempotency-Key`, body or event `type`; a key reused for another event (409); a
/// channel under `jobs/` (403); the hub's refusal (503).
pub async fn publish(
    state: Arc<AppState>,
    channel: ChannelName,
    req: Request<ApiBody>,
) -> ApiResult {
    let key = idempotency_key(req.headers())?.map(str::to_owned);
    let (_, body) = read_json(req, state.config.limits.max_event_bytes).await?;
    let body: PublishBody<'_> = parse_object(&body)?;
    let event_type = body.event_type.as_deref().unwrap_or("message");
    if !is_valid_event_type(event_type) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "`type` must be 1-100 visible ASCII characters without spaces",
        ));
    }
    let published = state
        .engine
        .publish(Publish {
            channel: &channel,
            event_type,
            data: body.data,
            idempotency_key: key.as_deref(),
        })
        .await?;
    let mut res = json(
        StatusCode::CREATED,
        &serde_json::json!({
            "channel": channel,
            "offset": published.offset,
            "id": published.id,
            "cursor": published.cursor,
        }),
    );
    if published.replayed {
        res.headers_mut()
            .insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

/// Reads a page of history: `?after=N&limit=M`.
///
/// # Errors
/// A bad `after` or `limit`; the hub's refusal (503).
pub async fn history(state: Arc<AppState>, channel: ChannelName, query: Option<&str>) -> ApiResult {
    let mut after = None;
    let mut limit = DEFAULT_PAGE;
    for (k, v) in form_urlencoded_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "after" => match v.parse::<u64>() {
                Ok(n) => after = Some(n),
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameter,
                        "`after` must be an offset (a whole number)",
                    ));
                }
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("`limit` must be an integer from 1 to {MAX_PAGE}"),
                    ));
                }
            },
            _ => {}
        }
    }
    let page = state.engine.history(&channel, after, limit).await?;
    let mut out = BytesMut::with_capacity(
        64 + page
            .events
            .iter()
            .map(|e| e.envelope().len() + 1)
            .sum::<usize>(),
    );
    out.put_slice(b"{\"events\":[");
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(e.envelope());
    }
    out.put_slice(format!("],\"next\":{},\"reset\":{}}}", page.next, page.reset).as_bytes());
    Ok(json_bytes(StatusCode::OK, out.freeze()))
}
