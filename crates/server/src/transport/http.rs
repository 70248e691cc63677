//! The HTTP fallback transports, for browsers and networks where WebSocket does not get through: SSE,
//! long polling and ajax (short) polling. They carry exactly the commands, replies and pushes of
//! docs/protocol.md (newline-delimited JSON), only over plain HTTP requests; docs/protocol.md ("HTTP
//! fallback transports") is the wire contract.
//!
//! ```text
//! POST {path}                   open: commands (connect first) -> {"session":"<id>.<secret>", ...}
//! POST {path}/send?session=S&n=K[&ack=N]   more commands, numbered 1, 2, 3... (retries are not redone)
//! GET  {path}/poll?session=S&ack=N[&wait=0] replies and pushes: {"seq":M,"messages":[...]}
//! GET  {path}/sse?session=S[&ack=N]        the same as a text/event-stream, one event per batch
//! POST {path}/close?session=S              the client ends the session (204), like a WebSocket close
//! ```
//!
//! Any node may serve any request of a session: one that lands on another node than the session's is
//! relayed there through the engine (`relay.rs`), so a load balancer needs no stickiness.
//!
//! This module holds the configuration, the routes, open and send, and the JSON errors;
//! `http_session.rs` the sessions and their task, `downstream.rs` the seq/ack buffer, `poll.rs` and
//! `sse.rs` the two ways down, `relay.rs` requests for other nodes' sessions, `cors.rs` the
//! cross-origin policy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use switchboard_hub::Node;
use switchboard_protocol::{DisconnectCode, ErrorCode, lines};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http_session::{self, Outcome, SessionEnv, Sessions};
use super::relay::{self, Op, Relay, RelayError};
use super::{cors, poll, sse};
use crate::limits::{Limits, Refusal};

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
    /// there (`poll_timeout`, `sse_ping_interval`; for a send, this time again).
    #[serde(with = "humantime_serde")]
    pub relay_timeout: Duration,
    /// Requests this node relays to other nodes at once, and relayed requests it runs at once; beyond
    /// it: 503. Each held long poll or open SSE stream landing on another node than its session's
    /// takes one on both nodes.
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

/// What every fallback handler shares.
#[derive(Clone, Debug)]
pub(crate) struct Fallback {
    pub config: Arc<FallbackConfig>,
    pub node: Arc<Node>,
    pub env: SessionEnv,
    pub limits: Arc<Limits>,
    pub relay: Arc<Relay>,
}

impl Fallback {
    /// The node holding the session a request names, when it is another one.
    pub fn remote_node<'a>(&self, params: &Params<'a>) -> Option<&'a str> {
        self.relay.remote_node(params.get("session")?)
    }

    /// Relays `op` to `node` and answers what it answered (see `relay.rs`).
    pub async fn relay_http(
        &self,
        node: &str,
        op: Op,
        body: Bytes,
        hold: Duration,
    ) -> Result<Response, FallbackError> {
        let (answer, body) = self
            .relay
            .call(node, op, body, hold)
            .await
            .map_err(|e| self.relay_error(e))?;
        relay::from_answer(&answer, body).ok_or_else(|| {
            FallbackError::Internal(format!(
                "node {node} answered {answer:?} to an HTTP request"
            ))
        })
    }

    /// How a relay failure looks to the client: a gone node like an unknown session.
    pub fn relay_error(&self, e: RelayError) -> FallbackError {
        match e {
            RelayError::Gone(_) => FallbackError::UnknownSession(self.config.path.clone()),
            RelayError::Busy => FallbackError::Busy,
            RelayError::Unavailable(m) => {
                // The detail names Redis addresses: for the log, not for clients.
                tracing::debug!(error = %m, "cannot relay a fallback request");
                FallbackError::Unavailable
            }
            RelayError::Malformed(m) => {
                tracing::warn!(error = %m, "unreadable answer from another node");
                FallbackError::Internal("unreadable answer from the session's node".into())
            }
        }
    }
}

/// The fallback routes under `config.fallback.path`.
pub fn router(
    config: &crate::Config,
    node: &Arc<Node>,
    limits: &Arc<Limits>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Router {
    let fb = &config.fallback;
    let relay = Relay::new(
        Arc::clone(node.engine()),
        fb.max_relayed_requests,
        fb.relay_timeout,
    );
    let state = Fallback {
        config: Arc::new(fb.clone()),
        node: Arc::clone(node),
        env: SessionEnv {
            sessions: Arc::new(Sessions::default()),
            node_id: relay.node_id().to_owned(),
            session_timeout: fb.session_timeout,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            restart: config.shutdown.clone(),
        },
        limits: Arc::clone(limits),
        relay: Arc::new(relay),
    };
    serve_relayed(&state);
    let policy = Arc::new(cors::Policy {
        allowed_origins: fb.allowed_origins.clone(),
        allow_credentials: fb.allow_credentials,
    });
    let base = fb.path.as_str();
    Router::new()
        .route(base, post(open).options(cors::preflight))
        .route(&format!("{base}/send"), post(send).options(cors::preflight))
        .route(
            &format!("{base}/poll"),
            get(poll::poll).options(cors::preflight),
        )
        .route(
            &format!("{base}/close"),
            post(close).options(cors::preflight),
        )
        .route(
            &format!("{base}/sse"),
            get(sse::sse).options(cors::preflight),
        )
        .layer(axum::middleware::from_fn_with_state(policy, cors::apply))
        .with_state(state)
}

/// Runs the requests other nodes relay to this one's sessions, each in a task of its own.
fn serve_relayed(state: &Fallback) {
    // The node owns this handler: holding it strongly here would keep it alive forever.
    let node = Arc::downgrade(&state.node);
    let (config, env, limits, relay) = (
        Arc::clone(&state.config),
        state.env.clone(),
        Arc::clone(&state.limits),
        Arc::clone(&state.relay),
    );
    state
        .node
        .set_node_message_handler(Arc::new(move |message: Bytes| {
            let Some(incoming) = relay.receive(&message) else {
                return;
            };
            let Some(node) = node.upgrade() else {
                return;
            };
            let fb = Fallback {
                config: Arc::clone(&config),
                node,
                env: env.clone(),
                limits: Arc::clone(&limits),
                relay: Arc::clone(&relay),
            };
            env.tracker.spawn(relay::run(fb, incoming));
        }));
}

/// Why a fallback request failed; each answers its status with
/// `{"error":{"code":<protocol error code>,"message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackError {
    /// No session has this token (never opened, expired, over, or a wrong secret).
    #[error("unknown or expired session: open a new one (POST {0}) and recover")]
    UnknownSession(String),
    /// The body did not arrive within `body_read_timeout`.
    #[error("request body not received within {0:?} ([fallback] body_read_timeout)")]
    BodyTimeout(Duration),
    /// A connection limit refused the session (503 or 429, see `[limits]`).
    #[error("{}", .0.reason().trim_end())]
    Limited(Refusal),
    /// The body is over `max_body_bytes`.
    #[error("request body over {0} bytes ([fallback] max_body_bytes): send fewer commands at once")]
    TooLarge(usize),
    /// A parameter is missing or malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The commands broke the protocol: the session ended with disconnect 3501 (or never opened).
    #[error(
        "the commands broke the protocol (unparsable JSON, a bad id, or a command before connect): {0}"
    )]
    BadCommands(&'static str),
    /// An upstream POST skipped ahead.
    #[error(
        "upstream n={got} is out of order: the session expects n={expected} next (POST in order, one at a time)"
    )]
    OutOfOrder {
        /// The `n` sent.
        got: u64,
        /// The `n` the session takes next.
        expected: u64,
    },
    /// The request's `Origin` is not allowed.
    #[error("origin {0} is not allowed: add it to [fallback] allowed_origins")]
    Origin(String),
    /// Too many requests are relayed between nodes at once (503 with `Retry-After`).
    #[error(
        "too many requests relayed between nodes at once ([fallback] max_relayed_requests): retry shortly"
    )]
    Busy,
    /// The session's node cannot be reached for now: the engine is down (503 with `Retry-After`).
    #[error("the session's node cannot be reached for now: retry shortly")]
    Unavailable,
    /// The server failed.
    #[error("internal server error: {0}")]
    Internal(String),
}

impl FallbackError {
    /// The HTTP status it answers.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownSession(_) => StatusCode::NOT_FOUND,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Limited(r) => r.status(),
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) | Self::BadCommands(_) => StatusCode::BAD_REQUEST,
            Self::OutOfOrder { .. } => StatusCode::CONFLICT,
            Self::Origin(_) => StatusCode::FORBIDDEN,
            Self::Busy | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The protocol error code in its body.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownSession(_) => ErrorCode::Unauthorized,
            Self::TooLarge(_) => ErrorCode::LimitExceeded,
            Self::BadRequest(_)
            | Self::BadCommands(_)
            | Self::OutOfOrder { .. }
            | Self::BodyTimeout(_) => ErrorCode::BadRequest,
            Self::Limited(_) | Self::Busy => ErrorCode::TooManyRequests,
            Self::Origin(_) => ErrorCode::PermissionDenied,
            Self::Internal(_) | Self::Unavailable => ErrorCode::Internal,
        }
    }
}

impl IntoResponse for FallbackError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({"error": {"code": self.code().code(), "message": self.to_string()}});
        let mut resp = json(self.status(), Bytes::from(body.to_string()));
        let retry_after = match self {
            Self::Limited(r) => Some(r.retry_after()),
            Self::Busy | Self::Unavailable => Some("1"),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        resp
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A request's query parameters (`a=1&b=2`). Values are taken as they are: every value the fallback
/// endpoints accept (tokens, numbers, transport names) is plain ASCII that needs no escaping.
pub(crate) struct Params<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Params<'a> {
    pub fn parse(uri: &'a Uri) -> Self {
        Self::from_query(uri.query().unwrap_or(""))
    }

    /// The parameters of a query string (what a relayed request carries).
    pub fn from_query(query: &'a str) -> Self {
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// A number parameter, if present.
    pub fn number(&self, key: &str) -> Result<Option<u64>, FallbackError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    FallbackError::BadRequest(format!(
                        "parameter {key}={v:?} is not a non-negative integer"
                    ))
                })
            })
            .transpose()
    }

    /// The session a request names.
    pub fn session(&self, fb: &Fallback) -> Result<Arc<http_session::HttpSession>, FallbackError> {
        self.get("session")
            .and_then(|token| fb.env.sessions.find(token))
            .ok_or_else(|| FallbackError::UnknownSession(fb.config.path.clone()))
    }
}

/// Reads a request body of at most `max_body_bytes`, within `body_read_timeout`.
async fn read_body(body: Body, config: &FallbackConfig) -> Result<Bytes, FallbackError> {
    let limit = config.max_body_bytes;
    let collect = Limited::new(body, limit).collect();
    let collected = tokio::time::timeout(config.body_read_timeout, collect)
        .await
        .map_err(|_| FallbackError::BodyTimeout(config.body_read_timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(FallbackError::TooLarge(limit))
        }
        Err(e) => Err(FallbackError::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// `POST {path}[?transport=sse|long-poll|poll]`: opens a session and handles its first commands.
async fn open(State(fb): State<Fallback>, req: Request) -> Result<Response, FallbackError> {
    let (parts, body) = req.into_parts();
    let params = Params::parse(&parts.uri);
    let transport = match params.get("transport") {
        None => "http",
        Some("sse") => "sse",
        Some("long-poll") => "long-poll",
        Some("poll") => "poll",
        Some(other) => {
            return Err(FallbackError::BadRequest(format!(
                "unknown transport {other:?}: use sse, long-poll or poll"
            )));
        }
    };
    let body = read_body(body, &fb.config).await?;
    if lines(&body).next().is_none() {
        return Err(FallbackError::BadRequest(
            "the body holds no command: send connect (newline-delimited JSON)".into(),
        ));
    }
    count_in(&fb, &body);
    // A session is a client connection like a WebSocket one: the same limits admit it.
    let permit = match super::peer_ip(&parts.extensions) {
        Some(ip) => Some(fb.limits.admit(ip).map_err(FallbackError::Limited)?),
        None => None,
    };
    let headers = super::forwarded_headers(&fb.node, &parts.headers);
    let client = fb.node.client_with(transport, headers);
    let session = match http_session::open(&fb.env, client, body, permit).await {
        Ok(Ok(session)) => session,
        Ok(Err(DisconnectCode::BadRequest)) => {
            return Err(FallbackError::BadCommands("no session was opened"));
        }
        Ok(Err(code)) => {
            return Err(FallbackError::Internal(format!(
                "the session ended at once ({})",
                code.reason()
            )));
        }
        Err(e) => return Err(FallbackError::Internal(format!("no randomness: {e}"))),
    };
    let body = serde_json::json!({
        "session": session.token(),
        "poll_timeout": whole_seconds(fb.config.poll_timeout),
        "session_timeout": whole_seconds(fb.config.session_timeout),
    });
    Ok(json(StatusCode::OK, Bytes::from(body.to_string())))
}

/// `POST {path}/send?session=S&n=K[&ack=N]`: more commands, and/or an acknowledgement.
async fn send(State(fb): State<Fallback>, uri: Uri, body: Body) -> Result<Response, FallbackError> {
    let params = Params::parse(&uri);
    if let Some(node) = fb.remote_node(&params) {
        // Read here, with this node's limits, so that the session's node gets it whole.
        let body = read_body(body, &fb.config).await?;
        let query = uri.query().unwrap_or_default().to_owned();
        // The commands may wait on the application's handlers: give them a relay timeout too.
        let hold = fb.config.relay_timeout;
        return fb.relay_http(node, Op::Send { query }, body, hold).await;
    }
    send_here(&fb, &params, read_body(body, &fb.config)).await
}

/// A `send` to a session of this node, whether it arrived here or was relayed from another node;
/// `body` is read once the session is known.
pub(crate) async fn send_here(
    fb: &Fallback,
    params: &Params<'_>,
    body: impl Future<Output = Result<Bytes, FallbackError>>,
) -> Result<Response, FallbackError> {
    let session = params.session(fb)?;
    let ack = params.number("ack")?;
    let n = params.number("n")?;
    let _guard = session.begin_request();
    let body = body.await?;
    count_in(fb, &body);
    if let Some(ack) = ack {
        session.ack(ack);
    }
    let Some(n) = n else {
        if lines(&body).next().is_none() {
            // A pure acknowledgement (SSE clients send these): not numbered.
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        return Err(FallbackError::BadRequest(
            "parameter n is required with commands: number upstream POSTs 1, 2, 3...".into(),
        ));
    };
    if n == 0 {
        return Err(FallbackError::BadRequest("parameter n starts at 1".into()));
    }
    match session.send(n, body).await {
        Outcome::Done | Outcome::Duplicate => Ok(StatusCode::NO_CONTENT.into_response()),
        Outcome::OutOfOrder { expected } => Err(FallbackError::OutOfOrder { got: n, expected }),
        Outcome::Ended(DisconnectCode::BadRequest) => Err(FallbackError::BadCommands(
            "the session is over; its disconnect push (3501) is on the downstream",
        )),
        // Ended another way (a refused token): the error reply and the push are on the downstream,
        // as they would arrive over WebSocket.
        Outcome::Ended(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Outcome::Gone => Err(FallbackError::UnknownSession(fb.config.path.clone())),
    }
}

/// `POST {path}/close?session=S`: the client ends its session (leaving the page, switching transport,
/// `disconnect()`), as a WebSocket client sends a close frame: the session's client is closed at
/// once, so presence and `leave` pushes change within a moment rather than `session_timeout` later.
/// Answers 204 once it is closed; 404 for a session already over. The body is ignored
/// (`navigator.sendBeacon` always sends one).
async fn close(State(fb): State<Fallback>, uri: Uri) -> Result<Response, FallbackError> {
    let params = Params::parse(&uri);
    if let Some(node) = fb.remote_node(&params) {
        let query = uri.query().unwrap_or_default().to_owned();
        let hold = fb.config.relay_timeout;
        return fb
            .relay_http(node, Op::Close { query }, Bytes::new(), hold)
            .await;
    }
    close_here(&fb, &params).await
}

/// A `close` of a session of this node, whether it arrived here or was relayed from another node.
pub(crate) async fn close_here(
    fb: &Fallback,
    params: &Params<'_>,
) -> Result<Response, FallbackError> {
    let session = params.session(fb)?;
    session.close(fb.config.relay_timeout).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Counts upstream bytes for `/metrics`. The three fallbacks send commands the same way, so they share
/// one label: `http`.
fn count_in(fb: &Fallback, body: &Bytes) {
    fb.node
        .metrics()
        .bytes("http", "in")
        .inc_by(body.len() as u64);
}

/// Seconds for the open answer, rounded up so that a short timeout never reads as 0.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
