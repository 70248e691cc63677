//! Readiness of a remote engine's store, measured: what the Redis and NATS engines share.
//!
//! Connection state alone is not enough: a store that stops answering (paused, swapping, a network
//! that drops packets) leaves the TCP connections open, and an idle node sends nothing that would
//! notice. So each engine asks its store for a round trip (a PING, a request the server answers
//! itself) every [`ping_period`], and records here whether it was answered ([`Health`]), how the
//! state changed, and when the store was last in trouble.
//!
//! The last trouble matters for messages between nodes: one sent through a store that was in
//! trouble since (or came back only moments ago, when the other nodes may not listen again yet)
//! may have been lost, and its sender must not conclude that the other node is gone
//! ([`Engine::node_messages_uncertain`](crate::Engine::node_messages_uncertain)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The longest delay between two reconnect attempts: after the store is back, every node
/// reconnects within about this time.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How long a check that was not answered waits before the next one: the check itself waits up to
/// `command_timeout`, so the store counts as ready again as soon as it answers.
const RETRY: Duration = Duration::from_millis(50);

/// How often a store that answers is checked: every second, more often when `command_timeout` is
/// short, so that a store that stops answering is noticed within about `command_timeout`.
pub fn ping_period(command_timeout: Duration) -> Duration {
    (command_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// How long after the store was last in trouble a message between nodes may still have been lost:
/// the other nodes reconnect within [`RECONNECT_MAX`] of the store answering again, and notice an
/// outage within `command_timeout` of its start.
pub fn settle_time(command_timeout: Duration) -> Duration {
    RECONNECT_MAX + command_timeout
}

/// When the next check is due, for a check started at `started`: one `period` after it when it was
/// answered, at once (after a short pause) when not.
pub fn next_check(
    started: tokio::time::Instant,
    answering: bool,
    period: Duration,
) -> tokio::time::Instant {
    if answering {
        started + period
    } else {
        tokio::time::Instant::now() + RETRY
    }
}

/// One store's (or one shard's) measured state.
#[derive(Debug)]
pub struct Health {
    /// The last check was answered within `command_timeout`.
    answering: AtomicBool,
    /// When the store was last seen not serving (never: `None`).
    last_trouble: Mutex<Option<Instant>>,
    /// The state last reported and since when, for [`crate::ShardState`] and the logs.
    reported: Mutex<(bool, Instant)>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A store that just connected: ready.
    pub fn new() -> Self {
        Self {
            answering: AtomicBool::new(true),
            last_trouble: Mutex::new(None),
            reported: Mutex::new((true, Instant::now())),
        }
    }

    /// Whether the last check was answered.
    pub fn answering(&self) -> bool {
        self.answering.load(Ordering::Acquire)
    }

    /// Records the outcome of a check (or a lost connection: `false`).
    pub fn set_answering(&self, answering: bool) {
        self.answering.store(answering, Ordering::Release);
    }

    /// Records trouble seen now (a reconnect, a failed check).
    pub fn trouble(&self) {
        *self.last_trouble.lock() = Some(Instant::now());
    }

    /// When the store was last seen in trouble.
    pub fn last_trouble(&self) -> Option<Instant> {
        *self.last_trouble.lock()
    }

    /// Whether a message through the store sent at `since` may have been lost, the store being
    /// `ready` now: not ready, or in trouble less than `settle` before `since` or after it.
    pub fn uncertain_since(&self, ready: bool, since: Instant, settle: Duration) -> bool {
        !ready || self.last_trouble().is_some_and(|t| t + settle >= since)
    }

    /// Notes the state measured now (`ready`): not ready is trouble. Returns the state and for how
    /// long it has held. On a change, calls `changed` once with the new state and how long the old
    /// one held, for the engine to log it in its own words.
    pub fn observe(&self, ready: bool, changed: impl FnOnce(bool, Duration)) -> (bool, Duration) {
        if !ready {
            self.trouble();
        }
        let mut reported = self.reported.lock();
        if reported.0 != ready {
            let was = reported.1.elapsed();
            *reported = (ready, Instant::now());
            changed(ready, was);
        }
        (ready, reported.1.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ping_period_is_at_most_a_second_and_half_the_timeout() {
        assert_eq!(ping_period(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(
            ping_period(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(
            ping_period(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn changes_are_reported_once_and_trouble_is_remembered() {
        let h = Health::new();
        assert!(h.answering() && h.last_trouble().is_none());
        let mut changes = Vec::new();
        assert!(h.observe(true, |r, _| changes.push(r)).0);
        assert!(!h.uncertain_since(true, Instant::now(), Duration::from_secs(1)));
        let sent = Instant::now();
        for _ in 0..2 {
            h.set_answering(false);
            assert!(!h.observe(false, |r, _| changes.push(r)).0);
        }
        assert_eq!(changes, [false], "one change, reported once");
        assert!(h.last_trouble().is_some());
        assert!(h.uncertain_since(false, sent, Duration::ZERO), "not ready");
        assert!(
            h.uncertain_since(true, sent, Duration::from_secs(60)),
            "in trouble after it was sent"
        );
        let (ready, since) = h.observe(true, |r, _| changes.push(r));
        assert!(ready && since < Duration::from_secs(1));
        assert_eq!(changes, [false, true]);
        let later = Instant::now() + Duration::from_secs(120);
        assert!(
            !h.uncertain_since(true, later, Duration::from_secs(60)),
            "settled long before"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_check_is_a_period_later_or_at_once() {
        let started = tokio::time::Instant::now();
        let period = Duration::from_secs(1);
        assert_eq!(next_check(started, true, period), started + period);
        assert_eq!(next_check(started, false, period), started + RETRY);
    }
}
