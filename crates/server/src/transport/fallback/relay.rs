//! Fallback requests that land on another node than their session's: no sticky load balancing.
//!
//! A fallback session lives in the memory of the node that opened it (its task owns the client), and
//! its id names that node: `<node>-<random>.<secret>`. A `send`, `poll`, `close` or `sse` request that reaches
//! another node is relayed to the session's node through the engine's node-to-node messages (Redis
//! pub/sub), which runs it against the session with the very functions that serve a local request
//! (`relayed.rs`), and sends back the answer, which the first node passes on as it is. Only the session's node knows
//! the secret: a relayed request with a wrong one is answered 404 there, like any unknown session.
//!
//! ```text
//! client --send/poll--> node B --Q{from:B,id:7,op:poll,...}--> node A (holds the session)
//!        <---answer---- node B <--A{id:7,re:http,status:200}--  node A runs local::poll as for a local poll
//! ```
//!
//! An SSE stream on B is served by asking A, again and again, for the events after the last one B
//! wrote (`sse_next`, held on A until there is something or `sse_ping_interval` passes, when B writes
//! a ping). B never acknowledges on the client's behalf: what it wrote may be lost on the way, and
//! the client acknowledges as always (through `send`, or with `Last-Event-ID` when it reconnects).
//!
//! Limits: each node relays at most `[fallback] max_relayed_requests` requests at once and runs at most
//! as many relayed to it; beyond that a request is answered 503 (code 111) with `Retry-After`. A
//! node waits for an answer as long as the request may be held there (`poll_timeout` for a long poll,
//! `sse_ping_interval` for an SSE step, `relay_timeout` for a send's commands) plus `relay_timeout`;
//! without an answer by then, or at once when no such node listens, the session counts as gone (404).
//!
//! Unless the engine may have lost the message: while Redis is down or recovering, no answer proves
//! nothing (the request or its answer may be lost, the session's node may not listen again yet), so
//! the request is answered 503 with `Retry-After` instead, never 404 for a session that may be alive
//! ([`Engine::node_messages_uncertain`]). A client retrying then reaches the session once Redis is
//! back, or learns it is really gone.

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

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

/// A message between nodes: a kind byte (`Q` request, `A` answer), a JSON head, a newline, and the
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
                body,
            ),
            Self::Answer { id, answer, body } => (
                b'A',
                serde_json::to_vec(&AnswerHead {
                    id: *id,
                    answer: answer.clone(),
                }),
                body,
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
}

/// Waiting callers by correlation id.
type Waiting = HashMap<u64, oneshot::Sender<(Answer, Bytes)>>;

/// This node's side of the relay: requests it sent and waits for, and the limits of both directions.
pub struct Relay {
    engine: Arc<dyn Engine>,
    node_id: String,
    /// Added to every wait for an answer: the way there and back, and a node's slowness.
    timeout: Duration,
    next_id: AtomicU64,
    waiting: Mutex<Waiting>,
    outgoing: Arc<Semaphore>,
    incoming: Arc<Semaphore>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("node_id", &self.node_id)
            .field("waiting", &lock(&self.waiting).len())
            .finish_non_exhaustive()
    }
}

/// Forgets a caller's entry however its wait ends (answer, timeout, or the request dropped).
struct Forget<'a> {
    relay: &'a Relay,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.relay.waiting).remove(&self.id);
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
            outgoing: Arc::new(Semaphore::new(limit)),
            incoming: Arc::new(Semaphore::new(limit)),
        }
    }

    /// This node's id, the first part of its sessions' ids.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node holding the session `token` names, when it is another node. `None` for this node's
    /// sessions and for tokens naming no node: those are looked up here (and found or not).
    pub fn remote_node<'a>(&self, token: &'a str) -> Option<&'a str> {
        let (id, _) = token.split_once('.')?;
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
    /// [`RelayError::Unavailable`].
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
        let _forget = Forget { relay: self, id };
        let message = Message::Request {
            from: self.node_id.clone(),
            id,
            op,
            body,
        };
        self.engine
            .send_to_node(node, message.encode())
            .await
            .map_err(|e| match e {
                EngineError::UnknownNode(n) => gone(n),
                EngineError::Unavailable(m) | EngineError::UnknownOutcome(m) => {
                    RelayError::Unavailable(m)
                }
            })?;
        match tokio::time::timeout(hold + self.timeout, rx).await {
            Ok(Ok((Answer::Busy, _))) => Err(RelayError::Busy),
            Ok(Ok(answer)) => Ok(answer),
            // The entry is only dropped unanswered by `_forget`, after this wait: a timeout, then.
            Ok(Err(_)) | Err(_) => {
                tracing::debug!(node, id, "relayed request not answered in time");
                Err(gone(node.to_owned()))
            }
        }
    }

    /// Takes a message another node sent: an answer goes to its waiting caller (or is dropped if
    /// the caller gave up), a request is returned to be run. Never waits.
    pub fn receive(&self, message: &Bytes) -> Option<Incoming> {
        match Message::decode(message) {
            Ok(Message::Answer { id, answer, body }) => {
                if let Some(tx) = lock(&self.waiting).remove(&id) {
                    let _ = tx.send((answer, body));
                }
                None
            }
            Ok(Message::Request { from, id, op, body }) => Some(Incoming {
                from,
                id,
                op,
                body,
                permit: Arc::clone(&self.incoming).try_acquire_owned().ok(),
            }),
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
    // The fallback handlers answer bodies already in memory; collecting them cannot wait.
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
    /// request as `reply` says: `None` leaves it unanswered.
    struct Loopback {
        relay: OnceLock<Arc<Relay>>,
        reply: fn(&Op) -> Option<Answer>,
    }

    impl EngineHandler for Loopback {
        fn on_publication(&self, _: &str, _: Arc<Publication>, _: &str) {}
        fn on_presence(&self, _: &str, _: PresenceEvent, _: Arc<ClientInfo>) {}
        fn on_stream_gap(&self, _: &str) {}
        fn on_node_message(&self, message: Bytes) {
            let relay = Arc::clone(self.relay.get().unwrap());
            let Some(incoming) = relay.receive(&message) else {
                return;
            };
            let answer = if incoming.permit.is_none() {
                Some(Answer::Busy)
            } else {
                (self.reply)(&incoming.op)
            };
            if let Some(answer) = answer {
                tokio::spawn(async move {
                    let body = incoming.body.clone();
                    relay
                        .answer(&incoming.from, incoming.id, answer, body)
                        .await;
                    drop(incoming);
                });
            }
        }
    }

    /// What the relays of these tests wait beyond a request's hold.
    const TIMEOUT: Duration = Duration::from_millis(200);

    /// A relay that reaches only itself, through a memory engine.
    fn loopback(limit: usize, reply: fn(&Op) -> Option<Answer>) -> Arc<Relay> {
        let engine = Arc::new(MemoryEngine::new());
        let handler = Arc::new(Loopback {
            relay: OnceLock::new(),
            reply,
        });
        engine.set_handler(Arc::clone(&handler) as Arc<dyn EngineHandler>);
        let relay = Arc::new(Relay::new(engine, limit, TIMEOUT));
        handler.relay.set(Arc::clone(&relay)).unwrap();
        relay
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
        assert_eq!(relay.remote_node(&format!("{other}-abc.def")), Some(other));
        for local in [
            format!("{me}-abc.def"),
            "nodot".into(),
            format!("{other}abc.def"),
            "0A1B2C3D-abc.def".into(),
            "0a1b2c3-abc.def".into(),
            "0a1b2c3d0-abc.def".into(),
            "zzzzzzzz-abc.def".into(),
        ] {
            assert_eq!(relay.remote_node(&local), None, "{local}");
        }
    }
}
