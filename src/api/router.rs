//! The innermost service of the app: maps each request to its handler through the route
//! table ([`super::routes`]), after the checks every request passes: rate limit, CORS
//! preflight, 404 and 405 (with `Allow`), credentials, WebSocket origin. On the way out it
//! counts refusals, lets allowed cross-origin pages read the answer, and takes the body off
//! the answer to a `HEAD`.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Method, Request, Response, header, request::Parts};
use switchyard_protocol::{ChannelName, ErrorCode};
use switchyard_transports::{
    context::{ClientAddr, ConnectionHandle},
    http::Body,
    longpoll, sse, stream, websocket,
};

use super::{
    AppState, assets,
    body::{ApiBody, BodyTimeout},
    channels, cors,
    error::{ApiError, ApiResult},
    guard, head, index,
    jobs::{self, Hold, ReportKind},
    openapi, ops, presence, request_id,
    routes::{self, Op, Resolved},
    webhooks,
};
use crate::{auth::proxies::limit_key, ids::is_job_id};

/// What every handler answers.
pub type Reply = Response<Body>;

/// The router as a tower `Service` over [`ApiBody`] requests; [`super::app`] puts the
/// middleware around it. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Router {
    state: Arc<AppState>,
}

impl Router {
    /// The router over `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl tower::Service<Request<ApiBody>> for Router {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Always ready: limits are per request (rate, body size) or per connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ApiBody>) -> Self::Future {
        let state = Arc::clone(&self.state);
        // Every failure is an answer by now: the service itself never fails.
        Box::pin(async move { Ok(handle(state, req).await) })
    }
}

/// Routes one request; allowed cross-origin callers can read the answer.
async fn handle(state: Arc<AppState>, req: Request<ApiBody>) -> Reply {
    let origin = cors::origin(req.headers()).map(str::to_owned);
    let is_head = req.method() == Method::HEAD;
    let request_id = request_id::of(&req).cloned();
    let mut res = checked(Arc::clone(&state), req)
        .await
        .unwrap_or_else(|e| e.for_request(request_id.as_ref()).into_response());
    state.refusals.count(res.status());
    cors::decorate(&state, origin.as_deref(), &mut res);
    if is_head {
        res = head::without_body(res);
    }
    res
}

async fn checked(state: Arc<AppState>, req: Request<ApiBody>) -> ApiResult {
    let (mut parts, body) = req.into_parts();
    // Absent when the request did not come through the server (tests): no address to
    // limit by, so only keyed requests are rate limited then.
    let ip = parts
        .extensions
        .get::<ConnectionHandle>()
        .map(|h| state.proxies.client_ip(h.peer.ip(), &parts.headers));
    let caller = guard::identify(&state, &parts);
    guard::rate_limit(&state, ip, &caller)?;
    parts.extensions.insert(guard::sender(&caller));
    if let Some(ip) = ip {
        parts.extensions.insert(ClientAddr(limit_key(ip)));
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
        Resolved::WrongMethod(allowed) => return Err(method_not_allowed(&parts.method, &allowed)),
        Resolved::NotFound => {
            return Err(ApiError::not_found(format!(
                "no route for {} {path}",
                parts.method
            )));
        }
    };
    guard::authorize(&state, route, &params, &parts, &caller)?;
    if route.op == Op::WebSocket && !cors::websocket_origin_ok(&state, &parts.headers) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this page's origin may not open WebSockets here (cors.allowed_origins)",
        ));
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
    req: Request<ApiBody>,
) -> ApiResult {
    let consumers = || Arc::clone(&state.consumers);
    let param = |i: usize| params.get(i).map_or("", String::as_str);
    let is_head = req.method() == Method::HEAD;
    Ok(match op {
        Op::Index => index::serve(&state, req.headers()),
        Op::Healthz => ops::healthz(),
        Op::Readyz => ops::readyz(&state).await?,
        Op::Metrics => ops::metrics(&state),
        Op::OpenApi => openapi::serve(req.headers()),
        Op::ClientJs => assets::client_js(req.headers()),
        Op::Demo => assets::demo(&state, req.headers())?,
        // A HEAD cannot switch protocols: it answers what a plain GET (no upgrade) gets.
        Op::WebSocket if is_head => websocket::upgrade(consumers(), head::as_plain_get(req)),
        Op::WebSocket => websocket::upgrade(consumers(), req),
        // HEAD checks what GET checks, then answers at once: nothing is subscribed or held.
        Op::Sse if is_head => sse::head(&state.consumers, &parts(req)),
        Op::Stream if is_head => stream::head(&state.consumers, &parts(req)),
        Op::Poll if is_head => longpoll::head(&state.consumers, &parts(req)),
        Op::Sse => sse::respond(consumers(), &parts(req)).await,
        Op::Stream => stream::respond(consumers(), &parts(req)).await,
        Op::Poll => longpoll::respond(consumers(), &parts(req)).await,
        Op::Publish => channels::publish(Arc::clone(&state), channel(param(0))?, req).await?,
        Op::History => {
            channels::history(Arc::clone(&state), channel(param(0))?, req.uri().query()).await?
        }
        Op::Presence => presence::members(&state, &channel(param(0))?).await?,
        Op::PresenceStats => presence::stats(&state, &channel(param(0))?).await?,
        Op::SubmitJob => jobs::submit(state, req).await?,
        Op::ClaimJob => jobs::claim(state, req).await?,
        Op::GetJob | Op::CancelJob | Op::ReportProgress | Op::ReportComplete | Op::ReportFail => {
            let id = param(0);
            if !is_job_id(id) {
                return Err(ApiError::not_found(format!("no job {id:?}")));
            }
            match op {
                Op::GetJob => {
                    let hold = if is_head { Hold::Never } else { Hold::AsAsked };
                    jobs::get(state, id, req.uri().query(), hold).await?
                }
                Op::CancelJob => jobs::cancel(state, id).await?,
                Op::ReportProgress => jobs::report(state, id, ReportKind::Progress, req).await?,
                Op::ReportComplete => jobs::report(state, id, ReportKind::Complete, req).await?,
                _ => jobs::report(state, id, ReportKind::Fail, req).await?,
            }
        }
        Op::ListWebhooks => webhooks::list(state).await?,
        Op::CreateWebhook => webhooks::create(state, req).await?,
        Op::GetWebhook => webhooks::get(state, param(0)).await?,
        Op::UpdateWebhook => webhooks::update(state, param(0), req).await?,
        Op::DeleteWebhook => webhooks::delete(state, param(0)).await?,
        Op::ListDeliveries => webhooks::deliveries(state, param(0), req.uri().query()).await?,
        Op::RetryDelivery => webhooks::retry(state, param(0), param(1)).await?,
    })
}

/// The head of a request whose body no handler reads (consumer transports).
fn parts(req: Request<ApiBody>) -> Parts {
    req.into_parts().0
}

/// A channel name from its path parameter, which may be percent-encoded (`jobs%2F42`).
fn channel(raw: &str) -> Result<ChannelName, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    ChannelName::new(&decoded).map_err(|e| ApiError::new(ErrorCode::InvalidChannel, e.to_string()))
}

fn method_not_allowed(method: &Method, allowed: &[&Method]) -> ApiError {
    let allow = routes::allow_list(allowed);
    let err = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed here; use {allow}"),
    );
    match HeaderValue::from_str(&allow) {
        Ok(v) => err.with_header(header::ALLOW, v),
        Err(_) => err,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::{
        api::{
            routes::{operations, sample_path},
            testing::{Answer, TestApp},
        },
        hub::Bus,
    };

    #[test]
    fn channel_parameters_decode() {
        assert_eq!(channel("a/b").unwrap().as_str(), "a/b");
        assert_eq!(channel("jobs%2F42").unwrap().as_str(), "jobs/42");
        assert!(channel("").is_err());
        assert!(channel("a%20b").is_err());
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_other_methods_405_with_allow() {
        let app = TestApp::new(|_| {}).await;
        let res = app.call("GET", "/nope", &[], "").await;
        assert_eq!(
            (res.status, res.code().as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
        assert!(
            res.headers.contains_key(request_id::HEADER),
            "errors carry the id too"
        );
        for (method, path, allow) in [
            ("PUT", "/v1/webhooks/ep_1", "GET, HEAD, PATCH, DELETE"),
            ("POST", "/healthz", "GET, HEAD"),
            ("GET", "/v1/jobs", "POST"),
            ("DELETE", "/v1/channels/a/b/events", "GET, HEAD, POST"),
        ] {
            let res = app.call(method, path, &[], "").await;
            assert_eq!(
                res.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(res.code(), "method_not_allowed");
            assert_eq!(res.headers[header::ALLOW], allow, "{method} {path}");
        }
        // A HEAD where only POST is routed: 405, with the error's length and no body.
        let res = app.call("HEAD", "/v1/jobs", &[], "").await;
        assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers[header::ALLOW], "POST");
        assert!(res.body.is_empty());
        let get = app.call("GET", "/v1/jobs", &[], "").await;
        let length: usize = res.headers[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, get.body.len() - "GET".len() + "HEAD".len());
    }

    #[tokio::test]
    async fn preflights_list_head_beside_get() {
        let app = TestApp::new(|c| c.cors.allowed_origins = vec!["https://app.test".into()]).await;
        let preflight = |path: &'static str| {
            app.call(
                "OPTIONS",
                path,
                &[
                    ("origin", "https://app.test"),
                    ("access-control-request-method", "HEAD"),
                ],
                "",
            )
        };
        let res = preflight("/v1/jobs/0123").await;
        assert_eq!(res.status, StatusCode::NO_CONTENT);
        assert_eq!(
            res.headers[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, HEAD, DELETE"
        );
        let res = preflight("/v1/jobs").await;
        assert_eq!(res.headers[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert_eq!(preflight("/nope").await.status, StatusCode::NOT_FOUND);
    }

    /// Headers that must be the same for a GET and its HEAD (not the length, which a HEAD
    /// sends only when it knows it, nor the per-request id).
    fn comparable(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<_> = h
            .iter()
            .filter(|(k, _)| *k != header::CONTENT_LENGTH && *k != request_id::HEADER)
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn head_answers_what_get_answers_on_every_get_route() {
        let app = TestApp::new(|c| c.webhooks.allow_private_networks = false).await;
        let job = app.call("POST", "/v1/jobs", &[], "{}").await.json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let hook = r#"{"url": "http://93.184.216.34/hook", "channels": ["orders"]}"#;
        let created = app.call("POST", "/v1/webhooks", &[], hook).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let endpoint = created.json()["id"].as_str().unwrap().to_owned();
        let mut checked = 0;
        for (method, route) in operations().filter(|(m, _)| **m == Method::HEAD) {
            let path = sample_path(route, "orders", &job, &endpoint);
            let streams = matches!(route.op, Op::Sse | Op::Stream);
            let get = app.open("GET", &path, &[], "").await;
            let (get_status, get_headers) = (get.status(), get.headers().clone());
            // A stream's body never ends: its head is all there is to compare.
            let get_body = if streams {
                None
            } else {
                Some(Answer::read(get).await.body)
            };
            let head = tokio::time::timeout(
                Duration::from_secs(5),
                app.call(method.as_str(), &path, &[], ""),
            )
            .await
            .unwrap_or_else(|_| panic!("HEAD {path} did not answer at once"));
            assert_eq!(head.status, get_status, "HEAD {path}");
            assert_eq!(
                comparable(&head.headers),
                comparable(&get_headers),
                "HEAD {path}"
            );
            assert!(head.body.is_empty(), "HEAD {path} has a body");
            let length = head
                .headers
                .get(header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
            match (route.op, get_body) {
                // Its length depends on what arrives during the hold that HEAD skips.
                (Op::Sse | Op::Stream | Op::Poll, _) => assert_eq!(length, None, "HEAD {path}"),
                // Counters may move between the two requests.
                (Op::Metrics, _) => assert!(length.is_some(), "HEAD {path}"),
                (_, Some(body)) => assert_eq!(length, Some(body.len()), "HEAD {path}"),
                (_, None) => unreachable!(),
            }
            checked += 1;
        }
        assert_eq!(
            checked,
            crate::api::routes::ROUTES
                .iter()
                .filter(|r| r.method == Method::GET)
                .count()
        );
    }

    #[tokio::test]
    async fn head_on_consumer_routes_checks_like_get_and_subscribes_nothing() {
        let app = TestApp::new(|_| {}).await;
        // Without `timeout` a long-poll GET holds 30 s; its HEAD answers at once.
        for path in [
            "/v1/sse?channel=fresh",
            "/v1/stream?channel=fresh",
            "/v1/poll?channel=fresh",
        ] {
            let res = tokio::time::timeout(Duration::from_secs(5), app.call("HEAD", path, &[], ""))
                .await
                .unwrap_or_else(|_| panic!("HEAD {path} held"));
            assert_eq!(res.status, StatusCode::OK, "{path}");
        }
        assert_eq!(app.state.engine.channel_count(), 0, "a HEAD subscribed");
        app.call("GET", "/v1/poll?channel=fresh&timeout=0", &[], "")
            .await;
        assert_eq!(app.state.engine.channel_count(), 1, "a GET subscribes");
        for (path, status, code) in [
            ("/v1/sse", 400, "invalid_request"),
            ("/v1/stream?channel=a%20b", 400, "invalid_channel"),
            ("/v1/poll?channel=a&timeout=99", 400, "invalid_parameter"),
            ("/v1/poll?cursor=nope", 400, "invalid_cursor"),
            ("/v1/jobs/0123?wait=99", 404, "not_found"),
        ] {
            let get = app.call("GET", path, &[], "").await;
            let head = app.call("HEAD", path, &[], "").await;
            assert_eq!(
                (get.status.as_u16(), get.code().as_str()),
                (status, code),
                "GET {path}"
            );
            assert_eq!(head.status, get.status, "HEAD {path}");
            assert_eq!(
                head.headers[header::CONTENT_LENGTH],
                get.body.len().to_string().as_str()
            );
        }
        let keyed = TestApp::new(|c| c.auth.api_keys = vec!["key-0123456789abcdef".into()]).await;
        for path in ["/v1/sse?channel=a", "/v1/poll?channel=a", "/metrics"] {
            let head = keyed.call("HEAD", path, &[], "").await;
            assert_eq!(head.status, StatusCode::UNAUTHORIZED, "HEAD {path}");
            assert!(head.headers.contains_key(header::WWW_AUTHENTICATE));
            assert!(head.body.is_empty());
        }
    }

    #[tokio::test]
    async fn head_of_a_job_checks_wait_but_does_not_hold() {
        let app = TestApp::new(|_| {}).await;
        let job = app.call("POST", "/v1/jobs", &[], "{}").await.json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/v1/jobs/{job}?wait=60&status=queued");
        let head = tokio::time::timeout(Duration::from_secs(5), app.call("HEAD", &path, &[], ""))
            .await
            .expect("HEAD with ?wait= answers at once");
        assert_eq!(head.status, StatusCode::OK);
        let bad = app
            .call("HEAD", &format!("/v1/jobs/{job}?wait=61"), &[], "")
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn websocket_upgrades_need_a_connection_that_can_switch() {
        let app = TestApp::new(|_| {}).await;
        let upgrade = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        // No socket, so no upgrade to hand over: an error, not a 101 nobody follows.
        let res = app.call("GET", "/v1/ws", &upgrade, "").await;
        assert_eq!(
            (res.status, res.code().as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        let head = app.call("HEAD", "/v1/ws", &upgrade, "").await;
        assert_eq!(head.status, StatusCode::BAD_REQUEST);
        let plain = app.call("GET", "/v1/ws", &[], "").await;
        assert_eq!(plain.status, StatusCode::BAD_REQUEST);
    }
}
