//! Keepalive pings that ride on someone else's write.
//!
//! A connection pings its peer after [`Config::ping_interval`](crate::Config::ping_interval)
//! without hearing from it, and the peer's pong proves it is still there. On its own, that ping
//! costs the connection a wake-up and a `write(2)` of two bytes: on a server whose fan-out writes
//! publications straight to the socket (switchboard's lane), those ping writes were 6 % of the
//! CPU of a 10k-subscriber channel at one publication per second, every ping as dear as a
//! delivery. A [`PingCarrier`] is that other writer: for the last fifth of the interval the
//! connection *offers* it the ping, and the carrier appends it to the next frame it writes anyway.
//! Only when nothing went out by the deadline does the connection write the ping itself, so the
//! keepalive's promise (a ping at most `ping_interval` after the peer last spoke, and the
//! connection closed when `pong_timeout` passes without an answer) is kept either way.

use tokio::time::Instant;

/// An empty ping frame, server to client (unmasked): what a carrier appends to a frame of its own.
pub const PING_FRAME: [u8; 2] = [0x89, 0x00];

/// Another writer of whole frames to the same socket, which can carry the connection's keepalive
/// ping on one of its own writes (see the module docs). Set with
/// [`WebSocket::set_ping_carrier`](crate::WebSocket::set_ping_carrier).
///
/// The carrier must write [`PING_FRAME`] only between whole frames, and only while no byte of the
/// connection's own is due before it (the same rule as for its own frames).
pub trait PingCarrier: Send + Sync {
    /// A ping is wanted: append [`PING_FRAME`] to the next frame written, once.
    fn offer_ping(&self);

    /// The offer is taken back (the peer spoke, or the deadline came). Returns when the ping was
    /// written, if it was.
    fn withdraw_ping(&self) -> Option<Instant>;
}

/// How long before a ping is due the connection offers it to its carrier: a fifth of the
/// interval (5 s of the default 25 s). Pings then go out between 80 % and 100 % of the interval
/// after the peer last spoke; a channel with at least one publication in that window carries
/// every ping.
pub(crate) fn offer_lead(ping_interval: std::time::Duration) -> std::time::Duration {
    ping_interval / 5
}
