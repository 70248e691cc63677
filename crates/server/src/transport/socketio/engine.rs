//! The Engine.IO server: the session registry, the requests against a session of this node
//! (whether they arrived here or were relayed from the node they landed on: the same functions serve
//! both, so a relayed request is answered exactly as a local one), and one task per session that
//! drives its `eio::Session` with HTTP requests, the frames of the WebSocket it owns, and time, and
//! hands its messages to the application on top ([`App`]), which it polls in the same task.
//! `routes.rs` decides where each request goes.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
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
use tokio::sync::oneshot;
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
    /// The server shuts down (the session closes next): what the application runs ends as a
    /// shutdown, not as a client gone.
    fn on_shutdown(&mut self) {}
    /// Messages the application sends of its own accord (pushes from the hub), or why the session
    /// must close.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<Data>, String>> {
        let _ = cx;
        Poll::Pending
    }
    /// False while the application cannot take another message (its queue for what it runs is
    /// full): the session then stops reading from its WebSocket until [`App::poll_output`] has made
    /// room, so a client that sends faster than it is served is slowed down by TCP, as on the native
    /// WebSocket, rather than disconnected.
    fn accepts_input(&self) -> bool {
        true
    }
    /// The bytes the session holds for its client now (after each change): the hub counts them
    /// against the slow-consumer bound, as for every transport.
    fn on_buffered(&mut self, bytes: usize) {
        let _ = bytes;
    }
    /// The session is over: finishes what the application still runs (its hub clients leaving
    /// their channels), polled until it is `Ready`.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = cx;
        Poll::Ready(())
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
    /// Engine.IO settings (heartbeat, maxPayload, upgrade timeout), shared by the sessions.
    pub engine: Arc<eio::Config>,
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
    sessions: Mutex<HashMap<String, Arc<Mailbox>>>,
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
    /// An endpoint with no session yet (call within the runtime: it starts the task that tells
    /// sessions of the server's shutdown).
    pub fn new(settings: Settings) -> Self {
        let engine = Self(Arc::new(Shared {
            settings,
            sessions: Mutex::default(),
            next_ws: AtomicU64::new(1),
        }));
        // One waiter for the endpoint tells every session, rather than a watch in each session's
        // task (a boxed future and a waker per client, and ten thousand waiters on the token).
        let weak = engine.downgrade();
        let shutdown = engine.settings.websocket.shutdown.clone();
        engine.settings.websocket.tracker.spawn(async move {
            shutdown.cancelled().await;
            if let Some(engine) = weak.upgrade() {
                let sessions: Vec<_> = engine.sessions.lock().values().cloned().collect();
                for mailbox in sessions {
                    let _ = mailbox.send(Cmd::Shutdown);
                }
            }
        });
        engine
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

    fn lookup(&self, sid: &str) -> Result<Arc<Mailbox>, RequestError> {
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

    /// Opens a session (not yet reachable by its sid: see [`Engine::register`]).
    fn open(&self, transport: Transport) -> Result<Actor, RequestError> {
        let mut bytes = [0u8; 15];
        getrandom::fill(&mut bytes)
            .map_err(|e| RequestError::Forbidden(format!("no randomness for a session id: {e}")))?;
        // Named after this node, so that any node can relay the session's requests here.
        let sid = eio::Sid::on_node(self.settings.relay.node_id(), bytes);
        let now = std::time::Instant::now();
        let session = Session::open(sid, transport, Arc::clone(&self.settings.engine), now);
        Ok(Actor {
            session,
            app: (self.settings.app)(now),
            mailbox: Arc::default(),
            held: None,
            ws: None,
            probing: None,
            closing: Vec::new(),
            engine: self.clone(),
            _permit: None,
        })
    }

    /// Makes the session of `actor` reachable by its sid (for polls, POSTs and upgrades), and
    /// by the shutdown: a session registered after it was told is told here.
    fn register(&self, actor: &Actor) {
        self.sessions.lock().insert(
            actor.session.sid().as_str().to_owned(),
            Arc::clone(&actor.mailbox),
        );
        // After the insert: either the shutdown's task saw this session, or this sees the token
        // cancelled (a second `Shutdown` is ignored).
        if self.settings.websocket.shutdown.is_cancelled() {
            let _ = actor.mailbox.send(Cmd::Shutdown);
        }
    }
}

/// What requests tell a session's task: a queue that holds nothing until a command arrives (a
/// channel would allocate its first block of slots for every session, and WebSocket sessions
/// never get a command).
#[derive(Default)]
struct Mailbox(Mutex<MailboxState>);

#[derive(Default)]
struct MailboxState {
    queue: VecDeque<Cmd>,
    waker: Option<Waker>,
    /// The task ended: commands are refused (and those left were dropped, so that their requests
    /// learn the session is gone).
    closed: bool,
}

impl Mailbox {
    /// Queues `cmd` for the task; gives it back if the task ended.
    fn send(&self, cmd: Cmd) -> Result<(), Cmd> {
        let mut state = self.0.lock();
        if state.closed {
            return Err(cmd);
        }
        state.queue.push_back(cmd);
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Cmd> {
        let mut state = self.0.lock();
        match state.queue.pop_front() {
            Some(cmd) => {
                if state.queue.is_empty() {
                    state.queue = VecDeque::new();
                }
                Poll::Ready(cmd)
            }
            None => {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// The task ends: what is queued is dropped, and what comes later refused.
    fn close(&self) {
        let left = {
            let mut state = self.0.lock();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.queue)
        };
        drop(left);
    }
}

/// What reaches a session's task from the requests of its client (the WebSocket, once attached,
/// is polled by the task itself).
enum Cmd {
    Poll(oneshot::Sender<Result<String, RequestError>>),
    PostBegin {
        binary: bool,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// Boxed, as is `WsAttach`'s WebSocket: they are rare, and large beside the rest.
    PostBody(Box<(Bytes, oneshot::Sender<Result<(), RequestError>>)>),
    PostAborted,
    /// A WebSocket asks to probe the session (before its `101`).
    WsBegin {
        id: u64,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// The probing WebSocket `id`, once its upgrade completed: the session's task owns it from now
    /// on.
    WsAttach {
        id: u64,
        ws: Box<WebSocket<Io>>,
    },
    /// The upgrade of the probing WebSocket `id` never completed.
    WsLost {
        id: u64,
    },
    /// The server shuts down: the session closes.
    Shutdown,
}

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
    let mut actor = engine.open(Transport::Polling)?;
    let body = match actor.session.poll(std::time::Instant::now())? {
        eio::Poll::Respond(body) => body,
        eio::Poll::Hold => String::new(),
    };
    actor._permit = permit;
    // Reachable before the answer goes out: the client polls as soon as it has its sid.
    engine.register(&actor);
    engine.settings.websocket.tracker.spawn(actor.run());
    Ok(text(body))
}

async fn ask<T>(
    tx: &Mailbox,
    sid: &str,
    cmd: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Cmd,
) -> Result<T, RequestError> {
    let (reply, answer) = oneshot::channel();
    let gone = || RequestError::UnknownSid(sid.to_owned());
    tx.send(cmd(reply)).map_err(|_| gone())?;
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
            let _ = tx.send(Cmd::PostAborted);
            return Err(e);
        }
    };
    ask(&tx, sid, |reply| Cmd::PostBody(Box::new((body, reply)))).await?;
    Ok(([(header::CONTENT_TYPE, "text/html")], "ok").into_response())
}

/// A WebSocket-only session: opened by the upgrade itself, and run by the connection's task once
/// the upgrade completes (nobody knows its sid before it sends its `open` packet).
pub fn websocket_session(
    engine: &Engine,
    req: Request,
    permit: Option<crate::limits::Permit>,
) -> Result<Response, RequestError> {
    let mut actor = engine.open(Transport::WebSocket)?;
    actor._permit = permit;
    // Boxed until the upgrade completes, so that the connection's task keeps only one actor.
    let actor = Box::new(actor);
    Ok(upgrade(
        &engine.settings.websocket,
        req,
        move |ws, _shutdown| {
            let mut actor = *actor;
            actor.ws = Some(Box::new(ws));
            actor.engine.register(&actor);
            actor.run()
        },
    ))
}

/// A WebSocket that probes a polling session, to take it over: once upgraded, it is handed to the
/// session's task, which polls it from then on.
pub async fn websocket_upgrade(
    engine: &Engine,
    sid: &str,
    req: Request,
) -> Result<Response, RequestError> {
    let tx = engine.lookup(sid)?;
    let id = engine.next_ws.fetch_add(1, Ordering::Relaxed);
    let begun = ask(&tx, sid, |reply| Cmd::WsBegin { id, reply }).await;
    match begun {
        Ok(()) => {
            let guard = Handover { id, tx: Some(tx) };
            Ok(upgrade(
                &engine.settings.websocket,
                req,
                move |ws, _shutdown| guard.hand_over(ws),
            ))
        }
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

/// Hands a probing WebSocket to its session's task, or tells the task it will never come (the
/// upgrade did not complete: dropped unused).
struct Handover {
    id: u64,
    tx: Option<Arc<Mailbox>>,
}

impl Handover {
    async fn hand_over(mut self, ws: WebSocket<Io>) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let ws = Box::new(ws);
        if let Err(Cmd::WsAttach { mut ws, .. }) = tx.send(Cmd::WsAttach { id: self.id, ws }) {
            // The session ended meanwhile.
            ws.close(CloseCode::NORMAL, "");
            while let Some(Ok(_)) = ws.recv().await {}
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Cmd::WsLost { id: self.id });
        }
    }
}

/// Polls a closing WebSocket: whether its close handshake is over (what still arrives is dropped).
fn closed(ws: &mut WebSocket<Io>, cx: &mut Context<'_>) -> bool {
    loop {
        match ws.poll_recv(cx) {
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(_) => return true,
            Poll::Pending => return false,
        }
    }
}

/// A WebSocket message as an Engine.IO frame.
fn frame_of(message: Message) -> Frame {
    match message {
        Message::Text(b) => Frame::Text(String::from_utf8_lossy(&b).into_owned()),
        Message::Binary(b) => Frame::Binary(b),
    }
}

/// The task of one session: it owns the session, its application (whose hub clients it drives
/// too) and its WebSocket; requests reach it through its channel.
struct Actor {
    session: Session,
    app: Box<dyn App>,
    /// What requests tell the task (the registry holds it too, under the sid).
    mailbox: Arc<Mailbox>,
    /// The held poll's answer channel.
    held: Option<oneshot::Sender<Result<String, RequestError>>>,
    /// The session's WebSocket: the one it runs on, or the one probing it.
    ws: Option<Box<WebSocket<Io>>>,
    /// The id of the WebSocket whose probe began and whose upgrade is not complete yet (ids start
    /// at 1: no room for a flag beside them).
    probing: Option<NonZeroU64>,
    /// WebSockets being closed (the close handshake runs on).
    closing: Vec<WebSocket<Io>>,
    engine: Engine,
    /// The session's place under the connection limits, given back when it ends.
    _permit: Option<crate::limits::Permit>,
}

impl Drop for Actor {
    fn drop(&mut self) {
        // Also when the task is dropped unfinished: no request waits on it for ever.
        self.mailbox.close();
    }
}

enum Wake {
    Ws(Option<Result<Message, switchboard_websocket::Error>>),
    Cmd(Cmd),
    App(Result<Vec<Data>, String>),
    Timer,
    PollGone,
}

impl Actor {
    /// The session's life. A plain function returning the future, rather than an `async fn`
    /// (which would keep the actor twice: as its argument and as the local it moves into).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold the actor twice"
    )]
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            // Kept across wakes, and moved only when the deadline changes: a timer made per wake
            // would enter and leave the timer wheel for every message delivered. Armed: it is set
            // to a deadline not yet handled (the deadline itself is the timer's).
            let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
            let mut armed = false;
            loop {
                self.flush();
                self.app.on_buffered(self.buffered());
                if self.session.is_finished() {
                    break;
                }
                let deadline = [self.session.next_deadline(), self.app.next_deadline()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(Instant::from_std);
                if deadline != armed.then(|| timer.deadline()) {
                    if let Some(d) = deadline {
                        timer.as_mut().reset(d);
                    }
                    armed = deadline.is_some();
                }
                let wake = std::future::poll_fn(|cx| {
                    loop {
                        // The WebSocket first: polling it also writes what was queued on it. While the
                        // application's queue is full it is only written to, and not read.
                        let reading = self.app.accepts_input();
                        if let Some(ws) = &mut self.ws {
                            if reading {
                                if let Poll::Ready(m) = ws.poll_recv(cx) {
                                    return Poll::Ready(Wake::Ws(m));
                                }
                            } else if let Poll::Ready(Err(e)) = ws.poll_flush(cx) {
                                return Poll::Ready(Wake::Ws(Some(Err(e))));
                            }
                        }
                        self.closing.retain_mut(|ws| !closed(ws, cx));
                        if let Poll::Ready(cmd) = self.mailbox.poll_recv(cx) {
                            return Poll::Ready(Wake::Cmd(cmd));
                        }
                        if let Poll::Ready(out) = self.app.poll_output(cx) {
                            return Poll::Ready(Wake::App(out));
                        }
                        if !reading && self.ws.is_some() && self.app.accepts_input() {
                            // The application took some of its queue: read again, now, since
                            // nothing registered for the socket's readiness while it was full.
                            continue;
                        }
                        if armed && timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Wake::Timer);
                        }
                        if let Some(held) = &mut self.held
                            && held.poll_closed(cx).is_ready()
                        {
                            return Poll::Ready(Wake::PollGone);
                        }
                        // The WebSocket wrote what it could: the hub counts what is left.
                        self.app.on_buffered(self.buffered());
                        return Poll::Pending;
                    }
                })
                .await;
                let now = std::time::Instant::now();
                match wake {
                    Wake::Ws(Some(Ok(message))) => self.ws_frame(frame_of(message), now),
                    Wake::Ws(_) => {
                        self.ws = None;
                        self.session.ws_closed();
                    }
                    Wake::Cmd(cmd) => self.command(cmd, now),
                    Wake::App(out) => self.deliver(out, now),
                    Wake::Timer => {
                        // Re-armed below even when the deadline stays the same.
                        armed = false;
                        self.session.on_timer(now);
                        let out = self.app.on_timer(now);
                        self.deliver(out, now);
                    }
                    Wake::PollGone => {
                        self.held = None;
                        self.session.poll_aborted();
                    }
                }
            }
            self.engine
                .sessions
                .lock()
                .remove(self.session.sid().as_str());
            self.mailbox.close();
            self.flush();
            if let Some(held) = self.held.take() {
                let _ = held.send(Err(RequestError::UnknownSid(
                    self.session.sid().to_string(),
                )));
            }
            self.close_ws();
            tracing::debug!(sid = %self.session.sid(), reason = ?self.session.close_reason(), "Engine.IO session closed");
            // The application's clients end (they leave their channels), and the WebSockets' close
            // handshakes run to their end (bounded by their close and write timeouts).
            let mut app_done = false;
            std::future::poll_fn(|cx| {
                app_done = app_done || self.app.poll_close(cx).is_ready();
                self.closing.retain_mut(|ws| !closed(ws, cx));
                if app_done && self.closing.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// Bytes waiting for the client: what the session holds, and what its WebSocket has not
    /// written yet.
    fn buffered(&self) -> usize {
        self.session.buffered() + self.ws.as_ref().map_or(0, |ws| ws.queued_bytes())
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
            Cmd::WsBegin { id, reply } => {
                let result = self.session.ws_begin(now);
                if result.is_ok() {
                    // An abandoned probe's WebSocket, if still open, goes.
                    self.close_ws();
                    self.probing = NonZeroU64::new(id);
                }
                let _ = reply.send(result);
            }
            Cmd::WsAttach { id, mut ws } => {
                if self.probing.map(NonZeroU64::get) == Some(id) && self.session.is_upgrading() {
                    self.probing = None;
                    self.close_ws();
                    self.ws = Some(ws);
                } else {
                    // Its probe was abandoned (timed out) before the upgrade completed.
                    ws.close(CloseCode::NORMAL, "");
                    self.closing.push(*ws);
                }
            }
            Cmd::WsLost { id } => {
                if self.probing.map(NonZeroU64::get) == Some(id) {
                    self.probing = None;
                    self.session.ws_closed();
                }
            }
            Cmd::Shutdown => {
                self.app.on_shutdown();
                self.session.close(now);
            }
        }
    }

    fn ws_frame(&mut self, frame: Frame, now: std::time::Instant) {
        match self.session.ws_frame(frame, now) {
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
            self.probing = None;
            self.close_ws();
        }
        if self.session.is_closed() {
            self.close_ws();
        }
    }

    fn ws_send(&mut self, frame: Frame) {
        let Some(ws) = &mut self.ws else {
            return;
        };
        // An error means the WebSocket is closing: its end is seen when it is polled next.
        let _ = match frame {
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
        if ws.queued_bytes() > self.session.config().max_buffered {
            // The client does not read: as a slow consumer elsewhere, it is dropped (the hub's
            // own bound, which counts these bytes too, is lower and usually comes first).
            self.close_ws();
            self.session.ws_closed();
        }
    }

    /// Closes the session's WebSocket (its close handshake runs on in this task).
    fn close_ws(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            ws.close(CloseCode::NORMAL, "");
            self.closing.push(*ws);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned_size<R>(_: impl FnOnce(Actor) -> R) -> usize {
        size_of::<R>()
    }

    /// What an idle session holds in its task, item by item (`cargo test -p switchboard sizes --
    /// --nocapture` prints them).
    #[test]
    fn sizes() {
        let sizes = [
            ("Actor", size_of::<Actor>()),
            ("Session", size_of::<Session>()),
            ("eio::Config", size_of::<eio::Config>()),
            ("WebSocket", size_of::<WebSocket<Io>>()),
            ("Io", size_of::<Io>()),
            ("Cmd", size_of::<Cmd>()),
            ("MailboxState", size_of::<MailboxState>()),
            ("run() future", returned_size(Actor::run)),
        ];
        for (what, size) in sizes {
            eprintln!("{what}: {size} bytes");
        }
        // Allocator size classes (jemalloc: ..., 320, 384, 448, 512, 640, ...): a WebSocket that
        // grows past 384 bytes costs every Socket.IO client 64 more.
        assert!(size_of::<WebSocket<Io>>() <= 384, "{sizes:?}");
    }
}
