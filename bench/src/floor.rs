//! The `floor` scenario: the least server CPU one delivery can cost on this machine, to
//! compare a server's CPU per delivery with. It is `bench/floor/writefloor.c` in the bench:
//! a writer accepts N loopback connections and writes one S-byte message to each, E rounds
//! at R rounds per second, with one blocking `write()` per delivery (no event loop, no
//! framing, no fan-out structure), and its own CPU time is what a delivery costs.
//!
//! The writer is a dedicated thread with plain `std::net` sockets (`TCP_NODELAY`, as
//! servers set it), measured alone through `/proc/thread-self/stat`; the readers, which
//! stand for the subscribers, drain the connections with a single-threaded tokio runtime
//! in another thread and check every byte arrived. On loopback a `write()` also runs the receiving side's TCP
//! input in the writer's context, as it does for a server's writes, so the figure is the
//! kernel's share of any server's delivery, and a server's ratio to it is the cost of
//! everything else it does.
//!
//! Rounds are paced like the publisher paces events (round i at i/R seconds after the
//! first), not by a fixed pause after each round as `writefloor.c` does; at 1k connections
//! a round takes a fraction of the 50 ms between rounds, and both give the same figure.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::AsyncReadExt as _,
    sync::{OwnedSemaphorePermit, Semaphore, oneshot},
    task::JoinSet,
    time::Instant,
};

use crate::{
    fanout::us_per, limits, procstat::Proc, report::FloorReport, stall::StallWatch, stats::per_sec,
};

/// Options of `floor`.
#[derive(Clone, Debug, clap::Args)]
pub struct FloorOptions {
    /// Connections written to (the subscribers).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Rounds (events) per second; 0 = back to back.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Rounds: each writes one message to every connection.
    #[arg(long, default_value_t = 200)]
    pub events: u64,
    /// Size of each message, bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Connections being opened at once (kept under the listener's backlog).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Read buffer of each reader, bytes.
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,
    /// Stop and report when nothing was accepted, written or read for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub stall_secs: u64,
}

impl FloorOptions {
    /// Options with the command line's defaults for `subscribers` x `events`.
    pub fn new(subscribers: usize, events: u64) -> Self {
        Self {
            subscribers,
            rate: 20.0,
            events,
            size: 200,
            concurrency: 64,
            read_buffer: 4096,
            stall_secs: 10,
        }
    }
}

/// What the writer did.
#[derive(Debug, Default)]
struct Written {
    /// Messages written whole (a partial write finished with `write_all` counts once).
    writes: u64,
    /// `write()` calls that took part of a message.
    partial: u64,
    /// Failed writes, and the first error.
    errors: u64,
    first_error: Option<String>,
    /// The writer thread's CPU seconds over the rounds.
    cpu_secs: f64,
    /// Wall seconds over the rounds.
    wall_secs: f64,
}

/// The writer's side of a run, shared with the bench's tasks.
struct Shared {
    /// Accepted connections plus messages written: moves while the writer is alive.
    progress: AtomicU64,
    /// Set when the bench gives up: the writer stops accepting (woken by a connection).
    abort: AtomicBool,
}

/// Runs `floor`.
///
/// # Errors
/// Bad options, too many connections for the open-files limit, or a writer that could not
/// start. A stall or lost bytes are not errors: they are in the report (`ok: false`).
pub async fn run(opts: &FloorOptions) -> anyhow::Result<FloorReport> {
    if opts.subscribers == 0 || opts.events == 0 || opts.size == 0 {
        bail!("--subscribers, --events and --size must be at least 1");
    }
    if !(opts.rate >= 0.0 && opts.rate.is_finite()) {
        bail!("--rate must be a number >= 0");
    }
    // Both ends of every connection live in this process.
    if let Some(limit) = limits::read()
        && 2 * opts.subscribers as u64 + limits::HEADROOM > limit.soft
    {
        bail!("{}", limits::too_many_message(2 * opts.subscribers));
    }
    let n = opts.subscribers;
    let (listener, addr) = listen()?;
    let shared = Arc::new(Shared {
        progress: AtomicU64::new(0),
        abort: AtomicBool::new(false),
    });
    let (started_tx, mut started_rx) = oneshot::channel();
    let (done_tx, mut done_rx) = oneshot::channel();
    {
        let (shared, opts) = (Arc::clone(&shared), opts.clone());
        std::thread::Builder::new()
            .name("floor-writer".into())
            .spawn(move || {
                let written = write_rounds(listener, &opts, &shared, started_tx);
                let _ = done_tx.send(written);
            })
            .context("starting the writer thread")?;
    }

    let per_connection = opts.events * opts.size as u64;
    let received = Arc::new(AtomicU64::new(0));
    let (stop_readers, stop) = oneshot::channel();
    let opened = Instant::now();
    let mut readers_done = spawn_readers(addr, opts, Arc::clone(&received), stop)?;

    let stall = Duration::from_secs(opts.stall_secs);
    let mut watch = StallWatch::new(stall);
    let mut errors = Vec::new();
    let mut connect_secs = 0.0;
    let mut bench_cpu_start = None;
    let mut bench_cpu_end = None;
    let mut started_seen = false;
    let mut written = None;
    let mut readers_ended = false;
    let mut stalled = false;
    // Until the writer is done and every reader has its bytes (all sent by then: loopback
    // writes land in the receiver's buffer before `write()` returns), or nothing moves.
    while written.is_none() || !readers_ended {
        tokio::select! {
            w = &mut done_rx, if written.is_none() => {
                bench_cpu_end = Some(Proc::this().cpu_secs()?);
                written = Some(w);
            }
            started = &mut started_rx, if !started_seen => {
                started_seen = true;
                if started.is_ok() {
                    connect_secs = opened.elapsed().as_secs_f64();
                    bench_cpu_start = Some(Proc::this().cpu_secs()?);
                }
            }
            ended = &mut readers_done, if !readers_ended => {
                readers_ended = true;
                match ended {
                    Ok(reader_errors) => errors.extend(reader_errors),
                    Err(_) => errors.push("the readers' thread ended without a result".into()),
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let now = (
            shared.progress.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed),
        );
        if watch.is_stalled(now) {
            stalled = true;
            break;
        }
    }
    let _ = stop_readers.send(());
    if stalled {
        // A writer still waiting for connections: wake it so that it sees `abort`.
        shared.abort.store(true, Ordering::Relaxed);
        let _ = tokio::net::TcpStream::connect(addr).await;
        errors.push(format!(
            "stalled: {} of {n} connections accepted or messages written, {} of {} bytes read",
            shared.progress.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed),
            per_connection * n as u64
        ));
    }
    let written = match written {
        Some(Ok(Ok(w))) => w,
        Some(Ok(Err(e))) => {
            errors.push(format!("writer: {e:#}"));
            Written::default()
        }
        Some(Err(_)) => {
            errors.push("the writer thread ended without a result".into());
            Written::default()
        }
        None => Written::default(),
    };
    if let Some(e) = &written.first_error {
        errors.push(format!("write: {e}"));
    }
    errors.truncate(8);

    let expected_deliveries = n as u64 * opts.events;
    let expected_bytes = expected_deliveries * opts.size as u64;
    let received_bytes = received.load(Ordering::Relaxed);
    let bench_cpu_secs = match (bench_cpu_start, bench_cpu_end) {
        (Some(start), Some(end)) => (end - start - written.cpu_secs).max(0.0),
        _ => 0.0,
    };
    let ok = !stalled
        && written.writes == expected_deliveries
        && written.errors == 0
        && received_bytes == expected_bytes
        && errors.is_empty();
    Ok(FloorReport {
        scenario: "floor",
        subscribers: n,
        events: opts.events,
        rate: opts.rate,
        size: opts.size,
        connect_secs,
        expected_deliveries,
        writes: written.writes,
        partial_writes: written.partial,
        write_errors: written.errors,
        write_secs: written.wall_secs,
        round_rate: per_sec(opts.events, written.wall_secs),
        expected_bytes,
        received_bytes,
        server_cpu_secs: written.cpu_secs,
        server_cpu_us_per_delivery: us_per(written.cpu_secs, written.writes),
        deliveries_per_server_cpu_sec: per_sec(written.writes, written.cpu_secs),
        bench_cpu_secs,
        // The readers have one thread.
        bench_busy: bench_cpu_secs / written.wall_secs.max(1e-9),
        stalled,
        errors,
        ok,
    })
}

/// The writer's listener on a free loopback port, blocking, with a backlog of 4096 (the
/// usual `somaxconn`): a reader's connect completes once the kernel has queued the
/// connection, before the writer accepts it, so connects can run ahead of accepts; under
/// std's backlog of 128, the queue overflowed now and then and a dropped SYN cost a second.
fn listen() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let socket = tokio::net::TcpSocket::new_v4().context("writer's socket")?;
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("binding the writer's listener")?;
    let listener = socket.listen(4096).context("listen")?.into_std()?;
    listener.set_nonblocking(false)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Starts the readers: a thread of their own with a single-threaded runtime, as
/// `writefloor.c` has one reading process, whatever the bench's runtime is (`compare` runs
/// the floor inside fan-out's two threads). They connect `opts.subscribers` times to `addr`
/// and read until every connection has had its bytes, or `stop`; the answer is their
/// errors.
fn spawn_readers(
    addr: SocketAddr,
    opts: &FloorOptions,
    received: Arc<AtomicU64>,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<oneshot::Receiver<Vec<String>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the readers' runtime")?;
    let (done_tx, done_rx) = oneshot::channel();
    let opts = opts.clone();
    std::thread::Builder::new()
        .name("floor-readers".into())
        .spawn(move || {
            let errors = runtime.block_on(read_every(addr, &opts, received, stop));
            let _ = done_tx.send(errors);
        })
        .context("starting the readers' thread")?;
    Ok(done_rx)
}

/// Connects and drains every connection (at most `opts.concurrency` connecting at once).
async fn read_every(
    addr: SocketAddr,
    opts: &FloorOptions,
    received: Arc<AtomicU64>,
    stop: oneshot::Receiver<()>,
) -> Vec<String> {
    let per_connection = opts.events * opts.size as u64;
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut readers = JoinSet::new();
    let mut errors = Vec::new();
    let all = async {
        for _ in 0..opts.subscribers {
            let permit = Arc::clone(&gate)
                .acquire_owned()
                .await
                .expect("the gate is never closed");
            let received = Arc::clone(&received);
            let buffer = opts.read_buffer.max(1);
            readers.spawn(read_all(addr, permit, per_connection, buffer, received));
        }
        while let Some(joined) = readers.join_next().await {
            keep_error(joined, &mut errors);
        }
    };
    tokio::select! {
        () = all => {}
        _ = stop => {}
    }
    errors
}

/// Keeps a reader's failure.
fn keep_error(
    joined: Result<anyhow::Result<()>, tokio::task::JoinError>,
    errors: &mut Vec<String>,
) {
    let error = match joined {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("reader: {e:#}"),
        Err(e) => format!("reader task: {e}"),
    };
    if errors.len() < 5 {
        errors.push(error);
    }
}

/// One reader: connects (holding `permit` until then) and reads until `expected` bytes.
async fn read_all(
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
    expected: u64,
    buffer: usize,
    received: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    drop(permit);
    let mut buf = vec![0u8; buffer];
    let mut got = 0u64;
    while got < expected {
        let k = stream.read(&mut buf).await.context("read")?;
        if k == 0 {
            bail!("connection closed after {got} of {expected} bytes");
        }
        got += k as u64;
        received.fetch_add(k as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// The writer thread: accepts every connection, says so on `started`, then writes the
/// rounds with one `write()` per message and measures its own CPU over them.
fn write_rounds(
    listener: TcpListener,
    opts: &FloorOptions,
    shared: &Shared,
    started: oneshot::Sender<()>,
) -> anyhow::Result<Written> {
    let mut conns: Vec<TcpStream> = Vec::with_capacity(opts.subscribers);
    while conns.len() < opts.subscribers {
        let (stream, _) = listener.accept().context("accept")?;
        if shared.abort.load(Ordering::Relaxed) {
            bail!("stopped after {} connections", conns.len());
        }
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        conns.push(stream);
        shared.progress.fetch_add(1, Ordering::Relaxed);
    }
    drop(listener);
    let _ = started.send(());
    let message = vec![b'x'; opts.size];
    let mut out = Written::default();
    let me = Proc::this_thread();
    let cpu_start = me.cpu_secs()?;
    let start = std::time::Instant::now();
    for round in 0..opts.events {
        if opts.rate > 0.0 {
            let due = start + Duration::from_secs_f64(round as f64 / opts.rate);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        for conn in &mut conns {
            match conn.write(&message) {
                Ok(k) if k == message.len() => out.writes += 1,
                Ok(k) => {
                    out.partial += 1;
                    match conn.write_all(&message[k..]) {
                        Ok(()) => out.writes += 1,
                        Err(e) => failed(&mut out, &e),
                    }
                }
                Err(e) => failed(&mut out, &e),
            }
        }
        shared
            .progress
            .fetch_add(conns.len() as u64, Ordering::Relaxed);
    }
    out.wall_secs = start.elapsed().as_secs_f64();
    out.cpu_secs = me.cpu_secs()? - cpu_start;
    Ok(out)
}

fn failed(out: &mut Written, e: &std::io::Error) {
    out.errors += 1;
    out.first_error.get_or_insert_with(|| e.to_string());
}
