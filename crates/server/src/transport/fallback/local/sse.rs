//! Server-sent events: `GET {path}/sse?session=S[&ack=N]` (the `Last-Event-ID` header wins over `ack`).
//!
//! The stream starts with `retry: 1000`, sends the unacknowledged batches again, then every new batch
//! as one event (`id: <seq>`, one `data:` line per message), with a `: ping` comment whenever it was
//! quiet for `sse_ping_interval`. An open EventSource cannot acknowledge, so clients ack through
//! `send`; a stream whose unacknowledged bytes pass `sse_max_unacked_bytes` is closed, and EventSource
//! reconnects with `Last-Event-ID`, which acknowledges. The stream also ends when a newer downstream
//! request replaces it, and after the `disconnect` push.
//!
//! A stream for another node's session is served there all the same (`relayed.rs`), its events
//! fetched from the session's node one step at a time, where [`open`] and [`next_held`] run exactly
//! what a local stream runs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use tokio::time::{Interval, MissedTickBehavior};

use super::super::error::FallbackError;
use super::super::params::Params;
use super::super::session::{HttpSession, RequestGuard};
use super::context::Local;

/// Serves an SSE stream of a session of this node.
pub fn stream(
    fb: Local,
    params: &Params<'_>,
    last_event_id: Option<&HeaderValue>,
) -> Result<Response, FallbackError> {
    let open = open(&fb, params, last_event_id)?;
    let period = fb.config.sse_ping_interval;
    let bytes_out = fb.node.metrics().bytes("sse", "out");
    let stream = Stream {
        bytes_out,
        fb,
        session: open.session,
        _guard: open.guard,
        reader: open.reader,
        sent: open.sent,
        ping: ping_interval(period),
        started: false,
        done: false,
    };
    Ok(event_stream(Body::from_stream(
        futures_util::stream::unfold(stream, Stream::next),
    )))
}

/// A stream of a session of this node, opened: it is the session's downstream reader now.
pub struct Opened {
    /// The session.
    pub session: Arc<HttpSession>,
    /// Keeps the session alive while the stream is open.
    pub guard: RequestGuard,
    /// The reader number: the stream lasts while it is the current one.
    pub reader: u64,
    /// The acknowledged sequence number: events follow it.
    pub sent: u64,
}

/// Opens a stream of a session of this node, whether the request arrived here or was relayed from
/// another node.
pub fn open(
    fb: &Local,
    params: &Params<'_>,
    last_event_id: Option<&HeaderValue>,
) -> Result<Opened, FallbackError> {
    let session = fb.session(params)?;
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
    let reader = session.claim(ack).ok_or_else(|| fb.gone())?;
    let sent = session.downstream().acked();
    Ok(Opened {
        session,
        guard,
        reader,
        sent,
    })
}

/// What a stream sends next.
pub enum Next {
    /// These events, the newest numbered `seq`; `end`: the stream ends after them.
    Events {
        /// The events.
        body: Bytes,
        /// The sequence number of the newest batch in them.
        seq: u64,
        /// The stream ends after them.
        end: bool,
    },
    /// Nothing yet.
    Nothing,
    /// The stream is over: a newer downstream request replaced it, or the session ended.
    Ended,
}

/// The events after `after` for downstream reader `reader`, taken under the session's lock. When
/// they carry the `disconnect` push, the session is over.
pub fn next_events(fb: &Local, session: &HttpSession, reader: u64, after: u64) -> Next {
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
/// `sse_ping_interval` ([`Next::Nothing`] then: the other node writes a ping).
pub async fn next_held(fb: &Local, token: &str, reader: u64, after: u64) -> Next {
    let Some(session) = fb.env.sessions.find(token) else {
        return Next::Ended;
    };
    // Like a local stream's, this keeps the session alive while it waits.
    let _guard = session.begin_request();
    let deadline = tokio::time::Instant::now() + fb.config.sse_ping_interval;
    loop {
        let changed = session.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match next_events(fb, &session, reader, after) {
            Next::Nothing => {}
            next => return next,
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => return Next::Nothing,
        }
    }
}

/// A stream's ping timer: first tick one period from now.
pub fn ping_interval(period: Duration) -> Interval {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping
}

/// An SSE response around `body`.
pub fn event_stream(body: Body) -> Response {
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
    fb: Local,
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
pub const RETRY: &[u8] = b"retry: 1000\n\n";

/// A comment that keeps the stream and the proxies on its way from timing out.
pub const PING: &[u8] = b": ping\n\n";

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
