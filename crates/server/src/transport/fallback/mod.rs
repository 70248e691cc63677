//! The HTTP fallback transports, for browsers and networks where WebSocket does not get through: SSE,
//! long polling and ajax (short) polling. They carry exactly the commands, replies and pushes of
//! docs/protocol.md (newline-delimited JSON), only over plain HTTP requests; docs/protocol.md ("HTTP
//! fallback transports") is the wire contract.
//!
//! ```text
//! POST {path}                   open: commands (connect first) -> {"session":"<id>.<secret>", ...}
//! POST {path}/send?session=S&n=K[&ack=N]   more commands, numbered 1, 2, 3... (retries are not redone)
//! GET  {path}/poll?session=S&ack=N[&wait=0] replies and pushes: {"seq":M,"messages":[...]}
//! GET  {path}/sse?session=S[&ack=N]        the same as a text/event-stream, one event per batch
//! POST {path}/close?session=S              the client ends the session (204), like a WebSocket close
//! ```
//!
//! Any node may serve any request of a session: one that lands on another node than the session's is
//! relayed there through the engine (`../relay.rs`, shared with Engine.IO), so a load balancer needs
//! no stickiness.
//!
//! The layout follows a request, and no file imports one that imports it back:
//!
//! - `routes.rs`: the routes and opening a session; each request goes to `local/` or `relayed.rs`.
//! - `local/`: a request against a session of this node (`upstream.rs` send and close, `poll.rs`,
//!   `sse.rs`), whether it arrived here or was relayed from another node.
//! - `relayed.rs`: requests that cross nodes, both ways; it runs relayed-in ones with `local/`.
//!   `../relay.rs` is the node-to-node messages and their limits underneath.
//! - `session.rs`: the session registry, and `HttpWire`, the session as its client's
//!   [`Wire`](switchboard_hub::Wire) (the hub's driver runs the client); `downstream.rs` its seq/ack
//!   buffer.
//! - `config.rs` (`[fallback]`), `params.rs`, `error.rs`, `cors.rs` (the cross-origin policy; Socket.IO's endpoint answers preflights with it too).

pub mod config;
pub(crate) mod cors;
mod downstream;
mod error;
mod local;
mod params;
mod relayed;
mod routes;
mod session;

pub use routes::router;
