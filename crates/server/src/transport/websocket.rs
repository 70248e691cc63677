//! The WebSocket transport: where a client's connection enters switchboard.
//!
//! [`upgrade`] checks the handshake (answering `400`/`403`/`426` with a one-line reason), answers
//! `101`, and spawns the connection's task once hyper hands over the socket. Every connection task is
//! tracked by the server's shutdown, which asks it to close with 1001 and waits for it to finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchboard_hub::{ForwardedHeaders, Node, Signal};

use crate::limits::Limits;
use switchboard_protocol::{DisconnectCode, encode};
use switchboard_websocket::{CloseCode, Config, Error, Message, WebSocket, handshake};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

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
    /// Connection limits; `None` for endpoints they do not apply to (the echo endpoint).
    pub limits: Option<Arc<Limits>>,
    /// How clients are told to come back after a shutdown (the push's `delay`).
    pub restart: crate::config::ShutdownConfig,
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

/// Bytes of replies and pushes moved from a client's session into its WebSocket write queue at a time.
/// The rest waits in the session, where the slow-consumer bound counts it.
const WS_QUEUE_CHUNK: usize = 64 << 10;

/// Axum handler for the client protocol endpoint (`/connection/websocket`).
pub async fn client_handler(
    State((endpoint, node)): State<(Endpoint, Arc<Node>)>,
    req: Request,
) -> Response {
    // Admitted before the handshake is even checked: a refused client costs no state.
    let permit = match (&endpoint.limits, super::peer_ip(req.extensions())) {
        (Some(limits), Some(ip)) => match limits.admit(ip) {
            Ok(p) => Some(p),
            Err(refusal) => {
                tracing::debug!(%ip, ?refusal, "connection refused by a limit");
                return refusal.response();
            }
        },
        _ => None,
    };
    // Only the headers a proxy asks for outlive the handshake (none without proxies).
    let headers = super::forwarded_headers(&node, req.headers());
    let restart = endpoint.restart.clone();
    upgrade(&endpoint, req, move |ws, shutdown| async move {
        client(ws, shutdown, node, headers, restart).await;
        drop(permit);
    })
}

/// Runs one client of the protocol in docs/protocol.md over WebSocket: text frames in go to the
/// client's command handler; replies and pushes queued on its session go out, shared encodings and all.
pub async fn client(
    ws: WebSocket<Io>,
    shutdown: CancellationToken,
    node: Arc<Node>,
    headers: Option<ForwardedHeaders>,
    restart: crate::config::ShutdownConfig,
) {
    let client = node.client_with("websocket", headers);
    let span = tracing::debug_span!("client", id = %client.id(), transport = "websocket");
    run_client(ws, shutdown, &node, client, &restart)
        .instrument(span)
        .await;
}

async fn run_client(
    mut ws: WebSocket<Io>,
    shutdown: CancellationToken,
    node: &Node,
    mut client: switchboard_hub::Client,
    restart: &crate::config::ShutdownConfig,
) {
    let bytes_in = node.metrics().bytes("websocket", "in");
    let bytes_out = node.metrics().bytes("websocket", "out");
    let session = Arc::clone(client.session());
    let mut stop = ShutdownSignal::new(&shutdown);
    let end = loop {
        let event = std::future::poll_fn(|cx| {
            loop {
                // Incoming frames first; polling also writes whatever is queued.
                if let Poll::Ready(next) = ws.poll_recv(cx) {
                    return Poll::Ready(Event::Received(next));
                }
                // Move queued replies and pushes into the socket's write queue, a chunk at a time.
                if ws.queued_bytes() < WS_QUEUE_CHUNK {
                    let mut sent = 0;
                    let drained = session.poll_drain(cx, |msg| {
                        sent += msg.message().payload().len();
                        let _ = ws.send_shared(&msg);
                        ws.queued_bytes() < WS_QUEUE_CHUNK
                    });
                    if sent > 0 {
                        bytes_out.inc_by(sent as u64);
                    }
                    match drained {
                        Poll::Ready(Some(Signal::Disconnect(code))) => {
                            return Poll::Ready(Event::Disconnect(code));
                        }
                        Poll::Ready(Some(Signal::Control)) => return Poll::Ready(Event::Control),
                        Poll::Ready(None) => continue,
                        Poll::Pending => {}
                    }
                }
                if ws.is_open() && stop.poll(cx).is_ready() {
                    return Poll::Ready(Event::Disconnect(DisconnectCode::Shutdown));
                }
                return Poll::Pending;
            }
        })
        .await;
        match event {
            Event::Received(Some(Ok(Message::Text(frame)))) => {
                bytes_in.inc_by(frame.len() as u64);
                if let Err(code) = client.handle_frame(&frame).await {
                    break Some(code);
                }
            }
            Event::Received(Some(Ok(Message::Binary(_)))) => {
                break Some(DisconnectCode::BadRequest);
            }
            Event::Received(Some(Err(e))) => {
                log_end(&e);
                // The connection already sent its close (3012) for an unanswered ping: counted
                // under that code.
                break matches!(e, Error::PongTimeout).then_some(DisconnectCode::NoPong);
            }
            Event::Received(None) => break None,
            Event::Disconnect(code) => break Some(code),
            Event::Control => client.apply_controls().await,
        }
    };
    if let Some(code) = end
        && ws.is_open()
    {
        // Replies queued before the disconnect (an error explaining it, say) go out first; a slow
        // client's queue was already dropped by its session.
        let _ = session.poll_drain(&mut Context::from_waker(Waker::noop()), |msg| {
            let _ = ws.send_shared(&msg);
            true
        });
        let delay = (code == DisconnectCode::Shutdown).then(|| restart.reconnect_delay_ms());
        let _ = ws.send(Message::Text(encode::disconnect_push_after(code, delay)));
        // A restart is what WebSocket's own 1001 says; other codes travel as themselves.
        let close = if code == DisconnectCode::Shutdown {
            CloseCode::GOING_AWAY
        } else {
            CloseCode(code.code())
        };
        ws.close(close, code.reason());
        // Counted and out of its channels now, when the decision is made: the close handshake may
        // take up to write_timeout with a client that does not read (a slow one).
        client.close(end).await;
        while let Some(Ok(_)) = ws.recv().await {}
        return;
    }
    client.close(end).await;
}

/// What woke a client's task.
enum Event {
    Received(Option<Result<Message, Error>>),
    Disconnect(DisconnectCode),
    Control,
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
    let mut stop = ShutdownSignal::new(&shutdown);
    loop {
        let next = std::future::poll_fn(|cx| {
            // Messages first; the shutdown signal only when the socket has nothing ready.
            if let Poll::Ready(next) = ws.poll_recv(cx) {
                return Poll::Ready(next);
            }
            if ws.is_open() && stop.poll(cx).is_ready() {
                ws.close(CloseCode::GOING_AWAY, "server shutting down");
                // Polling again sends the close frame and registers for the answer.
                return ws.poll_recv(cx);
            }
            Poll::Pending
        })
        .await;
        match next {
            Some(Ok(msg)) => {
                // An error here means the connection is closing: keep polling so the close handshake
                // completes.
                let _ = ws.send(msg);
            }
            Some(Err(e)) => {
                log_end(&e);
                return;
            }
            None => return,
        }
    }
}

/// The server's shutdown signal, cheap to check on every wake-up of a connection task.
///
/// Polling a `WaitForCancellationFuture` locks the token's waiter list every time, and every
/// connection shares that lock: with ten thousand tasks woken per publication it was contended.
/// This polls it once, to register the task's waker, and afterwards only reads the token's flag;
/// cancelling the token still wakes the task through the registered waker.
struct ShutdownSignal<'a> {
    token: &'a CancellationToken,
    wait: Pin<Box<tokio_util::sync::WaitForCancellationFuture<'a>>>,
    registered: bool,
}

impl<'a> ShutdownSignal<'a> {
    fn new(token: &'a CancellationToken) -> Self {
        Self {
            token,
            wait: Box::pin(token.cancelled()),
            registered: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && !self.token.is_cancelled() {
            return Poll::Pending;
        }
        self.registered = true;
        self.wait.as_mut().poll(cx)
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
