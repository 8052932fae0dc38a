//! A job worker in the style of AWS's "PollToPush" sample: it claims jobs, runs each job's
//! payload as a "query" over four countries, reports progress after each country and
//! completes the job with the rows; the gateway pushes every step to `jobs/{id}`.
//!
//! Run with: `cargo run --release --example worker`
//! or:       `cargo run --release --example worker -- --once --delay-ms 100`
//! Options:  `--url http://127.0.0.1:8080` (default), `--once` (handle one job, then exit),
//!           `--delay-ms 500` (simulated work per country), `--api-key KEY` (a key with the
//!           `work` scope, when the gateway has API keys).
//!
//! A payload with `"simulate_error": true` makes the work fail, to show `fail` with
//! `retry: true` (the gateway requeues the job until its attempts run out).

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const COUNTRIES: [&str; 4] = ["Ireland", "France", "Spain", "Germany"];

#[derive(Parser)]
struct Args {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: Uri,
    /// Handle one job, then exit.
    #[arg(long)]
    once: bool,
    /// Simulated work per country, in milliseconds.
    #[arg(long, default_value_t = 500)]
    delay_ms: u64,
    /// An API key with the `work` scope, for gateways with `auth.api_keys`.
    #[arg(long)]
    api_key: Option<String>,
}

/// Sends one request on a fresh connection; returns the status and the JSON body (`null`
/// when empty).
async fn call(
    base: &Uri,
    api_key: Option<&str>,
    method: Method,
    path: &str,
    body: Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let authority = base.authority().context("--url needs a host")?.clone();
    let host = authority.host().trim_matches(['[', ']']);
    let stream = TcpStream::connect((host, authority.port_u16().unwrap_or(80))).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority.as_str())
        .header(header::CONTENT_TYPE, "application/json");
    let req = match api_key {
        Some(key) => req.header(header::AUTHORIZATION, format!("Bearer {key}")),
        None => req,
    }
    .body(Full::new(Bytes::from(body.to_string())))?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, json))
}

/// The fake "query" for one country: a count derived from the country and the payload
/// (FNV-1a), so the same job always gives the same rows.
fn count(country: &str, payload: &Value) -> anyhow::Result<u64> {
    if payload["simulate_error"] == json!(true) {
        bail!("the query backend refused the query for {country}");
    }
    let text = format!("{country}:{payload}");
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Ok(1_000 + hash % 9_000_000)
}

/// How handling a claimed job ended.
enum Outcome {
    /// Accepted: the job as it now is.
    Reported(Value),
    /// 409: the lease is no longer ours (expired, canceled, or the job ended).
    LeaseLost(String),
}

/// Posts a report under the lease; a 409 becomes [`Outcome::LeaseLost`].
async fn report(args: &Args, id: &str, action: &str, body: Value) -> anyhow::Result<Outcome> {
    let (status, res) = call(
        &args.url,
        args.api_key.as_deref(),
        Method::POST,
        &format!("/v1/jobs/{id}/{action}"),
        body,
    )
    .await?;
    match status {
        StatusCode::OK => Ok(Outcome::Reported(res)),
        StatusCode::CONFLICT => Ok(Outcome::LeaseLost(
            res["error"]["message"].as_str().unwrap_or("409").to_owned(),
        )),
        _ => bail!("{action} answered {status}: {res}"),
    }
}

/// Runs the query, reporting progress per country, then completes the job.
async fn work(args: &Args, id: &str, lease: &str, payload: &Value) -> anyhow::Result<Outcome> {
    let mut rows = Vec::new();
    for (i, country) in COUNTRIES.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
        rows.push(json!({"country": country, "count": count(country, payload)?}));
        let data = json!({"country": country, "done": i + 1, "total": COUNTRIES.len()});
        if let Outcome::LeaseLost(why) =
            report(args, id, "progress", json!({"lease": lease, "data": data})).await?
        {
            return Ok(Outcome::LeaseLost(why));
        }
        println!(
            "job {id}: progress {}/{} ({country})",
            i + 1,
            COUNTRIES.len()
        );
    }
    let outcome = report(
        args,
        id,
        "complete",
        json!({"lease": lease, "result": {"rows": rows}}),
    )
    .await?;
    if let Outcome::Reported(_) = outcome {
        println!("job {id}: completed with {} rows", rows.len());
    }
    Ok(outcome)
}

/// Handles one claimed job: work, and on an error from the work, `fail` with a retry.
async fn handle(args: &Args, claimed: &Value) -> anyhow::Result<()> {
    let job = &claimed["job"];
    let id = job["id"].as_str().context("claim without job.id")?;
    let lease = claimed["lease"].as_str().context("claim without lease")?;
    println!(
        "job {id}: claimed (attempt {}/{}), lease until {}, payload {}",
        job["attempts"],
        job["max_attempts"],
        claimed["lease_expires_at"].as_str().unwrap_or("?"),
        job["payload"]
    );
    let outcome = match work(args, id, lease, &job["payload"]).await {
        Ok(outcome) => outcome,
        Err(e) => {
            println!("job {id}: work failed: {e}; reporting fail with retry");
            let error = json!({"code": "query_failed", "message": e.to_string()});
            let outcome = report(
                args,
                id,
                "fail",
                json!({"lease": lease, "error": error, "retry": true}),
            )
            .await?;
            if let Outcome::Reported(job) = &outcome {
                // `queued` again while attempts remain, `failed` after the last one.
                println!(
                    "job {id}: reported fail; the job is now {}",
                    job["status"].as_str().unwrap_or("?")
                );
            }
            outcome
        }
    };
    if let Outcome::LeaseLost(why) = outcome {
        println!("job {id}: lease lost ({why}); dropping it and moving on");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("worker: polling {} for jobs", args.url);
    loop {
        // Held by the gateway up to wait_ms; 204 means nothing arrived in that time.
        let claim = json!({"wait_ms": 30000, "lease_ms": 30000});
        let claimed = match call(
            &args.url,
            args.api_key.as_deref(),
            Method::POST,
            "/v1/jobs/claim",
            claim,
        )
        .await
        {
            Ok((StatusCode::OK, claimed)) => claimed,
            Ok((StatusCode::NO_CONTENT, _)) => {
                println!("worker: no job yet, claiming again");
                continue;
            }
            Ok((status, body)) => {
                println!("worker: claim answered {status}: {body}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                println!("worker: cannot reach the gateway ({e}); retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = handle(&args, &claimed).await {
            // The lease runs out and the gateway requeues the job for another attempt.
            println!("worker: {e:#}; leaving the job to its lease");
        }
        if args.once {
            return Ok(());
        }
    }
}
