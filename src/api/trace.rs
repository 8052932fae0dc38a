//! One `tracing` span per request, made by tower-http's `TraceLayer`: `request` with the
//! method, the path (never the query: it may hold `?token=`), the request id and, once
//! answered, the status; and one `debug` event per answer with its status and latency (time
//! to the response head: a stream's life is not counted).
//!
//! Both are at `debug`, so production logs (`info`) get nothing per request, and a disabled
//! span costs next to nothing on the body of a long-lived stream, which enters the span at
//! every poll. `RUST_LOG=switchyard=debug` shows them.

use std::time::Duration;

use http::Request;
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::{Trace, TraceLayer},
};
use tracing::Span;

use super::{body::ApiBody, request_id, router::Reply};

/// The layer, with our span and event; tower-http's own request, chunk, end-of-stream and
/// failure events are off (a 5xx that is a fault is logged by `ApiError` with its cause).
pub type Layer = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<ApiBody>) -> Span,
    (),
    fn(&Reply, Duration, &Span),
    (),
    (),
    (),
>;

/// What the layer makes of a service `S`.
pub type Service<S> = Trace<
    S,
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<ApiBody>) -> Span,
    (),
    fn(&Reply, Duration, &Span),
    (),
    (),
    (),
>;

/// The layer.
pub fn layer() -> Layer {
    TraceLayer::new_for_http()
        .make_span_with(span as fn(&Request<ApiBody>) -> Span)
        .on_request(())
        .on_response(answered as fn(&Reply, Duration, &Span))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

fn span(req: &Request<ApiBody>) -> Span {
    let id = request_id::of(req)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::debug_span!(
        "request",
        method = %req.method(),
        // Display, not Debug: neither holds a space or a line break (URI syntax; request ids
        // are visible ASCII, see `request_id`), so the line stays easy to grep.
        path = %req.uri().path(),
        request_id = %id,
        status = tracing::field::Empty,
    )
}

fn answered(res: &Reply, latency: Duration, span: &Span) {
    let status = res.status().as_u16();
    span.record("status", status);
    tracing::debug!(status, latency_ms = latency.as_secs_f64() * 1e3, "answered");
}

#[cfg(test)]
mod tests {
    use crate::api::testing::{CapturedLog, TestApp};

    #[tokio::test]
    async fn one_debug_line_per_request_names_its_id_without_the_query_or_credentials() {
        let app = TestApp::new(|_| {}).await;
        let log = CapturedLog::default();
        // The test runs on one thread (current-thread runtime): the guard covers it all.
        let guard = log.install(tracing::Level::DEBUG);
        let res = app
            .call(
                "GET",
                "/v1/poll?channel=traced&timeout=0&token=secret-in-query",
                &[
                    ("x-request-id", "trace-probe-7"),
                    ("authorization", "Bearer secret-in-header"),
                ],
                "",
            )
            .await;
        assert_eq!(res.status, 200);
        let text = log.text();
        let line = text
            .lines()
            .find(|l| l.contains("answered"))
            .unwrap_or_else(|| panic!("no `answered` line:\n{text}"));
        for part in [
            "DEBUG",
            "request_id=trace-probe-7",
            "path=/v1/poll",
            "status=200",
            "latency_ms=",
        ] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
        assert!(
            !text.contains("secret-in"),
            "a credential was logged:\n{text}"
        );

        // At `info`, nothing per request.
        drop(guard);
        let quiet = CapturedLog::default();
        let _guard = quiet.install(tracing::Level::INFO);
        app.call("GET", "/healthz", &[], "").await;
        assert_eq!(quiet.text(), "");
    }
}
