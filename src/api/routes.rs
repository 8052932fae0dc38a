//! The route table: every path template, its method, what it does and who may call it.
//! The router dispatches from it, and a test holds `/openapi.json` to exactly this list
//! (with the `HEAD` that every `GET` route also answers).
//!
//! Matching is our own, not a router crate's: `{channel}` spans `/`-separated segments
//! (`/v1/channels/a/b/c/events`) between fixed segments on both sides, which matchit-style
//! routers express only as a catch-all at the end of a path, so `/events` after it would have
//! to be split off by hand anyway.

use http::Method;

use crate::auth::Scope;

/// What a route does; the router maps each to its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `GET /`
    Index,
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `GET /openapi.json`
    OpenApi,
    /// `GET /v1/client.js`
    ClientJs,
    /// `GET /demo`
    Demo,
    /// `GET /v1/ws`
    WebSocket,
    /// `GET /v1/sse`
    Sse,
    /// `GET /v1/stream`
    Stream,
    /// `GET /v1/poll`
    Poll,
    /// `POST /v1/channels/{channel}/events`
    Publish,
    /// `GET /v1/channels/{channel}/events`
    History,
    /// `GET /v1/channels/{channel}/presence`
    Presence,
    /// `GET /v1/channels/{channel}/presence/stats`
    PresenceStats,
    /// `POST /v1/jobs`
    SubmitJob,
    /// `POST /v1/jobs/claim`
    ClaimJob,
    /// `GET /v1/jobs/{id}`
    GetJob,
    /// `DELETE /v1/jobs/{id}`
    CancelJob,
    /// `POST /v1/jobs/{id}/progress`
    ReportProgress,
    /// `POST /v1/jobs/{id}/complete`
    ReportComplete,
    /// `POST /v1/jobs/{id}/fail`
    ReportFail,
    /// `GET /v1/webhooks`
    ListWebhooks,
    /// `POST /v1/webhooks`
    CreateWebhook,
    /// `GET /v1/webhooks/{id}`
    GetWebhook,
    /// `PATCH /v1/webhooks/{id}`
    UpdateWebhook,
    /// `DELETE /v1/webhooks/{id}`
    DeleteWebhook,
    /// `GET /v1/webhooks/{id}/deliveries`
    ListDeliveries,
    /// `POST /v1/webhooks/{id}/deliveries/{delivery}/retry`
    RetryDelivery,
}

/// Who may call a route when API keys are configured (open mode lets everyone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the index, probes, the API description, the browser client and the demo
    /// page.
    Public,
    /// An API key with this scope (`admin` has every scope).
    Key(Scope),
    /// A consumer credential, checked by the transport itself: a token for the channels
    /// asked for, or an API key with `subscribe`.
    Consumer,
    /// An API key with `jobs`, or a token that allows the job's channel `jobs/{id}`.
    JobReader,
    /// An API key with `subscribe`, or a consumer token that allows the `{channel}`.
    ChannelReader,
}

/// One route: `method path` does `op` for callers allowed by `access`.
#[derive(Clone, Debug)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path template; `{name}` is one segment, except `{channel}`, which may span
    /// several (`/` separates a channel name's segments) and may be percent-encoded.
    pub path: &'static str,
    /// What it does.
    pub op: Op,
    /// Who may call it.
    pub access: Access,
}

const fn route(method: Method, path: &'static str, op: Op, access: Access) -> Route {
    Route {
        method,
        path,
        op,
        access,
    }
}

/// Every route. Where two templates match one path, the earlier wins, so literal
/// segments (`/v1/jobs/claim`) come before parameters (`/v1/jobs/{id}`).
pub static ROUTES: &[Route] = &[
    route(Method::GET, "/", Op::Index, Access::Public),
    route(Method::GET, "/healthz", Op::Healthz, Access::Public),
    route(Method::GET, "/readyz", Op::Readyz, Access::Public),
    route(
        Method::GET,
        "/metrics",
        Op::Metrics,
        Access::Key(Scope::Admin),
    ),
    route(Method::GET, "/openapi.json", Op::OpenApi, Access::Public),
    route(Method::GET, "/v1/client.js", Op::ClientJs, Access::Public),
    route(Method::GET, "/demo", Op::Demo, Access::Public),
    route(Method::GET, "/v1/ws", Op::WebSocket, Access::Consumer),
    route(Method::GET, "/v1/sse", Op::Sse, Access::Consumer),
    route(Method::GET, "/v1/stream", Op::Stream, Access::Consumer),
    route(Method::GET, "/v1/poll", Op::Poll, Access::Consumer),
    route(
        Method::GET,
        "/v1/channels/{channel}/events",
        Op::History,
        Access::Key(Scope::Subscribe),
    ),
    route(
        Method::POST,
        "/v1/channels/{channel}/events",
        Op::Publish,
        Access::Key(Scope::Publish),
    ),
    route(
        Method::GET,
        "/v1/channels/{channel}/presence",
        Op::Presence,
        Access::ChannelReader,
    ),
    route(
        Method::GET,
        "/v1/channels/{channel}/presence/stats",
        Op::PresenceStats,
        Access::ChannelReader,
    ),
    route(
        Method::POST,
        "/v1/jobs",
        Op::SubmitJob,
        Access::Key(Scope::Jobs),
    ),
    route(
        Method::POST,
        "/v1/jobs/claim",
        Op::ClaimJob,
        Access::Key(Scope::Work),
    ),
    route(Method::GET, "/v1/jobs/{id}", Op::GetJob, Access::JobReader),
    route(
        Method::DELETE,
        "/v1/jobs/{id}",
        Op::CancelJob,
        Access::Key(Scope::Jobs),
    ),
    route(
        Method::POST,
        "/v1/jobs/{id}/progress",
        Op::ReportProgress,
        Access::Key(Scope::Work),
    ),
    route(
        Method::POST,
        "/v1/jobs/{id}/complete",
        Op::ReportComplete,
        Access::Key(Scope::Work),
    ),
    route(
        Method::POST,
        "/v1/jobs/{id}/fail",
        Op::ReportFail,
        Access::Key(Scope::Work),
    ),
    route(
        Method::GET,
        "/v1/webhooks",
        Op::ListWebhooks,
        Access::Key(Scope::Admin),
    ),
    route(
        Method::POST,
        "/v1/webhooks",
        Op::CreateWebhook,
        Access::Key(Scope::Admin),
    ),
    route(
        Method::GET,
        "/v1/webhooks/{id}",
        Op::GetWebhook,
        Access::Key(Scope::Admin),
    ),
    route(
        Method::PATCH,
        "/v1/webhooks/{id}",
        Op::UpdateWebhook,
        Access::Key(Scope::Admin),
    ),
    route(
        Method::DELETE,
        "/v1/webhooks/{id}",
        Op::DeleteWebhook,
        Access::Key(Scope::Admin),
    ),
    route(
        Method::GET,
        "/v1/webhooks/{id}/deliveries",
        Op::ListDeliveries,
        Access::Key(Scope::Admin),
    ),
    route(
        Method::POST,
        "/v1/webhooks/{id}/deliveries/{delivery}/retry",
        Op::RetryDelivery,
        Access::Key(Scope::Admin),
    ),
];

/// The path parameters of a match, in template order (raw: not percent-decoded).
pub type Params<'a> = Vec<&'a str>;

/// What a path resolves to.
pub enum Resolved<'a> {
    /// A route for this method, with its parameters.
    Found(&'static Route, Params<'a>),
    /// The path exists, but not with this method; the methods it has.
    WrongMethod(Vec<&'static Method>),
    /// No template matches.
    NotFound,
}

/// Finds the route for `method path`: the first template that matches the path decides
/// which routes are candidates. `HEAD` finds the path's `GET` route.
pub fn resolve<'a>(method: &Method, path: &'a str) -> Resolved<'a> {
    let Some((template, _)) = ROUTES
        .iter()
        .find_map(|r| match_path(r.path, path).map(|p| (r.path, p)))
    else {
        return Resolved::NotFound;
    };
    let same_path = ROUTES.iter().filter(|r| r.path == template);
    let mut allowed = Vec::new();
    for r in same_path {
        if r.method == *method || (*method == Method::HEAD && r.method == Method::GET) {
            let params = match_path(template, path).expect("matched above");
            return Resolved::Found(r, params);
        }
        allowed.push(&r.method);
    }
    Resolved::WrongMethod(allowed)
}

/// The methods of the routes whose template matches `path` (for CORS preflights).
pub fn methods_for(path: &str) -> Vec<&'static Method> {
    match resolve(&Method::OPTIONS, path) {
        Resolved::WrongMethod(methods) => methods,
        Resolved::Found(r, _) => vec![&r.method],
        Resolved::NotFound => Vec::new(),
    }
}

/// Every operation the server answers: each route, and `HEAD` beside each `GET`
/// (RFC 9110: the same answer without its body).
pub fn operations() -> impl Iterator<Item = (&'static Method, &'static Route)> {
    ROUTES.iter().flat_map(|r| {
        let head = (r.method == Method::GET).then_some((&Method::HEAD, r));
        std::iter::once((&r.method, r)).chain(head)
    })
}

/// A request path for `route`, as tests call every route with: `channel` for `{channel}`,
/// `job` or `endpoint` for `{id}` (by the route), and the query a consumer route needs to
/// answer (`channel`, and `timeout=0` on the long-poll so that its `GET` does not hold).
///
/// # Panics
/// When a template has a parameter this does not fill (`{delivery}`, only on a `POST`).
pub fn sample_path(route: &Route, channel: &str, job: &str, endpoint: &str) -> String {
    let path = match route.op {
        Op::Sse | Op::Stream => format!("{}?channel={channel}", route.path),
        Op::Poll => format!("/v1/poll?channel={channel}&timeout=0"),
        _ if route.path.starts_with("/v1/jobs/") => route.path.replace("{id}", job),
        _ => route
            .path
            .replace("{channel}", channel)
            .replace("{id}", endpoint),
    };
    assert!(
        !path.contains('{'),
        "fill in the parameters of {}",
        route.path
    );
    path
}

/// `methods` as the value of `Allow` (and of a preflight's `Access-Control-Allow-Methods`):
/// `HEAD` follows every `GET`.
pub fn allow_list(methods: &[&Method]) -> String {
    let mut list: Vec<&str> = Vec::with_capacity(methods.len() + 1);
    for m in methods {
        list.push(m.as_str());
        if **m == Method::GET {
            list.push(Method::HEAD.as_str());
        }
    }
    list.join(", ")
}

/// Matches `path` against `template`, returning the parameters.
fn match_path<'a>(template: &str, path: &'a str) -> Option<Params<'a>> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&'a str> = path.split('/').collect();
    let mut params = Vec::new();
    match t.iter().position(|s| *s == "{channel}") {
        // `{channel}` takes everything between the fixed segments around it.
        Some(at) => {
            let tail = t.len() - at - 1;
            if p.len() < t.len() || !segments_match(&t[..at], &p[..at], &mut params) {
                return None;
            }
            let end = p.len() - tail;
            let start = path_offset(&p, at);
            let stop = path_offset(&p, end) - 1;
            params.push(&path[start..stop]);
            if !segments_match(&t[at + 1..], &p[end..], &mut params) {
                return None;
            }
        }
        None => {
            if t.len() != p.len() || !segments_match(&t, &p, &mut params) {
                return None;
            }
        }
    }
    Some(params)
}

/// Byte offset in the joined path of segment `i`.
fn path_offset(segments: &[&str], i: usize) -> usize {
    segments[..i].iter().map(|s| s.len() + 1).sum()
}

fn segments_match<'a>(template: &[&str], path: &[&'a str], params: &mut Params<'a>) -> bool {
    for (t, p) in template.iter().zip(path) {
        if t.starts_with('{') {
            if p.is_empty() {
                return false;
            }
            params.push(p);
        } else if t != p {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: Method, path: &str) -> (Op, Vec<String>) {
        match resolve(&method, path) {
            Resolved::Found(r, p) => (r.op, p.into_iter().map(str::to_owned).collect()),
            Resolved::WrongMethod(m) => panic!("{method} {path}: wrong method, allowed {m:?}"),
            Resolved::NotFound => panic!("{method} {path}: not found"),
        }
    }

    #[test]
    fn literal_routes_win_over_parameters() {
        assert_eq!(found(Method::POST, "/v1/jobs/claim").0, Op::ClaimJob);
        assert_eq!(
            found(Method::GET, "/v1/jobs/abc"),
            (Op::GetJob, vec!["abc".to_owned()])
        );
        assert!(matches!(
            resolve(&Method::GET, "/v1/jobs/claim"),
            Resolved::WrongMethod(m) if m == vec![&Method::POST]
        ));
    }

    #[test]
    fn channels_span_segments() {
        assert_eq!(
            found(Method::POST, "/v1/channels/a/b/c/events"),
            (Op::Publish, vec!["a/b/c".to_owned()])
        );
        assert_eq!(
            found(Method::GET, "/v1/channels/jobs%2F42/events").1,
            vec!["jobs%2F42".to_owned()]
        );
        assert!(matches!(
            resolve(&Method::GET, "/v1/channels/events"),
            Resolved::NotFound
        ));
        assert!(matches!(
            resolve(&Method::GET, "/v1/channels//events"),
            Resolved::Found(_, p) if p == vec![""]
        ));
    }

    #[test]
    fn nested_parameters_and_wrong_methods() {
        assert_eq!(
            found(Method::POST, "/v1/webhooks/w1/deliveries/d1/retry"),
            (Op::RetryDelivery, vec!["w1".to_owned(), "d1".to_owned()])
        );
        match resolve(&Method::PUT, "/v1/webhooks/w1") {
            Resolved::WrongMethod(m) => {
                assert_eq!(m, vec![&Method::GET, &Method::PATCH, &Method::DELETE]);
            }
            _ => panic!("expected wrong method"),
        }
        assert!(matches!(
            resolve(&Method::GET, "/v1/webhooks/"),
            Resolved::NotFound
        ));
        assert!(matches!(resolve(&Method::GET, "/nope"), Resolved::NotFound));
        assert_eq!(
            methods_for("/v1/jobs"),
            vec![&Method::POST],
            "preflight methods"
        );
    }

    #[test]
    fn head_goes_with_every_get() {
        assert_eq!(
            found(Method::HEAD, "/v1/jobs/abc"),
            (Op::GetJob, vec!["abc".to_owned()])
        );
        assert_eq!(
            found(Method::HEAD, "/v1/channels/a/b/events").0,
            Op::History
        );
        assert!(matches!(
            resolve(&Method::HEAD, "/v1/jobs"),
            Resolved::WrongMethod(m) if m == vec![&Method::POST]
        ));
        assert_eq!(
            allow_list(&[&Method::GET, &Method::PATCH, &Method::DELETE]),
            "GET, HEAD, PATCH, DELETE"
        );
        assert_eq!(allow_list(&[&Method::POST]), "POST");
        let gets = ROUTES.iter().filter(|r| r.method == Method::GET).count();
        let heads = operations().filter(|(m, _)| **m == Method::HEAD).count();
        assert_eq!(heads, gets);
        assert!(operations().all(|(m, r)| *m == r.method || r.method == Method::GET));
    }
}
