//! Maps each request to its handler, with 404 and 405 (with `Allow`) for the rest.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use switchyard_protocol::{ChannelName, ErrorCode};
use switchyard_transports::{http::Body, http::error, longpoll, sse, stream, websocket};

use super::{
    AppState, channels,
    jobs::{self, ReportKind},
    ops, webhooks,
};
use crate::jobs::is_job_id;

/// What every handler returns.
pub type Reply = Response<Body>;

const CHANNELS_PREFIX: &str = "/v1/channels/";
const JOBS_PREFIX: &str = "/v1/jobs/";
const WEBHOOKS_PREFIX: &str = "/v1/webhooks/";
const EVENTS_SUFFIX: &str = "/events";

/// Routes one request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let get = method == Method::GET;
    match path.as_str() {
        "/healthz" if get => ops::healthz(),
        "/readyz" if get => ops::readyz(&state).await,
        "/metrics" if get => ops::metrics(&state),
        "/v1/ws" if get => websocket::upgrade(Arc::clone(&state.consumers), req),
        "/v1/sse" if get => sse::respond(Arc::clone(&state.consumers), &req.into_parts().0).await,
        "/v1/stream" if get => {
            stream::respond(Arc::clone(&state.consumers), &req.into_parts().0).await
        }
        "/v1/poll" if get => {
            longpoll::respond(Arc::clone(&state.consumers), &req.into_parts().0).await
        }
        "/healthz" | "/readyz" | "/metrics" | "/v1/ws" | "/v1/sse" | "/v1/stream" | "/v1/poll" => {
            method_not_allowed(&method, "GET")
        }
        "/v1/jobs" if method == Method::POST => jobs::submit(state, req).await,
        "/v1/jobs/claim" if method == Method::POST => jobs::claim(state, req).await,
        "/v1/jobs" | "/v1/jobs/claim" => method_not_allowed(&method, "POST"),
        p if p.starts_with(JOBS_PREFIX) => job_route(state, req, &method, p).await,
        "/v1/webhooks" => match method {
            Method::GET => webhooks::list(state).await,
            Method::POST => webhooks::create(state, req).await,
            _ => method_not_allowed(&method, "GET, POST"),
        },
        p if p.starts_with(WEBHOOKS_PREFIX) => webhook_route(state, req, &method, p).await,
        p => match channel_events(p) {
            Some(Err(reply)) => reply,
            Some(Ok(channel)) => match method {
                Method::POST => channels::publish(state, channel, req).await,
                Method::GET => channels::history(state, channel, req.uri().query()).await,
                _ => method_not_allowed(&method, "GET, POST"),
            },
            None => error(ErrorCode::NotFound, format!("no route for {method} {p}")),
        },
    }
}

/// Routes `/v1/jobs/{id}` and `/v1/jobs/{id}/{progress,complete,fail}`.
async fn job_route(
    state: Arc<AppState>,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
) -> Reply {
    let rest = &path[JOBS_PREFIX.len()..];
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    if !is_job_id(id) {
        return error(ErrorCode::NotFound, format!("no job {id:?}"));
    }
    let kind = match action {
        "" => {
            return match *method {
                Method::GET => jobs::get(state, id, req.uri().query()).await,
                Method::DELETE => jobs::cancel(state, id).await,
                _ => method_not_allowed(method, "GET, DELETE"),
            };
        }
        "progress" => ReportKind::Progress,
        "complete" => ReportKind::Complete,
        "fail" => ReportKind::Fail,
        _ => return error(ErrorCode::NotFound, format!("no route for {method} {path}")),
    };
    if *method != Method::POST {
        return method_not_allowed(method, "POST");
    }
    jobs::report(state, id, kind, req).await
}

/// Routes `/v1/webhooks/{id}`, `.../deliveries` and `.../deliveries/{delivery}/retry`.
async fn webhook_route(
    state: Arc<AppState>,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
) -> Reply {
    let parts: Vec<&str> = path[WEBHOOKS_PREFIX.len()..].split('/').collect();
    match (parts.as_slice(), method) {
        ([id], &Method::GET) => webhooks::get(state, id).await,
        ([id], &Method::PATCH) => webhooks::update(state, id, req).await,
        ([id], &Method::DELETE) => webhooks::delete(state, id).await,
        ([_], _) => method_not_allowed(method, "GET, PATCH, DELETE"),
        ([id, "deliveries"], &Method::GET) => {
            webhooks::deliveries(state, id, req.uri().query()).await
        }
        ([_, "deliveries"], _) => method_not_allowed(method, "GET"),
        ([id, "deliveries", delivery, "retry"], &Method::POST) => {
            webhooks::retry(state, id, delivery).await
        }
        ([_, "deliveries", _, "retry"], _) => method_not_allowed(method, "POST"),
        _ => error(ErrorCode::NotFound, format!("no route for {method} {path}")),
    }
}

/// Parses `/v1/channels/{channel}/events`; the name may be percent-encoded (`jobs%2F42`).
fn channel_events(path: &str) -> Option<Result<ChannelName, Reply>> {
    let raw = path
        .strip_prefix(CHANNELS_PREFIX)?
        .strip_suffix(EVENTS_SUFFIX)?;
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    Some(ChannelName::new(&decoded).map_err(|e| error(ErrorCode::InvalidChannel, e.to_string())))
}

fn method_not_allowed(method: &Method, allow: &'static str) -> Reply {
    let mut res = error(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed here; use {allow}"),
    );
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_paths_decode() {
        assert_eq!(
            channel_events("/v1/channels/a/b/events")
                .unwrap()
                .unwrap()
                .as_str(),
            "a/b"
        );
        assert_eq!(
            channel_events("/v1/channels/jobs%2F42/events")
                .unwrap()
                .unwrap()
                .as_str(),
            "jobs/42"
        );
        assert!(channel_events("/v1/channels//events").unwrap().is_err());
        assert!(
            channel_events("/v1/channels/a%20b/events")
                .unwrap()
                .is_err()
        );
        assert!(channel_events("/v1/channels/a").is_none());
    }
}
