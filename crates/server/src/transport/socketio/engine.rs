//! The Engine.IO server: the session registry, the requests against a session of this node
//! (whether they arrived here or were relayed from the node they landed on: the same functions serve
//! both, so a relayed request is answered exactly as a local one), and one task per session that
//! drives its `eio::Session` with HTTP requests, WebSocket frames and time, and hands its messages
//! to the application on top ([`App`]). `routes.rs` decides where each request goes.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use parking_lot::Mutex;
use switchboard_socketio::eio::{
    self, BadRequest, Data, Frame, RequestError, Session, Transport, WsError, WsOutcome,
};
use switchboard_websocket::{CloseCode, Message, SharedMessage, WebSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::super::relay::Relay;
use super::super::websocket::{Endpoint, Io, upgrade};

/// What runs on top of one Engine.IO session: Socket.IO, or the conformance echo.
pub trait App: Send + 'static {
    /// A message from the client: the messages to send back, or why the session must close.
    fn on_message(&mut self, data: Data, now: std::time::Instant) -> Result<Vec<Data>, String>;
    /// When [`App::on_timer`] must run.
    fn next_deadline(&self) -> Option<std::time::Instant>;
    /// The application's timers (the connect timeout).
    fn on_timer(&mut self, now: std::time::Instant) -> Result<Vec<Data>, String>;
    /// Messages the application sends of its own accord (pushes from the hub), or why the session
    /// must close.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<Data>, String>> {
        let _ = cx;
        Poll::Pending
    }
    /// The bytes the session holds for its client now (after each change): the hub counts them
    /// against the slow-consumer bound, as for every transport.
    fn on_buffered(&mut self, bytes: usize) {
        let _ = bytes;
    }
}

/// Makes the application of each new session.
pub type AppFactory = Arc<dyn Fn(std::time::Instant) -> Box<dyn App> + Send + Sync>;

/// The endpoint's settings.
pub struct Settings {
    /// The endpoint's path, which names it in requests relayed from other nodes.
    pub path: String,
    /// How requests for other nodes' sessions reach them; its node id starts this node's sids.
    pub relay: Arc<Relay>,
    /// Engine.IO settings (heartbeat, maxPayload, upgrade timeout).
    pub engine: eio::Config,
    /// The WebSocket endpoint sessions use (limits, shutdown, tracker).
    pub websocket: Endpoint,
    /// How long a POST body may take.
    pub body_read_timeout: Duration,
    /// CORS: origins allowed besides the server's own.
    pub allowed_origins: Vec<String>,
    /// CORS: allow credentials.
    pub allow_credentials: bool,
    /// The application.
    pub app: AppFactory,
    /// Connection limits: each session counts as one client connection of its address.
    pub limits: Option<Arc<crate::limits::Limits>>,
}

/// One Engine.IO endpoint: its settings and its open sessions (cheap to clone: all clones share
/// them).
#[derive(Clone)]
pub struct Engine(Arc<Shared>);

/// What the clones of an [`Engine`] share.
pub struct Shared {
    settings: Settings,
    sessions: Mutex<HashMap<String, mpsc::Sender<Cmd>>>,
    next_ws: AtomicU64,
}

impl Deref for Engine {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// An [`Engine`] that does not keep it alive: what the relay's runner holds (the node owns the
/// relay, and an endpoint's application holds the node).
#[derive(Clone)]
pub struct WeakEngine(Weak<Shared>);

impl WeakEngine {
    /// The endpoint, unless it is gone (the server is shutting down).
    pub fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(Engine)
    }
}

impl Engine {
    /// An endpoint with no session yet.
    pub fn new(settings: Settings) -> Self {
        Self(Arc::new(Shared {
            settings,
            sessions: Mutex::default(),
            next_ws: AtomicU64::new(1),
        }))
    }

    /// The endpoint's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A handle that does not keep the endpoint alive.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.0))
    }

    /// The node holding the session `sid` names, when it is another node.
    pub fn remote_node<'a>(&self, sid: &'a str) -> Option<&'a str> {
        self.settings.relay.remote_node(sid)
    }

    /// Reads a POST body of at most `maxPayload` bytes, within `[socketio] body_read_timeout`.
    pub async fn read_body(&self, body: Body) -> Result<Bytes, RequestError> {
        let limit = self.settings.engine.max_payload;
        let waited = self.settings.body_read_timeout;
        match tokio::time::timeout(waited, Limited::new(body, limit).collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(RequestError::PayloadTooLarge(limit))
            }
            Ok(Err(e)) => Err(BadRequest::Body(e.to_string()).into()),
            Err(_) => Err(BadRequest::Body(format!(
                "not received within {waited:?} ([socketio] body_read_timeout)"
            ))
            .into()),
        }
    }

    fn lookup(&self, sid: &str) -> Result<mpsc::Sender<Cmd>, RequestError> {
        self.sessions
            .lock()
            .get(sid)
            .cloned()
            .ok_or_else(|| RequestError::UnknownSid(sid.to_owned()))
    }

    /// Admits a new session from `req`'s address under the connection limits.
    pub fn admit(
        &self,
        req: &Request,
    ) -> Result<Option<crate::limits::Permit>, crate::limits::Refusal> {
        match (
            &self.settings.limits,
            super::super::peer_ip(req.extensions()),
        ) {
            (Some(limits), Some(ip)) => limits.admit(ip).map(Some).inspect_err(|refusal| {
                tracing::debug!(%ip, ?refusal, "Engine.IO session refused by a limit");
            }),
            _ => Ok(None),
        }
    }

    /// Opens a session and starts its task.
    fn open(
        &self,
        transport: Transport,
    ) -> Result<(Session, mpsc::Sender<Cmd>, mpsc::Receiver<Cmd>), RequestError> {
        let mut bytes = [0u8; 15];
        getrandom::fill(&mut bytes)
            .map_err(|e| RequestError::Forbidden(format!("no randomness for a session id: {e}")))?;
        // Named after this node, so that any node can relay the session's requests here.
        let sid = eio::Sid::on_node(self.settings.relay.node_id(), bytes);
        let session = Session::open(
            sid,
            transport,
            self.settings.engine.clone(),
            std::time::Instant::now(),
        );
        let (tx, rx) = mpsc::channel(64);
        self.sessions
            .lock()
            .insert(session.sid().as_str().to_owned(), tx.clone());
        Ok((session, tx, rx))
    }

    fn spawn(
        &self,
        session: Session,
        rx: mpsc::Receiver<Cmd>,
        ws: Option<(u64, mpsc::Sender<WsOut>)>,
        permit: Option<crate::limits::Permit>,
    ) {
        let app = (self.settings.app)(std::time::Instant::now());
        let actor = Actor {
            session,
            app,
            rx,
            held: None,
            ws,
            engine: self.clone(),
            _permit: permit,
        };
        self.settings.websocket.tracker.spawn(actor.run());
    }
}

/// What reaches a session's task.
enum Cmd {
    Poll(oneshot::Sender<Result<String, RequestError>>),
    PostBegin {
        binary: bool,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// Boxed, as is `WsFrame`'s frame: a channel allocates room for 32 commands up front, for
    /// every session, however idle.
    PostBody(Box<(Bytes, oneshot::Sender<Result<(), RequestError>>)>),
    PostAborted,
    WsBegin {
        id: u64,
        out: mpsc::Sender<WsOut>,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    WsFrame {
        id: u64,
        frame: Box<Frame>,
    },
    WsClosed {
        id: u64,
    },
}

/// What a session's task tells its WebSocket.
enum WsOut {
    Frame(Frame),
    Close,
}

/// Frames waiting for a WebSocket before the session counts its client as too slow.
const WS_QUEUE: usize = 1024;

/// The reference server's error answer: the status and `{"code","message"}`.
pub fn error(e: &RequestError) -> Response {
    tracing::debug!(error = %e, "Engine.IO request refused");
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        e.body(),
    )
        .into_response()
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
}

/// A polling handshake (GET without `sid`): a new session, answered with its `open` packet.
pub fn handshake(
    engine: &Engine,
    permit: Option<crate::limits::Permit>,
) -> Result<Response, RequestError> {
    let (mut session, _tx, rx) = engine.open(Transport::Polling)?;
    let body = match session.poll(std::time::Instant::now())? {
        eio::Poll::Respond(body) => body,
        eio::Poll::Hold => String::new(),
    };
    engine.spawn(session, rx, None, permit);
    Ok(text(body))
}

async fn ask<T>(
    tx: &mpsc::Sender<Cmd>,
    sid: &str,
    cmd: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Cmd,
) -> Result<T, RequestError> {
    let (reply, answer) = oneshot::channel();
    let gone = || RequestError::UnknownSid(sid.to_owned());
    tx.send(cmd(reply)).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// A poll (GET) of session `sid`: held until the session has packets for its client.
pub async fn poll(engine: &Engine, sid: &str) -> Result<Response, RequestError> {
    let tx = engine.lookup(sid)?;
    ask(&tx, sid, Cmd::Poll).await.map(text)
}

/// A POST to session `sid` whose body `body` reads (after the session took the POST, so that a
/// second POST meanwhile is refused as an overlap); `binary`: its `Content-Type` was
/// `application/octet-stream`.
pub async fn post(
    engine: &Engine,
    sid: &str,
    binary: bool,
    body: impl Future<Output = Result<Bytes, RequestError>>,
) -> Result<Response, RequestError> {
    let tx = engine.lookup(sid)?;
    ask(&tx, sid, |reply| Cmd::PostBegin { binary, reply }).await?;
    let body = match body.await {
        Ok(body) => body,
        Err(e) => {
            let _ = tx.send(Cmd::PostAborted).await;
            return Err(e);
        }
    };
    ask(&tx, sid, |reply| Cmd::PostBody(Box::new((body, reply)))).await?;
    Ok(([(header::CONTENT_TYPE, "text/html")], "ok").into_response())
}

/// A WebSocket-only session: opened by the upgrade itself.
pub fn websocket_session(
    engine: &Engine,
    req: Request,
    permit: Option<crate::limits::Permit>,
) -> Result<Response, RequestError> {
    let (session, tx, rx) = engine.open(Transport::WebSocket)?;
    let id = engine.next_ws.fetch_add(1, Ordering::Relaxed);
    let (out_tx, out_rx) = mpsc::channel(WS_QUEUE);
    engine.spawn(session, rx, Some((id, out_tx)), permit);
    Ok(attach(engine, req, id, tx, out_rx))
}

/// A WebSocket that probes a polling session, to take it over.
pub async fn websocket_upgrade(
    engine: &Engine,
    sid: &str,
    req: Request,
) -> Result<Response, RequestError> {
    let tx = engine.lookup(sid)?;
    let id = engine.next_ws.fetch_add(1, Ordering::Relaxed);
    let (out_tx, out_rx) = mpsc::channel(WS_QUEUE);
    let begun = ask(&tx, sid, |reply| Cmd::WsBegin {
        id,
        out: out_tx,
        reply,
    })
    .await;
    match begun {
        Ok(()) => Ok(attach(engine, req, id, tx, out_rx)),
        // As the reference server: the WebSocket opens, then closes at once (a 400 would surface
        // in clients as an error rather than a close).
        Err(RequestError::BadRequest(BadRequest::AlreadyUpgraded)) => Ok(upgrade(
            &engine.settings.websocket,
            req,
            |mut ws, _| async move {
                ws.close(CloseCode::NORMAL, "the session already has a WebSocket");
                while let Some(Ok(_)) = ws.recv().await {}
            },
        )),
        Err(e) => Err(e),
    }
}

/// Tells the session its WebSocket is gone, however the connection ends (also when the upgrade
/// never completes and the connection task never runs).
struct WsGuard {
    id: u64,
    tx: mpsc::Sender<Cmd>,
}

impl Drop for WsGuard {
    fn drop(&mut self) {
        let (id, tx) = (self.id, self.tx.clone());
        if let Err(mpsc::error::TrySendError::Full(cmd)) = tx.try_send(Cmd::WsClosed { id }) {
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }
}

fn attach(
    engine: &Engine,
    req: Request,
    id: u64,
    tx: mpsc::Sender<Cmd>,
    out: mpsc::Receiver<WsOut>,
) -> Response {
    let guard = WsGuard { id, tx };
    upgrade(&engine.settings.websocket, req, move |ws, _shutdown| {
        websocket(ws, guard, out)
    })
}

/// One WebSocket of a session: frames in go to the session's task, frames out come from it.
async fn websocket(mut ws: WebSocket<Io>, guard: WsGuard, mut out: mpsc::Receiver<WsOut>) {
    enum Event {
        In(Option<Result<Message, switchboard_websocket::Error>>),
        Out(Option<WsOut>),
    }
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(m) = ws.poll_recv(cx) {
                return Poll::Ready(Event::In(m));
            }
            if let Poll::Ready(o) = out.poll_recv(cx) {
                return Poll::Ready(Event::Out(o));
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::In(Some(Ok(message))) => {
                let frame = match message {
                    Message::Text(b) => Frame::Text(String::from_utf8_lossy(&b).into_owned()),
                    Message::Binary(b) => Frame::Binary(b),
                };
                if guard
                    .tx
                    .send(Cmd::WsFrame {
                        id: guard.id,
                        frame: Box::new(frame),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Event::In(_) => return,
            Event::Out(Some(WsOut::Frame(frame))) => {
                let sent = match frame {
                    Frame::Text(t) => ws.send(Message::text(t)),
                    Frame::Binary(b) => ws.send(Message::Binary(b)),
                    // A publication: framed once for every subscriber's WebSocket.
                    Frame::Shared(s) => {
                        match s.framed(|packet| SharedMessage::new(Message::Text(packet.clone()))) {
                            Some(m) => ws.send_shared(m),
                            None => ws.send(Message::Text(s.packet().clone())),
                        }
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            Event::Out(Some(WsOut::Close) | None) => break,
        }
    }
    ws.close(CloseCode::NORMAL, "");
    while let Some(Ok(_)) = ws.recv().await {}
}

/// The task of one session.
struct Actor {
    session: Session,
    app: Box<dyn App>,
    rx: mpsc::Receiver<Cmd>,
    /// The held poll's answer channel.
    held: Option<oneshot::Sender<Result<String, RequestError>>>,
    /// The session's WebSocket (probing or current) and its id.
    ws: Option<(u64, mpsc::Sender<WsOut>)>,
    engine: Engine,
    /// The session's place under the connection limits, given back when it ends.
    _permit: Option<crate::limits::Permit>,
}

enum Wake {
    Cmd(Option<Cmd>),
    App(Result<Vec<Data>, String>),
    Timer,
    PollGone,
    Shutdown,
}

impl Actor {
    async fn run(mut self) {
        let shutdown = self.engine.settings.websocket.shutdown.clone();
        let mut stopping = false;
        // Kept across wakes, and moved only when the deadline changes: a timer made per wake
        // would enter and leave the timer wheel for every message delivered, and a `cancelled()`
        // made per wake would register with the token each time.
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
        let mut armed: Option<Instant> = None;
        loop {
            self.flush();
            self.app.on_buffered(self.session.buffered());
            if self.session.is_finished() {
                break;
            }
            let deadline = [self.session.next_deadline(), self.app.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(Instant::from_std);
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                armed = deadline;
            }
            let wake = {
                let held = &mut self.held;
                let rx = &mut self.rx;
                let app = &mut self.app;
                tokio::select! {
                    cmd = rx.recv() => Wake::Cmd(cmd),
                    out = std::future::poll_fn(|cx| app.poll_output(cx)) => Wake::App(out),
                    () = &mut timer, if armed.is_some() => Wake::Timer,
                    () = poll_gone(held) => Wake::PollGone,
                    () = &mut cancelled, if !stopping => Wake::Shutdown,
                }
            };
            let now = std::time::Instant::now();
            match wake {
                Wake::Cmd(Some(cmd)) => self.command(cmd, now),
                Wake::Cmd(None) => break,
                Wake::App(out) => self.deliver(out, now),
                Wake::Timer => {
                    // Re-armed below even when the deadline stays the same.
                    armed = None;
                    self.session.on_timer(now);
                    let out = self.app.on_timer(now);
                    self.deliver(out, now);
                }
                Wake::PollGone => {
                    self.held = None;
                    self.session.poll_aborted();
                }
                Wake::Shutdown => {
                    stopping = true;
                    self.session.close(now);
                }
            }
        }
        self.engine
            .sessions
            .lock()
            .remove(self.session.sid().as_str());
        self.flush();
        if let Some(held) = self.held.take() {
            let _ = held.send(Err(RequestError::UnknownSid(
                self.session.sid().to_string(),
            )));
        }
        self.close_ws();
        tracing::debug!(sid = %self.session.sid(), reason = ?self.session.close_reason(), "Engine.IO session closed");
    }

    fn command(&mut self, cmd: Cmd, now: std::time::Instant) {
        match cmd {
            Cmd::Poll(reply) => match self.session.poll(now) {
                Ok(eio::Poll::Respond(body)) => {
                    let _ = reply.send(Ok(body));
                }
                Ok(eio::Poll::Hold) => self.held = Some(reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::PostBegin { binary, reply } => {
                let _ = reply.send(self.session.post_begin(binary));
            }
            Cmd::PostBody(post) => {
                let (body, reply) = *post;
                match self.session.post_body(&body, now) {
                    Ok(messages) => {
                        let _ = reply.send(Ok(()));
                        for m in messages {
                            let out = self.app.on_message(m, now);
                            self.deliver(out, now);
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Cmd::PostAborted => self.session.post_aborted(),
            Cmd::WsBegin { id, out, reply } => {
                let result = self.session.ws_begin(now);
                if result.is_ok() {
                    self.close_ws();
                    self.ws = Some((id, out));
                }
                let _ = reply.send(result);
            }
            Cmd::WsFrame { id, frame } => {
                if self.ws.as_ref().is_none_or(|(current, _)| *current != id) {
                    return;
                }
                match self.session.ws_frame(*frame, now) {
                    Ok(WsOutcome::Message(m)) => {
                        let out = self.app.on_message(m, now);
                        self.deliver(out, now);
                    }
                    Ok(WsOutcome::Reply(frame)) => self.ws_send(frame),
                    Ok(WsOutcome::Upgraded | WsOutcome::Nothing) => {}
                    Err(WsError::ProbeFailed(why)) => {
                        tracing::debug!(sid = %self.session.sid(), why, "Engine.IO upgrade abandoned");
                        self.close_ws();
                    }
                    Err(WsError::Closed(_)) => {}
                }
            }
            Cmd::WsClosed { id } => {
                if self.ws.as_ref().is_some_and(|(current, _)| *current == id) {
                    self.ws = None;
                    self.session.ws_closed();
                }
            }
        }
    }

    /// The application's answer: messages to queue, or the end of the session.
    fn deliver(&mut self, out: Result<Vec<Data>, String>, now: std::time::Instant) {
        match out {
            Ok(messages) => {
                for m in messages {
                    match self.session.send(m) {
                        Ok(()) => {}
                        Err(eio::SendError::Full(bytes)) => {
                            tracing::debug!(sid = %self.session.sid(), bytes, "Engine.IO client too slow, closing");
                            self.session.close(now);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(why) => {
                tracing::debug!(sid = %self.session.sid(), why, "closing the Engine.IO session");
                self.session.close(now);
            }
        }
    }

    /// Sends what the session has for its client: the held poll's answer, WebSocket frames.
    fn flush(&mut self) {
        if let Some(body) = self.session.take_poll_response()
            && let Some(held) = self.held.take()
        {
            let _ = held.send(Ok(body));
        }
        for frame in self.session.take_outgoing() {
            self.ws_send(frame);
        }
        if self.session.take_probe_abandoned() {
            self.close_ws();
        }
        if self.session.is_closed() {
            self.close_ws();
        }
    }

    fn ws_send(&mut self, frame: Frame) {
        let full = match &self.ws {
            Some((_, out)) => out.try_send(WsOut::Frame(frame)).is_err(),
            None => false,
        };
        if full {
            // The client does not read: as a slow consumer elsewhere, it is dropped.
            self.close_ws();
            self.session.ws_closed();
        }
    }

    fn close_ws(&mut self) {
        if let Some((_, out)) = self.ws.take() {
            let _ = out.try_send(WsOut::Close);
        }
    }
}

/// Resolves when the held poll's request is gone (its client disconnected).
async fn poll_gone(held: &mut Option<oneshot::Sender<Result<String, RequestError>>>) {
    match held {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}
