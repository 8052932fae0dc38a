//! Before a handler runs: who the caller is, whether they are within their rate, and
//! whether their credential allows the route (refusals are [`ApiError`]s).

use std::{net::IpAddr, time::Instant};

use http::{HeaderValue, request::Parts};
use switchyard_protocol::ErrorCode;
use switchyard_transports::access;

use super::{
    AppState,
    error::ApiError,
    routes::{Access, Route},
};
use crate::{
    auth::{Scope, keys::ApiKey, proxies::limit_key, rate::retry_after_secs},
    jobs::inflight::Sender,
};

/// Who is calling, as far as rate limits and route access care.
pub enum Caller<'a> {
    /// A configured API key, and whether it came in the `Authorization` header (server
    /// routes take it from there only: a key in a URL ends up in logs).
    Key(&'a ApiKey, bool),
    /// Anyone else: no credential, a consumer token, or an unknown key.
    Anonymous,
}

/// Identifies the caller by its API key (`Authorization: Bearer`, or `?token=` as
/// consumers may send it), if any.
pub fn identify<'a>(state: &'a AppState, parts: &Parts) -> Caller<'a> {
    // The header wins over `?token=` when both are there.
    let in_header = access::credential(&parts.headers, None).is_some();
    access::credential(&parts.headers, parts.uri.query())
        .and_then(|token| state.auth.key(&token))
        .map_or(Caller::Anonymous, |key| Caller::Key(key, in_header))
}

/// Spends one request from the caller's bucket: the key's, or the client address's. In
/// open mode a client on this machine has none: see [`is_local_in_open_mode`].
///
/// # Errors
/// 429 `rate_limited` with `Retry-After`.
pub fn rate_limit(
    state: &AppState,
    ip: Option<IpAddr>,
    caller: &Caller<'_>,
) -> Result<(), ApiError> {
    let now = Instant::now();
    let (checked, whom) = match (caller, ip) {
        (Caller::Key(key, _), _) => (state.key_limiter.check(&key.index, now), "API key"),
        (Caller::Anonymous, Some(ip)) if is_local_in_open_mode(state, ip) => (Ok(()), ""),
        (Caller::Anonymous, Some(ip)) => (
            state.ip_limiter.check(&limit_key(ip), now),
            "client address",
        ),
        (Caller::Anonymous, None) => (Ok(()), ""),
    };
    checked.map_err(|wait| {
        let secs = retry_after_secs(wait);
        ApiError::new(
            ErrorCode::RateLimited,
            format!("too many requests from this {whom}; retry after {secs} s"),
        )
        .with_header(http::header::RETRY_AFTER, HeaderValue::from(secs))
    })
}

/// Whom the caller's job bodies count against (`jobs.max_inflight_bytes_per_client`): its
/// API key. Without one it may only submit in open mode, where nobody has a share.
pub fn sender(caller: &Caller<'_>) -> Sender {
    match caller {
        Caller::Key(key, _) => Sender::Key(key.index),
        Caller::Anonymous => Sender::Unshared,
    }
}

/// Whether `ip` (the client, after a trusted proxy's header) is this machine talking to an
/// open-mode gateway. Open mode listens on loopback only and trusts every caller as an API
/// key holder is trusted, and keys have no rate limit by default: a local backend
/// publishing in parallel must not get 429s. A client a trusted proxy forwards from
/// elsewhere keeps its address's limit.
fn is_local_in_open_mode(state: &AppState, ip: IpAddr) -> bool {
    state.auth.is_open() && ip.to_canonical().is_loopback()
}

/// Whether the caller may use `route` (with path parameters `params`).
///
/// # Errors
/// 401 without a usable credential, 403 with one that does not allow this.
pub fn authorize(
    state: &AppState,
    route: &Route,
    params: &[&str],
    parts: &Parts,
    caller: &Caller<'_>,
) -> Result<(), ApiError> {
    if state.auth.is_open() {
        return Ok(());
    }
    match (route.access, caller) {
        (Access::Public | Access::Consumer, _) => Ok(()),
        (Access::Key(scope), Caller::Key(key, true)) => require_scope(key, scope),
        (Access::Key(_), _) => Err(no_key(parts)),
        // Reading a job is reading its channel: `jobs` or `subscribe`, however the key came.
        (Access::JobReader, Caller::Key(key, _)) => {
            if key.has(Scope::Jobs) || key.has(Scope::Subscribe) {
                Ok(())
            } else {
                require_scope(key, Scope::Jobs)
            }
        }
        (Access::JobReader, Caller::Anonymous) => {
            let job = params.first().copied().unwrap_or_default();
            let channel = format!("{}{job}", crate::jobs::channel::PREFIX);
            token_allows(
                state,
                parts,
                &channel,
                "this endpoint needs an API key with the `jobs` scope or the job's token (`Authorization: Bearer` or `?token=`)",
                "your token does not allow this job",
            )
        }
        // Reading a channel's presence is reading the channel: as its consumers may.
        (Access::ChannelReader, _) => {
            let raw = params.first().copied().unwrap_or_default();
            let channel = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
            token_allows(
                state,
                parts,
                &channel,
                "this endpoint needs an API key with the `subscribe` scope or a consumer token that allows the channel (`Authorization: Bearer` or `?token=`)",
                "your token does not allow this channel",
            )
        }
    }
}

/// Whether the request's credential (a consumer token, or an API key with `subscribe`)
/// allows reading `channel`.
fn token_allows(
    state: &AppState,
    parts: &Parts,
    channel: &str,
    needs: &'static str,
    refused: &'static str,
) -> Result<(), ApiError> {
    let token = access::credential(&parts.headers, parts.uri.query())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, needs))?;
    let grant = state.auth.grant(&token)?;
    if grant.allows(channel) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, refused))
    }
}

fn require_scope(key: &ApiKey, scope: Scope) -> Result<(), ApiError> {
    if key.has(scope) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this API key lacks the `{}` scope", scope.as_str()),
        ))
    }
}

fn no_key(parts: &Parts) -> ApiError {
    if access::credential(&parts.headers, None).is_some() {
        ApiError::new(ErrorCode::Unauthorized, "unknown API key")
    } else {
        ApiError::new(
            ErrorCode::Unauthorized,
            "this endpoint needs an API key: `Authorization: Bearer <key>`",
        )
    }
}
