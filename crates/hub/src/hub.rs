//! Which sessions of this node are subscribed to which channel, and fan-out to them.
//!
//! The index is split into shards, each behind its own read-write lock, so there is no global lock on
//! the publish path: a publication takes one shard's read lock while it hands the *same* encoded frame
//! (one `Arc` clone each) to every subscriber's queue. Subscribing and unsubscribing take the write
//! lock of one shard only.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use switchboard_protocol::encode::{self, PresenceEvent};
use switchboard_protocol::{ClientInfo, Frame, Publication, UnsubscribeCode};

use crate::session::Session;

const SHARDS: usize = 64;

/// The subscriber index of one node.
#[derive(Debug)]
pub struct Hub {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<String, Channel>>]>,
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: HashMap<u64, Arc<Session>>,
    /// Where the channel's stream stands for this node, to notice gaps. Publications of one channel
    /// arrive one at a time (the engine guarantees it), so this lock is never contended; it only lets
    /// the fan-out run under the shard's read lock.
    position: Mutex<Position>,
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
    /// Already at or behind the position: every subscriber has it or started after it. A remote
    /// engine delivers asynchronously, so a publication can still be on its way when a subscriber
    /// reads the stream's position.
    Stale,
    /// Publications are missing (or the epoch changed).
    Gap,
}

impl Channel {
    /// Moves the channel to `offset` when it is the next one.
    fn advance(&self, epoch: &str, offset: u64) -> Step {
        let mut pos = self.position.lock();
        let step = if pos.offset == 0 || (pos.epoch == epoch && offset == pos.offset + 1) {
            Step::Deliver
        } else if pos.epoch == epoch && offset <= pos.offset {
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
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
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
        let ch = shard.entry(channel.to_owned()).or_default();
        ch.subscribers.insert(session.key(), session);
        ch.subscribers.len() == 1
    }

    /// Removes a subscriber; true if the channel has none left on this node.
    pub fn remove(&self, channel: &str, key: u64) -> bool {
        let mut shard = self.shard(channel).write();
        let Some(ch) = shard.get_mut(channel) else {
            return false;
        };
        if ch.subscribers.remove(&key).is_none() {
            return false;
        }
        if ch.subscribers.is_empty() {
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
            .map_or(0, |c| c.subscribers.len())
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
            .map(|s| {
                s.read()
                    .values()
                    .map(|c| c.subscribers.len())
                    .sum::<usize>()
            })
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
                    .map(|(name, ch)| (name.clone(), ch.subscribers.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// Encodes `publication` once and queues it for every subscriber of `channel`; returns how many.
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
                    for s in ch.subscribers.values() {
                        s.deliver(channel, publication.offset, &frame);
                    }
                    return ch.subscribers.len();
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
        for s in ch.subscribers.values() {
            s.dropped(channel, push.clone());
        }
    }

    /// Queues a join or leave push for every subscriber of `channel`.
    pub fn presence_event(&self, channel: &str, event: PresenceEvent, info: &ClientInfo) {
        let shard = self.shard(channel).read();
        if let Some(ch) = shard.get(channel) {
            let push = Frame::shared(encode::presence_push(event, channel, info));
            for s in ch.subscribers.values() {
                s.push(push.clone());
            }
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
            } else if !pos.delivered && (pos.offset == 0 || offset < pos.offset) {
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
    fn a_reported_gap_unsubscribes_every_subscriber() {
        let hub = Hub::default();
        let s = Arc::new(Session::new(1, "c".into(), 1 << 20));
        hub.add("ch", Arc::clone(&s));
        hub.gap("ch");
        assert_eq!(s.take_dropped(), ["ch"]);
        assert_eq!(hub.subscriber_count("ch"), 0);
    }
}
