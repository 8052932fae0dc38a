//! The built-in demo worker (`demo.worker`): claims jobs in-process and answers each one as
//! the PollToPush demo's "query" over four countries, like `examples/worker.rs`.
//!
//! It claims *every* queued job, whatever its payload, which is why it is off by default:
//! it is for the one-command demo (`SWITCHYARD_DEMO__WORKER=true cargo run --release`), not
//! for a gateway whose queue real workers share.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json, value::RawValue};
use tokio_util::sync::CancellationToken;

use crate::{
    jobs::Jobs,
    store::{Claimed, Report, StoreError},
};

/// The countries a query runs over unless its payload names others.
pub const COUNTRIES: [&str; 4] = ["Ireland", "France", "Spain", "Germany"];
/// Most countries one job may name (a bigger list is cut to this many).
const MAX_COUNTRIES: usize = 16;
/// How long a claim waits for a job before asking again.
const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// Pause after a store error before claiming again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Claims and answers jobs until `shutdown`. A job being worked on at shutdown is left to
/// its lease: it is requeued when the lease runs out (also across a restart).
pub async fn run_worker(jobs: Arc<Jobs>, delay: Duration, shutdown: CancellationToken) {
    tracing::warn!(
        "demo.worker is on: the built-in demo worker claims every queued job, not only the demo's"
    );
    // The lease covers a few countries' work; each progress report extends it.
    let lease_ms = (delay.as_millis() as u64 * 4 + 10_000).min(jobs.config().max_lease_ms);
    while !shutdown.is_cancelled() {
        match jobs.claim(CLAIM_WAIT, lease_ms, &shutdown).await {
            Ok(Some(claimed)) => answer(&jobs, claimed, delay, &shutdown).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "demo worker: cannot claim");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Works on one job: a progress report per country, then `complete` with the rows (or
/// `fail` with a retry when the payload asks for `"simulate_error": true`).
async fn answer(jobs: &Jobs, claimed: Claimed, delay: Duration, shutdown: &CancellationToken) {
    let id = claimed.job.id.clone();
    let lease = claimed.lease.clone();
    let payload: Value = serde_json::from_slice(&claimed.payload).unwrap_or(Value::Null);
    let countries = countries(&payload);
    tracing::info!(job = %id, countries = countries.len(), "demo worker: claimed");
    let mut rows = Vec::with_capacity(countries.len());
    for (i, country) in countries.iter().enumerate() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        if payload["simulate_error"] == json!(true) {
            let error = json!({
                "code": "query_failed",
                "message": format!("the query backend refused the query for {country}"),
            });
            let report = Report::Fail {
                error: raw(&error),
                retry: true,
            };
            send(jobs, &id, &lease, report).await;
            return;
        }
        rows.push(json!({"country": country, "count": count(country, &payload)}));
        let progress = json!({"country": country, "done": i + 1, "total": countries.len()});
        if !send(jobs, &id, &lease, Report::Progress(raw(&progress))).await {
            return;
        }
    }
    let result = json!({ "rows": rows });
    if send(jobs, &id, &lease, Report::Complete(raw(&result))).await {
        tracing::info!(job = %id, "demo worker: completed");
    }
}

/// The payload's `countries` (strings), or the default four.
fn countries(payload: &Value) -> Vec<String> {
    let named: Vec<String> = payload["countries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
        .filter(|c| !c.is_empty() && c.len() <= 100)
        .take(MAX_COUNTRIES)
        .map(str::to_owned)
        .collect();
    if named.is_empty() {
        COUNTRIES.iter().map(|c| (*c).to_owned()).collect()
    } else {
        named
    }
}

/// The fake "query" for one country: a count derived from the country and the payload
/// (FNV-1a), the same as `examples/worker.rs`, so both workers give the same rows.
fn count(country: &str, payload: &Value) -> u64 {
    let text = format!("{country}:{payload}");
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    1_000 + hash % 9_000_000
}

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("serialized JSON is valid JSON")
}

/// Sends a report; `false` when the job is no longer ours (canceled, lease lost) or the
/// store failed, and the work should stop.
async fn send(jobs: &Jobs, id: &str, lease: &str, report: Report) -> bool {
    match jobs.report(id.to_owned(), lease.to_owned(), report).await {
        Ok(_) => true,
        Err(e @ (StoreError::StaleLease(_) | StoreError::Finished(_) | StoreError::NotFound)) => {
            tracing::info!(job = %id, why = %e, "demo worker: dropping the job");
            false
        }
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "demo worker: report failed; leaving the job to its lease");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_default_to_the_four_of_the_sample() {
        assert_eq!(countries(&json!({"query": "population"})), COUNTRIES);
        assert_eq!(countries(&json!(null)), COUNTRIES);
        assert_eq!(
            countries(&json!({"countries": ["Italy", 3, "", "Malta"]})),
            ["Italy", "Malta"]
        );
        let many: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        assert_eq!(
            countries(&json!({ "countries": many })).len(),
            MAX_COUNTRIES
        );
    }

    #[test]
    fn counts_match_the_example_worker() {
        let payload = json!({"query": "population"});
        assert_eq!(count("Ireland", &payload), count("Ireland", &payload));
        assert_ne!(count("Ireland", &payload), count("France", &payload));
        assert!((1_000..9_001_000).contains(&count("Spain", &payload)));
    }
}
