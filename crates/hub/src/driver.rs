//! [`drive`]: one client's life, the same on every transport.
//!
//! The client's task owns its [`Client`] and its [`Wire`], and nothing else may touch either. It
//! waits for the first of: something from the wire (commands, or the client gone), something from
//! the session (frames to move onto the wire, the server's orders, a disconnect decided by the hub
//! or by the slow-consumer bound), and the server's shutdown. When the session ends it hands the
//! wire what was queued before the decision and the `disconnect` push, closes the client (which
//! counts the disconnect there and then), and lets the wire deliver the end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use prometheus_client::metrics::counter::Counter;
use switchboard_protocol::{DisconnectCode, encode};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::client::Client;
use crate::session::{Session, Signal};
use crate::wire::{End, Upstream, Wire};

/// What woke a client's task.
enum Event {
    Upstream(Upstream),
    Disconnect(DisconnectCode),
    Control,
}

/// Runs `client` over `wire` until the session ends, and ends it.
///
/// `shutdown` is the server's: when it is cancelled the client is told to reconnect
/// ([`DisconnectCode::Shutdown`]) after `reconnect_delay_ms()` milliseconds, a number each client
/// draws for itself so that a restart does not bring every client back in the same second. `None`:
/// the transport learns of the shutdown itself and ends its wire's upstream with
/// [`Upstream::End`]`(`[`DisconnectCode::Shutdown`]`)`, which is told the same way; one watch per
/// endpoint instead of one per client (each is a boxed future and a waiter on the token).
///
/// A plain function returning the future, rather than an `async fn`: an `async fn` keeps its
/// arguments apart from the locals they move into, and the client and its wire would take their
/// room twice in every connection's task.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold the client and the wire twice"
)]
pub fn drive<W: Wire>(
    mut client: Client,
    mut wire: W,
    shutdown: Option<CancellationToken>,
    reconnect_delay_ms: impl Fn() -> u64,
) -> impl Future<Output = ()> {
    async move {
        let shutdown = &shutdown;
        let session = std::sync::Arc::clone(client.session());
        let sent = client.node_metrics().messages_out(client.transport());
        if let Some(lane) = wire.lane() {
            session.set_lane(Some(lane));
        }
        let mut stop = shutdown.as_ref().map(ShutdownSignal::new);
        let end: Result<DisconnectCode, Option<DisconnectCode>> = loop {
            let event = std::future::poll_fn(|cx| {
                loop {
                    // The wire first: commands must not starve under a flood of publications, and
                    // polling a WebSocket also writes what is queued on it.
                    if let Poll::Ready(up) = wire.poll_upstream(cx) {
                        return Poll::Ready(Event::Upstream(up));
                    }
                    if wire.ready() {
                        match drain(&session, &mut wire, &sent, cx) {
                            Poll::Ready(Some(Signal::Disconnect(code))) => {
                                return Poll::Ready(Event::Disconnect(code));
                            }
                            Poll::Ready(Some(Signal::Control)) => {
                                return Poll::Ready(Event::Control);
                            }
                            // Frames moved: the wire may write them now.
                            Poll::Ready(None) => continue,
                            Poll::Pending => {}
                        }
                    }
                    if wire.is_open() && stop.as_mut().is_some_and(|s| s.poll(cx).is_ready()) {
                        return Poll::Ready(Event::Disconnect(DisconnectCode::Shutdown));
                    }
                    return Poll::Pending;
                }
            })
            .await;
            match event {
                Event::Upstream(Upstream::Commands(frame)) => {
                    // Boxed, as the other awaits below: inline, their futures would be part of every
                    // connection's task for its whole life, idle or not.
                    let outcome = Box::pin(client.handle_frame(&frame)).await;
                    // The replies are on the wire before it hears the outcome: an HTTP client that
                    // polls right after its POST is answered finds them.
                    drain_now(&session, &mut wire, &sent, false);
                    wire.handled(outcome);
                    if let Err(code) = outcome {
                        break Ok(code);
                    }
                }
                Event::Upstream(Upstream::End(code)) | Event::Disconnect(code) => break Ok(code),
                Event::Upstream(Upstream::Gone(code)) => break Err(code),
                Event::Control => Box::pin(client.apply_controls()).await,
            }
        };
        // Nothing more around the task: what follows must come after the frames queued so far.
        session.set_lane(None);
        let code = match end {
            Ok(code) if wire.is_open() => {
                // Replies queued before the decision (an error explaining it, say) go first; a slow
                // client's queue was already dropped by its session.
                drain_now(&session, &mut wire, &sent, true);
                let delay = (code == DisconnectCode::Shutdown).then(&reconnect_delay_ms);
                let push = encode::disconnect_push_after(code, delay);
                wire.end(End::Tell { code, push });
                Some(code)
            }
            Ok(code) => {
                wire.end(End::Silent);
                Some(code)
            }
            Err(code) => {
                wire.end(End::Silent);
                code
            }
        };
        // Counted and out of its channels now, when the decision is made: delivering the end may take
        // long with a client that does not read (a slow one). Both boxed: they hold the client and the
        // wire by value, and inline they would be sized into the task for its whole life.
        Box::pin(client.close(code)).await;
        Box::pin(wire.finish(code)).await;
    }
}

/// Moves queued frames onto the wire while it takes them. `Ready(Some(signal))` when the client
/// must be disconnected or has orders waiting.
fn drain<W: Wire>(
    session: &Session,
    wire: &mut W,
    sent: &Counter,
    cx: &mut Context<'_>,
) -> Poll<Option<Signal>> {
    let mut moved = 0;
    let drained = session.poll_drain(cx, |frame| {
        moved += 1;
        wire.send(frame)
    });
    if moved > 0 {
        wire.flush();
        sent.inc_by(moved);
    }
    drained
}

/// Moves queued frames onto the wire without waiting: what the client must read next (the replies to
/// its commands; with `all`, every frame before its `disconnect`, whether or not the wire is ready).
/// Otherwise only while the wire takes frames, so that what it cannot write yet stays counted by
/// the slow-consumer bound. The task's own waker is registered again the next time the loop polls,
/// and the session checks its queue after registering, so no wake-up is lost meanwhile; a signal
/// left unread here is found again then.
fn drain_now<W: Wire>(session: &Session, wire: &mut W, sent: &Counter, all: bool) {
    if !all && !wire.ready() {
        return;
    }
    let mut moved = 0;
    let _ = session.poll_drain(&mut Context::from_waker(Waker::noop()), |frame| {
        moved += 1;
        wire.send(frame) || all
    });
    if moved > 0 {
        wire.flush();
        sent.inc_by(moved);
    }
}

/// The server's shutdown signal, cheap to check on every wake-up of a connection task.
///
/// Polling a `WaitForCancellationFuture` locks the token's waiter list every time, and every
/// connection shares that lock: with ten thousand tasks woken per publication it was contended.
/// This polls it once, to register the task's waker, and afterwards only reads the token's flag;
/// cancelling the token still wakes the task through the registered waker.
pub struct ShutdownSignal<'a> {
    token: &'a CancellationToken,
    wait: Pin<Box<WaitForCancellationFuture<'a>>>,
    registered: bool,
}

impl std::fmt::Debug for ShutdownSignal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownSignal")
            .field("cancelled", &self.token.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl<'a> ShutdownSignal<'a> {
    /// Watches `token`.
    pub fn new(token: &'a CancellationToken) -> Self {
        Self {
            token,
            wait: Box::pin(token.cancelled()),
            registered: false,
        }
    }

    /// `Ready` once the token is cancelled; registers `cx`'s waker the first time.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && !self.token.is_cancelled() {
            return Poll::Pending;
        }
        self.registered = true;
        self.wait.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use switchboard_engine::MemoryEngine;
    use switchboard_protocol::Frame;

    use super::*;
    use crate::node::{Node, NodeConfig};

    /// What a scripted wire saw, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Frame(String),
        Handled(Result<(), DisconnectCode>),
        Told(DisconnectCode, String),
        Silent,
        Finished(Option<DisconnectCode>),
    }

    /// A wire that plays `script` (then waits), records what it is given, and, like an HTTP
    /// session, reports `holds` bytes as kept after each flush.
    struct Scripted {
        script: VecDeque<Upstream>,
        seen: Arc<Mutex<Vec<Seen>>>,
        session: Arc<Session>,
        holds: usize,
        open: bool,
        /// Frames it takes before it is full (it never drains in these tests).
        room: usize,
    }

    impl Wire for Scripted {
        fn poll_upstream(&mut self, _: &mut Context<'_>) -> Poll<Upstream> {
            self.script.pop_front().map_or(Poll::Pending, Poll::Ready)
        }

        fn ready(&self) -> bool {
            self.room > 0
        }

        fn send(&mut self, frame: Frame) -> bool {
            let text = frame.as_str().unwrap().to_owned();
            self.seen.lock().unwrap().push(Seen::Frame(text));
            self.room = self.room.saturating_sub(1);
            self.ready()
        }

        fn flush(&mut self) {
            self.session.set_transport_queued(self.holds);
        }

        fn handled(&mut self, outcome: Result<(), DisconnectCode>) {
            self.seen.lock().unwrap().push(Seen::Handled(outcome));
        }

        fn is_open(&self) -> bool {
            self.open
        }

        fn end(&mut self, end: End) {
            let seen = match end {
                End::Tell { code, push } => {
                    Seen::Told(code, String::from_utf8(push.to_vec()).unwrap())
                }
                End::Silent => Seen::Silent,
            };
            self.seen.lock().unwrap().push(seen);
        }

        async fn finish(self, code: Option<DisconnectCode>) {
            self.seen.lock().unwrap().push(Seen::Finished(code));
        }
    }

    fn node(queue_bytes: usize) -> Arc<Node> {
        let mut config = NodeConfig::default();
        config.client.queue_bytes = queue_bytes;
        config.client.allow_anonymous = true;
        Node::new(Arc::new(MemoryEngine::new()), config, None)
    }

    fn commands(text: &str) -> Upstream {
        Upstream::Commands(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// Drives a client of `node` over a wire playing `script`; returns what the wire saw.
    async fn run(
        node: &Arc<Node>,
        script: Vec<Upstream>,
        holds: usize,
        open: bool,
        shutdown: &CancellationToken,
    ) -> Vec<Seen> {
        run_with_room(node, script, holds, open, shutdown, usize::MAX).await
    }

    async fn run_with_room(
        node: &Arc<Node>,
        script: Vec<Upstream>,
        holds: usize,
        open: bool,
        shutdown: &CancellationToken,
        room: usize,
    ) -> Vec<Seen> {
        let client = node.client("test");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let wire = Scripted {
            script: script.into(),
            seen: Arc::clone(&seen),
            session: Arc::clone(client.session()),
            holds,
            open,
            room,
        };
        tokio::time::timeout(
            Duration::from_secs(5),
            drive(client, wire, Some(shutdown.clone()), || 1234),
        )
        .await
        .unwrap();
        Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
    }

    /// A lane that takes everything and records it.
    #[derive(Debug, Default)]
    struct Recording(Mutex<Vec<String>>);

    impl crate::wire::Lane for Recording {
        fn try_send(&self, frame: &Frame) -> crate::wire::Sent {
            self.0
                .lock()
                .unwrap()
                .push(frame.as_str().unwrap().to_owned());
            crate::wire::Sent::Whole
        }
    }

    /// A wire with a lane: a publication reaches its session while the client runs, another as
    /// the session ends.
    struct LaneWire {
        lane: Arc<Recording>,
        session: Arc<Session>,
        polled: bool,
    }

    impl Wire for LaneWire {
        fn poll_upstream(&mut self, _: &mut Context<'_>) -> Poll<Upstream> {
            if std::mem::replace(&mut self.polled, true) {
                return Poll::Pending;
            }
            let publication = Frame::shared(Bytes::from_static(b"while running"));
            self.session.deliver("c", 1, &publication, true);
            Poll::Ready(Upstream::End(DisconnectCode::BadRequest))
        }

        fn send(&mut self, _: Frame) -> bool {
            true
        }

        fn is_open(&self) -> bool {
            true
        }

        fn end(&mut self, _: End) {
            let publication = Frame::shared(Bytes::from_static(b"at the end"));
            self.session.deliver("c", 2, &publication, true);
        }

        async fn finish(self, _: Option<DisconnectCode>) {}

        fn lane(&self) -> Option<Arc<dyn crate::wire::Lane>> {
            Some(Arc::clone(&self.lane) as Arc<dyn crate::wire::Lane>)
        }
    }

    /// The wire's lane serves while the client runs, and is taken back before the session ends:
    /// nothing may be written around the `disconnect` push.
    #[tokio::test]
    async fn the_lane_serves_while_the_client_runs_and_not_once_it_ends() {
        let node = node(1 << 20);
        let client = node.client("test");
        let lane = Arc::new(Recording::default());
        let wire = LaneWire {
            lane: Arc::clone(&lane),
            session: Arc::clone(client.session()),
            polled: false,
        };
        tokio::time::timeout(Duration::from_secs(5), drive(client, wire, None, || 0))
            .await
            .unwrap();
        assert_eq!(*lane.0.lock().unwrap(), ["while running"]);
    }

    #[tokio::test]
    async fn replies_reach_the_wire_before_it_hears_the_outcome() {
        let node = node(1 << 20);
        let seen = run(
            &node,
            vec![commands(r#"{"id":1,"connect":{}}"#), Upstream::Gone(None)],
            0,
            true,
            &CancellationToken::new(),
        )
        .await;
        assert!(
            matches!(&seen[0], Seen::Frame(t) if t.contains(r#""id":1"#)),
            "{seen:?}"
        );
        assert_eq!(
            seen[1..],
            [Seen::Handled(Ok(())), Seen::Silent, Seen::Finished(None)]
        );
        let connected = node
            .metrics()
            .connections
            .get_or_create(&vec![("transport", "test")])
            .get();
        assert_eq!(connected, 0, "the client is closed");
    }

    #[tokio::test]
    async fn a_shutdown_tells_the_client_when_to_come_back() {
        let node = node(1 << 20);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let seen = run(&node, Vec::new(), 0, true, &shutdown).await;
        let [
            Seen::Told(DisconnectCode::Shutdown, push),
            Seen::Finished(Some(_)),
        ] = &seen[..]
        else {
            panic!("{seen:?}");
        };
        assert!(push.contains(r#""delay":1234"#), "{push}");
    }

    #[tokio::test]
    async fn what_the_wire_holds_makes_a_slow_client_like_a_full_queue() {
        let node = node(1000);
        let seen = run(
            &node,
            vec![commands(r#"{"id":1,"connect":{}}"#)],
            1001,
            true,
            &CancellationToken::new(),
        )
        .await;
        assert!(
            matches!(
                seen.last(),
                Some(Seen::Finished(Some(DisconnectCode::Slow)))
            ),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|s| matches!(s, Seen::Told(DisconnectCode::Slow, _)))
        );
        let slow = node
            .metrics()
            .disconnects
            .get_or_create(&vec![("code", DisconnectCode::Slow.label())])
            .get();
        assert_eq!(slow, 1, "counted when decided");
    }

    #[tokio::test]
    async fn a_broken_rule_is_told_unless_the_wire_cannot_speak() {
        let node = node(1 << 20);
        let none = CancellationToken::new();
        let seen = run(
            &node,
            vec![Upstream::End(DisconnectCode::BadRequest)],
            0,
            true,
            &none,
        )
        .await;
        assert!(
            matches!(&seen[0], Seen::Told(DisconnectCode::BadRequest, p) if p.contains("3501"))
        );
        // A wire that cannot speak any more (a WebSocket that closed with 3012 itself): silent,
        // counted under the code it reported.
        let seen = run(
            &node,
            vec![Upstream::Gone(Some(DisconnectCode::NoPong))],
            0,
            false,
            &none,
        )
        .await;
        assert_eq!(
            seen,
            [Seen::Silent, Seen::Finished(Some(DisconnectCode::NoPong))]
        );
    }

    #[tokio::test]
    async fn a_full_wire_gets_replies_only_when_the_session_ends() {
        let node = node(1 << 20);
        let seen = run_with_room(
            &node,
            vec![
                commands(r#"{"id":1,"connect":{}}"#),
                Upstream::End(DisconnectCode::BadRequest),
            ],
            0,
            true,
            &CancellationToken::new(),
            0,
        )
        .await;
        // The reply waited in the session (counted by its bound) while the wire was full, and
        // still went out before the disconnect push.
        assert_eq!(seen[0], Seen::Handled(Ok(())));
        assert!(
            matches!(&seen[1], Seen::Frame(t) if t.contains(r#""id":1"#)),
            "{seen:?}"
        );
        assert!(matches!(
            &seen[2],
            Seen::Told(DisconnectCode::BadRequest, _)
        ));
    }
}
