//! Engine.IO v4 and Socket.IO v5, the protocols of the `socket.io` JavaScript library, without any
//! I/O: so that unchanged Socket.IO clients can reach switchboard as one more transport, and so that
//! every parser of their bytes can be unit-tested and fuzzed without a server.
//!
//! The crate owns the wire formats and the rules of the specifications (`PROTOCOL.md` of the
//! official `engine.io-protocol` and `socket.io-protocol` suites); the server owns sockets, HTTP
//! and time. Time enters as [`std::time::Instant`] arguments and leaves as deadlines, so the state
//! machines are deterministic under test.
//!
//! # Layers
//!
//! - [`eio`]: Engine.IO. [`eio::Packet`] and the payload codec of HTTP long-polling (packets joined
//!   by `\x1e`, binary as `b` + base64) and of WebSocket frames; [`eio::Request`], the query of an
//!   Engine.IO HTTP request and the error answers the reference server gives ([`eio::RequestError`]);
//!   [`eio::Session`], one Engine.IO session: handshake, heartbeat, the polling rules (one GET and one
//!   POST at a time), the upgrade to WebSocket (`2probe`, `3probe`, `5`, `6` to the held poll) and
//!   close.
//! - [`sio`]: Socket.IO. [`sio::Packet`] and its text codec (type, attachment count, namespace, ack
//!   id, JSON), [`sio::Decoder`], which reassembles binary packets from their attachments, and
//!   [`sio::Connection`], the namespaces one Engine.IO session has joined and the connect timeout.
//!
//! Every parse error is a typed error that says what was wrong; no input makes any function here
//! panic (the fuzz target `socketio` holds the codecs to that).

pub mod eio;
pub mod sio;
