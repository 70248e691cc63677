//! The HTTP fallback transports (SSE, long polling, ajax polling; docs/protocol.md "HTTP fallback
//! transports") against the real server: the protocol's scenarios over each of them, and the HTTP
//! contract itself: seq/ack, lost and duplicate requests, session expiry, errors, CORS, shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard_hub::NamespaceOptions;

const KEY: &str = "fallback-test-key";
const PATH: &str = "/connection/http";

fn config() -> Config {
    let mut c = Config::default();
    c.api.key = KEY.into();
    c.fallback.poll_timeout = Duration::from_secs(5);
    c.channels
        .namespaces
        .insert("chat".into(), chat_namespace());
    c.channels.namespaces.insert(
        "feed".into(),
        NamespaceOptions {
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            recover: true,
            ..Default::default()
        },
    );
    c
}

/// The three ways down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sse,
    LongPoll,
    Poll,
}

const KINDS: [Kind; 3] = [Kind::Sse, Kind::LongPoll, Kind::Poll];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sse => "sse",
            Kind::LongPoll => "long-poll",
            Kind::Poll => "poll",
        }
    }
}

fn base(addr: SocketAddr) -> String {
    format!("http://{addr}{PATH}")
}

/// A client of the JSON protocol over one fallback transport, behaving as the JS client does: it
/// numbers its POSTs, acknowledges what it read, and (for SSE) reconnects with `Last-Event-ID`.
struct HttpClient {
    http: reqwest::Client,
    base: String,
    kind: Kind,
    session: String,
    n: u64,
    next_id: u64,
    acked: u64,
    /// Messages received and not yet read.
    inbox: VecDeque<Value>,
    /// Pushes seen while waiting for a reply.
    pushes: VecDeque<Value>,
    sse: Option<reqwest::Response>,
    sse_buf: Vec<u8>,
    /// The session answered 404: it is over.
    over: bool,
    id: String,
}

impl HttpClient {
    /// Opens a session whose first command is `connect` with `params`; panics unless it succeeds.
    async fn connect(addr: SocketAddr, kind: Kind, params: Value) -> Self {
        let http = reqwest::Client::new();
        let resp = http
            .post(format!("{}?transport={}", base(addr), kind.name()))
            .header("content-type", "text/plain")
            .body(json!({"id": 1, "connect": params}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "cache-control"), "no-store");
        let opened: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert!(opened["poll_timeout"].is_u64() && opened["session_timeout"].is_u64());
        let mut c = Self {
            http,
            base: base(addr),
            kind,
            session: opened["session"].as_str().unwrap().to_owned(),
            n: 0,
            next_id: 1,
            acked: 0,
            inbox: VecDeque::new(),
            pushes: VecDeque::new(),
            sse: None,
            sse_buf: Vec::new(),
            over: false,
            id: String::new(),
        };
        let reply = c.next().await.expect("connect reply");
        assert_eq!(reply["id"], 1, "{reply}");
        c.id = reply["connect"]["client"].as_str().unwrap().to_owned();
        c
    }

    async fn connected(addr: SocketAddr, kind: Kind) -> Self {
        Self::connect(addr, kind, json!({"name": "test"})).await
    }

    /// POSTs commands upstream as the next `n`; the status.
    async fn send_raw(&mut self, body: &str) -> StatusCode {
        self.n += 1;
        let url = format!("{}/send?session={}&n={}", self.base, self.session, self.n);
        self.http
            .post(url)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
    }

    /// The next message from the server, or `None` once the session is over.
    async fn next(&mut self) -> Option<Value> {
        tokio::time::timeout(WAIT, self.next_inner())
            .await
            .expect("timed out waiting for the server")
    }

    /// Sends a downstream request (a poll, an SSE stream): its answer when it is 200; `None`, with the
    /// session over, when the server is gone (shut down) or the session is (404).
    async fn downstream(&mut self, req: reqwest::RequestBuilder) -> Option<reqwest::Response> {
        let resp = match req.send().await {
            Ok(resp) if resp.status() != StatusCode::NOT_FOUND => resp,
            _ => {
                self.over = true;
                return None;
            }
        };
        assert_eq!(resp.status(), StatusCode::OK);
        Some(resp)
    }

    async fn next_inner(&mut self) -> Option<Value> {
        loop {
            if let Some(v) = self.inbox.pop_front() {
                return Some(v);
            }
            if self.over {
                return None;
            }
            match self.kind {
                Kind::Poll | Kind::LongPoll => {
                    let wait = if self.kind == Kind::Poll {
                        "&wait=0"
                    } else {
                        ""
                    };
                    let url = format!(
                        "{}/poll?session={}&ack={}{wait}",
                        self.base, self.session, self.acked
                    );
                    let Some(resp) = self.downstream(self.http.get(url)).await else {
                        continue;
                    };
                    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
                    let messages = v["messages"].as_array().unwrap();
                    if messages.is_empty() && self.kind == Kind::Poll {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    self.inbox.extend(messages.iter().cloned());
                    self.acked = v["seq"].as_u64().unwrap();
                }
                Kind::Sse => {
                    if self.sse.is_none() {
                        let mut req = self
                            .http
                            .get(format!("{}/sse?session={}", self.base, self.session));
                        if self.acked > 0 {
                            req = req.header("last-event-id", self.acked.to_string());
                        }
                        let Some(resp) = self.downstream(req).await else {
                            continue;
                        };
                        assert_eq!(header(&resp, "content-type"), "text/event-stream");
                        self.sse = Some(resp);
                        self.sse_buf.clear();
                    }
                    let Some(resp) = self.sse.as_mut() else {
                        continue;
                    };
                    match resp.chunk().await {
                        Ok(Some(chunk)) => self.sse_buf.extend_from_slice(&chunk),
                        // The stream ended: reconnect, as EventSource does.
                        _ => {
                            self.sse = None;
                            continue;
                        }
                    }
                    let mut acked = None;
                    for SseEvent { id, data, .. } in take_sse_events(&mut self.sse_buf) {
                        self.inbox.extend(data);
                        if let Some(id) = id {
                            self.acked = id;
                            acked = Some(id);
                        }
                    }
                    if let Some(id) = acked {
                        // An open EventSource cannot ack: the client acks through send.
                        let url = format!("{}/send?session={}&ack={id}", self.base, self.session);
                        if let Ok(resp) = self.http.post(url).send().await {
                            assert!(
                                matches!(
                                    resp.status(),
                                    StatusCode::NO_CONTENT | StatusCode::NOT_FOUND
                                ),
                                "{}",
                                resp.status()
                            );
                        }
                    }
                }
            }
        }
    }

    /// Sends a command and returns its reply; pushes seen meanwhile are kept.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let status = self
            .send_raw(&json!({"id": id, method: params}).to_string())
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        loop {
            let v = self.next().await.expect("reply");
            if v["id"] == id {
                return v;
            }
            // Pushes, and replies to commands sent by hand.
            self.pushes.push_back(v);
        }
    }

    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        assert!(r.get("error").is_none(), "{method}: {r}");
        r[method].clone()
    }

    async fn error(&mut self, method: &str, params: Value) -> u64 {
        let r = self.call(method, params).await;
        r["error"]["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{method}: expected an error, got {r}"))
    }

    /// The next push of a kind (skipping other kinds).
    async fn push(&mut self, kind: &str) -> Value {
        self.next_push(kind).await
    }

    /// Reads until the session is over; the disconnect push's code.
    async fn disconnected(&mut self) -> Option<u64> {
        let mut code = None;
        while let Some(v) = self.next_unread().await {
            if let Some(d) = v.get("disconnect") {
                code = d["code"].as_u64();
            }
        }
        code
    }
}

impl ProtocolReader for HttpClient {
    fn kept(&mut self) -> &mut VecDeque<Value> {
        &mut self.pushes
    }

    async fn next_message(&mut self) -> Option<Value> {
        self.next().await
    }
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

/// Opens a session with `body` as it is; the status and the answer.
async fn open_raw(addr: SocketAddr, body: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(base(addr))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    answer(resp).await
}

async fn open_session(addr: SocketAddr) -> String {
    let (status, v) = open_raw(addr, r#"{"id":1,"connect":{}}"#).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["session"].as_str().unwrap().to_owned()
}

/// Opens a session and sends it a `subscribe` to `channel` (its first POST, `n=1`), unacknowledged:
/// the reply waits downstream, for the test to read as it pleases.
async fn open_subscribed(addr: SocketAddr, channel: &str) -> String {
    let session = open_session(addr).await;
    let subscribe = json!({"id": 2, "subscribe": {"channel": channel}}).to_string();
    let (status, v) = send(addr, &format!("session={session}&n=1"), &subscribe).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    session
}

/// `GET {path}/poll?{query}`: the status and the JSON answer.
async fn poll(addr: SocketAddr, query: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/poll?{query}", base(addr)))
        .send()
        .await
        .unwrap();
    answer(resp).await
}

/// `POST {path}/send?{query}` with `body`: the status and the JSON answer (if any).
async fn send(addr: SocketAddr, query: &str, body: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/send?{query}", base(addr)))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    answer(resp).await
}

fn ids(messages: &Value) -> Vec<Value> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect()
}

#[tokio::test]
async fn every_command_works_over_each_transport() {
    let s = start(config()).await;
    for kind in KINDS {
        let channel = format!("chat:{}", kind.name());
        let mut a = HttpClient::connected(s.addr, kind).await;
        let mut b = JsonClient::connected(s.addr).await;
        let sub = a.ok("subscribe", json!({"channel": channel})).await;
        assert_eq!(
            (sub["recoverable"].as_bool(), sub["offset"].as_u64()),
            (Some(true), Some(0))
        );
        b.ok("subscribe", json!({"channel": channel})).await;
        assert_eq!(a.push("join").await["info"]["client"], a.id.as_str());
        assert_eq!(a.push("join").await["info"]["client"], b.id.as_str());
        // From another client...
        b.ok(
            "publish",
            json!({"channel": channel, "data": {"text": "hi"}}),
        )
        .await;
        let p = a.push("pub").await;
        assert_eq!(
            (p["offset"].as_u64(), p["data"]["text"].as_str()),
            (Some(1), Some("hi"))
        );
        // ...from the server API...
        let body = json!({"channel": channel, "data": {"text": "from the backend"}});
        let (status, _) = api_call(s.api, Some(KEY), "publish", &body.to_string()).await;
        assert_eq!(status, 200);
        assert_eq!(a.push("pub").await["data"]["text"], "from the backend");
        // ...and from itself.
        let r = a
            .ok("publish", json!({"channel": channel, "data": "mine"}))
            .await;
        assert_eq!(r["offset"], 3);
        assert_eq!(a.push("pub").await["data"], "mine");
        let presence = a.ok("presence", json!({"channel": channel})).await;
        assert_eq!(
            presence["presence"].as_object().unwrap().len(),
            2,
            "{kind:?}"
        );
        let stats = a.ok("presence_stats", json!({"channel": channel})).await;
        assert_eq!(stats["num_clients"], 2);
        let history = a
            .ok("history", json!({"channel": channel, "limit": 10}))
            .await;
        assert_eq!(history["publications"].as_array().unwrap().len(), 3);
        assert_eq!(history["offset"], 3);
        assert_eq!(
            a.error("rpc", json!({"method": "m", "data": {}})).await,
            108
        );
        a.ok("unsubscribe", json!({"channel": channel})).await;
        assert_eq!(b.push("leave").await["info"]["client"], a.id.as_str());
        // Several commands in one POST, answered in order.
        assert_eq!(
            a.send_raw(&format!(
                "{{\"id\":100,\"presence_stats\":{{\"channel\":\"{channel}\"}}}}\n{{\"id\":101,\"history\":{{\"channel\":\"{channel}\",\"limit\":0}}}}\n"
            ))
            .await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(a.next().await.unwrap()["id"], 100);
        assert_eq!(a.next().await.unwrap()["id"], 101);
    }
}

#[tokio::test]
async fn recovery_with_a_new_session_misses_nothing_and_doubles_nothing() {
    let s = start(config()).await;
    let mut publisher = JsonClient::connected(s.addr).await;
    for kind in KINDS {
        let channel = format!("chat:rec-{}", kind.name());
        let mut a = HttpClient::connected(s.addr, kind).await;
        let epoch = a.ok("subscribe", json!({"channel": channel})).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
        for i in 1..=5 {
            publisher
                .ok("publish", json!({"channel": channel, "data": i}))
                .await;
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(a.push("pub").await["data"].as_u64().unwrap());
        }
        let offset = seen.len();
        drop(a); // the session is dropped after the third publication was read
        for i in 6..=8 {
            publisher
                .ok("publish", json!({"channel": channel, "data": i}))
                .await;
        }
        let mut a = HttpClient::connected(s.addr, kind).await;
        let sub = a
            .ok(
                "subscribe",
                json!({"channel": channel, "recover": true, "epoch": epoch, "offset": offset}),
            )
            .await;
        assert_eq!(sub["recovered"], true, "{sub}");
        for p in sub["publications"].as_array().unwrap() {
            seen.push(p["data"].as_u64().unwrap());
        }
        publisher
            .ok("publish", json!({"channel": channel, "data": 9}))
            .await;
        seen.push(a.push("pub").await["data"].as_u64().unwrap());
        assert_eq!(seen, (1..=9).collect::<Vec<_>>(), "{kind:?}");
    }
}

#[tokio::test]
async fn a_recovery_several_times_the_queue_arrives_whole_over_every_fallback() {
    // docs/protocol.md, Recovery: the reply carries what fits, the rest follows as pushes while the
    // client reads (and acknowledges: unacknowledged batches count against the queue too).
    let mut cfg = config();
    cfg.client.queue_bytes = 512 << 10;
    let s = start(cfg).await;
    let mut publisher = JsonClient::connected(s.addr).await;
    let pad = "x".repeat(16_000);
    for kind in KINDS {
        let channel = format!("chat:big-{}", kind.name());
        let mut epoch = String::new();
        for i in 1..=100 {
            let r = publisher
                .ok(
                    "publish",
                    json!({"channel": channel, "data": {"i": i, "pad": pad}}),
                )
                .await;
            epoch = r["epoch"].as_str().unwrap().to_owned();
        }
        let mut a = HttpClient::connected(s.addr, kind).await;
        let sub = a
            .ok(
                "subscribe",
                json!({"channel": channel, "recover": true, "epoch": epoch, "offset": 0}),
            )
            .await;
        assert_eq!(sub["recovered"], true, "{kind:?}");
        let mut seen: Vec<u64> = sub["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["data"]["i"].as_u64().unwrap())
            .collect();
        assert!(seen.len() < 50, "{kind:?}: {} in the reply", seen.len());
        while seen.len() < 100 {
            seen.push(a.push("pub").await["data"]["i"].as_u64().unwrap());
        }
        publisher
            .ok("publish", json!({"channel": channel, "data": {"i": 101}}))
            .await;
        seen.push(a.push("pub").await["data"]["i"].as_u64().unwrap());
        assert_eq!(seen, (1..=101).collect::<Vec<_>>(), "{kind:?}");
    }
}

#[tokio::test]
async fn a_lost_poll_answer_is_sent_again_and_nothing_is_doubled() {
    let s = start(config()).await;
    let session = open_session(s.addr).await;
    let (status, first) = poll(s.addr, &format!("session={session}&ack=0")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (first["seq"].as_u64(), ids(&first["messages"])),
        (Some(1), vec![json!(1)])
    );
    // That answer was "lost": the next poll still acks 0 and gets it again, with what came since.
    let (status, _) = send(
        s.addr,
        &format!("session={session}&n=1"),
        r#"{"id":2,"rpc":{"method":"m","data":{}}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, again) = poll(s.addr, &format!("session={session}&ack=0&wait=0")).await;
    assert_eq!(again["seq"], 2);
    assert_eq!(ids(&again["messages"]), vec![json!(1), json!(2)]);
    // Acknowledged: nothing more, and the empty answer carries the acknowledged seq.
    let (_, empty) = poll(s.addr, &format!("session={session}&ack=2&wait=0")).await;
    assert_eq!(empty, json!({"seq": 2, "messages": []}));
    // Acknowledging only the first batch sends the second again.
    let (_, _) = send(
        s.addr,
        &format!("session={session}&n=2"),
        r#"{"id":3,"rpc":{"method":"m","data":{}}}"#,
    )
    .await;
    let (_, next) = poll(s.addr, &format!("session={session}&ack=2")).await;
    assert_eq!(
        (next["seq"].as_u64(), ids(&next["messages"])),
        (Some(3), vec![json!(3)])
    );
}

#[tokio::test]
async fn of_two_polls_at_once_the_older_is_answered_empty_at_once() {
    let s = start(config()).await;
    let session = open_session(s.addr).await;
    let (_, first) = poll(s.addr, &format!("session={session}&ack=0")).await;
    assert_eq!(first["seq"], 1);
    let older = {
        let (addr, q) = (s.addr, format!("session={session}&ack=1"));
        tokio::spawn(async move { poll(addr, &q).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let newer = {
        let (addr, q) = (s.addr, format!("session={session}&ack=1"));
        tokio::spawn(async move { poll(addr, &q).await })
    };
    let started = Instant::now();
    let (status, v) = older.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the older poll was held"
    );
    assert_eq!(
        (status, v),
        (StatusCode::OK, json!({"seq": 1, "messages": []}))
    );
    // The newer one still waits, and gets what comes.
    send(
        s.addr,
        &format!("session={session}&n=1"),
        r#"{"id":2,"rpc":{"method":"m","data":{}}}"#,
    )
    .await;
    let (_, v) = newer.await.unwrap();
    assert_eq!(
        (v["seq"].as_u64(), ids(&v["messages"])),
        (Some(2), vec![json!(2)])
    );
}

#[tokio::test]
async fn a_long_poll_answers_as_soon_as_a_publication_arrives() {
    let mut cfg = config();
    cfg.fallback.poll_timeout = Duration::from_secs(20);
    let s = start(cfg).await;
    let session = open_subscribed(s.addr, "chat:fast").await;
    let (_, v) = poll(s.addr, &format!("session={session}&ack=0")).await;
    assert_eq!(v["seq"], 1);
    let held = {
        let (addr, q) = (s.addr, format!("session={session}&ack=1"));
        tokio::spawn(async move {
            let started = Instant::now();
            (poll(addr, &q).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = json!({"channel": "chat:fast", "data": "now"});
    assert_eq!(
        api_call(s.api, Some(KEY), "publish", &body.to_string())
            .await
            .0,
        200
    );
    let ((status, v), took) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["messages"][0]["pub"]["data"], "now");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
}

#[tokio::test]
async fn an_idle_session_expires_like_a_dropped_connection() {
    let mut cfg = config();
    cfg.fallback.session_timeout = Duration::from_secs(1);
    let s = start(cfg).await;
    let mut watcher = JsonClient::connected(s.addr).await;
    watcher
        .ok("subscribe", json!({"channel": "chat:idle"}))
        .await;
    let mut c = HttpClient::connected(s.addr, Kind::Poll).await;
    c.ok("subscribe", json!({"channel": "chat:idle"})).await;
    let presence = watcher
        .ok("presence", json!({"channel": "chat:idle"}))
        .await;
    assert_eq!(presence["presence"].as_object().unwrap().len(), 2);
    // The client goes quiet: no request for longer than session_timeout.
    assert_eq!(watcher.push("leave").await["info"]["client"], c.id.as_str());
    let presence = watcher
        .ok("presence", json!({"channel": "chat:idle"}))
        .await;
    assert_eq!(presence["presence"].as_object().unwrap().len(), 1);
    let (status, v) = poll(s.addr, &format!("session={}&ack=0", c.session)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], 101, "{v}");
    let (status, _) = send(s.addr, &format!("session={}&n=5", c.session), "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_held_poll_keeps_its_session_alive() {
    let mut cfg = config();
    cfg.fallback.session_timeout = Duration::from_secs(1);
    cfg.fallback.poll_timeout = Duration::from_secs(2);
    let s = start(cfg).await;
    let mut c = HttpClient::connected(s.addr, Kind::LongPoll).await;
    // Each poll is held 2 s, longer than the session timeout, and the next follows at once.
    for _ in 0..2 {
        let (status, v) = poll(s.addr, &format!("session={}&ack={}", c.session, c.acked)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["messages"], json!([]));
    }
    c.ok("subscribe", json!({"channel": "chat:alive"})).await;
}

#[tokio::test]
async fn unknown_sessions_and_wrong_secrets_are_404() {
    let s = start(config()).await;
    let session = open_session(s.addr).await;
    let (id, secret) = session.split_once('.').unwrap();
    assert!(secret.len() >= 32, "128 random bits at least");
    let wrong = format!("{id}.{}", "0".repeat(secret.len()));
    for query in [
        "session=nope.nope&ack=0".to_owned(),
        format!("session={wrong}&ack=0"),
        format!("session={id}&ack=0"),
        "ack=0".to_owned(),
    ] {
        let (status, v) = poll(s.addr, &query).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{query}");
        assert_no_session(&v);
        let (status, _) = send(s.addr, &query.replace("ack=0", "n=1"), "{}").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{query}");
    }
    let resp = reqwest::Client::new()
        .get(format!("{}/sse?session={wrong}", base(s.addr)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The real session is untouched.
    let (status, _) = poll(s.addr, &format!("session={session}&ack=0")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let mut cfg = config();
    cfg.fallback.max_body_bytes = 1024;
    let s = start(cfg).await;
    let big = format!(r#"{{"id":1,"connect":{{"name":"{}"}}}}"#, "x".repeat(2000));
    let (status, v) = open_raw(s.addr, &big).await;
    assert_eq!(
        (status, v["error"]["code"].as_u64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(106))
    );
    let session = open_session(s.addr).await;
    let (status, v) = send(s.addr, &format!("session={session}&n=1"), &big).await;
    assert_eq!(
        (status, v["error"]["code"].as_u64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(106))
    );
    // Not counted: n=1 is still free.
    let (status, _) = send(
        s.addr,
        &format!("session={session}&n=1"),
        r#"{"id":2,"presence_stats":{"channel":"chat:z"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn garbage_is_400_and_ends_the_session_with_3501() {
    let s = start(config()).await;
    let clients = |addr| async move {
        let (_, v) = api_call(addr, Some(KEY), "info", "{}").await;
        v["result"]["nodes"][0]["num_clients"].as_u64().unwrap()
    };
    // At open: no session.
    for garbage in [
        "not json",
        r#"{"id":1,"subscribe":{"channel":"chat:a"}}"#,
        "",
    ] {
        let (status, v) = open_raw(s.addr, garbage).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{garbage}");
        assert_eq!(v["error"]["code"], 107);
        assert!(v.get("session").is_none());
    }
    // Connected, then garbage in the same body: the connection is undone.
    let (status, _) = open_raw(s.addr, "{\"id\":1,\"connect\":{}}\n{oops").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(clients(s.api).await, 0);
    // Upstream: 400, and the downstream ends as a WebSocket would.
    for kind in KINDS {
        let mut c = HttpClient::connected(s.addr, kind).await;
        let (status, v) = send(
            s.addr,
            &format!("session={}&n=1", c.session),
            "{\"id\":2,\"presence\":{\"channel\":\"chat:q\"}}\nnot json",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], 107);
        // The reply to the command before the garbage comes first, then the disconnect push.
        assert_eq!(c.next().await.unwrap()["id"], 2);
        assert_eq!(c.disconnected().await, Some(3501), "{kind:?}");
        let (status, _) = poll(s.addr, &format!("session={}&ack=0", c.session)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert_eq!(clients(s.api).await, 0);
}

#[tokio::test]
async fn a_retried_upstream_post_is_not_handled_twice() {
    let s = start(config()).await;
    let mut c = HttpClient::connected(s.addr, Kind::LongPoll).await;
    c.ok("subscribe", json!({"channel": "chat:once"})).await;
    let publish = r#"{"id":50,"publish":{"channel":"chat:once","data":"once"}}"#;
    let n = c.n + 1;
    let query = format!("session={}&n={n}", c.session);
    let (status, _) = send(s.addr, &query, publish).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The answer was "lost": the client sends the same POST again.
    let (status, _) = send(s.addr, &query, publish).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Skipping ahead is refused.
    let (status, v) = send(
        s.addr,
        &format!("session={}&n={}", c.session, n + 2),
        publish,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("n={}", n + 1)),
        "{v}"
    );
    c.n = n;
    let h = c.ok("history", json!({"channel": "chat:once"})).await;
    assert_eq!(h["publications"].as_array().unwrap().len(), 1, "{h}");
    // Exactly one reply and one publication came down.
    let mut replies = 0;
    let mut pubs = 0;
    for v in c.pushes.drain(..) {
        replies += usize::from(v["id"] == 50);
        pubs += usize::from(v.get("pub").is_some());
    }
    assert_eq!((replies, pubs), (1, 1));
}

#[tokio::test]
async fn cors_preflights_are_answered_for_allowed_origins_only() {
    let mut cfg = config();
    cfg.fallback.allowed_origins = vec!["https://*.example.com".into()];
    cfg.fallback.allow_credentials = true;
    let s = start(cfg).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str, path: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{}{path}", base(s.addr)))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    for path in ["", "/send", "/poll", "/sse"] {
        let resp = preflight("https://app.example.com", path).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{path}");
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            "https://app.example.com"
        );
        assert_eq!(header(&resp, "access-control-allow-credentials"), "true");
        assert!(header(&resp, "access-control-allow-methods").contains("POST"));
        assert_eq!(
            header(&resp, "access-control-allow-headers"),
            "content-type"
        );
        assert!(header(&resp, "vary").contains("Origin"));
    }
    let resp = preflight("https://evil.test", "/send").await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&resp, "access-control-allow-origin"), "");
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], 103);
    // The requests themselves.
    let resp = open_from(&http, s.addr, "https://evil.test").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = open_from(&http, s.addr, "https://app.example.com").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        "https://app.example.com"
    );
    // The server's own origin may call although the list names only others.
    let own = format!("http://{}", s.addr);
    let resp = open_from(&http, s.addr, &own).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "access-control-allow-origin"), own);
    // Without allowed_origins only the server's own origin may call.
    let s = start(config()).await;
    let own = format!("http://{}", s.addr);
    let resp = open_from(&http, s.addr, &own).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "access-control-allow-origin"), own);
    assert_eq!(header(&resp, "access-control-allow-credentials"), "");
    let resp = open_from(&http, s.addr, "https://app.example.com").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

/// Opens a session as a page of `origin` would; the answer, for its status and CORS headers.
async fn open_from(http: &reqwest::Client, addr: SocketAddr, origin: &str) -> reqwest::Response {
    http.post(base(addr))
        .header("origin", origin)
        .body(r#"{"id":1,"connect":{}}"#)
        .send()
        .await
        .unwrap()
}

/// Reads SSE events from `resp` until `n` data messages arrived; (last id, messages).
async fn read_events(
    resp: &mut reqwest::Response,
    buf: &mut Vec<u8>,
    n: usize,
) -> (u64, Vec<Value>) {
    let mut last = 0;
    let mut messages = Vec::new();
    loop {
        for SseEvent { id, data, .. } in take_sse_events(buf) {
            last = id.unwrap_or(last);
            messages.extend(data);
        }
        if messages.len() >= n {
            return (last, messages);
        }
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("stream open");
        buf.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_without_loss_or_duplicates() {
    let mut cfg = config();
    cfg.fallback.sse_max_unacked_bytes = 2048;
    let s = start(cfg).await;
    let session = open_subscribed(s.addr, "feed:sse").await;
    let http = reqwest::Client::new();
    let url = format!("{}/sse?session={session}", base(s.addr));
    let mut resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    assert_eq!(header(&resp, "cache-control"), "no-cache");
    assert_eq!(header(&resp, "x-accel-buffering"), "no");
    let mut buf = Vec::new();
    let first = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"retry: 1000\n\n"), "{first:?}");
    buf.extend_from_slice(&first[13..]);
    let (id, messages) = read_events(&mut resp, &mut buf, 2).await;
    assert_eq!(
        (id, ids(&Value::from(messages))),
        (1, vec![json!(1), json!(2)])
    );
    let publish = |i: u64| api_publish(s.api, "feed:sse", json!({"i": i, "pad": "x".repeat(100)}));
    for i in 1..=3 {
        publish(i).await;
    }
    let (seen_id, messages) = read_events(&mut resp, &mut buf, 3).await;
    assert_eq!(messages.len(), 3);
    drop(resp);
    // Missed while away, then back with Last-Event-ID: 1 (as if events after 1 were lost too).
    for i in 4..=5 {
        publish(i).await;
    }
    let mut resp = http
        .get(&url)
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (id, messages) = read_events(&mut resp, &mut buf, 5).await;
    let offsets: Vec<u64> = messages
        .iter()
        .map(|m| m["pub"]["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
    assert!(id > seen_id);
    // Unacknowledged bytes pass sse_max_unacked_bytes: the server closes the stream, so that
    // EventSource reconnects with Last-Event-ID (acknowledging).
    for i in 6..=30 {
        publish(i).await;
    }
    let ended = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open");
    // A pure acknowledgement through send, then polls get exactly what follows.
    let (status, _) = send(s.addr, &format!("session={session}&ack={id}"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut offsets = Vec::new();
    let mut ack = id;
    while offsets.last() != Some(&30) {
        let (_, v) = poll(s.addr, &format!("session={session}&ack={ack}")).await;
        ack = v["seq"].as_u64().unwrap();
        offsets.extend(
            v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["pub"]["offset"].as_u64().unwrap()),
        );
    }
    assert_eq!(offsets, (6..=30).collect::<Vec<_>>());
}

async fn api_publish(api: SocketAddr, channel: &str, data: Value) {
    let body = json!({"channel": channel, "data": data});
    let (status, v) = api_call(api, Some(KEY), "publish", &body.to_string()).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn a_new_downstream_request_replaces_an_open_sse_stream() {
    let s = start(config()).await;
    let session = open_session(s.addr).await;
    let mut resp = reqwest::Client::new()
        .get(format!("{}/sse?session={session}", base(s.addr)))
        .send()
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_events(&mut resp, &mut buf, 1).await;
    let (status, v) = poll(s.addr, &format!("session={session}&ack=1&wait=0")).await;
    assert_eq!(
        (status, v),
        (StatusCode::OK, json!({"seq": 1, "messages": []}))
    );
    let ended = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the older stream stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http_client_is_disconnected_with_3008() {
    let mut cfg = config();
    cfg.client.queue_bytes = 64 << 10;
    let s = start(cfg).await;
    let mut c = HttpClient::connected(s.addr, Kind::LongPoll).await;
    c.ok("subscribe", json!({"channel": "chat:flood"})).await;
    // It stops reading; 100 publications of 1 KiB pass its 64 KiB bound.
    let text = "x".repeat(1024);
    for i in 0..100 {
        let body = json!({"channel": "chat:flood", "data": {"i": i, "t": text}});
        api_call(s.api, Some(KEY), "publish", &body.to_string()).await;
    }
    let (status, v) = poll(s.addr, &format!("session={}&ack={}", c.session, c.acked)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v["messages"],
        json!([{"disconnect": {"code": 3008, "reason": "slow", "reconnect": true}}])
    );
    let (status, _) = poll(s.addr, &format!("session={}&ack=0", c.session)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_ends_open_downstreams_with_3001() {
    let s = start(config()).await;
    let mut polling = HttpClient::connected(s.addr, Kind::LongPoll).await;
    let mut streaming = HttpClient::connected(s.addr, Kind::Sse).await;
    // Both are waiting on their downstream when the server stops.
    let polling = tokio::spawn(async move { polling.disconnected().await });
    let streaming = tokio::spawn(async move { streaming.disconnected().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.handle.shutdown();
    assert_eq!(polling.await.unwrap(), Some(3001));
    assert_eq!(streaming.await.unwrap(), Some(3001));
    tokio::time::timeout(WAIT, s.task).await.unwrap().unwrap();
}

/// `POST {path}/close?{query}` with `body` (what `navigator.sendBeacon` sends): the status.
async fn close(addr: SocketAddr, query: &str, body: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{}/close?{query}", base(addr)))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_closed_session_leaves_at_once_like_a_closed_websocket() {
    // A session timeout far longer than the test: only the close can make the client leave.
    let mut cfg = config();
    cfg.fallback.session_timeout = Duration::from_secs(60);
    let s = start(cfg).await;
    for kind in KINDS {
        let channel = format!("chat:close-{}", kind.name());
        let mut watcher = JsonClient::connected(s.addr).await;
        watcher.ok("subscribe", json!({"channel": channel})).await;
        let mut c = HttpClient::connected(s.addr, kind).await;
        c.ok("subscribe", json!({"channel": channel})).await;
        let presence = watcher.ok("presence", json!({"channel": channel})).await;
        assert_eq!(
            presence["presence"].as_object().unwrap().len(),
            2,
            "{kind:?}"
        );
        // A long poll held while the client leaves is answered (404), not held to poll_timeout.
        let held = (kind == Kind::LongPoll).then(|| {
            let (addr, query) = (s.addr, format!("session={}&ack={}", c.session, c.acked));
            tokio::spawn(async move {
                let started = Instant::now();
                (poll(addr, &query).await.0, started.elapsed())
            })
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let status = close(s.addr, &format!("session={}", c.session), "").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{kind:?}");
        let leave = tokio::time::timeout(Duration::from_secs(1), watcher.push("leave"))
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: no leave push within a second"));
        assert_eq!(leave["info"]["client"], c.id.as_str());
        assert!(started.elapsed() < Duration::from_secs(1), "{kind:?}");
        let presence = watcher.ok("presence", json!({"channel": channel})).await;
        assert_eq!(
            presence["presence"].as_object().unwrap().len(),
            1,
            "{kind:?}"
        );
        if let Some(held) = held {
            let (status, took) = held.await.unwrap();
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert!(
                took < Duration::from_secs(2),
                "held poll answered after {took:?}"
            );
        }
        // The session is over: every later request, a second close included, is 404.
        let (status, _) = poll(s.addr, &format!("session={}&ack=0&wait=0", c.session)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kind:?}");
        let status = close(s.addr, &format!("session={}", c.session), "bye").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kind:?}");
        assert_eq!(c.disconnected().await, None, "{kind:?}: no disconnect push");
    }
}

#[tokio::test]
async fn close_of_an_ended_session_waiting_for_its_push_is_204() {
    // The session ended (3501) and its push waits for a downstream: the client no longer wants it.
    let s = start(config()).await;
    let session = open_session(s.addr).await;
    let (status, _) = send(s.addr, &format!("session={session}&n=1"), "garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        close(s.addr, &format!("session={session}"), "").await,
        StatusCode::NO_CONTENT
    );
    let (status, _) = poll(s.addr, &format!("session={session}&ack=0&wait=0")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
