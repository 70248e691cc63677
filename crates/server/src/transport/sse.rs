//! Server-sent events: `GET {path}/sse?session=S[&ack=N]` (the `Last-Event-ID` header wins over `ack`).
//!
//! The stream starts with `retry: 1000`, sends the unacknowledged batches again, then every new batch
//! as one event (`id: <seq>`, one `data:` line per message), with a `: ping` comment whenever it was
//! quiet for `sse_ping_interval`. An open EventSource cannot acknowledge, so clients ack through
//! `send`; a stream whose unacknowledged bytes pass `sse_max_unacked_bytes` is closed, and EventSource
//! reconnects with `Last-Event-ID`, which acknowledges. The stream also ends when a newer downstream
//! request replaces it, and after the `disconnect` push.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::Response;
use tokio::time::{Interval, MissedTickBehavior};

use super::http::{Fallback, FallbackError, Params};
use super::http_session::{HttpSession, RequestGuard};

/// The SSE handler.
pub(crate) async fn sse(
    State(fb): State<Fallback>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, FallbackError> {
    let params = Params::parse(&uri);
    let session = params.session(&fb)?;
    let ack = match headers.get("last-event-id") {
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
    let period = fb.config.sse_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let bytes_out = fb.node.metrics().bytes("sse", "out");
    let stream = Stream {
        bytes_out,
        fb,
        session,
        _guard: guard,
        reader,
        sent,
        ping,
        started: false,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, Stream::next));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
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
            let taken = {
                let mut ds = session.downstream();
                if !ds.is_reader(self.reader) {
                    return None;
                }
                let taken = ds.take_events(self.sent);
                if taken.is_some() {
                    self.done = ds.unacked_bytes() > self.fb.config.sse_max_unacked_bytes;
                }
                taken
            };
            let first = !std::mem::replace(&mut self.started, true);
            if let Some(taken) = taken {
                self.sent = taken.seq;
                self.ping.reset();
                if taken.last {
                    self.fb.env.sessions.remove(session.id());
                    session.notify();
                    self.done = true;
                }
                self.bytes_out.inc_by(taken.body.len() as u64);
                let chunk = if first {
                    [RETRY, &taken.body[..]].concat().into()
                } else {
                    taken.body
                };
                return Some((Ok(chunk), self));
            }
            if first {
                return Some((Ok(Bytes::from_static(RETRY)), self));
            }
            tokio::select! {
                () = changed => {}
                _ = self.ping.tick() => return Some((Ok(Bytes::from_static(b": ping\n\n")), self)),
            }
        }
    }
}
