//! The integration suites of `tests/it` again, with every server on the Redis engine: the
//! same files (not copies), and `support::start` gives each server a private redis-server
//! (one per server, so parallel tests share nothing). The few tests that cannot apply to
//! Redis return early, each with its reason (`support::embedded_only`). Without
//! redis-server, unless CI or `SWITCHYARD_REQUIRE_REDIS=1` requires it, every test of this
//! target is skipped at once, loudly.

// Test helpers are `pub` for readability; the binary has no public API.
#![allow(unreachable_pub)]

/// The engine `support::start` runs servers on.
const ENGINE: support::Engine = support::Engine::Redis;

// Some helpers serve only the suites left out below.
#[allow(dead_code)]
#[path = "../it/support/mod.rs"]
mod support;

#[path = "../it/e2e_abuse.rs"]
mod e2e_abuse;
#[path = "../it/e2e_auth.rs"]
mod e2e_auth;
#[path = "../it/e2e_cross.rs"]
mod e2e_cross;
#[path = "../it/e2e_direct_writes.rs"]
mod e2e_direct_writes;
#[path = "../it/e2e_durable.rs"]
mod e2e_durable;
#[path = "../it/e2e_event_path.rs"]
mod e2e_event_path;
#[path = "../it/e2e_jobs.rs"]
mod e2e_jobs;
#[path = "../it/e2e_longpoll.rs"]
mod e2e_longpoll;
#[path = "../it/e2e_namespaces.rs"]
mod e2e_namespaces;
#[path = "../it/e2e_presence.rs"]
mod e2e_presence;
#[path = "../it/e2e_publish.rs"]
mod e2e_publish;
#[path = "../it/e2e_shutdown.rs"]
mod e2e_shutdown;
#[path = "../it/e2e_slow_consumer.rs"]
mod e2e_slow_consumer;
#[path = "../it/e2e_sse.rs"]
mod e2e_sse;
#[path = "../it/e2e_stream.rs"]
mod e2e_stream;
#[path = "../it/e2e_webhooks.rs"]
mod e2e_webhooks;
#[path = "../it/e2e_ws.rs"]
mod e2e_ws;

// Left out, as nothing in them reaches the engine or they test one engine only:
// - e2e_limits: rate, connection, timeout and CORS limits act in the HTTP layer.
// - e2e_http: HEAD, ETags, compression and request ids act in the HTTP layer too.
// - e2e_crash: SIGKILL recovery of the embedded store's files (the binary, in a data dir).
// - e2e_browser: static files and a Chromium run of the demo page.
// - e2e_examples: the example programs' arguments and messages.
// - e2e_cli: the binary's configuration errors and log format (it runs embedded).
// - e2e_redis_*, e2e_cluster: they start their own redis-servers already (in tests/it).
