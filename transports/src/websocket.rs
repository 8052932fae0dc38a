//! WebSocket, `GET /v1/ws`: JSON text frames; many channel subscriptions multiplexed on one
//! connection (`subscribe` / `unsubscribe` / `ping`), protocol pings to find dead peers,
//! close 4008 `slow_consumer` when the client cannot keep up, 1001 on shutdown; a client's
//! close is answered at once, even in the middle of a replay (see [`peer`]).

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, future::Either};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use switchyard_protocol::{ChannelName, ClientFrame, Cursor, ErrorBody, ErrorCode, ServerFrame};
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};

use crate::{
    Context, TransportConfig,
    access::{self, Grant},
    context::{ClientAddr, ConnectionHandle},
    direct::DirectIo,
    http::{Body, empty, error},
    hub::{Received, StartFrom},
    hyper_io::ServerIo,
    metrics::Transport,
    session::Session,
};

mod peer;
mod publish;

use peer::Peer;

/// Close code sent to a client whose queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code when the hub interrupted the live feed (Redis unreachable for longer than
/// history covers, or a channel's history restarted): the standard "try again later".
pub const CLOSE_INTERRUPTED: u16 = 1013;
/// Close code sent when no valid `auth` frame arrived in time.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Close code sent when the connection's token expired.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4003;

/// Most queued events written before the socket is flushed and other work looked at.
const BATCH: usize = 64;

/// Answers the upgrade request and runs the session on the upgraded connection, tracked by
/// `ctx.tracker` so shutdown waits for its close frame.
///
/// Any request body type will do: the upgrade comes from the request's extensions (hyper
/// puts it there). A request without one (not from an HTTP/1.1 connection with upgrades
/// enabled, such as a test's) is answered 400 `invalid_request` instead of a `101` that no
/// connection would follow.
pub fn upgrade<B>(ctx: Arc<Context>, req: Request<B>) -> Response<Body> {
    let (accept, grant) = match admit_upgrade(&ctx, req.headers(), req.uri().query()) {
        Ok(admitted) => admitted,
        Err(res) => return res,
    };
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return error(
            ErrorCode::InvalidRequest,
            "this connection cannot switch to WebSocket (HTTP/1.1 upgrades only)",
        );
    }
    let held = req
        .extensions()
        .get::<ConnectionHandle>()
        .map(|h| Arc::clone(&h.hold));
    let client = req.extensions().get::<ClientAddr>().copied();
    let on_upgrade = hyper::upgrade::on(req);
    let tracker = ctx.tracker.clone();
    tracker.spawn(async move {
        let _held = held;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let config = Some(ws_config(&ctx.config));
        // A plain TCP connection is shared with the fan-out for direct writes; anything
        // else (a future TLS stream) is the session's alone.
        // Each arm returns its session's future instead of awaiting it: what an arm builds
        // (the stream, the session) is then not kept beside that future for its life.
        let session = match upgraded.downcast::<ServerIo>() {
            Ok(parts) => {
                let io = DirectIo::new(
                    parts.io.into_inner().into_inner(),
                    Transport::WebSocket,
                    Arc::clone(&ctx.metrics),
                );
                let mut session = Session::with_direct(&ctx, None, Some(io));
                session.count_against(&ctx, client);
                // The read-ahead (a slice of the HTTP layer's read buffer) is copied and
                // dropped here, before the session's long await keeps its buffer alive.
                let read_ahead = parts.read_buf;
                let stream = session
                    .inbox
                    .direct_stream(&read_ahead)
                    .expect("made with a direct connection");
                drop(read_ahead);
                let ws = WebSocketStream::from_raw_socket(stream, Role::Server, config).await;
                Either::Left(run_with(ctx, ws, grant, session))
            }
            Err(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, config)
                        .await;
                let mut session = Session::new(&ctx, None);
                session.count_against(&ctx, client);
                Either::Right(run_with(ctx, ws, grant, session))
            }
        };
        session.await;
    });
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    res
}

/// Checks an upgrade request before accepting it: the handshake, the credential and
/// shutdown. Returns the `Sec-WebSocket-Accept` value and the grant (`None`: the credential
/// must come in an `auth` frame), or the refusal to answer instead.
#[allow(clippy::result_large_err)]
fn admit_upgrade(
    ctx: &Context,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(String, Option<Grant>), Response<Body>> {
    let key = check_handshake(headers)?;
    // A bad credential is refused before the upgrade; a missing one may still come in
    // the first frame (browsers cannot set headers on a WebSocket).
    let grant = access::admit(ctx, headers, query).map_err(|e| error(e.code, e.message))?;
    // Without a credential, a server with public channels lets the connection use them at
    // once (and send `auth` later for more); otherwise the `auth` frame must come in time.
    let grant = grant.or_else(|| ctx.namespaces.any_anonymous().then(Grant::anonymous));
    if ctx.shutdown.is_cancelled() {
        return Err(error(
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        ));
    }
    Ok((derive_accept_key(key.as_bytes()), grant))
}

/// tungstenite's limits and buffers for a session's connection.
fn ws_config(config: &TransportConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        // Frames collect up to 4 KiB before a socket write, and each batch of events ends with a
        // flush: a burst costs a few writes, not one per event (3x the fan-out
        // throughput of writing each frame at once). The buffer is only allocated
        // once a connection receives something.
        .write_buffer_size(4096)
        .max_write_buffer_size(config.ws_max_message_bytes.max(1 << 20) * 4)
        .max_message_size(Some(config.ws_max_message_bytes))
        .max_frame_size(Some(config.ws_max_message_bytes))
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[allow(clippy::result_large_err)]
fn check_handshake(headers: &HeaderMap) -> Result<String, Response<Body>> {
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(error(
            ErrorCode::InvalidRequest,
            "this endpoint speaks WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut res = error(
            ErrorCode::InvalidRequest,
            "only WebSocket version 13 is supported",
        );
        *res.status_mut() = StatusCode::UPGRADE_REQUIRED;
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(res);
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| error(ErrorCode::InvalidRequest, "missing Sec-WebSocket-Key"))
}

/// Why a session ended.
enum End {
    /// The peer vanished or its connection failed: nothing more to say.
    Gone,
    /// The peer sent its close: answer it (tungstenite queued the reply) after what is
    /// half-written, and nothing else.
    PeerClosed,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// The connection's credential: the grant (once there is one) and the instant that ends
/// the session unless something changes (the auth deadline, then the token's expiry).
struct Auth {
    grant: Option<Grant>,
    deadline: Option<Instant>,
}

impl Auth {
    fn new(grant: Option<Grant>, auth_timeout: Duration) -> Self {
        let mut auth = Self {
            grant: None,
            deadline: Some(Instant::now() + auth_timeout),
        };
        if let Some(grant) = grant {
            auth.set(grant);
        }
        auth
    }

    fn set(&mut self, grant: Grant) {
        // A deadline past what `Instant` can hold is no deadline at all.
        self.deadline = grant
            .remaining()
            .and_then(|left| Instant::now().checked_add(left));
        self.grant = Some(grant);
    }

    /// Points `timer` at the current deadline (a far-off instant when there is none; the
    /// select branch is disabled then). One timer lives as long as the session: creating
    /// one per loop turn would cost a timer-wheel insert and removal per event batch.
    fn arm(&self, timer: std::pin::Pin<&mut tokio::time::Sleep>) {
        let at = self
            .deadline
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        if timer.deadline() != at {
            timer.reset(at);
        }
    }

    /// The error frame and close that end a session at its deadline.
    fn expired(&self) -> (ServerFrame, End) {
        let (code, message, close, reason) = match self.grant {
            None => (
                ErrorCode::Unauthorized,
                "no valid auth frame in time: send {\"op\":\"auth\",\"token\":\"...\"} first",
                CLOSE_UNAUTHORIZED,
                "unauthorized",
            ),
            Some(_) => (
                ErrorCode::TokenExpired,
                access::EXPIRED,
                CLOSE_TOKEN_EXPIRED,
                "token_expired",
            ),
        };
        let frame = ServerFrame::Error {
            channel: None,
            id: None,
            error: ErrorBody::new(code, message),
        };
        (frame, End::Close(close, reason))
    }
}

/// Runs one WebSocket session until the peer leaves, it is too slow, its token expires, or
/// the server stops. Without `grant`, the first frames must include a valid `auth`.
pub fn run<S>(
    ctx: Arc<Context>,
    ws: WebSocketStream<S>,
    grant: Option<Grant>,
) -> impl Future<Output = ()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Not an `async fn` wrapping the other: that would keep a second copy of `ws` in every
    // idle connection's task.
    let session = Session::new(&ctx, None);
    run_with(ctx, ws, grant, session)
}

/// [`run`] with its `session`, whose connection the fan-out may write to directly while
/// the session is idle (when `ws` runs over the session's `direct_stream`; see
/// [`crate::direct`]). The session claims the connection's writes before it does anything
/// that writes or subscribes, and releases them when it goes back to waiting with nothing
/// queued.
// Written out on purpose (see the body's first comment).
#[allow(clippy::manual_async_fn)]
fn run_with<S>(
    ctx: Arc<Context>,
    mut ws: WebSocketStream<S>,
    grant: Option<Grant>,
    mut session: Session,
) -> impl Future<Output = ()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // An `async move` block, not an `async fn`: an `async fn` keeps its arguments twice
    // (as given and as locals) for its life, in every idle connection's task.
    async move {
        let _connection = ctx.metrics.connection(Transport::WebSocket);
        let mut auth = Auth::new(grant, ctx.config.ws_auth_timeout);
        let deadline = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(deadline);
        auth.arm(deadline.as_mut());
        let send_timeout = ctx.config.send_timeout;
        let period = ctx.config.ws_ping_interval;
        let mut ping = interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut peer = Peer::new();
        let overflow = session.inbox.overflow_signal();
        // Made once and polled across loop turns: building them per turn (a token lock, a
        // `Notified` registered and dropped) showed up at ~5% of the server's CPU in fan-out.
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        let overflowed = overflow.wait();
        tokio::pin!(overflowed);

        let end = loop {
            // Idle from here: events may go straight to the socket.
            session.inbox.release_writes();
            tokio::select! {
                biased;
                () = &mut shutdown => break End::Close(1001, "server shutting down"),
                () = &mut deadline, if auth.deadline.is_some() => {
                    session.inbox.claim_writes();
                    let (frame, end) = auth.expired();
                    match Box::pin(send(&ctx, &mut ws, &mut peer, frame)).await {
                        Err(End::PeerClosed) => break End::PeerClosed,
                        _ => break end,
                    }
                }
                // A frame read ahead while writing is handled before any more events.
                received = session.inbox.recv(), if !peer.is_holding() => {
                    // Taking an event claimed the connection's writes.
                    let first = match received {
                        Received::Event(first) => first,
                        Received::Flush => {
                            session.inbox.claim_writes();
                            // Boxed, as every rare path here: inline, its state would make
                            // every idle connection's task larger.
                            let flushed = Box::pin(async {
                                tokio::select! {
                                    biased;
                                    () = &mut shutdown => Err(End::Close(1001, "server shutting down")),
                                    r = bounded(&ctx, send_timeout, peer.flush(&mut ws)) => r,
                                }
                            })
                            .await;
                            if let Err(end) = flushed {
                                break end;
                            }
                            continue;
                        }
                        Received::Overflowed => break slow_consumer(&ctx),
                        Received::Interrupted => break interrupted(),
                    };
                    let written = tokio::select! {
                        biased;
                        // A peer that stopped reading blocks the write; a shutdown, or its queue
                        // overflowing, meanwhile decides at once instead of after the send
                        // timeout (which would outlast the server's shutdown grace).
                        () = &mut shutdown => Err(End::Close(1001, "server shutting down")),
                        () = &mut overflowed => Err(if overflow.interrupted() {
                            interrupted()
                        } else {
                            slow_consumer(&ctx)
                        }),
                        // Boxed: its state (writes that read the peer while they wait) would
                        // otherwise make every idle connection's task ~0.75 KiB larger; one
                        // allocation per batch of queued events.
                        r = Box::pin(write_events(&ctx, &mut session, &mut ws, &mut peer, first)) => r,
                    };
                    if let Err(end) = written {
                        break end;
                    }
                }
                message = peer.next(&mut ws) => {
                    // A frame may subscribe (the replay comes before live events) or answer.
                    session.inbox.claim_writes();
                    let reply = match message {
                        Err(end) => break end,
                        Ok(Message::Text(text)) => {
                            // Boxed: frames are rare, and inline this future would make every
                            // idle connection's task as large as its biggest state.
                            let handled = Box::pin(handle_frame(&ctx, &mut session, &mut auth, &mut ws, &mut peer, text.as_str())).await;
                            auth.arm(deadline.as_mut());
                            handled
                        }
                        Ok(Message::Binary(_)) => Err(frame_error(None, ErrorCode::InvalidRequest, "binary frames are not supported; send JSON text")),
                        Ok(_) => Ok(()),
                    };
                    match reply {
                        Ok(()) => {}
                        Err(Reply::Frame(frame)) => {
                            if let Err(end) = Box::pin(send(&ctx, &mut ws, &mut peer, frame)).await {
                                break end;
                            }
                        }
                        Err(Reply::End(end)) => break end,
                    }
                }
                _ = ping.tick() => {
                    session.inbox.claim_writes();
                    if peer.last_heard.elapsed() > ctx.config.ws_idle_timeout {
                        tracing::debug!("closing websocket: peer silent past the idle timeout");
                        break End::Close(1001, "idle timeout");
                    }
                    let ping = peer.send(&mut ws, Message::Ping(Default::default()));
                    if let Err(end) = Box::pin(bounded(&ctx, send_timeout, ping)).await {
                        break end;
                    }
                }
            }
        };

        session.inbox.claim_writes();
        // Best effort: a peer that stopped reading gets dropped after the send timeout.
        let grace = send_timeout.min(Duration::from_secs(5));
        match end {
            End::Gone => {}
            // The reply goes out after what is half-written, then the connection closes.
            End::PeerClosed => {
                let _ = Box::pin(timeout(grace, ws.flush())).await;
            }
            End::Close(code, reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ = Box::pin(timeout(grace, ws.close(Some(frame)))).await;
            }
        }
    }
}

/// Writes `first` and whatever else is queued (up to a batch), then flushes once. The
/// peer's frames are read while a write waits and at the flush: its close ends the batch.
async fn write_events<S>(
    ctx: &Context,
    session: &mut Session,
    ws: &mut WebSocketStream<S>,
    peer: &mut Peer,
    first: std::sync::Arc<crate::hub::Event>,
) -> Result<(), End>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let send_timeout = ctx.config.send_timeout;
    let mut next = Some(first);
    let mut n = 0;
    while let Some(event) = next.take() {
        if session.accept(&event) {
            let fed = peer.feed(ws, Message::Text(event.ws_text()));
            bounded(ctx, send_timeout, fed).await?;
            ctx.metrics.observe_latency(event.published_at().elapsed());
            n += 1;
        }
        if n < BATCH {
            next = session.inbox.try_recv();
        }
    }
    ctx.metrics.delivered(Transport::WebSocket, n as u64);
    bounded(ctx, send_timeout, peer.flush(ws)).await
}

/// The hub could not keep the feed gap-free (see [`Received::Interrupted`]): 1013 "try
/// again later", and the client resumes from its cursor.
fn interrupted() -> End {
    End::Close(CLOSE_INTERRUPTED, "interrupted")
}

fn slow_consumer(ctx: &Context) -> End {
    ctx.metrics.slow_consumer(Transport::WebSocket);
    End::Close(CLOSE_SLOW_CONSUMER, "slow_consumer")
}

/// Outcome of handling a client frame that is not plain success.
enum Reply {
    Frame(ServerFrame),
    End(End),
}

fn frame_error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Frame(ServerFrame::Error {
        channel: None,
        id,
        error: ErrorBody::new(code, message),
    })
}

/// The grant of an authenticated connection and `channel`'s name, when the grant allows
/// reading it (subscribing, or asking who is present).
#[allow(clippy::result_large_err)] // a refusal is rare; `Reply` is what `handle_frame` answers
fn readable<'a>(
    ctx: &Context,
    auth: &'a Auth,
    id: Option<u64>,
    channel: &str,
    before: &str,
) -> Result<(&'a Grant, ChannelName), Reply> {
    let Some(grant) = &auth.grant else {
        return Err(frame_error(
            id,
            ErrorCode::Unauthorized,
            format!("send {{\"op\":\"auth\",\"token\":\"...\"}} before {before}"),
        ));
    };
    let name = ChannelName::new(channel)
        .map_err(|e| frame_error(id, ErrorCode::InvalidChannel, e.to_string()))?;
    access::check_subscribe(ctx, grant, [&name]).map_err(|e| frame_error(id, e.code, e.message))?;
    Ok((grant, name))
}

/// `write` within `limit`: a peer that takes nothing for that long is a slow consumer.
async fn bounded(
    ctx: &Context,
    limit: Duration,
    write: impl Future<Output = Result<(), End>>,
) -> Result<(), End> {
    timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(slow_consumer(ctx)))
}

async fn send<S>(
    ctx: &Context,
    ws: &mut WebSocketStream<S>,
    peer: &mut Peer,
    frame: ServerFrame,
) -> Result<(), End>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let sent = peer.send(ws, Message::text(frame.to_json()));
    bounded(ctx, ctx.config.send_timeout, sent).await
}

async fn handle_frame<S>(
    ctx: &Context,
    session: &mut Session,
    auth: &mut Auth,
    ws: &mut WebSocketStream<S>,
    peer: &mut Peer,
    text: &str,
) -> Result<(), Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = ClientFrame::parse(text).map_err(|e| frame_error(e.id, e.code, e.message))?;
    let send_timeout = ctx.config.send_timeout;
    match frame {
        ClientFrame::Ping { id } => Err(Reply::Frame(ServerFrame::Pong { id })),
        ClientFrame::Auth { id, token } => {
            let grant = match &ctx.verifier {
                Some(verifier) => verifier
                    .verify(&token)
                    .map_err(|e| frame_error(id, e.code, e.message))?,
                None => Grant::everything(),
            };
            let expires_at = grant
                .expires_at()
                .map(|t| humantime::format_rfc3339(t).to_string());
            // A refreshed token may cover fewer channels: drop the ones it does not.
            let dropped: Vec<ChannelName> = session
                .channels()
                .into_iter()
                .filter(|c| !access::may_subscribe(ctx, &grant, c.as_str()))
                .collect();
            auth.set(grant);
            let sent = async {
                for channel in &dropped {
                    session.close(channel);
                    let err = access::forbidden(channel.as_str());
                    let frame = ServerFrame::Error {
                        channel: Some(channel.to_string()),
                        id,
                        error: ErrorBody::new(err.code, format!("{}; unsubscribed", err.message)),
                    };
                    peer.feed(ws, Message::text(frame.to_json())).await?;
                }
                let authed = ServerFrame::Authed { id, expires_at };
                peer.send(ws, Message::text(authed.to_json())).await
            };
            bounded(ctx, send_timeout, sent).await.map_err(Reply::End)
        }
        ClientFrame::Publish {
            id,
            channel,
            event_type,
            data,
        } => Err(Reply::Frame(
            Box::pin(publish::client_publish(
                ctx,
                session,
                auth.grant.as_ref(),
                id,
                channel,
                event_type,
                data,
            ))
            .await
            .unwrap_or_else(|e| ServerFrame::Error {
                channel: None,
                id,
                error: ErrorBody::new(e.code, e.message),
            }),
        )),
        ClientFrame::Presence { id, channel } => {
            let (_, name) = readable(ctx, auth, id, &channel, "asking who is present")?;
            let members = crate::presence::of(ctx, &name)
                .map_err(|e| frame_error(id, e.code, e.message))?
                .members(&name)
                .await
                .map_err(|e| {
                    let e = crate::session::hub_error(e);
                    frame_error(id, e.code, e.message)
                })?;
            let members = members
                .iter()
                .map(|m| serde_json::to_value(m).expect("a member is JSON"))
                .collect();
            Err(Reply::Frame(ServerFrame::Presence {
                id,
                channel,
                members,
            }))
        }
        ClientFrame::Unsubscribe { id, channel } => {
            if !session.is_subscribed(&channel) {
                return Err(frame_error(
                    id,
                    ErrorCode::InvalidRequest,
                    format!("not subscribed to {channel:?}"),
                ));
            }
            let name = ChannelName::new(&channel).expect("subscribed names are valid");
            session.close(&name);
            Err(Reply::Frame(ServerFrame::Unsubscribed { id, channel }))
        }
        ClientFrame::Subscribe {
            id,
            channel,
            after,
            cursor,
        } => {
            let (grant, name) = readable(ctx, auth, id, &channel, "subscribing")?;
            if session.is_subscribed(&channel) {
                return Err(frame_error(
                    id,
                    ErrorCode::InvalidRequest,
                    format!("already subscribed to {channel:?}; unsubscribe first"),
                ));
            }
            if session.len() >= ctx.config.ws_max_subscriptions {
                return Err(frame_error(
                    id,
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "at most {} subscriptions per connection",
                        ctx.config.ws_max_subscriptions
                    ),
                ));
            }
            let from = match (cursor, after) {
                (Some(c), _) => Cursor::decode(&c)
                    .map_err(|e| frame_error(id, ErrorCode::InvalidCursor, e.to_string()))?
                    .get(&channel)
                    .map_or(StartFrom::Now, StartFrom::Position),
                (None, Some(after)) => StartFrom::Offset(after),
                (None, None) => StartFrom::Now,
            };
            let opened = session
                .open(ctx, &name, from, grant)
                .await
                .map_err(|e| frame_error(id, e.code, e.message))?;
            let start = Cursor::encode_single(&name, opened.start);
            let subscribed = ServerFrame::Subscribed {
                id,
                channel: channel.clone(),
                offset: opened.current().offset,
                cursor: start.clone(),
            };
            let sent = async {
                peer.feed(ws, Message::text(subscribed.to_json())).await?;
                if let Some(oldest) = opened.reset {
                    let reset = ServerFrame::Reset {
                        channel,
                        offset: oldest,
                        cursor: start,
                    };
                    peer.feed(ws, Message::text(reset.to_json())).await?;
                }
                let mut n = 0;
                for event in &opened.replay {
                    if session.accept(event) {
                        // A replay can be long: the peer's close stops it before each event,
                        // not only when a write waits.
                        peer.look(ws).await?;
                        peer.feed(ws, Message::Text(event.ws_text())).await?;
                        n += 1;
                    }
                }
                ctx.metrics.delivered(Transport::WebSocket, n);
                peer.flush(ws).await
            };
            bounded(ctx, send_timeout * 4, sent)
                .await
                .map_err(Reply::End)
        }
    }
}

#[cfg(test)]
mod tests;
