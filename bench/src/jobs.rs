//! The `jobs` scenario: C clients submitting durable jobs (`POST /v1/jobs`) back to back
//! over keep-alive connections for a duration or a request count; reports submits/s,
//! latency, and errors by status. [`run_posts`] is the load itself, which the `durable`
//! scenario ([`crate::durable`]) shares with its own paths and bodies.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::future::try_join_all;
use hyper::{Method, StatusCode};
use tokio::{task::JoinSet, time::Instant};

use crate::{
    http::HttpConn,
    procstat::{self, CpuMeter, Proc},
    publisher,
    report::JobsReport,
    stats::{Latency, per_sec},
    target::Target,
    tracker::unix_micros,
};

/// The submit path.
pub const JOBS_PATH: &str = "/v1/jobs";
/// Error answers whose bodies are kept for the report, at most.
const ERROR_SAMPLES: usize = 5;

/// Options of `jobs`.
#[derive(Clone, Debug, clap::Args)]
pub struct JobsOptions {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// Clients, each with one keep-alive connection and one submit in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to submit for (ignored with `--requests`).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Submit exactly this many jobs over all clients instead of running for a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Size of each job's JSON body, bytes (a padded object, built once and shared). The
    /// server's `limits.max_job_bytes` (default 10485760) is the largest it accepts.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Server process id: its CPU time and peak RSS are read from /proc/PID.
    #[arg(long)]
    pub pid: u32,
    /// Sent as `Authorization: Bearer <KEY>` on every submit.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Longest wait for one answer, seconds; a slower submit counts as a `timeout` error
    /// and its client reconnects.
    #[arg(long, default_value_t = 30.0)]
    pub timeout_secs: f64,
}

impl JobsOptions {
    /// Options with the command line's defaults.
    pub fn new(url: impl Into<String>, concurrency: usize, pid: u32) -> Self {
        Self {
            url: url.into(),
            concurrency,
            duration_secs: 10.0,
            requests: None,
            size: 1024,
            pid,
            api_key: None,
            timeout_secs: 30.0,
        }
    }
}

/// When the clients stop.
#[derive(Clone, Copy, Debug)]
enum Budget {
    /// After this many submits over all clients.
    Requests(u64),
    /// At this instant (a submit in flight then still completes).
    Until(Instant),
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientOutcome {
    accepted: u64,
    sent: u64,
    /// Latencies of accepted submits, microseconds.
    samples: Vec<u32>,
    /// Non-202 answers by status code, plus `connection` and `timeout`.
    errors: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    last_at: Option<Instant>,
}

impl ClientOutcome {
    fn error(&mut self, kind: String, detail: impl FnOnce() -> String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.push(detail());
        }
    }
}

/// Runs `jobs`.
///
/// # Errors
/// Bad options, or a server or process that cannot be reached. Error answers are not
/// errors: they are counted in the report (`ok: false`).
pub async fn run(opts: &JobsOptions) -> anyhow::Result<JobsReport> {
    // One body for every submit: a 10 MiB one is built once and shared, never copied.
    let body = Bytes::from(publisher::payload(opts.size, unix_micros()));
    let load = PostLoad {
        scenario: "jobs",
        paths: vec![JOBS_PATH.to_owned()],
        body,
        expect: StatusCode::ACCEPTED,
    };
    run_posts(opts, &load).await
}

/// What the clients of [`run_posts`] send.
#[derive(Clone, Debug)]
pub struct PostLoad {
    /// The report's scenario name.
    pub scenario: &'static str,
    /// Client `i` posts to `paths[i % paths.len()]`.
    pub paths: Vec<String>,
    /// The body of every request (shared, never copied).
    pub body: Bytes,
    /// The answer that counts as accepted; any other is an error.
    pub expect: StatusCode,
}

/// C clients posting `load` back to back, one request in flight each, for `opts`'
/// duration or request count.
///
/// # Errors
/// Bad options, or a server or process that cannot be reached.
pub async fn run_posts(opts: &JobsOptions, load: &PostLoad) -> anyhow::Result<JobsReport> {
    if load.paths.is_empty() {
        bail!("no path to post to");
    }
    if opts.concurrency == 0 || opts.requests == Some(0) {
        bail!("--concurrency and --requests must be at least 1");
    }
    if !(opts.duration_secs > 0.0 && opts.duration_secs.is_finite()) {
        bail!("--duration-secs must be a number > 0");
    }
    if !(opts.timeout_secs > 0.0 && opts.timeout_secs.is_finite()) {
        bail!("--timeout-secs must be a number > 0");
    }
    let target = Target::parse(&opts.url)?;
    let server = Proc::pid(opts.pid);
    server.check()?;
    let body = &load.body;

    let conns = try_join_all((0..opts.concurrency).map(|_| async {
        HttpConn::connect(&target)
            .await?
            .with_api_key(opts.api_key.as_deref())
    }))
    .await
    .context("opening the clients' connections")?;

    let cpu = CpuMeter::start(&server)?;
    let started = Instant::now();
    let budget = match opts.requests {
        Some(n) => Budget::Requests(n),
        None => Budget::Until(started + Duration::from_secs_f64(opts.duration_secs)),
    };
    let next = Arc::new(AtomicU64::new(0));
    let timeout = Duration::from_secs_f64(opts.timeout_secs);
    let mut clients = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let (target, body, next) = (target.clone(), body.clone(), Arc::clone(&next));
        let api_key = opts.api_key.clone();
        let path = load.paths[i % load.paths.len()].clone();
        let expect = load.expect;
        clients.spawn(async move {
            let mut out = ClientOutcome::default();
            let client = Client {
                target: &target,
                api_key: api_key.as_deref(),
                path: &path,
                body: &body,
                expect,
                budget,
                next: &next,
                timeout,
            };
            client.submit_until_done(conn, &mut out).await;
            out
        });
    }
    let mut total = ClientOutcome::default();
    while let Some(joined) = clients.join_next().await {
        let mut out = joined.unwrap_or_else(|e| {
            let mut out = ClientOutcome::default();
            out.error("client panicked".into(), || e.to_string());
            out
        });
        total.accepted += out.accepted;
        total.sent += out.sent;
        total.samples.append(&mut out.samples);
        for (kind, n) in out.errors {
            *total.errors.entry(kind).or_default() += n;
        }
        total.error_samples.extend(out.error_samples);
        total.last_at = total.last_at.max(out.last_at);
    }
    let elapsed = total
        .last_at
        .map_or_else(|| started.elapsed(), |t| t.duration_since(started))
        .as_secs_f64();
    let (server_cpu, bench_cpu) = cpu.read()?;

    let errors: u64 = total.errors.values().sum();
    total.error_samples.truncate(ERROR_SAMPLES);
    let ok = errors == 0 && total.accepted > 0 && opts.requests.is_none_or(|n| total.accepted == n);
    Ok(JobsReport {
        scenario: load.scenario,
        concurrency: opts.concurrency,
        size: body.len(),
        duration_secs: opts.requests.is_none().then_some(opts.duration_secs),
        requests: opts.requests,
        sent: total.sent,
        accepted: total.accepted,
        errors,
        errors_by_status: total.errors,
        elapsed_secs: elapsed,
        submits_per_sec: per_sec(total.accepted, elapsed),
        mib_per_sec: per_sec(total.accepted, elapsed) * body.len() as f64 / (1024.0 * 1024.0),
        latency: Latency::from_micros(&mut total.samples),
        server_cpu_secs: server_cpu,
        submits_per_server_cpu_sec: per_sec(total.accepted, server_cpu),
        server_rss_kib: server.rss_kib().unwrap_or(0),
        server_peak_rss_kib: server.peak_rss_kib().unwrap_or(0),
        bench_cpu_secs: bench_cpu,
        bench_busy: procstat::runtime_share(bench_cpu, elapsed),
        error_samples: total.error_samples,
        ok,
    })
}

/// One client's fixed inputs.
struct Client<'a> {
    target: &'a Target,
    api_key: Option<&'a str>,
    path: &'a str,
    body: &'a Bytes,
    expect: StatusCode,
    budget: Budget,
    next: &'a AtomicU64,
    timeout: Duration,
}

impl Client<'_> {
    fn may_send(&self) -> bool {
        match self.budget {
            Budget::Requests(n) => self.next.fetch_add(1, Ordering::Relaxed) < n,
            Budget::Until(end) => Instant::now() < end,
        }
    }

    /// Submits until the budget is spent. A failed or timed-out connection is replaced;
    /// when that fails too, the client stops.
    async fn submit_until_done(&self, mut conn: HttpConn, out: &mut ClientOutcome) {
        while self.may_send() {
            let req = conn.request(
                Method::POST,
                self.path,
                Some(("application/json", self.body.clone())),
            );
            out.sent += 1;
            let sent_at = Instant::now();
            let broken = match tokio::time::timeout(self.timeout, conn.fetch(req)).await {
                Ok(Ok((status, _))) if status == self.expect => {
                    let now = Instant::now();
                    let micros = now.duration_since(sent_at).as_micros();
                    out.samples.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    out.accepted += 1;
                    out.last_at = Some(now);
                    false
                }
                Ok(Ok((status, answer))) => {
                    out.last_at = Some(Instant::now());
                    out.error(status.as_u16().to_string(), || {
                        format!("{status}: {}", String::from_utf8_lossy(&answer))
                    });
                    false
                }
                Ok(Err(e)) => {
                    out.error("connection".into(), || format!("{e:#}"));
                    true
                }
                Err(_) => {
                    out.error("timeout".into(), || {
                        format!("no answer within {:?}", self.timeout)
                    });
                    true
                }
            };
            if broken {
                match HttpConn::connect(self.target).await {
                    Ok(c) => match c.with_api_key(self.api_key) {
                        Ok(c) => conn = c,
                        Err(_) => return,
                    },
                    Err(e) => {
                        out.error("connection".into(), || format!("reconnect: {e:#}"));
                        return;
                    }
                }
            }
        }
    }
}
