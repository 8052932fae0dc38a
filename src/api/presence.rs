//! `GET /v1/channels/{channel}/presence` (who is subscribed) and `.../presence/stats` (how
//! many), for channels whose namespace tracks presence; read through the presence seam.

use http::StatusCode;
use switchyard_protocol::ChannelName;
use switchyard_transports::{http::json, presence};

use super::{AppState, error::ApiResult};

/// The channel's members: `{"channel", "members": [{client_id, user?, info?}]}`.
///
/// # Errors
/// 404 `presence_disabled` when the channel's namespace does not track presence; the
/// engine's refusal (503).
pub async fn members(state: &AppState, channel: &ChannelName) -> ApiResult {
    let members = presence::of(&state.consumers, channel)?
        .members(channel)
        .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"channel": channel, "members": members}),
    ))
}

/// How many are present: `{"channel", "clients", "users"}` (distinct users; clients without
/// a user are not counted among them).
///
/// # Errors
/// As [`members`].
pub async fn stats(state: &AppState, channel: &ChannelName) -> ApiResult {
    let stats = presence::of(&state.consumers, channel)?
        .stats(channel)
        .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"channel": channel, "clients": stats.clients, "users": stats.users}),
    ))
}
