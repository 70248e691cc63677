//! The chat demo's assets as the binary serves them; the browser tests (tests/browser) use them.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use switchboard::Config;

async fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    request(addr, &raw).await.1
}

#[tokio::test]
async fn serves_the_page_its_assets_and_the_js_client() {
    let mut config = Config::default();
    config.demo.enabled = true;
    let server = start(config).await;
    for (path, content_type, needle) in [
        (
            "/",
            "text/html",
            "<script type=\"module\" src=\"/demo.js\">",
        ),
        ("/demo.js", "text/javascript", "from '/switchboard.js'"),
        (
            "/chat-view.js",
            "text/javascript",
            "export function showMessage",
        ),
        ("/demo.css", "text/css", "#messages"),
        (
            "/socketio",
            "text/html",
            "<script src=\"/socket.io.min.js\">",
        ),
        (
            "/socketio-demo.js",
            "text/javascript",
            "emitWithAck(event, ...args)",
        ),
        ("/socket.io.min.js", "text/javascript", "Socket.IO v4.8.4"),
    ] {
        let resp = get(server.addr, path).await;
        assert_eq!(resp.status, 200, "{path}");
        assert!(
            resp.header("content-type")
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        assert_eq!(resp.header("cache-control"), Some("no-cache"), "{path}");
        assert!(resp.body.contains(needle), "{path}");
    }
    // One copy of the client: the file of clients/js, byte for byte.
    let client = get(server.addr, "/switchboard.js").await;
    assert_eq!(
        client.body,
        include_str!("../../../clients/js/switchboard.mjs")
    );
    assert_eq!(get(server.addr, "/nope").await.status, 404);
    server.handle.shutdown();
}

#[tokio::test]
async fn the_demo_is_off_by_default_and_brings_its_chat_namespace() {
    let off = start(Config::default()).await;
    assert_eq!(get(off.addr, "/").await.status, 404);
    let mut c = JsonClient::connected(off.addr).await;
    assert_eq!(
        c.error("subscribe", serde_json::json!({"channel": "chat:lobby"}))
            .await,
        102,
        "no chat namespace without the demo"
    );
    let mut config = Config::default();
    config.demo.enabled = true;
    let on = start(config).await;
    let mut c = JsonClient::connected(on.addr).await;
    let r = c
        .ok("subscribe", serde_json::json!({"channel": "chat:lobby"}))
        .await;
    assert_eq!(r["recoverable"], true, "{r}");
    c.ok(
        "publish",
        serde_json::json!({"channel": "chat:lobby", "data": {"text": "hi"}}),
    )
    .await;
    let p = c
        .ok("presence", serde_json::json!({"channel": "chat:lobby"}))
        .await;
    assert_eq!(p["presence"].as_object().unwrap().len(), 1);
}
