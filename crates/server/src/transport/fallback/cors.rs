//! Cross-origin requests to the fallback endpoints. A page on another origin may use them only if
//! `[fallback] allowed_origins` lets it (the same patterns as the WebSocket handshake's origin check);
//! an allowed `Origin` is reflected, never answered with `*`, so credentials can be allowed safely.
//! Every response also gets `Cache-Control: no-store` unless it set its own.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::FallbackError;

/// Which origins may call the fallback endpoints.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `[fallback] allowed_origins`.
    pub allowed_origins: Vec<String>,
    /// `[fallback] allow_credentials`.
    pub allow_credentials: bool,
}

/// Middleware: refuses a disallowed `Origin` with 403, and adds the CORS headers to the answer.
pub async fn apply(State(policy): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed =
        switchboard_websocket::handshake::origin_allowed(req.headers(), &policy.allowed_origins);
    let mut resp = if allowed {
        next.run(req).await
    } else {
        let shown = origin
            .as_ref()
            .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned())
            .unwrap_or_default();
        tracing::debug!(origin = %shown, path = %req.uri().path(), "fallback request from a disallowed origin");
        FallbackError::Origin(shown).into_response()
    };
    answer_headers(
        resp.headers_mut(),
        origin.filter(|_| allowed),
        policy.allow_credentials,
    );
    resp
}

/// The headers of an answer to an HTTP transport's request (the fallbacks', Engine.IO polling's):
/// `origin` (an allowed one) may read it, with credentials if `allow_credentials`.
pub(crate) fn answer_headers(
    headers: &mut HeaderMap,
    origin: Option<HeaderValue>,
    allow_credentials: bool,
) {
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if allow_credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    // Answers differ by origin (allowed or not): caches must keep them apart.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Answers a CORS preflight (`OPTIONS`) for an allowed origin (the middleware refused the others).
pub async fn preflight(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    // Whatever headers the page asks to send (Content-Type, Last-Event-ID...): the origin is trusted.
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    resp
}
