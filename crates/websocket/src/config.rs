//! Settings of a WebSocket endpoint: handshake policy, limits, timeouts and compression.

use std::time::Duration;

use crate::close::CloseCode;
use crate::deflate::DeflateConfig;

/// Everything one WebSocket endpoint is configured with. Shared by its connections behind an `Arc`.
///
/// The defaults suit a public endpoint: 1 MiB frames and messages, a ping every 25 s, and compression
/// that keeps no memory per idle connection. Durations of zero switch a timer off.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Config {
    /// Subprotocols the endpoint speaks, e.g. `["chat"]`. The first one the client offers wins; when
    /// none matches, the handshake succeeds without a `Sec-WebSocket-Protocol` header (RFC 6455 §4.2.2).
    pub subprotocols: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose pages may open connections besides the server's own;
    /// `*.` wildcards a subdomain (`https://*.example.com`) and `"*"` allows any. The server's own
    /// origin (host and port as named by the request's `Host`) is always allowed, so that listing
    /// another origin never locks out the server's own pages; empty means only it. Requests without
    /// `Origin` (non-browser clients) are allowed: the check exists to stop cross-site WebSocket
    /// hijacking, which needs a browser.
    pub allowed_origins: Vec<String>,
    /// Largest payload of a single frame, in bytes. Larger frames close the connection with 1009.
    pub max_frame_size: usize,
    /// Largest message (all fragments, after decompression), in bytes. Larger ones close with 1009.
    pub max_message_size: usize,
    /// Most fragments one message may be split into; more close with 1009.
    pub max_fragments: usize,
    /// Send a ping after this long without receiving anything (from a fifth sooner when a
    /// [`PingCarrier`](crate::PingCarrier) writes a frame then and carries it).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ping_interval: Duration,
    /// Close the connection when nothing (pong or other) arrives this long after a ping.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub pong_timeout: Duration,
    /// The close code sent (reason "no pong") when a ping goes unanswered, before the connection is
    /// dropped, so that a peer that is only slow learns why. Chosen by the application, not a setting:
    /// switchboard's protocol endpoint sends 3012; the default is 1001 (going away).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub pong_timeout_close: CloseCode,
    /// Close the connection (1001) when nothing at all arrives for this long; zero: never.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub idle_timeout: Duration,
    /// A frame or fragmented message that has started must be complete within this time (1008).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub message_timeout: Duration,
    /// Drop the connection when queued bytes make no progress for this long (the peer stopped reading).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub write_timeout: Duration,
    /// How long to wait for the peer's side of a close handshake before dropping the connection.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub close_timeout: Duration,
    /// Stop reading from a peer while more than this many bytes wait to be written to it, so a peer
    /// that sends but does not read cannot make the server buffer without bound.
    pub write_high_water: usize,
    /// permessage-deflate (RFC 7692).
    pub compression: DeflateConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            subprotocols: Vec::new(),
            allowed_origins: Vec::new(),
            max_frame_size: 1 << 20,
            max_message_size: 1 << 20,
            max_fragments: 1024,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            pong_timeout_close: CloseCode::GOING_AWAY,
            idle_timeout: Duration::ZERO,
            message_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            write_high_water: 256 << 10,
            compression: DeflateConfig::default(),
        }
    }
}

impl Config {
    /// Checks values that would make the endpoint unusable, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_size == 0 || self.max_message_size == 0 || self.max_fragments == 0 {
            return Err(
                "max_frame_size, max_message_size and max_fragments must be above zero".into(),
            );
        }
        if !self.ping_interval.is_zero() && self.pong_timeout.is_zero() {
            return Err("pong_timeout must be above zero when ping_interval is set".into());
        }
        if self.close_timeout.is_zero()
            || self.write_timeout.is_zero()
            || self.message_timeout.is_zero()
        {
            return Err(
                "close_timeout, write_timeout and message_timeout must be above zero".into(),
            );
        }
        let c = &self.compression;
        if !(9..=15).contains(&c.server_max_window_bits)
            || !(9..=15).contains(&c.client_max_window_bits)
        {
            return Err(
                "compression.server_max_window_bits and client_max_window_bits must be 9..=15"
                    .into(),
            );
        }
        if c.level > 9 {
            return Err("compression.level must be 0..=9".into());
        }
        for origin in &self.allowed_origins {
            if origin != "*" && !origin.contains("://") {
                return Err(format!(
                    "allowed_origins: {origin:?} is not \"*\" nor scheme://host[:port]"
                ));
            }
        }
        Ok(())
    }
}
