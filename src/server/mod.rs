//! The accept loop and per-connection HTTP/1.1 service, with the connection limit, the
//! slow-consumer abort, and graceful shutdown of every connection. Each connection serves
//! [`api::app`] (built once, cloned per connection) through hyper-util's
//! `TowerToHyperService`, with the connection's [`ConnectionHandle`] put into every request;
//! a connection whose first request is a streaming `GET` is served without hyper
//! ([`streaming_get`]). hyper gets the socket wrapped in [`HyperIo`], which turns its own
//! empty answers to heads it cannot parse (`400`, `414`, `431`) into the API's JSON error.

mod streaming_get;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use dashmap::DashMap;
use http::Request;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{rt::TokioTimer, service::TowerToHyperService};
use std::net::{IpAddr, SocketAddr};
use switchyard_protocol::{ErrorCode, ErrorResponse};
use switchyard_transports::{
    context::ConnectionHandle,
    hyper_io::{HyperIo, ServerIo},
    raw::RawConnection,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

use crate::{api, api::AppState, auth::proxies::limit_key};

/// Most refusals being written at once; past it a refused connection is just closed, so a
/// connection flood cannot make the refusals themselves pile up. (They are not tracked:
/// shutdown need not wait for them.)
const MAX_REFUSING: usize = 256;

/// Accepts connections until `shutdown` fires, each served on its own tracked task.
///
/// A connection past `limits.max_connections` (or its address's limit) is answered with a
/// short JSON error and closed, so the client can tell a full server from a dead one.
pub async fn accept_loop(listener: TcpListener, state: Arc<AppState>, tracker: TaskTracker) {
    let limit = Arc::new(Semaphore::new(state.config.limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let per_ip = Arc::new(PerIpLimit::new(state.config.limits.max_connections_per_ip));
    // A load balancer holds everyone's connections: the per-address limit is for clients.
    let exempt = |ip: IpAddr| state.proxies.contains(ip);
    let shutdown = state.shutdown.clone();
    // Shared, not cloned into each connection's task: a clone of the API stack is about a
    // kilobyte, and an `async fn` keeps its arguments twice for its life.
    let apps = Arc::new((
        api::app::<Incoming>(Arc::clone(&state)),
        api::app::<streaming_get::NoBody>(Arc::clone(&state)),
    ));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    state
                        .refusals
                        .connections_total
                        .fetch_add(1, Ordering::Relaxed);
                    let max = state.config.limits.max_connections;
                    let refusal = Refusal::total(max);
                    if let Ok(turn) = Arc::clone(&refusing).try_acquire_owned() {
                        tokio::spawn(refusal.send(stream, turn));
                    }
                    continue;
                };
                let slot = if exempt(peer.ip()) {
                    Some(None)
                } else {
                    PerIpLimit::acquire(&per_ip, limit_key(peer.ip()))
                };
                match slot {
                    Some(slot) => {
                        let hold = Held {
                            _permit: permit,
                            _slot: slot,
                        };
                        tracker.spawn(serve_connection(
                            stream,
                            peer,
                            Arc::clone(&state),
                            Arc::clone(&apps),
                            hold,
                        ));
                    }
                    None => {
                        state
                            .refusals
                            .connections_per_ip
                            .fetch_add(1, Ordering::Relaxed);
                        let refusal = Refusal::per_ip(state.config.limits.max_connections_per_ip);
                        if let Ok(turn) = Arc::clone(&refusing).try_acquire_owned() {
                            tokio::spawn(refusal.send(stream, turn));
                        }
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: keep
                // serving the connections we have and try again shortly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What an open connection holds; dropped when it (or its upgraded WebSocket) ends.
struct Held {
    _permit: OwnedSemaphorePermit,
    _slot: Option<IpSlot>,
}

/// Open connections per client address, for `limits.max_connections_per_ip`.
struct PerIpLimit {
    max: usize,
    open: DashMap<IpAddr, usize>,
}

/// One connection's place in its address's count.
struct IpSlot {
    limit: Arc<PerIpLimit>,
    ip: IpAddr,
}

impl PerIpLimit {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: DashMap::new(),
        }
    }

    /// A slot for `ip` (`Some(None)` when there is no limit), or `None` when it holds
    /// the most connections allowed.
    fn acquire(limit: &Arc<Self>, ip: IpAddr) -> Option<Option<IpSlot>> {
        if limit.max == 0 {
            return Some(None);
        }
        let mut count = limit.open.entry(ip).or_insert(0);
        if *count >= limit.max {
            return None;
        }
        *count += 1;
        Some(Some(IpSlot {
            limit: Arc::clone(limit),
            ip,
        }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        // Entries at zero are removed, so the map holds only addresses with connections.
        self.limit.open.remove_if_mut(&self.ip, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

/// The answer to a connection past a limit: without one the client could not tell the
/// limit from a network fault.
struct Refusal {
    status: &'static str,
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn total(max: usize) -> Self {
        Self {
            status: "503 Service Unavailable",
            code: ErrorCode::Unavailable,
            message: format!("the server holds its most connections ({max}); retry shortly"),
        }
    }

    fn per_ip(max: usize) -> Self {
        Self {
            status: "429 Too Many Requests",
            code: ErrorCode::RateLimited,
            message: format!(
                "too many connections from this address (at most {max}); close some or retry later"
            ),
        }
    }

    /// Writes the answer and closes, taking at most a few seconds.
    async fn send(self, mut stream: TcpStream, _turn: OwnedSemaphorePermit) {
        let body = ErrorResponse::new(self.code, self.message).to_json();
        let head = format!(
            "HTTP/1.1 {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
            self.status,
            body.len()
        );
        let reply = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes: closing with its request unread
            // would reset the connection, and a reset can destroy the answer in flight.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), reply).await;
    }
}

async fn serve_connection<S, B, R, RB>(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    apps: Arc<(S, R)>,
    held: Held,
) where
    S: tower::Service<Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R: tower::Service<Request<streaming_get::NoBody>, Response = http::Response<RB>> + Clone,
    RB: hyper::body::Body + Unpin,
{
    state.http_connections.fetch_add(1, Ordering::Relaxed);
    let abort = CancellationToken::new();
    let handle = ConnectionHandle {
        abort: abort.clone(),
        // An upgraded WebSocket outlives this task: it keeps the permit alive with it.
        hold: Arc::new(held),
        peer,
    };
    // Each path boxed: a task is as large as its future's largest state, and a stream
    // served raw must not carry hyper's connection state (or the reverse) for its life.
    let raw = Box::pin(serve_streaming_get(stream, &state, &handle, &apps.1)).await;
    if let Some(stream) = raw {
        Box::pin(serve_with_hyper(stream, &state, handle, apps.0.clone())).await;
    }
    state.http_connections.fetch_sub(1, Ordering::Relaxed);
}

/// Serves the connection's first request if it is a streaming `GET` (see
/// [`streaming_get`]); gives the connection back for hyper otherwise, or when that request
/// was answered at once and the connection can go on.
///
/// Each step before the stream is boxed, so that only the stream's own state stays
/// allocated while it is open (a task keeps its future's largest state for its life).
async fn serve_streaming_get<R, RB>(
    stream: TcpStream,
    state: &AppState,
    handle: &ConnectionHandle,
    app: &R,
) -> Option<TcpStream>
where
    R: tower::Service<Request<streaming_get::NoBody>, Response = http::Response<RB>> + Clone,
    RB: hyper::body::Body + Unpin,
{
    let head_timeout = Duration::from_secs(state.config.limits.header_read_timeout_secs);
    let taken = Box::pin(async {
        tokio::select! {
            () = state.shutdown.cancelled() => None,
            taken = tokio::time::timeout(head_timeout, streaming_get::take_request(&stream)) => Some(taken),
        }
    })
    .await;
    let mut request = match taken {
        Some(Ok(Ok(Some(request)))) => request,
        Some(Ok(Ok(None))) => return Some(stream),
        // Shutting down, nothing sent in time (hyper would close it too), or the peer went
        // away.
        _ => return None,
    };
    let keep_alive = !streaming_get::wants_close(&request);
    let raw = RawConnection::new(stream);
    request.extensions_mut().insert(handle.clone());
    request.extensions_mut().insert(raw.clone());
    let Ok(response) = Box::pin(app.clone().oneshot(request)).await else {
        return None;
    };
    let served = streaming_get::respond(&raw, response, keep_alive);
    tokio::pin!(served);
    let outcome = tokio::select! {
        outcome = served.as_mut() => Some(outcome),
        () = state.shutdown.cancelled() => None,
        () = handle.abort.cancelled() => None,
    };
    // The stream ends itself on shutdown (after its goodbye) and on overflow: give it a
    // moment to say why, then drop the connection even if the peer stopped reading.
    let outcome = match outcome {
        Some(outcome) => Some(outcome),
        None => {
            let grace = Duration::from_secs(state.config.consumers.send_timeout_secs);
            Box::pin(tokio::time::timeout(grace, served)).await.ok()
        }
    };
    match outcome {
        Some(streaming_get::Outcome::Hyper(stream)) if !state.shutdown.is_cancelled() => {
            Some(stream)
        }
        _ => None,
    }
}

/// Serves the connection's requests with hyper until it closes.
async fn serve_with_hyper<S, B>(
    stream: TcpStream,
    state: &AppState,
    handle: ConnectionHandle,
    app: S,
) where
    S: tower::Service<Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let abort = handle.abort.clone();
    // Handlers find the connection's address and abort token in each request.
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(handle.clone());
            req
        })
        .service(app);
    let service = TowerToHyperService::new(service);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(
            state.config.limits.header_read_timeout_secs,
        ))
        .serve_connection(ServerIo::new(HyperIo::new(stream)), service)
        .with_upgrades();
    tokio::pin!(conn);
    let grace = Duration::from_secs(state.config.consumers.send_timeout_secs);
    tokio::select! {
        result = conn.as_mut() => log_connection_end(result),
        () = state.shutdown.cancelled() => {
            // Finishes the response in flight (streams end themselves on the same signal),
            // then closes instead of keeping the connection alive.
            conn.as_mut().graceful_shutdown();
            log_connection_end(conn.await);
        }
        () = abort.cancelled() => {
            // A consumer overflowed its queue; give its stream a moment to say why, then
            // drop the connection even if the peer stopped reading.
            if let Ok(result) = tokio::time::timeout(grace, conn.as_mut()).await {
                log_connection_end(result);
            }
        }
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Peers vanish all the time; that is not the server's error.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
