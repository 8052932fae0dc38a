//! Integration tests: the real server on an ephemeral port, real clients over loopback.

// Test helpers are `pub` for readability; the binary has no public API.
#![allow(unreachable_pub)]

mod support;

/// The engine `support::start` runs servers on; `tests/redis_engine` runs suites of this
/// directory again on Redis.
const ENGINE: support::Engine = support::Engine::Embedded;

mod e2e_abuse;
mod e2e_auth;
mod e2e_browser;
mod e2e_cli;
mod e2e_cluster;
mod e2e_crash;
mod e2e_cross;
mod e2e_data_dir;
mod e2e_direct_writes;
mod e2e_durable;
mod e2e_event_path;
mod e2e_examples;
mod e2e_http;
mod e2e_jobs;
mod e2e_limits;
mod e2e_longpoll;
mod e2e_namespaces;
mod e2e_presence;
mod e2e_publish;
mod e2e_redis_hub;
mod e2e_redis_store;
mod e2e_redis_webhooks;
mod e2e_shutdown;
mod e2e_slow_consumer;
mod e2e_sse;
mod e2e_stream;
mod e2e_webhooks;
mod e2e_ws;
