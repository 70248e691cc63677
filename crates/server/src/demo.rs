//! The chat demo at `/`: a page, its script and style, and the JavaScript client it uses, all built
//! into the binary so that the demo works offline and the client served is the one in `clients/js`.
//! What both pages below show alike (the join form, chat lines, system lines) is one module,
//! `chat-view.js`.
//!
//! The same chat over Socket.IO is at `/socketio`: its page uses the stock `socket.io-client` (4.8.4,
//! `dist/socket.io.min.js` from npm, MIT, vendored in `demo/vendor/` unchanged) to show that a
//! Socket.IO user and a native user share rooms, through the Socket.IO mapping (`[socketio]`, which
//! the demo turns on).
//!
//! Served with `--demo` (`[demo] enabled`), which also gives the page the `chat` namespace its rooms
//! (`chat:<room>`) need, unless the configuration has one (see [`crate::Config::effective`]).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../demo/index.html");
const SCRIPT: &str = include_str!("../demo/demo.js");
const VIEW: &str = include_str!("../demo/chat-view.js");
const STYLE: &str = include_str!("../demo/demo.css");
const CLIENT: &str = include_str!("../../../clients/js/switchboard.mjs");
const SIO_INDEX: &str = include_str!("../demo/socketio.html");
const SIO_SCRIPT: &str = include_str!("../demo/socketio-demo.js");
const SIO_CLIENT: &str = include_str!("../demo/vendor/socket.io.min.js");

/// The demo's routes.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route("/demo.js", get(|| async { asset(JS, SCRIPT) }))
        .route("/chat-view.js", get(|| async { asset(JS, VIEW) }))
        .route(
            "/demo.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/switchboard.js", get(|| async { asset(JS, CLIENT) }))
        .route(
            "/socketio",
            get(|| async { asset("text/html; charset=utf-8", SIO_INDEX) }),
        )
        .route("/socketio-demo.js", get(|| async { asset(JS, SIO_SCRIPT) }))
        .route("/socket.io.min.js", get(|| async { asset(JS, SIO_CLIENT) }))
}

const JS: &str = "text/javascript; charset=utf-8";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary: never let a browser mix an old page with a new client.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
