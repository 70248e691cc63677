//! Long polling and ajax (short) polling: `GET {path}/poll?session=S&ack=N[&wait=0]`.
//!
//! A long poll is held until something is queued for the client or `poll_timeout` passes; with
//! `wait=0` it is answered at once. Either way the answer is every unacknowledged message as
//! `{"seq":M,"messages":[...]}` (see `downstream.rs`), so a lost answer comes again in the next one.
//! A newer downstream request for the session answers this one at once, empty. A poll for another
//! node's session is relayed there (`relayed.rs`), where [`poll`] answers it.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;

use super::super::error::{FallbackError, json};
use super::super::params::Params;
use super::context::Local;

/// A poll of a session of this node, whether it arrived here or was relayed from another node.
pub async fn poll(fb: &Local, params: &Params<'_>) -> Result<Response, FallbackError> {
    let session = fb.session(params)?;
    let ack = params.number("ack")?;
    let mut wait = params.get("wait") != Some("0");
    let _guard = session.begin_request();
    let gone = || fb.gone();
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
