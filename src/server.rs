//! The accept loop and per-connection HTTP/1.1 service, with the connection limit, the
//! slow-consumer abort, and graceful shutdown of every connection.

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use switchyard_transports::context::ConnectionHandle;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::api::{AppState, router};

/// Accepts connections until `shutdown` fires, each served on its own tracked task.
///
/// The connection limit is taken *before* `accept`, so past it new connections wait in the
/// kernel's backlog instead of costing us memory.
pub async fn accept_loop(listener: TcpListener, state: Arc<AppState>, tracker: TaskTracker) {
    let limit = Arc::new(Semaphore::new(state.config.limits.max_connections));
    let shutdown = state.shutdown.clone();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = Arc::clone(&limit).acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(serve_connection(stream, Arc::clone(&state), permit));
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

async fn serve_connection(stream: TcpStream, state: Arc<AppState>, permit: OwnedSemaphorePermit) {
    state.http_connections.fetch_add(1, Ordering::Relaxed);
    let abort = CancellationToken::new();
    let handle = ConnectionHandle {
        abort: abort.clone(),
        // An upgraded WebSocket outlives this task: it keeps the permit alive with it.
        hold: Arc::new(permit),
    };
    let service_state = Arc::clone(&state);
    let service = service_fn(move |mut req| {
        req.extensions_mut().insert(handle.clone());
        let state = Arc::clone(&service_state);
        async move { Ok::<_, Infallible>(router::handle(state, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(
            state.config.limits.header_read_timeout_secs,
        ))
        .serve_connection(TokioIo::new(stream), service)
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
    state.http_connections.fetch_sub(1, Ordering::Relaxed);
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Peers vanish all the time; that is not the server's error.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
