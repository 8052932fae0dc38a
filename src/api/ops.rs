//! `/healthz`, `/readyz` and `/metrics`.

use std::{fmt::Write, sync::atomic::Ordering};

use http::{HeaderValue, Response, StatusCode, header};
use switchyard_protocol::ErrorCode;
use switchyard_transports::http::{error, full, json};

use super::{AppState, router::Reply};

/// Alive: the process answers.
pub fn healthz() -> Reply {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Ready: the engine is reachable and the server is not shutting down.
pub fn readyz(state: &AppState) -> Reply {
    if state.shutdown.is_cancelled() {
        return error(ErrorCode::ShuttingDown, "the server is shutting down");
    }
    json(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "engine": state.config.engine}),
    )
}

/// Prometheus text exposition.
pub fn metrics(state: &AppState) -> Reply {
    let mut out = String::with_capacity(4096);
    let bus = &state.bus;
    let _ = writeln!(
        out,
        "# HELP switchyard_events_published_total Events published."
    );
    let _ = writeln!(out, "# TYPE switchyard_events_published_total counter");
    let _ = writeln!(
        out,
        "switchyard_events_published_total {}",
        bus.published_count()
    );
    let _ = writeln!(out, "# HELP switchyard_channels Channels held in memory.");
    let _ = writeln!(out, "# TYPE switchyard_channels gauge");
    let _ = writeln!(out, "switchyard_channels {}", bus.channel_count());
    let _ = writeln!(
        out,
        "# HELP switchyard_http_connections Open HTTP connections (upgraded ones count as websocket)."
    );
    let _ = writeln!(out, "# TYPE switchyard_http_connections gauge");
    let _ = writeln!(
        out,
        "switchyard_http_connections {}",
        state.http_connections.load(Ordering::Relaxed)
    );
    state.consumers.metrics.render(&mut out);
    let mut res = Response::new(full(out));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
