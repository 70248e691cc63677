//! `[fallback]`: the settings of the HTTP fallback transports. Plain data, importing nothing of the
//! server, so that the server's configuration can hold it without a loop back into the transports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the HTTP fallback transports (`[fallback]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// Serve the fallback endpoints.
    pub enabled: bool,
    /// Base path of the endpoints (`/send`, `/poll` and `/sse` follow it).
    pub path: String,
    /// A long poll with nothing to deliver is answered empty after this long.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// A session with no request in progress and none for this long is closed, like a dropped
    /// WebSocket connection.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Largest request body (commands), in bytes; 413 beyond.
    pub max_body_bytes: usize,
    /// An SSE stream sends a `: ping` comment this often, so that proxies do not time it out.
    #[serde(with = "humantime_serde")]
    pub sse_ping_interval: Duration,
    /// An SSE stream is closed when this many bytes it sent are unacknowledged; EventSource then
    /// reconnects with `Last-Event-ID`, which acknowledges them. Keep it below `[client] queue_bytes`.
    pub sse_max_unacked_bytes: usize,
    /// Origins (`scheme://host[:port]`, `*.` wildcards a subdomain) whose pages may use the endpoints
    /// besides the server's own, which always may; `"*"` allows any. Empty: only the server's own
    /// origin. Requests without `Origin` are allowed.
    pub allowed_origins: Vec<String>,
    /// Answer `Access-Control-Allow-Credentials: true` (cookies and HTTP auth on cross-origin requests).
    pub allow_credentials: bool,
    /// A POST body must arrive within this time (408 beyond): a client trickling bytes does not hold
    /// a task forever.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A request relayed to the node holding its session (it landed on another node) is answered
    /// 404 when that node does not answer within this time, beyond how long the request may be held
    /// there (`poll_timeout`, `sse_ping_interval`; for a send, this time again). Socket.IO's polling
    /// requests are relayed with it too (then 400 `Session ID unknown`).
    #[serde(with = "humantime_serde")]
    pub relay_timeout: Duration,
    /// Requests this node relays to other nodes at once, and relayed requests it runs at once,
    /// fallback and Socket.IO polling together; beyond it: 503. Each held long poll or open SSE
    /// stream landing on another node than its session's takes one on both nodes.
    pub max_relayed_requests: usize,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/connection/http".into(),
            poll_timeout: Duration::from_secs(25),
            session_timeout: Duration::from_secs(30),
            max_body_bytes: 64 << 10,
            sse_ping_interval: Duration::from_secs(15),
            sse_max_unacked_bytes: 256 << 10,
            allowed_origins: Vec::new(),
            allow_credentials: false,
            body_read_timeout: Duration::from_secs(10),
            relay_timeout: Duration::from_secs(5),
            max_relayed_requests: 16384,
        }
    }
}

impl FallbackConfig {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.len() < 2 || self.path.ends_with('/') {
            return Err(format!(
                "path {:?} must start with '/' and not end with one",
                self.path
            ));
        }
        if self.session_timeout.is_zero() {
            return Err("session_timeout must be more than 0s".into());
        }
        if self.sse_ping_interval.is_zero() {
            return Err("sse_ping_interval must be more than 0s".into());
        }
        if self.relay_timeout.is_zero() {
            return Err("relay_timeout must be more than 0s".into());
        }
        if self.max_relayed_requests == 0 {
            return Err("max_relayed_requests must be at least 1".into());
        }
        for origin in &self.allowed_origins {
            if origin != "*" && !origin.contains("://") {
                return Err(format!(
                    "allowed_origins: {origin:?} is not \"*\" nor scheme://host[:port]"
                ));
            }
        }
        if self.allow_credentials && self.allowed_origins.iter().any(|o| o == "*") {
            return Err(
                "allow_credentials with allowed_origins = [\"*\"] would let any site act with the \
                 user's cookies: list the allowed origins instead"
                    .into(),
            );
        }
        Ok(())
    }
}
