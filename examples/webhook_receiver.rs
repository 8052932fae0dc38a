//! A webhook endpoint: verifies each delivery's Standard Webhooks signature, drops
//! duplicates by `webhook-id`, and prints the event.
//!
//! Run with: `cargo run --release --example webhook_receiver -- --secret whsec_...`
//! or:       `WEBHOOK_SECRET=whsec_... cargo run --release --example webhook_receiver`
//! Options:  `--listen 127.0.0.1:9000` (default).
//! Answers 204 for a new verified event, 200 for a verified duplicate, 400 with the reason for
//! a missing header, bad signature, stale timestamp or non-envelope body, 413 past 1 MiB.

use std::{
    collections::{HashSet, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use switchyard_protocol::{
    Envelope,
    webhook::{self, WebhookSecret},
};
use tokio::net::TcpListener;

/// Largest body accepted; anything longer gets 413.
const MAX_BODY: usize = 1 << 20;
/// How many recent `webhook-id`s are remembered for dedupe.
const REMEMBERED_IDS: usize = 10_000;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The endpoint's signing secret, `whsec_...`.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
}

/// The last `REMEMBERED_IDS` ids, oldest first in `order`: bounded memory however long it runs.
#[derive(Default)]
struct SeenIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl SeenIds {
    /// Remembers `id`; false when it was already remembered (a duplicate).
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == REMEMBERED_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

struct State {
    secret: WebhookSecret,
    seen: Mutex<SeenIds>,
}

fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Result<&'a str, String> {
    req.headers()
        .get(name)
        .ok_or_else(|| format!("missing {name} header"))?
        .to_str()
        .map_err(|_| format!("{name} header is not ASCII"))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut res = reply(StatusCode::METHOD_NOT_ALLOWED, "only POST");
        res.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return res;
    }
    let headers = (|| {
        Ok::<_, String>((
            header_str(&req, webhook::HEADER_WEBHOOK_ID)?.to_owned(),
            header_str(&req, webhook::HEADER_WEBHOOK_TIMESTAMP)?.to_owned(),
            header_str(&req, webhook::HEADER_WEBHOOK_SIGNATURE)?.to_owned(),
        ))
    })();
    let (id, timestamp, signature) = match headers {
        Ok(h) => h,
        Err(reason) => {
            eprintln!("rejected: {reason}");
            return reply(StatusCode::BAD_REQUEST, &reason);
        }
    };

    // The raw bytes, exactly as signed: never parse and re-serialize before verifying.
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            eprintln!("rejected {id}: body over {MAX_BODY} bytes");
            return reply(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB");
        }
        Err(e) => {
            eprintln!("rejected {id}: reading the body: {e}");
            return reply(StatusCode::BAD_REQUEST, "could not read the body");
        }
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Err(e) = webhook::verify(
        &state.secret,
        &id,
        &timestamp,
        &signature,
        &body,
        now,
        webhook::DEFAULT_TOLERANCE_SECS,
    ) {
        eprintln!("rejected {id}: {e}");
        return reply(StatusCode::BAD_REQUEST, &e.to_string());
    }

    let event: Envelope = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            eprintln!("rejected {id}: not an event envelope: {e}");
            return reply(StatusCode::BAD_REQUEST, "body is not an event envelope");
        }
    };

    // Check and remember in one step, so two concurrent retries can't both get through.
    if !state.seen.lock().expect("poisoned").insert(&id) {
        println!("{id}: duplicate, ignored");
        return reply(StatusCode::OK, "duplicate, ignored");
    }
    println!(
        "{id}: channel={} offset={} type={} data={}",
        event.channel, event.offset, event.event_type, event.data
    );
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::NO_CONTENT;
    res
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret = WebhookSecret::parse(args.secret.trim())?;
    let state = Arc::new(State {
        secret,
        seen: Mutex::default(),
    });
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);

    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_are_bounded_and_forget_the_oldest() {
        let mut seen = SeenIds::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..REMEMBERED_IDS {
            assert!(seen.insert(&i.to_string()));
        }
        assert_eq!(seen.set.len(), REMEMBERED_IDS);
        assert_eq!(seen.order.len(), REMEMBERED_IDS);
        // "a" was the oldest, so it was forgotten; the newest are still remembered.
        assert!(seen.insert("a"));
        assert!(!seen.insert(&(REMEMBERED_IDS - 1).to_string()));
    }
}
