//! The engine: where publications go between nodes (broker), where channel streams are kept (history)
//! and who is in a channel (presence), behind one trait so that the in-memory engine (the default,
//! needing nothing installed) and a Redis engine are interchangeable.
//!
//! # Brief overview
//!
//! - [`Engine`] is the contract. Its comments say what every implementation must guarantee; the most
//!   important is that appending to a channel's history and broadcasting the publication happen as
//!   one step per channel, so every node sees a channel's publications in offset order.
//! - [`EngineHandler`] is how an engine hands publications and presence events (from any node) back
//!   to the node that runs it, and messages other nodes sent to this one ([`Engine::send_to_node`]).
//! - The control plane: [`Engine::broadcast_control`] reaches every node sharing the engine (this one
//!   included) and [`Engine::send_control`] one of them, both arriving in
//!   [`EngineHandler::on_control`]. The node builds cluster-wide server API calls on these two (an
//!   order to all, answers back to the asker, periodic announcements): an engine that implements them
//!   gets all of it.
//! - [`MemoryEngine`] implements it in one process.
//! - What remote engines (Redis, NATS) share, each piece written once: [`codec`] (the bodies they
//!   store and send), [`health`] (readiness, measured), [`presence`] (their own clients' entries,
//!   rewritten periodically), [`io_thread`] (their connections' own thread, with a short
//!   scheduler slice from [`thread_slice`], which the server API's thread takes too), [`new_epoch`] and
//!   [`HistoryQuery::select`].
//! - `conformance` (feature `testing`) is the suite every engine must pass, run by each engine crate's
//!   tests; `testing` (the same feature) has what their tests and examples share besides: throwaway
//!   server processes and a publish round trip benchmark.

pub mod codec;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod health;
pub mod io_thread;
mod memory;
pub mod presence;
#[cfg(feature = "testing")]
pub mod testing;
pub mod thread_slice;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use switchboard_protocol::{ClientInfo, Publication, StreamPosition};

pub use memory::MemoryEngine;
pub use switchboard_protocol::encode::PresenceEvent;

/// How a channel keeps its stream; from the channel's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Publications kept; 0 keeps no history (offsets stay 0).
    pub history_size: usize,
    /// How long each publication is kept.
    pub history_ttl: Duration,
    /// How long the stream's epoch and offset outlive its last publication. After that the stream is
    /// lost: the next publication starts a new epoch, and recovery from the old one fails (as it must).
    pub history_meta_ttl: Duration,
}

impl StreamOptions {
    /// Options that keep no history.
    pub const NONE: Self = Self {
        history_size: 0,
        history_ttl: Duration::ZERO,
        history_meta_ttl: Duration::ZERO,
    };

    /// Whether this channel keeps a stream at all.
    pub fn keeps_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// What part of a stream to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only publications after this offset (the epoch is checked by the caller).
    pub since: Option<u64>,
    /// At most this many; `None` for all.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

impl HistoryQuery {
    /// Whether a publication at `offset` is asked for: it comes after `since`.
    pub fn wants(&self, offset: u64) -> bool {
        offset > self.since.unwrap_or(0)
    }

    /// The publications asked for out of `publications`, which are a stream's after `since` in
    /// offset order: in the order asked for, at most `limit`.
    pub fn select(&self, mut publications: Vec<Arc<Publication>>) -> Vec<Arc<Publication>> {
        if self.reverse {
            publications.reverse();
        }
        if let Some(limit) = self.limit {
            publications.truncate(limit);
        }
        publications
    }
}

/// A new stream's epoch: 8 random letters and digits, so that a position of a lost stream is never
/// taken for one of its successor.
pub fn new_epoch() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(8)
        .collect()
}

/// A random node id: 8 hex digits.
pub fn new_node_id() -> String {
    std::iter::repeat_with(|| fastrand::digit(16))
        .take(8)
        .collect()
}

/// A stream read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The publications asked for, in the order asked for.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's current position (latest offset and epoch).
    pub position: StreamPosition,
}

/// What an engine's history holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Channels with a stream.
    pub streams: usize,
    /// Publications kept, over all streams.
    pub publications: usize,
}

/// Presence counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections present.
    pub num_clients: usize,
    /// Distinct users among them.
    pub num_users: usize,
}

/// The state of one part of an engine's backing store (one Redis shard), for `/health`, `/metrics`
/// and operators deciding what to repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardState {
    /// Which part: an address without credentials (`host:port`), safe to show in health checks.
    pub name: String,
    /// Whether it answers: its channels work.
    pub ready: bool,
    /// How long it has been in this state.
    pub since: Duration,
}

/// Engine failures. The in-memory engine never fails; remote engines do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The backing store cannot be reached; clients get a temporary error.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// No node with this id is reachable through the engine (it never existed, or it stopped).
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// A publish was sent to the store but not confirmed (a timeout, a dropped connection): it may
    /// still be applied. Retrying with the same idempotency key is safe.
    #[error("publish of unknown outcome: {0}")]
    UnknownOutcome(String),
}

impl EngineError {
    /// What a client is told. The [`std::fmt::Display`] text is for operators' logs and the server
    /// API (trusted callers): it names the store and its own error, which a client must not see (an
    /// internal address says nothing it can act on, and tells an attacker where the store is).
    pub fn client_message(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "temporarily unavailable, try again",
            Self::UnknownNode(_) => "internal error",
            Self::UnknownOutcome(_) => {
                "not confirmed: the publication may still be applied; retry with the same \
                 idempotency_key so that it is not applied twice"
            }
        }
    }
}

/// Receives what the engine delivers: publications and presence events, from this node or others.
pub trait EngineHandler: Send + Sync {
    /// A publication in `channel`, delivered in offset order per channel. `epoch` is the stream's
    /// epoch (empty for channels without history).
    fn on_publication(&self, channel: &str, publication: Arc<Publication>, epoch: &str);
    /// A client joined or left `channel`.
    fn on_presence(&self, channel: &str, event: PresenceEvent, info: Arc<ClientInfo>);
    /// Publications of `channel` may have been lost on their way to this node (the engine lost its
    /// connection to the broker, or fell behind): the node's subscribers of `channel` must be told to
    /// resubscribe with recovery, since nothing tells them otherwise that a hole opened.
    fn on_stream_gap(&self, channel: &str);
    /// A message another node sent to this one with [`Engine::send_to_node`]. Called from the
    /// engine's delivery task: hand the message over and return, never wait here. The default drops
    /// it, for nodes that exchange no messages.
    fn on_node_message(&self, message: Bytes) {
        drop(message);
    }
    /// A control message another node (or this one) sent with [`Engine::broadcast_control`] or
    /// [`Engine::send_control`]. Called from the engine's delivery task, like
    /// [`EngineHandler::on_node_message`]: hand it over and return. The default drops it.
    fn on_control(&self, message: Bytes) {
        drop(message);
    }
}

/// How many nodes a [`Engine::broadcast_control`] reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Exactly this many nodes listened and get the message (this node included): the sender may
    /// expect that many answers, and stop waiting once they are in.
    Nodes(usize),
    /// The engine cannot tell (its broker does not count receivers): the sender must rely on the
    /// nodes it knows of from their announcements.
    Unknown,
}

/// Broker, history and presence for a switchboard node.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Sets the receiver of publications and presence events. Called once, before any other method.
    fn set_handler(&self, handler: Arc<dyn EngineHandler>);

    /// This node's id among the nodes sharing the engine: short, random per process, and what other
    /// nodes pass to [`Engine::send_to_node`] to reach it.
    fn node_id(&self) -> &str;

    /// Sends `message` to the node `node`, whose handler gets it in
    /// [`EngineHandler::on_node_message`]. At most once and fire-and-forget: it may be lost on the way
    /// (an answer expected back needs a timeout), but a node that is known not to listen is reported
    /// at once as [`EngineError::UnknownNode`].
    ///
    /// The default knows no node at all: engines that do not connect nodes have nobody to send to.
    async fn send_to_node(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        drop(message);
        Err(EngineError::UnknownNode(node.to_owned()))
    }

    /// Sends `message` to every node sharing the engine, this one included, whose handlers get it in
    /// [`EngineHandler::on_control`]. At most once per node and fire-and-forget like
    /// [`Engine::send_to_node`]; the answer says how many nodes it reached, when the engine knows.
    ///
    /// Nodes running on other engine settings (another Redis prefix, say) are not reached: they are
    /// another cluster.
    async fn broadcast_control(&self, message: Bytes) -> Result<Reach, EngineError>;

    /// Sends a control message to node `node` only (an answer to its broadcast), delivered in its
    /// [`EngineHandler::on_control`]. [`EngineError::UnknownNode`] at once when no such node listens.
    async fn send_control(&self, node: &str, message: Bytes) -> Result<(), EngineError>;

    /// This node wants publications of `channel` (its first local subscriber arrived).
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;

    /// This node no longer wants `channel` (its last local subscriber left).
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;

    /// Appends `publication` to the channel's stream (if it keeps one) and delivers it to every node
    /// subscribed, as one step: no node sees offset N+1 before offset N. Returns the publication's
    /// position (offset 0 without history).
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &StreamOptions,
    ) -> Result<StreamPosition, EngineError>;

    /// Delivers a join or leave event to every node subscribed to `channel`.
    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        info: Arc<ClientInfo>,
    ) -> Result<(), EngineError>;

    /// Reads the channel's stream. Creates it (with a fresh epoch) when it does not exist, so that a
    /// subscriber's position stays meaningful until the stream is lost.
    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        opts: &StreamOptions,
    ) -> Result<History, EngineError>;

    /// Drops the channel's stream; the next publication starts a new epoch.
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError>;

    /// Records `info.client` as present in `channel`.
    async fn add_presence(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), EngineError>;

    /// Removes `client` from `channel`'s presence.
    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), EngineError>;

    /// Who is present in `channel`.
    async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError>;

    /// How many are present in `channel`. The default counts what [`Engine::presence`] lists:
    /// engines that can count more cheaply do.
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        Ok(PresenceStats::of(&self.presence(channel).await?))
    }

    /// Whether the engine can serve: false while a remote engine has lost its backing store (the
    /// node then reports not ready, so load balancers send new clients elsewhere). Measured, not
    /// assumed: a remote engine must notice a store that stopped answering even when the node is
    /// idle. With a store in several parts (shards), ready while at least one part is: channels of
    /// the others fail with [`EngineError::Unavailable`] meanwhile, and [`Engine::shards`] tells
    /// which. In-process engines are always ready.
    fn ready(&self) -> bool {
        true
    }

    /// The state of each part of the backing store, in configuration order; empty for engines
    /// without one (in-process).
    fn shards(&self) -> Vec<ShardState> {
        Vec::new()
    }

    /// Whether a message sent to `node` at `since` (or its answer) may have been lost by the engine
    /// rather than `node` being gone: the backing store was unreachable since then, or came back so
    /// recently that `node` may not listen again yet. A caller that got no answer, or
    /// [`EngineError::UnknownNode`], then reports a temporary failure, never a gone node. False by
    /// default: engines that lose no message know.
    fn node_messages_uncertain(&self, node: &str, since: Instant) -> bool {
        let _ = (node, since);
        false
    }

    /// Streams with history and the publications they keep, for metrics; `None` when counting is
    /// not cheap enough to do at every scrape (remote engines).
    fn history_stats(&self) -> Option<HistoryStats> {
        None
    }

    /// True when [`Engine::publish_idempotent`] remembers idempotency keys itself, where every node
    /// sees them; false (the default) when the node must remember them, in its own memory.
    fn remembers_idempotency_keys(&self) -> bool {
        false
    }

    /// Publishes like [`Engine::publish`], unless a publish to `channel` with the same `key`
    /// succeeded within `window`: then publishes nothing and returns that publish's position.
    ///
    /// The default ignores the key and publishes: engines whose
    /// [`Engine::remembers_idempotency_keys`] is false leave the keys to the node.
    async fn publish_idempotent(
        &self,
        channel: &str,
        publication: Publication,
        opts: &StreamOptions,
        key: &str,
        window: Duration,
    ) -> Result<StreamPosition, EngineError> {
        let _ = (key, window);
        self.publish(channel, publication, opts).await
    }
}
