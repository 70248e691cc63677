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
    let server = start(Config::default()).await;
    for (path, content_type, needle) in [
        (
            "/",
            "text/html",
            "<script type=\"module\" src=\"/demo.js\">",
        ),
        ("/demo.js", "text/javascript", "from '/switchboard.js'"),
        ("/demo.css", "text/css", "#messages"),
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
        include_str!("../../../clients/js/switchboard.js")
    );
    assert_eq!(get(server.addr, "/nope").await.status, 404);
    server.handle.shutdown();
}
