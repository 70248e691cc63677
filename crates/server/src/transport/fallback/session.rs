//! HTTP fallback sessions: the registry, one session's shared state, and the session as its
//! client's [`Wire`].
//!
//! A WebSocket connection is one long request; a fallback session is many short ones (an open, upstream
//! POSTs, downstream polls or an SSE stream), any of which may be lost or repeated. The session's task
//! runs the hub's [`drive`] over an [`HttpWire`], exactly as a WebSocket connection's task does over
//! its connection: the wire hands the driver the commands POSTed to it one at a time and in order
//! (`n`, a retried POST is not redone), and takes replies and pushes into the session's
//! [`Downstream`] buffer, where the poll and SSE handlers find them. Its batches stay there until
//! acknowledged; the wire reports those bytes to the hub session, whose slow-consumer bound counts
//! them as it counts its own queue. The client ends as over WebSocket: with a `disconnect` push,
//! silently when the client ends it (`close`, like a WebSocket close frame), or silently when the
//! client stops coming (`session_timeout`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use switchboard_hub::{Client, End, Upstream as WireUpstream, Wire, drive};
use switchboard_protocol::{DisconnectCode, Frame};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use super::downstream::Downstream;
use crate::limits::Permit;

/// Every open fallback session of this node, by public id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<HttpSession>>>,
}

impl Sessions {
    /// The session a client's token (`<id>.<secret>`) names, if the secret matches.
    pub fn find(&self, token: &str) -> Option<Arc<HttpSession>> {
        let (id, secret) = token.split_once('.')?;
        let session = Arc::clone(lock(&self.map).get(id)?);
        // Constant time: the secret must not leak through response timing.
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(secret.as_bytes(), session.secret.as_bytes()).into();
        same.then_some(session)
    }

    fn insert(&self, session: &Arc<HttpSession>) {
        lock(&self.map).insert(session.id.clone(), Arc::clone(session));
    }

    /// Forgets a session: later requests naming it get 404.
    pub fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
    }
}

/// One fallback session as its HTTP requests see it.
#[derive(Debug)]
pub struct HttpSession {
    id: String,
    secret: String,
    downstream: Mutex<Downstream>,
    /// Woken whenever the downstream changes: new messages, a new reader, the end.
    changed: Notify,
    upstream: mpsc::Sender<Upstream>,
    activity: Mutex<Activity>,
    /// The client's hub queue, told how much the downstream holds (for metrics).
    hub: Arc<switchboard_hub::Session>,
    /// Cancelled when the client ends the session (`close`): the task closes the client at once.
    close_requested: CancellationToken,
    /// Cancelled once the task has closed the client (presence removed, leave pushes sent).
    closed: CancellationToken,
}

/// Requests in progress and when the last one started or ended: what keeps a session alive.
#[derive(Debug)]
struct Activity {
    in_progress: usize,
    last: Instant,
}

/// Commands POSTed to the session, for its task.
#[derive(Debug)]
struct Upstream {
    n: u64,
    body: Bytes,
    reply: oneshot::Sender<Outcome>,
}

/// What became of an upstream POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled (or an empty body: only counted).
    Done,
    /// This `n` was handled before (a retry after a lost response): not handled again.
    Duplicate,
    /// `n` skips ahead; `expected` is the next one the session will take.
    OutOfOrder {
        /// The next `n` the session takes.
        expected: u64,
    },
    /// The commands ended the session with this code (the `disconnect` push is on the downstream).
    Ended(DisconnectCode),
    /// The session is over: nothing was handled.
    Gone,
}

/// Marks a request in progress for as long as it lives (so a held poll or an open SSE stream keeps
/// its session alive), and counts as activity when it starts and when it ends.
#[derive(Debug)]
pub struct RequestGuard(Arc<HttpSession>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut a = lock(&self.0.activity);
        a.in_progress -= 1;
        a.last = Instant::now();
    }
}

impl HttpSession {
    /// `<id>.<secret>`, what the client names the session by; the id is `<node>-<random>`.
    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The public half of the token (for logs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Counts a request in progress until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        let mut a = lock(&self.activity);
        a.in_progress += 1;
        a.last = Instant::now();
        RequestGuard(Arc::clone(self))
    }

    /// The downstream buffer, locked.
    pub fn downstream(&self) -> MutexGuard<'_, Downstream> {
        lock(&self.downstream)
    }

    /// Wakes every downstream request waiting on this session.
    pub fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// A future resolved by the next [`HttpSession::notify`]; enable it before checking the buffer so
    /// that no change between the check and the wait is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// A new downstream request (replacing the previous one, which is woken to give up). `None` when
    /// the session is over.
    pub fn claim(&self, ack: Option<u64>) -> Option<u64> {
        let reader = self.downstream().claim(ack);
        self.report_queued();
        self.notify();
        reader
    }

    /// Acknowledges batches up to `ack` (an upstream POST's `ack`).
    pub fn ack(&self, ack: u64) {
        self.downstream().ack(ack);
        self.report_queued();
    }

    /// Tells the hub's session how many bytes wait here, so metrics count them.
    fn report_queued(&self) {
        let held = self.downstream().queued_bytes();
        self.hub.set_transport_queued(held);
    }

    /// Hands `body`, upstream POST number `n`, to the session task and waits for what became of it.
    pub async fn send(&self, n: u64, body: Bytes) -> Outcome {
        let (reply, answer) = oneshot::channel();
        if self
            .upstream
            .send(Upstream { n, body, reply })
            .await
            .is_err()
        {
            return Outcome::Gone;
        }
        answer.await.unwrap_or(Outcome::Gone)
    }

    /// Ends the session as the client asked (`close`), like a WebSocket close frame: the client is
    /// closed at once (presence removed, `leave` pushes sent), not `session_timeout` later. Returns
    /// once it is, or after `wait` at the latest (the task may be busy with a slow command).
    pub async fn close(&self, wait: Duration) {
        self.close_requested.cancel();
        let _ = tokio::time::timeout(wait, self.closed.cancelled()).await;
    }

    /// When the session expires unless a request comes: `timeout` after the last one, or, while one
    /// is in progress, not before `timeout` from now.
    fn deadline(&self, timeout: Duration) -> Instant {
        let a = lock(&self.activity);
        if a.in_progress > 0 {
            Instant::now() + timeout
        } else {
            a.last + timeout
        }
    }

    fn idle(&self, timeout: Duration) -> bool {
        let a = lock(&self.activity);
        a.in_progress == 0 && a.last.elapsed() >= timeout
    }
}

/// What a session task needs from the server.
#[derive(Clone, Debug)]
pub struct SessionEnv {
    /// The registry the session is in.
    pub sessions: Arc<Sessions>,
    /// This node's id, which session ids start with so that any node can tell where a session is.
    pub node_id: String,
    /// Idle time after which a session expires.
    pub session_timeout: Duration,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Tracks session tasks for graceful shutdown.
    pub tracker: TaskTracker,
    /// How clients are told to come back after a shutdown (the push's `delay`).
    pub restart: crate::config::ShutdownConfig,
}

/// How the first commands (those of the open request) went.
pub type Opened = Result<Arc<HttpSession>, DisconnectCode>;

/// Starts a session for `client`: registers it, spawns its task, and has the task handle `first`,
/// the open request's commands. `Err(BadRequest)`: they broke the protocol, and there is no session.
pub async fn open(
    ctx: &SessionEnv,
    client: Client,
    first: Bytes,
    permit: Option<Permit>,
) -> Result<Opened, getrandom::Error> {
    let (upstream, commands) = mpsc::channel(4);
    let session = Arc::new(HttpSession {
        id: format!("{}-{}", ctx.node_id, random_hex(16)?),
        secret: random_hex(16)?,
        downstream: Mutex::new(Downstream::default()),
        changed: Notify::new(),
        upstream,
        activity: Mutex::new(Activity {
            in_progress: 0,
            last: Instant::now(),
        }),
        hub: Arc::clone(client.session()),
        close_requested: CancellationToken::new(),
        closed: CancellationToken::new(),
    });
    // Registered before anyone knows its token, so that the task alone decides when it leaves.
    ctx.sessions.insert(&session);
    let (opened, answer) = oneshot::channel();
    let wire = HttpWire {
        client: client.id().to_owned(),
        session: Arc::clone(&session),
        ctx: ctx.clone(),
        first: Some(first),
        commands: Some(commands),
        last_n: 0,
        owed: None,
        opened: Some(opened),
        close_requested: Box::pin(session.close_requested.clone().cancelled_owned()),
        expiry: Box::pin(tokio::time::sleep_until(
            Instant::now() + ctx.session_timeout,
        )),
        silent: None,
        told: false,
        moved: Vec::new(),
        _permit: permit,
    };
    // The task, not this request, owns the client: the request may be dropped at any point.
    let (shutdown, restart) = (ctx.shutdown.clone(), ctx.restart.clone());
    ctx.tracker
        .spawn(drive(client, wire, Some(shutdown), move || {
            restart.reconnect_delay_ms()
        }));
    Ok(match answer.await {
        Ok(Ok(())) => Ok(session),
        Ok(Err(code)) => Err(code),
        Err(_) => Err(DisconnectCode::Internal),
    })
}

/// Why a session ended silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silent {
    /// No request came for `session_timeout`: like a dropped connection, nobody is left to tell.
    Expired,
    /// The client ended the session (`close`): like a WebSocket close frame, nobody is left to tell.
    Closed,
    /// The open request's commands broke the protocol: there never was a session.
    NeverOpened,
}

/// A fallback session as its client's [`Wire`]: commands come from the upstream POSTs (in order,
/// once each), frames go to the [`Downstream`] buffer where the poll and SSE handlers find them.
struct HttpWire {
    /// The client's id (for logs).
    client: String,
    session: Arc<HttpSession>,
    ctx: SessionEnv,
    /// The open request's commands, handed out first.
    first: Option<Bytes>,
    /// Upstream POSTs; dropped when the session ends, which answers those still queued `Gone`.
    commands: Option<mpsc::Receiver<Upstream>>,
    /// The `n` of the last upstream POST handled.
    last_n: u64,
    /// The POST whose commands are being handled, answered once they are (or, if they end the
    /// session, once the client is closed, so that its answer means the client is gone).
    owed: Option<oneshot::Sender<Outcome>>,
    /// The open request, answered once its commands are handled (or, if they end the session,
    /// once the `disconnect` push is on the downstream).
    opened: Option<oneshot::Sender<Result<(), DisconnectCode>>>,
    close_requested: Pin<Box<WaitForCancellationFutureOwned>>,
    expiry: Pin<Box<tokio::time::Sleep>>,
    /// Set when the session ended without a `disconnect` push.
    silent: Option<Silent>,
    /// The `disconnect` push is on the downstream.
    told: bool,
    /// Frames moved since the last flush.
    moved: Vec<Bytes>,
    /// The session's place under `[limits]`, given back when the task ends.
    _permit: Option<Permit>,
}

impl HttpWire {
    /// Whether no request came for `session_timeout`; waits (registering `cx`) otherwise.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.ctx.session_timeout;
        loop {
            let deadline = self.session.deadline(timeout);
            if self.expiry.deadline() != deadline {
                self.expiry.as_mut().reset(deadline);
            }
            if self.expiry.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.session.idle(timeout) {
                return true;
            }
        }
    }
}

impl Wire for HttpWire {
    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<WireUpstream> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(WireUpstream::Commands(first));
        }
        if self.close_requested.as_mut().poll(cx).is_ready() {
            self.silent = Some(Silent::Closed);
            return Poll::Ready(WireUpstream::Gone(None));
        }
        if let Some(commands) = &mut self.commands {
            while let Poll::Ready(Some(up)) = commands.poll_recv(cx) {
                let outcome = if up.n <= self.last_n {
                    Outcome::Duplicate
                } else if up.n > self.last_n + 1 {
                    Outcome::OutOfOrder {
                        expected: self.last_n + 1,
                    }
                } else {
                    self.last_n = up.n;
                    self.owed = Some(up.reply);
                    return Poll::Ready(WireUpstream::Commands(up.body));
                };
                let _ = up.reply.send(outcome);
            }
        }
        if self.poll_expired(cx) {
            self.silent = Some(Silent::Expired);
            return Poll::Ready(WireUpstream::Gone(None));
        }
        Poll::Pending
    }

    fn send(&mut self, frame: Frame) -> bool {
        self.moved.push(frame.text().clone());
        true
    }

    /// Moves the frames into the downstream buffer at once, and wakes its readers.
    fn flush(&mut self) {
        if self.moved.is_empty() {
            return;
        }
        let mut ds = self.session.downstream();
        for msg in self.moved.drain(..) {
            ds.push(msg);
        }
        drop(ds);
        self.session.report_queued();
        self.session.notify();
    }

    fn handled(&mut self, outcome: Result<(), DisconnectCode>) {
        if let Some(opened) = self.opened.take() {
            match outcome {
                Ok(()) => {
                    let _ = opened.send(Ok(()));
                    tracing::debug!(session = %self.session.id, client = %self.client, "HTTP session opened");
                }
                Err(DisconnectCode::BadRequest) => {
                    // No session: the open request is answered 400, once the client is closed.
                    self.silent = Some(Silent::NeverOpened);
                    self.opened = Some(opened);
                }
                // A refused token, say: the error reply and the disconnect push wait on the
                // downstream, where the client reads them as it would over WebSocket; the open
                // request is answered once they are there.
                Err(_) => self.opened = Some(opened),
            }
            return;
        }
        if let Some(reply) = self.owed.take() {
            match outcome {
                Ok(()) => {
                    let _ = reply.send(Outcome::Done);
                }
                Err(_) => self.owed = Some(reply),
            }
        }
    }

    fn is_open(&self) -> bool {
        self.silent.is_none()
    }

    fn end(&mut self, end: End) {
        // Commands still queued are answered `Gone`: their senders see the channel close.
        self.commands = None;
        match end {
            End::Tell { code, push } => {
                // A slow client's unacknowledged batches are dropped, as a WebSocket client's
                // queue is: it recovers them from history.
                self.session
                    .downstream()
                    .end(push, code == DisconnectCode::Slow);
                self.session.report_queued();
                self.session.notify();
                self.told = true;
                if let Some(opened) = self.opened.take() {
                    let _ = opened.send(Ok(()));
                }
            }
            End::Silent => {
                match self.silent {
                    Some(Silent::Closed) => {
                        tracing::debug!(session = %self.session.id, client = %self.client, "HTTP session closed by the client")
                    }
                    Some(Silent::Expired) => {
                        tracing::debug!(session = %self.session.id, client = %self.client, "HTTP session expired")
                    }
                    _ => {}
                }
                self.ctx.sessions.remove(&self.session.id);
                // A request that found the session just before it ended gets 404 too.
                self.session.downstream().close();
                self.session.notify();
            }
        }
    }

    async fn finish(mut self, code: Option<DisconnectCode>) {
        if let Some(opened) = self.opened.take() {
            let _ = opened.send(Err(code.unwrap_or(DisconnectCode::BadRequest)));
        }
        if self.told
            && let Some(code) = code
        {
            tracing::debug!(session = %self.session.id, client = %self.client, code = code.code(), "HTTP session ended");
            if let Some(reply) = self.owed.take() {
                let _ = reply.send(Outcome::Ended(code));
            }
            if code != DisconnectCode::Shutdown {
                self.linger().await;
            }
            // Open downstreams take the push now after a shutdown; the server is going away
            // either way.
        }
        // Whatever ended it, a `close` waiting for the end may answer now.
        self.session.closed.cancel();
    }
}

impl HttpWire {
    /// Keeps the session until a downstream request carries the disconnect push, or until nobody
    /// came for it within the session timeout.
    async fn linger(&self) {
        let timeout = self.ctx.session_timeout;
        loop {
            let changed = self.session.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.session.downstream().delivered() {
                break;
            }
            let deadline = self.session.deadline(timeout);
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => break,
                // The client is done with it: it does not want the push.
                () = self.session.close_requested.cancelled() => break,
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    if self.session.idle(timeout) {
                        break;
                    }
                }
            }
        }
        self.ctx.sessions.remove(&self.session.id);
    }
}

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section here
/// leaves it valid).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
