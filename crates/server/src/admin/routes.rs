//! The console's HTTP side: the page and its assets, login and logout, the live stream, the channel
//! views, and the actions, each of which calls the server API's own method (and so acts on every
//! node) and is logged.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_auth::Verifier;
use switchboard_hub::Node;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::assets;
use super::auth::{self, LoginLimiter, Session, Sessions};
use super::config::AdminConfig;
use super::stats::Stats;

/// Audit entries kept for the page (the log keeps them all).
const AUDIT_KEPT: usize = 100;

/// Largest login body: a password or a token, nothing more.
const LOGIN_BODY: usize = 16 << 10;

/// Password checks running at once. Each takes tens of milliseconds of a core and 19 MiB on
/// purpose; guessers spread over many addresses get 503 beyond this instead of the node's CPU.
const CONCURRENT_HASHES: usize = 2;

/// The API methods the console's actions may call: the ones its page offers, no more.
pub const ACTIONS: [&str; 4] = ["publish", "disconnect", "unsubscribe", "history_remove"];

/// One action taken through the console.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    /// Unix time, seconds.
    pub t: u64,
    /// Who (`password`, or the token's `sub`).
    pub user: String,
    /// The API method.
    pub method: String,
    /// Its body, shortened to 300 characters.
    pub body: String,
    /// `ok`, or the error the API answered.
    pub outcome: String,
}

/// Everything the console's handlers share.
pub struct Console {
    node: Arc<Node>,
    config: AdminConfig,
    verifier: Option<Verifier>,
    max_body: usize,
    sessions: Sessions,
    limiter: LoginLimiter,
    stats: Arc<Stats>,
    ticks: watch::Receiver<u64>,
    audit: Mutex<VecDeque<AuditEntry>>,
    hashing: tokio::sync::Semaphore,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// The console of `node`: `verifier` checks login tokens (none: password only), `max_body`
    /// bounds an action's body as `[api] max_body_bytes` bounds the API's, `ticks` changes when
    /// `stats` has a new point, and `shutdown` ends the live streams.
    pub fn new(
        node: Arc<Node>,
        config: AdminConfig,
        verifier: Option<Verifier>,
        max_body: usize,
        stats: Arc<Stats>,
        ticks: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            node,
            sessions: Sessions::new(config.session_ttl),
            limiter: LoginLimiter::new(config.max_failed_logins, config.login_window),
            config,
            verifier,
            max_body,
            stats,
            ticks,
            audit: Mutex::new(VecDeque::new()),
            hashing: tokio::sync::Semaphore::new(CONCURRENT_HASHES),
            shutdown,
        }
    }

    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.sessions
            .get(auth::session_id(headers)?, Instant::now())
    }

    fn record(&self, entry: AuditEntry) {
        let mut audit = self.audit.lock();
        if audit.len() == AUDIT_KEPT {
            audit.pop_front();
        }
        audit.push_back(entry);
    }
}

/// The console's routes, all under `/admin`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route("/admin/", get(|| async { assets::page() }))
        .route("/admin/console.js", get(|| async { assets::script() }))
        .route("/admin/console.css", get(|| async { assets::style() }))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/api/session", get(session))
        .route("/admin/api/events", get(events))
        .route("/admin/api/channels", get(channels))
        .route("/admin/api/channel", get(channel))
        .route("/admin/api/action/{method}", post(action))
        .with_state(console)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

fn forbidden_origin() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "the request's Origin is not the console's (add it to [admin] allowed_origins if a proxy serves the console)",
    )
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "not logged in")
}

fn peer_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

async fn login(State(console): State<Arc<Console>>, req: Request) -> Response {
    let ip = peer_ip(&req);
    let headers = req.headers().clone();
    if !auth::origin_allowed(&headers, &console.config.allowed_origins) {
        return forbidden_origin();
    }
    let now = Instant::now();
    if let Err(wait) = console.limiter.check(ip, now) {
        tracing::warn!(%ip, "console login refused: too many failed logins from this address");
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed logins from this address; try again in {} s",
                wait.as_secs() + 1
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
        return resp;
    }
    let body = match axum::body::to_bytes(req.into_body(), LOGIN_BODY).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "login body too large"),
    };
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send {\"password\": \"...\"} or {\"token\": \"...\"}",
        );
    };
    let user = match (&login.password, &login.token) {
        (Some(p), None) => {
            let Ok(_permit) = console.hashing.try_acquire() else {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many logins at once; try again in a moment",
                );
            };
            let hash = console.config.password_hash.clone();
            let p = p.clone();
            // Argon2 takes tens of milliseconds of CPU on purpose: off the async threads.
            let ok = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &p))
                .await
                .unwrap_or(false);
            ok.then(|| "password".to_owned())
        }
        (None, Some(t)) => match &console.verifier {
            Some(v) => match v.admin(t) {
                Ok(sub) => Some(if sub.is_empty() { "token".into() } else { sub }),
                Err(e) => {
                    tracing::debug!(error = %e, "console token refused");
                    None
                }
            },
            None => None,
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "send exactly one of password and token",
            );
        }
    };
    let Some(user) = user else {
        console.limiter.failed(ip, now);
        tracing::warn!(%ip, "console login failed");
        return error(StatusCode::UNAUTHORIZED, "wrong password or token");
    };
    console.limiter.succeeded(ip);
    let id = match console.sessions.create(&user, now) {
        Ok(id) => id,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("no randomness for a session id: {e}"),
            );
        }
    };
    tracing::info!(%ip, %user, "console login");
    let cookie = auth::set_cookie(&id, console.sessions.ttl(), auth::is_https(&headers));
    let mut resp = axum::Json(json!({"user": user})).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if !auth::origin_allowed(&headers, &console.config.allowed_origins) {
        return forbidden_origin();
    }
    if let Some(id) = auth::session_id(&headers) {
        console.sessions.remove(id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie(auth::is_https(&headers))) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn this_node(console: &Console) -> Value {
    let info = console.node.info();
    json!({"id": info.id, "name": info.name, "version": info.version})
}

async fn session(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match console.session(&headers) {
        Some(s) => axum::Json(json!({
            "user": s.user,
            "node": this_node(&console),
            "actions": ACTIONS,
        }))
        .into_response(),
        None => unauthorized(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One server-sent event.
fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn tick_event(console: &Console) -> Bytes {
    let (point, cost) = console.stats.latest().unwrap_or_default();
    let audit: Vec<AuditEntry> = console.audit.lock().iter().cloned().collect();
    // Each node as it announces itself, with what its console shares (a node whose console is off,
    // or one that left, has none: the list is the announced one).
    let figures = console.stats.figures();
    let nodes: Vec<Value> = console
        .node
        .cluster_info()
        .into_iter()
        .map(|n| {
            let mut v = json!(n);
            v["figures"] = json!(figures.get(&n.id));
            v
        })
        .collect();
    sse(
        "tick",
        &json!({
            "self": console.node.node_id(),
            "point": point,
            "cost": cost,
            "nodes": nodes,
            "audit": audit,
        }),
    )
}

/// The live stream: `hello` with the 15 minutes kept so far, then `tick` every second; it ends at
/// logout (`logout`), at session expiry, or when the server shuts down.
async fn events(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(id) = auth::session_id(&headers).map(str::to_owned) else {
        return unauthorized();
    };
    if console.sessions.get(&id, Instant::now()).is_none() {
        return unauthorized();
    }
    let hello = sse(
        "hello",
        &json!({"node": this_node(&console), "history": console.stats.history()}),
    );
    let first = tick_event(&console);
    let mut ticks = console.ticks.clone();
    ticks.mark_unchanged();
    let stream = futures_util::stream::unfold(
        (console, ticks, Some(vec![hello, first]), id, false),
        |(console, mut ticks, mut pending, id, done)| async move {
            if let Some(mut queued) = pending.take() {
                let next = queued.remove(0);
                let rest = (!queued.is_empty()).then_some(queued);
                return Some((Ok::<_, Infallible>(next), (console, ticks, rest, id, done)));
            }
            if done {
                return None;
            }
            tokio::select! {
                () = console.shutdown.cancelled() => return None,
                changed = ticks.changed() => if changed.is_err() { return None; },
            }
            if console.sessions.get(&id, Instant::now()).is_none() {
                let bye = sse("logout", &json!({}));
                return Some((Ok(bye), (console, ticks, None, id, true)));
            }
            let tick = tick_event(&console);
            Some((Ok(tick), (console, ticks, None, id, false)))
        },
    );
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A reverse proxy in front (nginx) would otherwise hold the events back to fill its buffer.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Runs an API method for a read view; the result, or the API's error as the console answers it.
async fn read(console: &Console, method: &str, body: &Value) -> Result<Value, Response> {
    switchboard_api::call_method(&console.node, method, body.to_string().as_bytes())
        .await
        .map_err(|e| error(e.status, e.message))
}

#[derive(Deserialize)]
struct ChannelsQuery {
    #[serde(default)]
    prefix: String,
}

/// Channels with subscribers anywhere in the cluster whose names start with `prefix`, busiest
/// first, at most 200.
async fn channels(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<ChannelsQuery>,
) -> Response {
    if console.session(&headers).is_none() {
        return unauthorized();
    }
    let result = match read(
        &console,
        "channels",
        &json!({"pattern": format!("{}*", q.prefix)}),
    )
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut list: Vec<(String, u64)> = result["channels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v["num_clients"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total = list.len();
    list.truncate(200);
    axum::Json(json!({
        "channels": list.into_iter().map(|(name, n)| json!({"name": name, "subscribers": n})).collect::<Vec<_>>(),
        "total": total,
        "nodes": result["nodes"],
        "unanswered": result["unanswered"],
    }))
    .into_response()
}

#[derive(Deserialize)]
struct ChannelQuery {
    name: String,
}

/// One channel: who is here (presence), its counts, and its last 20 publications, each part either
/// its result or why the namespace does not have it.
async fn channel(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<ChannelQuery>,
) -> Response {
    if console.session(&headers).is_none() {
        return unauthorized();
    }
    let part = |r: Result<Value, Response>| async move {
        match r {
            Ok(v) => v,
            Err(resp) => {
                let body = axum::body::to_bytes(resp.into_body(), 64 << 10)
                    .await
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                json!({"unavailable": v["error"]})
            }
        }
    };
    let channel = json!({"channel": q.name});
    let presence = part(read(&console, "presence", &channel).await).await;
    let stats = part(read(&console, "presence_stats", &channel).await).await;
    let history = part(
        read(
            &console,
            "history",
            &json!({"channel": q.name, "limit": 20, "reverse": true}),
        )
        .await,
    )
    .await;
    axum::Json(json!({
        "channel": q.name,
        "presence": presence,
        "stats": stats,
        "history": history,
    }))
    .into_response()
}

/// An action: the API method of the same name with the same body, so it acts on every node as the
/// API does. Logged with who did it, and kept for the page's audit list.
async fn action(
    State(console): State<Arc<Console>>,
    Path(method): Path<String>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    if !auth::origin_allowed(&headers, &console.config.allowed_origins) {
        return forbidden_origin();
    }
    let Some(session) = console.session(&headers) else {
        return unauthorized();
    };
    if !ACTIONS.contains(&method.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            format!("the console offers no action {method:?}; the API has every method"),
        );
    }
    let body = match axum::body::to_bytes(req.into_body(), console.max_body).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let result = switchboard_api::call_method(&console.node, &method, &body).await;
    let text = String::from_utf8_lossy(&body);
    let short: String = text.chars().take(300).collect();
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.message.clone(),
    };
    tracing::info!(user = %session.user, %method, body = %short, %outcome, "console action");
    console.record(AuditEntry {
        t: now_secs(),
        user: session.user,
        method,
        body: short,
        outcome,
    });
    match result {
        Ok(v) => axum::Json(json!({"result": v})).into_response(),
        Err(e) => e.into_response(),
    }
}
