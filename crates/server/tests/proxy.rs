//! Proxies to the application's backend, against a real backend on 127.0.0.1: every event with a
//! backend that answers, one that fails, one that is too slow (timeout) and one that is overloaded
//! (the concurrency cap is reached), and the server keeps serving other clients throughout.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard_auth::now;
use switchboard_hub::NamespaceOptions;

/// How the fake backend answers one event.
#[derive(Clone, Debug)]
enum Behave {
    /// 200 with this JSON.
    Reply(Value),
    /// This status, empty body.
    Status(u16),
    /// 200 with this JSON, after a delay longer than the proxy's timeout.
    Slow(Value),
}

/// One call the backend received.
#[derive(Clone, Debug)]
struct Call {
    event: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone, Default)]
struct Backend {
    behave: Arc<Mutex<HashMap<String, Behave>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Backend {
    fn set(&self, event: &str, b: Behave) {
        self.behave.lock().unwrap().insert(event.into(), b);
    }

    fn calls(&self, event: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.event == event).cloned().collect()
    }
}

async fn handle(
    State(backend): State<Backend>,
    Path(event): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    backend.calls.lock().unwrap().push(Call {
        event: event.clone(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let b = backend.behave.lock().unwrap().get(&event).cloned();
    match b {
        Some(Behave::Reply(v)) => axum::Json(v).into_response(),
        Some(Behave::Status(s)) => StatusCode::from_u16(s).unwrap().into_response(),
        Some(Behave::Slow(v)) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(v).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn backend() -> (Backend, SocketAddr) {
    let backend = Backend::default();
    let app = Router::new()
        .route("/{event}", axum::routing::post(handle))
        .with_state(backend.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (backend, addr)
}

const TIMEOUT: Duration = Duration::from_millis(400);

/// A server whose every proxy points at `backend`, with a 400 ms timeout and a cap of 1 call per
/// event (so one slow call is enough to reach it).
async fn server(backend: SocketAddr) -> TestServer {
    let mut c = Config::default();
    let url = |e: &str| Some(format!("http://{backend}/{e}"));
    c.proxy.connect = url("connect");
    c.proxy.refresh = url("refresh");
    c.proxy.subscribe = url("subscribe");
    c.proxy.publish = url("publish");
    c.proxy.rpc = url("rpc");
    c.proxy.sub_refresh = url("sub_refresh");
    c.proxy.timeout = TIMEOUT;
    c.proxy.max_concurrency = 1;
    c.proxy.forward_headers = vec!["User-Agent".into()];
    c.proxy.forward_cookies = vec!["sid".into()];
    c.proxy.headers = [("X-Switchboard-Secret".into(), "s3cret".into())].into();
    c.channels.namespaces.insert(
        "open".into(),
        NamespaceOptions {
            presence: true,
            allow_publish: true,
            ..Default::default()
        },
    );
    c.channels.namespaces.insert(
        "guarded".into(),
        NamespaceOptions {
            subscribe_proxy: true,
            publish_proxy: true,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..Default::default()
        },
    );
    start(c).await
}

fn ok(result: Value) -> Behave {
    Behave::Reply(json!({ "result": result }))
}

async fn connected(addr: SocketAddr, backend: &Backend, user: &str) -> JsonClient {
    backend.set("connect", ok(json!({ "user": user })));
    JsonClient::connect_with(addr, json!({})).await
}

/// Checks `client` still works and the server still serves others: a publish round trip.
async fn still_serving(addr: SocketAddr, client: &mut JsonClient) {
    let mut other = JsonClient::connected(addr).await;
    other.ok("subscribe", json!({"channel": "open:ping"})).await;
    client
        .ok("publish", json!({"channel": "open:ping", "data": "pong"}))
        .await;
    assert_eq!(other.push("pub").await["data"], "pong");
}

/// Runs `call` once with the backend failing (500), once too slow, once refusing with an application
/// error, and once overloaded, checking the error code each time.
async fn failure_modes<F, Fut>(backend: &Backend, event: &str, call: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (u64, String)>,
{
    backend.set(event, Behave::Status(500));
    let (code, message) = call().await;
    assert_eq!(code, 100, "{event} with a failing backend: {message}");
    assert!(message.contains("500"), "{message}");

    backend.set(event, Behave::Slow(json!({"result": {}})));
    let started = Instant::now();
    let (code, message) = call().await;
    assert_eq!(code, 100, "{event} with a slow backend: {message}");
    assert!(message.contains("did not answer"), "{message}");
    assert!(started.elapsed() < TIMEOUT * 4, "{:?}", started.elapsed());

    backend.set(
        event,
        Behave::Reply(json!({"error": {"code": 1403, "message": "not today"}})),
    );
    let (code, message) = call().await;
    assert_eq!((code, message.as_str()), (1403, "not today"), "{event}");

    // Overloaded: one call holds the only permit (a slow backend), the next is refused at once.
    backend.set(event, Behave::Slow(json!({"result": {}})));
    let (first, second) = tokio::join!(call(), async {
        tokio::time::sleep(TIMEOUT / 4).await;
        let started = Instant::now();
        let r = call().await;
        (r, started.elapsed())
    });
    assert_eq!(first.0, 100, "{event}: the first call times out");
    let ((code, message), took) = second;
    assert_eq!(code, 111, "{event} over the cap: {message}");
    assert!(message.contains("overloaded"), "{message}");
    assert!(took < TIMEOUT, "refused at once, not queued: {took:?}");
}

fn error_of(r: &Value) -> (u64, String) {
    (
        r["error"]["code"].as_u64().unwrap_or_else(|| panic!("{r}")),
        r["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn connect_proxy_names_the_user_from_the_forwarded_cookie() {
    let (backend, baddr) = backend().await;
    let s = server(baddr).await;
    backend.set(
        "connect",
        ok(json!({
            "user": "alice",
            "info": {"name": "Alice"},
            "data": {"motd": "hello"},
            "channels": ["open:news"]
        })),
    );
    let mut c = JsonClient::open_with(
        s.addr,
        &[
            ("Cookie", "theme=dark; sid=abc123"),
            ("User-Agent", "proxy-test"),
            ("X-Not-Forwarded", "1"),
        ],
    )
    .await;
    let r = c
        .ok("connect", json!({"name": "t", "data": {"hint": 1}}))
        .await;
    assert_eq!(r["data"], json!({"motd": "hello"}), "{r}");
    assert!(r["subs"]["open:news"].is_object(), "{r}");
    let calls = backend.calls("connect");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.body["transport"], "websocket");
    assert_eq!(call.body["protocol"], "json");
    assert_eq!(call.body["name"], "t");
    assert_eq!(call.body["data"], json!({"hint": 1}));
    assert_eq!(call.body["client"], r["client"]);
    assert_eq!(call.headers["cookie"], "sid=abc123");
    assert_eq!(call.headers["user-agent"], "proxy-test");
    assert_eq!(call.headers["x-switchboard-secret"], "s3cret");
    assert!(!call.headers.contains_key("x-not-forwarded"));
    let p = c.ok("presence", json!({"channel": "open:news"})).await;
    let me = &p["presence"][r["client"].as_str().unwrap()];
    assert_eq!(me["user"], "alice");
    assert_eq!(me["info"], json!({"name": "Alice"}));
}

#[tokio::test]
async fn connect_proxy_failures_refuse_the_connection_with_a_clear_error() {
    let (backend, baddr) = backend().await;
    let s = server(baddr).await;
    let connect = || async {
        let mut c = JsonClient::open(s.addr).await;
        let r = c.call("connect", json!({})).await;
        let (push, close) = c.disconnected().await;
        let (code, message) = error_of(&r);
        // A refusal by the application is final (3503); a backend that cannot answer means "retry
        // later" (3004).
        let expected = if code >= 1000 { 3503 } else { 3004 };
        assert_eq!((push, close), (Some(expected), Some(expected)), "{r}");
        (code, message)
    };
    failure_modes(&backend, "connect", connect).await;
    // A `disconnect` answer ends the connection without an error reply.
    backend.set("connect", Behave::Reply(json!({"disconnect": {}})));
    let mut c = JsonClient::open(s.addr).await;
    c.send_raw(r#"{"id":1,"connect":{}}"#).await;
    assert_eq!(c.disconnected().await, (Some(3503), Some(3503)));
    let mut ok = connected(s.addr, &backend, "bob").await;
    still_serving(s.addr, &mut ok).await;
}

#[tokio::test]
async fn a_token_is_verified_without_asking_the_connect_proxy() {
    let (backend, baddr) = backend().await;
    let mut c = Config::default();
    c.proxy.connect = Some(format!("http://{baddr}/connect"));
    c.auth.hmac_secret = Some("secret-secret-secret-secret".into());
    let s = start(c).await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "tokenuser"}),
        &jsonwebtoken::EncodingKey::from_secret(b"secret-secret-secret-secret").unwrap(),
    )
    .unwrap();
    let mut client = JsonClient::open(s.addr).await;
    client.ok("connect", json!({"token": token})).await;
    assert!(backend.calls("connect").is_empty());
}

#[tokio::test]
async fn rpc_proxy_answers_and_fails_clearly() {
    let (backend, baddr) = backend().await;
    let s = server(baddr).await;
    let mut c = connected(s.addr, &backend, "alice").await;
    backend.set("rpc", ok(json!({"data": {"sum": 3}})));
    let r = c
        .ok("rpc", json!({"method": "add", "data": {"a": 1, "b": 2}}))
        .await;
    assert_eq!(r, json!({"data": {"sum": 3}}));
    let call = &backend.calls("rpc")[0];
    assert_eq!(call.body["method"], "add");
    assert_eq!(call.body["data"], json!({"a": 1, "b": 2}));
    assert_eq!(call.body["user"], "alice");
    failure_modes(&backend, "rpc", || async {
        let mut c = JsonClient::connect_with(s.addr, json!({})).await;
        error_of(&c.call("rpc", json!({"method": "add"})).await)
    })
    .await;
    // The first client's connection outlived all of it.
    still_serving(s.addr, &mut c).await;
}

#[tokio::test]
async fn rpc_without_a_handler_is_not_available() {
    let s = start(Config::default()).await;
    let mut c = JsonClient::connected(s.addr).await;
    assert_eq!(c.error("rpc", json!({"method": "x"})).await, 108);
}

#[tokio::test]
async fn subscribe_proxy_grants_and_refuses() {
    let (backend, baddr) = backend().await;
    let s = server(baddr).await;
    let mut c = connected(s.addr, &backend, "alice").await;
    backend.set("subscribe", ok(json!({"data": {"welcome": true}})));
    let r = c
        .ok(
            "subscribe",
            json!({"channel": "guarded:1", "data": "please"}),
        )
        .await;
    assert_eq!(r["data"], json!({"welcome": true}), "{r}");
    let call = &backend.calls("subscribe")[0];
    assert_eq!(
        (&call.body["channel"], &call.body["data"]),
        (&json!("guarded:1"), &json!("please"))
    );
    // Namespaces without subscribe_proxy never ask.
    c.ok("subscribe", json!({"channel": "open:1"})).await;
    assert_eq!(backend.calls("subscribe").len(), 1);
    let n = std::sync::atomic::AtomicU64::new(10);
    failure_modes(&backend, "subscribe", || async {
        let mut c = connected_quiet(s.addr).await;
        let ch = format!(
            "guarded:{}",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        error_of(&c.call("subscribe", json!({ "channel": ch })).await)
    })
    .await;
}

/// A connection made while the connect backend answers anything: the failure tests change other
/// events' behaviour only.
async fn connected_quiet(addr: SocketAddr) -> JsonClient {
    JsonClient::connect_with(addr, json!({})).await
}

#[tokio::test]
async fn publish_proxy_rewrites_and_refuses() {
    let (backend, baddr) = backend().await;
    let s = server(baddr).await;
    backend.set("subscribe", ok(json!({})));
    let mut sub = connected(s.addr, &backend, "sub").await;
    sub.ok("subscribe", json!({"channel": "guarded:chat"}))
        .await;
    let mut publisher = connected_quiet(s.addr).await;
    backend.set(
        "publish",
        ok(json!({"data": {"text": "[censored]"}, "skip_history": true})),
    );
    let r = publisher
        .ok(
            "publish",
            json!({"channel": "guarded:chat", "data": {"text": "rude"}}),
        )
        .await;
    assert_eq!(r["offset"], 0, "skip_history keeps it out of history: {r}");
    assert_eq!(sub.push("pub").await["data"], json!({"text": "[censored]"}));
    let call = &backend.calls("publish")[0];
    assert_eq!(call.body["data"], json!({"text": "rude"}));
    assert_eq!(call.body["channel"], "guarded:chat");
    // Kept in history when the backend does not say otherwise.
    backend.set("publish", ok(json!({})));
    let r = publisher
        .ok("publish", json!({"channel": "guarded:chat", "data": 1}))
        .await;
    assert_eq!(r["offset"], 1, "{r}");
    assert_eq!(sub.push("pub").await["data"], 1);
    failure_modes(&backend, "publish", || async {
        let mut c = connected_quiet(s.addr).await;
        error_of(
            &c.call("publish", json!({"channel": "guarded:chat", "data": 2}))
                .await,
        )
    })
    .await;
    // None of the refused publications reached the subscriber.
    publisher
        .ok("publish", json!({"channel": "open:x", "data": 0}))
        .await;
    backend.set("publish", ok(json!({})));
    publisher
        .ok(
            "publish",
            json!({"channel": "guarded:chat", "data": "last"}),
        )
        .await;
    assert_eq!(sub.push("pub").await["data"], "last");
}

/// Waits up to `secs` seconds for the client to be disconnected; returns the push code, or `None`
/// when it stayed connected.
async fn disconnected_within(c: &mut JsonClient, secs: u64) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(secs), c.disconnected()).await {
        Ok((push, _)) => push,
        Err(_) => None,
    }
}

#[tokio::test]
async fn refresh_proxy_extends_or_ends_a_connection() {
    let (backend, baddr) = backend().await;
    let s = server(baddr).await;
    backend.set(
        "connect",
        ok(json!({"user": "ann", "expire_at": now() + 1})),
    );
    let mut c = JsonClient::connect_with(s.addr, json!({})).await;
    backend.set("refresh", ok(json!({"expire_at": now() + 600})));
    assert_eq!(disconnected_within(&mut c, 3).await, None, "extended");
    let calls = backend.calls("refresh");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body["user"], "ann");
    assert_eq!(calls[0].body["client"], c.id.as_str());
    still_serving(s.addr, &mut c).await;

    // Expired: the connection ends with 3005.
    backend.set("connect", ok(json!({"user": "cy", "expire_at": now() + 1})));
    let mut c = JsonClient::connect_with(s.addr, json!({})).await;
    backend.set("refresh", ok(json!({"expired": true})));
    assert_eq!(disconnected_within(&mut c, 5).await, Some(3005));

    // A backend that fails, is too slow or refuses to answer does not end connections by accident:
    // failures are asked again later; only an answer ends them.
    for failing in [Behave::Status(500), Behave::Slow(json!({"result": {}}))] {
        backend.set(
            "connect",
            ok(json!({"user": "dee", "expire_at": now() + 1})),
        );
        let mut c = JsonClient::connect_with(s.addr, json!({})).await;
        backend.set("refresh", failing);
        let before = backend.calls("refresh").len();
        assert_eq!(disconnected_within(&mut c, 3).await, None);
        assert!(backend.calls("refresh").len() > before, "refresh was asked");
    }

    // Overloaded: two connections expire at once and the cap is one call; the one refused at the cap
    // is kept like the one whose call timed out.
    let at = now() + 1;
    backend.set("connect", ok(json!({"user": "eve", "expire_at": at})));
    let mut a = JsonClient::connect_with(s.addr, json!({})).await;
    let mut b = JsonClient::connect_with(s.addr, json!({})).await;
    backend.set("refresh", Behave::Slow(json!({"result": {}})));
    let before = backend.calls("refresh").len();
    let (da, db) = tokio::join!(
        disconnected_within(&mut a, 3),
        disconnected_within(&mut b, 3)
    );
    assert_eq!((da, db), (None, None));
    assert_eq!(
        backend.calls("refresh").len(),
        before + 1,
        "one call at a time reaches the backend"
    );
}

/// Reads what the server sent so far (by a round trip) and says whether `channel` was unsubscribed.
async fn unsubscribed(c: &mut JsonClient, channel: &str) -> Option<Value> {
    c.call("presence", json!({"channel": "open:probe"})).await;
    c.pushes
        .iter()
        .find_map(|p| p.get("unsubscribe").filter(|u| u["channel"] == channel))
        .cloned()
}

#[tokio::test]
async fn sub_refresh_proxy_extends_or_ends_a_subscription() {
    let (backend, baddr) = backend().await;
    let s = server(baddr).await;
    let mut c = connected(s.addr, &backend, "ann").await;
    backend.set("subscribe", ok(json!({"expire_at": now() + 1})));
    c.ok("subscribe", json!({"channel": "guarded:a"})).await;
    backend.set("sub_refresh", ok(json!({"expire_at": now() + 600})));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = backend.calls("sub_refresh");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body["channel"], "guarded:a");
    assert_eq!(unsubscribed(&mut c, "guarded:a").await, None);

    // A failing or slow backend keeps the subscription (asked again later).
    for (i, failing) in [Behave::Status(503), Behave::Slow(json!({"result": {}}))]
        .into_iter()
        .enumerate()
    {
        let channel = format!("guarded:f{i}");
        backend.set("subscribe", ok(json!({"expire_at": now() + 1})));
        c.ok("subscribe", json!({ "channel": channel })).await;
        let before = backend.calls("sub_refresh").len();
        backend.set("sub_refresh", failing);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(backend.calls("sub_refresh").len() > before);
        assert_eq!(unsubscribed(&mut c, &channel).await, None);
    }

    // Overloaded: two connections' subscriptions expire at once and the cap is one call; both stay.
    let at = now() + 1;
    backend.set("subscribe", ok(json!({ "expire_at": at })));
    let mut other = connected(s.addr, &backend, "bob").await;
    c.ok("subscribe", json!({"channel": "guarded:o"})).await;
    other.ok("subscribe", json!({"channel": "guarded:o"})).await;
    backend.set("sub_refresh", Behave::Slow(json!({"result": {}})));
    let before = backend.calls("sub_refresh").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(backend.calls("sub_refresh").len(), before + 1);
    assert_eq!(unsubscribed(&mut c, "guarded:o").await, None);
    assert_eq!(unsubscribed(&mut other, "guarded:o").await, None);

    // Expired: an unsubscribe push with 2501; the connection stays.
    backend.set("subscribe", ok(json!({"expire_at": now() + 1})));
    c.ok("subscribe", json!({"channel": "guarded:c"})).await;
    backend.set("sub_refresh", ok(json!({"expired": true})));
    let u = tokio::time::timeout(Duration::from_secs(5), c.push("unsubscribe"))
        .await
        .unwrap();
    assert_eq!(u["channel"], "guarded:c");
    assert_eq!(u["code"], 2501);
    still_serving(s.addr, &mut c).await;
}
