//! Socket.IO clients, unchanged: Engine.IO v4 (HTTP long-polling, WebSocket, the upgrade between
//! them) at `[socketio] path`, with Socket.IO v5 on top. The protocols themselves live in
//! `switchboard-socketio` (no I/O); this module gives them HTTP, WebSocket and time.
//!
//! One task per Engine.IO session owns its state ([`engine`]); requests and WebSocket frames reach
//! it through a channel, so a session's packets stay in order whatever transport carries them.
//! Sessions live on the node that opened them: behind a load balancer, Socket.IO clients need
//! sticky sessions (as with the reference server) unless they use WebSocket only.
//!
//! Each Socket.IO socket of the main namespace is one switchboard client ([`hub`] says how packets
//! map onto the protocol).
//!
//! With `[socketio] conformance = true` the endpoints run the applications that the official
//! suites (`engine.io-protocol`, `socket.io-protocol`) expect instead of switchboard's: an Engine.IO
//! echo at `/engine.io/`, and the suite's reference Socket.IO application at `path`. That is for
//! conformance runs only.

mod apps;
mod engine;
mod hub;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::websocket::Endpoint;

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
    fn parser(self) -> switchboard_socketio::sio::Parser {
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

    fn engine(&self, queue_bytes: usize) -> switchboard_socketio::eio::Config {
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

/// The routes of the endpoint (both `path` and `path` without its trailing slash).
pub fn router(
    config: &crate::Config,
    node: &Arc<switchboard_hub::Node>,
    limits: &Arc<crate::limits::Limits>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Router {
    let sio = &config.socketio;
    let websocket = Endpoint {
        config: Arc::new(switchboard_websocket::Config {
            subprotocols: Vec::new(),
            max_message_size: sio.max_payload,
            max_frame_size: sio.max_payload,
            write_high_water: config.websocket.write_high_water.max(sio.max_payload),
            ..config.websocket.clone()
        }),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        limits: None,
        restart: config.shutdown.clone(),
    };
    let settings = |app: engine::AppFactory| {
        engine::Engine::new(engine::Settings {
            // A client that does not read is dropped at the same bound as on other transports.
            engine: sio.engine(config.client.queue_bytes),
            websocket: websocket.clone(),
            body_read_timeout: sio.body_read_timeout,
            allowed_origins: sio.allowed_origins.clone(),
            allow_credentials: sio.allow_credentials,
            app,
            // The conformance applications are not clients; switchboard's sockets are.
            limits: (!sio.conformance).then(|| Arc::clone(limits)),
        })
    };
    let mut router = Router::new();
    let mut mount = |path: &str, engine: engine::Engine| {
        let trimmed = path.trim_end_matches('/');
        let mut r = Router::new().route(path, any(engine::handle));
        if !trimmed.is_empty() && trimmed != path {
            r = r.route(trimmed, any(engine::handle));
        }
        router = std::mem::take(&mut router).merge(r.with_state(engine));
    };
    if sio.conformance {
        mount("/engine.io/", settings(apps::engine_echo()));
        mount(
            &sio.path,
            settings(apps::socketio_suite(sio.connect_timeout)),
        );
    } else {
        let env = hub::Env {
            node: Arc::clone(node),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            restart: config.shutdown.clone(),
        };
        mount(
            &sio.path,
            settings(hub::app(env, sio.parser.parser(), sio.connect_timeout)),
        );
    }
    router
}
