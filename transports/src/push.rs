//! The streaming-response driver shared by SSE and NDJSON streaming: subscribe, replay,
//! then live events with heartbeats, ending cleanly on shutdown or overflow; and the answer
//! to a `HEAD`, checked like the `GET` but answered at once.

use std::{convert::Infallible, sync::Arc};

use async_stream::stream;
use bytes::Bytes;
use http::{HeaderValue, Response, header, request::Parts};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use switchyard_protocol::{ChannelName, ErrorCode};
use tokio::time::{MissedTickBehavior, interval_at};

use crate::{
    Context, access,
    context::{ClientAddr, ConnectionHandle},
    direct::DirectIo,
    http::{Body, empty, error},
    hub::{Event, Received},
    metrics::Transport,
    params::{ConsumerParams, ParamError},
    raw::RawConnection,
    session::Session,
};

/// Most queued events written in one go before heartbeats and shutdown are looked at again.
const BATCH: usize = 64;

/// How one wire format frames what a push stream sends.
pub(crate) trait Framing: Send + 'static {
    const TRANSPORT: Transport;
    const CONTENT_TYPE: &'static str;
    /// Whether `Last-Event-ID` is read as a cursor.
    const READS_LAST_EVENT_ID: bool;
    /// Whether an event's frame is the same on every stream of any number of channels (or
    /// only on single-channel streams).
    const SHARED_FRAMES: bool;

    /// Sent first, once every channel is subscribed.
    fn head(&self, session: &Session, channels: &[(ChannelName, u64)]) -> Bytes;
    /// History no longer reaches the requested position of `channel`.
    fn reset(&self, session: &Session, channel: &ChannelName, oldest: u64) -> Bytes;
    /// One event; `single` when the stream has one channel (its cursor is the event's).
    fn event(&self, session: &Session, event: &Event, single: bool) -> Bytes;
    fn heartbeat(&self) -> Bytes;
    /// The last thing sent before the stream ends on purpose.
    fn goodbye(&self, code: ErrorCode, message: &str) -> Bytes;
}

/// What a request must pass before it is subscribed: a credential that allows its
/// channels, valid parameters, and a server that is not shutting down.
fn admit<F: Framing>(
    ctx: &Context,
    parts: &Parts,
) -> Result<(access::Grant, ConsumerParams), ParamError> {
    let grant = access::require_or_anonymous(ctx, &parts.headers, parts.uri.query())?;
    let params = ConsumerParams::parse(
        parts,
        ctx.config.max_channels_per_request,
        F::READS_LAST_EVENT_ID,
    )?;
    access::check_subscribe(ctx, &grant, &params.channels)?;
    if ctx.shutdown.is_cancelled() {
        return Err(ParamError::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        ));
    }
    Ok((grant, params))
}

/// The answer to a `HEAD`: the `GET`'s refusal, or its status and headers without a body
/// (nothing is subscribed; an engine-side refusal such as `limits.max_channels` is only
/// met by the `GET`).
pub(crate) fn head<F: Framing>(ctx: &Context, parts: &Parts) -> Response<Body> {
    match admit::<F>(ctx, parts) {
        Ok(_) => stream_head::<F>(Response::new(empty())),
        Err(e) => error(e.code, e.message),
    }
}

/// The headers of a stream's answer.
fn stream_head<F: Framing>(mut res: Response<Body>) -> Response<Body> {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(F::CONTENT_TYPE),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

pub(crate) async fn respond<F: Framing>(
    ctx: Arc<Context>,
    parts: &Parts,
    framing: F,
) -> Response<Body> {
    let (grant, params) = match admit::<F>(&ctx, parts) {
        Ok(admitted) => admitted,
        Err(e) => return error(e.code, e.message),
    };
    let abort = parts
        .extensions
        .get::<ConnectionHandle>()
        .map(|h| h.abort.clone());
    let single = params.channels.len() == 1;
    let mut session = direct_session::<F>(&ctx, parts, abort, single);
    session.count_against(&ctx, parts.extensions.get::<ClientAddr>().copied());
    let mut opened = Vec::with_capacity(params.channels.len());
    for channel in &params.channels {
        match session
            .open(&ctx, channel, params.start_for(channel), &grant)
            .await
        {
            Ok(o) => opened.push((channel.clone(), o)),
            Err(e) => return error(e.code, e.message),
        }
    }
    let body = stream! {
        let _connection = ctx.metrics.connection(F::TRANSPORT);
        let currents: Vec<(ChannelName, u64)> =
            opened.iter().map(|(c, o)| (c.clone(), o.current().offset)).collect();
        yield Ok::<_, Infallible>(Frame::data(framing.head(&session, &currents)));
        for (channel, opened) in &opened {
            if let Some(oldest) = opened.reset {
                yield Ok(Frame::data(framing.reset(&session, channel, oldest)));
            }
            let mut n = 0;
            for event in &opened.replay {
                if session.accept(event) {
                    n += 1;
                    yield Ok(Frame::data(framing.event(&session, event, single)));
                }
            }
            ctx.metrics.delivered(F::TRANSPORT, n);
        }
        drop(opened);

        // One timer for the whole stream (a new one per loop turn would cost a timer-wheel
        // insert and removal per event batch).
        let expiry = access::expiry(&grant);
        tokio::pin!(expiry);
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        let period = ctx.config.heartbeat_interval;
        let mut heartbeat = interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Idle from here: events may go straight to the socket (a raw stream's).
            session.inbox.release_writes();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    session.inbox.claim_writes();
                    yield Ok(Frame::data(framing.goodbye(ErrorCode::ShuttingDown, "the server is shutting down; reconnect with your cursor")));
                    break;
                }
                received = session.inbox.recv() => {
                    // Taking an event claimed the connection's writes; so do the others.
                    let first = match received {
                        Received::Event(first) => first,
                        Received::Flush => {
                            session.inbox.claim_writes();
                            // An empty frame: the writer finishes the direct write's tail.
                            yield Ok(Frame::data(Bytes::new()));
                            continue;
                        }
                        Received::Overflowed => {
                            session.inbox.claim_writes();
                            ctx.metrics.slow_consumer(F::TRANSPORT);
                            yield Ok(Frame::data(framing.goodbye(ErrorCode::SlowConsumer, "too slow to keep up; reconnect with your cursor")));
                            break;
                        }
                        Received::Interrupted => {
                            session.inbox.claim_writes();
                            yield Ok(Frame::data(framing.goodbye(ErrorCode::Unavailable, "the live feed was interrupted (the engine was unreachable, or the channel's history restarted); reconnect with your cursor")));
                            break;
                        }
                    };
                    let mut next = Some(first);
                    let mut n = 0;
                    while let Some(event) = next.take() {
                        if session.accept(&event) {
                            ctx.metrics.observe_latency(event.published_at().elapsed());
                            n += 1;
                            yield Ok(Frame::data(framing.event(&session, &event, single)));
                        }
                        if n < BATCH {
                            next = session.inbox.try_recv();
                        }
                    }
                    ctx.metrics.delivered(F::TRANSPORT, n as u64);
                }
                _ = heartbeat.tick() => {
                    session.inbox.claim_writes();
                    yield Ok(Frame::data(framing.heartbeat()));
                }
                () = &mut expiry => {
                    session.inbox.claim_writes();
                    yield Ok(Frame::data(framing.goodbye(ErrorCode::TokenExpired, access::EXPIRED)));
                    break;
                }
            }
        }
    };

    stream_head::<F>(Response::new(BodyExt::boxed_unsync(StreamBody::new(body))))
}

/// The stream's session: on a connection the server serves itself ([`RawConnection`]),
/// one whose socket the fan-out may write to directly, when every subscriber of the
/// stream's channel gets the same frames (NDJSON; SSE with one channel, whose `id:` is the
/// event's own cursor).
///
/// The session starts with the connection's writes claimed: nothing is written directly
/// before the response head, the `subscribed` lines and the replay.
fn direct_session<F: Framing>(
    ctx: &Context,
    parts: &Parts,
    abort: Option<tokio_util::sync::CancellationToken>,
    single: bool,
) -> Session {
    let raw = parts
        .extensions
        .get::<RawConnection>()
        .filter(|_| F::SHARED_FRAMES || single);
    let Some(raw) = raw else {
        return Session::new(ctx, abort);
    };
    let mut session = None;
    raw.share(|socket| {
        let io = DirectIo::new(socket, F::TRANSPORT, Arc::clone(&ctx.metrics));
        let direct = Session::with_direct(ctx, abort.clone(), Some(io));
        direct.inbox.claim_writes();
        let shared = direct.inbox.direct_stream(&[]);
        session = Some(direct);
        shared.expect("a session made with a direct connection has its stream")
    });
    session.unwrap_or_else(|| Session::new(ctx, abort))
}

#[cfg(test)]
mod tests;
