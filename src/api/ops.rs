//! `/healthz`, `/readyz` and `/metrics` (each also answers `HEAD`, through the router).

use std::sync::atomic::Ordering;

use http::{HeaderValue, Response, StatusCode, header};
use switchyard_protocol::ErrorCode;
use switchyard_transports::{
    http::{full, json},
    metrics::write_family,
};

use super::{
    AppState,
    error::{ApiError, ApiResult},
    router::Reply,
};

/// Alive: the process answers.
pub fn healthz() -> Reply {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Ready: the store answers and the server is not shutting down.
///
/// # Errors
/// `shutting_down` from the stop signal on; `unavailable`, saying why, while the engine
/// does not answer (a probe's answer is for operators, so it names the cause).
pub async fn readyz(state: &AppState) -> ApiResult {
    if state.shutdown.is_cancelled() || state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        ));
    }
    if let Err(e) = state.engine.ready().await {
        return Err(ApiError::new(ErrorCode::Unavailable, e));
    }
    // The kind of engine only: a Redis URL may carry a password.
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "engine": state.engine.kind()}),
    ))
}

/// Prometheus text exposition.
pub fn metrics(state: &AppState) -> Reply {
    let mut out = String::with_capacity(4096);
    state.engine.write_metrics(&mut out);
    write_family(
        &mut out,
        "switchyard_http_connections",
        "Open HTTP connections (an upgraded one counts as websocket instead).",
        "gauge",
        [(
            String::new(),
            state.http_connections.load(Ordering::Relaxed),
        )],
    );
    write_family(
        &mut out,
        "switchyard_jobs_receiving_bytes",
        "Job body bytes received and held by submits in progress (bounded by jobs.max_inflight_bytes).",
        "gauge",
        [(String::new(), state.jobs.receiving_bytes())],
    );
    let d = &state.dispatch_stats;
    write_family(
        &mut out,
        "switchyard_webhook_attempts_total",
        "Webhook delivery attempts by result.",
        "counter",
        [
            (
                "result=\"success\"".to_owned(),
                d.succeeded.load(Ordering::Relaxed),
            ),
            (
                "result=\"failure\"".to_owned(),
                d.failed.load(Ordering::Relaxed),
            ),
        ],
    );
    write_family(
        &mut out,
        "switchyard_webhook_attempts_in_flight",
        "Webhook delivery attempts in flight.",
        "gauge",
        [(String::new(), d.in_flight.load(Ordering::Relaxed))],
    );
    write_family(
        &mut out,
        "switchyard_webhook_outbox_scans_total",
        "Scans of the webhook outbox for endpoints with due deliveries.",
        "counter",
        [(String::new(), d.scans.load(Ordering::Relaxed))],
    );
    write_family(
        &mut out,
        "switchyard_webhook_lane_refills_total",
        "Reads of one endpoint's due deliveries into its in-memory lane.",
        "counter",
        [(String::new(), d.refills.load(Ordering::Relaxed))],
    );
    write_family(
        &mut out,
        "switchyard_webhook_missed_wakeups_total",
        "Deliveries found only by the dispatcher's 1 s safety poll (a wake-up went missing; should stay 0).",
        "counter",
        [(String::new(), d.found_by_poll.load(Ordering::Relaxed))],
    );
    let r = &state.refusals;
    write_family(
        &mut out,
        "switchyard_http_refusals_total",
        "Requests answered 401, 403 or 429, and connections refused over the per-address or total limit.",
        "counter",
        [
            ("reason=\"unauthorized\"", &r.unauthorized),
            ("reason=\"forbidden\"", &r.forbidden),
            ("reason=\"rate_limited\"", &r.rate_limited),
            ("reason=\"connections_per_ip\"", &r.connections_per_ip),
            ("reason=\"connections_total\"", &r.connections_total),
        ]
        .map(|(label, v)| (label.to_owned(), v.load(Ordering::Relaxed))),
    );
    state.consumers.metrics.render(&mut out);
    let mut res = Response::new(full(out));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
