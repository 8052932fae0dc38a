//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::atomic::Ordering;

use http::{HeaderValue, Response, StatusCode, header};
use switchyard_protocol::ErrorCode;
use switchyard_transports::{
    http::{error, full, json},
    metrics::write_family,
};

use super::{AppState, router::Reply};

/// Alive: the process answers.
pub fn healthz() -> Reply {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Ready: the store answers and the server is not shutting down.
pub async fn readyz(state: &AppState) -> Reply {
    if state.shutdown.is_cancelled() || state.draining.load(Ordering::Relaxed) {
        return error(ErrorCode::ShuttingDown, "the server is shutting down");
    }
    if let Err(e) = state.jobs.store().ping().await {
        return error(
            ErrorCode::Unavailable,
            format!("the store does not answer: {e}"),
        );
    }
    if let Err(e) = state.bus.ready().await {
        return error(ErrorCode::Unavailable, format!("the hub is not ready: {e}"));
    }
    // The kind of engine only: a Redis URL may carry a password.
    let engine = match state.config.engine() {
        crate::config::Engine::Embedded => "embedded",
        crate::config::Engine::Redis(_) => "redis",
    };
    json(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "engine": engine}),
    )
}

/// Prometheus text exposition.
pub fn metrics(state: &AppState) -> Reply {
    let mut out = String::with_capacity(4096);
    let bus = &state.bus;
    let one = |v: u64| [(String::new(), v)];
    write_family(
        &mut out,
        "switchyard_events_published_total",
        "Events published.",
        "counter",
        one(bus.published_count()),
    );
    write_family(
        &mut out,
        "switchyard_channels",
        "Channels held in memory.",
        "gauge",
        one(bus.channel_count() as u64),
    );
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
    let stats = &state.store_stats;
    let load = |v: &std::sync::atomic::AtomicU64| one(v.load(Ordering::Relaxed));
    write_family(
        &mut out,
        "switchyard_store_commits_total",
        "Store transactions committed (one fsync each).",
        "counter",
        load(&stats.commits),
    );
    write_family(
        &mut out,
        "switchyard_store_ops_total",
        "Store write operations committed (group commit: several per transaction).",
        "counter",
        load(&stats.ops),
    );
    write_family(
        &mut out,
        "switchyard_store_max_batch",
        "Most operations committed in one transaction.",
        "gauge",
        load(&stats.max_batch),
    );
    if let Some(redis) = &state.redis_stats {
        write_family(
            &mut out,
            "switchyard_redis_up",
            "1 while this node's Redis pub/sub connection is up (events from other nodes arrive only then).",
            "gauge",
            one(u64::from(redis.is_up())),
        );
        write_family(
            &mut out,
            "switchyard_redis_reconnects_total",
            "Times this node's Redis pub/sub connection was made again after a loss.",
            "counter",
            one(redis.reconnects()),
        );
        write_family(
            &mut out,
            "switchyard_redis_errors_total",
            "Redis operations that failed or timed out (answered 503, or retried by a background task).",
            "counter",
            one(redis.errors()),
        );
    }
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
