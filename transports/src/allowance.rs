//! Subscriptions per client address and per consumer identity, so that no one address or
//! token can hold a server-wide share of subscriptions (and of the channels they make).
//!
//! One consumer token once opened 400 WebSockets from one address and subscribed 256 new
//! channel names on each. The per-connection limit held, but nothing bounded what one
//! address or one token held over all its connections. Each session's [`Allowance`]
//! counts its subscriptions against its client address and its token's subject (a JWT's
//! `sub`, a job token's job) in [`SubscriptionBudgets`]; past either budget a subscribe is
//! refused with `rate_limited`. Trusted callers (open mode, an API key with `subscribe`)
//! are not counted, as they are not rate limited either.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use switchyard_protocol::ErrorCode;

use crate::{access::Grant, params::ParamError};

/// Who a subscription is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Holder {
    Address(IpAddr),
    Subject(Arc<str>),
}

/// The budgets and what each holder has of them.
#[derive(Debug)]
pub struct SubscriptionBudgets {
    per_address: usize,
    per_subject: usize,
    /// Subscriptions held per holder; entries go when they reach zero.
    held: Mutex<HashMap<Holder, usize>>,
}

impl SubscriptionBudgets {
    /// At most `per_address` subscriptions per client address and `per_subject` per token
    /// subject (0: no limit).
    pub fn new(per_address: usize, per_subject: usize) -> Arc<Self> {
        Arc::new(Self {
            per_address,
            per_subject,
            held: Mutex::default(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Holder, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscriptions counted against `address`.
    pub fn held_by_address(&self, address: IpAddr) -> usize {
        self.held()
            .get(&Holder::Address(address))
            .copied()
            .unwrap_or(0)
    }
}

/// One session's subscriptions as counted against its holders; dropping it gives them all
/// back.
#[derive(Debug, Default)]
pub struct Allowance {
    budgets: Option<Arc<SubscriptionBudgets>>,
    address: Option<IpAddr>,
    /// Fixed by the first subscription: the holders its grant names (none when trusted).
    holders: Option<Vec<Holder>>,
    taken: usize,
}

impl Allowance {
    /// Counted against `address` (the client's, as per-address limits see it) and the
    /// subject of the grant of the session's first subscription.
    pub fn new(budgets: &Arc<SubscriptionBudgets>, address: Option<IpAddr>) -> Self {
        Self {
            budgets: Some(Arc::clone(budgets)),
            address,
            holders: None,
            taken: 0,
        }
    }

    /// The client address it counts against.
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }

    /// Takes one subscription for a holder of `grant`.
    ///
    /// # Errors
    /// `rate_limited` when the address or the subject holds its budget already.
    pub fn take(&mut self, grant: &Grant) -> Result<(), ParamError> {
        let Some(budgets) = &self.budgets else {
            return Ok(());
        };
        let address = self.address;
        let holders = self.holders.get_or_insert_with(|| {
            if grant.is_trusted() {
                return Vec::new();
            }
            let address = address
                .filter(|_| budgets.per_address > 0)
                .map(Holder::Address);
            let subject = grant
                .subject()
                .filter(|_| budgets.per_subject > 0)
                .map(|s| Holder::Subject(Arc::clone(s)));
            address.into_iter().chain(subject).collect()
        });
        if holders.is_empty() {
            return Ok(());
        }
        let mut held = budgets.held();
        for holder in holders.iter() {
            let (limit, whom) = match holder {
                Holder::Address(_) => (budgets.per_address, "client address"),
                Holder::Subject(_) => (budgets.per_subject, "token's subject"),
            };
            if held.get(holder).copied().unwrap_or(0) >= limit {
                return Err(ParamError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "this {whom} holds {limit} subscriptions over all its connections \
                         (limits.max_subscriptions_per_{}); unsubscribe or close some first",
                        if matches!(holder, Holder::Address(_)) {
                            "ip"
                        } else {
                            "user"
                        }
                    ),
                ));
            }
        }
        for holder in holders.iter() {
            *held.entry(holder.clone()).or_default() += 1;
        }
        self.taken += 1;
        Ok(())
    }

    /// Gives back `n` subscriptions.
    pub fn give_back(&mut self, n: usize) {
        let n = n.min(self.taken);
        let (Some(budgets), Some(holders)) = (&self.budgets, &self.holders) else {
            return;
        };
        if n == 0 || holders.is_empty() {
            return;
        }
        self.taken -= n;
        let mut held = budgets.held();
        for holder in holders {
            if let Some(count) = held.get_mut(holder) {
                *count = count.saturating_sub(n);
                if *count == 0 {
                    held.remove(holder);
                }
            }
        }
    }
}

impl Drop for Allowance {
    fn drop(&mut self) {
        self.give_back(self.taken);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use switchyard_protocol::ChannelPattern;

    use super::*;

    fn consumer(subject: &str) -> Grant {
        Grant::channels(vec![ChannelPattern::new("**").unwrap()], None::<SystemTime>)
            .with_subject(subject)
    }

    #[test]
    fn an_address_and_a_subject_each_hold_at_most_their_budget_over_all_sessions() {
        let budgets = SubscriptionBudgets::new(4, 2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let mut a = Allowance::new(&budgets, Some(ip));
        let mut b = Allowance::new(&budgets, Some(ip));
        a.take(&consumer("alice")).unwrap();
        b.take(&consumer("bob")).unwrap();
        b.take(&consumer("bob")).unwrap();
        // Bob's subject is at its budget; Alice's address then is too.
        let e = b.take(&consumer("bob")).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(
            e.message.contains("max_subscriptions_per_user"),
            "{}",
            e.message
        );
        a.take(&consumer("alice")).unwrap();
        let e = a.take(&consumer("alice")).unwrap_err();
        assert!(
            e.message.contains("max_subscriptions_per_ip"),
            "{}",
            e.message
        );
        // From elsewhere, Alice still may.
        let mut c = Allowance::new(&budgets, Some([10, 0, 0, 2].into()));
        c.take(&consumer("carol")).unwrap();
        drop(b);
        assert_eq!(budgets.held_by_address(ip), 2);
        a.give_back(1);
        assert_eq!(budgets.held_by_address(ip), 1);
        drop((a, c));
        assert!(budgets.held().is_empty(), "{:?}", budgets.held());
    }

    #[test]
    fn trusted_grants_and_unlimited_allowances_count_nothing() {
        let budgets = SubscriptionBudgets::new(1, 1);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let mut trusted = Allowance::new(&budgets, Some(ip));
        for _ in 0..5 {
            trusted.take(&Grant::everything()).unwrap();
        }
        let mut unlimited = Allowance::default();
        for _ in 0..5 {
            unlimited.take(&consumer("alice")).unwrap();
        }
        assert_eq!(budgets.held_by_address(ip), 0);
    }
}
