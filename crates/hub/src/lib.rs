//! The heart of switchboard: channels with subscribers, one ordered and recoverable stream of
//! publications per channel, presence, and the client session, all independent of any transport and of
//! any one wire format's framing.
//!
//! # Brief overview (follow a publication)
//!
//! 1. A client's `publish` command reaches [`Client::handle_frame`] (`client/`), or the server calls
//!    [`Node::publish`] (`node.rs`).
//! 2. The engine (`switchboard-engine`) appends it to the channel's history and hands it back, in offset
//!    order, to the node.
//! 3. [`Hub`] (`hub.rs`) encodes the push once, as one [`Frame`](switchboard_protocol::Frame), and
//!    hands it to every local subscriber's [`Session`] (`session.rs`), whose byte bound is the
//!    slow-consumer policy. When nothing waits in a session's queue and its wire offers a [`Lane`],
//!    the frame is written to the client's socket there and then; otherwise it is queued.
//! 4. Each client's task runs [`drive`] (`driver.rs`), which moves the session's frames onto the
//!    client's [`Wire`] (`wire.rs`): the one thing a transport implements.
//!
//! The server API's orders to clients and `channels` reach every node sharing the engine, and nodes
//! announce themselves to each other for `info` (`cluster.rs`).
//!
//! Namespaces (`namespace.rs`) say what each channel keeps and allows; proxies (`proxy.rs`) let the
//! application's backend decide on connects, subscriptions, publications and RPCs.

mod client;
mod cluster;
mod cluster_state;
mod driver;
mod hub;
mod metrics;
mod namespace;
mod node;
pub mod prefetch;
mod proxy;
mod receipt;
mod session;
mod small_map;
#[cfg(test)]
mod testing;
mod wire;

pub use client::Client;
pub use cluster::{
    ClientOrder, ClientTarget, ClusterConfig, ClusterError, Gathered, MISSED_ANNOUNCEMENTS,
};
pub use driver::{ShutdownSignal, drive};
pub use hub::{Hub, Listening};
pub use metrics::{Labels, Metrics};
pub use namespace::{ChannelsConfig, NamespaceOptions};
pub use node::{
    ClientConfig, Node, NodeConfig, NodeInfo, NodeMessageHandler, PublishError, PublishOptions,
};
pub use proxy::{ForwardedHeaders, Proxy, ProxyError, ProxyEvent, ProxyReply};
pub use receipt::{Receipt, Receipts};
pub use session::{Control, Session, Signal};
pub use wire::{End, Lane, Sent, Upstream, Wire};
