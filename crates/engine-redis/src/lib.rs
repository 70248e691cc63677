//! The Redis engine: several switchboard nodes share channels, history, presence and idempotency keys
//! through Redis, so a client on one node receives what is published through another, and recovers on
//! any node what it missed.
//!
//! # Brief overview
//!
//! - [`RedisEngine`] implements [`switchboard_engine::Engine`]; [`RedisConfig`] is its `[engine.redis]`
//!   section.
//! - `broker.rs`: pub/sub between nodes. One subscriber connection per Redis instance; after it
//!   reconnects, every channel is subscribed again and reported to the node as a possible gap, whose
//!   subscribers then resubscribe with recovery (push 2500). Also messages from node to node
//!   ([`Engine::send_to_node`]), each node listening on a channel named after its random id, and
//!   control messages ([`Engine::broadcast_control`] on one channel all nodes listen on,
//!   [`Engine::send_control`] on a second channel of each node).
//! - `history.rs`: the channel streams (Redis Streams). One Lua script increments the offset, appends
//!   to the stream and publishes, so offsets are gapless and every node sees them in order.
//! - `presence.rs`: who is in a channel, each entry expiring unless its node refreshes it.
//! - `idempotency.rs`: idempotency keys of server publishes, checked inside the publish script.
//! - `shard.rs`: which Redis instance holds a channel when there are several (consistent hashing).
//! - `health.rs`: readiness, measured by a PING to every instance at least every second; the node is
//!   ready while at least one instance answers.
//! - `keys.rs`: the key layout; `codec.rs`: how publications are written into Redis.
//! - The command connections run on a thread of their own ([`switchboard_engine::io_thread`]), so
//!   that a reply is read when it arrives, not after the tasks a big fan-out woke on the node's
//!   runtime.
//!
//! Redis Cluster (`cluster = true`) is one logical instance: keys of a channel share a hash slot, and
//! publications go through sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7.0+), each channel on the
//! master serving its slot. When a slot moves to another master, Redis unsubscribes the slot's
//! sharded subscribers and fred does not pass the notice on, so every node watches the slot map and
//! resubscribes (reporting gaps) when it changes; see `broker.rs`.

mod broker;
mod codec;
mod health;
mod history;
mod idempotency;
mod keys;
mod presence;
mod scripts;
mod shard;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Builder;
use fred::types::config::UnresponsiveConfig;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_engine::health::{Health, RECONNECT_MAX, settle_time};
use switchboard_engine::io_thread::IoThread;
use switchboard_engine::presence::LocalPresence;
use switchboard_engine::{
    Engine, EngineError, EngineHandler, History, HistoryQuery, PresenceEvent, Reach, ShardState,
    StreamOptions,
};
use switchboard_protocol::{ClientInfo, Publication, StreamPosition};
use tokio::task::AbortHandle;

pub use keys::Keys;
pub use shard::shard_of;

/// The `[engine.redis]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis servers (`redis://[:password@]host:port[/db]`, or `host:port`). Several: channels are
    /// spread over them by consistent hashing of their names, and every node must list the same
    /// servers in the same order. With `cluster`, the seed nodes of one Redis Cluster.
    pub addresses: Vec<String>,
    /// Prefix of every key and pub/sub channel, so that several deployments can share a Redis.
    pub prefix: String,
    /// A client's presence entry expires this long after its node last refreshed it (nodes refresh
    /// every third of it): presence of a node that died vanishes within this time.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// How long to wait for Redis at start; the server does not start without it.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one Redis command may take before it fails (and the connection is deemed dead).
    /// Also how long a Redis that stopped answering takes to make the node not ready: every
    /// instance is PINGed at least every second, and counts as down when its PING takes longer.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// The addresses are one Redis Cluster: channels go to the node owning their hash slot, and
    /// publications use sharded pub/sub (Redis 7.0+).
    pub cluster: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["redis://127.0.0.1:6379".into()],
            prefix: "switchboard".into(),
            presence_ttl: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            cluster: false,
        }
    }
}

impl RedisConfig {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), RedisError> {
        let bad = |m: String| Err(RedisError::Config(m));
        if self.addresses.is_empty() {
            return bad("addresses: at least one Redis address is needed".into());
        }
        for a in &self.addresses {
            fred::types::config::Config::from_url(&url(a))
                .map_err(|e| RedisError::Config(format!("addresses: {a:?}: {e}")))?;
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return bad(format!(
                "prefix: {:?} must be non-empty, without '{{' or '}}' (they would break Redis Cluster hash tags)",
                self.prefix
            ));
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return bad("presence_ttl: at least 1s".into());
        }
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return bad("connect_timeout and command_timeout must be above 0".into());
        }
        Ok(())
    }
}

/// `host:port` as a URL.
fn url(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("redis://{address}")
    }
}

/// Why the Redis engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// A setting of `[engine.redis]` is wrong.
    #[error("[engine.redis] {0}")]
    Config(String),
    /// The thread of the command connections (see [`switchboard_engine::io_thread`]) could not
    /// start.
    #[error("cannot start the thread of the Redis command connections: {0}")]
    Thread(#[source] std::io::Error),
    /// Redis did not answer at start.
    #[error(
        "cannot connect to Redis at {address} within {timeout:?}: {reason}; check [engine.redis] addresses and that Redis runs"
    )]
    Connect {
        /// The address tried.
        address: String,
        /// How long we waited.
        timeout: Duration,
        /// What failed.
        reason: String,
    },
}

/// One Redis instance (or one Redis Cluster) and this node's connections to it.
pub(crate) struct Shard {
    /// The address, for logs and errors.
    pub(crate) address: String,
    /// The address without credentials (`host:port`, several joined by commas), for `/health`,
    /// metrics and logs.
    pub(crate) name: String,
    /// Readiness, measured (`health.rs`).
    pub(crate) health: Health,
    /// Commands and scripts.
    pub(crate) client: Client,
    /// Pub/sub: a connection of its own, since a subscribed connection runs no other command.
    pub(crate) subscriber: SubscriberClient,
    /// Channels this node is subscribed to on this shard (switchboard names).
    pub(crate) channels: Mutex<HashSet<String>>,
    /// True while the subscriber resubscribes after a reconnect: the node is not ready yet.
    pub(crate) resyncing: AtomicBool,
    /// Held while resubscribing: a reconnect and a slot move noticed together resubscribe one after
    /// the other, and `resyncing` stays set until both are done.
    pub(crate) resync_lock: tokio::sync::Mutex<()>,
}

impl Shard {
    /// Fails at once while the connection is down, instead of queueing behind the reconnect: the
    /// caller (a client command, an API call) gets a temporary error it can retry.
    pub(crate) fn commands(&self) -> Result<&Client, EngineError> {
        if self.client.is_connected() {
            Ok(&self.client)
        } else {
            Err(EngineError::Unavailable(format!(
                "Redis at {} is not connected",
                self.address
            )))
        }
    }

    /// A Redis error as an engine error.
    pub(crate) fn error(&self, e: &fred::error::Error) -> EngineError {
        EngineError::Unavailable(format!("Redis at {}: {e}", self.address))
    }
}

/// What the engine's background tasks share with it.
pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) shards: Vec<Shard>,
    pub(crate) handler: OnceLock<Arc<dyn EngineHandler>>,
    /// Presence entries of this node's clients, refreshed in Redis periodically.
    pub(crate) local_presence: LocalPresence,
    pub(crate) scripts: scripts::Scripts,
    /// This node's id ([`Engine::node_id`]).
    pub(crate) node_id: String,
    /// The pub/sub channel where this node receives messages from others.
    pub(crate) node_channel: String,
    /// The pub/sub channel of control messages to every node.
    pub(crate) control_channel: String,
    /// The pub/sub channel of control messages to this node alone.
    pub(crate) node_control_channel: String,
}

impl Inner {
    /// The shard holding `channel`.
    pub(crate) fn shard(&self, channel: &str) -> &Shard {
        &self.shards[shard_of(channel, self.shards.len())]
    }

    /// The shard where node `node` listens for messages: every node computes the same one.
    pub(crate) fn node_shard(&self, node: &str) -> &Shard {
        &self.shards[shard_of(node, self.shards.len())]
    }

    /// The shard carrying control messages to every node: every node computes the same one.
    pub(crate) fn control_shard(&self) -> &Shard {
        &self.shards[shard_of(&self.control_channel, self.shards.len())]
    }

    pub(crate) fn handler(&self) -> Option<&Arc<dyn EngineHandler>> {
        self.handler.get()
    }
}

/// The Redis engine. Dropping it closes its connections and stops its tasks.
pub struct RedisEngine {
    inner: Arc<Inner>,
    tasks: Vec<AbortHandle>,
    /// Where the command connections run; dropped last, closing them.
    _commands: IoThread,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("addresses", &self.inner.config.addresses)
            .field("cluster", &self.inner.config.cluster)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RedisEngine {
    /// Connects to every configured Redis (failing if one does not answer within
    /// `connect_timeout`) and starts the tasks that receive publications, resubscribe after
    /// reconnects and refresh presence. Must run inside a Tokio runtime.
    pub async fn connect(config: RedisConfig) -> Result<Self, RedisError> {
        config.validate()?;
        let groups: Vec<Vec<String>> = if config.cluster {
            vec![config.addresses.iter().map(|a| url(a)).collect()]
        } else {
            config.addresses.iter().map(|a| vec![url(a)]).collect()
        };
        let mut shards = Vec::new();
        let mut tasks = Vec::new();
        let mut receivers = Vec::new();
        let commands = IoThread::start("redis-commands").map_err(RedisError::Thread)?;
        for urls in groups {
            let builder = builder(&config, &urls)?;
            let build_error = |e: fred::error::Error| RedisError::Config(format!("addresses: {e}"));
            let client = builder.build().map_err(build_error)?;
            let subscriber = builder.build_subscriber_client().map_err(build_error)?;
            // Listen before connecting, so that no message or reconnect is missed.
            receivers.push((subscriber.message_rx(), subscriber.reconnect_rx()));
            let address = urls.join(",");
            // The command client's connection task runs on the command thread (why: see
            // `switchboard_engine::io_thread`), the subscriber's on this runtime.
            let on_thread = {
                let (c, a, cfg) = (client.clone(), address.clone(), config.clone());
                commands
                    .run(async move { start(&c, &a, &cfg).await })
                    .await
                    .unwrap_or_else(|e| Err(connect_error(&address, &config, e.to_string())))
            };
            for started in [on_thread, start(&subscriber, &address, &config).await] {
                match started {
                    Ok(handle) => tasks.push(handle),
                    Err(e) => {
                        abort_all(&tasks);
                        return Err(e);
                    }
                }
            }
            shards.push(Shard {
                name: display_name(&urls),
                health: Health::new(),
                address,
                client,
                subscriber,
                channels: Mutex::new(HashSet::new()),
                resyncing: AtomicBool::new(false),
                resync_lock: tokio::sync::Mutex::new(()),
            });
        }
        let keys = Keys::new(&config.prefix);
        let node_id = match free_node_id(&config, &keys, &shards).await {
            Ok(id) => id,
            Err(e) => {
                abort_all(&tasks);
                return Err(e);
            }
        };
        let inner = Arc::new(Inner {
            node_channel: keys.node(&node_id),
            control_channel: keys.control(),
            node_control_channel: keys.node_control(&node_id),
            node_id,
            keys,
            config,
            shards,
            handler: OnceLock::new(),
            local_presence: LocalPresence::default(),
            scripts: scripts::Scripts::new(),
        });
        for (i, (messages, reconnects)) in receivers.into_iter().enumerate() {
            // The first connection is announced as a reconnect too; with nothing subscribed yet there
            // is nothing to resubscribe, so start listening from now on.
            let reconnects = reconnects.resubscribe();
            let h = tokio::spawn(broker::receive(Arc::clone(&inner), i, messages));
            tasks.push(h.abort_handle());
            let h = tokio::spawn(broker::resubscribe_on_reconnect(
                Arc::clone(&inner),
                i,
                reconnects,
            ));
            tasks.push(h.abort_handle());
            if inner.config.cluster {
                let h = tokio::spawn(broker::follow_slot_moves(Arc::clone(&inner), i));
                tasks.push(h.abort_handle());
            }
        }
        for i in 0..inner.shards.len() {
            let h = tokio::spawn(health::watch(Arc::clone(&inner), i));
            tasks.push(h.abort_handle());
        }
        let h = tokio::spawn(presence::refresh(Arc::clone(&inner)));
        tasks.push(h.abort_handle());
        // Listening before anyone can learn the id: from the first session on, others reach us.
        for (i, shard) in inner.shards.iter().enumerate() {
            if let Err(e) = broker::subscribe_own(&inner, i).await {
                abort_all(&tasks);
                return Err(connect_error(&shard.address, &inner.config, e.to_string()));
            }
        }
        Ok(Self {
            inner,
            tasks,
            _commands: commands,
        })
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }
}

/// `host:port` of each URL, without user or password: safe to show in `/health` and metrics.
fn display_name(urls: &[String]) -> String {
    let mut names = Vec::new();
    for u in urls {
        match fred::types::config::Config::from_url(u) {
            Ok(c) => names.extend(
                c.server
                    .hosts()
                    .into_iter()
                    .map(|s| format!("{}:{}", s.host, s.port)),
            ),
            // Checked by `validate` already; never show what could hold a password.
            Err(_) => names.push("?".into()),
        }
    }
    names.join(",")
}

/// A random node id (8 hex digits) that no other node listening through these Redis uses.
async fn free_node_id(
    config: &RedisConfig,
    keys: &Keys,
    shards: &[Shard],
) -> Result<String, RedisError> {
    for _ in 0..8 {
        let id = switchboard_engine::new_node_id();
        let shard = &shards[shard_of(&id, shards.len())];
        let name = keys.node(&id);
        // [channel, count]
        let counts: Result<Vec<Value>, _> = if config.cluster {
            shard.client.pubsub_shardnumsub(name).await
        } else {
            shard.client.pubsub_numsub(name).await
        };
        let counts = counts.map_err(|e| connect_error(&shard.address, config, e.to_string()))?;
        if counts.get(1).and_then(Value::as_i64).unwrap_or(0) == 0 {
            return Ok(id);
        }
    }
    // 8 collisions of 32 random bits in a row: something else is wrong.
    Err(RedisError::Config(
        "no free node id: every id tried already listens (check [engine.redis] prefix)".into(),
    ))
}

/// Connects `client`; the handle of its connection task.
async fn start<C: ClientLike>(
    client: &C,
    address: &str,
    config: &RedisConfig,
) -> Result<AbortHandle, RedisError> {
    // fred gives up on its own after `connection_timeout`; this bound is a guard on top.
    match tokio::time::timeout(config.connect_timeout * 2, client.init()).await {
        Ok(Ok(handle)) => Ok(handle.abort_handle()),
        Ok(Err(e)) => Err(connect_error(address, config, e.to_string())),
        Err(_) => Err(connect_error(address, config, "timed out".into())),
    }
}

fn abort_all(tasks: &[AbortHandle]) {
    for t in tasks {
        t.abort();
    }
}

fn connect_error(address: &str, config: &RedisConfig, reason: String) -> RedisError {
    RedisError::Connect {
        address: address.to_owned(),
        timeout: config.connect_timeout,
        reason,
    }
}

/// A fred builder for one shard: reconnect with backoff forever, never retry a command on another
/// connection (a publish script retried after a lost reply would publish twice), and time out.
fn builder(config: &RedisConfig, urls: &[String]) -> Result<Builder, RedisError> {
    let bad = |e: fred::error::Error| RedisError::Config(format!("addresses: {e}"));
    let first = urls.first().map(String::as_str).unwrap_or_default();
    let mut fred_config = fred::types::config::Config::from_url(first).map_err(bad)?;
    if config.cluster {
        let mut hosts = Vec::new();
        for u in urls {
            for server in fred::types::config::Config::from_url(u)
                .map_err(bad)?
                .server
                .hosts()
            {
                hosts.push((server.host.to_string(), server.port));
            }
        }
        fred_config.server = ServerConfig::new_clustered(hosts);
    }
    // Fail at start when Redis is not there: a wrong address should stop the server, not hang it.
    fred_config.fail_fast = true;
    let mut b = Builder::from_config(fred_config);
    let max_delay = u32::try_from(RECONNECT_MAX.as_millis()).unwrap_or(u32::MAX);
    b.set_policy(ReconnectPolicy::new_exponential(0, 100, max_delay, 2));
    let (connect, command) = (config.connect_timeout, config.command_timeout);
    b.with_connection_config(|c| {
        c.connection_timeout = connect;
        c.internal_command_timeout = command;
        // In a Redis Cluster, fred counts following a MOVED redirect as another write: a command
        // sent to a slot that just moved fails (a temporary error) instead of being redirected,
        // unless the slot watcher (`broker::follow_slot_moves`) refreshed the routing first.
        c.max_command_attempts = 1;
        c.tcp = TcpConfig {
            nodelay: Some(true),
            ..Default::default()
        };
        c.unresponsive = UnresponsiveConfig {
            max_timeout: Some(command),
            interval: (command / 4).max(Duration::from_millis(100)),
        };
    });
    b.with_performance_config(|p| {
        p.default_command_timeout = command;
        // Room for bursts between the connection and the task that hands messages to the node; if
        // it overflows anyway, the lost channels are reported as gaps.
        p.broadcast_channel_capacity = 16_384;
    });
    Ok(b)
}

#[async_trait]
impl Engine for RedisEngine {
    fn set_handler(&self, handler: Arc<dyn EngineHandler>) {
        // A second call is a wiring bug; keeping the first handler is the safe answer.
        let _ = self.inner.handler.set(handler);
    }

    fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    async fn send_to_node(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        broker::send_to_node(&self.inner, node, message).await
    }

    async fn broadcast_control(&self, message: Bytes) -> Result<Reach, EngineError> {
        broker::broadcast_control(&self.inner, message).await
    }

    async fn send_control(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        broker::send_control(&self.inner, node, message).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        broker::subscribe(&self.inner, channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        broker::unsubscribe(&self.inner, channel).await
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        history::publish(&self.inner, channel, &publication, opts, None).await
    }

    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        info: Arc<ClientInfo>,
    ) -> Result<(), EngineError> {
        broker::publish_presence_event(&self.inner, channel, event, &info).await
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        opts: &StreamOptions,
    ) -> Result<History, EngineError> {
        history::read(&self.inner, channel, query, opts).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        history::remove(&self.inner, channel).await
    }

    async fn add_presence(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), EngineError> {
        presence::add(&self.inner, channel, info).await
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        presence::remove(&self.inner, channel, client).await
    }

    async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError> {
        presence::get(&self.inner, channel).await
    }

    fn ready(&self) -> bool {
        // Ready while some channels work: with one shard of several down, the others' channels
        // still do, and taking every node out of the load balancer would stop those too.
        self.inner.shards.iter().any(Shard::ready)
    }

    fn shards(&self) -> Vec<ShardState> {
        self.inner
            .shards
            .iter()
            .map(|s| {
                let (ready, since) = s.observe();
                ShardState {
                    name: s.name.clone(),
                    ready,
                    since,
                }
            })
            .collect()
    }

    fn node_messages_uncertain(&self, node: &str, since: Instant) -> bool {
        let settle = settle_time(self.inner.config.command_timeout);
        // The request goes through the other node's shard, its answer through ours.
        [
            self.inner.node_shard(node),
            self.inner.node_shard(&self.inner.node_id),
        ]
        .iter()
        .any(|s| s.health.uncertain_since(s.ready(), since, settle))
    }

    fn remembers_idempotency_keys(&self) -> bool {
        true
    }

    async fn publish_idempotent(
        &self,
        channel: &str,
        publication: Publication,
        opts: &StreamOptions,
        key: &str,
        window: Duration,
    ) -> Result<StreamPosition, EngineError> {
        idempotency::publish(&self.inner, channel, &publication, opts, key, window).await
    }
}
