//! The Engine.IO server: request handling, the session registry, and one task per session that
//! drives its `eio::Session` with HTTP requests, WebSocket frames and time, and hands its messages
//! to the application on top ([`App`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use parking_lot::Mutex;
use switchboard_socketio::eio::{
    self, BadRequest, Data, Frame, Method, RequestError, Session, Transport, WsError, WsOutcome,
};
use switchboard_websocket::{CloseCode, Message, WebSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

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
}

/// Makes the application of each new session.
pub type AppFactory = Arc<dyn Fn(std::time::Instant) -> Box<dyn App> + Send + Sync>;

/// The endpoint's settings.
pub struct Settings {
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

/// One Engine.IO endpoint: its settings and its open sessions.
#[derive(Clone)]
pub struct Engine {
    settings: Arc<Settings>,
    sessions: Arc<Mutex<HashMap<String, mpsc::Sender<Cmd>>>>,
    next_ws: Arc<AtomicU64>,
}

impl Engine {
    /// An endpoint with no session yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
            sessions: Arc::default(),
            next_ws: Arc::new(AtomicU64::new(1)),
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
    fn admit(
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
        let sid = eio::Sid::from_random(bytes);
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
    PostBody {
        body: Bytes,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    PostAborted,
    WsBegin {
        id: u64,
        out: mpsc::Sender<WsOut>,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    WsFrame {
        id: u64,
        frame: Frame,
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

/// Axum handler for every request to the endpoint's path.
pub async fn handle(State(engine): State<Engine>, req: Request) -> Response {
    let policy = &engine.settings;
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
    let headers = resp.headers_mut();
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if policy.allow_credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn route(engine: &Engine, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = Method::from_name(req.method().as_str());
    let request = match eio::verify(&query, method, is_upgrade(req.headers())) {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let result = match (request.transport, request.sid, method) {
        (Transport::Polling, None, _) => match engine.admit(&req) {
            Ok(permit) => handshake(engine, permit),
            Err(refused) => return refused.response(),
        },
        (Transport::Polling, Some(sid), Method::Get) => poll(engine, &sid).await,
        (Transport::Polling, Some(sid), Method::Post) => post(engine, &sid, req).await,
        (Transport::Polling, Some(_), Method::Other) => Err(BadRequest::Method.into()),
        (Transport::WebSocket, None, _) => match engine.admit(&req) {
            Ok(permit) => websocket_session(engine, req, permit),
            Err(refused) => return refused.response(),
        },
        (Transport::WebSocket, Some(sid), _) => websocket_upgrade(engine, &sid, req).await,
    };
    result.unwrap_or_else(|e| error(&e))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The reference server's error answer: the status and `{"code","message"}`.
fn error(e: &RequestError) -> Response {
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

fn handshake(
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

async fn poll(engine: &Engine, sid: &str) -> Result<Response, RequestError> {
    let tx = engine.lookup(sid)?;
    ask(&tx, sid, Cmd::Poll).await.map(text)
}

async fn post(engine: &Engine, sid: &str, req: Request) -> Result<Response, RequestError> {
    let tx = engine.lookup(sid)?;
    let binary = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(b"application/octet-stream")
    });
    ask(&tx, sid, |reply| Cmd::PostBegin { binary, reply }).await?;
    let limit = engine.settings.engine.max_payload;
    let read = tokio::time::timeout(
        engine.settings.body_read_timeout,
        Limited::new(req.into_body(), limit).collect(),
    )
    .await;
    let body = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            let _ = tx.send(Cmd::PostAborted).await;
            return Err(RequestError::PayloadTooLarge(limit));
        }
        Ok(Err(e)) => {
            let _ = tx.send(Cmd::PostAborted).await;
            return Err(BadRequest::Body(e.to_string()).into());
        }
        Err(_) => {
            let _ = tx.send(Cmd::PostAborted).await;
            let waited = engine.settings.body_read_timeout;
            return Err(BadRequest::Body(format!(
                "not received within {waited:?} ([socketio] body_read_timeout)"
            ))
            .into());
        }
    };
    ask(&tx, sid, |reply| Cmd::PostBody { body, reply }).await?;
    Ok(([(header::CONTENT_TYPE, "text/html")], "ok").into_response())
}

/// A WebSocket-only session: opened by the upgrade itself.
fn websocket_session(
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
async fn websocket_upgrade(
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
                        frame,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Event::In(_) => return,
            Event::Out(Some(WsOut::Frame(frame))) => {
                let message = match frame {
                    Frame::Text(t) => Message::text(t),
                    Frame::Binary(b) => Message::Binary(b),
                };
                if ws.send(message).is_err() {
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
        loop {
            self.flush();
            if self.session.is_finished() {
                break;
            }
            let deadline = [self.session.next_deadline(), self.app.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(Instant::from_std);
            let wake = {
                let held = &mut self.held;
                let rx = &mut self.rx;
                let app = &mut self.app;
                tokio::select! {
                    cmd = rx.recv() => Wake::Cmd(cmd),
                    out = std::future::poll_fn(|cx| app.poll_output(cx)) => Wake::App(out),
                    () = sleep(deadline) => Wake::Timer,
                    () = poll_gone(held) => Wake::PollGone,
                    () = shutdown.cancelled(), if !stopping => Wake::Shutdown,
                }
            };
            let now = std::time::Instant::now();
            match wake {
                Wake::Cmd(Some(cmd)) => self.command(cmd, now),
                Wake::Cmd(None) => break,
                Wake::App(out) => self.deliver(out, now),
                Wake::Timer => {
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
            Cmd::PostBody { body, reply } => match self.session.post_body(&body, now) {
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
            },
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

async fn sleep(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the held poll's request is gone (its client disconnected).
async fn poll_gone(held: &mut Option<oneshot::Sender<Result<String, RequestError>>>) {
    match held {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}
