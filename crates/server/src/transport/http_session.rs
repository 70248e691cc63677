//! HTTP fallback sessions: the registry, one session's shared state, and the task that owns its hub
//! [`Client`].
//!
//! A WebSocket connection is one long request; a fallback session is many short ones (an open, upstream
//! POSTs, downstream polls or an SSE stream), any of which may be lost or repeated. The session task is
//! what the WebSocket connection's task is for WebSocket: it alone owns the [`Client`], handles the
//! commands POSTed to it one at a time and in order (`n`), applies the server's orders, and moves
//! replies and pushes from the hub [`Session`](switchboard_hub::Session) into the session's
//! [`Downstream`] buffer, where the poll and SSE handlers find them. It ends the client exactly as a
//! WebSocket connection would: with a `disconnect` push, silently when the client ends it (`close`,
//! like a WebSocket close frame), or silently when the client stops coming (`session_timeout`).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Bytes;
use switchboard_hub::{Client, Signal};
use switchboard_protocol::{DisconnectCode, encode};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
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
    /// Most bytes waiting for the client (`[client] queue_bytes`); beyond it: disconnect 3008.
    pub queue_bytes: usize,
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
    let task = Task {
        session: Arc::clone(&session),
        ctx: ctx.clone(),
        _permit: permit,
    };
    // The task, not this request, owns the client: the request may be dropped at any point.
    ctx.tracker.spawn(task.run(client, first, commands, opened));
    Ok(match answer.await {
        Ok(Ok(())) => Ok(session),
        Ok(Err(code)) => Err(code),
        Err(_) => Err(DisconnectCode::Internal),
    })
}

/// How a session's client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// With a `disconnect` push.
    Disconnect(DisconnectCode),
    /// No request came for `session_timeout`: like a dropped connection, nobody is left to tell.
    Expired,
    /// The client ended the session (`close`): like a WebSocket close frame, nobody is left to tell.
    Closed,
}

/// A session's task.
struct Task {
    session: Arc<HttpSession>,
    ctx: SessionEnv,
    /// The session's place under `[limits]`, given back when the task ends.
    _permit: Option<Permit>,
}

impl Task {
    async fn run(
        self,
        mut client: Client,
        first: Bytes,
        mut commands: mpsc::Receiver<Upstream>,
        opened: oneshot::Sender<Result<(), DisconnectCode>>,
    ) {
        let end: (End, Option<oneshot::Sender<Outcome>>) = match client.handle_frame(&first).await {
            Err(DisconnectCode::BadRequest) => {
                self.ctx.sessions.remove(&self.session.id);
                client.close(Some(DisconnectCode::BadRequest)).await;
                let _ = opened.send(Err(DisconnectCode::BadRequest));
                return;
            }
            Err(code) => {
                // A refused token, say: the error reply and the disconnect push wait on the
                // downstream, where the client reads them as it would over WebSocket.
                self.finish_downstream(&client, code);
                let _ = opened.send(Ok(()));
                (End::Disconnect(code), None)
            }
            Ok(()) => {
                self.drain_now(&client);
                let _ = opened.send(Ok(()));
                tracing::debug!(session = %self.session.id, client = %client.id(), "HTTP session opened");
                self.serve(&mut client, &mut commands).await
            }
        };
        // Commands still queued are answered `Gone`: their senders see the channel close.
        drop(commands);
        let closed = self.session.closed.clone();
        self.finish(client, end).await;
        // Whatever ended it, a `close` waiting for the end may answer now.
        closed.cancel();
    }

    /// Runs the client until it ends; with the answer owed to the upstream POST that ended it, if
    /// one did (given once the client is closed, so that the POST's answer means it is gone).
    async fn serve(
        &self,
        client: &mut Client,
        commands: &mut mpsc::Receiver<Upstream>,
    ) -> (End, Option<oneshot::Sender<Outcome>>) {
        let hub = Arc::clone(client.session());
        let timeout = self.ctx.session_timeout;
        let mut last_n = 0u64;
        loop {
            let deadline = self.session.deadline(timeout);
            // Not `biased`: under a flood of publications the drain branch is nearly always ready,
            // and it must not starve the client's commands or the expiry check.
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => return (End::Disconnect(DisconnectCode::Shutdown), None),
                () = self.session.close_requested.cancelled() => return (End::Closed, None),
                signal = poll_fn(|cx| self.drain(&hub, cx)) => match signal {
                    Some(Signal::Disconnect(code)) => return (End::Disconnect(code), None),
                    Some(Signal::Control) => client.apply_controls().await,
                    None => {}
                },
                Some(up) = commands.recv() => {
                    let outcome = if up.n <= last_n {
                        Outcome::Duplicate
                    } else if up.n > last_n + 1 {
                        Outcome::OutOfOrder { expected: last_n + 1 }
                    } else {
                        last_n = up.n;
                        match client.handle_frame(&up.body).await {
                            Ok(()) => Outcome::Done,
                            Err(code) => Outcome::Ended(code),
                        }
                    };
                    if let Outcome::Ended(code) = outcome {
                        return (End::Disconnect(code), Some(up.reply));
                    }
                    // Replies are on the downstream before the POST is answered: a client that
                    // polls right after finds them.
                    self.drain_now(client);
                    let _ = up.reply.send(outcome);
                },
                () = tokio::time::sleep_until(deadline) => {
                    if self.session.idle(timeout) {
                        return (End::Expired, None);
                    }
                },
            }
            if self.over_limit(&hub) {
                return (End::Disconnect(DisconnectCode::Slow), None);
            }
        }
    }

    /// Moves what the hub queued into the downstream buffer and wakes its readers.
    fn drain(&self, hub: &switchboard_hub::Session, cx: &mut Context<'_>) -> Poll<Option<Signal>> {
        let mut moved = Vec::new();
        let signal = hub.poll_drain(cx, |msg| {
            moved.push(msg.message().payload().clone());
            true
        });
        if !moved.is_empty() {
            let mut ds = self.session.downstream();
            for msg in moved {
                ds.push(msg);
            }
            drop(ds);
            self.session.report_queued();
            self.session.notify();
        }
        signal
    }

    /// [`Task::drain`] without waiting. The task's own waker is registered again the next time the
    /// loop polls, and the hub checks its queue after registering, so no wake-up is lost meanwhile.
    fn drain_now(&self, client: &Client) {
        let _ = self.drain(client.session(), &mut Context::from_waker(Waker::noop()));
    }

    /// Whether what waits for the client, here and still in the hub, is over `[client] queue_bytes`.
    fn over_limit(&self, hub: &switchboard_hub::Session) -> bool {
        let queued = self.session.downstream().queued_bytes() + hub.queued_bytes();
        if queued > self.ctx.queue_bytes {
            tracing::info!(session = %self.session.id, queued, limit = self.ctx.queue_bytes, "slow HTTP client: disconnecting");
            true
        } else {
            false
        }
    }

    /// Queues what the client has left to read and the `disconnect` push, as the WebSocket transport
    /// sends them before its close frame; a slow client's queue is dropped instead.
    fn finish_downstream(&self, client: &Client, code: DisconnectCode) {
        let slow = code == DisconnectCode::Slow;
        if !slow {
            self.drain_now(client);
        }
        let delay =
            (code == DisconnectCode::Shutdown).then(|| self.ctx.restart.reconnect_delay_ms());
        self.session
            .downstream()
            .end(encode::disconnect_push_after(code, delay), slow);
        self.session.notify();
    }

    async fn finish(self, client: Client, (end, owed): (End, Option<oneshot::Sender<Outcome>>)) {
        let code = match end {
            End::Expired | End::Closed => {
                let how = if end == End::Closed {
                    "HTTP session closed by the client"
                } else {
                    "HTTP session expired"
                };
                tracing::debug!(session = %self.session.id, client = %client.id(), "{how}");
                self.ctx.sessions.remove(&self.session.id);
                // A request that found the session just before it ended gets 404 too.
                self.session.downstream().close();
                self.session.notify();
                client.close(None).await;
                return;
            }
            End::Disconnect(code) => code,
        };
        if !self.session.downstream().ending() {
            self.finish_downstream(&client, code);
        }
        tracing::debug!(session = %self.session.id, client = %client.id(), code = code.code(), "HTTP session ended");
        client.close(Some(code)).await;
        if let Some(reply) = owed {
            let _ = reply.send(Outcome::Ended(code));
        }
        if code == DisconnectCode::Shutdown {
            // Open downstreams take the push now; the server is going away either way.
            return;
        }
        // The session stays until a downstream request carries the disconnect push, or until nobody
        // came for it within the session timeout.
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
