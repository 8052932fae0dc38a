//! A legacy client: submits a job, then long-polls `GET /v1/jobs/{id}?wait=30` until the
//! job ends, printing each status change and then the result. No streaming, no WebSocket:
//! plain request/response, as strict proxies allow.
//!
//! Run with: `cargo run --release --example long_poll_client`
//! or:       `cargo run --release --example long_poll_client -- --payload '{"query": "area"}'`
//! Options:  `--url http://127.0.0.1:8080` (default), `--payload JSON`, `--api-key KEY`
//!           (needed when the gateway has API keys: a key with the `jobs` scope).
//!
//! The submit uses the API key; the reads use only the job `token` the 202 returns, which
//! is all an untrusted client (a browser, a device) should hold.
//! Exits 0 when the job succeeded, 1 when it failed or was canceled.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: Uri,
    /// The job's payload: any JSON document, sent as given.
    #[arg(
        long,
        default_value = r#"{"query": "population", "countries": ["Ireland", "France", "Spain", "Germany"]}"#
    )]
    payload: String,
    /// An API key with the `jobs` scope, for gateways with `auth.api_keys`.
    #[arg(long)]
    api_key: Option<String>,
}

/// Sends one request on a fresh connection (a JSON body when given); returns the status and
/// the JSON body.
async fn call(
    base: &Uri,
    method: Method,
    path: &str,
    body: Option<String>,
    bearer: Option<&str>,
) -> anyhow::Result<(StatusCode, Value)> {
    let authority = base.authority().context("--url needs a host")?.clone();
    let host = authority.host().trim_matches(['[', ']']);
    let stream = TcpStream::connect((host, authority.port_u16().unwrap_or(80))).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority.as_str());
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(token) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let res = sender
        .send_request(req.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
        .await?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, json))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (status, submitted) = call(
        &args.url,
        Method::POST,
        "/v1/jobs",
        Some(args.payload.clone()),
        args.api_key.as_deref(),
    )
    .await?;
    if status != StatusCode::ACCEPTED {
        anyhow::bail!("submit answered {status}: {submitted}");
    }
    println!("submitted: {submitted}");
    let id = submitted["id"]
        .as_str()
        .context("202 without id")?
        .to_owned();
    let token = submitted["token"].as_str().map(str::to_owned);
    let mut last = submitted["status"].as_str().unwrap_or("queued").to_owned();
    println!("status: {last}");

    // Each request is held until the job's status differs from the last one seen (answered
    // at once if it already does) or 30 s pass; then ask again.
    let job = loop {
        let job = match call(
            &args.url,
            Method::GET,
            &format!("/v1/jobs/{id}?wait=30&status={last}"),
            None,
            token.as_deref(),
        )
        .await
        {
            Ok((StatusCode::OK, job)) => job,
            Ok((status, body)) => anyhow::bail!("GET /v1/jobs/{id} answered {status}: {body}"),
            Err(e) => {
                println!("poll failed ({e}); retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let status = job["status"]
            .as_str()
            .context("job without status")?
            .to_owned();
        if status != last {
            println!(
                "status: {last} -> {status} (attempts {}/{})",
                job["attempts"], job["max_attempts"]
            );
            last = status;
        }
        if matches!(last.as_str(), "succeeded" | "failed" | "canceled") {
            break job;
        }
    };
    match last.as_str() {
        "succeeded" => {
            println!("result: {}", job["result"]);
            Ok(())
        }
        _ => {
            match job.get("error") {
                Some(error) => println!("job {last}: {error}"),
                None => println!("job {last}"),
            }
            std::process::exit(1);
        }
    }
}
