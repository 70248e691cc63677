//! Readiness, measured ([`switchboard_engine::health`], shared with the NATS engine): each shard is
//! PINGed at least every second, and counts as down when the PING gets no answer within
//! `command_timeout`, when a connection is lost, or while its subscriptions are being restored.
//!
//! fred notices a Redis that stops answering (paused, swapping) only when a command waits too long:
//! an idle node sends no command, so without the PING it would report ready through a whole outage.
//! The PING is that command. Each shard's last trouble is kept (in its `Health`) for
//! [`Engine::node_messages_uncertain`](switchboard_engine::Engine::node_messages_uncertain).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::prelude::*;
use switchboard_engine::health::{next_check, ping_period};
use tokio::sync::broadcast::error::RecvError;

use crate::{Inner, Shard};

impl Shard {
    /// Whether this shard serves: its last PING was answered, both connections are up, and its
    /// subscriptions are all in place.
    pub(crate) fn ready(&self) -> bool {
        self.health.answering()
            && self.client.is_connected()
            && self.subscriber.is_connected()
            && !self.resyncing.load(Ordering::Acquire)
    }

    /// The state now, and for how long it has held. Notes a change (and logs it once).
    pub(crate) fn observe(&self) -> (bool, Duration) {
        self.health.observe(self.ready(), |ready, was| {
            if ready {
                tracing::info!(shard = %self.name, after = ?was, "Redis shard answers again; its channels work");
            } else {
                tracing::warn!(
                    shard = %self.name,
                    "Redis shard does not answer; its channels fail until it does (the node stays ready while another shard answers)"
                );
            }
        })
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
        shard.health.set_answering(answering);
        shard.observe();
        tokio::select! {
            () = tokio::time::sleep_until(next_check(started, answering, period)) => {}
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => shard.health.trouble(),
                Err(RecvError::Closed) => return,
            },
        }
    }
}
