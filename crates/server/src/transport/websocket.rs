//! The WebSocket transport: where a client's connection enters switchboard.
//!
//! [`upgrade`] checks the handshake (answering `400`/`403`/`426` with a one-line reason), answers
//! `101`, and spawns the connection's task once hyper hands over the socket. Every connection task is
//! tracked by the server's shutdown, which asks it to close with 1001 and waits for it to finish.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchboard_websocket::{CloseCode, Config, Error, WebSocket, handshake};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The stream a WebSocket connection runs over once hyper has handed it over.
pub type Io = TokioIo<Upgraded>;

/// One WebSocket endpoint: its settings and the server's shutdown signal and task tracker.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Handshake policy, limits, timeouts, compression.
    pub config: Arc<Config>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so that shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// Upgrades `req` and runs `app` on the connection; answers the handshake error otherwise.
pub fn upgrade<F, Fut>(endpoint: &Endpoint, mut req: Request, app: F) -> Response
where
    F: FnOnce(WebSocket<Io>, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let accepted = match handshake::accept(&req, &endpoint.config) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, path = %req.uri().path(), "WebSocket handshake refused");
            return e.response().map(Body::from);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = Arc::clone(&endpoint.config);
    let shutdown = endpoint.shutdown.clone();
    let deflate = accepted.deflate;
    endpoint.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                app(
                    WebSocket::new(TokioIo::new(upgraded), config, deflate),
                    shutdown,
                )
                .await
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    });
    accepted.response().map(|()| Body::empty())
}

/// Axum handler for the echo endpoint.
pub async fn echo_handler(State(endpoint): State<Endpoint>, req: Request) -> Response {
    upgrade(&endpoint, req, echo)
}

/// Echoes every message back: the Autobahn suite's and the benchmarks' endpoint.
///
/// Messages decoded from one read are all queued before the next `recv` writes them, so a pipelining
/// client gets its echoes in one write rather than one per message.
pub async fn echo(mut ws: WebSocket<Io>, shutdown: CancellationToken) {
    // Created once: a fresh `cancelled()` per message would lock the token's waiter list every time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled, if ws.is_open() => ws.close(CloseCode::GOING_AWAY, "server shutting down"),
            next = ws.recv() => match next {
                Some(Ok(msg)) => {
                    if ws.send(msg).is_err() {
                        // Closing: keep polling so the close handshake completes.
                        continue;
                    }
                }
                Some(Err(e)) => {
                    log_end(&e);
                    return;
                }
                None => return,
            },
        }
    }
}

fn log_end(e: &Error) {
    match e {
        Error::Protocol(p) => {
            tracing::debug!(error = %p, code = p.close_code().0, "WebSocket client broke the protocol")
        }
        other => tracing::debug!(error = %other, "WebSocket connection ended"),
    }
}
