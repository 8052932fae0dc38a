//! switchyard-bench: drives a running switchyard server and measures it.
//!
//! # Scenarios
//! - [`idle`]: hold N subscribed, idle connections; report the server's RSS per connection.
//! - [`fanout`]: N subscribers on one channel, one publisher; report deliveries per second,
//!   latency percentiles, loss and duplicates, and the server's CPU per delivery. Against
//!   several nodes of a Redis-engine cluster, subscribers spread over nodes and publishes
//!   sent to another.
//! - [`jobs`]: C clients submitting durable jobs; report submits/s, latency and errors.
//! - [`durable`]: C clients publishing to a durable namespace's channels (each publish
//!   fsync'd before its `201`); report publishes/s, latency and the server's CPU.
//! - [`webhooks`]: signed webhook deliveries to a built-in [`receiver`]; report
//!   deliveries/s, end-to-end latency, duplicates, loss and bad signatures.
//! - [`presence`]: N presence members on one channel: the server's memory and CPU for
//!   them, `GET .../presence` and `/stats` times, and what joins and leaves on it do to
//!   another channel's delivery latency.
//! - [`floor`]: one bare `write()` per delivery to N loopback connections; the least server
//!   CPU a delivery can cost on this machine, for the others' figures to be held against.
//!
//! - [`compare`]: the floor, switchyard and Nchan at the same loads, one after the other;
//!   a table of CPU per delivery, ratios to the floor, and p99 latencies side by side.
//!
//! `idle` and `fanout` also drive Nchan ([`server`], [`nchan`]) for comparison.
//!
//! # Layout
//! - [`clients`]: one subscriber client per transport (WebSocket, SSE, NDJSON, long-poll),
//!   and Nchan's WebSocket and EventSource, all reporting to a [`clients::Handler`].
//! - [`server`], [`nchan`]: which server is driven, and Nchan's paths, messages and status.
//! - [`swarm`]: many subscriber tasks: opening concurrency, readiness, stopping.
//! - [`publisher`]: paced publishing over keep-alive HTTP/1.1 connections; [`pipelined`]:
//!   the same to Nchan, in order on one pipelined connection.
//! - [`envelope`], [`scan`], [`tracker`], [`stats`], [`stall`]: reading events, checking
//!   offsets, percentiles, noticing a run that stopped moving.
//! - [`procstat`], [`scrape`], [`limits`]: `/proc`, `/metrics` and the open-files limit.
//! - [`target`], [`http`]: addresses, source-address rotation, the HTTP/1.1 client.
//! - [`receiver`]: the webhook receiver that verifies signatures.
//! - [`report`]: the JSON result line and the human summary.

pub mod clients;
pub mod compare;
pub mod durable;
pub mod envelope;
pub mod fanout;
pub mod floor;
pub mod http;
pub mod idle;
pub mod jobs;
pub mod limits;
pub mod nchan;
pub mod pipelined;
pub mod presence;
pub mod procstat;
pub mod publisher;
pub mod receiver;
pub mod report;
pub mod scan;
pub mod scrape;
pub mod server;
pub mod stall;
pub mod stats;
pub mod swarm;
pub mod target;
pub mod tracker;
pub mod webhooks;
