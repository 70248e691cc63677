//! The node: one switchboard process's core. Publications enter here (from a client command or, later,
//! the server API), go through the engine, and come back through [`EngineHandler`] to the hub, which
//! queues them for every local subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_auth::Verifier;
use switchboard_engine::{Engine, EngineError, EngineHandler, PresenceEvent};
use switchboard_protocol::{
    ClientInfo, DisconnectCode, ErrorCode, Payload, Publication, StreamPosition,
};

use crate::client::Client;
use crate::hub::Hub;
use crate::namespace::ChannelsConfig;
use crate::session::Session;

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
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            queue_bytes: 1 << 20,
            max_channels: 128,
        }
    }
}

/// Everything a node is configured with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Namespaces.
    pub channels: ChannelsConfig,
    /// Client settings.
    pub client: ClientConfig,
    /// Seconds between keepalive pings, told to clients in the connect reply.
    pub ping_interval_secs: u64,
}

/// One switchboard node.
pub struct Node {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) hub: Hub,
    pub(crate) config: NodeConfig,
    /// Verifies connection and subscription tokens; `None` when no key is configured.
    pub(crate) auth: Option<Verifier>,
    /// Connected clients by id: for token expiry (and the server API, later).
    clients: Mutex<HashMap<String, Arc<Session>>>,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("channels", &self.hub.channel_count())
            .finish_non_exhaustive()
    }
}

/// Why a server-side publish failed.
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
        let node = Arc::new(Self {
            engine,
            hub: Hub::default(),
            config,
            auth,
            clients: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
        });
        node.engine
            .set_handler(Arc::new(Delivery(Arc::downgrade(&node))));
        node
    }

    /// A new client session for a connection arriving over `transport`.
    pub fn client(self: &Arc<Self>, transport: &'static str) -> Client {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        Client::new(Arc::clone(self), key, transport)
    }

    /// Publishes to `channel` on behalf of the server (no client, no permission checks).
    pub async fn publish(
        &self,
        channel: &str,
        payload: Payload,
    ) -> Result<StreamPosition, PublishError> {
        let ns = self
            .config
            .channels
            .resolve(channel)
            .map_err(PublishError::Channel)?;
        Ok(self
            .engine
            .publish(channel, Publication::new(payload), &ns.stream())
            .await?)
    }

    /// The subscriber index, for benchmarks that register sessions without a transport.
    #[doc(hidden)]
    pub fn hub_for_bench(&self) -> &Hub {
        &self.hub
    }

    /// Disconnects (code 3005, `expired`) every client whose token expired by `now` (Unix seconds)
    /// without a `refresh`. The server calls this every second.
    pub fn expire_clients(&self, now: u64) -> usize {
        let clients = self.clients.lock();
        let mut n = 0;
        for session in clients.values().filter(|s| s.expired(now)) {
            session.disconnect(DisconnectCode::Expired);
            n += 1;
        }
        n
    }

    /// Connected clients on this node.
    pub fn client_count(&self) -> usize {
        self.clients.lock().len()
    }

    pub(crate) fn register(&self, session: &Arc<Session>) {
        self.clients
            .lock()
            .insert(session.client_id().to_owned(), Arc::clone(session));
    }

    pub(crate) fn unregister(&self, session: &Session) {
        self.clients.lock().remove(session.client_id());
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.hub.subscriber_count(channel)
    }
}

/// Hands the engine's deliveries to the hub. Holds the node weakly: the node owns the engine.
struct Delivery(Weak<Node>);

impl EngineHandler for Delivery {
    fn on_publication(&self, channel: &str, publication: Arc<Publication>, epoch: &str) {
        if let Some(node) = self.0.upgrade() {
            node.hub.broadcast(channel, &publication, epoch);
        }
    }

    fn on_presence(&self, channel: &str, event: PresenceEvent, info: Arc<ClientInfo>) {
        if let Some(node) = self.0.upgrade() {
            node.hub.presence_event(channel, event, &info);
        }
    }
}
