//! `{"op":"publish"}`: a consumer publishes over its WebSocket (see
//! [`crate::client_publish`]).

use switchyard_protocol::{ChannelName, ErrorCode, ServerFrame};

use crate::{Context, access::Grant, params::ParamError, session::Session};

/// `{"op":"publish"}`: allowed when the channel's namespace has `client_publish` and the
/// token's `publish` claim covers the channel; the event takes the publish API's path.
pub(super) async fn client_publish(
    ctx: &Context,
    session: &Session,
    grant: Option<&Grant>,
    id: Option<u64>,
    channel: String,
    event_type: Option<String>,
    data: serde_json::Value,
) -> Result<ServerFrame, ParamError> {
    let Some(grant) = grant else {
        return Err(ParamError::new(
            ErrorCode::Unauthorized,
            "send {\"op\":\"auth\",\"token\":\"...\"} before publishing",
        ));
    };
    let name = ChannelName::new(&channel)
        .map_err(|e| ParamError::new(ErrorCode::InvalidChannel, e.to_string()))?;
    let rules = ctx.namespaces.rules(&channel);
    let publisher = ctx.publisher.as_ref().filter(|_| rules.client_publish);
    let Some(publisher) = publisher else {
        return Err(ParamError::new(
            ErrorCode::Forbidden,
            format!(
                "clients may not publish on {channel:?}: its namespace {:?} does not allow client publishes",
                &*rules.name
            ),
        ));
    };
    if !grant.may_publish(&channel) {
        return Err(ParamError::new(
            ErrorCode::Forbidden,
            format!("your token's `publish` claim does not allow channel {channel:?}"),
        ));
    }
    let data = serde_json::value::to_raw_value(&data)
        .map_err(|e| ParamError::new(ErrorCode::BadJson, e.to_string()))?;
    let event_type = event_type.as_deref().unwrap_or("message");
    let published = publisher
        .publish(session.client(), &name, event_type, &data)
        .await?;
    Ok(ServerFrame::Published {
        id,
        channel,
        offset: published.offset,
        cursor: published.cursor,
    })
}
