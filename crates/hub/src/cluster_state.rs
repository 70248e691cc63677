//! What a node keeps of the cluster, and the control messages nodes exchange: the settings, the
//! other nodes as they last announced themselves, and the cluster-wide calls waiting for answers.
//!
//! Plain data, kept apart from the calls that use it (`cluster.rs`, an `impl Node`), so that the node
//! can hold this state without the node and the cluster importing each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A node missing this many announcements in a row is taken for gone and leaves the `info` list.
pub const MISSED_ANNOUNCEMENTS: u32 = 3;

/// How the node takes part in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name in `info`, for people (the server uses `host:port` of its client listener);
    /// nodes are told apart by their engine id anyway.
    pub name: String,
    /// How often the node announces itself to the others.
    pub announce_interval: Duration,
    /// How long a cluster-wide API call waits for the other nodes' answers.
    pub control_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "switchboard".into(),
            announce_interval: Duration::from_secs(3),
            control_timeout: Duration::from_secs(2),
        }
    }
}

/// Which clients an order is for: every connection of `user`, or only the connection `client` (when
/// it is `user`'s).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTarget {
    /// The user id (empty: anonymous connections).
    pub user: String,
    /// One connection's id; `None`: all of the user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// What `info` reports about a node, and what each node announces about itself to the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id among the nodes sharing the engine (random per process).
    pub id: String,
    /// The node's name, for people (`host:port` of its client listener).
    pub name: String,
    /// Server version.
    pub version: String,
    /// Seconds since start.
    pub uptime: u64,
    /// Connected clients.
    pub num_clients: usize,
    /// Distinct users among them.
    pub num_users: usize,
    /// Channels with subscribers on this node.
    pub num_channels: usize,
    /// Subscriptions on this node (a client in two channels counts twice).
    pub num_subscriptions: usize,
}

/// A control message between nodes, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Wire {
    /// A node's announcement of itself.
    Announce { info: NodeInfo },
    /// A node stops.
    Leave { node: String },
    /// A call to every node; answer `from`, quoting `id`.
    Ask { from: String, id: u64, ask: Ask },
    /// A node's answer to call `id`.
    Answer {
        from: String,
        id: u64,
        answer: Answer,
    },
}

/// What a call asks of each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Ask {
    Subscribe {
        target: ClientTarget,
        channel: String,
    },
    Unsubscribe {
        target: ClientTarget,
        channel: String,
    },
    Disconnect {
        target: ClientTarget,
        code: u16,
    },
    Refresh {
        target: ClientTarget,
        expire_at: Option<u64>,
    },
    Channels {
        pattern: Option<String>,
    },
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "re", rename_all = "snake_case")]
pub(crate) enum Answer {
    /// How many of its clients it acted on.
    Clients { n: usize },
    /// Its channels with their subscribers.
    Channels { channels: Vec<(String, usize)> },
    /// It could not carry the call out (a newer node's call it does not know, say).
    Refused { reason: String },
}

/// Another node, as it last announced itself.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) info: NodeInfo,
    pub(crate) seen: Instant,
}

/// Answers to one call, by node.
pub(crate) type Answers = mpsc::UnboundedSender<(String, Answer)>;

/// The node's cluster state.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) config: ClusterConfig,
    pub(crate) next_id: AtomicU64,
    /// Calls of this node waiting for answers, by id.
    pub(crate) waiting: Mutex<HashMap<u64, Answers>>,
    /// Other nodes by id.
    pub(crate) peers: Mutex<HashMap<String, Peer>>,
    /// An announcement in answer to a new node is on its way: no second one.
    pub(crate) announcing: Arc<AtomicBool>,
}

impl Cluster {
    pub(crate) fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            announcing: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// How long without an announcement a node counts as gone.
    pub(crate) fn peer_ttl(&self) -> Duration {
        self.config.announce_interval * MISSED_ANNOUNCEMENTS
    }
}
