//! A client's outgoing side as the hub sees it: a byte-bounded queue of encoded frames that any thread
//! may push to, and that the client's transport drains.
//!
//! The bound is the slow-consumer policy: a client whose queue would go over `queue_bytes` is not
//! silently skipped; its queue is dropped and it is disconnected with `slow` (3008), which tells it to
//! reconnect and recover the missed publications from history. Nothing grows without bound, and no
//! message is lost without the client being told.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;
use switchboard_protocol::DisconnectCode;
use switchboard_websocket::SharedMessage;

/// The shared half of a client: what the hub delivers to.
#[derive(Debug)]
pub struct Session {
    key: u64,
    client: String,
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
    items: VecDeque<SharedMessage>,
    bytes: usize,
    /// Channels being subscribed: live publications wait here until the subscribe reply is queued, so
    /// that they follow the recovered ones in offset order.
    pending: HashMap<String, Vec<(u64, SharedMessage)>>,
    closed: Option<DisconnectCode>,
    /// Channels the hub dropped this session from; the client forgets them at its next command.
    dropped: Vec<String>,
    /// Orders from the server API, applied by the client's task.
    controls: Vec<Control>,
}

/// An order for a client from the server side (the HTTP API), carried out by the client's own task
/// because only it owns the client's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Subscribe the client to a channel (a `subscribe` push tells it).
    Subscribe(String),
    /// Unsubscribe the client (an `unsubscribe` push with code 2000 tells it).
    Unsubscribe(String),
    /// The connection reached its expiry and the refresh proxy decides whether it goes on.
    Refresh,
    /// Some subscription reached its expiry.
    SubscriptionsExpired,
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
            client,
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
    pub fn deliver(&self, channel: &str, offset: u64, msg: &SharedMessage) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_some() {
            return;
        }
        if !ob.pending.is_empty()
            && let Some(waiting) = ob.pending.get_mut(channel)
        {
            waiting.push((offset, msg.clone()));
            let len = msg.message().payload().len();
            self.account(&mut ob, len);
            return;
        }
        self.enqueue(&mut ob, msg.clone());
    }

    /// Queues a reply or a push.
    pub fn push(&self, msg: SharedMessage) {
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
    pub fn complete_subscribe(&self, channel: &str, reply: Option<SharedMessage>, after: u64) {
        let mut ob = self.outbox.lock();
        let waiting = ob.pending.remove(channel).unwrap_or_default();
        for (_, msg) in &waiting {
            ob.bytes = ob.bytes.saturating_sub(msg.message().payload().len());
        }
        if ob.closed.is_some() {
            return;
        }
        if let Some(reply) = reply {
            self.enqueue(&mut ob, reply);
        }
        for (offset, msg) in waiting {
            if offset == 0 || offset > after {
                self.enqueue(&mut ob, msg);
            }
        }
    }

    /// Drops the buffer of a subscription that failed.
    pub fn abort_subscribe(&self, channel: &str) {
        let mut ob = self.outbox.lock();
        if let Some(waiting) = ob.pending.remove(channel) {
            for (_, msg) in &waiting {
                ob.bytes = ob.bytes.saturating_sub(msg.message().payload().len());
            }
        }
    }

    /// Asks the transport to disconnect the client with `code` (what is queued is dropped).
    pub fn disconnect(&self, code: DisconnectCode) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_none() {
            ob.closed = Some(code);
            ob.items.clear();
            ob.pending.clear();
            ob.bytes = 0;
        }
        drop(ob);
        self.waker.wake();
    }

    /// The hub dropped this session from `channel` (a gap it cannot fill): queue `push` (the
    /// `unsubscribe` push) and remember it for the client.
    pub fn dropped(&self, channel: &str, push: SharedMessage) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_none() {
            ob.dropped.push(channel.to_owned());
            self.enqueue(&mut ob, push);
        }
    }

    /// Channels dropped by the hub since the last call.
    pub fn take_dropped(&self) -> Vec<String> {
        let mut ob = self.outbox.lock();
        if ob.dropped.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut ob.dropped)
        }
    }

    /// Queues an order for the client's task.
    pub fn control(&self, order: Control) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_none() {
            ob.controls.push(order);
            drop(ob);
            self.waker.wake();
        }
    }

    /// Orders queued since the last call.
    pub fn take_controls(&self) -> Vec<Control> {
        std::mem::take(&mut self.outbox.lock().controls)
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.outbox.lock().bytes
    }

    /// For transports that keep messages after draining them (until the client acknowledges them):
    /// how many bytes they hold now, so that metrics see the whole queue.
    pub fn set_transport_queued(&self, bytes: usize) {
        self.transport_queued.store(bytes as u64, Ordering::Relaxed);
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
        mut sink: impl FnMut(SharedMessage) -> bool,
    ) -> Poll<Option<Signal>> {
        self.waker.register(cx.waker());
        let mut ob = self.outbox.lock();
        if let Some(code) = ob.closed {
            return Poll::Ready(Some(Signal::Disconnect(code)));
        }
        if !ob.controls.is_empty() {
            return Poll::Ready(Some(Signal::Control));
        }
        if ob.items.is_empty() {
            return Poll::Pending;
        }
        while let Some(msg) = ob.items.pop_front() {
            ob.bytes = ob.bytes.saturating_sub(msg.message().payload().len());
            if !sink(msg) {
                break;
            }
        }
        if ob.items.is_empty() && ob.items.capacity() > 64 {
            ob.items = VecDeque::new();
        }
        Poll::Ready(None)
    }

    fn enqueue(&self, ob: &mut Outbox, msg: SharedMessage) {
        let len = msg.message().payload().len();
        ob.items.push_back(msg);
        self.account(ob, len);
        self.waker.wake();
    }

    fn account(&self, ob: &mut Outbox, len: usize) {
        ob.bytes += len;
        if ob.bytes > self.limit {
            tracing::info!(client = %self.client, queued = ob.bytes, limit = self.limit, "slow client: disconnecting");
            ob.closed = Some(DisconnectCode::Slow);
            ob.items.clear();
            ob.pending.clear();
            ob.bytes = 0;
            self.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use bytes::Bytes;
    use switchboard_websocket::Message;

    use super::*;

    fn msg(s: &str) -> SharedMessage {
        SharedMessage::new(Message::Text(Bytes::copy_from_slice(s.as_bytes())))
    }

    fn drain(s: &Session) -> Poll<Option<Signal>> {
        s.poll_drain(&mut Context::from_waker(Waker::noop()), |_| true)
    }

    #[test]
    fn over_the_limit_means_slow_not_silent() {
        let s = Session::new(1, "c".into(), 10);
        s.deliver("c", 1, &msg("12345"));
        s.deliver("c", 2, &msg("12345"));
        assert_eq!(s.queued_bytes(), 10);
        s.deliver("c", 3, &msg("x"));
        assert_eq!(
            drain(&s),
            Poll::Ready(Some(Signal::Disconnect(DisconnectCode::Slow)))
        );
        assert_eq!(s.queued_bytes(), 0);
    }

    #[test]
    fn pending_publications_follow_the_reply_and_skip_recovered_ones() {
        let s = Session::new(1, "c".into(), 1 << 20);
        s.begin_subscribe("c");
        s.deliver("c", 4, &msg("four"));
        s.deliver("c", 5, &msg("five"));
        s.deliver("other", 0, &msg("other"));
        s.complete_subscribe("c", Some(msg("reply")), 4);
        let mut seen = Vec::new();
        let _ = s.poll_drain(&mut Context::from_waker(Waker::noop()), |m| {
            seen.push(m.message().as_text().unwrap().to_owned());
            true
        });
        assert_eq!(seen, ["other", "reply", "five"]);
        assert_eq!(s.queued_bytes(), 0);
    }
}
