//! What one client connection holds, and the few helpers every command uses to answer. The commands
//! themselves live in the sibling files, each an `impl Client` of its own; keeping the state here,
//! below all of them, lets them share it without importing each other.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use switchboard_engine::{EngineError, StreamOptions};
use switchboard_protocol::encode;
use switchboard_protocol::{ClientInfo, ErrorCode, Publication};

use crate::hub::text;
use crate::namespace::NamespaceOptions;
use crate::node::Node;
use crate::proxy::ForwardedHeaders;
use crate::session::Session;
use crate::small_map::SmallMap;

/// A client's protocol state, owned by its transport's task.
#[derive(Debug)]
pub struct Client {
    pub(super) node: Arc<Node>,
    pub(super) session: Arc<Session>,
    pub(super) info: Arc<ClientInfo>,
    pub(super) transport: &'static str,
    /// Handshake headers for proxy calls (only those the proxy configuration names).
    pub(super) headers: Option<ForwardedHeaders>,
    pub(super) connected: bool,
    pub(super) subs: SmallMap<Membership>,
    /// Recoveries too large for the queue, being replayed a piece at a time (see [`Replay`]).
    pub(super) replays: SmallMap<Replay>,
    /// Token bucket of `max_commands_per_second`: commands left, and when they were counted.
    pub(super) budget: (f64, Instant),
}

/// What leaving a channel involves, and when the subscription expires.
#[derive(Debug, Clone, Copy)]
pub(super) struct Membership {
    pub(super) presence: bool,
    pub(super) join_leave: bool,
    /// Unix seconds when the subscription expires (its token's `exp`, or the subscribe proxy's
    /// `expire_at`); 0: never.
    pub(super) expires_at: u64,
    /// Granted by the subscribe proxy: at expiry the sub_refresh proxy decides.
    pub(super) proxied: bool,
}

/// A recovery being replayed: the subscribe reply said `recovered: true` and carried the first missed
/// publications that fitted in half the queue; the rest go into the queue as `pub` pushes, in offset
/// order, each time the queue has drained to a quarter of its bound
/// ([`crate::session::Control::Replay`]). Live publications of the channel are meanwhile not queued:
/// when the backlog is spent, a catch-up read of history brings them, until a read reaches the live
/// stream. So recovery works whatever `queue_bytes` is, and memory holds one history read at most, as
/// a reply carrying it all did.
#[derive(Debug)]
pub(super) struct Replay {
    /// The stream's epoch: a catch-up read in another epoch means the stream was lost meanwhile.
    pub(super) epoch: String,
    /// The offset of the last publication queued for the client.
    pub(super) last: u64,
    /// Publications read from history and not queued yet, oldest first.
    pub(super) backlog: VecDeque<Arc<Publication>>,
    /// How the namespace keeps the stream (for catch-up reads).
    pub(super) stream: StreamOptions,
}

/// The outcome of one command: keep going, or disconnect with a code.
pub(super) type Flow = Result<(), switchboard_protocol::DisconnectCode>;

impl Client {
    /// A client not connected yet, with its own session in the hub under `key`.
    pub(super) fn new(
        node: Arc<Node>,
        key: u64,
        transport: &'static str,
        headers: Option<ForwardedHeaders>,
    ) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let burst = f64::from(node.config.client.max_commands_per_second) * 2.0;
        let session = Arc::new(Session::new(
            key,
            id.clone(),
            node.config.client.queue_bytes,
        ));
        Self {
            node,
            session,
            info: Arc::new(ClientInfo {
                client: id,
                user: String::new(),
                info: None,
            }),
            transport,
            headers,
            budget: (burst, Instant::now()),
            connected: false,
            subs: SmallMap::new(),
            replays: SmallMap::new(),
        }
    }

    /// The node's metrics, for the client's driver.
    pub(crate) fn node_metrics(&self) -> &crate::metrics::Metrics {
        &self.node.metrics
    }

    /// The transport the client came over (the label of its metrics).
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// The outgoing queue the transport drains.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// This connection's id.
    pub fn id(&self) -> &str {
        &self.info.client
    }

    /// The user id (empty for anonymous connections).
    pub fn user(&self) -> &str {
        &self.info.user
    }

    /// The options of `channel`'s namespace; `None` after answering the error (102, or 107 for a
    /// name that cannot be a channel).
    pub(super) fn namespace(&self, id: u64, channel: &str) -> Option<NamespaceOptions> {
        match self.node.config.channels.resolve(channel) {
            Ok(ns) => Some(ns.clone()),
            Err(code) => {
                self.error(id, code, code.message());
                None
            }
        }
    }

    /// Queues the reply to command `id`.
    pub(super) fn reply<T: serde::Serialize>(&self, id: u64, method: &str, result: &T) {
        self.session.push(text(encode::reply(id, method, result)));
    }

    /// Queues an error reply to command `id`.
    pub(super) fn error(&self, id: u64, code: ErrorCode, message: &str) {
        self.session.push(text(encode::error(id, code, message)));
    }

    /// An engine failure: the client gets error 100 with a short message it can act on, the log keeps
    /// the detail (the store's address and its own error), which is not the client's to see.
    pub(super) fn engine_error(&self, id: u64, e: &EngineError) {
        tracing::warn!(id, "engine failure answered with error 100: {e}");
        self.error(id, ErrorCode::Internal, e.client_message());
    }
}

#[cfg(test)]
mod size_tests {
    use std::task::{Context, Poll};

    use switchboard_engine::MemoryEngine;
    use switchboard_protocol::{DisconnectCode, Frame};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::node::NodeConfig;
    use crate::wire::{End, Upstream, Wire};

    /// A wire of no size, so the future measured is the driver's own.
    struct Null;

    impl Wire for Null {
        fn poll_upstream(&mut self, _: &mut Context<'_>) -> Poll<Upstream> {
            Poll::Pending
        }
        fn send(&mut self, _: Frame) -> bool {
            true
        }
        fn is_open(&self) -> bool {
            true
        }
        fn end(&mut self, _: End) {}
        async fn finish(self, _: Option<DisconnectCode>) {}
    }

    /// Every connection's task holds the driver's future for its whole life. The futures of commands,
    /// orders, leaving and finishing are boxed while they run, and the client and the wire are held
    /// once (not as arguments and again as locals): 336 bytes (unoptimised build), where inline and
    /// as an `async fn` it was 2,008, then 920.
    #[test]
    fn an_idle_clients_task_holds_no_command_future() {
        let node = Node::new(Arc::new(MemoryEngine::new()), NodeConfig::default(), None);
        let token = CancellationToken::new();
        let fut = crate::driver::drive(node.client("test"), Null, Some(token), || 0);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 400, "the driver's future is {size} bytes");
    }

    /// The per-client structs stay as small as their fields make them.
    #[test]
    fn the_client_state_is_small() {
        // 184 and 344 before the channel maps were the size of a vector.
        assert!(std::mem::size_of::<Client>() <= 136);
        assert!(std::mem::size_of::<Session>() <= 272);
        assert!(std::mem::size_of::<Membership>() <= 16);
    }
}
