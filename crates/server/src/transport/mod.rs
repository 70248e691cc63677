//! The ways a client connects. A transport is a [`Wire`](switchboard_hub::Wire): it turns its
//! connection into frames of commands for the client and takes the client's replies and pushes; the
//! hub's [`drive`](switchboard_hub::drive) runs everything else of a client's life the same way for
//! all of them (the queue, the server's orders, the slow-consumer bound, the `disconnect` push).
//!
//! - `websocket.rs`: the WebSocket endpoint and its wire (and the echo endpoint); `socket.rs`: the
//!   socket under it, and the lane through which the fan-out writes publications to it directly.
//! - `fallback/`: SSE, long polling and ajax polling, for where WebSocket does not get through: an
//!   HTTP session is one wire made of many short requests, any of which may land on another node.
//! - `socketio/`: Engine.IO v4 (polling and WebSocket) with Socket.IO v5 packets, for unchanged
//!   Socket.IO clients; each socket is a switchboard client over its own wire.
//! - `relay.rs`: the node-to-node relay under both of those: an HTTP request that lands on another
//!   node than its session's is run there, so a load balancer needs no stickiness.

pub mod fallback;
pub mod relay;
pub mod socket;
pub mod socketio;
pub mod websocket;

use axum::http::{Extensions, HeaderMap};
use switchboard_hub::{ForwardedHeaders, Node};

/// The client's address, as the listener saw it (the server puts it in every request).
pub fn peer_ip(extensions: &Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The handshake headers a proxy asks for, kept for the connection's life (none without proxies).
pub fn forwarded_headers(node: &Node, headers: &HeaderMap) -> Option<ForwardedHeaders> {
    node.forwarded_headers(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    )
}
