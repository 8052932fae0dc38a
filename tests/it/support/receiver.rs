//! A real webhook receiver on an ephemeral port: records every request and answers with
//! the statuses a test scripts (then a default), or never answers at all.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Scripted answers: a status and an optional `Retry-After`, in order.
type Script = Arc<Mutex<VecDeque<(u16, Option<&'static str>)>>>;

pub struct Receiver {
    pub addr: SocketAddr,
    hits: mpsc::UnboundedReceiver<Hit>,
    script: Script,
}

/// How the receiver answers.
#[derive(Clone, Copy)]
pub enum Mode {
    /// Scripted statuses, then 200.
    Answer,
    /// Reads the request and never answers (a dead endpoint).
    Hang,
    /// Never answers the first request (a delivery in flight when its sender dies), then
    /// answers like `Answer`.
    HangFirst,
}

impl Receiver {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, hits) = mpsc::unbounded_channel();
        let script: Script = Arc::default();
        let script_in = Arc::clone(&script);
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let script = Arc::clone(&script_in);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        let script = Arc::clone(&script);
                        let seen = Arc::clone(&seen);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let _ = tx.send(Hit {
                                headers: parts.headers,
                                body,
                            });
                            let first = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                            if matches!(mode, Mode::Hang)
                                || (matches!(mode, Mode::HangFirst) && first)
                            {
                                std::future::pending::<()>().await;
                            }
                            let (status, retry_after) =
                                script.lock().unwrap().pop_front().unwrap_or((200, None));
                            let mut res = Response::new(Full::new(Bytes::new()));
                            *res.status_mut() = StatusCode::from_u16(status).unwrap();
                            if let Some(after) = retry_after {
                                res.headers_mut()
                                    .insert("retry-after", after.parse().unwrap());
                            }
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, hits, script }
    }

    /// The URL of a path on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer the next requests with these statuses (then 200 again).
    pub fn script(&self, statuses: &[u16]) {
        self.script
            .lock()
            .unwrap()
            .extend(statuses.iter().map(|s| (*s, None)));
    }

    /// Answer the next request with this status and `Retry-After`.
    pub fn script_retry_after(&self, status: u16, seconds: &'static str) {
        self.script
            .lock()
            .unwrap()
            .push_back((status, Some(seconds)));
    }

    /// The next request, within the test timeout.
    pub async fn next(&mut self) -> Hit {
        super::within("a webhook request", self.hits.recv())
            .await
            .expect("receiver running")
    }

    /// Whether a request arrived within `wait`.
    pub async fn try_next(&mut self, wait: std::time::Duration) -> Option<Hit> {
        tokio::time::timeout(wait, self.hits.recv())
            .await
            .ok()
            .flatten()
    }
}
