//! The upstream requests of a session of this node: `send` (more commands, acknowledgements) and
//! `close`, whether they arrived here or were relayed from another node.

use std::future::Future;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use switchboard_protocol::{DisconnectCode, lines};

use super::super::error::FallbackError;
use super::super::params::Params;
use super::super::session::Outcome;
use super::context::Local;

/// A `send` to a session of this node, whether it arrived here or was relayed from another node;
/// `body` is read once the session is known.
pub async fn send(
    fb: &Local,
    params: &Params<'_>,
    body: impl Future<Output = Result<Bytes, FallbackError>>,
) -> Result<Response, FallbackError> {
    let session = fb.session(params)?;
    let ack = params.number("ack")?;
    let n = params.number("n")?;
    let _guard = session.begin_request();
    let body = body.await?;
    fb.count_in(&body);
    if let Some(ack) = ack {
        session.ack(ack);
    }
    let Some(n) = n else {
        if lines(&body).next().is_none() {
            // A pure acknowledgement (SSE clients send these): not numbered.
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        return Err(FallbackError::BadRequest(
            "parameter n is required with commands: number upstream POSTs 1, 2, 3...".into(),
        ));
    };
    if n == 0 {
        return Err(FallbackError::BadRequest("parameter n starts at 1".into()));
    }
    match session.send(n, body).await {
        Outcome::Done | Outcome::Duplicate => Ok(StatusCode::NO_CONTENT.into_response()),
        Outcome::OutOfOrder { expected } => Err(FallbackError::OutOfOrder { got: n, expected }),
        Outcome::Ended(DisconnectCode::BadRequest) => Err(FallbackError::BadCommands(
            "the session is over; its disconnect push (3501) is on the downstream",
        )),
        // Ended another way (a refused token): the error reply and the push are on the downstream,
        // as they would arrive over WebSocket.
        Outcome::Ended(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Outcome::Gone => Err(fb.gone()),
    }
}

/// A `close` of a session of this node, whether it arrived here or was relayed from another node.
pub async fn close(fb: &Local, params: &Params<'_>) -> Result<Response, FallbackError> {
    let session = fb.session(params)?;
    session.close(fb.config.relay_timeout).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
