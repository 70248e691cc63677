//! Engine.IO polling requests that cross nodes, both ways: no sticky sessions. A session lives on the
//! node that opened it, and its sid names that node (`<node>-<random>`). A poll or a POST that lands
//! on another node is forwarded there ([`poll`], [`post`]) through the relay of `../relay.rs` (its
//! limits, its waits, its rule for a node that may only seem gone); one that another node forwarded
//! here is run against the local session with the very functions that serve a local request
//! ([`serve`]), and answered: the client gets the same status, `Content-Type` and body as from the
//! session's own node.
//!
//! What the relay cannot prove is answered as Engine.IO has no word for it: `503` with `Retry-After`
//! (too many relayed requests, or Redis down or recovering), which Socket.IO clients take as a
//! transport error (they open a new session, and recover its rooms with connection state recovery).
//! A node that is gone is `400` `Session ID unknown`, as for any unknown session.
//!
//! A poll whose client goes away on the node it landed on closes the session on its node, as a
//! local poll whose connection closes does (the reference server's rule): the relay cancels it
//! there rather than let the packets it would take go to nobody.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchboard_socketio::eio::{BadRequest, RequestError};

use super::super::relay::{
    Answer, Incoming, Op, Relay, RelayError, Service, Unread, from_answer, to_answer,
};
use super::engine::{self, Engine, WeakEngine, error};

/// Runs the Engine.IO requests other nodes relay to this one's sessions, for `endpoints`, each in
/// a task of its own.
pub fn serve(relay: &Relay, endpoints: &[Engine]) {
    let endpoints: Vec<(String, WeakEngine)> = endpoints
        .iter()
        .map(|e| (e.settings().path.clone(), e.downgrade()))
        .collect();
    relay.serve(
        Service::EngineIo,
        Arc::new(move |relay: &Arc<Relay>, incoming: Incoming| {
            let relay = Arc::clone(relay);
            let engine = match &incoming.op {
                Op::EioPoll { path, .. } | Op::EioPost { path, .. } => endpoints
                    .iter()
                    .find(|(p, _)| p == path)
                    .and_then(|(_, e)| e.upgrade()),
                _ => None,
            };
            match engine {
                Some(engine) => {
                    let tracker = engine.settings().websocket.tracker.clone();
                    tracker.spawn(run(engine, relay, incoming));
                }
                // Another path than ours (the nodes disagree on `[socketio] path`), or shutting
                // down: no such session here.
                None => {
                    tokio::spawn(async move {
                        let (to, id) = (incoming.from.clone(), incoming.id);
                        relay.answer(&to, id, Answer::Unserved, Bytes::new()).await;
                    });
                }
            }
        }),
    );
}

/// Runs a request another node relayed here against this node's session, with the functions that
/// serve the same request arriving here, and sends the answer back.
async fn run(engine: Engine, relay: Arc<Relay>, incoming: Incoming) {
    let Incoming {
        from,
        id,
        op,
        body,
        permit,
        cancelled,
        ..
    } = incoming;
    let (answer, body) = if permit.is_none() {
        tracing::debug!(node = %from, "too many relayed requests at once: answered busy");
        (Answer::Busy, Bytes::new())
    } else {
        let result = match op {
            Op::EioPoll { sid, .. } => {
                let poll = engine::poll(&engine, &sid);
                tokio::select! {
                    result = poll => result,
                    // Its client went away on the other node: dropping the poll closes the session,
                    // as for a local poll whose connection closed.
                    () = cancelled.cancelled() => return,
                }
            }
            // Never held: run to the end even when nobody waits, so that the session does not keep
            // a POST begun and never finished.
            Op::EioPost {
                sid,
                binary,
                unread,
                ..
            } => {
                let body = unread.map_or(Ok(body), |u| Err(unread_error(u)));
                engine::post(&engine, &sid, binary, async { body }).await
            }
            // Routed by service: fallback requests never come here.
            _ => {
                relay
                    .answer(&from, id, Answer::Unserved, Bytes::new())
                    .await;
                return;
            }
        };
        to_answer(result.unwrap_or_else(|e| error(&e))).await
    };
    relay.answer(&from, id, answer, body).await;
    drop(permit);
}

/// Relays a poll (GET) of session `sid` to its node `node`, and answers what it answered.
pub async fn poll(engine: &Engine, node: &str, sid: &str) -> Response {
    let settings = engine.settings();
    // A held poll is answered by the next ping at the latest, or by the close when no packet came
    // pingTimeout after it.
    let hold = settings.engine.ping_interval + settings.engine.ping_timeout;
    let op = Op::EioPoll {
        path: settings.path.clone(),
        sid: sid.to_owned(),
    };
    forward(engine, node, sid, op, Bytes::new(), hold).await
}

/// Relays a POST to session `sid` to its node `node`, with its body as read here (or why it could
/// not be), and answers what it answered.
pub async fn post(
    engine: &Engine,
    node: &str,
    sid: &str,
    binary: bool,
    body: Result<Bytes, RequestError>,
) -> Response {
    let (body, unread) = match body {
        Ok(body) => (body, None),
        Err(e) => (Bytes::new(), Some(unread(e))),
    };
    let op = Op::EioPost {
        path: engine.settings().path.clone(),
        sid: sid.to_owned(),
        binary,
        unread,
    };
    // Its packets are handed to the session without waiting on the application.
    forward(engine, node, sid, op, body, Duration::ZERO).await
}

async fn forward(
    engine: &Engine,
    node: &str,
    sid: &str,
    op: Op,
    body: Bytes,
    hold: Duration,
) -> Response {
    let answer = engine.settings().relay.call(node, op, body, hold).await;
    match answer {
        Ok((answer, body)) => from_answer(&answer, body).unwrap_or_else(|| {
            tracing::warn!(
                node,
                ?answer,
                "unexpected answer to a relayed Engine.IO request"
            );
            internal()
        }),
        Err(RelayError::Gone(_)) => error(&RequestError::UnknownSid(sid.to_owned())),
        Err(e @ RelayError::Busy) => unavailable(&e.to_string()),
        Err(RelayError::Unavailable(m)) => {
            // The detail names Redis addresses: for the log, not for clients.
            tracing::debug!(error = %m, "cannot relay an Engine.IO request");
            unavailable("the session's node cannot be reached for now: retry shortly")
        }
        Err(RelayError::Malformed(m)) => {
            tracing::warn!(node, error = %m, "unreadable answer from another node");
            internal()
        }
    }
}

/// 503 with `Retry-After: 1`, as the endpoint's other refusals for load (the connection limits).
fn unavailable(reason: &str) -> Response {
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Body::from(reason.to_owned()),
    )
        .into_response();
    let headers = resp.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn internal() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "unreadable answer from the session's node",
    )
        .into_response()
}

/// A body read error, to send to the session's node.
fn unread(e: RequestError) -> Unread {
    match e {
        RequestError::PayloadTooLarge(limit) => Unread::TooLarge { limit },
        RequestError::BadRequest(BadRequest::Body(why)) => Unread::Failed { why },
        other => Unread::Failed {
            why: other.to_string(),
        },
    }
}

/// The error the session's node answers for a body the other node could not read: the one it
/// answers when it cannot read one itself.
fn unread_error(unread: Unread) -> RequestError {
    match unread {
        Unread::TooLarge { limit } => RequestError::PayloadTooLarge(limit),
        Unread::Failed { why } => BadRequest::Body(why).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_read_error_crosses_nodes_unchanged() {
        for e in [
            RequestError::PayloadTooLarge(1_000_000),
            BadRequest::Body("not received within 10s ([socketio] body_read_timeout)".into())
                .into(),
        ] {
            let back = unread_error(unread(e.clone()));
            assert_eq!((back.status(), back.body()), (e.status(), e.body()));
            assert_eq!(back, e);
        }
    }
}
