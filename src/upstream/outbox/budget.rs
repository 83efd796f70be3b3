//! The replay's rate limit: a token bucket at `replay_rate` messages per second, plus one free send
//! for every live message deferred behind its topic's backlog, so the backlog shrinks by
//! `replay_rate` per second however fast readings arrive.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct ReplayBudget {
    /// Backlog messages per second.
    rate: f64,
    tokens: f64,
    refilled: Instant,
    /// Live messages deferred behind their topic's backlog since the replay began. The replay sends
    /// one of these free of `replay_rate`: the limit is on catching up, not on keeping up, or a
    /// gateway reading faster than `replay_rate` would never drain a backlog once it had one.
    deferred_credit: u64,
}

impl ReplayBudget {
    pub(super) fn new(rate: u32, now: Instant) -> ReplayBudget {
        ReplayBudget { rate: rate.max(1) as f64, tokens: 0.0, refilled: now, deferred_credit: 0 }
    }

    /// A new replay (a new connection).
    pub(super) fn restart(&mut self, now: Instant) {
        // One token to start with: the first backlog message need not wait a whole period.
        self.tokens = 1.0;
        self.refilled = now;
        self.deferred_credit = 0;
    }

    /// A live message went behind its topic's backlog.
    pub(super) fn deferred(&mut self) {
        self.deferred_credit += 1;
    }

    pub(super) fn refill(&mut self, now: Instant) {
        // At most a fifth of a second's worth saved up, so a replay does not start with a burst.
        let cap = (self.rate / 5.0).max(1.0);
        self.tokens = (self.tokens + self.rate * now.duration_since(self.refilled).as_secs_f64()).min(cap);
        self.refilled = now;
    }

    pub(super) fn allows(&self) -> bool {
        self.tokens >= 1.0 || self.deferred_credit > 0
    }

    /// One backlog message sent: deferred credit first, then a token.
    pub(super) fn spend(&mut self) {
        if self.deferred_credit > 0 {
            self.deferred_credit -= 1;
        } else {
            self.tokens -= 1.0;
        }
    }

    /// When the next token is due, if the budget allows nothing now.
    pub(super) fn next_allowed(&self, now: Instant) -> Option<Instant> {
        if self.allows() {
            return None;
        }
        let secs = (1.0 - self.tokens) / self.rate;
        Some(self.refilled.max(now) + Duration::from_secs_f64(secs))
    }
}
