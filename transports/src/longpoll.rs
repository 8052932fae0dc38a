//! HTTP long-poll, `GET /v1/poll?channel=..&cursor=..&timeout=S&limit=N`: answers at once
//! when events exist after the cursor, otherwise holds up to `timeout` seconds and answers
//! an empty list with the same cursor. Without a cursor it starts from now.
//!
//! Response: `{"events": [envelope, ...], "cursor": "<combined>", "reset": bool}`, plus
//! `"resets": [{"channel", "offset"}]` naming each channel whose history no longer reached
//! the cursor (and the oldest offset kept there) when `reset` is true.
//!
//! A `HEAD` is checked like a `GET` (credential, parameters) and answered at once, without
//! holding: its length is unknown, so it has no `Content-Length`.

use std::{fmt::Write, sync::Arc};

use bytes::{BufMut, BytesMut};
use http::{Response, StatusCode, request::Parts};
use switchyard_protocol::ErrorCode;

use crate::{
    Context, access,
    context::ClientAddr,
    http::{Body, empty, error, json_bytes},
    hub::{Event, Received},
    metrics::Transport,
    params::{ConsumerParams, ParamError},
    session::Session,
};

/// A request that passed the checks.
struct Admitted {
    grant: access::Grant,
    params: ConsumerParams,
    timeout: std::time::Duration,
    limit: usize,
}

/// The checks before anything is subscribed: credential, parameters, shutdown.
fn admit(ctx: &Context, parts: &Parts) -> Result<Admitted, ParamError> {
    let cfg = &ctx.config;
    let grant = access::require_or_anonymous(ctx, &parts.headers, parts.uri.query())?;
    let params = ConsumerParams::parse(parts, cfg.max_channels_per_request, false)?;
    access::check_subscribe(ctx, &grant, &params.channels)?;
    let timeout = params.seconds("timeout", cfg.poll_default_timeout, cfg.poll_max_timeout)?;
    let limit = params.count("limit", cfg.poll_default_limit, cfg.poll_max_limit)?;
    if ctx.shutdown.is_cancelled() {
        return Err(ParamError::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        ));
    }
    Ok(Admitted {
        grant,
        params,
        timeout,
        limit,
    })
}

/// Answers a `HEAD`: the `GET`'s refusal, or its status and headers at once, without a
/// body (nothing is subscribed or held).
pub fn head(ctx: &Context, parts: &Parts) -> Response<Body> {
    match admit(ctx, parts) {
        Ok(_) => answer_head(Response::new(empty())),
        Err(e) => error(e.code, e.message),
    }
}

/// The headers of a long-poll answer.
fn answer_head(mut res: Response<Body>) -> Response<Body> {
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    res
}

/// Serves a long-poll request.
pub async fn respond(ctx: Arc<Context>, parts: &Parts) -> Response<Body> {
    let Admitted {
        grant,
        params,
        timeout,
        limit,
    } = match admit(&ctx, parts) {
        Ok(admitted) => admitted,
        Err(e) => return error(e.code, e.message),
    };
    let _connection = ctx.metrics.connection(Transport::LongPoll);
    // A long-poll comes and goes: it is not a presence member.
    let mut session = Session::new(&ctx, None).without_presence();
    session.count_against(&ctx, parts.extensions.get::<ClientAddr>().copied());
    let mut events: Vec<Arc<Event>> = Vec::new();
    // Channels whose history no longer reached the cursor, with the oldest offset kept.
    let mut resets: Vec<(String, u64)> = Vec::new();
    for channel in &params.channels {
        let opened = match session
            .open(&ctx, channel, params.start_for(channel), &grant)
            .await
        {
            Ok(o) => o,
            Err(e) => return error(e.code, e.message),
        };
        if let Some(oldest) = opened.reset {
            resets.push((channel.to_string(), oldest));
        }
        for event in &opened.replay {
            if events.len() < limit && session.accept(event) {
                events.push(Arc::clone(event));
            }
        }
    }

    let reset = !resets.is_empty();
    if events.is_empty() && !reset {
        tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => {}
            () = tokio::time::sleep(timeout) => {}
            // A hold ends when the token does; the next poll is refused with token_expired.
            () = access::expiry(&grant) => {}
            received = session.inbox.recv() => {
                let mut next = match received {
                    Received::Event(e) => Some(e),
                    // Only direct connections (WebSocket) get flushes.
                    Received::Overflowed | Received::Interrupted | Received::Flush => None,
                };
                while let Some(event) = next.take() {
                    if session.accept(&event) {
                        ctx.metrics.observe_latency(event.published_at().elapsed());
                        events.push(event);
                    }
                    if events.len() < limit {
                        next = session.inbox.try_recv();
                    }
                }
            }
        }
    }
    ctx.metrics
        .delivered(Transport::LongPoll, events.len() as u64);

    let cursor = session.cursor();
    let size: usize = events.iter().map(|e| e.envelope().len() + 1).sum();
    let mut body = BytesMut::with_capacity(size + cursor.len() + 48);
    body.put_slice(b"{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(event.envelope());
    }
    let mut tail = String::with_capacity(cursor.len() + 32);
    let _ = write!(tail, "],\"cursor\":\"{cursor}\",\"reset\":{reset}");
    if reset {
        let list: Vec<_> = resets
            .iter()
            .map(|(channel, offset)| serde_json::json!({"channel": channel, "offset": offset}))
            .collect();
        let _ = write!(tail, ",\"resets\":{}", serde_json::Value::from(list));
    }
    tail.push('}');
    body.put_slice(tail.as_bytes());
    answer_head(json_bytes(StatusCode::OK, body.freeze()))
}

#[cfg(test)]
mod tests;
