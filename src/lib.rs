//! switchyard: a self-hosted, multi-transport real-time gateway.
//!
//! # Layout
//! - [`config`]: layered configuration (defaults, file, env, flags) and its validation.
//! - [`hub`] and [`store`]: the contracts every engine offers: channels with offsets,
//!   history and fan-out ([`hub::Bus`]); jobs and the webhook outbox ([`store::Store`],
//!   [`store::WebhookStore`]).
//! - [`engine`]: the engines behind them, one folder each: `embedded` (in-memory hub and
//!   SQLite, the default) and `redis` (several nodes on one Redis), as one closed
//!   [`engine::Engine`].
//! - [`jobs`]: submit, claim with leases, report, cancel, wait for a change.
//! - [`webhooks`]: endpoint management, the SSRF guard, and the signing dispatcher.
//! - [`api`]: the HTTP API as one tower `Service` ([`api::app`]): middleware (request ids,
//!   tracing), the routes (publish, history, jobs, webhooks, ops, built-in files) and the
//!   consumer transports' entry, with one error type.
//! - [`auth`]: API keys and scopes, consumer JWTs, job tokens, rate limits.
//! - [`ids`] and [`time`]: every identifier the gateway makes, and how it writes times.
//! - [`private_files`]: the data directory and key files only the gateway's user may read.
//! - [`demo`]: the optional built-in worker behind the `/demo` page (`demo.worker`).
//! - [`server`]: the accept loop, connection limits and per-connection service.
//! - [`shutdown`]: SIGINT / SIGTERM.
//!
//! [`build`] wires them together from a configuration without a socket (tests serve its
//! state with [`api::app`] directly); [`run`] serves that on a bound listener, so tests can
//! bind port 0.

pub mod api;
pub mod auth;
pub mod config;
pub mod demo;
pub mod engine;
pub mod hub;
pub mod ids;
pub mod jobs;
pub mod private_files;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod time;
pub mod webhooks;

use std::{
    future::Future,
    sync::{Arc, atomic::AtomicI64},
    time::Duration,
};

use switchyard_transports::{Context, allowance::SubscriptionBudgets, metrics::TransportMetrics};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api::AppState,
    auth::{Auth, rate::RateLimiter},
    config::Config,
    engine::Engine,
    jobs::Jobs,
    webhooks::{Webhooks, dispatcher::Dispatcher},
};

/// How often expired history and idle channels are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What [`build`] makes: the state every request handler uses, and the webhook dispatcher
/// that [`run`] drives.
pub struct Gateway {
    /// Served by [`api::app`].
    pub state: Arc<AppState>,
    /// Delivers webhooks once [`run`] starts it.
    pub dispatcher: Arc<Dispatcher>,
}

/// Opens the engine (creating the data directory for the embedded one) and builds the
/// gateway's state from `config`, without binding a socket or starting a task.
///
/// # Errors
/// When the store in `data_dir` (or Redis) cannot be opened, or a credential in `[auth]` or a
/// proxy setting in `[limits]` is bad.
pub async fn build(config: Arc<Config>) -> anyhow::Result<Gateway> {
    let engine = Engine::open(&config).await?;
    let auth = Arc::new(Auth::from_config(&config, engine.job_tokens())?);
    let webhooks = Arc::new(Webhooks::new(
        Arc::clone(&engine) as _,
        config.webhooks.clone(),
    ));
    let dispatcher = Arc::new(Dispatcher::new(
        Arc::clone(&engine) as _,
        config.webhooks.clone(),
        engine.outbox_changed(),
    )?);
    let jobs = Arc::new(Jobs::new(
        Arc::clone(&engine) as _,
        Arc::clone(&engine) as _,
        config.jobs.clone(),
        engine.claimable(),
    ));
    let token = CancellationToken::new();
    let namespaces = Arc::new(config.namespaces()?);
    let ip_limiter = Arc::new(RateLimiter::new(
        config.limits.requests_per_sec_per_ip,
        config.limits.request_burst_per_ip,
    ));
    let publisher = namespaces.all().any(|r| r.client_publish).then(|| {
        Arc::new(api::client_publish::ServerPublisher::new(
            Arc::clone(&engine),
            config.limits.max_event_bytes,
            Arc::clone(&ip_limiter),
            auth.is_open(),
        )) as _
    });
    let consumers = Arc::new(Context {
        hub: Arc::clone(&engine) as _,
        config: config.transport_config(),
        metrics: Arc::new(TransportMetrics::default()),
        shutdown: token.clone(),
        tracker: TaskTracker::new(),
        verifier: if auth.is_open() {
            None
        } else {
            Some(Arc::clone(&auth) as _)
        },
        subscriptions: SubscriptionBudgets::new(
            config.limits.max_subscriptions_per_ip,
            config.limits.max_subscriptions_per_user,
        ),
        namespaces: Arc::clone(&namespaces),
        occupancy: Default::default(),
        // Only where a namespace tracks presence: elsewhere no session ever asks.
        presence: namespaces
            .any_presence()
            .then(|| Arc::clone(&engine) as Arc<dyn switchyard_transports::presence::Presence>),
        publisher,
    });
    let state = Arc::new(AppState {
        engine,
        jobs,
        webhooks,
        dispatch_stats: Arc::clone(&dispatcher.stats),
        consumers,
        config: Arc::clone(&config),
        shutdown: token,
        http_connections: AtomicI64::new(0),
        draining: std::sync::atomic::AtomicBool::new(false),
        refusals: api::Refusals::default(),
        proxies: auth::proxies::TrustedProxies::parse(
            &config.limits.trusted_proxies,
            auth::proxies::ClientIpHeader::parse(&config.limits.client_ip_header)?,
        )?,
        ip_limiter,
        key_limiter: RateLimiter::new(
            config.limits.requests_per_sec_per_key,
            config.limits.request_burst_per_key,
        ),
        auth,
    });
    Ok(Gateway { state, dispatcher })
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, tells every
/// connected client (WebSocket close 1001, SSE/stream goodbye, held long-polls answered),
/// and waits up to `shutdown_grace_secs` for them.
///
/// # Errors
/// When the store in `data_dir` (or Redis) cannot be opened, a credential in `[auth]` is
/// bad, or no API key is configured and `listener` is not on a loopback address (open mode).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let local = listener.local_addr()?;
    // Refused before anything is created in the data directory.
    if config.auth.api_keys.is_empty() && !auth::open_mode_allowed(local.ip()) {
        anyhow::bail!(
            "refusing to start in open mode on {local}: with no `auth.api_keys` anyone who reaches this address could publish, read and cancel jobs; set `auth.api_keys` (SWITCHYARD_AUTH__API_KEYS) or listen on a loopback address"
        );
    }
    let Gateway { state, dispatcher } = build(Arc::clone(&config)).await?;
    if state.auth.is_open() {
        tracing::warn!(
            %local,
            "OPEN MODE: no auth.api_keys configured, so every request is allowed without credentials; fine on loopback for development, never expose it"
        );
    } else {
        tracing::info!(keys = state.auth.keys.len(), "API keys required");
    }
    let engine = Arc::clone(&state.engine);
    let jobs = Arc::clone(&state.jobs);
    let token = state.shutdown.clone();
    let tracker = state.consumers.tracker.clone();

    let engine_tasks = engine.spawn_tasks(&token);
    let sweeper = {
        let token = token.clone();
        let sweep_state = Arc::clone(&state);
        let sweep_engine = Arc::clone(&engine);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {
                        sweep_engine.sweep();
                        let now = std::time::Instant::now();
                        sweep_state.ip_limiter.sweep(now);
                        sweep_state.key_limiter.sweep(now);
                    }
                }
            }
        })
    };

    let lease_sweeper = tokio::spawn(Arc::clone(&jobs).sweep_leases(token.clone()));
    let pruner = tokio::spawn(jobs::prune_periodically(
        Arc::clone(&engine) as _,
        Duration::from_secs(config.jobs.retention_secs),
        Duration::from_secs(config.webhooks.delivery_retention_secs),
        token.clone(),
    ));
    // Attempts in flight at shutdown finish (within the grace period) on the tracker.
    let dispatch = tokio::spawn(dispatcher.run(token.clone(), tracker.clone()));
    // Only when asked for: it claims every job of the queue.
    let demo_worker = config.demo.worker.then(|| {
        tokio::spawn(demo::run_worker(
            Arc::clone(&jobs),
            Duration::from_millis(config.demo.delay_ms),
            token.clone(),
        ))
    });

    tracing::info!(
        listen = %listener.local_addr()?,
        engine = %config.engine_redacted(),
        data_dir = %config.data_dir.display(),
        "switchyard listening"
    );
    let accept = tokio::spawn(server::accept_loop(
        listener,
        Arc::clone(&state),
        tracker.clone(),
    ));

    shutdown.await;
    let drain = Duration::from_secs(config.shutdown_drain_secs);
    if !drain.is_zero() {
        tracing::info!(?drain, "draining: /readyz answers 503, still serving");
        state
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(drain).await;
    }
    tracing::info!("shutting down: no new connections; telling clients");
    token.cancel();
    let _ = accept.await;
    let _ = sweeper.await;
    let _ = lease_sweeper.await;
    let _ = dispatch.await;
    let _ = pruner.await;
    for task in engine_tasks {
        let _ = task.await;
    }
    if let Some(worker) = demo_worker {
        let _ = worker.await;
    }
    tracker.close();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    match tokio::time::timeout(grace, tracker.wait()).await {
        Ok(()) => tracing::info!("connections closed"),
        Err(_) => tracing::warn!(?grace, open = tracker.len(), "graceful shutdown timed out"),
    }
    // Last, flush storage: nothing can write any more.
    engine.close(grace).await;
    tracing::info!("shutdown complete");
    Ok(())
}
