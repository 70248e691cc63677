//! WebSocket (RFC 6455) with permessage-deflate (RFC 7692) for switchboard, built for a push server:
//! many mostly idle connections, and messages broadcast to many of them.
//!
//! # Brief overview
//!
//! - [`handshake::accept`] checks an HTTP upgrade request (method, headers, key, version, origin),
//!   picks a subprotocol and negotiates compression; [`Accepted::response`] is the `101` answer.
//! - [`WebSocket`] drives one upgraded connection: [`WebSocket::recv`] yields [`Message`]s while it
//!   flushes queued frames, answers pings, sends keepalive pings, enforces limits and timeouts, and
//!   runs the close handshake. [`WebSocket::send`] queues a message. [`WebSocket::poll_each`] hands
//!   messages out borrowed ([`MessageRef`]) to a handler that does not keep them, with no allocation
//!   per message or per read.
//! - [`SharedMessage`] is a message framed once (and compressed once per window size) whose bytes are
//!   shared by every connection it is sent to with [`WebSocket::send_shared`].
//! - [`PingCarrier`] ([`keepalive`]) lets such a writer carry the connection's keepalive ping on a
//!   frame it writes anyway, instead of the connection waking up to write two bytes of its own.
//! - [`Incoming`] is the IO-free decoder underneath (frames, fragments, UTF-8, inflation, limits);
//!   the fuzz target drives it directly.
//!
//! # Why our own codec
//!
//! The maintained Rust crates either lack permessage-deflate or fail strict conformance, none shares a
//! compressed frame among connections, and each keeps several KiB of buffers per idle connection; the
//! measurements are in `docs/benchmarks.md` and `../shared/research/ws-stack.md`.

mod close;
mod config;
mod connection;
mod deflate;
mod error;
pub mod frame;
pub mod handshake;
mod incoming;
pub mod keepalive;
mod message;
mod utf8;
mod write_queue;

pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use connection::WebSocket;
pub use deflate::{DeflateConfig, DeflateParams};
pub use error::{Error, ProtocolError};
pub use handshake::{Accepted, HandshakeError};
pub use incoming::{Event, Incoming};
pub use keepalive::{PING_FRAME, PingCarrier};
pub use message::{Message, MessageRef, SharedFraming, SharedMessage};
pub use utf8::Utf8Validator;
