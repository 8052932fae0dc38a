//! `POST /v1/channels/{channel}/events` (publish) and `GET` of the same path (history).

use std::{borrow::Cow, sync::Arc};

use bytes::{BufMut, BytesMut};
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchyard_protocol::{ChannelName, ErrorCode, envelope::is_valid_event_type};
use switchyard_transports::{
    http::{error, json, json_bytes},
    params::form_urlencoded_pairs,
};

use super::{
    AppState,
    body::{parse_object, read_json},
    headers::idempotency_key,
    router::Reply,
};
use crate::hub::{Bus, Publish, PublishError};
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
pub async fn publish(state: Arc<AppState>, channel: ChannelName, req: Request<Incoming>) -> Reply {
    let key = match idempotency_key(req.headers()) {
        Ok(key) => key.map(str::to_owned),
        Err(e) => return error(ErrorCode::InvalidParameter, e.to_string()),
    };
    let (_, body) = match read_json(req, state.config.limits.max_event_bytes).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let body: PublishBody<'_> = match parse_object(&body) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let event_type = body.event_type.as_deref().unwrap_or("message");
    if !is_valid_event_type(event_type) {
        return error(
            ErrorCode::InvalidParameter,
            "`type` must be 1-100 visible ASCII characters without spaces",
        );
    }
    let published = state
        .engine
        .publish(Publish {
            channel: &channel,
            event_type,
            data: body.data,
            idempotency_key: key.as_deref(),
        })
        .await;
    match published {
        Ok(p) => {
            let mut res = json(
                StatusCode::CREATED,
                &serde_json::json!({
                    "channel": channel,
                    "offset": p.offset,
                    "id": p.id,
                    "cursor": p.cursor,
                }),
            );
            if p.replayed {
                res.headers_mut()
                    .insert("idempotency-replayed", HeaderValue::from_static("true"));
            }
            res
        }
        Err(e @ PublishError::IdempotencyConflict) => error(ErrorCode::Conflict, e.to_string()),
        Err(e @ PublishError::Reserved) => error(ErrorCode::Forbidden, e.to_string()),
        Err(PublishError::Hub(e)) => error(ErrorCode::Unavailable, e.to_string()),
    }
}

/// Reads a page of history: `?after=N&limit=M`.
pub async fn history(state: Arc<AppState>, channel: ChannelName, query: Option<&str>) -> Reply {
    let mut after = None;
    let mut limit = DEFAULT_PAGE;
    for (k, v) in form_urlencoded_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "after" => match v.parse::<u64>() {
                Ok(n) => after = Some(n),
                Err(_) => {
                    return error(
                        ErrorCode::InvalidParameter,
                        "`after` must be an offset (a whole number)",
                    );
                }
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => {
                    return error(
                        ErrorCode::InvalidParameter,
                        format!("`limit` must be an integer from 1 to {MAX_PAGE}"),
                    );
                }
            },
            _ => {}
        }
    }
    let page = match state.engine.history(&channel, after, limit).await {
        Ok(p) => p,
        Err(e) => return error(ErrorCode::Unavailable, e.to_string()),
    };
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
    json_bytes(StatusCode::OK, out.freeze())
}
