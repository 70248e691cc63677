//! `[socketio]`: the Socket.IO endpoint's settings. A file of its own that imports nothing else of
//! the endpoint, so that the server's `config.rs` can hold it without depending on the transport.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[socketio]`: the Engine.IO / Socket.IO endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Serve Socket.IO clients (on with `--demo`).
    pub enabled: bool,
    /// Path of the endpoint: the JavaScript client's `path` option (`/socket.io/` there too).
    pub path: String,
    /// The server pings each session this often (Engine.IO `pingInterval`).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session that answers nothing this long after a ping is closed (`pingTimeout`).
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Largest POST body and WebSocket message a client may send, in bytes (`maxPayload`,
    /// announced in the handshake; 413 or close 1009 beyond).
    pub max_payload: usize,
    /// A session that joins no namespace within this time is closed (`connectTimeout`).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A WebSocket opened to upgrade a polling session must complete the upgrade within this time.
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    /// A POST body must arrive within this time.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Origins whose pages may use the polling transport besides the server's own, as `[fallback]
    /// allowed_origins` (`"*"` allows any). WebSocket connections follow `[websocket]
    /// allowed_origins`.
    pub allowed_origins: Vec<String>,
    /// Answer `Access-Control-Allow-Credentials: true` (the client's `withCredentials`).
    pub allow_credentials: bool,
    /// The Socket.IO parser clients use: `default` (text packets), or `msgpack` for clients built
    /// with `socket.io-msgpack-parser`. One per endpoint, as in the reference server.
    pub parser: ParserKind,
    /// Connection state recovery (Socket.IO 4.6+): the `CONNECT` answer carries a `pid`, every
    /// event from a room carries the socket's offset string as its last argument, and a client
    /// that reconnects with them gets its rooms back with every publication it missed
    /// (`socket.recovered`), from the channels' history, on any node. Needs history in the
    /// rooms' namespaces. See docs/socketio.md.
    pub recovery: bool,
    /// Socket.IO namespaces besides `/`, each with the channel prefix of its rooms: `"/chat" =
    /// "chat:"` makes the room `lobby` of `/chat` the channel `chat:lobby` (the namespace's rules
    /// apply). `/` maps rooms to channels as named unless listed here. Others are refused
    /// (`Invalid namespace`).
    pub namespaces: std::collections::BTreeMap<String, String>,
    /// Run the official conformance suites' applications instead of switchboard's (see the module
    /// documentation). Never in production.
    pub conformance: bool,
}

impl Default for SocketIoConfig {
    /// The reference server's defaults.
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/socket.io/".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            connect_timeout: Duration::from_secs(45),
            upgrade_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            allow_credentials: false,
            parser: ParserKind::Default,
            recovery: false,
            namespaces: std::collections::BTreeMap::new(),
            conformance: false,
        }
    }
}

/// `[socketio] parser`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParserKind {
    /// `socket.io-parser`, the JavaScript client's default.
    #[default]
    Default,
    /// `socket.io-msgpack-parser`.
    Msgpack,
}

impl ParserKind {
    pub(super) fn parser(self) -> switchboard_socketio::sio::Parser {
        match self {
            Self::Default => switchboard_socketio::sio::Parser::Default,
            Self::Msgpack => switchboard_socketio::sio::Parser::Msgpack,
        }
    }
}

impl SocketIoConfig {
    /// Checks values that would make the endpoint unusable, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.trim_end_matches('/').is_empty() {
            return Err(format!(
                "path {:?} must start with '/' and name something below it",
                self.path
            ));
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return Err("ping_interval and ping_timeout must be more than 0s".into());
        }
        if self.max_payload == 0 {
            return Err("max_payload must be at least 1".into());
        }
        if self.body_read_timeout.is_zero() || self.upgrade_timeout.is_zero() {
            return Err("body_read_timeout and upgrade_timeout must be more than 0s".into());
        }
        for (namespace, prefix) in &self.namespaces {
            if !namespace.starts_with('/') {
                return Err(format!("namespaces: {namespace:?} must start with '/'"));
            }
            if !prefix.is_empty() && !prefix.ends_with(':') {
                return Err(format!(
                    "namespaces: the prefix {prefix:?} of {namespace:?} must be empty or a \
                     switchboard namespace followed by ':' (e.g. \"chat:\")"
                ));
            }
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

    pub(super) fn engine(&self, queue_bytes: usize) -> switchboard_socketio::eio::Config {
        switchboard_socketio::eio::Config {
            max_buffered: queue_bytes,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_payload: self.max_payload,
            upgrade_timeout: self.upgrade_timeout,
            allow_upgrades: true,
            ..Default::default()
        }
    }
}
