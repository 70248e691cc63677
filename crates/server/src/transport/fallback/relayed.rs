//! The requests that cross nodes, both ways. A request that lands here for another node's session
//! is forwarded there ([`forward`], [`stream`] for SSE); one that another node forwarded here is run
//! against the local session with the very functions that serve a local request ([`serve`]), and
//! answered. The messages and their limits are `../relay.rs`; what runs the requests is `local/`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use tokio::time::Interval;

use super::super::relay::{
    Answer, Incoming, Op, Relay, RelayError, Service, from_answer, to_answer,
};
use super::error::FallbackError;
use super::local::{self, Local, Next, PING, RETRY, event_stream, ping_interval};
use super::params::Params;

/// Runs the requests other nodes relay to this one's sessions, each in a task of its own.
pub fn serve(fb: &Local, relay: &Relay) {
    // The node owns the relay's handler: holding the node strongly here would keep it alive forever.
    let node = Arc::downgrade(&fb.node);
    let (config, env) = (Arc::clone(&fb.config), fb.env.clone());
    relay.serve(
        Service::Fallback,
        Arc::new(move |relay: &Arc<Relay>, incoming: Incoming| {
            let Some(node) = node.upgrade() else {
                return;
            };
            let fb = Local {
                config: Arc::clone(&config),
                node,
                env: env.clone(),
            };
            env.tracker.spawn(run(fb, Arc::clone(relay), incoming));
        }),
    );
}

/// Runs a request another node relayed here against this node's session, with the functions that
/// serve the same request arriving here, and sends the answer back.
async fn run(fb: Local, relay: Arc<Relay>, incoming: Incoming) {
    let Incoming {
        from,
        id,
        op,
        body,
        permit,
        ..
    } = incoming;
    let (answer, body) = if permit.is_none() {
        tracing::debug!(node = %from, "too many relayed requests at once: answered busy");
        (Answer::Busy, Bytes::new())
    } else {
        match op {
            Op::Send { query } => {
                let params = Params::from_query(&query);
                let resp = local::send(&fb, &params, async { Ok(body) }).await;
                to_answer(resp.into_response()).await
            }
            Op::Poll { query } => {
                let resp = local::poll(&fb, &Params::from_query(&query)).await;
                to_answer(resp.into_response()).await
            }
            Op::Close { query } => {
                let resp = local::close(&fb, &Params::from_query(&query)).await;
                to_answer(resp.into_response()).await
            }
            Op::SseOpen {
                query,
                last_event_id,
            } => {
                let header = match last_event_id.map(|v| HeaderValue::from_bytes(&v)) {
                    None => Ok(None),
                    Some(Ok(v)) => Ok(Some(v)),
                    Some(Err(_)) => Err(FallbackError::BadRequest(
                        "Last-Event-ID is not a valid header value".into(),
                    )),
                };
                let opened = header
                    .and_then(|h| local::open_stream(&fb, &Params::from_query(&query), h.as_ref()));
                match opened {
                    // The stream's steps come as requests of their own, each keeping the session alive
                    // while it waits; this one is done.
                    Ok(open) => (
                        Answer::Opened {
                            reader: open.reader,
                            sent: open.sent,
                        },
                        Bytes::new(),
                    ),
                    Err(e) => to_answer(e.into_response()).await,
                }
            }
            Op::SseNext {
                session,
                reader,
                after,
            } => match local::next_held(&fb, &session, reader, after).await {
                Next::Events { body, seq, end } => (Answer::Events { seq, end }, body),
                Next::Nothing => (Answer::Quiet, Bytes::new()),
                Next::Ended => (Answer::Ended, Bytes::new()),
            },
            // Routed by service: Engine.IO requests never come here.
            Op::EioPoll { .. } | Op::EioPost { .. } => (Answer::Unserved, Bytes::new()),
        }
    };
    relay.answer(&from, id, answer, body).await;
    drop(permit);
}

/// Relays `op` to `node` and answers what it answered.
pub async fn forward(
    fb: &Local,
    relay: &Relay,
    node: &str,
    op: Op,
    body: Bytes,
    hold: Duration,
) -> Result<Response, FallbackError> {
    let (answer, body) = relay
        .call(node, op, body, hold)
        .await
        .map_err(|e| relay_error(fb, e))?;
    from_answer(&answer, body).ok_or_else(|| {
        FallbackError::Internal(format!(
            "node {node} answered {answer:?} to an HTTP request"
        ))
    })
}

/// How a relay failure looks to the client: a gone node like an unknown session.
fn relay_error(fb: &Local, e: RelayError) -> FallbackError {
    match e {
        RelayError::Gone(_) => fb.gone(),
        RelayError::Busy => FallbackError::Busy,
        RelayError::Unavailable(m) => {
            // The detail names Redis addresses: for the log, not for clients.
            tracing::debug!(error = %m, "cannot relay a fallback request");
            FallbackError::Unavailable
        }
        RelayError::Malformed(m) => {
            tracing::warn!(error = %m, "unreadable answer from another node");
            FallbackError::Internal("unreadable answer from the session's node".into())
        }
    }
}

/// Opens, through the session's node `node`, a stream of one of its sessions, and serves it from
/// here.
pub async fn stream(
    fb: &Local,
    relay: &Arc<Relay>,
    node: String,
    uri: &Uri,
    last_event_id: Option<&HeaderValue>,
) -> Result<Response, FallbackError> {
    let op = Op::SseOpen {
        query: uri.query().unwrap_or_default().to_owned(),
        last_event_id: last_event_id.map(|v| v.as_bytes().to_vec()),
    };
    let (answer, body) = relay
        .call(&node, op, Bytes::new(), Duration::ZERO)
        .await
        .map_err(|e| relay_error(fb, e))?;
    let Answer::Opened { reader, sent } = answer else {
        return from_answer(&answer, body).ok_or_else(|| {
            FallbackError::Internal(format!("node {node} answered {answer:?} to an SSE open"))
        });
    };
    let token = Params::parse(uri)
        .get("session")
        .unwrap_or_default()
        .to_owned();
    let stream = RemoteStream {
        relay: Arc::clone(relay),
        hold: fb.config.sse_ping_interval,
        ping: ping_interval(fb.config.sse_ping_interval),
        node,
        token,
        reader,
        sent,
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
    relay: Arc<Relay>,
    /// How long the session's node holds a step: `sse_ping_interval`.
    hold: Duration,
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
        let hold = self.hold;
        let relay = Arc::clone(&self.relay);
        let node = self.node.clone();
        Box::pin(async move { relay.call(&node, op, Bytes::new(), hold).await })
    }
}
