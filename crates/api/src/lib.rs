//! The server HTTP API: how application backends (PHP, Python, anything that speaks HTTP) push to
//! clients and manage them, without holding a connection themselves.
//!
//! Every method is `POST /api/<method>` with a JSON body, authenticated by the API key
//! (`Authorization: apikey KEY` or `X-API-Key: KEY`). A success answers `200 {"result": {...}}`; a
//! failure answers a 4xx/5xx status with `{"error": {"code": N, "message": "..."}}`, the codes being
//! the client protocol's (docs/protocol.md). `GET /api/openapi.json` describes it all (OpenAPI 3.1).
//!
//! The API listens on its own address (127.0.0.1:8081 by default) so that it is never exposed with the
//! client listener by accident.

mod methods;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use switchboard_hub::Node;
use switchboard_protocol::ErrorCode;

pub use methods::METHODS;

/// Runs one API method on `node` exactly as `POST /api/<method>` with `body` does once the key is
/// checked and the body read: the `result` value, or the error the API answers. The router calls it
/// for every request; it is public so that tools can drive each method's body parsing without an
/// HTTP server: the `api` fuzz target (fuzz/fuzz_targets/api.rs) feeds it untrusted bytes.
pub async fn call_method(
    node: &Node,
    method: &str,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    methods::dispatch(node, method, body).await
}

/// The OpenAPI 3.1 description served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Settings of the API listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the API listens. Keep it private: it can publish anywhere and disconnect anyone.
    pub listen: SocketAddr,
    /// The key every request must carry. Empty: the API refuses every request (401) until one is set;
    /// `switchboard genconfig` writes a random one.
    pub key: String,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// A request body must arrive within this time (408 beyond): a client trickling bytes does not
    /// hold a task forever.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// How long a publish's `idempotency_key` is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            key: String::new(),
            max_body_bytes: 1 << 20,
            body_read_timeout: Duration::from_secs(10),
            idempotency_window: Duration::from_secs(300),
        }
    }
}

#[derive(Clone)]
struct Api {
    node: Arc<Node>,
    key: Arc<str>,
    max_body: usize,
    body_timeout: Duration,
}

/// The API's routes.
pub fn router(node: Arc<Node>, config: &ApiConfig) -> Router {
    let api = Api {
        node,
        key: Arc::from(config.key.as_str()),
        max_body: config.max_body_bytes,
        body_timeout: config.body_read_timeout,
    };
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/{method}", post(call))
        .with_state(api)
}

/// Liveness: 200 whenever the process serves requests, with the engine's state for operators:
/// whether the node is ready, and each Redis shard's (`host:port`, no credentials) state and for how
/// many seconds it has held. Needs no key, like `/metrics`: the API listener is private.
async fn health(State(api): State<Api>) -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "status": "ok",
            "ready": api.node.ready(),
            "engine": {"shards": shards_json(&api)},
        })),
    )
        .into_response()
}

/// Each shard's state, for `/health` and `/ready`.
fn shards_json(api: &Api) -> Vec<serde_json::Value> {
    api.node
        .engine()
        .shards()
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "shard": s.name,
                "ready": s.ready,
                "since_seconds": s.since.as_secs(),
            })
        })
        .collect()
}

/// Prometheus metrics (OpenMetrics text). Needs no key, like the health checks: the API listener is
/// private, and scrapers rarely carry secrets.
async fn metrics(State(api): State<Api>) -> Response {
    let mut resp = api.node.metrics_text().into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}

/// Readiness: 200 while the node can serve, 503 while its engine has lost its backing store (Redis:
/// every shard stopped answering; measured, see `[engine.redis] command_timeout`). With one shard of
/// several down the node stays ready, since the other shards' channels work; `shards` says which is
/// down. Clients already connected stay; a load balancer should send new ones elsewhere meanwhile.
async fn ready(State(api): State<Api>) -> Response {
    let shards = shards_json(&api);
    let (status, text) = if api.node.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "engine unavailable")
    };
    let mut body = serde_json::json!({"status": text});
    if !shards.is_empty() {
        body["shards"] = shards.into();
    }
    (status, axum::Json(body)).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// An API failure: the HTTP status and the protocol error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Protocol error code.
    pub code: ErrorCode,
    /// What went wrong, for the backend developer.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.code(), "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    if key.is_empty() {
        return false;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("apikey ")
                .or_else(|| v.strip_prefix("Apikey "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    // Constant-time comparison: the key must not leak through response timing.
    given.is_some_and(|g| subtle::ConstantTimeEq::ct_eq(g.trim().as_bytes(), key.as_bytes()).into())
}

async fn call(
    State(api): State<Api>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&headers, &api.key) {
        let message = if api.key.is_empty() {
            "the API is disabled until [api] key is set"
        } else {
            "wrong or missing API key (Authorization: apikey KEY, or X-API-Key: KEY)"
        };
        return ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
            .into_response();
    }
    let collect = Limited::new(body, api.max_body).collect();
    let bytes: Bytes = match tokio::time::timeout(api.body_timeout, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                format!("request body not received within {:?}", api.body_timeout),
            )
            .into_response();
        }
        Ok(Err(_)) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::LimitExceeded,
                format!("request body over {} bytes", api.max_body),
            )
            .into_response();
        }
    };
    match call_method(&api.node, &method, &bytes).await {
        Ok(result) => axum::Json(serde_json::json!({ "result": result })).into_response(),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(%method, error = %e.message, "API call failed");
            }
            e.into_response()
        }
    }
}
