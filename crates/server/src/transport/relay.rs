//! Requests that land on another node than their session's: no sticky load balancing, for the HTTP
//! fallbacks (`fallback/relayed.rs`) and for Engine.IO polling (`socketio/relayed.rs`) alike.
//!
//! A session lives in the memory of the node that opened it (its task owns the client), and its id
//! names that node: `<node>-<random>` (a fallback token adds `.<secret>`). A request that reaches
//! another node is relayed to the session's node through the engine's node-to-node messages (Redis
//! pub/sub or NATS), which runs it against the session with the very functions that serve a local
//! request, and sends back the answer, which the first node passes on as it is. Only the session's
//! node knows a fallback session's secret: a relayed request with a wrong one is answered 404 there,
//! like any unknown session.
//!
//! ```text
//! client --send/poll--> node B --Q{from:B,id:7,op:poll,...}--> node A (holds the session)
//!        <---answer---- node B <--A{id:7,re:http,status:200}--  node A runs local::poll as for a local poll
//! ```
//!
//! This file is the messages and their limits, shared by both transports; each transport says which
//! requests it relays ([`Op`]) and registers what runs them here ([`Relay::serve`]).
//!
//! A fallback SSE stream on B is served by asking A, again and again, for the events after the last
//! one B wrote (`sse_next`, held on A until there is something or `sse_ping_interval` passes, when B
//! writes a ping). B never acknowledges on the client's behalf: what it wrote may be lost on the way,
//! and the client acknowledges as always (through `send`, or with `Last-Event-ID` when it reconnects).
//!
//! A request whose caller on B stops waiting (its client went away, or no answer came in time) is
//! cancelled on A ([`Incoming::cancelled`]), as a local request whose connection closes: an
//! Engine.IO poll that goes away closes its session there, as the reference server does, rather than
//! take packets to nobody.
//!
//! Limits: each node relays at most `[fallback] max_relayed_requests` requests at once and runs at most
//! as many relayed to it; beyond that a request is answered 503 with `Retry-After`. A node waits for
//! an answer as long as the request may be held there (`poll_timeout` for a long poll,
//! `sse_ping_interval` for an SSE step, `pingInterval + pingTimeout` for an Engine.IO poll,
//! `relay_timeout` for a send's commands) plus `relay_timeout`; without an answer by then, or at once
//! when no such node listens, the session counts as gone (404 for the fallbacks, 400 `Session ID
//! unknown` for Engine.IO).
//!
//! Unless the engine may have lost the message: while Redis is down or recovering, no answer proves
//! nothing (the request or its answer may be lost, the session's node may not listen again yet), so
//! the request is answered 503 with `Retry-After` instead, never "gone" for a session that may be
//! alive ([`Engine::node_messages_uncertain`]). A client retrying then reaches the session once Redis
//! is back, or learns it is really gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use switchboard_engine::{Engine, EngineError};
use switchboard_hub::Node;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

/// What a node asks of the session's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// An upstream POST (`send`): its query string; its body follows the message's head.
    Send {
        /// The request's query string.
        query: String,
    },
    /// A long or short poll: its query string.
    Poll {
        /// The request's query string.
        query: String,
    },
    /// An SSE stream opens: its query string and its `Last-Event-ID` header, as sent.
    SseOpen {
        /// The request's query string.
        query: String,
        /// The `Last-Event-ID` header's bytes, if any.
        last_event_id: Option<Vec<u8>>,
    },
    /// The client ends the session (`close`): its query string.
    Close {
        /// The request's query string.
        query: String,
    },
    /// The next events of a stream opened with [`Op::SseOpen`].
    SseNext {
        /// The session token (checked again: the secret never leaves the session's node).
        session: String,
        /// The downstream reader number [`Answer::Opened`] gave.
        reader: u64,
        /// The newest batch already written to the stream.
        after: u64,
    },
    /// An Engine.IO polling GET (receive).
    EioPoll {
        /// The endpoint's path (`[socketio] path`; the conformance mode has two endpoints).
        path: String,
        /// The session id.
        sid: String,
    },
    /// An Engine.IO polling POST (send); its body follows the message's head, read whole by the node
    /// it landed on.
    EioPost {
        /// The endpoint's path.
        path: String,
        /// The session id.
        sid: String,
        /// Its `Content-Type` was `application/octet-stream` (which Engine.IO v4 refuses).
        binary: bool,
        /// Why the node it landed on could not read its body, if it could not: the session's node
        /// answers as it does when it cannot read one itself.
        unread: Option<Unread>,
    },
}

impl Op {
    /// The transport whose sessions the request is for.
    pub fn service(&self) -> Service {
        match self {
            Self::Send { .. }
            | Self::Poll { .. }
            | Self::SseOpen { .. }
            | Self::Close { .. }
            | Self::SseNext { .. } => Service::Fallback,
            Self::EioPoll { .. } | Self::EioPost { .. } => Service::EngineIo,
        }
    }
}

/// The transports whose requests are relayed, each run by what it registered with [`Relay::serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The HTTP fallbacks (`[fallback]`).
    Fallback,
    /// Engine.IO polling (`[socketio]`).
    EngineIo,
}

/// Why a request body could not be read by the node the request landed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unread {
    /// It was larger than `limit` bytes.
    TooLarge {
        /// The largest body allowed.
        limit: usize,
    },
    /// It did not arrive (the client went away, or it took too long): why.
    Failed {
        /// What went wrong, for the log.
        why: String,
    },
}

/// What the session's node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "re", rename_all = "snake_case")]
pub enum Answer {
    /// An HTTP response to pass on as it is; its body follows the message's head.
    Http {
        /// The status code.
        status: u16,
        /// Its `Content-Type`, if any.
        content_type: Option<String>,
        /// Its `Retry-After`, if any.
        retry_after: Option<String>,
    },
    /// The SSE stream is open as downstream reader `reader`; the client has every batch up to `sent`.
    Opened {
        /// The reader number, for [`Op::SseNext`].
        reader: u64,
        /// The acknowledged sequence number: events follow it.
        sent: u64,
    },
    /// SSE events (the body), the newest numbered `seq`. `end`: the stream ends after them (they hold
    /// the `disconnect` push, or too much is unacknowledged).
    Events {
        /// The sequence number of the newest batch in the body.
        seq: u64,
        /// The stream ends after these events.
        end: bool,
    },
    /// No event within `sse_ping_interval`: time for a ping.
    Quiet,
    /// The stream is over: a newer downstream request replaced it, or the session ended.
    Ended,
    /// The node runs too many relayed requests already: try again later.
    Busy,
    /// The node does not serve this kind of request (its endpoint is off): it holds no such session.
    Unserved,
}

/// Why a relayed request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The session's node does not listen, or did not answer in time: the session counts as gone.
    #[error("node {0} holding the session is gone")]
    Gone(String),
    /// Too many requests are relayed between nodes at once (here or at the session's node).
    #[error(
        "too many requests relayed between nodes at once ([fallback] max_relayed_requests): retry shortly"
    )]
    Busy,
    /// The engine cannot carry messages (Redis is unreachable).
    #[error("cannot reach the session's node: {0}")]
    Unavailable(String),
    /// A message between nodes that does not parse (another version, or a bug).
    #[error("unreadable message between nodes: {0}")]
    Malformed(String),
}

/// A message between nodes: a kind byte (`Q` request, `A` answer, `C` cancel), a JSON head, a newline, and the
/// body as raw bytes (commands, or a response body), so that bodies are never re-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request from node `from`, to be answered with the same `id`.
    Request {
        /// The asking node.
        from: String,
        /// The correlation id.
        id: u64,
        /// What to do.
        op: Op,
        /// The request body (commands of a `send`).
        body: Bytes,
    },
    /// The answer to request `id`.
    Answer {
        /// The correlation id of the request.
        id: u64,
        /// What became of it.
        answer: Answer,
        /// The response body or the SSE events.
        body: Bytes,
    },
    /// Node `from` no longer waits for the answer to its request `id`: stop running it.
    Cancel {
        /// The asking node.
        from: String,
        /// The correlation id of the request.
        id: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct RequestHead {
    from: String,
    id: u64,
    #[serde(flatten)]
    op: Op,
}

#[derive(Serialize, Deserialize)]
struct AnswerHead {
    id: u64,
    #[serde(flatten)]
    answer: Answer,
}

#[derive(Serialize, Deserialize)]
struct CancelHead {
    from: String,
    id: u64,
}

impl Message {
    /// The message as sent between nodes.
    pub fn encode(&self) -> Bytes {
        let (kind, head, body) = match self {
            Self::Request { from, id, op, body } => (
                b'Q',
                serde_json::to_vec(&RequestHead {
                    from: from.clone(),
                    id: *id,
                    op: op.clone(),
                }),
                &body[..],
            ),
            Self::Answer { id, answer, body } => (
                b'A',
                serde_json::to_vec(&AnswerHead {
                    id: *id,
                    answer: answer.clone(),
                }),
                &body[..],
            ),
            Self::Cancel { from, id } => (
                b'C',
                serde_json::to_vec(&CancelHead {
                    from: from.clone(),
                    id: *id,
                }),
                &[][..],
            ),
        };
        // Plain structs of strings and numbers always serialize.
        let head = head.unwrap_or_default();
        let mut out = Vec::with_capacity(2 + head.len() + body.len());
        out.push(kind);
        out.extend_from_slice(&head);
        out.push(b'\n');
        out.extend_from_slice(body);
        Bytes::from(out)
    }

    /// A message from another node. JSON heads hold no raw newline, so the first one ends the head.
    pub fn decode(bytes: &Bytes) -> Result<Self, RelayError> {
        let bad = |e: &dyn std::fmt::Display| RelayError::Malformed(e.to_string());
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad(&"no head"))?;
        let head = bytes.get(1..newline).ok_or_else(|| bad(&"no kind"))?;
        let body = bytes.slice(newline + 1..);
        match bytes.first() {
            Some(b'Q') => {
                let h: RequestHead = serde_json::from_slice(head).map_err(|e| bad(&e))?;
                Ok(Self::Request {
                    from: h.from,
                    id: h.id,
                    op: h.op,
                    body,
                })
            }
            Some(b'A') => {
                let h: AnswerHead = serde_json::from_slice(head).map_err(|e| bad(&e))?;
                Ok(Self::Answer {
                    id: h.id,
                    answer: h.answer,
                    body,
                })
            }
            Some(b'C') => {
                let h: CancelHead = serde_json::from_slice(head).map_err(|e| bad(&e))?;
                Ok(Self::Cancel {
                    from: h.from,
                    id: h.id,
                })
            }
            _ => Err(bad(&"unknown kind")),
        }
    }
}

/// A request another node relayed here, to run and answer with [`Relay::answer`].
#[derive(Debug)]
pub struct Incoming {
    /// The asking node.
    pub from: String,
    /// The correlation id to answer with.
    pub id: u64,
    /// What to do.
    pub op: Op,
    /// The request body.
    pub body: Bytes,
    /// Its place among the relayed requests this node runs; `None`: over the limit, answer
    /// [`Answer::Busy`] without running it.
    pub permit: Option<OwnedSemaphorePermit>,
    /// Cancelled when the asking node stops waiting for the answer (its client went away, or no
    /// answer came in time): a runner that holds requests stops, as for a local request whose
    /// connection closed.
    pub cancelled: CancellationToken,
    /// Keeps the request where a cancel finds it, until it is done.
    _running: Running,
}

/// What runs the requests of one [`Service`] relayed to this node: called from the engine's delivery
/// task, it must not wait; it runs each request in a task of its own and answers it with
/// [`Relay::answer`].
pub type Runner = Arc<dyn Fn(&Arc<Relay>, Incoming) + Send + Sync>;

/// Waiting callers by correlation id.
type Waiting = HashMap<u64, oneshot::Sender<(Answer, Bytes)>>;

/// The relayed requests this node runs, by asking node and correlation id: what a cancel finds.
type Runs = HashMap<(String, u64), CancellationToken>;

/// Removes a relayed request from [`Runs`] once it is done (answered, cancelled or dropped).
#[derive(Debug)]
struct Running {
    runs: Arc<Mutex<Runs>>,
    key: (String, u64),
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.runs).remove(&self.key);
    }
}

/// This node's side of the relay: requests it sent and waits for, the requests other nodes relayed
/// here and what runs them, and the limits of both directions.
pub struct Relay {
    engine: Arc<dyn Engine>,
    node_id: String,
    /// Added to every wait for an answer: the way there and back, and a node's slowness.
    timeout: Duration,
    next_id: AtomicU64,
    waiting: Mutex<Waiting>,
    runs: Arc<Mutex<Runs>>,
    runners: Mutex<HashMap<Service, Runner>>,
    outgoing: Arc<Semaphore>,
    incoming: Arc<Semaphore>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("node_id", &self.node_id)
            .field("waiting", &lock(&self.waiting).len())
            .field("running", &lock(&self.runs).len())
            .finish_non_exhaustive()
    }
}

/// Forgets a caller's entry however its wait ends (answer, timeout, or the request dropped); when
/// no answer came for a request that went out, tells its node to stop running it.
struct Forget<'a> {
    relay: &'a Relay,
    node: &'a str,
    id: u64,
    /// The request may have reached the node.
    sent: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let unanswered = lock(&self.relay.waiting).remove(&self.id).is_some();
        if unanswered && self.sent {
            self.relay.cancel(self.node, self.id);
        }
    }
}

impl Relay {
    /// A relay over `engine`, with at most `limit` requests in flight each way, waiting `timeout`
    /// beyond each request's own hold for an answer.
    pub fn new(engine: Arc<dyn Engine>, limit: usize, timeout: Duration) -> Self {
        Self {
            node_id: engine.node_id().to_owned(),
            engine,
            timeout,
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            runs: Arc::default(),
            runners: Mutex::new(HashMap::new()),
            outgoing: Arc::new(Semaphore::new(limit)),
            incoming: Arc::new(Semaphore::new(limit)),
        }
    }

    /// Takes every message other nodes send to this one through `node`'s engine: answers go to
    /// their waiting callers, requests to the runner of their [`Service`]. Once per node.
    pub fn listen(self: &Arc<Self>, node: &Node) {
        let relay = Arc::clone(self);
        node.set_node_message_handler(Arc::new(move |message: Bytes| relay.dispatch(&message)));
    }

    /// Has `runner` run the requests of `service` relayed to this node. Until a service has one
    /// (its endpoint is off), its requests are answered [`Answer::Unserved`]: no session of it
    /// lives here.
    pub fn serve(&self, service: Service, runner: Runner) {
        if lock(&self.runners).insert(service, runner).is_some() {
            tracing::warn!(
                ?service,
                "a second runner of relayed requests replaced the first"
            );
        }
    }

    fn dispatch(self: &Arc<Self>, message: &Bytes) {
        let Some(incoming) = self.receive(message) else {
            return;
        };
        let runner = lock(&self.runners).get(&incoming.op.service()).cloned();
        if let Some(run) = runner {
            run(self, incoming);
            return;
        }
        let relay = Arc::clone(self);
        tokio::spawn(async move {
            let (to, id) = (incoming.from.clone(), incoming.id);
            relay.answer(&to, id, Answer::Unserved, Bytes::new()).await;
        });
    }

    /// This node's id, the first part of its sessions' ids.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node holding the session `id` (`<node>-<random>`) names, when it is another node.
    /// `None` for this node's sessions and for ids naming no node: those are looked up here (and
    /// found or not).
    pub fn remote_node<'a>(&self, id: &'a str) -> Option<&'a str> {
        let (node, _) = id.split_once('-')?;
        // Only what could be a node id reaches the engine: anything else is no session of ours.
        let plausible = node.len() == self.node_id.len()
            && node
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (plausible && node != self.node_id).then_some(node)
    }

    /// Sends `op` (with `body`) to `node` and waits for its answer: up to `hold` (what the request
    /// may be held there) plus the relay timeout. No answer, or no such node, is
    /// [`RelayError::Gone`] only when the engine lost no message meanwhile; else
    /// [`RelayError::Unavailable`]. A caller that stops waiting (dropped, or out of time) cancels
    /// the request on `node` ([`Incoming::cancelled`]).
    pub async fn call(
        &self,
        node: &str,
        op: Op,
        body: Bytes,
        hold: Duration,
    ) -> Result<(Answer, Bytes), RelayError> {
        let _permit = Arc::clone(&self.outgoing)
            .try_acquire_owned()
            .map_err(|_| RelayError::Busy)?;
        let since = Instant::now();
        let gone = |node: String| {
            if self.engine.node_messages_uncertain(&node, since) {
                RelayError::Unavailable(format!(
                    "no answer from node {node}, but Redis was unreachable or is recovering: the \
                     message may be lost, the node may be alive"
                ))
            } else {
                RelayError::Gone(node)
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id, tx);
        // Sent as soon as the engine starts on it: a caller dropped meanwhile still cancels.
        let mut forget = Forget {
            relay: self,
            node,
            id,
            sent: true,
        };
        let message = Message::Request {
            from: self.node_id.clone(),
            id,
            op,
            body,
        };
        if let Err(e) = self.engine.send_to_node(node, message.encode()).await {
            return Err(match e {
                EngineError::UnknownNode(n) => {
                    forget.sent = false;
                    gone(n)
                }
                EngineError::Unavailable(m) => {
                    forget.sent = false;
                    RelayError::Unavailable(m)
                }
                EngineError::UnknownOutcome(m) => RelayError::Unavailable(m),
            });
        }
        match tokio::time::timeout(hold + self.timeout, rx).await {
            Ok(Ok((Answer::Busy, _))) => Err(RelayError::Busy),
            Ok(Ok((Answer::Unserved, _))) => Err(RelayError::Gone(node.to_owned())),
            Ok(Ok(answer)) => Ok(answer),
            // The entry is only dropped unanswered by `forget`, after this wait: a timeout, then.
            Ok(Err(_)) | Err(_) => {
                tracing::debug!(node, id, "relayed request not answered in time");
                Err(gone(node.to_owned()))
            }
        }
    }

    /// Tells `node` that nobody waits for the answer to request `id` any more. Fire-and-forget,
    /// from a drop: a cancel that is lost leaves the request to end as it would have.
    fn cancel(&self, node: &str, id: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = Arc::clone(&self.engine);
        let node = node.to_owned();
        let message = Message::Cancel {
            from: self.node_id.clone(),
            id,
        }
        .encode();
        runtime.spawn(async move {
            if let Err(e) = engine.send_to_node(&node, message).await {
                tracing::debug!(node, id, error = %e, "cancel of a relayed request not delivered");
            }
        });
    }

    /// Takes a message another node sent: an answer goes to its waiting caller (or is dropped if
    /// the caller gave up), a cancel to the request it names (if it still runs), a request is
    /// returned to be run. Never waits.
    pub fn receive(&self, message: &Bytes) -> Option<Incoming> {
        match Message::decode(message) {
            Ok(Message::Answer { id, answer, body }) => {
                if let Some(tx) = lock(&self.waiting).remove(&id) {
                    let _ = tx.send((answer, body));
                }
                None
            }
            Ok(Message::Request { from, id, op, body }) => {
                let cancelled = CancellationToken::new();
                let key = (from.clone(), id);
                lock(&self.runs).insert(key.clone(), cancelled.clone());
                Some(Incoming {
                    from,
                    id,
                    op,
                    body,
                    permit: Arc::clone(&self.incoming).try_acquire_owned().ok(),
                    cancelled,
                    _running: Running {
                        runs: Arc::clone(&self.runs),
                        key,
                    },
                })
            }
            Ok(Message::Cancel { from, id }) => {
                if let Some(cancelled) = lock(&self.runs).get(&(from, id)) {
                    cancelled.cancel();
                }
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "message from another node ignored");
                None
            }
        }
    }

    /// Sends the answer to request `id` back to node `to`. A node gone meanwhile is no one's loss.
    pub async fn answer(&self, to: &str, id: u64, answer: Answer, body: Bytes) {
        let message = Message::Answer { id, answer, body };
        if let Err(e) = self.engine.send_to_node(to, message.encode()).await {
            tracing::debug!(node = to, id, error = %e, "answer to a relayed request not delivered");
        }
    }

    /// Relayed requests this node runs (for tests).
    #[cfg(test)]
    fn running(&self) -> usize {
        lock(&self.runs).len()
    }

    /// Callers waiting for an answer (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }
}

/// An HTTP response as an [`Answer::Http`] and its body, to send back.
pub async fn to_answer(resp: Response) -> (Answer, Bytes) {
    let (parts, body) = resp.into_parts();
    let text = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let answer = Answer::Http {
        status: parts.status.as_u16(),
        content_type: text(header::CONTENT_TYPE),
        retry_after: text(header::RETRY_AFTER),
    };
    // Every handler run for a relayed request answers a body already in memory: collecting it
    // cannot wait.
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (answer, body)
}

/// An [`Answer::Http`] back as the response it was; `None` for another kind of answer.
pub fn from_answer(answer: &Answer, body: Bytes) -> Option<Response> {
    let Answer::Http {
        status,
        content_type,
        retry_after,
    } = answer
    else {
        return None;
    };
    let status = StatusCode::from_u16(*status).ok()?;
    let mut resp = (status, Body::from(body)).into_response();
    let headers = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::RETRY_AFTER, retry_after),
    ] {
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    Some(resp)
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section here
/// leaves it valid).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::OnceLock;

    use switchboard_engine::{EngineHandler, MemoryEngine, PresenceEvent};
    use switchboard_protocol::{ClientInfo, Publication};

    use super::*;

    /// Hands the memory engine's node messages (only ever to itself) to a relay, answering each
    /// request as `reply` says: `None` leaves it unanswered (and keeps it, so that a cancel finds
    /// it). With `dispatch`, the relay's own [`Relay::dispatch`] routes them instead.
    struct Loopback {
        relay: OnceLock<Arc<Relay>>,
        reply: fn(&Op) -> Option<Answer>,
        dispatch: bool,
        kept: Mutex<Vec<Incoming>>,
    }

    impl EngineHandler for Loopback {
        fn on_publication(&self, _: &str, _: Arc<Publication>, _: &str) {}
        fn on_presence(&self, _: &str, _: PresenceEvent, _: Arc<ClientInfo>) {}
        fn on_stream_gap(&self, _: &str) {}
        fn on_node_message(&self, message: Bytes) {
            let relay = Arc::clone(self.relay.get().unwrap());
            if self.dispatch {
                relay.dispatch(&message);
                return;
            }
            let Some(mut incoming) = relay.receive(&message) else {
                return;
            };
            let answer = if incoming.permit.is_none() {
                Some(Answer::Busy)
            } else {
                (self.reply)(&incoming.op)
            };
            let Some(answer) = answer else {
                // Unanswered, but no longer counted: the limits are tested on their own.
                incoming.permit = None;
                lock(&self.kept).push(incoming);
                return;
            };
            tokio::spawn(async move {
                let body = incoming.body.clone();
                relay
                    .answer(&incoming.from, incoming.id, answer, body)
                    .await;
                drop(incoming);
            });
        }
    }

    /// What the relays of these tests wait beyond a request's hold.
    const TIMEOUT: Duration = Duration::from_millis(200);

    /// A relay that reaches only itself, through a memory engine; its handler.
    fn loopback_with(
        limit: usize,
        reply: fn(&Op) -> Option<Answer>,
        dispatch: bool,
    ) -> (Arc<Relay>, Arc<Loopback>) {
        let engine = Arc::new(MemoryEngine::new());
        let handler = Arc::new(Loopback {
            relay: OnceLock::new(),
            reply,
            dispatch,
            kept: Mutex::new(Vec::new()),
        });
        engine.set_handler(Arc::clone(&handler) as Arc<dyn EngineHandler>);
        let relay = Arc::new(Relay::new(engine, limit, TIMEOUT));
        handler.relay.set(Arc::clone(&relay)).unwrap();
        (relay, handler)
    }

    /// A relay that reaches only itself, answering as `reply` says.
    fn loopback(limit: usize, reply: fn(&Op) -> Option<Answer>) -> Arc<Relay> {
        loopback_with(limit, reply, false).0
    }

    fn poll() -> Op {
        Op::Poll {
            query: "session=x&ack=1".into(),
        }
    }

    fn ok(_: &Op) -> Option<Answer> {
        Some(Answer::Quiet)
    }

    fn silent(_: &Op) -> Option<Answer> {
        None
    }

    #[tokio::test]
    async fn an_answer_reaches_its_caller_with_its_body() {
        let relay = loopback(8, ok);
        let me = relay.node_id().to_owned();
        let (answer, body) = relay
            .call(&me, poll(), Bytes::from_static(b"echo"), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((answer, &body[..]), (Answer::Quiet, &b"echo"[..]));
        assert_eq!(relay.waiting(), 0);
    }

    #[tokio::test]
    async fn no_answer_within_the_hold_and_the_timeout_is_a_gone_node() {
        let relay = loopback(8, silent);
        let me = relay.node_id().to_owned();
        let started = std::time::Instant::now();
        let hold = Duration::from_millis(300);
        let err = relay
            .call(&me, poll(), Bytes::new(), hold)
            .await
            .unwrap_err();
        assert_eq!(err, RelayError::Gone(me));
        // The hold plus the relay timeout, not a moment less.
        let took = started.elapsed();
        assert!(
            took >= hold + TIMEOUT && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(relay.waiting(), 0, "the caller's entry is forgotten");
    }

    #[tokio::test]
    async fn an_unknown_node_is_gone_at_once() {
        let relay = loopback(8, ok);
        let other = if relay.node_id() == "00000000" {
            "00000001"
        } else {
            "00000000"
        };
        let started = std::time::Instant::now();
        let err = relay
            .call(other, poll(), Bytes::new(), Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(err, RelayError::Gone(other.into()));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(relay.waiting(), 0);
    }

    #[tokio::test]
    async fn a_late_or_unknown_answer_is_dropped() {
        let relay = loopback(8, silent);
        let late = Message::Answer {
            id: 12345,
            answer: Answer::Ended,
            body: Bytes::new(),
        };
        assert!(relay.receive(&late.encode()).is_none());
        assert!(relay.receive(&Bytes::from_static(b"garbage")).is_none());
        assert_eq!(relay.waiting(), 0);
    }

    #[tokio::test]
    async fn a_dropped_caller_forgets_its_entry() {
        let relay = loopback(8, silent);
        let me = relay.node_id().to_owned();
        let call = relay.call(&me, poll(), Bytes::new(), Duration::from_secs(60));
        let _ = tokio::time::timeout(Duration::from_millis(10), call).await;
        assert_eq!(relay.waiting(), 0);
    }

    /// Waits (a second at most) until `token` is cancelled; whether it was.
    async fn cancelled(token: &CancellationToken) -> bool {
        tokio::time::timeout(Duration::from_secs(1), token.cancelled())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_cancels_the_request_and_an_answered_one_does_not() {
        let (relay, handler) = loopback_with(8, silent, false);
        let me = relay.node_id().to_owned();
        // Out of time.
        let err = relay.call(&me, poll(), Bytes::new(), Duration::ZERO).await;
        assert_eq!(err.unwrap_err(), RelayError::Gone(me.clone()));
        let token = lock(&handler.kept)[0].cancelled.clone();
        assert!(cancelled(&token).await, "cancelled after the timeout");
        // Dropped while it waits (its client went away).
        let call = relay.call(&me, poll(), Bytes::new(), Duration::from_secs(60));
        let _ = tokio::time::timeout(Duration::from_millis(20), call).await;
        let token = lock(&handler.kept)[1].cancelled.clone();
        assert!(cancelled(&token).await, "cancelled when dropped");
        assert_eq!(relay.running(), 2, "kept, though cancelled");
        lock(&handler.kept).clear();
        assert_eq!(relay.running(), 0, "forgotten once done");

        // Answered: nothing to cancel, and nothing left behind.
        let (relay, _) = loopback_with(8, ok, false);
        let me = relay.node_id().to_owned();
        relay
            .call(&me, poll(), Bytes::new(), Duration::ZERO)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((relay.running(), relay.waiting()), (0, 0));
    }

    fn eio_poll() -> Op {
        Op::EioPoll {
            path: "/socket.io/".into(),
            sid: "x".into(),
        }
    }

    #[tokio::test]
    async fn requests_go_to_their_service_and_an_unserved_one_is_gone_at_once() {
        let (relay, _) = loopback_with(8, silent, true);
        let me = relay.node_id().to_owned();
        let runner: Runner = Arc::new(|relay: &Arc<Relay>, incoming: Incoming| {
            let relay = Arc::clone(relay);
            tokio::spawn(async move {
                let body = Bytes::from(format!("{:?}", incoming.op.service()));
                relay
                    .answer(&incoming.from, incoming.id, Answer::Quiet, body)
                    .await;
            });
        });
        relay.serve(Service::EngineIo, runner);
        let (answer, body) = relay
            .call(&me, eio_poll(), Bytes::new(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!((answer, &body[..]), (Answer::Quiet, &b"EngineIo"[..]));
        // No runner for the fallbacks here: their sessions cannot be here, and the caller knows at
        // once rather than after the hold.
        let started = std::time::Instant::now();
        let err = relay
            .call(&me, poll(), Bytes::new(), Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(err, RelayError::Gone(me));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(relay.running(), 0);
    }

    #[tokio::test]
    async fn requests_in_flight_are_bounded_both_ways() {
        // Out: one call waits, the second is refused at once, and the place is free again after.
        let relay = loopback(1, silent);
        let me = relay.node_id().to_owned();
        let first = relay.call(&me, poll(), Bytes::new(), Duration::from_millis(100));
        tokio::pin!(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), first.as_mut())
                .await
                .is_err()
        );
        let second = relay.call(&me, poll(), Bytes::new(), Duration::ZERO).await;
        assert_eq!(second.unwrap_err(), RelayError::Busy);
        assert!(matches!(first.await, Err(RelayError::Gone(_))));
        assert!(matches!(
            relay.call(&me, poll(), Bytes::new(), Duration::ZERO).await,
            Err(RelayError::Gone(_))
        ));
        // In: a request over the limit comes without a permit, and its caller hears Busy.
        let relay = loopback(1, ok);
        let held = relay.incoming.clone().try_acquire_owned().unwrap();
        let me = relay.node_id().to_owned();
        let busy = relay.call(&me, poll(), Bytes::new(), Duration::ZERO).await;
        assert_eq!(busy.unwrap_err(), RelayError::Busy);
        drop(held);
    }

    #[test]
    fn messages_survive_the_trip_and_garbage_is_refused() {
        let messages = [
            Message::Request {
                from: "0a1b2c3d".into(),
                id: 7,
                op: Op::SseOpen {
                    query: "session=a-b.c&ack=3".into(),
                    last_event_id: Some(b"4\xff".to_vec()),
                },
                body: Bytes::from_static(b"{\"id\":1}\n{\"id\":2}\n"),
            },
            Message::Request {
                from: "0a1b2c3d".into(),
                id: u64::MAX,
                op: Op::SseNext {
                    session: "x".into(),
                    reader: 3,
                    after: 9,
                },
                body: Bytes::new(),
            },
            Message::Answer {
                id: 8,
                answer: Answer::Http {
                    status: 404,
                    content_type: Some("application/json".into()),
                    retry_after: None,
                },
                body: Bytes::from_static(b"\n\x00binary\n"),
            },
            Message::Answer {
                id: 9,
                answer: Answer::Events { seq: 4, end: true },
                body: Bytes::from_static(b"id: 4\ndata: {}\n\n"),
            },
            Message::Request {
                from: "0a1b2c3d".into(),
                id: 10,
                op: Op::EioPost {
                    path: "/socket.io/".into(),
                    sid: "0a1b2c3e-AbC_-x".into(),
                    binary: false,
                    unread: None,
                },
                body: Bytes::from_static(b"42[\"x\"]\x1e3"),
            },
            Message::Request {
                from: "0a1b2c3d".into(),
                id: 11,
                op: Op::EioPost {
                    path: "/socket.io/".into(),
                    sid: "s".into(),
                    binary: true,
                    unread: Some(Unread::TooLarge { limit: 1_000_000 }),
                },
                body: Bytes::new(),
            },
            Message::Request {
                from: "0a1b2c3d".into(),
                id: 12,
                op: eio_poll(),
                body: Bytes::new(),
            },
            Message::Answer {
                id: 12,
                answer: Answer::Unserved,
                body: Bytes::new(),
            },
            Message::Cancel {
                from: "0a1b2c3d".into(),
                id: 12,
            },
        ];
        for m in messages {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
        for garbage in [
            &b""[..],
            b"Q",
            b"Q{}\n",
            b"A{\"id\":1}\n",
            b"X{\"id\":1,\"re\":\"quiet\"}\n",
            b"A{\"id\":1,\"re\":\"quiet\"}",
            b"C{\"id\":1}\n",
        ] {
            assert!(
                Message::decode(&Bytes::copy_from_slice(garbage)).is_err(),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn only_other_nodes_sessions_are_relayed() {
        let engine = Arc::new(MemoryEngine::new());
        let relay = Relay::new(engine, 1, Duration::from_secs(1));
        let me = relay.node_id().to_owned();
        let other = if me == "0a1b2c3d" {
            "0a1b2c3e"
        } else {
            "0a1b2c3d"
        };
        // A fallback session's id (its token without the secret), an Engine.IO sid (URL-safe
        // base64, '-' included).
        for id in [format!("{other}-abc"), format!("{other}--_Ab-9")] {
            assert_eq!(relay.remote_node(&id), Some(other), "{id}");
        }
        for local in [
            format!("{me}-abc"),
            "nodash".into(),
            format!("{other}abc"),
            "0A1B2C3D-abc".into(),
            "0a1b2c3-abc".into(),
            "0a1b2c3d0-abc".into(),
            "zzzzzzzz-abc".into(),
            "-0a1b2c3d".into(),
        ] {
            assert_eq!(relay.remote_node(&local), None, "{local}");
        }
    }
}
