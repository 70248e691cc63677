//! The fallback's routes: each request either runs against a session of this node (`local/`) or,
//! naming another node's session, is relayed there (`relayed.rs`). Also opening a session, which is
//! always local, and reading request bodies within the limits.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use switchboard_hub::Node;
use switchboard_protocol::{DisconnectCode, lines};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::super::relay::{Op, Relay};
use super::config::FallbackConfig;
use super::cors;
use super::error::{FallbackError, json};
use super::local::{self, Local};
use super::params::Params;
use super::relayed;
use super::session::{self, SessionEnv, Sessions};
use crate::limits::Limits;

/// What every route shares.
#[derive(Clone, Debug)]
struct Fallback {
    local: Local,
    relay: Arc<Relay>,
    limits: Arc<Limits>,
}

impl Fallback {
    /// The node holding the session a request names (`<id>.<secret>`), when it is another one.
    fn remote_node<'a>(&self, params: &Params<'a>) -> Option<&'a str> {
        let (id, _secret) = params.get("session")?.split_once('.')?;
        self.relay.remote_node(id)
    }
}

/// The fallback routes under `config.fallback.path`; requests for other nodes' sessions go through
/// `relay`, which runs those relayed here from now on.
pub fn router(
    config: &crate::Config,
    node: &Arc<Node>,
    limits: &Arc<Limits>,
    relay: &Arc<Relay>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Router {
    let fb = &config.fallback;
    let local = Local {
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
    };
    relayed::serve(&local, relay);
    let state = Fallback {
        local,
        relay: Arc::clone(relay),
        limits: Arc::clone(limits),
    };
    let policy = Arc::new(cors::Policy {
        allowed_origins: fb.allowed_origins.clone(),
        allow_credentials: fb.allow_credentials,
    });
    let base = fb.path.as_str();
    Router::new()
        .route(base, post(open).options(cors::preflight))
        .route(&format!("{base}/send"), post(send).options(cors::preflight))
        .route(&format!("{base}/poll"), get(poll).options(cors::preflight))
        .route(
            &format!("{base}/close"),
            post(close).options(cors::preflight),
        )
        .route(&format!("{base}/sse"), get(sse).options(cors::preflight))
        .layer(axum::middleware::from_fn_with_state(policy, cors::apply))
        .with_state(state)
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
    let body = read_body(body, &fb.local.config).await?;
    if lines(&body).next().is_none() {
        return Err(FallbackError::BadRequest(
            "the body holds no command: send connect (newline-delimited JSON)".into(),
        ));
    }
    fb.local.count_in(&body);
    // A session is a client connection like a WebSocket one: the same limits admit it.
    let permit = match super::super::peer_ip(&parts.extensions) {
        Some(ip) => Some(fb.limits.admit(ip).map_err(FallbackError::Limited)?),
        None => None,
    };
    let headers = super::super::forwarded_headers(&fb.local.node, &parts.headers);
    let client = fb.local.node.client_with(transport, headers);
    let session = match session::open(&fb.local.env, client, body, permit).await {
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
        "poll_timeout": whole_seconds(fb.local.config.poll_timeout),
        "session_timeout": whole_seconds(fb.local.config.session_timeout),
    });
    Ok(json(StatusCode::OK, Bytes::from(body.to_string())))
}

/// `POST {path}/send?session=S&n=K[&ack=N]`: more commands, and/or an acknowledgement.
async fn send(State(fb): State<Fallback>, uri: Uri, body: Body) -> Result<Response, FallbackError> {
    let params = Params::parse(&uri);
    if let Some(node) = fb.remote_node(&params) {
        // Read here, with this node's limits, so that the session's node gets it whole.
        let body = read_body(body, &fb.local.config).await?;
        let query = uri.query().unwrap_or_default().to_owned();
        // The commands may wait on the application's handlers: give them a relay timeout too.
        let hold = fb.local.config.relay_timeout;
        let op = Op::Send { query };
        return relayed::forward(&fb.local, &fb.relay, node, op, body, hold).await;
    }
    local::send(&fb.local, &params, read_body(body, &fb.local.config)).await
}

/// `GET {path}/poll?session=S&ack=N[&wait=0]`: replies and pushes (`local/poll.rs`).
async fn poll(State(fb): State<Fallback>, uri: Uri) -> Result<Response, FallbackError> {
    let params = Params::parse(&uri);
    if let Some(node) = fb.remote_node(&params) {
        // The session's node holds a long poll up to poll_timeout before it answers.
        let hold = if params.get("wait") == Some("0") {
            Duration::ZERO
        } else {
            fb.local.config.poll_timeout
        };
        let query = uri.query().unwrap_or_default().to_owned();
        let op = Op::Poll { query };
        return relayed::forward(&fb.local, &fb.relay, node, op, Bytes::new(), hold).await;
    }
    local::poll(&fb.local, &params).await
}

/// `GET {path}/sse?session=S[&ack=N]`: the same as a text/event-stream (`local/sse.rs`).
async fn sse(
    State(fb): State<Fallback>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, FallbackError> {
    let params = Params::parse(&uri);
    let last_event_id = headers.get("last-event-id");
    if let Some(node) = fb.remote_node(&params) {
        let node = node.to_owned();
        return relayed::stream(&fb.local, &fb.relay, node, &uri, last_event_id).await;
    }
    local::stream(fb.local, &params, last_event_id)
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
        let hold = fb.local.config.relay_timeout;
        let op = Op::Close { query };
        return relayed::forward(&fb.local, &fb.relay, node, op, Bytes::new(), hold).await;
    }
    local::close(&fb.local, &params).await
}

/// Seconds for the open answer, rounded up so that a short timeout never reads as 0.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
