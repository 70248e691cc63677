//! The tokio-tungstenite peers, behind a hyper 1.x upgrade: the idiomatic loop (`next` → `send`,
//! i.e. one flush per message) and the batched loop of ws-stack.md §5.2/§8 (collect the messages
//! that are already decoded, `feed` them, `flush` once). Both use `read_buffer_size(4096)`:
//! the 128 KiB default costs ~134 KiB per idle connection.

use bytes::Bytes;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::bad_request;

/// Most messages the batched loop collects before it writes.
const MAX_BATCH: usize = 256;

/// Checks the upgrade request, answers 101 and spawns the echo task on the upgraded connection.
pub fn upgrade(mut req: Request<Incoming>, batch: bool) -> Response<Empty<Bytes>> {
    let headers = req.headers();
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v == "13");
    let key = headers.get("sec-websocket-key");
    let (true, true, true, Some(key)) = (
        has_token(UPGRADE, "websocket"),
        has_token(CONNECTION, "upgrade"),
        version_ok,
        key,
    ) else {
        return bad_request();
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return bad_request();
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        // An error is the client resetting the connection at the end of a run.
        let _ = if batch {
            echo_batched(ws).await
        } else {
            echo(ws).await
        };
    });

    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// The idiomatic loop. Control frames are handled by tungstenite; the loop keeps polling after a
/// close so the library can flush its close reply.
async fn echo(mut ws: WebSocketStream<TokioIo<Upgraded>>) -> Result<(), Error> {
    while let Some(message) = ws.next().await {
        let message = message?;
        if message.is_text() || message.is_binary() {
            ws.send(message).await?;
        }
    }
    Ok(())
}

/// The batched loop: one `flush` (one write) for all the messages that were ready.
async fn echo_batched(mut ws: WebSocketStream<TokioIo<Upgraded>>) -> Result<(), Error> {
    // Grows to the largest batch seen; an idle connection keeps only a few slots.
    let mut batch = Vec::new();
    while let Some(first) = ws.next().await {
        batch.push(first?);
        while batch.len() < MAX_BATCH {
            match ws.next().now_or_never() {
                Some(Some(message)) => batch.push(message?),
                _ => break,
            }
        }
        for message in batch.drain(..) {
            if message.is_text() || message.is_binary() {
                ws.feed(message).await?;
            }
        }
        ws.flush().await?;
    }
    Ok(())
}
