//! Readiness, measured: each shard is PINGed at least every second, and counts as down when the PING
//! gets no answer within `command_timeout`, when a connection is lost, or while its subscriptions
//! are being restored.
//!
//! Connection state alone is not enough: a Redis that stops answering (paused, swapping, a network
//! that drops packets) leaves the TCP connections open, and fred notices only when a command waits
//! too long. An idle node sends no command, so without the PING it would report ready through a
//! whole outage. The PING is that command.
//!
//! The last time each shard was seen in trouble is kept too: a message between nodes sent through a
//! shard that was in trouble since (or came back only moments ago, when the other nodes may not
//! listen again yet) may have been lost, and its sender must not conclude that the other node is
//! gone ([`Engine::node_messages_uncertain`](switchboard_engine::Engine::node_messages_uncertain)).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;

use crate::{Inner, Shard};

/// The longest delay between two reconnect attempts (see `builder`): after Redis is back, every node
/// reconnects within about this time.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How often a shard that answers is PINGed: every second, more often when `command_timeout` is
/// short, so that a shard that stops answering is noticed within about `command_timeout`.
pub(crate) fn ping_period(command_timeout: Duration) -> Duration {
    (command_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// How long after a shard was last in trouble a message through it may still have been lost: the
/// other nodes reconnect within [`RECONNECT_MAX`] of Redis answering again, and notice an outage
/// within `command_timeout` of its start.
pub(crate) fn settle_time(command_timeout: Duration) -> Duration {
    RECONNECT_MAX + command_timeout
}

/// One shard's measured state.
#[derive(Debug)]
pub(crate) struct Health {
    /// The last PING was answered within `command_timeout`.
    answering: AtomicBool,
    /// When the shard was last seen not serving (never: `None`).
    last_trouble: Mutex<Option<Instant>>,
    /// The state last reported and since when, for [`switchboard_engine::ShardState`] and the logs.
    reported: Mutex<(bool, Instant)>,
}

impl Health {
    /// A shard that just connected: ready.
    pub(crate) fn new() -> Self {
        Self {
            answering: AtomicBool::new(true),
            last_trouble: Mutex::new(None),
            reported: Mutex::new((true, Instant::now())),
        }
    }

    /// Records trouble seen now (a reconnect, a failed PING).
    pub(crate) fn trouble(&self) {
        *self.last_trouble.lock() = Some(Instant::now());
    }

    /// When the shard was last seen in trouble.
    pub(crate) fn last_trouble(&self) -> Option<Instant> {
        *self.last_trouble.lock()
    }
}

impl Shard {
    /// Whether this shard serves: its last PING was answered, both connections are up, and its
    /// subscriptions are all in place.
    pub(crate) fn ready(&self) -> bool {
        self.health.answering.load(Ordering::Acquire)
            && self.client.is_connected()
            && self.subscriber.is_connected()
            && !self.resyncing.load(Ordering::Acquire)
    }

    /// Whether a message through this shard sent at `since` may have been lost (see the module's
    /// comment).
    pub(crate) fn uncertain_since(&self, since: Instant, settle: Duration) -> bool {
        !self.ready()
            || self
                .health
                .last_trouble()
                .is_some_and(|t| t + settle >= since)
    }

    /// The state now, and for how long it has held. Notes a change (and logs it once).
    pub(crate) fn observe(&self) -> (bool, Duration) {
        let ready = self.ready();
        if !ready {
            self.health.trouble();
        }
        let mut reported = self.health.reported.lock();
        if reported.0 != ready {
            let was = reported.1.elapsed();
            *reported = (ready, Instant::now());
            if ready {
                tracing::info!(shard = %self.name, after = ?was, "Redis shard answers again; its channels work");
            } else {
                tracing::warn!(
                    shard = %self.name,
                    "Redis shard does not answer; its channels fail until it does (the node stays ready while another shard answers)"
                );
            }
        }
        (ready, reported.1.elapsed())
    }
}

/// PINGs shard `index` every [`ping_period`] (at once after a reconnect, and again and again while
/// it does not answer), recording what it sees. Runs until the engine stops.
pub(crate) async fn watch(inner: Arc<Inner>, index: usize) {
    let shard = &inner.shards[index];
    let timeout = inner.config.command_timeout;
    let period = ping_period(timeout);
    let mut reconnects = shard.client.reconnect_rx();
    loop {
        let started = tokio::time::Instant::now();
        let pong = tokio::time::timeout(timeout, shard.client.ping::<Value>(None)).await;
        let answering = matches!(pong, Ok(Ok(_)));
        shard.health.answering.store(answering, Ordering::Release);
        shard.observe();
        // Down: ask again at once (the PING itself waits up to `command_timeout`), so that the
        // shard counts as ready as soon as it answers. Up: once a period.
        let next = if answering {
            started + period
        } else {
            tokio::time::Instant::now() + Duration::from_millis(50)
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => shard.health.trouble(),
                Err(RecvError::Closed) => return,
            },
        }
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
}
