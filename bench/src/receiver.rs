//! The built-in webhook receiver: an HTTP/1 server on a local port that verifies each
//! delivery's Standard Webhooks signature, answers `204`, and counts what arrived.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    HeaderMap, Request, Response, StatusCode, body::Incoming, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use switchyard_protocol::webhook::{
    self, DEFAULT_TOLERANCE_SECS, HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE,
    HEADER_WEBHOOK_TIMESTAMP, WebhookSecret,
};
use tokio::{net::TcpListener, task::JoinSet};

use crate::{
    envelope,
    tracker::{Tracker, unix_micros},
};

/// The path deliveries are posted to.
pub const HOOK_PATH: &str = "/hook";
/// Reasons for bad deliveries kept for the report, at most.
const ERROR_SAMPLES: usize = 5;

/// What the receiver counted.
#[derive(Debug)]
pub struct Deliveries {
    /// Offsets `1..=events` of the first delivery of each `webhook-id`, with latencies.
    pub tracker: Tracker,
    ids: HashSet<Box<str>>,
    /// Requests received, verified or not.
    pub requests: u64,
    /// Verified deliveries whose `webhook-id` had been seen before (at-least-once
    /// delivery allows them).
    pub duplicates: u64,
    /// Deliveries with missing headers or a signature that does not verify.
    pub bad_signatures: u64,
    /// Why the first few bad ones were bad.
    pub errors: Vec<String>,
}

impl Deliveries {
    fn new(events: u64) -> Self {
        Self {
            tracker: Tracker::new(events, Tracker::stride_for(1, events)),
            ids: HashSet::new(),
            requests: 0,
            duplicates: 0,
            bad_signatures: 0,
            errors: Vec::new(),
        }
    }

    fn bad(&mut self, why: String) {
        self.bad_signatures += 1;
        if self.errors.len() < ERROR_SAMPLES {
            self.errors.push(why);
        }
    }
}

/// A listening socket, before the secret is known (it comes with the endpoint, which needs
/// the socket's URL first).
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    /// Binds `addr` (port 0: any free port).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the webhook receiver to {addr}"))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The URL to register: `http://{addr}/hook`.
    pub fn url(&self) -> String {
        format!("http://{}{HOOK_PATH}", self.addr)
    }

    /// Starts serving; deliveries are verified with `secret` and offsets `1..=events`
    /// expected.
    pub fn start(self, secret: WebhookSecret, events: u64) -> Receiver {
        let shared = Arc::new(Shared {
            secret,
            progress: AtomicU64::new(0),
            deliveries: Mutex::new(Deliveries::new(events)),
        });
        let task = tokio::spawn(accept_loop(self.listener, Arc::clone(&shared)));
        Receiver { shared, task }
    }
}

/// A running receiver. Stopping it (or dropping it) closes the socket and every
/// connection.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Distinct deliveries so far (first arrivals of each `webhook-id`, verified).
    pub fn distinct(&self) -> u64 {
        self.shared.progress.load(Ordering::Relaxed)
    }

    /// Stops serving and returns the counts.
    pub async fn stop(self) -> Deliveries {
        self.task.abort();
        let _ = self.task.await;
        let mut deliveries = self.shared.deliveries.lock().expect("not poisoned");
        std::mem::replace(&mut *deliveries, Deliveries::new(0))
    }
}

#[derive(Debug)]
struct Shared {
    secret: WebhookSecret,
    /// Distinct verified deliveries, read by the scenario's wait loop without the lock.
    progress: AtomicU64,
    /// Held for a few hash-set and bitmap updates per delivery, never across an await.
    deliveries: Mutex<Deliveries>,
}

impl Shared {
    fn record(&self, headers: &HeaderMap, body: &[u8], now_us: u64) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let id = header(HEADER_WEBHOOK_ID);
        let verified = match (
            id,
            header(HEADER_WEBHOOK_TIMESTAMP),
            header(HEADER_WEBHOOK_SIGNATURE),
        ) {
            (Some(id), Some(ts), Some(sig)) => {
                let now = (now_us / 1_000_000) as i64;
                webhook::verify(&self.secret, id, ts, sig, body, now, DEFAULT_TOLERANCE_SECS)
                    .map_err(|e| format!("delivery {id}: {e}"))
            }
            _ => Err("a delivery without the webhook-id/-timestamp/-signature headers".into()),
        };
        let mut d = self.deliveries.lock().expect("not poisoned");
        d.requests += 1;
        match (verified, id) {
            (Err(why), _) => d.bad(why),
            (Ok(()), Some(id)) => {
                if d.ids.insert(id.into()) {
                    d.tracker.record(envelope::parse(body), now_us);
                    self.progress.fetch_add(1, Ordering::Relaxed);
                } else {
                    d.duplicates += 1;
                }
            }
            (Ok(()), None) => unreachable!("verified deliveries have an id"),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped with this task when the receiver stops, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&shared), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    shared.record(&parts.headers, &body, unix_micros());
    // 204 even for a bad signature: it is counted here, and a refusal would only bring
    // retries that blur the run's figures.
    let mut res = Response::new(Empty::new());
    *res.status_mut() = StatusCode::NO_CONTENT;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_WEBHOOK_ID, id.parse().unwrap());
        h.insert(HEADER_WEBHOOK_TIMESTAMP, ts.to_string().parse().unwrap());
        h.insert(HEADER_WEBHOOK_SIGNATURE, sig.parse().unwrap());
        h
    }

    #[test]
    fn verifies_dedupes_and_tracks() {
        let secret = WebhookSecret::from_bytes(vec![7; 32]).unwrap();
        let shared = Shared {
            secret: secret.clone(),
            progress: AtomicU64::new(0),
            deliveries: Mutex::new(Deliveries::new(2)),
        };
        let now_us = unix_micros();
        let ts = (now_us / 1_000_000) as i64;
        let body =
            format!(r#"{{"id":"c:1","channel":"c","offset":1,"data":{{"ts_us":{now_us}}}}}"#);
        let sig = webhook::sign(&secret, "c:1", ts, body.as_bytes());
        shared.record(&headers("c:1", ts, &sig), body.as_bytes(), now_us);
        shared.record(&headers("c:1", ts, &sig), body.as_bytes(), now_us);
        shared.record(&headers("c:2", ts, &sig), body.as_bytes(), now_us);
        shared.record(&HeaderMap::new(), body.as_bytes(), now_us);
        let d = shared.deliveries.into_inner().unwrap();
        assert_eq!((d.requests, d.duplicates, d.bad_signatures), (4, 1, 2));
        assert_eq!((d.tracker.distinct, d.tracker.lost()), (1, 1));
        assert_eq!(d.tracker.samples.len(), 1);
        assert_eq!(shared.progress.load(Ordering::Relaxed), 1);
    }
}
