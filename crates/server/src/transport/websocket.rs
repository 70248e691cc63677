//! The WebSocket transport: where a client's connection enters switchboard.
//!
//! [`upgrade`] checks the handshake (answering `400`/`403`/`426` with a one-line reason), answers
//! `101`, and spawns the connection's task once hyper hands over the socket. Every connection task is
//! tracked by the server's shutdown, which asks it to close with 1001 and waits for it to finish.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use switchboard_hub::{End, ForwardedHeaders, Lane, Node, ShutdownSignal, Upstream, Wire, drive};

use crate::limits::Limits;
use switchboard_protocol::{DisconnectCode, Frame};
use switchboard_websocket::{
    CloseCode, Config, Error, Message, MessageRef, PingCarrier, SharedMessage, WebSocket, handshake,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use super::socket::Io;
use super::socket::Writer;

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
pub fn upgrade<F, Fut>(endpoint: &Endpoint, req: Request, app: F) -> Response
where
    F: FnOnce(WebSocket<Io>, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (upgrading, response) = match Upgrading::accept(endpoint, req) {
        Ok(accepted) => accepted,
        Err(refused) => return refused,
    };
    let shutdown = endpoint.shutdown.clone();
    endpoint.tracker.spawn(async move {
        // `let else`, not `if let`: the scrutinee would stay in the future through `app`'s await.
        let Some(ws) = upgrading.open().await else {
            return;
        };
        app(ws, shutdown).await;
    });
    response
}

/// An accepted handshake whose connection hyper has yet to hand over: all that the connection's task
/// needs of the request, so that nothing else of it (headers, extensions) outlives the handshake.
struct Upgrading {
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: Arc<Config>,
    deflate: Option<switchboard_websocket::DeflateParams>,
}

impl Upgrading {
    /// Checks the handshake: the answer to send (`101`) and what to open the connection with, or
    /// the refusal (`400`/`403`/`426` with a one-line reason).
    #[allow(clippy::result_large_err)] // both sides are responses, built once per handshake
    fn accept(endpoint: &Endpoint, mut req: Request) -> Result<(Self, Response), Response> {
        let accepted = match handshake::accept(&req, &endpoint.config) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, path = %req.uri().path(), "WebSocket handshake refused");
                return Err(e.response().map(Body::from));
            }
        };
        let upgrading = Self {
            on_upgrade: hyper::upgrade::on(&mut req),
            config: Arc::clone(&endpoint.config),
            deflate: accepted.deflate,
        };
        Ok((upgrading, accepted.response().map(|()| Body::empty())))
    }

    /// The connection, once hyper hands it over (`None`: it did not).
    async fn open(self) -> Option<WebSocket<Io>> {
        match self.on_upgrade.await {
            Ok(upgraded) => Some(WebSocket::new(
                Io::from_upgraded(upgraded),
                self.config,
                self.deflate,
            )),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                None
            }
        }
    }
}

/// Bytes of replies and pushes moved from a client's session into its WebSocket write queue at a time.
/// The rest waits in the session, where the slow-consumer bound counts it.
const WS_QUEUE_CHUNK: usize = 64 << 10;

/// Axum handler for the client protocol endpoint (`/connection/websocket`): runs one client of the
/// protocol in docs/protocol.md over WebSocket. Text frames in go to the client's command handler;
/// replies and pushes queued on its session go out, shared encodings and all.
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
    let (upgrading, response) = match Upgrading::accept(&endpoint, req) {
        Ok(accepted) => accepted,
        Err(refused) => return refused,
    };
    let task = client_task(
        upgrading,
        node,
        headers,
        endpoint.shutdown.clone(),
        endpoint.restart.clone(),
        permit,
    );
    endpoint.tracker.spawn(task);
    response
}

/// One client's task, for the connection's whole life: what it holds (its size) is what every idle
/// client costs, so it is one flat future (see the test below) rather than `upgrade` and a client
/// function nested, each level of which kept its own copy of the connection and of its arguments.
#[allow(clippy::manual_async_fn)] // on purpose: an `async fn` keeps its arguments twice
fn client_task(
    upgrading: Upgrading,
    node: Arc<Node>,
    headers: Option<ForwardedHeaders>,
    shutdown: CancellationToken,
    restart: crate::config::ShutdownConfig,
    permit: Option<crate::limits::Permit>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // `let else`, not `if let`: the scrutinee would stay in the future through `drive`'s await.
        let Some(ws) = upgrading.open().await else {
            return;
        };
        let client = node.client_with("websocket", headers);
        let span = tracing::debug_span!("client", id = %client.id(), transport = "websocket");
        let wire = WsWire::new(ws, &node);
        drive(client, wire, Some(shutdown), || {
            restart.reconnect_delay_ms()
        })
        .instrument(span)
        .await;
        drop(permit);
    }
}

/// A client's WebSocket connection as a [`Wire`].
struct WsWire {
    ws: WebSocket<Io>,
    bytes_in: Counter,
    bytes_out: Counter,
    /// Bytes sent since the last flush, counted at once: the counter is shared by every connection.
    sent: u64,
    /// The `disconnect` push and the close frame are sent: the close handshake is to be waited for.
    closing: bool,
    /// The fan-out's way to this connection's socket (plain TCP without compression context
    /// takeover; see [`super::socket`]), kept to tell it when the connection is busy or idle.
    lane: Option<Arc<Writer>>,
}

impl WsWire {
    fn new(mut ws: WebSocket<Io>, node: &Node) -> Self {
        let bytes_out = node.metrics().bytes("websocket", "out");
        let lane = match (ws.get_ref().writer(), ws.shared_framing()) {
            (Some(writer), Some(framing)) => {
                let messages_out = node.metrics().messages_out("websocket");
                writer.open_lane(framing, messages_out, bytes_out.clone());
                Some(Arc::clone(writer))
            }
            _ => None,
        };
        if let Some(lane) = &lane {
            // The keepalive ping rides on a publication when one goes out near its time.
            ws.set_ping_carrier(Arc::clone(lane) as Arc<dyn PingCarrier>);
        }
        Self {
            ws,
            bytes_in: node.metrics().bytes("websocket", "in"),
            bytes_out,
            sent: 0,
            closing: false,
            lane,
        }
    }
}

impl Wire for WsWire {
    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Upstream> {
        if let Some(lane) = &self.lane
            && let Poll::Ready(Err(e)) = lane.poll_rest(cx)
        {
            tracing::debug!(error = %e, "WebSocket connection ended");
            return Poll::Ready(Upstream::Gone(None));
        }
        // Polling also writes whatever is queued.
        let Poll::Ready(next) = self.ws.poll_recv(cx) else {
            // Everything queued is written: the fan-out may write the next publication itself.
            if let Some(lane) = &self.lane
                && self.ws.queued_bytes() == 0
                && self.ws.is_open()
                && !self.closing
            {
                lane.idle();
            }
            return Poll::Pending;
        };
        Poll::Ready(match next {
            Some(Ok(Message::Text(frame))) => {
                self.bytes_in.inc_by(frame.len() as u64);
                Upstream::Commands(frame)
            }
            Some(Ok(Message::Binary(_))) => Upstream::End(DisconnectCode::BadRequest),
            Some(Err(e)) => {
                log_end(&e);
                // The connection already sent its close (3012) for an unanswered ping: counted
                // under that code.
                Upstream::Gone(matches!(e, Error::PongTimeout).then_some(DisconnectCode::NoPong))
            }
            None => Upstream::Gone(None),
        })
    }

    fn ready(&self) -> bool {
        self.ws.queued_bytes() < WS_QUEUE_CHUNK
    }

    fn send(&mut self, frame: Frame) -> bool {
        if let Some(lane) = &self.lane {
            lane.busy();
        }
        self.sent += frame.len() as u64;
        // An error means the connection is closing: polling goes on until the handshake is over.
        let _ = if frame.is_shared() {
            // Framed (and compressed) by the first subscriber's connection, for all of them.
            let msg = frame.encoded(|text| SharedMessage::new(Message::Text(text.clone())));
            self.ws.send_shared(&msg)
        } else {
            self.ws.send(Message::Text(frame.text().clone()))
        };
        self.ready()
    }

    fn flush(&mut self) {
        self.bytes_out.inc_by(std::mem::take(&mut self.sent));
    }

    fn is_open(&self) -> bool {
        self.ws.is_open()
    }

    fn lane(&self) -> Option<Arc<dyn Lane>> {
        self.lane.clone().map(|lane| lane as Arc<dyn Lane>)
    }

    fn end(&mut self, end: End) {
        if let Some(lane) = &self.lane {
            lane.busy();
        }
        let End::Tell { code, push } = end else {
            return;
        };
        let _ = self.ws.send(Message::Text(push));
        // A restart is what WebSocket's own 1001 says; other codes travel as themselves.
        let close = if code == DisconnectCode::Shutdown {
            CloseCode::GOING_AWAY
        } else {
            CloseCode(code.code())
        };
        self.ws.close(close, code.reason());
        self.closing = true;
    }

    async fn finish(mut self, _code: Option<DisconnectCode>) {
        if self.closing {
            // Bounded by close_timeout and write_timeout.
            while let Some(Ok(_)) = self.ws.recv().await {}
        }
    }
}

/// Axum handler for the echo endpoint.
pub async fn echo_handler(State(endpoint): State<Endpoint>, req: Request) -> Response {
    upgrade(&endpoint, req, echo)
}

/// Echoes every message back: the Autobahn suite's and the benchmarks' endpoint.
///
/// Messages are taken borrowed ([`WebSocket::poll_each`]): a whole message costs no allocation on
/// its way in, only its copy into the write queue, and the echoes of one read leave in one write.
pub async fn echo(mut ws: WebSocket<Io>, shutdown: CancellationToken) {
    fn echo_back(ws: &mut WebSocket<Io>, msg: MessageRef<'_>) {
        // An error here means the connection is closing: keep polling so the close handshake
        // completes.
        let _ = ws.send_ref(msg);
    }
    let mut stop = ShutdownSignal::new(&shutdown);
    let end = std::future::poll_fn(|cx| {
        // Messages first; the shutdown signal only when the socket has nothing ready.
        if let Poll::Ready(end) = ws.poll_each(cx, echo_back) {
            return Poll::Ready(end);
        }
        if ws.is_open() && stop.poll(cx).is_ready() {
            ws.close(CloseCode::GOING_AWAY, "server shutting down");
            // Polling again sends the close frame and registers for the answer.
            return ws.poll_each(cx, echo_back);
        }
        Poll::Pending
    })
    .await;
    if let Err(e) = end {
        log_end(&e);
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

#[cfg(test)]
mod tests {
    use switchboard_engine::MemoryEngine;
    use switchboard_hub::NodeConfig;

    use super::*;

    /// Every connected client's task holds this future for the connection's whole life: its size is
    /// most of what an idle client costs. Nested (the generic `upgrade` running a `client` function
    /// that called `drive`), its task's allocation was 4,864 bytes in a release build. The budget is
    /// for an unoptimised build, where futures are larger: 1,256 bytes when it was set.
    #[test]
    fn an_idle_clients_task_stays_small() {
        let node = Node::new(Arc::new(MemoryEngine::new()), NodeConfig::default(), None);
        let mut req = Request::new(Body::empty());
        let upgrading = Upgrading {
            on_upgrade: hyper::upgrade::on(&mut req),
            config: Arc::new(Config::default()),
            deflate: None,
        };
        let task = client_task(
            upgrading,
            node,
            None,
            CancellationToken::new(),
            crate::config::ShutdownConfig::default(),
            None,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1300, "an idle client's task is {size} bytes");
    }
}
