//! The fastwebsockets peer, behind a hyper 1.x upgrade via the crate's own `upgrade` feature:
//! `FragmentCollector` (so fragmented messages are reassembled) and the idiomatic
//! `read_frame` → `write_frame` loop (one write per message; pongs and close replies are
//! automatic).

use bytes::Bytes;
use fastwebsockets::upgrade::{UpgradeFut, is_upgrade_request};
use fastwebsockets::{FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::bad_request;

/// Checks the upgrade request, answers 101 and spawns the echo task on the upgraded connection.
pub fn upgrade(mut req: Request<Incoming>) -> Response<Empty<Bytes>> {
    if !is_upgrade_request(&req) {
        return bad_request();
    }
    match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((response, upgraded)) => {
            // An error is the client resetting the connection at the end of a run.
            tokio::spawn(async move { echo(upgraded).await.ok() });
            response
        }
        Err(_) => bad_request(),
    }
}

/// Echoes text and binary messages until the client closes.
async fn echo(upgraded: UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(upgraded.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}
