//! The client-facing listener: accepts TCP connections, serves HTTP/1.1 with upgrades through hyper,
//! routes requests to endpoints, and shuts down gracefully.
//!
//! Shutdown (SIGINT/SIGTERM in the binary, [`ShutdownHandle::shutdown`] in tests) stops accepting,
//! asks every WebSocket client to go away (close 1001), lets plain HTTP connections finish their
//! request, and waits for all of it up to `[shutdown] drain_timeout`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::any;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use switchboard_auth::Verifier;
use switchboard_engine::{Engine, MemoryEngine};
use switchboard_engine_nats::NatsEngine;
use switchboard_engine_redis::RedisEngine;
use switchboard_hub::{ClusterConfig, Node, NodeConfig, Proxy};
use switchboard_protocol::DisconnectCode;
use switchboard_websocket::CloseCode;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, EngineKind};
use crate::limits::Limits;
use crate::tls::Tls;
use crate::transport::fallback;
use crate::transport::relay::Relay;
use crate::transport::websocket::{self, Endpoint};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A token key in `[auth]` cannot be loaded.
    #[error(transparent)]
    Auth(#[from] switchboard_auth::KeyError),
    /// The TLS certificate or key cannot be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The proxy settings cannot work.
    #[error(transparent)]
    Proxy(#[from] switchboard_proxy::ConfigError),
    /// The Redis engine could not start.
    #[error(transparent)]
    Redis(#[from] switchboard_engine_redis::RedisError),
    /// The NATS engine could not start.
    #[error(transparent)]
    Nats(#[from] switchboard_engine_nats::NatsError),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The system gave no randomness for the demo's generated API key.
    #[error("cannot generate the demo's API key (no randomness from the system): {0}")]
    Random(String),
}

/// A bound, not yet running, switchboard server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    router: Router,
    /// The server API's own listener and routes.
    api: (TcpListener, Router),
    config: Arc<Config>,
    /// TLS on the client listener, when configured.
    tls: Option<Tls>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The API key generated for this run (`--demo` without `[api] key`), to print at start.
    generated_api_key: Option<String>,
}

/// Stops a running server from elsewhere (a signal handler, a test).
#[derive(Clone, Debug)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Begins graceful shutdown.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Server {
    /// Binds the listener and builds the routes. Port 0 picks a free port; see [`Server::local_addr`].
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let mut config = config.effective();
        // The demo is for trying switchboard out, README's "Pushing from your backend" included: an
        // API that refuses everything for want of a key would stop a newcomer at the first curl.
        let generated_api_key = if config.demo.enabled && config.api.key.is_empty() {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| ServerError::Random(e.to_string()))?;
            let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            config.api.key.clone_from(&key);
            Some(key)
        } else {
            None
        };
        let addr = config.listen.0;
        let listener = listen(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let api_addr = config.api.listen;
        let api_listener = listen(api_addr).map_err(|source| ServerError::Bind {
            addr: api_addr,
            source,
        })?;
        let tls = if config.tls.enabled() {
            Some(Tls::new(&config.tls)?)
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let config = Arc::new(config);
        let (engine, memory): (Arc<dyn Engine>, _) = match config.engine.kind {
            EngineKind::Memory => {
                let memory = Arc::new(MemoryEngine::new());
                (Arc::clone(&memory) as Arc<dyn Engine>, Some(memory))
            }
            EngineKind::Redis => {
                let redis = RedisEngine::connect(config.engine.redis.clone()).await?;
                tracing::info!(addresses = ?config.engine.redis.addresses, cluster = config.engine.redis.cluster, "engine: Redis");
                (Arc::new(redis) as Arc<dyn Engine>, None)
            }
            EngineKind::Nats => {
                let nats = NatsEngine::connect(config.engine.nats.clone()).await?;
                tracing::info!(servers = %config.engine.nats.display_name(), prefix = %config.engine.nats.prefix, "engine: NATS");
                (Arc::new(nats) as Arc<dyn Engine>, None)
            }
        };
        let auth = if config.auth.has_keys() {
            Some(Verifier::new(&config.auth)?)
        } else {
            None
        };
        let proxy = if config.proxy.enabled() {
            Some(Arc::new(switchboard_proxy::HttpProxy::new(&config.proxy)?) as Arc<dyn Proxy>)
        } else {
            None
        };
        let node = Node::with_proxy(
            engine,
            NodeConfig {
                channels: config.channels.clone(),
                client: config.client.clone(),
                ping_interval_secs: config.websocket.ping_interval.as_secs(),
                idempotency_window: config.api.idempotency_window,
                cluster: ClusterConfig {
                    name: node_name(listener.local_addr().unwrap_or(addr)),
                    announce_interval: config.engine.announce_interval,
                    control_timeout: config.engine.control_timeout,
                },
            },
            auth,
            proxy,
        );
        let limits = Limits::new(config.limits.clone());
        tracker.spawn(housekeeping(
            memory,
            Arc::clone(&node),
            Arc::clone(&limits),
            shutdown.clone(),
        ));
        tracker.spawn(announce(
            Arc::clone(&node),
            config.engine.announce_interval,
            shutdown.clone(),
        ));
        let mut router = routes(&config, &node, &limits, &shutdown, &tracker);
        if config.api.key.is_empty() {
            tracing::warn!(
                "[api] key is empty: the server API refuses every request until one is set"
            );
        }
        let mut api_router = switchboard_api::router(Arc::clone(&node), &config.api);
        if config.admin.enabled {
            // The console lives on the API listener only: it can do what the API does.
            let (console, traffic) = crate::admin::start(&config, &node, &shutdown, &tracker)?;
            api_router = api_router.merge(console);
            router = crate::admin::count_requests(router, traffic);
        }
        let api = (api_listener, api_router);
        Ok(Self {
            listener,
            router,
            api,
            config,
            tls,
            shutdown,
            tracker,
            generated_api_key,
        })
    }

    /// The API key generated for this run: with the demo on and no `[api] key` configured, the
    /// server makes one up (a new one at each start) so that the API can be tried at once. `None`
    /// when the configuration has a key or the demo is off.
    pub fn generated_api_key(&self) -> Option<&str> {
        self.generated_api_key.as_deref()
    }

    /// What to print at start when the API key was generated: the key, and a `curl` command that
    /// publishes a message into the demo's `lobby` room, ready to paste.
    pub fn demo_banner(&self) -> Option<String> {
        let key = self.generated_api_key()?;
        let mut api = self.api_addr();
        if api.ip().is_unspecified() {
            api.set_ip(if api.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let mut page = self.local_addr();
        if page.ip().is_unspecified() {
            page.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Some(format!(
            "demo: no [api] key configured, so this run uses a generated one: {key}\n\
             open {scheme}://{page}/ and publish into its lobby room from your backend (or a shell):\n\
             \n  curl -s -X POST http://{api}/api/publish -H \"Authorization: apikey {key}\" \\\n    \
             -d '{{\"channel\":\"chat:lobby\",\"data\":{{\"type\":\"msg\",\"nick\":\"curl\",\"text\":\"hello from the backend\"}}}}'\n"
        ))
    }

    /// The TLS side, whose [`Tls::reload`] the binary calls on SIGHUP; `None` without TLS.
    pub fn tls(&self) -> Option<Tls> {
        self.tls.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has an address; an error here would mean the socket is gone.
        self.listener.local_addr().unwrap_or(self.config.listen.0)
    }

    /// The address the server API actually bound.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.0.local_addr().unwrap_or(self.config.api.listen)
    }

    /// A handle that stops this server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until shutdown, then drains. Returns once every connection is done or the drain
    /// timeout passed.
    pub async fn run(self) {
        let Self {
            listener,
            router,
            api,
            config,
            tls,
            shutdown,
            tracker,
            generated_api_key: _,
        } = self;
        let (api_listener, api_router) = api;
        let api_released = CancellationToken::new();
        // Also when this future is dropped before the end: the API's thread must not outlive it.
        let release_api = api_released.clone().drop_guard();
        let api_loop = ApiThread {
            listener: api_listener,
            router: api_router,
            config: Arc::clone(&config),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        }
        .serve(api_released);
        let client_loop = accept_loop(
            listener,
            router,
            tls.map(|t| t.acceptor().clone()),
            Arc::clone(&config),
            shutdown.clone(),
            tracker.clone(),
        );
        tokio::join!(api_loop, client_loop);
        tracker.close();
        tracing::info!(
            connections = tracker.len(),
            "shutting down: stopped accepting, closing connections"
        );
        let drain = config.shutdown.drain_timeout;
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!(
                still_open = tracker.len(),
                ?drain,
                "drain timeout passed; dropping the remaining connections"
            );
        }
        // The API's requests still in flight had the drain too; its thread may go now.
        drop(release_api);
        tracing::info!("stopped");
    }
}

/// The server API's listener and what serves it, for [`ApiThread::serve`].
struct ApiThread {
    listener: TcpListener,
    router: Router,
    config: Arc<Config>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl ApiThread {
    /// Accepts and serves the API's connections on a thread of its own, with a one-thread runtime,
    /// until shutdown; returns when it stops accepting.
    ///
    /// Why a thread: a publication to a big channel wakes one task per subscriber on the client
    /// runtime, and an API request (or an engine's reply it waits for) arriving behind them waited
    /// in the same run queue for all of them. On its own thread the API is scheduled by the kernel
    /// beside the fan-out. Measured at 10k subscribers and 10 publishes/s, server on one core
    /// (docs/benchmarks.md, "Issue 14 and 16, measured together"): with Redis the publish answer's
    /// p50 / p99 went from 3.8-5.0 / 35-106 ms to 0.9 / 10-12 ms; in memory p50 0.4-0.6 ms either
    /// way, p99 0.9-8.9 ms before and 5.0-5.4 ms after (a kernel time slice: the two threads share
    /// the core). The fan-out itself still runs on the client runtime (the hub spawns it there, see
    /// `switchboard_hub::Hub`).
    ///
    /// The thread serves until `released` is cancelled (after the drain, so requests in flight at
    /// shutdown can finish; or when [`Server::run`] is dropped), and stops accepting at shutdown.
    async fn serve(self, released: CancellationToken) {
        let Self {
            listener,
            router,
            config,
            shutdown,
            tracker,
        } = self;
        // A server without its API would look healthy and refuse every publish: stop instead.
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "server API: {what}; shutting down");
        };
        let stop = shutdown.clone();
        let listener = match listener.into_std() {
            Ok(l) => l,
            Err(e) => {
                fail("cannot hand the listener to its thread", &e);
                return stop.cancel();
            }
        };
        let (stopped_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("switchboard-api".into())
            .spawn(move || {
                // An answer is written when its request arrives, not after a busy worker's time
                // slice (publish answer p50 with Redis at 3 publishes/s: 7.5 ms → 1.0–2.6 ms).
                if let Err(e) = switchboard_engine::thread_slice::shorten() {
                    tracing::debug!(error = %e, "server API: no short scheduler slice");
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "server API: cannot start its runtime; shutting down");
                        return shutdown.cancel();
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let accepting =
                                accept_loop(listener, router, None, config, shutdown, tracker);
                            tokio::select! {
                                () = accepting => {}
                                () = released.cancelled() => {}
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "server API: cannot listen; shutting down");
                            shutdown.cancel();
                        }
                    }
                    drop(stopped_accepting);
                    released.cancelled().await;
                });
            });
        if let Err(e) = thread {
            fail("cannot start its thread", &e);
            return stop.cancel();
        }
        // Err when the thread dropped the sender: it stopped accepting (or failed to start).
        let _ = stopped.await;
    }
}

/// Accepts connections until shutdown, then drops the listener (no new connections).
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(stream, peer, &router, tls.as_ref(), &config, &shutdown, &tracker),
                Err(e) => {
                    // Out of file descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Connections the kernel may hold for us before `accept` (std's default of 128 overflows under a
/// reconnect storm, and the kernel then drops handshakes that clients retry a second later).
const LISTEN_BACKLOG: u32 = 1024;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn routes(
    config: &Config,
    node: &Arc<Node>,
    limits: &Arc<Limits>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Router {
    let clients = Endpoint {
        config: Arc::new(switchboard_websocket::Config {
            // A ping left unanswered ends the connection with the protocol's own code.
            pong_timeout_close: CloseCode(DisconnectCode::NoPong.code()),
            ..config.websocket.clone()
        }),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        limits: Some(Arc::clone(limits)),
        restart: config.shutdown.clone(),
    };
    let mut router = Router::new().route(
        &config.websocket_path,
        any(websocket::client_handler).with_state((clients, Arc::clone(node))),
    );
    // One relay for every transport whose sessions live on one node and whose requests may land on
    // any (the fallbacks, Engine.IO polling): one budget of relayed requests, one listener.
    let relay = Arc::new(Relay::new(
        Arc::clone(node.engine()),
        config.fallback.max_relayed_requests,
        config.fallback.relay_timeout,
    ));
    relay.listen(node);
    if config.fallback.enabled {
        router = router.merge(fallback::router(
            config, node, limits, &relay, shutdown, tracker,
        ));
    }
    if config.demo.enabled {
        router = router.merge(crate::demo::router());
    }
    if config.socketio.enabled {
        router = router.merge(crate::transport::socketio::router(
            config, node, limits, &relay, shutdown, tracker,
        ));
    }
    if config.echo.enabled {
        let echo = Endpoint {
            config: Arc::new(config.echo.websocket(&config.websocket)),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            limits: None,
            restart: config.shutdown.clone(),
        };
        router = router.route(
            &config.echo.path,
            any(websocket::echo_handler).with_state(echo),
        );
    }
    router
}

fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: &Router,
    tls: Option<&TlsAcceptor>,
    config: &Config,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    // Push frames out as soon as they are written: the write queue already coalesces them.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.http.header_read_timeout)
        .max_buf_size(config.http.max_header_bytes.max(8192));
    let router = router.clone();
    let shutdown = shutdown.clone();
    let tls = tls.cloned();
    // The TLS handshake counts against the same budget as the request head: a client that opens a
    // socket and says nothing is dropped either way.
    let handshake_timeout = config.http.header_read_timeout;
    tracker.spawn(async move {
        let result = match tls {
            None => serve_http(&http, TokioIo::new(stream), router, peer, &shutdown).await,
            Some(acceptor) => {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        serve_http(&http, TokioIo::new(stream), router, peer, &shutdown).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    });
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it ends or the server shuts down.
async fn serve_http<I>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    router: Router,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Handlers learn the client's address (for limits, logs and proxies) from the request.
    let service = TowerToHyperService::new(router.map_request(
        move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        },
    ));
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// This node's name among the others (`info`): the machine's host name and the client listener's
/// port, which tell nodes apart for people (their ids are random).
fn node_name(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| listen.ip().to_string());
    format!("{host}:{}", listen.port())
}

/// Announces this node to the others every `interval` (at once first) until shutdown, then tells
/// them it leaves, so that `info` drops it at once rather than after three missed announcements.
async fn announce(node: Arc<Node>, interval: Duration, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {
                if let Err(e) = node.announce().await {
                    // The engine is down: /ready says so; the others drop us meanwhile.
                    tracing::debug!(error = %e, "announcing this node failed");
                }
            }
        }
    }
    if let Err(e) = node.leave().await {
        tracing::debug!(error = %e, "telling the other nodes this one leaves failed");
    }
}

/// Once a second: disconnects clients whose token expired without a refresh, and forgets expired
/// channel streams of the in-memory engine (Redis expires its own).
async fn housekeeping(
    memory: Option<Arc<MemoryEngine>>,
    node: Arc<Node>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {
                let expired = node.expire_clients(switchboard_auth::now());
                let removed = memory.as_ref().map_or(0, |m| m.sweep());
                limits.sweep();
                if expired + removed > 0 {
                    tracing::debug!(expired, removed, "housekeeping");
                }
            }
        }
    }
}
