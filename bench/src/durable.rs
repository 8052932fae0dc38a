//! The `durable` scenario: C clients publishing to channels of a durable namespace
//! (`POST /v1/channels/{c}/events`, each answered `201` only once the event is fsync'd)
//! back to back over keep-alive connections; reports publishes/s, latency and the
//! server's CPU. The load is [`crate::jobs::run_posts`]'s.

use bytes::Bytes;
use hyper::StatusCode;

use crate::{
    jobs::{JobsOptions, PostLoad, run_posts},
    publisher::{self, publish_path},
    report::JobsReport,
    tracker::unix_micros,
};

/// Options of `durable`.
#[derive(Clone, Debug, clap::Args)]
pub struct DurableOptions {
    /// Clients, duration or count, `--size` (of each event's `data`), `--pid`, ...: as for
    /// `jobs`.
    #[command(flatten)]
    pub load: JobsOptions,
    /// Channels published to: client i publishes to `{prefix}/{i % channels}`.
    #[arg(long, default_value_t = 16)]
    pub channels: usize,
    /// Channel name prefix; the server needs a durable namespace covering it (e.g.
    /// `patterns = ["durable/**"]`, `durable = true`). A fresh suffix is added per run.
    #[arg(long, default_value = "durable/bench")]
    pub prefix: String,
}

/// Runs `durable`.
///
/// # Errors
/// Bad options, or a server or process that cannot be reached.
pub async fn run(opts: &DurableOptions) -> anyhow::Result<JobsReport> {
    let base = publisher::fresh_channel(&opts.prefix);
    let paths = (0..opts.channels.max(1))
        .map(|i| publish_path(&format!("{base}/{i}")))
        .collect();
    let data = publisher::payload(opts.load.size, unix_micros());
    let body = format!(r#"{{"type":"bench.durable","data":{data}}}"#);
    let load = PostLoad {
        scenario: "durable",
        paths,
        body: Bytes::from(body),
        expect: StatusCode::CREATED,
    };
    run_posts(&opts.load, &load).await
}
