//! Server-sent events: `GET {path}/sse?session=S[&ack=N]` (the `Last-Event-ID` header wins over `ack`).
//!
//! The stream starts with `retry: 1000`, sends the unacknowledged batches again, then every new batch
//! as one event (`id: <seq>`, one `data:` line per message), with a `: ping` comment whenever it was
//! quiet for `sse_ping_interval`. An open EventSource cannot acknowledge, so clients ack through
//! `send`; a stream whose unacknowledged bytes pass `sse_max_unacked_bytes` is closed, and EventSource
//! reconnects with `Last-Event-ID`, which acknowledges. The stream also ends when a newer downstream
//! request replaces it, and after the `disconnect` push.
//!
//! A stream for another node's session is served here all the same, its events fetched from the
//! session's node one step at a time ([`Op::SseNext`], see `relay.rs`), where [`open_here`] and
//! [`next_held`] run exactly what a local stream runs.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::Response;
use tokio::time::{Interval, MissedTickBehavior};

use super::http::{Fallback, FallbackError, Params};
use super::http_session::{HttpSession, RequestGuard};
use super::relay::{self, Answer, Op, RelayError};

/// The SSE handler.
pub(crate) async fn sse(
    State(fb): State<Fallback>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, FallbackError> {
    let params = Params::parse(&uri);
    let last_event_id = headers.get("last-event-id");
    if let Some(node) = fb.remote_node(&params) {
        let node = node.to_owned();
        return remote(fb, node, &uri, last_event_id).await;
    }
    let open = open_here(&fb, &params, last_event_id)?;
    let period = fb.config.sse_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let bytes_out = fb.node.metrics().bytes("sse", "out");
    let stream = Stream {
        bytes_out,
        fb,
        session: open.session,
        _guard: open.guard,
        reader: open.reader,
        sent: open.sent,
        ping,
        started: false,
        done: false,
    };
    Ok(event_stream(Body::from_stream(
        futures_util::stream::unfold(stream, Stream::next),
    )))
}

/// A stream of a session of this node, opened: it is the session's downstream reader now.
pub(crate) struct Opened {
    pub session: Arc<HttpSession>,
    pub guard: RequestGuard,
    /// The reader number: the stream lasts while it is the current one.
    pub reader: u64,
    /// The acknowledged sequence number: events follow it.
    pub sent: u64,
}

/// Opens a stream of a session of this node, whether the request arrived here or was relayed from
/// another node.
pub(crate) fn open_here(
    fb: &Fallback,
    params: &Params<'_>,
    last_event_id: Option<&HeaderValue>,
) -> Result<Opened, FallbackError> {
    let session = params.session(fb)?;
    let ack = match last_event_id {
        Some(id) => Some(
            id.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    FallbackError::BadRequest(format!(
                        "Last-Event-ID {id:?} is not an event id of this stream"
                    ))
                })?,
        ),
        None => params.number("ack")?,
    };
    let guard = session.begin_request();
    let reader = session
        .claim(ack)
        .ok_or_else(|| FallbackError::UnknownSession(fb.config.path.clone()))?;
    let sent = session.downstream().acked();
    Ok(Opened {
        session,
        guard,
        reader,
        sent,
    })
}

/// What a stream sends next.
pub(crate) enum Next {
    /// These events, the newest numbered `seq`; `end`: the stream ends after them.
    Events { body: Bytes, seq: u64, end: bool },
    /// Nothing yet.
    Nothing,
    /// The stream is over: a newer downstream request replaced it, or the session ended.
    Ended,
}

/// The events after `after` for downstream reader `reader`, taken under the session's lock. When
/// they carry the `disconnect` push, the session is over.
pub(crate) fn next_events(fb: &Fallback, session: &HttpSession, reader: u64, after: u64) -> Next {
    let (taken, over) = {
        let mut ds = session.downstream();
        if !ds.is_reader(reader) {
            return Next::Ended;
        }
        let Some(taken) = ds.take_events(after) else {
            return Next::Nothing;
        };
        let over = ds.unacked_bytes() > fb.config.sse_max_unacked_bytes;
        (taken, over)
    };
    if taken.last {
        fb.env.sessions.remove(session.id());
        // Wakes the session task waiting for its disconnect push to be handed out.
        session.notify();
    }
    Next::Events {
        body: taken.body,
        seq: taken.seq,
        end: taken.last || over,
    }
}

/// One step of a stream relayed from another node: the events after `after`, waiting for them up to
/// `sse_ping_interval` (then [`Answer::Quiet`]: the other node writes a ping).
pub(crate) async fn next_held(
    fb: &Fallback,
    token: &str,
    reader: u64,
    after: u64,
) -> (Answer, Bytes) {
    let Some(session) = fb.env.sessions.find(token) else {
        return (Answer::Ended, Bytes::new());
    };
    // Like a local stream's, this keeps the session alive while it waits.
    let _guard = session.begin_request();
    let deadline = tokio::time::Instant::now() + fb.config.sse_ping_interval;
    loop {
        let changed = session.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match next_events(fb, &session, reader, after) {
            Next::Events { body, seq, end } => return (Answer::Events { seq, end }, body),
            Next::Ended => return (Answer::Ended, Bytes::new()),
            Next::Nothing => {}
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => return (Answer::Quiet, Bytes::new()),
        }
    }
}

/// An SSE response around `body`.
fn event_stream(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// One open event stream.
struct Stream {
    fb: Fallback,
    session: Arc<HttpSession>,
    /// Keeps the session alive while the stream is open.
    _guard: RequestGuard,
    reader: u64,
    /// The newest batch this stream sent.
    sent: u64,
    ping: Interval,
    /// Bytes of events sent, for `/metrics`.
    bytes_out: prometheus_client::metrics::counter::Counter,
    started: bool,
    done: bool,
}

/// How long EventSource waits before reconnecting, in milliseconds.
const RETRY: &[u8] = b"retry: 1000\n\n";

const PING: &[u8] = b": ping\n\n";

impl Stream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.done {
            return None;
        }
        let session = Arc::clone(&self.session);
        loop {
            let changed = session.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = next_events(&self.fb, &session, self.reader, self.sent);
            if let Next::Ended = next {
                return None;
            }
            let first = !std::mem::replace(&mut self.started, true);
            if let Next::Events { body, seq, end } = next {
                self.sent = seq;
                self.ping.reset();
                self.done = end;
                self.bytes_out.inc_by(body.len() as u64);
                let chunk = if first {
                    [RETRY, &body[..]].concat().into()
                } else {
                    body
                };
                return Some((Ok(chunk), self));
            }
            if first {
                return Some((Ok(Bytes::from_static(RETRY)), self));
            }
            tokio::select! {
                () = changed => {}
                _ = self.ping.tick() => return Some((Ok(Bytes::from_static(PING)), self)),
            }
        }
    }
}

/// Opens, through the session's node, a stream of one of its sessions, and serves it from here.
async fn remote(
    fb: Fallback,
    node: String,
    uri: &Uri,
    last_event_id: Option<&HeaderValue>,
) -> Result<Response, FallbackError> {
    let op = Op::SseOpen {
        query: uri.query().unwrap_or_default().to_owned(),
        last_event_id: last_event_id.map(|v| v.as_bytes().to_vec()),
    };
    let (answer, body) = fb
        .relay
        .call(&node, op, Bytes::new(), Duration::ZERO)
        .await
        .map_err(|e| fb.relay_error(e))?;
    let Answer::Opened { reader, sent } = answer else {
        return relay::from_answer(&answer, body).ok_or_else(|| {
            FallbackError::Internal(format!("node {node} answered {answer:?} to an SSE open"))
        });
    };
    let token = Params::parse(uri)
        .get("session")
        .unwrap_or_default()
        .to_owned();
    let period = fb.config.sse_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = RemoteStream {
        fb,
        node,
        token,
        reader,
        sent,
        ping,
        step: None,
        retry_at: None,
        started: false,
        done: false,
    };
    Ok(event_stream(Body::from_stream(
        futures_util::stream::unfold(stream, RemoteStream::next),
    )))
}

/// One step of a relayed stream in flight: the session's node's answer to an [`Op::SseNext`].
type Step = Pin<Box<dyn Future<Output = Result<(Answer, Bytes), RelayError>> + Send>>;

/// How long a relayed stream waits before asking again when the session's node could not be
/// reached (Redis down or recovering, too many relayed requests).
const RELAY_RETRY: Duration = Duration::from_secs(1);

/// An event stream served here for a session of another node.
///
/// Its steps wait on the other node and on Redis, which may stop answering; the pings do not: one
/// goes out whenever nothing was written for `sse_ping_interval`, whatever the step in flight is
/// doing, so that the client and the proxies on the way keep the stream open through an outage, and
/// receive what the session queued meanwhile (the 2500 push that tells subscribers to recover,
/// typically) once Redis is back.
struct RemoteStream {
    fb: Fallback,
    node: String,
    token: String,
    reader: u64,
    /// The newest batch this stream sent.
    sent: u64,
    ping: Interval,
    /// The step in flight, kept across pings.
    step: Option<Step>,
    /// When to ask again after the session's node could not be reached.
    retry_at: Option<tokio::time::Instant>,
    started: bool,
    done: bool,
}

impl RemoteStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.done {
            return None;
        }
        if !std::mem::replace(&mut self.started, true) {
            return Some((Ok(Bytes::from_static(RETRY)), self));
        }
        loop {
            if let Some(at) = self.retry_at {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => self.retry_at = None,
                    _ = self.ping.tick() => return Some((Ok(Bytes::from_static(PING)), self)),
                }
                continue;
            }
            let step = match &mut self.step {
                Some(step) => step,
                None => self.step.insert(self.ask()),
            };
            let answer = tokio::select! {
                answer = step => answer,
                _ = self.ping.tick() => return Some((Ok(Bytes::from_static(PING)), self)),
            };
            self.step = None;
            match answer {
                Ok((Answer::Events { seq, end }, body)) => {
                    self.sent = seq;
                    self.done = end;
                    self.ping.reset();
                    return Some((Ok(body), self));
                }
                Ok((Answer::Quiet, _)) => {
                    self.ping.reset();
                    return Some((Ok(Bytes::from_static(PING)), self));
                }
                Err(RelayError::Busy | RelayError::Unavailable(_)) => {
                    // The session may be alive: ask again shortly, pinging meanwhile.
                    self.retry_at = Some(tokio::time::Instant::now() + RELAY_RETRY);
                }
                // Replaced, over, or its node is gone: EventSource reconnects and learns which.
                Ok(_) | Err(_) => return None,
            }
        }
    }

    /// Asks the session's node for the events after the last one written.
    fn ask(&self) -> Step {
        let op = Op::SseNext {
            session: self.token.clone(),
            reader: self.reader,
            after: self.sent,
        };
        let hold = self.fb.config.sse_ping_interval;
        let relay = Arc::clone(&self.fb.relay);
        let node = self.node.clone();
        Box::pin(async move { relay.call(&node, op, Bytes::new(), hold).await })
    }
}
