//! Which sessions of this node are subscribed to which channel, and fan-out to them.
//!
//! The index is split into shards, each behind its own read-write lock, so there is no global lock on
//! the publish path: a publication takes one shard's read lock while it checks the channel's position
//! and encodes the publication once. Subscribing and unsubscribing take the write lock of one shard
//! only.
//!
//! A channel's subscribers are further split into [`STRIPES`] stripes, each with its own FIFO of
//! frames to hand out. A small channel's stripes are served in the publisher's call, as before; a big
//! channel's (more than [`INLINE_MAX`] subscribers) are served by one runtime task per stripe, so that
//! the fan-out of one publication runs on every worker of the runtime and the publisher (the server
//! API's answer, the engine's delivery task) does not wait for the audience. Each stripe's FIFO is
//! served by one task at a time, in order, so every subscriber still gets a channel's publications in
//! the order the engine gave them; the session's byte-bounded queue and its slow-consumer rule are
//! untouched (the stripe hands frames to [`Session::deliver`] as the publisher did).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use switchboard_protocol::encode::{self, PresenceEvent};
use switchboard_protocol::{ClientInfo, Frame, Publication, UnsubscribeCode};
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};

use crate::session::Session;

const SHARDS: usize = 64;

/// How many parts a channel's subscribers are split into for the fan-out: enough for the workers of a
/// many-core runtime to share one channel's fan-out, few enough that handing a publication to each
/// costs little next to the deliveries.
pub const STRIPES: usize = 16;

/// Channels with at most this many subscribers on the node are fanned out in the publisher's call:
/// spawning tasks would cost more than the deliveries, and a few deliveries do not make the publish
/// answer wait noticeably.
pub const INLINE_MAX: usize = 64;

/// Where this node's engine subscription of a channel stands.
///
/// A subscriber that joins while the first one is still subscribing the node must not read the
/// channel's position before the subscription is in place: a publication between its history read
/// and the first one the engine delivers would be lost for it, silently (the NATS fault test found
/// this after a restart, when every client resubscribes at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    /// The first subscriber is subscribing the node with the engine.
    Pending,
    /// The engine delivers the channel to this node.
    Yes,
    /// The engine subscription failed; the subscribers who waited fail too (and may retry).
    Failed,
}

/// The subscriber index of one node.
#[derive(Debug)]
pub struct Hub {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<String, Channel>>]>,
    /// The runtime the node was made on, which runs the stripes' tasks whichever thread publishes:
    /// the server API runs on a thread of its own (so that its answers do not queue behind the
    /// fan-out's tasks), and a big channel's fan-out must not land on that thread.
    runtime: Option<Handle>,
}

#[derive(Debug)]
struct Channel {
    /// Subscribers over all stripes.
    count: usize,
    /// Whether the engine delivers the channel to this node yet: the first subscriber subscribes
    /// the node with the engine, and those who join meanwhile wait for it (see [`Hub::listening`]).
    listening: watch::Sender<Listening>,
    /// Created at a stripe's first subscriber: a channel of one subscriber holds one stripe.
    stripes: [Option<Arc<Stripe>>; STRIPES],
    /// Where the channel's stream stands for this node, to notice gaps. Publications of one channel
    /// arrive one at a time (the engine guarantees it), so this lock is never contended; it only lets
    /// the fan-out run under the shard's read lock.
    position: Mutex<Position>,
}

/// One part of a channel's subscribers and the frames still to hand them, in order.
#[derive(Debug)]
struct Stripe {
    channel: Arc<str>,
    subscribers: Mutex<HashMap<u64, Arc<Session>>>,
    work: Mutex<Work>,
    /// Told each time the stripe has handed out more items, for [`Hub::settled`].
    progress: Notify,
}

#[derive(Debug, Default)]
struct Work {
    items: VecDeque<Item>,
    /// A task (or a caller without a runtime) is handing the items out: nobody else may, or the
    /// order would be lost.
    running: bool,
    /// Items ever submitted, and ever handed out to every subscriber of the stripe.
    submitted: u64,
    done: u64,
}

/// What a stripe hands to each of its subscribers.
#[derive(Debug, Clone)]
enum Item {
    /// A publication at `offset` (see [`Session::deliver`]).
    Publication(u64, Frame),
    /// A presence push.
    Push(Frame),
    /// The channel's stream has a gap: the `unsubscribe` push; the stripe forgets its subscribers.
    Gap(Frame),
}

impl Stripe {
    fn new(channel: &str) -> Self {
        Self {
            channel: Arc::from(channel),
            subscribers: Mutex::new(HashMap::new()),
            work: Mutex::new(Work::default()),
            progress: Notify::new(),
        }
    }

    /// Hands `item` out: at once in this call when `inline` and nothing waits ahead of it, otherwise
    /// after what waits, by a runtime task (or, with no runtime, in this call).
    fn submit(self: &Arc<Self>, item: Item, inline: bool, runtime: Option<&Handle>) {
        let mut work = self.work.lock();
        work.submitted += 1;
        if inline && !work.running && work.items.is_empty() {
            // Nothing ahead: hand it out under the work lock, so nothing can overtake it.
            self.hand_out(std::slice::from_ref(&item));
            work.done += 1;
            return;
        }
        work.items.push_back(item);
        if work.running {
            return;
        }
        work.running = true;
        drop(work);
        match runtime.cloned().or_else(|| Handle::try_current().ok()) {
            Some(runtime) => {
                let mut start = StartStripe(Some((runtime, Arc::clone(self))));
                match Handle::try_current() {
                    // Called from another runtime: the server API's thread, answering a publish.
                    // Waking the node's runtime from there lets the kernel hand the core to the
                    // woken worker at once when both share it (a woken thread preempts the running
                    // one), and the answer then waited for a time slice of fan-out: 3–4 ms between
                    // reading the request and writing the answer, seen with `strace -T` on the API
                    // thread at 10k subscribers. Started by a task of the caller's runtime instead,
                    // the stripe starts once the caller's turn (the answer's write) is over.
                    Ok(here) if start.runtime_id() != Some(here.id()) => {
                        drop(here.spawn(async move { start.go() }));
                    }
                    _ => start.go(),
                }
            }
            None => self.run(),
        }
    }

    /// Hands out the waiting items until none is left.
    fn run(&self) {
        loop {
            let batch: Vec<Item> = {
                let mut work = self.work.lock();
                if work.items.is_empty() {
                    work.running = false;
                    drop(work);
                    self.progress.notify_waiters();
                    return;
                }
                work.items.drain(..).collect()
            };
            self.hand_out(&batch);
            self.work.lock().done += batch.len() as u64;
            self.progress.notify_waiters();
        }
    }

    /// Gives each subscriber every item of `batch`, in order: one subscriber's items one after the
    /// other, which keeps its queue's cache lines warm.
    ///
    /// A batch of one means the fan-out keeps up with the channel: each publication may then go
    /// straight to an idle subscriber's socket ([`Session::deliver`]'s `direct`). Several mean
    /// publications come faster than one pass over the subscribers: queued, each client's task
    /// writes all of its share in one system call, where the lane would make one per publication
    /// (at 100 publishes/s to 10k subscribers that was 210k deliveries/s against 990k queued).
    fn hand_out(&self, batch: &[Item]) {
        let mut subscribers = self.subscribers.lock();
        let mut gap = false;
        let direct = batch.len() == 1;
        // While the kernel sends to one subscriber, the CPU fetches the next ones: the session two
        // ahead, and the lane of the one after, whose session is at hand by then (crate::prefetch).
        // A batch of several never takes the lane: its lock would be taken for nothing.
        let mut two_ahead = subscribers.values().skip(2);
        let mut one_ahead = subscribers.values().skip(1);
        for s in subscribers.values() {
            if let Some(next) = two_ahead.next() {
                next.prefetch();
            }
            if direct && let Some(next) = one_ahead.next() {
                next.prefetch_lane();
            }
            for item in batch {
                match item {
                    Item::Publication(offset, frame) => {
                        s.deliver(&self.channel, *offset, frame, direct);
                    }
                    Item::Push(frame) => s.push(frame.clone()),
                    Item::Gap(frame) => {
                        s.dropped(&self.channel, frame.clone());
                        gap = true;
                        // Nothing more of this channel for it: the client resubscribes.
                        break;
                    }
                }
            }
        }
        if gap {
            subscribers.clear();
        }
    }
}

/// Starts a stripe's task on the node's runtime, once: when told to, or when dropped untold (the
/// caller's runtime shut down before running the task that was to start it), since a stripe whose
/// task never starts would hold its channel's publications for good.
struct StartStripe(Option<(Handle, Arc<Stripe>)>);

impl StartStripe {
    fn runtime_id(&self) -> Option<tokio::runtime::Id> {
        self.0.as_ref().map(|(runtime, _)| runtime.id())
    }

    fn go(&mut self) {
        if let Some((runtime, stripe)) = self.0.take() {
            drop(runtime.spawn(async move { stripe.run() }));
        }
    }
}

impl Drop for StartStripe {
    fn drop(&mut self) {
        self.go();
    }
}

impl Channel {
    fn new() -> Self {
        Self {
            count: 0,
            listening: watch::Sender::new(Listening::Pending),
            stripes: Default::default(),
            position: Mutex::new(Position::default()),
        }
    }

    /// The stripe holding the subscriber with key `key`.
    fn stripe_of(&self, key: u64) -> Option<&Arc<Stripe>> {
        self.stripes
            .iter()
            .flatten()
            .find(|s| s.subscribers.lock().contains_key(&key))
    }

    /// Where a new subscriber goes: the least filled of the first stripes, one more stripe for each
    /// [`INLINE_MAX`] subscribers. A small channel keeps one stripe (little memory, nothing to
    /// spread); a big one ends with its subscribers spread evenly over all of them.
    fn stripe_for_new(&mut self, channel: &str) -> &Arc<Stripe> {
        let used = (self.count / INLINE_MAX + 1).min(STRIPES);
        let mut best = 0;
        let mut fewest = usize::MAX;
        for (i, slot) in self.stripes[..used].iter().enumerate() {
            let n = slot.as_ref().map_or(0, |s| s.subscribers.lock().len());
            if n < fewest {
                (best, fewest) = (i, n);
            }
        }
        self.stripes[best].get_or_insert_with(|| Arc::new(Stripe::new(channel)))
    }

    /// Hands `item` to every stripe of the channel.
    fn dispatch(&self, item: &Item, runtime: Option<&Handle>) {
        let inline = self.count <= INLINE_MAX;
        for stripe in self.stripes.iter().flatten() {
            stripe.submit(item.clone(), inline, runtime);
        }
    }
}
#[derive(Debug, Default)]
struct Position {
    epoch: String,
    /// The last offset fanned out, or, before the first, the lowest position a subscriber started
    /// from.
    offset: u64,
    /// Whether a publication was fanned out yet.
    delivered: bool,
}

/// What to do with a publication, given the channel's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The next one: fan it out.
    Deliver,
    /// Already at or behind the position of the publications fanned out: every subscriber has it
    /// or started after it. A remote engine delivers asynchronously, so a publication can still be
    /// on its way when a subscriber reads the stream's position; an engine may deliver one twice.
    Stale,
    /// Publications are missing (or the epoch changed).
    Gap,
}

impl Channel {
    /// Moves the channel to `offset` when it is the next one.
    ///
    /// Before the first publication is fanned out, one at or before the noted position is fanned
    /// out too, and the channel's position moves back to it: a subscriber that joined at the same
    /// time may have read the stream before it, and not noted its position yet (those who noted
    /// theirs skip it, each session from where its read left it). It is dropped as stale only once
    /// the channel follows the engine's own publications. Offset 0 is a position (a new epoch's
    /// start), not "nothing known": only a channel that knows nothing yet takes any publication.
    fn advance(&self, epoch: &str, offset: u64) -> Step {
        let mut pos = self.position.lock();
        let same = pos.epoch == epoch;
        let step = if pos.epoch.is_empty()
            || (same && offset == pos.offset + 1)
            || (same && !pos.delivered && offset <= pos.offset)
        {
            Step::Deliver
        } else if same && offset <= pos.offset {
            Step::Stale
        } else {
            Step::Gap
        };
        if step == Step::Deliver {
            if pos.epoch != epoch {
                pos.epoch = epoch.to_owned();
            }
            pos.offset = offset;
            pos.delivered = true;
        }
        step
    }
}

impl Default for Hub {
    /// An empty index whose big channels fan out on the runtime this is called on (see
    /// [`STRIPES`]).
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            // Without a runtime here (unit tests), the publisher's runtime, if any, runs them.
            runtime: Handle::try_current().ok(),
        }
    }
}

impl Hub {
    fn shard(&self, channel: &str) -> &RwLock<HashMap<String, Channel>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Adds a subscriber; true if it is the channel's first on this node.
    pub fn add(&self, channel: &str, session: Arc<Session>) -> bool {
        let mut shard = self.shard(channel).write();
        let ch = shard.entry(channel.to_owned()).or_insert_with(Channel::new);
        if ch.stripe_of(session.key()).is_some() {
            return false;
        }
        ch.stripe_for_new(channel)
            .subscribers
            .lock()
            .insert(session.key(), session);
        ch.count += 1;
        ch.count == 1
    }

    /// Where the node's engine subscription of `channel` stands, to wait on; `None` when the channel
    /// has no subscriber here.
    pub fn listening(&self, channel: &str) -> Option<watch::Receiver<Listening>> {
        self.shard(channel)
            .read()
            .get(channel)
            .map(|c| c.listening.subscribe())
    }

    /// Records the outcome of the first subscriber's engine subscription of `channel`.
    pub fn set_listening(&self, channel: &str, state: Listening) {
        if let Some(c) = self.shard(channel).read().get(channel) {
            c.listening.send_replace(state);
        }
    }

    /// Removes a subscriber; true if the channel has none left on this node.
    pub fn remove(&self, channel: &str, key: u64) -> bool {
        let mut shard = self.shard(channel).write();
        let Some(ch) = shard.get_mut(channel) else {
            return false;
        };
        let Some(stripe) = ch.stripe_of(key) else {
            return false;
        };
        // Waits for a fan-out of this stripe in progress: nothing reaches the session after this.
        if stripe.subscribers.lock().remove(&key).is_none() {
            return false;
        }
        ch.count -= 1;
        if ch.count == 0 {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Subscribers of `channel` on this node.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.shard(channel)
            .read()
            .get(channel)
            .map_or(0, |c| c.count)
    }

    /// Channels with subscribers on this node.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Subscriptions on this node: subscribers summed over channels (a client in two channels counts
    /// twice), for `info`.
    pub fn subscription_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().values().map(|c| c.count).sum::<usize>())
            .sum()
    }

    /// Channels matching `pattern` (`*` matches any run of characters; `None` matches all) with
    /// their subscriber counts, sorted by name.
    pub fn channels(&self, pattern: Option<&str>) -> Vec<(String, usize)> {
        let mut out: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .filter(|(name, _)| pattern.is_none_or(|p| glob(p, name)))
                    .map(|(name, ch)| (name.clone(), ch.count))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// Encodes `publication` once and queues it for every subscriber of `channel`; returns how many.
    /// A big channel's subscribers get it from runtime tasks after this returns (see the module's
    /// documentation); [`Hub::settled`] waits for one subscriber's share.
    ///
    /// When the offsets of a channel with history do not follow each other (a publication was lost
    /// between the engine and this node, or the stream was lost and restarted), the subscribers cannot
    /// be told what they missed from here: each is unsubscribed with `insufficient state` (2500), which
    /// tells it to resubscribe with recovery.
    pub fn broadcast(&self, channel: &str, publication: &Publication, epoch: &str) -> usize {
        {
            let shard = self.shard(channel).read();
            let Some(ch) = shard.get(channel) else {
                return 0;
            };
            let step = if epoch.is_empty() {
                Step::Deliver
            } else {
                ch.advance(epoch, publication.offset)
            };
            match step {
                Step::Deliver => {
                    let frame = Frame::shared(encode::pub_push(channel, publication));
                    ch.dispatch(
                        &Item::Publication(publication.offset, frame),
                        self.runtime.as_ref(),
                    );
                    return ch.count;
                }
                Step::Stale => return 0,
                Step::Gap => {}
            }
        }
        tracing::warn!(
            channel,
            got = publication.offset,
            "gap in channel stream; subscribers must recover"
        );
        self.gap(channel);
        0
    }

    /// Unsubscribes every subscriber of `channel` with `insufficient state` (2500), which tells each
    /// to resubscribe with recovery: publications may have been lost before they reached this node.
    pub fn gap(&self, channel: &str) {
        let Some(ch) = self.shard(channel).write().remove(channel) else {
            return;
        };
        let push = Frame::shared(encode::unsubscribe_push(
            channel,
            UnsubscribeCode::InsufficientState,
        ));
        ch.dispatch(&Item::Gap(push), self.runtime.as_ref());
    }

    /// Queues a join or leave push for every subscriber of `channel`.
    pub fn presence_event(&self, channel: &str, event: PresenceEvent, info: &ClientInfo) {
        let shard = self.shard(channel).read();
        if let Some(ch) = shard.get(channel) {
            let push = Frame::shared(encode::presence_push(event, channel, info));
            ch.dispatch(&Item::Push(push), self.runtime.as_ref());
        }
    }

    /// Waits until the session with key `key` has been handed everything submitted to its part of
    /// `channel` so far. A client that publishes to a channel it is subscribed to calls this before
    /// its reply, so that its own publication comes first (as it always did): it waits for its own
    /// stripe only, never for the whole audience.
    pub async fn settled(&self, channel: &str, key: u64) {
        let stripe = {
            let shard = self.shard(channel).read();
            let Some(stripe) = shard.get(channel).and_then(|ch| ch.stripe_of(key)) else {
                return;
            };
            Arc::clone(stripe)
        };
        let target = stripe.work.lock().submitted;
        loop {
            let mut progress = std::pin::pin!(stripe.progress.notified());
            progress.as_mut().enable();
            if stripe.work.lock().done >= target {
                return;
            }
            progress.await;
        }
    }

    /// Records the position a new subscriber starts from, so that the first live publication it gets
    /// is checked for continuity against it. Until the first publication is fanned out, the lowest
    /// such position is kept: every subscriber needs what follows it.
    pub fn note_position(&self, channel: &str, epoch: &str, offset: u64) {
        let shard = self.shard(channel).read();
        if let Some(ch) = shard.get(channel) {
            let mut pos = ch.position.lock();
            if pos.epoch != epoch {
                *pos = Position {
                    epoch: epoch.to_owned(),
                    offset,
                    delivered: false,
                };
            } else if !pos.delivered && offset < pos.offset {
                pos.offset = offset;
            }
        }
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A reply or push for one client.
pub(crate) fn text(bytes: Bytes) -> Frame {
    Frame::new(bytes)
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use switchboard_protocol::Payload;

    use super::*;

    fn drain(s: &Session) -> Vec<Frame> {
        let mut out = Vec::new();
        let _ = s.poll_drain(&mut Context::from_waker(Waker::noop()), |m| {
            out.push(m);
            true
        });
        out
    }

    fn publication(offset: u64) -> Publication {
        let mut p = Publication::new(Payload::Json(Bytes::from_static(b"{}")));
        p.offset = offset;
        p
    }

    #[test]
    fn glob_patterns() {
        for (p, t, ok) in [
            ("chat:*", "chat:lobby", true),
            ("chat:*", "news", false),
            ("*", "x", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*ab", "ab", true),
        ] {
            assert_eq!(glob(p, t), ok, "{p} {t}");
        }
    }

    #[test]
    fn one_encoding_is_shared_by_every_subscriber() {
        let hub = Hub::default();
        let sessions: Vec<_> = (0..3)
            .map(|k| Arc::new(Session::new(k, format!("c{k}"), 1 << 20)))
            .collect();
        for s in &sessions {
            hub.add("ch", Arc::clone(s));
        }
        hub.broadcast("ch", &publication(1), "e");
        let got: Vec<_> = sessions.iter().map(|s| drain(s).remove(0)).collect();
        assert!(got.windows(2).all(|w| Frame::ptr_eq(&w[0], &w[1])));
    }

    #[test]
    fn a_gap_unsubscribes_with_insufficient_state() {
        let hub = Hub::default();
        let s = Arc::new(Session::new(1, "c".into(), 1 << 20));
        hub.add("ch", Arc::clone(&s));
        hub.broadcast("ch", &publication(1), "e");
        hub.broadcast("ch", &publication(2), "e");
        hub.broadcast("ch", &publication(4), "e");
        let texts: Vec<String> = drain(&s)
            .iter()
            .map(|m| m.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(texts.len(), 3);
        assert!(
            texts[2].contains("\"unsubscribe\"") && texts[2].contains("2500"),
            "{}",
            texts[2]
        );
        assert_eq!(s.take_dropped(), ["ch"]);
        assert_eq!(hub.subscriber_count("ch"), 0);
        // A new epoch is a gap too: the old positions mean nothing.
        hub.add("ch", Arc::clone(&s));
        hub.broadcast("ch", &publication(7), "e");
        hub.broadcast("ch", &publication(1), "f");
        assert!(matches!(
            s.poll_drain(&mut Context::from_waker(Waker::noop()), |_| true),
            Poll::Ready(None)
        ));
        assert_eq!(s.take_dropped(), ["ch"]);
    }

    #[test]
    fn a_publication_still_on_its_way_is_not_a_gap() {
        let hub = Hub::default();
        let s = Arc::new(Session::new(1, "c".into(), 1 << 20));
        let late = Arc::new(Session::new(2, "d".into(), 1 << 20));
        hub.add("ch", Arc::clone(&s));
        hub.add("ch", Arc::clone(&late));
        // One subscriber read the stream at 3, another (concurrently) at 4, while 4 was on its way.
        hub.note_position("ch", "e", 4);
        hub.note_position("ch", "e", 3);
        hub.broadcast("ch", &publication(4), "e");
        hub.broadcast("ch", &publication(4), "e");
        hub.broadcast("ch", &publication(5), "e");
        assert_eq!(drain(&s).len(), 2, "4 and 5, once each");
        assert!(s.take_dropped().is_empty());
        assert_eq!(hub.subscriber_count("ch"), 2);
    }

    #[test]
    fn a_publication_between_two_joiners_reads_reaches_the_one_that_read_before_it() {
        // After a restart both subscribers of a node join at once: one reads the stream at 0, the
        // other at 1 (published between the reads), and the second notes its position first. 1
        // arrives, then the first notes 0: it must still get 1, not 2 alone (the NATS fault test
        // found this loss).
        let hub = Hub::default();
        let first = Arc::new(Session::new(1, "a".into(), 1 << 20));
        let second = Arc::new(Session::new(2, "b".into(), 1 << 20));
        for s in [&first, &second] {
            s.begin_subscribe("ch");
            hub.add("ch", Arc::clone(s));
        }
        hub.note_position("ch", "e", 1);
        second.complete_subscribe("ch", None, 1);
        hub.broadcast("ch", &publication(1), "e");
        hub.note_position("ch", "e", 0);
        first.complete_subscribe("ch", None, 0);
        hub.broadcast("ch", &publication(2), "e");
        assert_eq!(offsets(&first), [1, 2]);
        assert_eq!(offsets(&second), [2], "each once, from where it read");
        assert!(first.take_dropped().is_empty() && second.take_dropped().is_empty());
    }

    #[test]
    fn a_position_noted_at_zero_stays_the_lowest() {
        // One subscriber read the stream empty (0), another later at 5: 1 to 5 are on their way.
        // If 3 comes first, 1 and 2 were lost for the first one: a gap, not a delivery.
        let hub = Hub::default();
        let s = Arc::new(Session::new(1, "c".into(), 1 << 20));
        s.begin_subscribe("ch");
        hub.add("ch", Arc::clone(&s));
        hub.note_position("ch", "e", 0);
        hub.note_position("ch", "e", 5);
        s.complete_subscribe("ch", None, 0);
        hub.broadcast("ch", &publication(3), "e");
        assert_eq!(s.take_dropped(), ["ch"]);
    }

    #[test]
    fn a_gap_right_after_a_stream_at_offset_zero_is_noticed() {
        // A new epoch starts at 0 (its marker): offset 2 next means 1 was lost.
        let hub = Hub::default();
        let s = Arc::new(Session::new(1, "c".into(), 1 << 20));
        s.begin_subscribe("ch");
        hub.add("ch", Arc::clone(&s));
        hub.note_position("ch", "e", 0);
        s.complete_subscribe("ch", None, 0);
        hub.broadcast("ch", &publication(2), "e");
        assert_eq!(s.take_dropped(), ["ch"]);
        assert_eq!(hub.subscriber_count("ch"), 0);
    }

    /// A channel big enough to be fanned out by runtime tasks, with sessions of `limit` bytes.
    fn big_channel(hub: &Hub, limit: usize) -> Vec<Arc<Session>> {
        (0..(INLINE_MAX as u64 * 4))
            .map(|k| {
                let s = Arc::new(Session::new(k, format!("c{k}"), limit));
                hub.add("ch", Arc::clone(&s));
                s
            })
            .collect()
    }

    fn offsets(s: &Session) -> Vec<u64> {
        drain(s)
            .iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(m.text()).unwrap();
                v["pub"]["offset"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn a_small_channel_keeps_one_stripe_and_a_big_one_spreads_evenly() {
        let hub = Hub::default();
        let stripes = |hub: &Hub| -> Vec<usize> {
            let shard = hub.shard("ch").read();
            shard["ch"]
                .stripes
                .iter()
                .flatten()
                .map(|s| s.subscribers.lock().len())
                .collect()
        };
        for k in 0..INLINE_MAX as u64 {
            hub.add("ch", Arc::new(Session::new(k, format!("c{k}"), 1 << 20)));
        }
        assert_eq!(stripes(&hub), [INLINE_MAX]);
        for k in INLINE_MAX as u64..10_000 {
            hub.add("ch", Arc::new(Session::new(k, format!("c{k}"), 1 << 20)));
        }
        let spread = stripes(&hub);
        assert_eq!(spread.len(), STRIPES);
        assert!(
            spread.iter().all(|&n| n.abs_diff(10_000 / STRIPES) <= 1),
            "{spread:?}"
        );
        assert!(!hub.add("ch", Arc::new(Session::new(7, "c7".into(), 1))));
        assert!(!hub.remove("ch", 7));
        assert!(!hub.remove("ch", 7), "gone already");
        assert_eq!(hub.subscriber_count("ch"), 9_999);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_subscriber_gets_a_big_channels_publications_in_order() {
        let hub = Arc::new(Hub::default());
        let sessions = big_channel(&hub, 1 << 20);
        // Published from a runtime task, as the engine's delivery does; stripes run on both workers.
        let publisher = Arc::clone(&hub);
        tokio::spawn(async move {
            for offset in 1..=300 {
                assert_eq!(
                    publisher.broadcast("ch", &publication(offset), "e"),
                    INLINE_MAX * 4
                );
                if offset % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await
        .unwrap();
        for s in &sessions {
            hub.settled("ch", s.key()).await;
        }
        let want: Vec<u64> = (1..=300).collect();
        for s in &sessions {
            assert_eq!(offsets(s), want, "session {}", s.key());
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_big_channels_publisher_does_not_wait_for_the_audience() {
        let hub = Hub::default();
        let sessions = big_channel(&hub, 1 << 20);
        hub.broadcast("ch", &publication(1), "e");
        // On a one-worker runtime nothing ran yet: the call returned before any delivery.
        assert!(sessions.iter().all(|s| s.queued_bytes() == 0));
        hub.settled("ch", sessions[5].key()).await;
        assert_eq!(offsets(&sessions[5]), [1]);
        for s in &sessions {
            hub.settled("ch", s.key()).await;
            assert_eq!(s.queued_bytes() > 0, s.key() != 5, "{}", s.key());
        }
    }

    /// Waits until every session got exactly publication 1, for at most two seconds.
    async fn all_get_the_first(hub: &Hub, sessions: &[Arc<Session>], why: &str) {
        let settled = async {
            for s in sessions {
                hub.settled("ch", s.key()).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), settled)
            .await
            .expect(why);
        for s in sessions {
            assert_eq!(offsets(s), [1], "session {}", s.key());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_channel_published_from_another_runtime_fans_out_on_the_hubs_after_its_turn() {
        // The server API's thread has a runtime of its own. Its publish must not leave the fan-out
        // to that runtime (here it blocks its thread after one yield, so the subscribers get the
        // publication only if the hub's runtime runs the stripes), and must not start the fan-out
        // before its turn is over: on a shared core the woken worker would take the core from the
        // answer that is still to be written.
        let hub = Arc::new(Hub::default());
        let sessions = big_channel(&hub, 1 << 20);
        let (told, heard) = std::sync::mpsc::channel::<&'static str>();
        let publisher = Arc::clone(&hub);
        let probe = Arc::clone(&sessions[0]);
        let thread = std::thread::spawn(move || {
            let api = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            api.block_on(async {
                publisher.broadcast("ch", &publication(1), "e");
                // Still the caller's turn: the hub's two idle workers would have delivered by now.
                std::thread::sleep(std::time::Duration::from_millis(100));
                let during_the_turn = probe.queued_bytes() > 0;
                told.send(if during_the_turn {
                    "the fan-out started during the caller's turn"
                } else {
                    "waited"
                })
                .unwrap();
                tokio::task::yield_now().await;
                // Blocks this runtime's only thread until the test is done.
                std::thread::park_timeout(std::time::Duration::from_secs(5));
            });
        });
        assert_eq!(heard.recv().unwrap(), "waited");
        all_get_the_first(&hub, &sessions, "the stripes ran on the hub's runtime").await;
        thread.thread().unpark();
        thread.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fan_out_whose_caller_runtime_stopped_before_starting_it_still_runs() {
        // The task that was to start the stripe is dropped unrun with the caller's runtime: the
        // stripe starts anyway, or the channel's publications would wait for good.
        let hub = Arc::new(Hub::default());
        let sessions = big_channel(&hub, 1 << 20);
        let publisher = Arc::clone(&hub);
        std::thread::spawn(move || {
            let api = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            api.block_on(async { publisher.broadcast("ch", &publication(1), "e") });
            drop(api);
        })
        .join()
        .unwrap();
        all_get_the_first(
            &hub,
            &sessions,
            "the stripes started when their start was dropped",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_subscriber_of_a_big_channel_is_still_disconnected() {
        let hub = Hub::default();
        let sessions = big_channel(&hub, 1 << 20);
        let slow = Arc::new(Session::new(1000, "slow".into(), 200));
        hub.add("ch", Arc::clone(&slow));
        for offset in 1..=20 {
            hub.broadcast("ch", &publication(offset), "e");
        }
        hub.settled("ch", slow.key()).await;
        assert!(matches!(
            slow.poll_drain(&mut Context::from_waker(Waker::noop()), |_| true),
            Poll::Ready(Some(crate::session::Signal::Disconnect(
                switchboard_protocol::DisconnectCode::Slow
            )))
        ));
        hub.settled("ch", sessions[0].key()).await;
        assert_eq!(offsets(&sessions[0]).len(), 20, "the others go on");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gap_in_a_big_channel_follows_what_was_queued_before_it() {
        let hub = Hub::default();
        let sessions = big_channel(&hub, 1 << 20);
        hub.broadcast("ch", &publication(1), "e");
        hub.broadcast("ch", &publication(2), "e");
        hub.broadcast("ch", &publication(4), "e");
        assert_eq!(hub.subscriber_count("ch"), 0);
        // The channel is gone from the index; its stripes finish their work all the same.
        for s in &sessions {
            for _ in 0..5000 {
                if !s.take_dropped().is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let texts: Vec<String> = drain(s)
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(texts.len(), 3, "{texts:?}");
            assert!(texts[2].contains("2500"), "{}", texts[2]);
        }
    }

    #[test]
    fn a_reported_gap_unsubscribes_every_subscriber() {
        let hub = Hub::default();
        let s = Arc::new(Session::new(1, "c".into(), 1 << 20));
        hub.add("ch", Arc::clone(&s));
        hub.gap("ch");
        assert_eq!(s.take_dropped(), ["ch"]);
        assert_eq!(hub.subscriber_count("ch"), 0);
    }
}
