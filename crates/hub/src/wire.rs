//! The seam between a client and its transport: what [`drive`](crate::drive) needs from a wire.
//!
//! Every transport carries the same thing: frames of newline-delimited protocol commands up, and
//! [`Frame`]s (replies and pushes) down. What differs is the wire: one WebSocket connection, an HTTP
//! session made of many short requests, an Engine.IO session that starts on polling and upgrades
//! to a WebSocket. Everything else of a client's life is the same for all of them and lives once,
//! in [`drive`](crate::drive): draining the session queue onto the wire, the server's orders
//! (controls), the slow-consumer bound, the `disconnect` push with its reconnect delay, and when the
//! client counts as gone. A new transport is a new `Wire`, nothing else.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use switchboard_protocol::{DisconnectCode, Frame};

/// What a client sent, or what became of it, as its wire reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// One frame of commands (newline-delimited JSON), for [`crate::Client::handle_frame`].
    Commands(Bytes),
    /// The client broke the transport's own rules (a binary WebSocket message, say): the session
    /// ends with this code, and the client is told.
    End(DisconnectCode),
    /// The client is gone. `None`: silently (it closed, the connection dropped, the session
    /// expired): nobody is left to tell. `Some(code)`: the wire already told it why in its own way
    /// (a WebSocket close 3012 for an unanswered ping) and the disconnect counts under that code.
    Gone(Option<DisconnectCode>),
}

/// How the session ends on the wire, once [`drive`](crate::drive) decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Tell the client: the `disconnect` push (`push`, with its reconnect delay already in it),
    /// then whatever closing the wire has of its own (a WebSocket close frame with `code`).
    /// Everything queued before the decision was handed to the wire already, except for a slow
    /// client ([`DisconnectCode::Slow`]), whose queue is dropped: the wire drops what it holds too.
    Tell {
        /// Why the session ends.
        code: DisconnectCode,
        /// The `disconnect` push, as protocol text.
        push: Bytes,
    },
    /// Nobody is left to tell ([`Upstream::Gone`], or a wire that can no longer speak).
    Silent,
}

/// One client's transport, as [`drive`](crate::drive) sees it. All methods but
/// [`Wire::finish`] are called from the client's task between polls and must not block.
///
/// A wire that keeps frames after sending them, until the client acknowledges them (an HTTP
/// session's batches), reports how many bytes it holds with
/// [`Session::set_transport_queued`](crate::Session::set_transport_queued): the session applies the
/// slow-consumer bound to them as to its own queue, so that the rule is the same on every wire.
pub trait Wire: Send {
    /// The next thing the client did. Also the wire's chance to make progress of its own (writing
    /// what it holds, keepalives), so it is polled first at every wake-up of the client's task.
    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Upstream>;

    /// Whether the wire takes frames now. While it does not, frames wait in the session queue,
    /// where the slow-consumer bound counts them.
    fn ready(&self) -> bool {
        true
    }

    /// Takes one reply or push. Returns whether it takes more now (see [`Wire::ready`]).
    fn send(&mut self, frame: Frame) -> bool;

    /// Called after each run of [`Wire::send`]s: a wire that batches (or counts) does it here.
    fn flush(&mut self) {}

    /// The commands of the last [`Upstream::Commands`] were handled (`Err`: they end the session
    /// with that code), and their replies were handed to the wire. A wire that answers each
    /// upstream request (an HTTP POST) answers it here.
    fn handled(&mut self, outcome: Result<(), DisconnectCode>) {
        let _ = outcome;
    }

    /// Whether the wire can still tell the client something: when not, the session ends silently
    /// and the server's shutdown no longer concerns it.
    fn is_open(&self) -> bool;

    /// The session ends (see [`End`]). Called once, before the client is closed (so that the
    /// disconnect counts when it was decided, not when a slow client finally reads it).
    fn end(&mut self, end: End);

    /// Runs after the client is closed, for as long as the wire needs to deliver the end: a
    /// WebSocket close handshake, an HTTP session waiting for a request to carry the `disconnect`
    /// push. `code` is the one the session ended with (`None`: silently).
    fn finish(self, code: Option<DisconnectCode>) -> impl Future<Output = ()> + Send;

    /// A way for the fan-out to write publications itself while the wire is idle (see [`Lane`]).
    /// Asked once, when the client's task starts; `None` (the default): every frame goes through
    /// the session queue and the client's task.
    fn lane(&self) -> Option<Arc<dyn Lane>> {
        None
    }
}

/// A path around the client's task for publications: the fan-out writes a publication straight to
/// the client's socket when nothing waits ahead of it, instead of queueing it and waking the task.
///
/// Why: with one channel of ten thousand subscribers, the wake-up, poll and queue hand-over of each
/// subscriber's task cost a third more CPU per delivery than a plain loop of `write(2)` calls over
/// the same sockets (docs/benchmarks.md). The lane is that plain loop.
///
/// The session calls it under its queue's lock and only while that queue is empty, so a frame
/// written here is always the next one the client is owed. The wire takes it only when it holds
/// nothing of its own (not even part of a frame) and its socket accepts bytes without waiting;
/// otherwise the frame is queued as usual. A wire that wrote part of a frame keeps the rest and
/// writes it before anything else, once its task runs (the session wakes it).
pub trait Lane: Send + Sync + std::fmt::Debug {
    /// Tries to write `frame` now (see [`Sent`]).
    fn try_send(&self, frame: &Frame) -> Sent;

    /// Asks the CPU for what [`Lane::try_send`] reads first, ahead of the call (see
    /// [`crate::prefetch`]); by default nothing.
    fn prefetch(&self) {}
}

/// What became of a frame offered to a [`Lane`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Not taken: queue it.
    Not,
    /// Written whole.
    Whole,
    /// Partly written; the wire holds the rest and its task must be woken to write it.
    Part,
}
