//! Long polling and ajax (short) polling: `GET {path}/poll?session=S&ack=N[&wait=0]`.
//!
//! A long poll is held until something is queued for the client or `poll_timeout` passes; with
//! `wait=0` it is answered at once. Either way the answer is every unacknowledged message as
//! `{"seq":M,"messages":[...]}` (see `downstream.rs`), so a lost answer comes again in the next one.
//! A newer downstream request for the session answers this one at once, empty. A poll for another
//! node's session is relayed there (`relay.rs`), where [`poll_here`] answers it.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;

use super::http::{Fallback, FallbackError, Params, json};
use super::relay::Op;

/// The poll handler.
pub(crate) async fn poll(State(fb): State<Fallback>, uri: Uri) -> Result<Response, FallbackError> {
    let params = Params::parse(&uri);
    if let Some(node) = fb.remote_node(&params) {
        // The session's node holds a long poll up to poll_timeout before it answers.
        let hold = if params.get("wait") == Some("0") {
            Duration::ZERO
        } else {
            fb.config.poll_timeout
        };
        let query = uri.query().unwrap_or_default().to_owned();
        return fb
            .relay_http(node, Op::Poll { query }, Bytes::new(), hold)
            .await;
    }
    poll_here(&fb, &params).await
}

/// A poll of a session of this node, whether it arrived here or was relayed from another node.
pub(crate) async fn poll_here(
    fb: &Fallback,
    params: &Params<'_>,
) -> Result<Response, FallbackError> {
    let session = params.session(fb)?;
    let ack = params.number("ack")?;
    let mut wait = params.get("wait") != Some("0");
    let _guard = session.begin_request();
    let gone = || FallbackError::UnknownSession(fb.config.path.clone());
    let reader = session.claim(ack).ok_or_else(gone)?;
    let deadline = tokio::time::Instant::now() + fb.config.poll_timeout;
    loop {
        let changed = session.changed();
        tokio::pin!(changed);
        // Registered before looking, so that a message queued in between still wakes this poll.
        changed.as_mut().enable();
        // Decided under the lock, which is released before waiting.
        let answer: Option<(Bytes, bool)> = {
            let mut ds = session.downstream();
            if ds.delivered() {
                return Err(gone());
            }
            if !ds.is_reader(reader) {
                // A newer poll or stream took over: give up at once, handing out nothing.
                Some((ds.empty_poll(), false))
            } else if ds.has_news() || !wait {
                let taken = ds.take_poll();
                if taken.last {
                    // The disconnect push is handed out: the session is over.
                    fb.env.sessions.remove(session.id());
                }
                Some((taken.body, taken.last))
            } else {
                None
            }
        };
        let Some((answer, last)) = answer else {
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => wait = false,
            }
            continue;
        };
        if last {
            // Wakes the session task waiting for its disconnect push to be handed out.
            session.notify();
        }
        let transport = if params.get("wait") == Some("0") {
            "poll"
        } else {
            "long-poll"
        };
        fb.node
            .metrics()
            .bytes(transport, "out")
            .inc_by(answer.len() as u64);
        return Ok(json(StatusCode::OK, answer));
    }
}
