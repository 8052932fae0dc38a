//! Who may read which channels: the [`Grant`] a consumer credential carries, and the
//! [`Verifier`] seam through which the server checks credentials (transports never see
//! keys, secrets or token formats).

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, header};
use switchyard_protocol::{ChannelName, ChannelPattern, ErrorCode};

use crate::{Context, params::ParamError};

/// What a verified consumer credential allows: some channels (or all), until a time (or
/// forever).
#[derive(Clone, Debug)]
pub struct Grant {
    /// `None`: every channel (open mode, or an API key with the `subscribe` scope).
    channels: Option<Arc<[ChannelPattern]>>,
    expires_at: Option<SystemTime>,
    /// Whom the holder's subscriptions are counted against (see [`crate::allowance`]).
    subject: Option<Arc<str>>,
    /// What a token says of its holder beyond its channels (one pointer: every idle
    /// connection's task holds its grant, and most tokens say none of it).
    holder: Option<Arc<Holder>>,
    /// No credential at all: only public channels (`anonymous_subscribe`).
    anonymous: bool,
}

/// A token holder's presence identity and publish rights.
#[derive(Debug, Default)]
struct Holder {
    /// The user presence shows (a JWT's `sub`).
    user: Option<Arc<str>>,
    /// What presence shows of the holder (a JWT's `info` claim).
    info: Option<Arc<serde_json::value::RawValue>>,
    /// The channels the holder may publish to over its WebSocket, where the channel's
    /// namespace allows client publishes (a JWT's `publish` claim).
    publish: Vec<ChannelPattern>,
}

impl Grant {
    /// Every channel, forever: open mode, or a trusted backend's API key.
    pub fn everything() -> Self {
        Self {
            channels: None,
            expires_at: None,
            subject: None,
            holder: None,
            anonymous: false,
        }
    }

    /// The channels matching `patterns`, until `expires_at` (if any).
    pub fn channels(patterns: Vec<ChannelPattern>, expires_at: Option<SystemTime>) -> Self {
        Self {
            channels: Some(patterns.into()),
            expires_at,
            subject: None,
            holder: None,
            anonymous: false,
        }
    }

    /// No credential: no channel of its own, only those whose namespace has
    /// `anonymous_subscribe`, and no publishing.
    pub fn anonymous() -> Self {
        Self {
            anonymous: true,
            ..Self::channels(Vec::new(), None)
        }
    }

    /// Whether the holder presented no credential.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// The same grant, showing `user` (and `info`, if any) in presence.
    #[must_use]
    pub fn with_user(
        mut self,
        user: Option<&str>,
        info: Option<Box<serde_json::value::RawValue>>,
    ) -> Self {
        let mut holder = self.take_holder();
        holder.user = user.map(Arc::from);
        holder.info = info.map(Arc::from);
        self.holder = Some(Arc::new(holder));
        self
    }

    /// The same grant, allowed to publish to channels matching `patterns`.
    #[must_use]
    pub fn with_publish(mut self, patterns: Vec<ChannelPattern>) -> Self {
        let mut holder = self.take_holder();
        holder.publish = patterns;
        self.holder = Some(Arc::new(holder));
        self
    }

    /// The holder's details, to change while the grant is being built.
    fn take_holder(&mut self) -> Holder {
        self.holder
            .take()
            .map(|h| {
                Arc::try_unwrap(h).unwrap_or_else(|shared| Holder {
                    user: shared.user.clone(),
                    info: shared.info.clone(),
                    publish: shared.publish.clone(),
                })
            })
            .unwrap_or_default()
    }

    /// The user presence shows.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.holder.as_ref()?.user.as_ref()
    }

    /// What presence shows of the holder.
    pub fn info(&self) -> Option<&Arc<serde_json::value::RawValue>> {
        self.holder.as_ref()?.info.as_ref()
    }

    /// Whether the holder may publish to `channel` (its namespace must allow client
    /// publishes too).
    pub fn may_publish(&self, channel: &str) -> bool {
        // A trusted holder (open mode, an API key) publishes wherever the namespace allows.
        self.is_trusted()
            || self
                .holder
                .as_ref()
                .is_some_and(|h| h.publish.iter().any(|p| p.matches(channel)))
    }

    /// The same grant, its subscriptions counted against `subject` (a JWT's `sub`, a job
    /// token's job).
    #[must_use]
    pub fn with_subject(mut self, subject: &str) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Whom the holder's subscriptions are counted against.
    pub fn subject(&self) -> Option<&Arc<str>> {
        self.subject.as_ref()
    }

    /// Whether the holder is trusted with every channel (open mode, an API key): its
    /// subscriptions are not counted against any budget.
    pub fn is_trusted(&self) -> bool {
        self.channels.is_none()
    }

    /// Whether the holder may read `channel`.
    pub fn allows(&self, channel: &str) -> bool {
        self.channels
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(channel)))
    }

    /// When the credential stops being valid.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Time left before expiry (zero once expired); `None` when it never expires.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at.map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }
}

/// The refusal for a channel outside a grant.
pub(crate) fn forbidden(channel: &str) -> ParamError {
    ParamError::new(
        ErrorCode::Forbidden,
        format!("your token does not allow channel {channel:?}"),
    )
}

/// Checks a consumer credential; implemented by the server.
pub trait Verifier: Send + Sync {
    /// The grant behind `token`.
    ///
    /// # Errors
    /// `unauthorized` (unknown or malformed), `token_expired`, or `forbidden` (a valid
    /// credential that may not consume at all, e.g. an API key without `subscribe`).
    fn verify(&self, token: &str) -> Result<Grant, ParamError>;
}

/// The credential of a request: `Authorization: Bearer <token>`, else `?token=`.
pub fn credential<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    if let Some(token) = bearer {
        return Some(Cow::Borrowed(token));
    }
    crate::params::form_urlencoded_pairs(query?)
        .into_iter()
        .find(|(k, v)| k == "token" && !v.is_empty())
        .map(|(_, v)| Cow::Owned(v))
}

/// The grant of a request's credential: everything in open mode (no verifier), `None`
/// when a credential is needed but the request has none.
///
/// # Errors
/// The verifier's refusal of the credential given.
pub fn admit(
    ctx: &Context,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Grant>, ParamError> {
    let Some(verifier) = &ctx.verifier else {
        return Ok(Some(Grant::everything()));
    };
    match credential(headers, query) {
        Some(token) => verifier.verify(&token).map(Some),
        None => Ok(None),
    }
}

/// The grant of a consumer request: its credential's; without one, the anonymous grant
/// when some namespace has public channels (`anonymous_subscribe`).
///
/// # Errors
/// `unauthorized` without a credential when no channel is public; the verifier's refusal
/// of a bad one.
pub fn require_or_anonymous(
    ctx: &Context,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Grant, ParamError> {
    match admit(ctx, headers, query)? {
        Some(grant) => Ok(grant),
        None if ctx.namespaces.any_anonymous() => Ok(Grant::anonymous()),
        None => Err(missing()),
    }
}

/// Whether `grant` may subscribe `channel`: its own channels, or a public one.
pub fn may_subscribe(ctx: &Context, grant: &Grant, channel: &str) -> bool {
    grant.allows(channel) || ctx.namespaces.rules(channel).anonymous_subscribe
}

/// Refuses the first of `channels` that `grant` may not subscribe: `unauthorized` for a
/// request without a credential (a token would help), `forbidden` otherwise.
///
/// # Errors
/// As above, naming the channel.
pub fn check_subscribe<'a>(
    ctx: &Context,
    grant: &Grant,
    channels: impl IntoIterator<Item = &'a ChannelName>,
) -> Result<(), ParamError> {
    match channels
        .into_iter()
        .find(|c| !may_subscribe(ctx, grant, c.as_str()))
    {
        None => Ok(()),
        Some(channel) if grant.is_anonymous() => Err(ParamError::new(
            ErrorCode::Unauthorized,
            format!(
                "channel {:?} is not public: it needs a consumer token (`Authorization: Bearer <token>` or `?token=`)",
                channel.as_str()
            ),
        )),
        Some(channel) => Err(forbidden(channel.as_str())),
    }
}

/// Completes when `grant` expires; never for a grant without expiry.
pub(crate) async fn expiry(grant: &Grant) {
    match grant.remaining() {
        Some(left) => tokio::time::sleep(left).await,
        None => std::future::pending().await,
    }
}

/// The goodbye of a stream whose token ran out.
pub(crate) const EXPIRED: &str = "your token expired; reconnect with a fresh one and your cursor";

/// The refusal of a request without a credential.
pub(crate) fn missing() -> ParamError {
    ParamError::new(
        ErrorCode::Unauthorized,
        "this endpoint needs a consumer token: `Authorization: Bearer <token>` or `?token=`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn credential_prefers_the_bearer_header() {
        let h = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(credential(&h, Some("token=xyz")).as_deref(), Some("abc"));
        let h = headers(&[("authorization", "bearer  abc ")]);
        assert_eq!(credential(&h, None).as_deref(), Some("abc"));
        let none = HeaderMap::new();
        assert_eq!(
            credential(&none, Some("channel=a&token=x%2By")).as_deref(),
            Some("x+y")
        );
        assert_eq!(credential(&none, Some("token=")), None);
        let basic = headers(&[("authorization", "Basic abc")]);
        assert_eq!(credential(&basic, None), None);
    }

    #[test]
    fn grants_match_patterns() {
        let g = Grant::channels(
            vec![
                ChannelPattern::new("orders/*").unwrap(),
                ChannelPattern::new("jobs/42").unwrap(),
            ],
            None,
        );
        assert!(g.allows("orders/7"));
        assert!(g.allows("jobs/42"));
        assert!(!g.allows("jobs/43"));
        assert!(!g.allows("orders/7/items"));
        assert!(Grant::everything().allows("anything"));
        let names = [
            ChannelName::new("orders/1").unwrap(),
            ChannelName::new("secret").unwrap(),
        ];
        let hub = crate::testing::FakeHub::new();
        let ctx = crate::testing::context(&hub, crate::TransportConfig::default());
        let err = check_subscribe(&ctx, &g, &names).unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert!(err.message.contains("secret"));
        // Without a credential, the refusal says a token is needed.
        let err = check_subscribe(&ctx, &Grant::anonymous(), &names[..1]).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthorized);
        assert!(err.message.contains("orders/1"));
    }

    #[test]
    fn remaining_is_zero_once_expired() {
        let past = Grant::channels(vec![], Some(SystemTime::now() - Duration::from_secs(5)));
        assert_eq!(past.remaining(), Some(Duration::ZERO));
        assert_eq!(Grant::everything().remaining(), None);
    }
}
