//! The `switchyard-bench` binary: parses the command line, runs one scenario, prints its
//! report, and exits non-zero when the run found problems (1) or could not run (2).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_bench::{
    compare::{self, CompareOptions},
    durable::{self, DurableOptions},
    fanout::{self, FanoutOptions},
    floor::{self, FloorOptions},
    idle::{self, IdleOptions},
    jobs::{self, JobsOptions},
    limits,
    presence::{self, PresenceOptions},
    report,
    webhooks::{self, WebhooksOptions},
};

/// Load generator for switchyard. Prints one JSON object per result on stdout and a
/// summary on stderr.
#[derive(Parser, Debug)]
#[command(name = "switchyard-bench", version)]
struct Cli {
    /// Worker threads of the bench's own runtime [default: 1 for idle, floor, jobs and
    /// webhooks (single-threaded, the cheapest), 2 for fanout and compare (one thread cannot
    /// parse SSE as fast as the server writes it)]. floor's writer and readers have threads
    /// of their own whatever this says.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Hold N idle, subscribed connections and report the server's RSS per connection.
    ///
    /// Connection i subscribes to `{prefix}/{i % channels}`. The bench waits until all are
    /// subscribed (WebSocket: `subscribed` frame; SSE: the first `id:` block; NDJSON: the
    /// `subscribed` line), lets the server settle, reads VmRSS from /proc/PID/status before
    /// and after, and checks that /metrics `switchyard_connections` grew by N.
    ///
    /// Limits: each connection is one open file in this process. Under a hard open-files
    /// limit of 20000 one bench process holds about 15k connections (the soft limit is
    /// raised to the hard one at start when possible); past that it stops with an error
    /// saying so. Run several processes for more. Beyond ~28k connections per source
    /// address the ephemeral ports run out, so with `--source-ips auto` the bench binds
    /// its sockets to 127.0.0.2, 127.0.0.3, ... rotating every `--per-source-ip`.
    ///
    /// Nchan (`--server nchan`, ws or sse): connections subscribe on `/sub/{channel}`, the
    /// count is Nchan's `subscribers:` on `/nchan_status`, and RSS is summed over the nginx
    /// workers given to `--pid` (from `bench/nchan/run.sh`). Measure a freshly started
    /// server: nginx, like switchyard, keeps the memory earlier connections used.
    Idle(IdleOptions),
    /// N subscribers on one fresh channel, one publisher; report deliveries/s, latency,
    /// loss and duplicates, and the server's CPU per delivery.
    ///
    /// Each event's data is `{"ts_us": <send time>, "pad": "xx.."}` of `--size` bytes;
    /// latency is receive time minus `ts_us`. Every subscriber checks it received offsets
    /// 1..=events exactly once, in order. When neither publishing nor deliveries progress
    /// for `--stall-secs`, the run stops, reports what arrived, and exits 1.
    ///
    /// At `--rate 0` the publisher outruns fan-out: start the server with a consumer queue
    /// that holds every event (e.g. SWITCHYARD_CONSUMERS__QUEUE_CAPACITY=4096 for 2000
    /// events), or subscribers are disconnected as slow consumers.
    ///
    /// Several nodes (the Redis engine): `--url A,B` spreads the subscribers over A and B,
    /// `--publish-url B` publishes to B, `--pid PA,PB` sums both nodes' CPU and memory,
    /// `--redis-pid` reports Redis's CPU apart; the report adds each node's share.
    ///
    /// Nchan (`--server nchan`, WebSocket and SSE): subscribers use `/sub/{channel}`, the
    /// publisher POSTs to `/pub/{channel}` in order on one pipelined connection (at the
    /// paced times, not waiting for answers), and each message is
    /// `{"seq": N, "ts_us": <send time>, "pad": "xx.."}` of `--size` bytes: every subscriber
    /// checks it got seq 1..=events exactly once, in order. Start Nchan with
    /// `bench/nchan/run.sh PORT`, and give `--pid` the worker pids it prints (CPU and RSS are
    /// summed over them).
    Fanout(FanoutOptions),
    /// The floor: the least server CPU a delivery can cost on this machine, to hold a
    /// server's CPU per delivery against (what `bench/floor/writefloor.c` measures).
    ///
    /// A writer thread accepts `--subscribers` loopback connections from the bench's readers
    /// and writes one `--size`-byte message to each, `--events` rounds at `--rate` rounds
    /// per second, with one blocking write() per delivery (std sockets, TCP_NODELAY, no event
    /// loop, no framing). Its own CPU time (/proc/thread-self/stat) over the rounds, divided
    /// by the writes, is the floor's µs of server CPU per delivery; the readers drain the
    /// connections with tokio and check every byte arrived. Both ends are in this process,
    /// so it needs two file descriptors per connection.
    Floor(FloorOptions),
    /// The floor, switchyard and Nchan at the same loads, one after the other, and a table
    /// of their server CPU per delivery, its ratio to the floor, and p99 latencies.
    ///
    /// For each load of `--subscribers`: a `floor` run, then for each of `--transports` a
    /// `fanout` run against switchyard and one against Nchan (when `--nchan-url` is given;
    /// Nchan has ws and sse, its other cells show "-"), all at `--rate`, `--events` and
    /// `--size`. `--idle-connections N` first measures idle RSS per connection on each
    /// server (start both servers afresh for it). Every run prints its JSON line and
    /// summary as it ends; the comparison's JSON line comes last on stdout, its markdown
    /// tables on stderr. Start switchyard as for `fanout`, and Nchan with
    /// `bench/nchan/run.sh PORT` (it prints NCHAN_URL and NCHAN_PIDS).
    ///
    /// Example: compare --switchyard-url http://127.0.0.1:9000 --switchyard-pid $PID
    /// --nchan-url $NCHAN_URL --nchan-pid $NCHAN_PIDS --subscribers 1000,5000 --rate 20
    /// --events 200 --transports ws,sse,stream
    Compare(CompareOptions),
    /// C clients submitting durable jobs (`POST /v1/jobs`) back to back; report submits/s,
    /// latency percentiles and errors by status.
    ///
    /// Each client holds one keep-alive HTTP/1.1 connection with one submit in flight. The
    /// body is a JSON object padded to `--size` bytes, built once and shared, so
    /// `--size 10485760` (10 MiB, the server's default `limits.max_job_bytes`) costs the
    /// bench no copies. Every answer other than 202 is an error, counted by status; any
    /// error makes the run not ok. 429 means the server's per-client limits refused.
    Jobs(JobsOptions),
    /// C clients publishing to channels of a durable namespace back to back; report
    /// publishes/s, latency percentiles, errors by status and the server's CPU.
    ///
    /// The load is `jobs`' (one keep-alive connection and one publish in flight per client,
    /// `--size` bytes of `data` per event), posted to `{prefix}/<fresh>/{i % channels}`;
    /// every answer other than 201 is an error. A `201` from a durable namespace means
    /// the event was fsync'd, so this measures the group commit. Start the server with a
    /// durable namespace covering `--prefix`, e.g. a config file holding
    /// `[[namespaces]] name = "durable" patterns = ["durable/**"] durable = true`, and
    /// SWITCHYARD_LIMITS__REQUESTS_PER_SEC_PER_IP=0.
    Durable(DurableOptions),
    /// Signed webhook deliveries to a built-in receiver; report deliveries/s, end-to-end
    /// latency, duplicates, loss and bad signatures.
    ///
    /// The bench listens on `--receiver` (127.0.0.1, any port), registers an endpoint for a
    /// fresh channel, publishes `--events` events of type `bench.tick` whose data carries
    /// the send time, verifies every delivery's Standard Webhooks signature with the
    /// endpoint's secret, waits for all of them (or `--stall-secs` without progress), and
    /// deletes the endpoint. Latency is receive time minus send time.
    ///
    /// `--dead-endpoints N` also registers N endpoints on the same channel pointing at a
    /// local listener that accepts connections and never answers; the figures stay the
    /// healthy receiver's, so they show what dead endpoints cost it.
    ///
    /// The server must allow webhook URLs on private addresses:
    /// SWITCHYARD_WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true.
    Webhooks(WebhooksOptions),
    /// N presence members on one channel A; report the server's RSS per member and its CPU
    /// while they join, the time of `GET /v1/channels/A/presence` and `.../stats`, and the
    /// delivery latency of another channel B (a `fanout` run) without and with members
    /// joining and leaving A at `--churn` per second.
    ///
    /// The server needs a presence namespace for `--channel-prefix` (default `pbench`), in a
    /// config file: `[[namespaces]] name = "pbench", patterns = ["pbench/**"],
    /// presence = true, join_leave = true, max_members = 20000`; and, since every member comes
    /// from this machine, no per-address limits (SWITCHYARD_LIMITS__MAX_CONNECTIONS_PER_IP=0,
    /// SWITCHYARD_LIMITS__MAX_SUBSCRIPTIONS_PER_IP=0). With `join_leave`, each join and leave
    /// is pushed to every member: the ramp to N members delivers ~N²/2 join events.
    Presence(PresenceOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Without unsafe code, through prlimit(1); keeps the current limit when that fails.
    limits::raise_to_hard();
    let threads = cli.threads.unwrap_or(match cli.scenario {
        Scenario::Idle(_)
        | Scenario::Floor(_)
        | Scenario::Jobs(_)
        | Scenario::Durable(_)
        | Scenario::Webhooks(_) => 1,
        Scenario::Fanout(_) | Scenario::Compare(_) | Scenario::Presence(_) => 2,
    });
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.scenario {
            Scenario::Idle(opts) => report::finish(&idle::run(&opts).await?),
            Scenario::Fanout(opts) => report::finish(&fanout::run(&opts).await?),
            Scenario::Floor(opts) => report::finish(&floor::run(&opts).await?),
            Scenario::Compare(opts) => report::finish(&compare::run(&opts).await?),
            Scenario::Jobs(opts) => report::finish(&jobs::run(&opts).await?),
            Scenario::Durable(opts) => report::finish(&durable::run(&opts).await?),
            Scenario::Webhooks(opts) => report::finish(&webhooks::run(&opts).await?),
            Scenario::Presence(opts) => report::finish(&presence::run(&opts).await?),
        }
    });
    // Idle connections are dropped with the runtime, not one by one.
    runtime.shutdown_background();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("switchyard-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
