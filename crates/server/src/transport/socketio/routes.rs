//! Every request to an Engine.IO endpoint: the origin policy and CORS headers, the checks of the
//! Engine.IO spec, then each request either runs against a session of this node (`engine.rs`) or,
//! naming another node's session, is relayed there (`relayed.rs`). Opening a session is always
//! local.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use switchboard_socketio::eio::{self, BadRequest, Method, RequestError, Transport};

use super::engine::{self, Engine, error};
use super::relayed;

/// Axum handler for every request to the endpoint's path.
pub async fn handle(State(engine): State<Engine>, req: Request) -> Response {
    let policy = engine.settings();
    // WebSocket handshakes are checked against `[websocket] allowed_origins` by the handshake.
    if !is_upgrade(req.headers())
        && !switchboard_websocket::handshake::origin_allowed(req.headers(), &policy.allowed_origins)
    {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned())
            .unwrap_or_default();
        return error(&RequestError::Forbidden(format!(
            "origin {origin} not allowed"
        )));
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = if req.method() == axum::http::Method::OPTIONS {
        crate::transport::fallback::cors::preflight(req.headers().clone()).await
    } else {
        route(&engine, req).await
    };
    // Added here, on the node the request landed on, to relayed answers too.
    crate::transport::fallback::cors::answer_headers(
        resp.headers_mut(),
        origin,
        policy.allow_credentials,
    );
    resp
}

async fn route(engine: &Engine, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = Method::from_name(req.method().as_str());
    let request = match eio::verify(&query, method, is_upgrade(req.headers())) {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let remote = request
        .sid
        .as_deref()
        .and_then(|sid| engine.remote_node(sid));
    let result = match (request.transport, request.sid.as_deref(), method) {
        (Transport::Polling, None, _) => match engine.admit(&req) {
            Ok(permit) => engine::handshake(engine, permit),
            Err(refused) => return refused.response(),
        },
        (Transport::Polling, Some(sid), Method::Get) => match remote {
            Some(node) => return relayed::poll(engine, node, sid).await,
            None => engine::poll(engine, sid).await,
        },
        (Transport::Polling, Some(sid), Method::Post) => {
            let binary = is_binary(req.headers());
            let body = engine.read_body(req.into_body());
            match remote {
                // Read here, with this node's limits, so that the session's node gets it whole.
                Some(node) => return relayed::post(engine, node, sid, binary, body.await).await,
                None => engine::post(engine, sid, binary, body).await,
            }
        }
        (Transport::Polling, Some(_), Method::Other) => Err(BadRequest::Method.into()),
        (Transport::WebSocket, None, _) => match engine.admit(&req) {
            Ok(permit) => engine::websocket_session(engine, req, permit),
            Err(refused) => return refused.response(),
        },
        // Relaying a WebSocket would mean relaying every frame both ways for its whole life. The
        // client takes the refusal as a failed upgrade probe and goes on polling, which is relayed.
        (Transport::WebSocket, Some(_), _) if remote.is_some() => {
            Err(BadRequest::OtherServer.into())
        }
        (Transport::WebSocket, Some(sid), _) => engine::websocket_upgrade(engine, sid, req).await,
    };
    result.unwrap_or_else(|e| error(&e))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Whether a POST says its body is binary, which Engine.IO v4 refuses (the session decides).
fn is_binary(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(b"application/octet-stream")
    })
}
