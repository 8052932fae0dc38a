//! Maps each request to its handler through the route table ([`super::routes`]), after the
//! checks every request passes: rate limit, CORS preflight, credentials, WebSocket origin;
//! 404 and 405 (with `Allow`) for the rest.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use switchyard_protocol::{ChannelName, ErrorCode};
use switchyard_transports::{
    context::ConnectionHandle, http::Body, http::error, longpoll, sse, stream, websocket,
};

use super::{
    AppState, assets,
    body::BodyTimeout,
    channels, cors, guard,
    jobs::{self, ReportKind},
    openapi, ops,
    routes::{self, Op, Resolved},
    webhooks,
};
use crate::ids::is_job_id;

/// What every handler returns.
pub type Reply = Response<Body>;

/// Routes one request; allowed cross-origin callers can read the answer.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Reply {
    let origin = cors::origin(req.headers()).map(str::to_owned);
    let mut res = checked(Arc::clone(&state), req).await;
    state.refusals.count(res.status());
    cors::decorate(&state, origin.as_deref(), &mut res);
    res
}

async fn checked(state: Arc<AppState>, req: Request<Incoming>) -> Reply {
    let (mut parts, body) = req.into_parts();
    let ip = parts
        .extensions
        .get::<ConnectionHandle>()
        .map(|h| state.proxies.client_ip(h.peer.ip(), &parts.headers));
    let caller = guard::identify(&state, &parts);
    if let Err(reply) = guard::rate_limit(&state, ip, &caller) {
        return reply;
    }
    if parts.method == Method::OPTIONS
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return cors::preflight(&state, &parts);
    }
    let path = parts.uri.path().to_owned();
    let (route, params) = match routes::resolve(&parts.method, &path) {
        Resolved::Found(route, params) => (route, params),
        Resolved::WrongMethod(allowed) => return method_not_allowed(&parts.method, &allowed),
        Resolved::NotFound => {
            return error(
                ErrorCode::NotFound,
                format!("no route for {} {path}", parts.method),
            );
        }
    };
    if let Err(reply) = guard::authorize(&state, route, &params, &parts, &caller) {
        return reply;
    }
    if route.op == Op::WebSocket && !cors::websocket_origin_ok(&state, &parts.headers) {
        return error(
            ErrorCode::Forbidden,
            "this page's origin may not open WebSockets here (cors.allowed_origins)",
        );
    }
    parts
        .extensions
        .insert(BodyTimeout(std::time::Duration::from_secs(
            state.config.limits.body_read_timeout_secs,
        )));
    let params: Vec<String> = params.into_iter().map(str::to_owned).collect();
    dispatch(state, route.op, &params, Request::from_parts(parts, body)).await
}

async fn dispatch(
    state: Arc<AppState>,
    op: Op,
    params: &[String],
    req: Request<Incoming>,
) -> Reply {
    let consumers = || Arc::clone(&state.consumers);
    let param = |i: usize| params.get(i).map_or("", String::as_str);
    match op {
        Op::Healthz => ops::healthz(),
        Op::Readyz => ops::readyz(&state).await,
        Op::Metrics => ops::metrics(&state),
        Op::OpenApi => openapi::serve(),
        Op::ClientJs => assets::client_js(),
        Op::Demo => assets::demo(&state),
        Op::WebSocket => websocket::upgrade(consumers(), req),
        Op::Sse => sse::respond(consumers(), &req.into_parts().0).await,
        Op::Stream => stream::respond(consumers(), &req.into_parts().0).await,
        Op::Poll => longpoll::respond(consumers(), &req.into_parts().0).await,
        Op::Publish | Op::History => match channel(param(0)) {
            Err(reply) => reply,
            Ok(channel) if op == Op::Publish => channels::publish(state, channel, req).await,
            Ok(channel) => channels::history(state, channel, req.uri().query()).await,
        },
        Op::SubmitJob => jobs::submit(state, req).await,
        Op::ClaimJob => jobs::claim(state, req).await,
        Op::GetJob | Op::CancelJob | Op::ReportProgress | Op::ReportComplete | Op::ReportFail => {
            let id = param(0);
            if !is_job_id(id) {
                return error(ErrorCode::NotFound, format!("no job {id:?}"));
            }
            match op {
                Op::GetJob => jobs::get(state, id, req.uri().query()).await,
                Op::CancelJob => jobs::cancel(state, id).await,
                Op::ReportProgress => jobs::report(state, id, ReportKind::Progress, req).await,
                Op::ReportComplete => jobs::report(state, id, ReportKind::Complete, req).await,
                _ => jobs::report(state, id, ReportKind::Fail, req).await,
            }
        }
        Op::ListWebhooks => webhooks::list(state).await,
        Op::CreateWebhook => webhooks::create(state, req).await,
        Op::GetWebhook => webhooks::get(state, param(0)).await,
        Op::UpdateWebhook => webhooks::update(state, param(0), req).await,
        Op::DeleteWebhook => webhooks::delete(state, param(0)).await,
        Op::ListDeliveries => webhooks::deliveries(state, param(0), req.uri().query()).await,
        Op::RetryDelivery => webhooks::retry(state, param(0), param(1)).await,
    }
}

/// A channel name from its path parameter, which may be percent-encoded (`jobs%2F42`).
#[allow(clippy::result_large_err)]
fn channel(raw: &str) -> Result<ChannelName, Reply> {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    ChannelName::new(&decoded).map_err(|e| error(ErrorCode::InvalidChannel, e.to_string()))
}

fn method_not_allowed(method: &Method, allowed: &[&Method]) -> Reply {
    let allow = allowed
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut res = error(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed here; use {allow}"),
    );
    if let Ok(v) = HeaderValue::from_str(&allow) {
        res.headers_mut().insert(header::ALLOW, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_parameters_decode() {
        assert_eq!(channel("a/b").unwrap().as_str(), "a/b");
        assert_eq!(channel("jobs%2F42").unwrap().as_str(), "jobs/42");
        assert!(channel("").is_err());
        assert!(channel("a%20b").is_err());
    }
}
