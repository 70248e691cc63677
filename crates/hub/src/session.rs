//! A client's outgoing side as the hub sees it: a byte-bounded queue of encoded frames that any thread
//! may push to, and that the client's transport drains. While the queue is empty, a publication may
//! instead go straight to the client's socket through its wire's [`Lane`], under the queue's lock,
//! so that it is still the next thing the client reads.
//!
//! The bound is the slow-consumer policy, the one rule for every transport: a client for which more
//! than `queue_bytes` would wait (in this queue, plus what its wire holds unacknowledged and reports
//! with [`Session::set_transport_queued`]) is not silently skipped; its queue is dropped and it is
//! disconnected with `slow` (3008), which tells it to reconnect and recover the missed publications
//! from history. Nothing grows without bound, and no message is lost without the client being told.
//!
//! Recovery must then work whatever the bound: what a slow client missed is by definition more than
//! its queue holds. So a recovery larger than the queue is *replayed*: the client's task moves the
//! missed publications into the queue a piece at a time, each time the queue has drained to a quarter
//! of its bound (see [`Control::Replay`]), while the channel's live publications are not queued (the
//! replay reads them from history in turn) until the replay has caught up with the live stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;
use switchboard_protocol::{DisconnectCode, Frame};

use crate::receipt::Receipt;
use crate::small_map::SmallMap;
use crate::wire::{Lane, Sent};

/// The shared half of a client: what the hub delivers to.
#[derive(Debug)]
pub struct Session {
    key: u64,
    /// Shared with the node's registry of connected clients, which is keyed by it.
    client: Arc<str>,
    limit: usize,
    /// Unix seconds when the connection's token expires; 0: never. Read by the node's expiry sweep.
    expires_at: AtomicU64,
    /// Unix seconds when the earliest expiring subscription expires; 0: none does.
    sub_expires_at: AtomicU64,
    /// The connection was granted by the connect proxy: at expiry ask the refresh proxy instead of
    /// disconnecting.
    refresh_by_proxy: AtomicBool,
    outbox: Mutex<Outbox>,
    waker: AtomicWaker,
    /// Bytes the transport holds for the client beyond this queue (a fallback session's unacknowledged
    /// batches), reported by the transport for metrics.
    transport_queued: AtomicU64,
}

#[derive(Debug, Default)]
struct Outbox {
    items: VecDeque<Frame>,
    bytes: usize,
    /// Channels being subscribed: live publications wait here until the subscribe reply is queued, so
    /// that they follow the recovered ones in offset order.
    pending: SmallMap<Vec<(u64, Frame)>>,
    closed: Option<DisconnectCode>,
    /// Dropped channels and orders: rare, so boxed, and only while there are some (two empty
    /// vectors would keep every session's struct above an allocator size class).
    notes: Option<Box<Notes>>,
    /// Channels whose missed publications the client's task is replaying from history: their live
    /// publications are not queued, since the replay reads them from history when it gets there.
    replaying: SmallMap<()>,
    /// A [`Control::Replay`] order is queued or being carried out.
    replay_asked: bool,
    /// Channels just subscribed with history: the offset up to which the client has the publications
    /// already (from the reply, the replay or the buffer). A remote engine delivers asynchronously,
    /// so one of them can still arrive after the history read that included it: it is skipped, not
    /// doubled. Forgotten at the first live publication past it (a channel's publications arrive in
    /// offset order, so none at or below it can follow).
    delivered_up_to: SmallMap<u64>,
    /// The wire's path around the client's task, while it has one (see [`Lane`]).
    lane: Option<Arc<dyn Lane>>,
}

/// What the client's task is to learn at its next turn.
#[derive(Debug, Default)]
struct Notes {
    /// Channels the hub dropped this session from; the client forgets them at its next command.
    dropped: Vec<String>,
    /// Orders from the server API, applied by the client's task.
    controls: Vec<Control>,
}

impl Outbox {
    fn notes(&mut self) -> &mut Notes {
        self.notes.get_or_insert_with(Box::default)
    }

    fn has_controls(&self) -> bool {
        self.notes.as_ref().is_some_and(|n| !n.controls.is_empty())
    }

    /// Takes what `field` picks from the notes, and frees them once both are empty.
    fn take_notes<T>(&mut self, field: impl FnOnce(&mut Notes) -> &mut Vec<T>) -> Vec<T> {
        let Some(notes) = self.notes.as_mut() else {
            return Vec::new();
        };
        let taken = std::mem::take(field(notes));
        if notes.dropped.is_empty() && notes.controls.is_empty() {
            self.notes = None;
        }
        taken
    }
}

/// An order for a client from the server side (the HTTP API), carried out by the client's own task
/// because only it owns the client's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Subscribe the client to a channel (a `subscribe` push tells it); the receipt is signed once
    /// the client is subscribed.
    Subscribe(String, Receipt),
    /// Unsubscribe the client (an `unsubscribe` push with code 2000 tells it); the receipt is
    /// signed once publications of the channel no longer reach it.
    Unsubscribe(String, Receipt),
    /// The connection reached its expiry and the refresh proxy decides whether it goes on.
    Refresh,
    /// Some subscription reached its expiry.
    SubscriptionsExpired,
    /// A channel is being replayed (see [`Session::start_replay`]) and the queue has drained to a
    /// quarter of its bound: move more recovered publications into it, then call
    /// [`Session::replay_wanted`].
    Replay,
}

/// Why [`Session::poll_drain`] woke the transport besides queued frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Disconnect the client with this code.
    Disconnect(DisconnectCode),
    /// Orders are waiting: call [`crate::Client::apply_controls`].
    Control,
}

impl Session {
    /// A session for client `client` with an outgoing queue of at most `limit` bytes.
    pub fn new(key: u64, client: String, limit: usize) -> Self {
        Self {
            key,
            client: client.into(),
            limit,
            expires_at: AtomicU64::new(0),
            sub_expires_at: AtomicU64::new(0),
            refresh_by_proxy: AtomicBool::new(false),
            outbox: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
            transport_queued: AtomicU64::new(0),
        }
    }

    /// The client's id.
    pub fn client_id(&self) -> &str {
        &self.client
    }

    /// The client's id, to share.
    pub(crate) fn shared_client_id(&self) -> &Arc<str> {
        &self.client
    }

    /// The bound of the queue (`[client] queue_bytes`).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Sets when the connection expires (`None`: never).
    pub fn set_expires_at(&self, at: Option<u64>) {
        self.expires_at.store(at.unwrap_or(0), Ordering::Relaxed);
    }

    /// Whether the connection's token expired by `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        let at = self.expires_at.load(Ordering::Relaxed);
        at != 0 && now >= at
    }

    /// At expiry, ask the refresh proxy (connections the connect proxy granted) rather than
    /// disconnecting.
    pub fn set_refresh_by_proxy(&self, yes: bool) {
        self.refresh_by_proxy.store(yes, Ordering::Relaxed);
    }

    /// Sets when the earliest expiring subscription expires (`None`: none does).
    pub fn set_subscriptions_expire_at(&self, at: Option<u64>) {
        self.sub_expires_at
            .store(at.unwrap_or(0), Ordering::Relaxed);
    }

    /// The node's once-a-second expiry check: disconnects an expired connection (3005), or orders its
    /// task to ask the refresh proxy; orders a check of expired subscriptions. The deadlines are
    /// cleared when an order is queued, so the order is not repeated while the task works on it.
    pub(crate) fn check_expiry(&self, now: u64) -> bool {
        let mut acted = false;
        if self.expired(now) {
            acted = true;
            if self.refresh_by_proxy.load(Ordering::Relaxed) {
                self.expires_at.store(0, Ordering::Relaxed);
                self.control(Control::Refresh);
            } else {
                self.disconnect(DisconnectCode::Expired);
                return true;
            }
        }
        let at = self.sub_expires_at.load(Ordering::Relaxed);
        if at != 0 && now >= at {
            acted = true;
            self.sub_expires_at.store(0, Ordering::Relaxed);
            self.control(Control::SubscriptionsExpired);
        }
        acted
    }

    /// A number unique to this session within the node (cheaper to hash than the client id).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Queues a publication of `channel` at `offset` (buffered while that channel is being subscribed).
    /// `direct`: the wire's [`Lane`] may write it at once instead, if nothing waits in the queue.
    pub fn deliver(&self, channel: &str, offset: u64, msg: &Frame, direct: bool) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_some() {
            return;
        }
        if !ob.pending.is_empty()
            && let Some(waiting) = ob.pending.get_mut(channel)
        {
            waiting.push((offset, msg.clone()));
            let len = msg.len();
            self.account(&mut ob, len);
            return;
        }
        if !ob.replaying.is_empty() && ob.replaying.contains_key(channel) {
            // Still in history: the replay queues it in its turn.
            return;
        }
        if !ob.delivered_up_to.is_empty()
            && let Some(&up_to) = ob.delivered_up_to.get(channel)
        {
            if offset != 0 && offset <= up_to {
                return;
            }
            ob.delivered_up_to.remove(channel);
        }
        // Nothing waits ahead of it: the wire may write it at once, without the client's task. One
        // larger than the bound is never delivered, on any path (docs/protocol.md).
        if direct
            && ob.items.is_empty()
            && msg.len() <= self.limit
            && let Some(lane) = &ob.lane
        {
            match lane.try_send(msg) {
                Sent::Whole => return,
                Sent::Part => {
                    self.waker.wake();
                    return;
                }
                Sent::Not => {}
            }
        }
        self.enqueue(&mut ob, msg.clone());
    }

    /// Gives the session its wire's [`Lane`] (`None`: takes it back, before the wire ends, so that
    /// nothing is written around the `disconnect` push and the close).
    pub fn set_lane(&self, lane: Option<Arc<dyn Lane>>) {
        self.outbox.lock().lane = lane;
    }

    /// Asks the CPU for the session's lines, ahead of a [`Session::deliver`] (see [`crate::prefetch`]).
    pub(crate) fn prefetch(&self) {
        crate::prefetch::prefetch(self);
    }

    /// Asks the CPU for its lane's lines, ahead of a [`Session::deliver`]; best called once the
    /// session's own lines are at hand (a [`Session::prefetch`] earlier). Skipped if the lock is
    /// taken: a hint is not worth a wait.
    pub(crate) fn prefetch_lane(&self) {
        if let Some(ob) = self.outbox.try_lock()
            && let Some(lane) = &ob.lane
        {
            lane.prefetch();
        }
    }

    /// Queues a reply or a push.
    pub fn push(&self, msg: Frame) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_none() {
            self.enqueue(&mut ob, msg);
        }
    }

    /// Starts buffering live publications of `channel` (before its subscription is set up).
    pub fn begin_subscribe(&self, channel: &str) {
        self.outbox
            .lock()
            .pending
            .insert(channel.to_owned(), Vec::new());
    }

    /// Queues the subscribe reply (if any: subscriptions made at connect are answered in the connect
    /// reply), then the live publications buffered meanwhile whose offset is past `after` (all of them
    /// in channels without history, where offsets are 0).
    ///
    /// Also ends the replay of `channel`, if it was replayed: the replay's last catch-up read with
    /// [`Session::begin_subscribe`] reached the live stream at `after`.
    pub fn complete_subscribe(&self, channel: &str, reply: Option<Frame>, after: u64) {
        let mut ob = self.outbox.lock();
        let waiting = ob.pending.remove(channel).unwrap_or_default();
        for (_, msg) in &waiting {
            ob.bytes = ob.bytes.saturating_sub(msg.len());
        }
        ob.replaying.remove(channel);
        if ob.closed.is_some() {
            return;
        }
        if let Some(reply) = reply {
            self.enqueue(&mut ob, reply);
        }
        let mut up_to = after;
        for (offset, msg) in waiting {
            if offset == 0 || offset > after {
                up_to = up_to.max(offset);
                self.enqueue(&mut ob, msg);
            }
        }
        if up_to > 0 && ob.closed.is_none() {
            ob.delivered_up_to.insert(channel.to_owned(), up_to);
        }
    }

    /// Drops the buffer of a subscription that failed.
    pub fn abort_subscribe(&self, channel: &str) {
        let mut ob = self.outbox.lock();
        Self::drop_pending(&mut ob, channel);
    }

    /// Queues the subscribe reply of a recovery too large for the queue, and starts replaying
    /// `channel`: the live publications buffered since [`Session::begin_subscribe`] are dropped, and
    /// later ones are not queued, because the client's task moves the missed publications from
    /// history into the queue a piece at a time (on [`Control::Replay`]), reading the live ones from
    /// history in their turn, until a catch-up read reaches the live stream and
    /// [`Session::complete_subscribe`] ends the replay.
    pub fn start_replay(&self, channel: &str, reply: Frame) {
        let mut ob = self.outbox.lock();
        Self::drop_pending(&mut ob, channel);
        if ob.closed.is_some() {
            return;
        }
        ob.replaying.insert(channel.to_owned(), ());
        self.enqueue(&mut ob, reply);
        self.ask_replay_if_due(&mut ob);
    }

    /// A catch-up read of a replayed channel (begun with [`Session::begin_subscribe`]) did not reach
    /// the live stream, or not all of it fitted: drop the live publications buffered meanwhile (the
    /// replay will read them from history) and go on replaying.
    pub fn resume_replay(&self, channel: &str) {
        let mut ob = self.outbox.lock();
        Self::drop_pending(&mut ob, channel);
    }

    /// Forgets what this session holds for `channel`'s subscription (its buffer, its replay, where
    /// its delivery stands): the client left the channel, or its replay failed.
    pub fn forget(&self, channel: &str) {
        let mut ob = self.outbox.lock();
        Self::drop_pending(&mut ob, channel);
        ob.replaying.remove(channel);
        ob.delivered_up_to.remove(channel);
    }

    /// The client's task has carried out a [`Control::Replay`]: the next one is ordered when the queue
    /// has drained to a quarter of its bound again, if some channel is still replayed.
    pub fn replay_wanted(&self) {
        let mut ob = self.outbox.lock();
        ob.replay_asked = false;
        self.ask_replay_if_due(&mut ob);
    }

    /// Bytes the replay may queue now: up to half the bound, counting what waits already (here and
    /// in the transport).
    pub fn replay_room(&self) -> usize {
        (self.limit / 2).saturating_sub(self.waiting_bytes())
    }

    fn drop_pending(ob: &mut Outbox, channel: &str) {
        if let Some(waiting) = ob.pending.remove(channel) {
            for (_, msg) in &waiting {
                ob.bytes = ob.bytes.saturating_sub(msg.len());
            }
        }
    }

    /// Orders a [`Control::Replay`] when a channel is replayed, none is outstanding, and what waits
    /// for the client (here and in the transport) has drained to a quarter of the bound.
    fn ask_replay_if_due(&self, ob: &mut Outbox) {
        if ob.replaying.is_empty() || ob.replay_asked || ob.closed.is_some() {
            return;
        }
        let held =
            usize::try_from(self.transport_queued.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        if ob.bytes.saturating_add(held) <= self.limit / 4 {
            ob.replay_asked = true;
            ob.notes().controls.push(Control::Replay);
            self.waker.wake();
        }
    }

    /// Asks the transport to disconnect the client with `code` (what is queued is dropped).
    pub fn disconnect(&self, code: DisconnectCode) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_none() {
            ob.closed = Some(code);
            ob.lane = None;
            ob.items.clear();
            ob.pending.clear();
            ob.replaying.clear();
            ob.bytes = 0;
        }
        drop(ob);
        self.waker.wake();
    }

    /// The hub dropped this session from `channel` (a gap it cannot fill): queue `push` (the
    /// `unsubscribe` push) and remember it for the client.
    pub fn dropped(&self, channel: &str, push: Frame) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_none() {
            Self::drop_pending(&mut ob, channel);
            ob.replaying.remove(channel);
            ob.delivered_up_to.remove(channel);
            ob.notes().dropped.push(channel.to_owned());
            self.enqueue(&mut ob, push);
        }
    }

    /// Channels dropped by the hub since the last call.
    pub fn take_dropped(&self) -> Vec<String> {
        self.outbox.lock().take_notes(|n| &mut n.dropped)
    }

    /// Queues an order for the client's task.
    pub fn control(&self, order: Control) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_none() {
            ob.notes().controls.push(order);
            drop(ob);
            self.waker.wake();
        }
    }

    /// Orders queued since the last call.
    pub fn take_controls(&self) -> Vec<Control> {
        self.outbox.lock().take_notes(|n| &mut n.controls)
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.outbox.lock().bytes
    }

    /// For transports that keep messages after draining them (until the client acknowledges them):
    /// how many bytes they hold now, so that metrics see the whole queue.
    /// The replay of a recovery (see [`Session::start_replay`]) counts these bytes too: it goes on
    /// as they are acknowledged.
    ///
    /// These bytes count against the bound as queued ones do: a wire that holds more and more
    /// unacknowledged makes its client a slow one (3008), exactly as a full queue does.
    pub fn set_transport_queued(&self, bytes: usize) {
        if self.transport_queued.swap(bytes as u64, Ordering::Relaxed) == bytes as u64 {
            return;
        }
        let mut ob = self.outbox.lock();
        if ob.closed.is_some() {
            return;
        }
        self.account(&mut ob, 0);
        self.ask_replay_if_due(&mut ob);
    }

    /// Bytes waiting for the client: this queue plus what the transport reported holding.
    pub fn waiting_bytes(&self) -> usize {
        self.queued_bytes()
            + usize::try_from(self.transport_queued.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// For the transport: waits until something is queued or the session is closed, then hands queued
    /// frames to `sink` until it returns `false` (its own buffer is full; the rest stays counted here).
    /// `Ready(Some(signal))` when the client must be disconnected or has orders waiting.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        mut sink: impl FnMut(Frame) -> bool,
    ) -> Poll<Option<Signal>> {
        self.waker.register(cx.waker());
        let mut ob = self.outbox.lock();
        if let Some(code) = ob.closed {
            return Poll::Ready(Some(Signal::Disconnect(code)));
        }
        self.ask_replay_if_due(&mut ob);
        if ob.has_controls() {
            return Poll::Ready(Some(Signal::Control));
        }
        if ob.items.is_empty() {
            return Poll::Pending;
        }
        while let Some(msg) = ob.items.pop_front() {
            ob.bytes = ob.bytes.saturating_sub(msg.len());
            if !sink(msg) {
                break;
            }
        }
        if ob.items.is_empty() && ob.items.capacity() > 64 {
            ob.items = VecDeque::new();
        }
        // Room was made: the next poll finds the order, if one is due.
        self.ask_replay_if_due(&mut ob);
        Poll::Ready(None)
    }

    fn enqueue(&self, ob: &mut Outbox, msg: Frame) {
        let len = msg.len();
        ob.items.push_back(msg);
        self.account(ob, len);
        self.waker.wake();
    }

    /// Counts `len` more bytes queued, and applies the slow-consumer bound to what waits for the
    /// client: queued here, and held by its wire.
    fn account(&self, ob: &mut Outbox, len: usize) {
        ob.bytes += len;
        let held =
            usize::try_from(self.transport_queued.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        if ob.bytes.saturating_add(held) > self.limit {
            tracing::info!(client = %self.client, queued = ob.bytes, held, limit = self.limit, "slow client: disconnecting");
            ob.closed = Some(DisconnectCode::Slow);
            ob.lane = None;
            ob.items.clear();
            ob.pending.clear();
            ob.replaying.clear();
            ob.bytes = 0;
            self.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use bytes::Bytes;

    use super::*;

    fn msg(s: &str) -> Frame {
        Frame::new(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn drain(s: &Session) -> Poll<Option<Signal>> {
        s.poll_drain(&mut Context::from_waker(Waker::noop()), |_| true)
    }

    /// Every client holds one session in an `Arc` (16 bytes of counts beside it): at most 256
    /// bytes in all keeps it in the allocator's 256-byte class, not the 320-byte one.
    #[test]
    fn a_session_fits_its_size_class() {
        assert!(size_of::<Session>() + 16 <= 256, "{}", size_of::<Session>());
    }

    /// A lane that takes frames as told and keeps what it took.
    #[derive(Debug, Default)]
    struct TestLane {
        answer: Mutex<Vec<Sent>>,
        took: Mutex<Vec<String>>,
    }

    impl Lane for TestLane {
        fn try_send(&self, frame: &Frame) -> Sent {
            let sent = self.answer.lock().pop().unwrap_or(Sent::Whole);
            if sent != Sent::Not {
                self.took.lock().push(frame.as_str().unwrap().to_owned());
            }
            sent
        }
    }

    /// The lane gets a publication only when nothing waits ahead of it, so a client reads
    /// publications in order whichever path each took; what it does not take is queued.
    #[test]
    fn a_publication_goes_around_the_queue_only_when_nothing_waits_in_it() {
        let s = Session::new(1, "c".into(), 100);
        let lane = Arc::new(TestLane::default());
        s.set_lane(Some(lane.clone()));
        s.deliver("c", 1, &msg("one"), true);
        assert_eq!(s.queued_bytes(), 0);
        // One of a batch (the fan-out is behind the channel): queued, for the client's task to
        // write with the rest of its share in one go.
        s.deliver("c", 2, &msg("batched"), false);
        assert_eq!(drain_texts(&s).0, ["batched"]);
        s.push(msg("reply"));
        s.deliver("c", 2, &msg("two"), true);
        assert_eq!(drain_texts(&s).0, ["reply", "two"]);
        // Not taken (the socket is full): queued.
        lane.answer.lock().push(Sent::Not);
        s.deliver("c", 3, &msg("three"), true);
        assert_eq!(drain_texts(&s).0, ["three"]);
        // Taken in part: the client's task is woken to write the rest.
        lane.answer.lock().push(Sent::Part);
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(Arc::clone(&woken));
        let _ = s.poll_drain(&mut Context::from_waker(&waker), |_| true);
        s.deliver("c", 4, &msg("four"), true);
        assert!(woken.0.load(Ordering::Relaxed));
        // Larger than the bound: never delivered, on this path either.
        s.deliver("c", 5, &msg(&"x".repeat(101)), true);
        assert_eq!(
            drain(&s),
            Poll::Ready(Some(Signal::Disconnect(DisconnectCode::Slow)))
        );
        assert!(
            s.outbox.lock().lane.is_none(),
            "a closed session lets its lane go"
        );
        assert_eq!(*lane.took.lock(), ["one", "four"]);
        // Taken back: everything is queued.
        let s = Session::new(2, "d".into(), 100);
        s.set_lane(Some(lane.clone()));
        s.set_lane(None);
        s.deliver("c", 1, &msg("queued"), true);
        assert_eq!(drain_texts(&s).0, ["queued"]);
    }

    #[derive(Default)]
    struct Woken(AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn over_the_limit_means_slow_not_silent() {
        let s = Session::new(1, "c".into(), 10);
        s.deliver("c", 1, &msg("12345"), true);
        s.deliver("c", 2, &msg("12345"), true);
        assert_eq!(s.queued_bytes(), 10);
        s.deliver("c", 3, &msg("x"), true);
        assert_eq!(
            drain(&s),
            Poll::Ready(Some(Signal::Disconnect(DisconnectCode::Slow)))
        );
        assert_eq!(s.queued_bytes(), 0);
    }

    #[test]
    fn what_the_wire_holds_counts_against_the_bound() {
        let s = Session::new(1, "c".into(), 10);
        s.set_transport_queued(6);
        s.deliver("c", 1, &msg("1234"), true);
        assert_eq!(drain(&s), Poll::Ready(None));
        s.set_transport_queued(10);
        s.deliver("c", 2, &msg("x"), true);
        assert_eq!(
            drain(&s),
            Poll::Ready(Some(Signal::Disconnect(DisconnectCode::Slow)))
        );
        // Growing unacknowledged bytes alone make a slow client too.
        let s = Session::new(2, "d".into(), 10);
        s.deliver("c", 1, &msg("1234"), true);
        s.set_transport_queued(7);
        assert_eq!(
            drain(&s),
            Poll::Ready(Some(Signal::Disconnect(DisconnectCode::Slow)))
        );
    }

    #[test]
    fn pending_publications_follow_the_reply_and_skip_recovered_ones() {
        let s = Session::new(1, "c".into(), 1 << 20);
        s.begin_subscribe("c");
        s.deliver("c", 4, &msg("four"), true);
        s.deliver("c", 5, &msg("five"), true);
        s.deliver("other", 0, &msg("other"), true);
        s.complete_subscribe("c", Some(msg("reply")), 4);
        let mut seen = Vec::new();
        let _ = s.poll_drain(&mut Context::from_waker(Waker::noop()), |m| {
            seen.push(m.as_str().unwrap().to_owned());
            true
        });
        assert_eq!(seen, ["other", "reply", "five"]);
        assert_eq!(s.queued_bytes(), 0);
    }

    #[test]
    fn a_publication_that_arrives_after_the_read_that_included_it_is_not_doubled() {
        let s = Session::new(1, "c".into(), 1 << 20);
        s.begin_subscribe("c");
        s.deliver("c", 4, &msg("four"), true);
        // The history read reached 5; 5 itself is still on its way from a remote engine.
        s.complete_subscribe("c", Some(msg("reply with five")), 5);
        s.deliver("c", 5, &msg("five again"), true);
        s.deliver("c", 6, &msg("six"), true);
        let (seen, _) = drain_texts(&s);
        assert_eq!(seen, ["reply with five", "six"]);
        // Forgotten once past it, and when the client leaves.
        assert!(s.outbox.lock().delivered_up_to.is_empty());
        s.begin_subscribe("c");
        s.complete_subscribe("c", None, 9);
        s.forget("c");
        assert!(s.outbox.lock().delivered_up_to.is_empty());
    }

    fn drain_texts(s: &Session) -> (Vec<String>, Poll<Option<Signal>>) {
        let mut seen = Vec::new();
        let poll = s.poll_drain(&mut Context::from_waker(Waker::noop()), |m| {
            seen.push(m.as_str().unwrap().to_owned());
            true
        });
        (seen, poll)
    }

    #[test]
    fn a_replayed_channel_queues_no_live_publications_and_asks_for_more_once_drained() {
        let s = Session::new(1, "c".into(), 100);
        s.begin_subscribe("c");
        s.deliver("c", 4, &msg("four"), true);
        let reply = "r".repeat(40);
        s.start_replay("c", msg(&reply));
        // Read from history by the replay in its turn, not queued now.
        s.deliver("c", 5, &msg("five"), true);
        s.deliver("other", 0, &msg("other"), true);
        assert_eq!(s.queued_bytes(), 45);
        assert!(s.take_controls().is_empty(), "over a quarter of the bound");
        let (seen, poll) = drain_texts(&s);
        assert_eq!(
            (seen, poll),
            (vec![reply, "other".into()], Poll::Ready(None))
        );
        // Drained: one order, until the client's task says it carried it out.
        assert_eq!(drain_texts(&s).1, Poll::Ready(Some(Signal::Control)));
        assert_eq!(s.take_controls(), [Control::Replay]);
        assert_eq!(drain_texts(&s).1, Poll::Pending);
        // The task replays 5, and a catch-up read reaches the live stream at 6 while 6 and 7 arrive.
        s.push(msg("five"));
        s.begin_subscribe("c");
        s.deliver("c", 6, &msg("six"), true);
        s.deliver("c", 7, &msg("seven"), true);
        s.push(msg("six"));
        s.complete_subscribe("c", None, 6);
        s.replay_wanted();
        s.deliver("c", 8, &msg("eight"), true);
        let (seen, _) = drain_texts(&s);
        assert_eq!(seen, ["five", "six", "seven", "eight"]);
        assert_eq!(drain_texts(&s).1, Poll::Pending, "the replay is over");
        assert!(s.take_controls().is_empty());
    }

    #[test]
    fn a_replay_waits_for_what_the_transport_holds_too() {
        let s = Session::new(1, "c".into(), 100);
        s.set_transport_queued(60);
        s.begin_subscribe("c");
        s.start_replay("c", msg("reply"));
        let _ = drain_texts(&s);
        assert_eq!(
            drain_texts(&s).1,
            Poll::Pending,
            "60 bytes still unacknowledged"
        );
        assert_eq!(s.replay_room(), 0);
        s.set_transport_queued(10);
        assert_eq!(s.replay_room(), 40);
        assert_eq!(s.take_controls(), [Control::Replay]);
        // Leaving the channel ends the replay: no more orders.
        s.forget("c");
        s.replay_wanted();
        s.set_transport_queued(0);
        assert!(s.take_controls().is_empty());
        s.deliver("c", 9, &msg("nine"), true);
        assert_eq!(drain_texts(&s).0, ["nine"]);
    }
}
