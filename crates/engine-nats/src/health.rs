//! Readiness, measured ([`switchboard_engine::health`], shared with the Redis engine): the server
//! is asked for a round trip ([`round_trip`]) at least every second, and counts as down when it
//! does not answer within `command_timeout`, while the connection is lost, and while subscriptions
//! are being confirmed after a reconnect.
//!
//! After every reconnect the client sends its subscriptions again; once the server confirmed them
//! (a round trip after them), every channel this node is subscribed to is reported as a possible gap
//! ([`EngineHandler::on_stream_gap`](switchboard_engine::EngineHandler::on_stream_gap)): what was
//! published meanwhile never reached this node, and its subscribers must recover it from history.
//! The positions remembered for publishing are forgotten too: the server may have lost streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Event;
use futures_util::TryFutureExt;
use switchboard_engine::EngineError;
use switchboard_engine::health::{RECONNECT_MAX, next_check, ping_period};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::Inner;

/// The delay before reconnect attempt `attempts`: 0 first, then doubling from 50 ms up to
/// [`RECONNECT_MAX`].
pub(crate) fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(10);
    (Duration::from_millis(50) * 2u32.pow(exp)).min(RECONNECT_MAX)
}

impl Inner {
    /// Whether the engine serves: connected, answering, subscriptions in place.
    pub(crate) fn ready(&self) -> bool {
        self.health.answering()
            && self.connected().is_ok()
            && !self.resyncing.load(Ordering::Acquire)
    }

    /// The state now, and for how long it has held. Notes a change (and logs it once).
    pub(crate) fn observe(&self) -> (bool, Duration) {
        self.health.observe(self.ready(), |ready, was| {
            if ready {
                tracing::info!(servers = %self.name, after = ?was, "NATS answers again");
            } else {
                tracing::warn!(servers = %self.name, "NATS does not answer; channels fail until it does");
            }
        })
    }
}

/// A request the server answers itself (JetStream's account info), within `command_timeout`.
/// Its answer proves that the server processed everything this client sent before it (a
/// connection's messages are processed in order), subscriptions included, and that JetStream
/// serves. (`Client::flush` only writes out the client's buffer: a hung server would pass it.)
pub(crate) async fn round_trip(inner: &Inner) -> Result<(), EngineError> {
    let asked = inner
        .client
        .request(inner.js_info.clone(), bytes::Bytes::new())
        .map_err(|e| inner.error("round trip", e));
    match tokio::time::timeout(inner.config.command_timeout, asked).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(inner.error("round trip", "timed out")),
    }
}

/// The subject of JetStream's account info, in `domain` when one is configured.
pub(crate) fn js_info_subject(domain: Option<&str>) -> String {
    match domain {
        Some(d) => format!("$JS.{d}.API.INFO"),
        None => "$JS.API.INFO".into(),
    }
}

/// Asks the server for a round trip every [`ping_period`] (again and again while it does not
/// answer), recording what it sees. Runs until the engine stops.
pub(crate) async fn watch(inner: Arc<Inner>) {
    let timeout = inner.config.command_timeout;
    let period = ping_period(timeout);
    loop {
        let started = tokio::time::Instant::now();
        let answering = inner.connected().is_ok() && round_trip(&inner).await.is_ok();
        inner.health.set_answering(answering);
        inner.observe();
        tokio::time::sleep_until(next_check(started, answering, period)).await;
    }
}

/// Follows the client's connection events: a lost connection is trouble; a new one means
/// confirming every subscription and reporting every channel as a gap; a slow consumer (messages
/// dropped before this node read them) means every channel may have lost publications. Runs until
/// the engine stops.
pub(crate) async fn follow_events(inner: Arc<Inner>, mut events: UnboundedReceiver<Event>) {
    // The first connection is announced too; only a connection after a loss means a resync.
    let mut was_down = false;
    while let Some(event) = events.recv().await {
        match event {
            Event::Disconnected => {
                was_down = true;
                inner.health.trouble();
                inner.health.set_answering(false);
                inner.lasts.forget_all();
                inner.observe();
            }
            Event::Connected if was_down => {
                was_down = false;
                inner.health.trouble();
                inner.lasts.forget_all();
                resync(&inner).await;
            }
            Event::SlowConsumer(sid) => {
                tracing::warn!(
                    sid,
                    "NATS subscription fell behind; every channel must recover"
                );
                report_gaps(&inner);
            }
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }
}

/// Waits until the server confirmed the subscriptions the client sent again after reconnecting,
/// then reports every channel as a gap; not ready meanwhile.
async fn resync(inner: &Inner) {
    inner.resyncing.store(true, Ordering::Release);
    let mut delay = Duration::from_millis(20);
    loop {
        match round_trip(inner).await {
            Ok(()) => break,
            _ if inner.connected().is_err() => {
                // Lost again: the next Connected event resyncs.
                inner.resyncing.store(false, Ordering::Release);
                return;
            }
            _ => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
    inner.health.set_answering(true);
    // Only now: a subscriber resubscribing with recovery after this report sees every publication,
    // from history up to its read and live after it.
    let n = report_gaps(inner);
    if n > 0 {
        tracing::info!(servers = %inner.name, channels = n, "NATS is back: subscribers recover");
    }
    inner.health.trouble();
    inner.resyncing.store(false, Ordering::Release);
    inner.observe();
}

/// Reports every channel this node is subscribed to as a possible gap; how many.
pub(crate) fn report_gaps(inner: &Inner) -> usize {
    let channels: Vec<String> = inner.live.lock().keys().cloned().collect();
    if let Some(handler) = inner.handler() {
        for c in &channels {
            handler.on_stream_gap(c);
        }
    }
    channels.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_start_at_once_and_back_off_to_two_seconds() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(50));
        assert_eq!(reconnect_delay(3), Duration::from_millis(100));
        assert_eq!(reconnect_delay(100), RECONNECT_MAX);
    }
}
