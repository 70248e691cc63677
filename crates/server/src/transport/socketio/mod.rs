//! Socket.IO clients, unchanged: Engine.IO v4 (HTTP long-polling, WebSocket, the upgrade between
//! them) at `[socketio] path`, with Socket.IO v5 on top. The protocols themselves live in
//! `switchboard-socketio` (no I/O); this module gives them HTTP, WebSocket and time.
//!
//! One task per Engine.IO session owns its state ([`engine`]); requests and WebSocket frames reach
//! it through a channel, so a session's packets stay in order whatever transport carries them.
//! Sessions live on the node that opened them: behind a load balancer, Socket.IO clients need
//! sticky sessions (as with the reference server) unless they use WebSocket only.
//!
//! Each Socket.IO socket (one per joined namespace: `/`, and those `[socketio] namespaces` maps to
//! channel prefixes) is one switchboard client ([`hub`] says how packets map onto the protocol,
//! docs/socketio.md the whole mapping, connection state recovery included).
//!
//! With `[socketio] conformance = true` the endpoints run the applications that the official
//! suites (`engine.io-protocol`, `socket.io-protocol`) expect instead of switchboard's: an Engine.IO
//! echo at `/engine.io/`, and the suite's reference Socket.IO application at `path`. That is for
//! conformance runs only.

mod apps;
pub mod config;
mod engine;
mod hub;

use std::sync::Arc;

use axum::Router;
use axum::routing::any;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::websocket::Endpoint;
pub use config::{ParserKind, SocketIoConfig};

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
            // A client that does not read is dropped by the hub's rule (3008, the session reports
            // what it holds); the Engine.IO bound is a backstop above it.
            engine: sio.engine(config.client.queue_bytes.saturating_mul(2)),
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
            settings(hub::app(
                env,
                hub::Mapping {
                    parser: sio.parser.parser(),
                    connect_timeout: sio.connect_timeout,
                    recovery: sio.recovery,
                    namespaces: Arc::new(sio.namespaces.clone()),
                },
            )),
        );
    }
    router
}
