//! Unit tests of the client protocol: a [`Client`] on a [`Node`] over the memory engine, fed command
//! frames as docs/protocol.md writes them, its [`Session`] read for what it answers and pushes. No
//! socket: wire concerns (framing, transports) stay in `crates/server/tests`.
