//! The in-memory engine: one process, nothing to install. The default.
//!
//! Channels are spread over shards, each behind its own lock, so publishes to different channels do
//! not contend on one lock. A channel's stream has its own mutex, held while the publication is
//! appended *and* handed to the node: that is what keeps every subscriber's view of a channel in
//! offset order under concurrent publishers. The hand-over only enqueues to subscribers' queues, so
//! the lock is held for microseconds per thousand subscribers, never across IO.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{ClientInfo, Publication, StreamPosition};
use tokio::time::Instant;

use crate::presence::{Members, remove_member};
use crate::{
    Engine, EngineError, EngineHandler, History, HistoryQuery, HistoryStats, PresenceEvent,
    PresenceStats, Reach, StreamOptions, new_epoch, new_node_id,
};

const SHARDS: usize = 64;

/// The in-memory engine.
pub struct MemoryEngine {
    hasher: RandomState,
    streams: Box<[Mutex<HashMap<String, SharedStream>>]>,
    presence: Box<[Mutex<HashMap<String, Members>>]>,
    handler: OnceLock<Arc<dyn EngineHandler>>,
    /// This node's id: the only node this engine knows.
    node_id: String,
}

type SharedStream = Arc<Mutex<Stream>>;

#[derive(Debug)]
struct Stream {
    epoch: String,
    top: u64,
    /// (expires at, publication), oldest first.
    items: VecDeque<(Instant, Arc<Publication>)>,
    /// When the stream itself is forgotten (epoch and offset lost).
    meta_expires: Instant,
}

impl Stream {
    fn new(now: Instant, opts: &StreamOptions) -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            items: VecDeque::new(),
            meta_expires: now + opts.history_meta_ttl,
        }
    }

    /// Drops expired publications; starts a new epoch if the whole stream expired. The new stream
    /// lives its own meta ttl: the publication that follows a read continues the epoch the read
    /// reported (the conformance suite holds every engine to it).
    fn expire(&mut self, now: Instant, opts: &StreamOptions) {
        if now >= self.meta_expires {
            *self = Self::new(now, opts);
            return;
        }
        while self.items.front().is_some_and(|(exp, _)| *exp <= now) {
            self.items.pop_front();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine").finish_non_exhaustive()
    }
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            streams: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            presence: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            handler: OnceLock::new(),
            node_id: new_node_id(),
        }
    }

    fn shard(&self, channel: &str) -> usize {
        (self.hasher.hash_one(channel) as usize) % SHARDS
    }

    fn stream(&self, channel: &str, now: Instant, opts: &StreamOptions) -> Arc<Mutex<Stream>> {
        let mut shard = self.streams[self.shard(channel)].lock();
        if let Some(s) = shard.get(channel) {
            return Arc::clone(s);
        }
        let s = Arc::new(Mutex::new(Stream::new(now, opts)));
        shard.insert(channel.to_owned(), Arc::clone(&s));
        s
    }

    /// Forgets streams whose epoch has expired and that nobody is using. Called periodically by the
    /// node; without it, every channel ever published to would keep a few bytes forever.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for shard in self.streams.iter() {
            shard.lock().retain(|_, s| {
                let keep = Arc::strong_count(s) > 1 || s.lock().meta_expires > now;
                removed += usize::from(!keep);
                keep
            });
        }
        removed
    }

    /// Channels with a stream (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        self.streams.iter().map(|s| s.lock().len()).sum()
    }

    fn handler(&self) -> Option<&Arc<dyn EngineHandler>> {
        self.handler.get()
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn set_handler(&self, handler: Arc<dyn EngineHandler>) {
        // A second call is a wiring bug; keeping the first handler is the safe answer.
        let _ = self.handler.set(handler);
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    /// One process: the only node there is is this one, whose handler gets the message at once.
    async fn send_to_node(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        match self.handler() {
            Some(handler) if node == self.node_id => {
                handler.on_node_message(message);
                Ok(())
            }
            _ => Err(EngineError::UnknownNode(node.to_owned())),
        }
    }

    /// One process: the whole cluster is this node, whose handler gets the message at once.
    async fn broadcast_control(&self, message: Bytes) -> Result<Reach, EngineError> {
        match self.handler() {
            Some(handler) => {
                handler.on_control(message);
                Ok(Reach::Nodes(1))
            }
            // Nobody listens yet (no node is built on this engine).
            None => Ok(Reach::Nodes(0)),
        }
    }

    /// One process: only this node can be reached.
    async fn send_control(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        match self.handler() {
            Some(handler) if node == self.node_id => {
                handler.on_control(message);
                Ok(())
            }
            _ => Err(EngineError::UnknownNode(node.to_owned())),
        }
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        // One process: every publication reaches the handler anyway.
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        let now = Instant::now();
        let stream = self.stream(channel, now, opts);
        let mut s = stream.lock();
        s.expire(now, opts);
        if opts.keeps_history() {
            s.top += 1;
            publication.offset = s.top;
            let p = Arc::new(publication);
            s.items.push_back((now + opts.history_ttl, Arc::clone(&p)));
            while s.items.len() > opts.history_size {
                s.items.pop_front();
            }
            s.meta_expires = now + opts.history_meta_ttl.max(opts.history_ttl);
            if let Some(h) = self.handler() {
                h.on_publication(channel, p, &s.epoch);
            }
            Ok(s.position())
        } else {
            publication.offset = 0;
            if let Some(h) = self.handler() {
                h.on_publication(channel, Arc::new(publication), "");
            }
            Ok(StreamPosition::default())
        }
    }

    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        info: Arc<ClientInfo>,
    ) -> Result<(), EngineError> {
        if let Some(h) = self.handler() {
            h.on_presence(channel, event, info);
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        opts: &StreamOptions,
    ) -> Result<History, EngineError> {
        let now = Instant::now();
        let stream = self.stream(channel, now, opts);
        let mut s = stream.lock();
        s.expire(now, opts);
        let matching = s
            .items
            .iter()
            .map(|(_, p)| p)
            .filter(|p| query.wants(p.offset));
        let limit = query.limit.unwrap_or(usize::MAX);
        let publications: Vec<_> = if query.reverse {
            matching.rev().take(limit).cloned().collect()
        } else {
            matching.take(limit).cloned().collect()
        };
        Ok(History {
            publications,
            position: s.position(),
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        self.streams[self.shard(channel)].lock().remove(channel);
        Ok(())
    }

    async fn add_presence(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), EngineError> {
        let mut shard = self.presence[self.shard(channel)].lock();
        shard
            .entry(channel.to_owned())
            .or_default()
            .insert(info.client.clone(), info);
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        remove_member(
            &mut self.presence[self.shard(channel)].lock(),
            channel,
            client,
        );
        Ok(())
    }

    async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError> {
        Ok(self.presence[self.shard(channel)]
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default())
    }

    fn history_stats(&self) -> Option<HistoryStats> {
        let mut stats = HistoryStats::default();
        for shard in self.streams.iter() {
            let shard = shard.lock();
            stats.streams += shard.len();
            stats.publications += shard.values().map(|s| s.lock().items.len()).sum::<usize>();
        }
        Some(stats)
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let shard = self.presence[self.shard(channel)].lock();
        Ok(shard
            .get(channel)
            .map(PresenceStats::of)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use switchboard_protocol::Payload;

    use super::*;

    fn publication(n: u8) -> Publication {
        Publication::new(Payload::Json(Bytes::from(n.to_string())))
    }

    #[derive(Default)]
    struct Recorder(
        Mutex<Vec<(String, u64)>>,
        Mutex<Vec<Bytes>>,
        Mutex<Vec<Bytes>>,
    );
    impl EngineHandler for Recorder {
        fn on_publication(&self, channel: &str, p: Arc<Publication>, _: &str) {
            self.0.lock().push((channel.to_owned(), p.offset));
        }
        fn on_presence(&self, _: &str, _: PresenceEvent, _: Arc<ClientInfo>) {}
        fn on_stream_gap(&self, _: &str) {}
        fn on_node_message(&self, message: Bytes) {
            self.1.lock().push(message);
        }
        fn on_control(&self, message: Bytes) {
            self.2.lock().push(message);
        }
    }

    #[tokio::test]
    async fn control_messages_reach_the_one_node_there_is() {
        let e = MemoryEngine::new();
        assert_eq!(
            e.broadcast_control(Bytes::from_static(b"early")).await,
            Ok(Reach::Nodes(0)),
            "before a node listens, nobody is reached"
        );
        let rec = Arc::new(Recorder::default());
        e.set_handler(rec.clone());
        assert_eq!(
            e.broadcast_control(Bytes::from_static(b"all")).await,
            Ok(Reach::Nodes(1))
        );
        let me = e.node_id().to_owned();
        e.send_control(&me, Bytes::from_static(b"me"))
            .await
            .unwrap();
        assert_eq!(
            *rec.2.lock(),
            [Bytes::from_static(b"all"), Bytes::from_static(b"me")]
        );
        assert!(rec.1.lock().is_empty(), "not node messages");
        let other = if me == "00000000" {
            "00000001"
        } else {
            "00000000"
        };
        assert_eq!(
            e.send_control(other, Bytes::new()).await,
            Err(EngineError::UnknownNode(other.into()))
        );
    }

    #[tokio::test]
    async fn the_only_node_a_memory_engine_reaches_is_its_own() {
        let e = MemoryEngine::new();
        let rec = Arc::new(Recorder::default());
        e.set_handler(rec.clone());
        let me = e.node_id().to_owned();
        assert_eq!(me.len(), 8);
        assert!(me.bytes().all(|b| b.is_ascii_hexdigit()));
        e.send_to_node(&me, Bytes::from_static(b"hi"))
            .await
            .unwrap();
        assert_eq!(*rec.1.lock(), [Bytes::from_static(b"hi")]);
        let other = if me == "00000000" {
            "00000001"
        } else {
            "00000000"
        };
        assert_eq!(
            e.send_to_node(other, Bytes::new()).await,
            Err(EngineError::UnknownNode(other.into()))
        );
        assert_ne!(MemoryEngine::new().node_id(), me, "random per engine");
    }

    #[tokio::test]
    async fn channels_without_history_still_deliver_in_order() {
        let e = MemoryEngine::new();
        let rec = Arc::new(Recorder::default());
        e.set_handler(rec.clone());
        let pos = e
            .publish("live", publication(1), &StreamOptions::NONE)
            .await
            .unwrap();
        assert_eq!(pos, StreamPosition::default());
        assert_eq!(*rec.0.lock(), [("live".to_owned(), 0)]);
        assert_eq!(
            e.sweep(),
            1,
            "a channel without history leaves nothing behind"
        );
        assert_eq!(e.stream_count(), 0);
    }
}
