//! One consumer connection's subscriptions: its inbox, the channels it holds, and the
//! position reached in each (to drop stale duplicates and to build combined cursors).

use std::sync::Arc;

use switchyard_protocol::{ChannelName, Cursor, ErrorCode, Position};
use tokio_util::sync::CancellationToken;

use crate::{
    Context,
    access::Grant,
    allowance::Allowance,
    context::ClientAddr,
    hub::{Event, HubError, Inbox, Opened, StartFrom, SubscriptionGuard},
    membership::Memberships,
    occupancy::Seats,
    params::ParamError,
};

pub(crate) struct Session {
    pub(crate) inbox: Inbox,
    sink: crate::hub::Sink,
    guard: SubscriptionGuard,
    /// Last position delivered per subscribed channel; doubles as the combined cursor.
    positions: Cursor,
    /// The subscriptions counted against the client's address and token (unlimited until
    /// [`Session::count_against`]).
    allowance: Allowance,
    /// Its places in channels whose namespace limits subscribers.
    seats: Seats,
    /// Presence memberships; after `guard` so that a connection that ends is unsubscribed
    /// before it leaves (its own `presence.leave` is not offered to it).
    memberships: Memberships,
    /// Whether subscriptions join presence: a transport that holds a connection does;
    /// a long-poll, which comes and goes, does not.
    joins: bool,
}

impl Session {
    pub(crate) fn new(ctx: &Context, abort: Option<CancellationToken>) -> Self {
        Self::with_direct(ctx, abort, None)
    }

    /// A session whose connection the fan-out may write to directly while it is idle (see
    /// [`crate::direct`]).
    pub(crate) fn with_direct(
        ctx: &Context,
        abort: Option<CancellationToken>,
        direct: Option<crate::direct::DirectIo>,
    ) -> Self {
        let (sink, inbox) = crate::hub::new_pair_direct(ctx.config.queue_capacity, abort, direct);
        let guard = SubscriptionGuard::new(Arc::clone(&ctx.hub), &sink);
        Self {
            inbox,
            sink,
            guard,
            positions: Cursor::new(),
            allowance: Allowance::default(),
            seats: Seats::default(),
            memberships: Memberships::default(),
            joins: true,
        }
    }

    /// A session whose subscriptions do not join presence (a long-poll request).
    pub(crate) fn without_presence(mut self) -> Self {
        self.joins = false;
        self
    }

    /// Counts this session's subscriptions against `client` (from the request's
    /// extensions; absent in tests that call the transports directly) and the subject of
    /// its grant, within `ctx`'s budgets.
    pub(crate) fn count_against(&mut self, ctx: &Context, client: Option<ClientAddr>) {
        self.allowance = Allowance::new(&ctx.subscriptions, client.map(|c| c.0));
    }

    /// The client's address, as per-address limits count it (when known).
    pub(crate) fn client(&self) -> Option<ClientAddr> {
        self.allowance.address().map(ClientAddr)
    }

    /// Subscribes `channel`; the replay is returned for the caller to deliver through
    /// [`Session::accept`]. Where the channel's namespace tracks presence, the connection
    /// then joins it as the member `grant` describes.
    pub(crate) async fn open(
        &mut self,
        ctx: &Context,
        channel: &ChannelName,
        from: StartFrom,
        grant: &Grant,
    ) -> Result<Opened, ParamError> {
        let rules = ctx.namespaces.rules(channel.as_str());
        let presence = ctx
            .presence
            .as_ref()
            .filter(|_| self.joins && rules.presence);
        if presence.is_some() {
            Memberships::check(rules, channel, grant)?;
        }
        self.allowance.take(grant)?;
        if let Err(e) = self.seats.take(&ctx.occupancy, channel, rules) {
            self.allowance.give_back(1);
            return Err(e);
        }
        let opened = match ctx.hub.subscribe(channel, from, &self.sink).await {
            Ok(opened) => opened,
            Err(e) => {
                self.allowance.give_back(1);
                self.seats.give_back(channel.as_str());
                return Err(hub_error(e));
            }
        };
        self.guard.add(channel.clone());
        self.positions.set(channel.clone(), opened.start);
        // Joined once subscribed, so that the member's own join is the first thing it
        // sees of the channel's presence.
        if let Some(presence) = presence
            && let Err(e) = self
                .memberships
                .join(ctx, presence, channel, rules, grant)
                .await
        {
            self.close(channel);
            return Err(e);
        }
        Ok(opened)
    }

    /// Unsubscribes `channel`; events of it still queued are dropped by [`Session::accept`].
    pub(crate) fn close(&mut self, channel: &ChannelName) {
        if self.is_subscribed(channel.as_str()) {
            self.allowance.give_back(1);
            self.seats.give_back(channel.as_str());
        }
        self.guard.remove(channel);
        self.positions.remove(channel.as_str());
        self.memberships.leave(channel);
    }

    pub(crate) fn is_subscribed(&self, channel: &str) -> bool {
        self.positions.get(channel).is_some()
    }

    /// The subscribed channels.
    pub(crate) fn channels(&self) -> Vec<ChannelName> {
        self.positions.iter().map(|(c, _)| c.clone()).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether `event` is the next one to deliver (it advances the position) or a stale
    /// copy, e.g. one queued before an unsubscribe and re-subscribe.
    pub(crate) fn accept(&mut self, event: &Event) -> bool {
        if event.is_transient() {
            return self.is_subscribed(event.channel().as_str());
        }
        match self.positions.get(event.channel().as_str()) {
            Some(p) if event.offset() > p.offset || event.position().epoch != p.epoch => {
                self.positions
                    .set(event.channel().clone(), event.position());
                true
            }
            _ => false,
        }
    }

    /// The position reached in `channel`.
    pub(crate) fn position(&self, channel: &str) -> Option<Position> {
        self.positions.get(channel)
    }

    /// The combined cursor of every subscribed channel.
    pub(crate) fn cursor(&self) -> String {
        self.positions.encode()
    }
}

pub(crate) fn hub_error(e: HubError) -> ParamError {
    ParamError::new(ErrorCode::Unavailable, e.to_string())
}

#[cfg(test)]
mod tests {
    use switchyard_protocol::{Cursor, ErrorCode, Position};

    use super::*;
    use crate::{
        TransportConfig,
        hub::HubError,
        testing::{FakeHub, context, event, event_at, name, pos, within},
    };

    async fn open(
        session: &mut Session,
        ctx: &Context,
        channel: &ChannelName,
        from: StartFrom,
    ) -> Result<Opened, ParamError> {
        within(
            "the subscription",
            session.open(ctx, channel, from, &crate::access::Grant::everything()),
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn open_subscribes_from_the_start_asked_and_records_the_start() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut session = Session::new(&ctx, None);
        hub.answer("a", pos(3), None, vec![event("a", 4), event("a", 5)]);
        let opened = open(&mut session, &ctx, &name("a"), StartFrom::Position(pos(3)))
            .await
            .unwrap();
        assert_eq!(opened.current(), pos(5), "the replay's last event");
        assert_eq!(
            hub.subscribed(),
            [("a".to_owned(), StartFrom::Position(pos(3)))]
        );
        assert_eq!(hub.sinks("a"), 1);
        assert!(session.is_subscribed("a"));
        assert_eq!(session.len(), 1);
        // The replay is not delivered yet: the position is the start, so a cursor taken now
        // resumes without losing it.
        assert_eq!(session.position("a"), Some(pos(3)));
        assert_eq!(session.cursor(), Cursor::single(name("a"), pos(3)).encode());
    }

    #[tokio::test(start_paused = true)]
    async fn accept_advances_in_order_and_drops_stale_duplicates() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut session = Session::new(&ctx, None);
        open(&mut session, &ctx, &name("a"), StartFrom::Offset(2))
            .await
            .unwrap();
        assert!(!session.accept(&event("a", 1)), "before the start");
        assert!(!session.accept(&event("a", 2)), "the start itself");
        assert!(session.accept(&event("a", 3)));
        assert!(!session.accept(&event("a", 3)), "a duplicate");
        assert!(session.accept(&event("a", 5)), "a later offset");
        assert!(!session.accept(&event("a", 4)), "an earlier offset");
        assert_eq!(session.position("a"), Some(pos(5)));
        assert!(
            !session.accept(&event("b", 1)),
            "a channel it does not hold"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_history_is_accepted_even_at_a_lower_offset() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut session = Session::new(&ctx, None);
        open(&mut session, &ctx, &name("a"), StartFrom::Position(pos(7)))
            .await
            .unwrap();
        let restarted = Position {
            epoch: 2,
            offset: 1,
        };
        assert!(session.accept(&event_at("a", restarted, "null")));
        assert_eq!(session.position("a"), Some(restarted));
    }

    #[tokio::test(start_paused = true)]
    async fn close_unsubscribes_and_drops_what_is_still_queued_for_the_channel() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut session = Session::new(&ctx, None);
        open(&mut session, &ctx, &name("a"), StartFrom::Now)
            .await
            .unwrap();
        open(&mut session, &ctx, &name("b"), StartFrom::Now)
            .await
            .unwrap();
        assert_eq!(hub.publish(&event("a", 1)), 1);
        session.close(&name("a"));
        assert_eq!(hub.unsubscribed(), ["a"]);
        assert_eq!(hub.sinks("a"), 0);
        assert!(!session.is_subscribed("a"));
        assert_eq!(session.channels(), [name("b")]);
        let queued = session.inbox.try_recv().expect("queued before the close");
        assert!(!session.accept(&queued), "stale once unsubscribed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resubscription_drops_the_copies_queued_by_the_old_one() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut session = Session::new(&ctx, None);
        open(&mut session, &ctx, &name("a"), StartFrom::Now)
            .await
            .unwrap();
        for n in 1..=3 {
            hub.publish(&event("a", n));
        }
        session.close(&name("a"));
        hub.answer("a", pos(2), None, vec![event("a", 3)]);
        let opened = open(&mut session, &ctx, &name("a"), StartFrom::Offset(2))
            .await
            .unwrap();
        let mut delivered = Vec::new();
        for event in &opened.replay {
            if session.accept(event) {
                delivered.push(event.offset());
            }
        }
        while let Some(event) = session.inbox.try_recv() {
            if session.accept(&event) {
                delivered.push(event.offset());
            }
        }
        assert_eq!(
            delivered,
            [3],
            "1 and 2 are behind the new start, 3 a duplicate"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_cursor_combines_every_channel() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut session = Session::new(&ctx, None);
        open(&mut session, &ctx, &name("a"), StartFrom::Offset(4))
            .await
            .unwrap();
        open(&mut session, &ctx, &name("b"), StartFrom::Now)
            .await
            .unwrap();
        assert!(session.accept(&event("b", 1)));
        let cursor = Cursor::decode(&session.cursor()).unwrap();
        assert_eq!(cursor.get("a"), Some(pos(4)));
        assert_eq!(cursor.get("b"), Some(pos(1)));
        assert_eq!(cursor.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hub_refusal_is_unavailable_and_subscribes_nothing() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut session = Session::new(&ctx, None);
        hub.fail("a", HubError::Unavailable("redis is down".into()));
        let err = open(&mut session, &ctx, &name("a"), StartFrom::Now)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert_eq!(err.message, "event hub unavailable: redis is down");
        assert!(!session.is_subscribed("a"));
        assert_eq!(session.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_session_unsubscribes_every_channel() {
        let hub = FakeHub::new();
        let ctx = context(&hub, TransportConfig::default());
        let mut session = Session::new(&ctx, None);
        for channel in ["a", "b"] {
            open(&mut session, &ctx, &name(channel), StartFrom::Now)
                .await
                .unwrap();
        }
        drop(session);
        assert_eq!((hub.sinks("a"), hub.sinks("b")), (0, 0));
        let mut gone = hub.unsubscribed();
        gone.sort();
        assert_eq!(gone, ["a", "b"]);
    }

    /// Presence that logs what sessions do, and holds at most one member per channel.
    #[derive(Default)]
    struct LoggedPresence(std::sync::Mutex<Vec<String>>);

    impl crate::presence::Presence for LoggedPresence {
        fn join<'a>(
            &'a self,
            channel: &'a ChannelName,
            _: &'a crate::namespaces::ChannelRules,
            member: crate::presence::Member,
        ) -> futures_util::future::BoxFuture<'a, Result<(), crate::presence::PresenceError>>
        {
            let mut log = self.0.lock().unwrap();
            let taken = log
                .iter()
                .filter(|l| l.starts_with(&format!("join {channel} ")))
                .count()
                > log
                    .iter()
                    .filter(|l| l.starts_with(&format!("leave {channel} ")))
                    .count();
            let result = if taken {
                Err(crate::presence::PresenceError::Full {
                    channel: channel.to_string(),
                    max: 1,
                })
            } else {
                log.push(format!(
                    "join {channel} {}",
                    member.user.unwrap_or_default()
                ));
                Ok(())
            };
            Box::pin(async move { result })
        }

        fn leave(&self, channel: &ChannelName, _: &crate::namespaces::ChannelRules, _: &str) {
            self.0.lock().unwrap().push(format!("leave {channel} "));
        }

        fn members<'a>(
            &'a self,
            _: &'a ChannelName,
        ) -> futures_util::future::BoxFuture<'a, Result<Vec<crate::presence::Member>, HubError>>
        {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn stats<'a>(
            &'a self,
            _: &'a ChannelName,
        ) -> futures_util::future::BoxFuture<'a, Result<crate::presence::PresenceStats, HubError>>
        {
            Box::pin(async { Ok(Default::default()) })
        }
    }

    /// A context whose `room/*` channels track presence through `presence`.
    fn presence_context(hub: &Arc<FakeHub>, presence: &Arc<LoggedPresence>) -> Context {
        use crate::namespaces::{ChannelRules, Namespaces};
        let mut ctx = Arc::into_inner(context(hub, TransportConfig::default())).unwrap();
        let room = ChannelRules {
            presence: true,
            ..ChannelRules::plain("room", 10, std::time::Duration::from_secs(60))
        };
        let pattern = switchyard_protocol::ChannelPattern::new("room/*").unwrap();
        ctx.namespaces = Arc::new(Namespaces::new(
            vec![(pattern, room)],
            ChannelRules::default(),
        ));
        ctx.presence = Some(Arc::clone(presence) as _);
        ctx
    }

    #[tokio::test(start_paused = true)]
    async fn connections_join_presence_channels_and_leave_on_close_and_drop() {
        let hub = FakeHub::new();
        let presence = Arc::new(LoggedPresence::default());
        let ctx = presence_context(&hub, &presence);
        let ann = crate::access::Grant::everything().with_user(Some("ann"), None);
        let mut session = Session::new(&ctx, None);
        for channel in ["room/a", "plain", "room/b"] {
            within(
                "open",
                session.open(&ctx, &name(channel), StartFrom::Now, &ann),
            )
            .await
            .unwrap();
        }
        session.close(&name("room/a"));
        session.close(&name("plain"));
        assert_eq!(
            crate::testing::metric(&ctx, "switchyard_presence_members"),
            "1"
        );
        drop(session);
        assert_eq!(
            *presence.0.lock().unwrap(),
            [
                "join room/a ann",
                "join room/b ann",
                "leave room/a ",
                "leave room/b "
            ]
        );
        assert_eq!(
            crate::testing::metric(&ctx, "switchyard_presence_members"),
            "0"
        );
        assert_eq!(
            crate::testing::metric(&ctx, "switchyard_presence_leaves_total"),
            "2"
        );

        // A long-poll is no member.
        let mut poll = Session::new(&ctx, None).without_presence();
        within(
            "open",
            poll.open(&ctx, &name("room/c"), StartFrom::Now, &ann),
        )
        .await
        .unwrap();
        drop(poll);
        assert_eq!(presence.0.lock().unwrap().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_join_subscribes_nothing() {
        let hub = FakeHub::new();
        let presence = Arc::new(LoggedPresence::default());
        let ctx = presence_context(&hub, &presence);
        let grant = crate::access::Grant::everything();
        let mut first = Session::new(&ctx, None);
        let mut second = Session::new(&ctx, None);
        within(
            "open",
            first.open(&ctx, &name("room/a"), StartFrom::Now, &grant),
        )
        .await
        .unwrap();
        let err = within(
            "open",
            second.open(&ctx, &name("room/a"), StartFrom::Now, &grant),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::PresenceFull);
        assert!(!second.is_subscribed("room/a"));
        assert_eq!(hub.sinks("room/a"), 1, "only the first");
        drop(second);
        assert_eq!(
            presence.0.lock().unwrap().len(),
            1,
            "the refused one never left"
        );
    }
}
