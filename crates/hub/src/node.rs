//! The node: one switchboard process's core. Publications enter here, a client's `publish` command
//! and the server API's alike through [`Node::publish_as`], go through the engine, and come back
//! through [`EngineHandler`] to the hub, which queues them for every local subscriber.
//!
//! The node knows nothing of a client's protocol state: `client/` builds clients on it (see
//! `Node::client`) and the cluster-wide calls (`cluster.rs`) act on it, both from above.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_auth::Verifier;
use switchboard_engine::{Engine, EngineError, EngineHandler, PresenceEvent, StreamOptions};
use switchboard_protocol::{
    ClientInfo, DisconnectCode, ErrorCode, Payload, Publication, StreamPosition,
};

pub use crate::cluster_state::NodeInfo;
use crate::cluster_state::{Cluster, ClusterConfig};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::namespace::ChannelsConfig;
use crate::proxy::{ForwardedHeaders, Proxy};
use crate::receipt::Receipt;
use crate::session::{Control, Session};

/// Settings of client connections, whatever their transport.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Accept connections without a token (user id empty). The chat demo needs this; production
    /// deployments with authentication turn it off.
    pub allow_anonymous: bool,
    /// Most bytes waiting to be sent to one client; beyond it the client is disconnected as `slow`.
    pub queue_bytes: usize,
    /// Most channels one connection may subscribe to.
    pub max_channels: usize,
    /// Commands one connection may send per second (bursts of twice that pass); beyond it each
    /// command is answered with error 111. 0: no limit.
    pub max_commands_per_second: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            queue_bytes: 1 << 20,
            max_channels: 128,
            max_commands_per_second: 0,
        }
    }
}

/// Everything a node is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Namespaces.
    pub channels: ChannelsConfig,
    /// Client settings.
    pub client: ClientConfig,
    /// Seconds between keepalive pings, told to clients in the connect reply.
    pub ping_interval_secs: u64,
    /// How long a server publish's idempotency key is remembered.
    pub idempotency_window: Duration,
    /// The node's name among the others, and how it talks with them.
    pub cluster: ClusterConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            channels: ChannelsConfig::default(),
            client: ClientConfig::default(),
            ping_interval_secs: 25,
            idempotency_window: Duration::from_secs(300),
            cluster: ClusterConfig::default(),
        }
    }
}

/// One switchboard node.
pub struct Node {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) hub: Hub,
    pub(crate) config: NodeConfig,
    /// Verifies connection and subscription tokens; `None` when no key is configured.
    pub(crate) auth: Option<Verifier>,
    /// Forwards client events to the application's backend; `None` when no proxy is configured.
    pub(crate) proxy: Option<Arc<dyn Proxy>>,
    /// What `/metrics` reports.
    pub(crate) metrics: Metrics,
    /// Connected clients by id, with their user: for token expiry and the server API.
    /// Keyed by the session's own id string (shared, not copied).
    clients: Mutex<Registry>,
    /// Results of recent server publishes by idempotency key, with when they are forgotten.
    idempotency: Mutex<HashMap<String, (StreamPosition, Instant)>>,
    started: Instant,
    /// The next client session's key in the hub (see [`Session::key`]).
    pub(crate) next_key: AtomicU64,
    /// Receives messages from other nodes, once a transport that exchanges them is set up.
    node_messages: OnceLock<NodeMessageHandler>,
    /// Cluster-wide API calls and the other nodes' announcements.
    pub(crate) cluster: Cluster,
}

/// What receives the messages other nodes send to this one (see [`Node::send_to_node`]). Called on
/// the engine's delivery task: it must hand the message over and return at once.
pub type NodeMessageHandler = Arc<dyn Fn(Bytes) + Send + Sync>;

/// Options of a server-side publish (the HTTP API's `publish`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Deliver to current subscribers but keep it out of history (offset 0).
    pub skip_history: bool,
    /// Tags delivered with the publication.
    pub tags: Option<BTreeMap<String, String>>,
    /// A repeated publish with the same key within the idempotency window is not published again;
    /// it answers the first one's position.
    pub idempotency_key: Option<String>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("channels", &self.hub.channel_count())
            .finish_non_exhaustive()
    }
}

/// Who publishes, for [`Node::publish_as`]: it decides what the publication says of its publisher and
/// whose idempotency keys it shares.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Publisher<'a> {
    /// The server API: no publisher info; keys shared by every API caller.
    Server,
    /// A connected client: its info goes with the publication; keys are its user's own.
    Client(&'a Arc<ClientInfo>),
}

/// Why a publish failed before it reached the stream, or in the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The channel name or namespace is not valid.
    #[error("{}", .0.message())]
    Channel(ErrorCode),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Node {
    /// A node on `engine`, verifying tokens with `auth` (none: only anonymous connections, if
    /// allowed). The engine's publications are delivered to this node's hub from now on.
    pub fn new(engine: Arc<dyn Engine>, config: NodeConfig, auth: Option<Verifier>) -> Arc<Self> {
        Self::with_proxy(engine, config, auth, None)
    }

    /// A node that also forwards client events to the application's backend through `proxy`.
    pub fn with_proxy(
        engine: Arc<dyn Engine>,
        config: NodeConfig,
        auth: Option<Verifier>,
        proxy: Option<Arc<dyn Proxy>>,
    ) -> Arc<Self> {
        let node = Arc::new(Self {
            engine,
            hub: Hub::default(),
            cluster: Cluster::new(config.cluster.clone()),
            config,
            auth,
            proxy,
            metrics: Metrics::default(),
            clients: Mutex::new(HashMap::new()),
            idempotency: Mutex::new(HashMap::new()),
            started: Instant::now(),
            next_key: AtomicU64::new(1),
            node_messages: OnceLock::new(),
        });
        node.engine
            .set_handler(Arc::new(Delivery(Arc::downgrade(&node))));
        node
    }

    /// The handshake headers (name, value) a proxy wants forwarded, picked from `headers`; `None`
    /// without a proxy, so connections carry nothing they do not need.
    pub fn forwarded_headers<'a>(
        &self,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Option<ForwardedHeaders> {
        let proxy = self.proxy.as_ref()?;
        let mut headers = headers;
        let kept = proxy.forward(&mut headers);
        (!kept.is_empty()).then_some(kept)
    }

    /// Publishes to `channel` on behalf of the server (no client, no permission checks).
    pub async fn publish(
        &self,
        channel: &str,
        payload: Payload,
    ) -> Result<StreamPosition, PublishError> {
        self.publish_with(channel, payload, &PublishOptions::default())
            .await
    }

    /// Publishes with options (history, tags, idempotency).
    pub async fn publish_with(
        &self,
        channel: &str,
        payload: Payload,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, PublishError> {
        self.publish_as(Publisher::Server, channel, payload, opts)
            .await
    }

    /// The one road of every publication, the server API's and the clients': resolves the
    /// namespace, keeps the publication out of history when asked, tags it with its publisher, and
    /// publishes it once per idempotency key. Permission checks (namespace, private channels,
    /// publish proxy) are the caller's, done before.
    pub(crate) async fn publish_as(
        &self,
        publisher: Publisher<'_>,
        channel: &str,
        payload: Payload,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, PublishError> {
        let ns = self
            .config
            .channels
            .resolve(channel)
            .map_err(PublishError::Channel)?;
        let stream = if opts.skip_history {
            StreamOptions::NONE
        } else {
            ns.stream()
        };
        let mut publication = Publication::new(payload);
        publication.tags = opts.tags.clone();
        let key = match publisher {
            Publisher::Server => opts.idempotency_key.clone(),
            Publisher::Client(info) => {
                publication.info = Some(Arc::clone(info));
                // Per user: one user's keys never suppress another's publication, nor the server
                // API's.
                opts.idempotency_key
                    .as_ref()
                    .map(|k| format!("client\u{0}{}\u{0}{k}", info.user))
            }
        };
        Ok(self
            .publish_once(channel, publication, &stream, key.as_deref())
            .await?)
    }

    /// Publishes `publication` as it is; with `key`, only once per key and channel within the
    /// idempotency window (a repeat answers the first one's position). Server publishes and client
    /// publishes share it, their keys kept apart by [`Node::publish_as`].
    async fn publish_once(
        &self,
        channel: &str,
        publication: Publication,
        stream: &StreamOptions,
        key: Option<&str>,
    ) -> Result<StreamPosition, EngineError> {
        let Some(key) = key else {
            return self.engine.publish(channel, publication, stream).await;
        };
        if self.engine.remembers_idempotency_keys() {
            // Kept where every node sees them: a retry that reaches another node is still caught.
            let window = self.config.idempotency_window;
            return self
                .engine
                .publish_idempotent(channel, publication, stream, key, window)
                .await;
        }
        let key = format!("{channel}\u{0}{key}");
        if let Some((pos, until)) = self.idempotency.lock().get(&key)
            && *until > Instant::now()
        {
            return Ok(pos.clone());
        }
        let pos = self.engine.publish(channel, publication, stream).await?;
        let until = Instant::now() + self.config.idempotency_window;
        self.idempotency.lock().insert(key, (pos.clone(), until));
        Ok(pos)
    }

    /// Orders the clients of `user` (or only `client`) on this node to subscribe to `channel`, each
    /// with a copy of `receipt` to sign once subscribed. Returns how many were ordered. The server
    /// API uses [`Node::order_clients`], which asks every node and waits for the receipts.
    pub fn subscribe_clients(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
        receipt: &Receipt,
    ) -> usize {
        self.each_client(user, client, |s| {
            s.control(Control::Subscribe(channel.to_owned(), receipt.clone()))
        })
    }

    /// Orders the clients of `user` (or only `client`) on this node to leave `channel`, each with a
    /// copy of `receipt` to sign once out of it. Returns how many were ordered.
    pub fn unsubscribe_clients(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
        receipt: &Receipt,
    ) -> usize {
        self.each_client(user, client, |s| {
            s.control(Control::Unsubscribe(channel.to_owned(), receipt.clone()))
        })
    }

    /// Disconnects the clients of `user` (or only `client`) on this node with `code`. Returns how
    /// many.
    pub fn disconnect_clients(
        &self,
        user: &str,
        client: Option<&str>,
        code: DisconnectCode,
    ) -> usize {
        self.each_client(user, client, |s| s.disconnect(code))
    }

    /// Sets when the connections of `user` (or only `client`) on this node expire (`None`: never).
    /// Returns how many.
    pub fn refresh_clients(
        &self,
        user: &str,
        client: Option<&str>,
        expires_at: Option<u64>,
    ) -> usize {
        self.each_client(user, client, |s| s.set_expires_at(expires_at))
    }

    fn each_client(&self, user: &str, client: Option<&str>, f: impl Fn(&Session)) -> usize {
        let clients = self.clients.lock();
        let mut n = 0;
        for (id, (u, session)) in clients.iter() {
            if u == user && client.is_none_or(|c| c == &**id) {
                f(session);
                n += 1;
            }
        }
        n
    }

    /// This node's id among the nodes sharing the engine (random per process).
    pub fn node_id(&self) -> &str {
        self.engine.node_id()
    }

    /// Sends `message` to the node `node` through the engine: at most once, and
    /// [`EngineError::UnknownNode`] at once when no such node listens.
    pub async fn send_to_node(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        self.engine.send_to_node(node, message).await
    }

    /// Sets what receives messages from other nodes; until then (and for a second handler, a wiring
    /// bug) they are dropped.
    pub fn set_node_message_handler(&self, handler: NodeMessageHandler) {
        if self.node_messages.set(handler).is_err() {
            tracing::warn!("a node message handler was already set; keeping the first");
        }
    }

    /// Whether the node can serve new work: its engine reaches its backing store.
    pub fn ready(&self) -> bool {
        self.engine.ready()
    }

    /// The engine, for reads the API passes through (presence, history).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The namespace configuration.
    pub fn channels_config(&self) -> &ChannelsConfig {
        &self.config.channels
    }

    /// Channels with subscribers on this node matching `pattern` (`*` matches any run of characters),
    /// with their subscriber counts.
    pub fn channels(&self, pattern: Option<&str>) -> Vec<(String, usize)> {
        self.hub.channels(pattern)
    }

    /// This node's counts for `info` (see [`Node::cluster_info`] for every node's).
    pub fn info(&self) -> NodeInfo {
        let (num_clients, num_users) = {
            let clients = self.clients.lock();
            let users: std::collections::HashSet<&str> =
                clients.values().map(|(u, _)| u.as_str()).collect();
            (clients.len(), users.len())
        };
        NodeInfo {
            id: self.node_id().to_owned(),
            name: self.cluster.name().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime: self.started.elapsed().as_secs(),
            num_clients,
            num_users,
            num_channels: self.hub.channel_count(),
            num_subscriptions: self.hub.subscription_count(),
        }
    }

    /// The subscriber index, for benchmarks that register sessions without a transport.
    #[doc(hidden)]
    pub fn hub_for_bench(&self) -> &Hub {
        &self.hub
    }

    /// Disconnects (code 3005, `expired`) every client whose token expired by `now` (Unix seconds)
    /// without a `refresh` (or asks the refresh proxy, see [`crate::Proxy`]), has expired
    /// subscriptions checked, and forgets idempotency keys past their window. The server calls this
    /// every second.
    pub fn expire_clients(&self, now: u64) -> usize {
        let clients = self.clients.lock();
        let n = clients
            .values()
            .filter(|(_, session)| session.check_expiry(now))
            .count();
        drop(clients);
        let instant = Instant::now();
        self.idempotency
            .lock()
            .retain(|_, (_, until)| *until > instant);
        n
    }

    /// The node's metrics, for transports to count their bytes.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics in Prometheus' text format, with the values read at scrape time brought up to
    /// date first.
    pub fn metrics_text(&self) -> String {
        let (mut sum, mut max) = (0usize, 0usize);
        for (_, session) in self.clients.lock().values() {
            let q = session.waiting_bytes();
            sum += q;
            max = max.max(q);
        }
        let m = &self.metrics;
        m.queued_bytes.set(i64::try_from(sum).unwrap_or(i64::MAX));
        m.queued_bytes_max
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        m.channels
            .set(i64::try_from(self.hub.channel_count()).unwrap_or(i64::MAX));
        if let Some(h) = self.engine.history_stats() {
            m.history_streams
                .set(i64::try_from(h.streams).unwrap_or(i64::MAX));
            m.history_publications
                .set(i64::try_from(h.publications).unwrap_or(i64::MAX));
        }
        m.engine_ready.set(i64::from(self.engine.ready()));
        for shard in self.engine.shards() {
            m.engine_shard_ready
                .get_or_create(&vec![("shard", shard.name)])
                .set(i64::from(shard.ready));
        }
        m.encode()
    }

    /// Connected clients on this node.
    pub fn client_count(&self) -> usize {
        self.clients.lock().len()
    }

    pub(crate) fn register(&self, session: &Arc<Session>, user: &str) {
        self.clients.lock().insert(
            Arc::clone(session.shared_client_id()),
            (user.to_owned(), Arc::clone(session)),
        );
    }

    pub(crate) fn unregister(&self, session: &Session) {
        self.clients.lock().remove(session.client_id());
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.hub.subscriber_count(channel)
    }
}

/// Connected clients by id (the session's own string), with their user and session.
type Registry = HashMap<Arc<str>, (String, Arc<Session>)>;

/// Hands the engine's deliveries to the hub. Holds the node weakly: the node owns the engine.
struct Delivery(Weak<Node>);

impl EngineHandler for Delivery {
    fn on_publication(&self, channel: &str, publication: Arc<Publication>, epoch: &str) {
        if let Some(node) = self.0.upgrade() {
            let delivered = node.hub.broadcast(channel, &publication, epoch);
            node.metrics.publications.inc();
            node.metrics.deliveries.inc_by(delivered as u64);
        }
    }

    fn on_presence(&self, channel: &str, event: PresenceEvent, info: Arc<ClientInfo>) {
        if let Some(node) = self.0.upgrade() {
            node.hub.presence_event(channel, event, &info);
        }
    }

    fn on_stream_gap(&self, channel: &str) {
        if let Some(node) = self.0.upgrade() {
            tracing::warn!(
                channel,
                "engine reports publications may be lost; subscribers must recover"
            );
            node.hub.gap(channel);
        }
    }

    fn on_control(&self, message: Bytes) {
        if let Some(node) = self.0.upgrade() {
            node.receive_control(&message);
        }
    }

    fn on_node_message(&self, message: Bytes) {
        if let Some(handler) = self
            .0
            .upgrade()
            .and_then(|n| n.node_messages.get().cloned())
        {
            handler(message);
        }
    }
}
