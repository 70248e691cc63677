//! Socket.IO clients, unchanged: Engine.IO v4 (HTTP long-polling, WebSocket, the upgrade between
//! them) at `[socketio] path`, with Socket.IO v5 on top. The protocols themselves live in
//! `switchboard-socketio` (no I/O); this module gives them HTTP, WebSocket and time.
//!
//! One task per Engine.IO session owns its state ([`engine`]): the session, its WebSocket (polled
//! by the task itself, the probing one too during an upgrade) and the hub client of each of its
//! Socket.IO sockets (run inside the task, not spawned). Polling requests reach it through a
//! channel, so a session's packets stay in order whatever transport carries them; a delivery to a
//! WebSocket client crosses no channel and wakes one task, as on the native WebSocket transport.
//! Sessions live on the node that opened them, and their sids name it: a polling request that lands
//! on another node is relayed there ([`relayed`]), so a load balancer needs no sticky sessions
//! (unlike the reference server). A WebSocket upgrade that lands elsewhere is refused, and the client
//! goes on polling. [`routes`] decides where each request goes.
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
mod relayed;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::routing::any;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::relay::Relay;
use super::websocket::Endpoint;
pub use config::{ParserKind, SocketIoConfig};

/// The routes of the endpoint (both `path` and `path` without its trailing slash); polling requests
/// for other nodes' sessions go through `relay`, which runs those relayed here from now on.
pub fn router(
    config: &crate::Config,
    node: &Arc<switchboard_hub::Node>,
    limits: &Arc<crate::limits::Limits>,
    relay: &Arc<Relay>,
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
            // Engine.IO's heartbeat (`pingInterval`, `pingTimeout`) keeps these connections and
            // finds dead ones, as the reference server's does: a WebSocket ping beside it would
            // cost a second timer per client and traffic for nothing.
            ping_interval: std::time::Duration::ZERO,
            idle_timeout: std::time::Duration::ZERO,
            ..config.websocket.clone()
        }),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        limits: None,
        restart: config.shutdown.clone(),
    };
    let settings = |path: &str, app: engine::AppFactory| {
        engine::Engine::new(engine::Settings {
            path: path.to_owned(),
            relay: Arc::clone(relay),
            // A client that does not read is dropped by the hub's rule (3008, the session reports
            // what it holds); the Engine.IO bound is a backstop above it.
            engine: Arc::new(sio.engine(config.client.queue_bytes.saturating_mul(2))),
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
    let mut engines = Vec::new();
    let mut mount = |path: &str, app: engine::AppFactory| {
        let engine = settings(path, app);
        engines.push(engine.clone());
        let trimmed = path.trim_end_matches('/');
        let mut r = Router::new().route(path, any(routes::handle));
        if !trimmed.is_empty() && trimmed != path {
            r = r.route(trimmed, any(routes::handle));
        }
        router = std::mem::take(&mut router).merge(r.with_state(engine));
    };
    if sio.conformance {
        mount("/engine.io/", apps::engine_echo());
        mount(&sio.path, apps::socketio_suite(sio.connect_timeout));
    } else {
        let env = hub::Env {
            node: Arc::clone(node),
            restart: config.shutdown.clone(),
        };
        mount(
            &sio.path,
            hub::app(
                env,
                hub::Mapping {
                    parser: sio.parser.parser(),
                    connect_timeout: sio.connect_timeout,
                    recovery: sio.recovery,
                    namespaces: Arc::new(sio.namespaces.clone()),
                },
            ),
        );
    }
    relayed::serve(relay, &engines);
    router
}
