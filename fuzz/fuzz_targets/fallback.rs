//! The HTTP fallback transports (`crates/server/src/transport`): query strings, bodies and
//! `Last-Event-ID` of open, send, poll and SSE requests, sent through the real fallback router of a
//! fresh memory-engine node (anonymous clients allowed, HMAC tokens with `common::SECRET`), on a
//! paused clock (a long poll's 25 s pass at once).
//!
//! Input: up to 8 requests separated by a line `===`. Each is a head, an empty line, and the body:
//!
//! ```text
//! POST /connection/http/send?session=$S&n=1
//! Last-Event-ID: 3
//!
//! {"id":2,"subscribe":{"channel":"news"}}
//! ```
//!
//! The first head line is `METHOD TARGET`, the others `Name: value` headers. `$S` (in the target and
//! in header values) becomes the token of the newest session a request opened, so that the fuzzer
//! reaches a live session it could never guess. Requests `http` refuses to build are skipped.
//!
//! Checks: no panic, no hang (every request is answered within 60 s of the paused clock); no 5xx
//! (nothing here can fail on the server's side; 503 is only for an engine outage); every error is
//! `{"error":{"code":N,"message":"..."}}`; an open's 200 carries a session token; a poll's 200 is
//! `{"seq":N,"messages":[...]}` of JSON messages; an SSE stream's events are `id:`, `data:` (one JSON
//! message each) and `retry:` lines, and `: ping` comments.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use switchboard::limits::Limits;
use switchboard_hub::ClientConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

struct Req<'a> {
    method: &'a [u8],
    target: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    body: &'a [u8],
}

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}

fn parse(block: &[u8]) -> Option<Req<'_>> {
    let (head, body) = match block.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&block[..i], &block[i + 2..]),
        None => (block, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next()?;
    let space = first.iter().position(|&b| b == b' ')?;
    let headers = lines
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            Some((&l[..colon], l[colon + 1..].trim_ascii()))
        })
        .collect();
    Some(Req {
        method: &first[..space],
        target: &first[space + 1..],
        headers,
        body,
    })
}

fn with_session(bytes: &[u8], session: &str) -> Vec<u8> {
    split(bytes, b"$S").join(session.as_bytes())
}

fn build(req: &Req<'_>, session: &str) -> Option<http::Request<Body>> {
    let mut b = http::Request::builder()
        .method(http::Method::from_bytes(req.method).ok()?)
        .uri(http::Uri::try_from(with_session(req.target, session)).ok()?);
    for (name, value) in &req.headers {
        let name = http::HeaderName::from_bytes(name).ok()?;
        let value = http::HeaderValue::from_bytes(&with_session(value, session)).ok()?;
        b = b.header(name, value);
    }
    b.body(Body::from(req.body.to_vec())).ok()
}

fn assert_json_error(body: &[u8], status: http::StatusCode) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{status}: body {:?} is not JSON: {e}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(v["error"]["code"].is_u64(), "{status}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{status}: {v}"
    );
}

/// Checks SSE chunks: every line is an event field we send or a comment.
fn assert_events(chunk: &[u8]) {
    for line in chunk.split(|&b| b == b'\n') {
        if let Some(data) = line.strip_prefix(b"data: ") {
            serde_json::from_slice::<serde_json::Value>(data).unwrap_or_else(|e| {
                panic!(
                    "SSE data {:?} is not JSON: {e}",
                    String::from_utf8_lossy(data)
                )
            });
        } else if let Some(id) = line.strip_prefix(b"id: ") {
            assert!(
                std::str::from_utf8(id)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some()
            );
        } else {
            assert!(
                line.is_empty() || line == b"retry: 1000" || line == b": ping",
                "SSE line {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}

async fn run(data: &[u8]) {
    let mut config = switchboard::Config::default();
    config.fallback.enabled = true;
    let node = common::node(ClientConfig {
        allow_anonymous: true,
        ..ClientConfig::default()
    });
    let limits = Limits::new(config.limits.clone());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    // The relay as the server builds it (server.rs); with the memory engine no other node exists,
    // so a session id naming another node is answered as gone.
    let relay = std::sync::Arc::new(switchboard::transport::relay::Relay::new(
        std::sync::Arc::clone(node.engine()),
        config.fallback.max_relayed_requests,
        config.fallback.relay_timeout,
    ));
    relay.listen(&node);
    let router = switchboard::transport::fallback::router(
        &config, &node, &limits, &relay, &shutdown, &tracker,
    );
    let mut session = String::from("none.none");
    for block in split(data, b"\n===\n").into_iter().take(8) {
        let Some(req) = parse(block) else { continue };
        let Some(request) = build(&req, &session) else {
            continue;
        };
        let path = request.uri().path().to_owned();
        let resp = tokio::time::timeout(Duration::from_secs(60), router.clone().oneshot(request))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer within 60 s"));
        let Ok(resp) = resp;
        let status = resp.status();
        assert!(!status.is_server_error(), "{path}: {status}");
        let sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v == "text/event-stream");
        let mut body = resp.into_body();
        if sse {
            assert_eq!(status, 200);
            // An open stream never ends by itself: read a few chunks (pings come every 15 s of the
            // paused clock), then hang up as a client would.
            for _ in 0..4 {
                match tokio::time::timeout(Duration::from_secs(60), body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        if let Some(chunk) = frame.data_ref() {
                            assert_events(chunk);
                        }
                    }
                    Ok(None) => break,
                    Ok(Some(Err(e))) => panic!("{path}: SSE body failed: {e}"),
                    Err(_) => panic!("{path}: SSE sent nothing for 60 s"),
                }
            }
            continue;
        }
        let bytes = tokio::time::timeout(Duration::from_secs(60), body.collect())
            .await
            .unwrap_or_else(|_| panic!("{path}: body not sent within 60 s"))
            .expect("a buffered body")
            .to_bytes();
        if status.is_client_error() {
            // axum's own answers (404 for an unknown path, 405) carry no body.
            if !bytes.is_empty() {
                assert_json_error(&bytes, status);
            }
        } else if status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{path}: 200 body {:?} is not JSON: {e}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            if let Some(token) = v["session"].as_str() {
                session = token.to_owned();
            } else {
                assert!(v["seq"].is_u64(), "{path}: {v}");
                assert!(v["messages"].is_array(), "{path}: {v}");
            }
        }
    }
    shutdown.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(60), tracker.wait()).await;
    drop(router);
    drop(node);
}

fuzz_target!(|data: &[u8]| {
    common::runtime().block_on(run(data));
});
