//! The ways a client connects. Each transport turns its wire into messages for the application and
//! back: WebSocket, and the HTTP fallbacks (SSE, long polling, ajax polling) for where WebSocket does
//! not get through.

mod cors;
mod downstream;
pub mod http;
mod http_session;
mod poll;
mod relay;
pub mod socketio;
mod sse;
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
