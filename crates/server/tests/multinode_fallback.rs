//! HTTP fallback sessions behind a plain round-robin load balancer: one `redis-server` (or
//! `nats-server -js`: every test runs for both engines) of the test's own and three nodes on it, and a client whose every request lands on the next
//! node in turn. A session lives on the node that opened it; requests that land elsewhere are relayed
//! there through the engine, and the client must see exactly the contract of docs/protocol.md: the same
//! answers, the same seq/ack behaviour, nothing lost and nothing doubled. A wrong secret is still 404,
//! and so, within a bounded time, is a session whose node is gone.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{BIN, signal};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard::config::EngineKind;

const KEY: &str = "multinode-fallback-key";
const PATH: &str = "/connection/http";
const PREFIX: &str = "mnfb";

fn config(broker: &broker::Broker) -> Config {
    let mut c = broker.node_config(KEY, PREFIX);
    c.fallback.poll_timeout = Duration::from_secs(2);
    c.fallback.sse_ping_interval = Duration::from_secs(1);
    c.fallback.relay_timeout = Duration::from_secs(2);
    c
}

async fn three_nodes(broker: &broker::Broker) -> Vec<TestServer> {
    start_nodes(3, &config(broker)).await
}

fn base(addr: SocketAddr) -> String {
    format!("http://{addr}{PATH}")
}

async fn publish(node: &TestServer, channel: &str, data: Value) -> u64 {
    let body = json!({"channel": channel, "data": data}).to_string();
    let (status, v) = api_call(node.api, Some(KEY), "publish", &body).await;
    assert_eq!(status, 200, "{v}");
    v["result"]["offset"].as_u64().unwrap()
}

/// A fallback client behind a round-robin load balancer: each request goes to the next node.
struct Client {
    http: reqwest::Client,
    nodes: Vec<SocketAddr>,
    turn: usize,
    session: String,
    n: u64,
    next_id: u64,
    /// The last `seq` received, acknowledged by the next poll.
    acked: u64,
}

impl Client {
    /// Opens a session on `nodes[first]` with a connect; later requests go round-robin from the
    /// node after it.
    async fn open(nodes: Vec<SocketAddr>, first: usize) -> Self {
        let http = reqwest::Client::new();
        let resp = http
            .post(format!("{}?transport=long-poll", base(nodes[first])))
            .body(r#"{"id":1,"connect":{}}"#)
            .send()
            .await
            .unwrap();
        let (status, v) = answer(resp).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        Self {
            http,
            turn: first + 1,
            nodes,
            session: v["session"].as_str().unwrap().to_owned(),
            n: 0,
            next_id: 1,
            acked: 0,
        }
    }

    /// The next node in turn.
    fn next_node(&mut self) -> SocketAddr {
        let addr = self.nodes[self.turn % self.nodes.len()];
        self.turn += 1;
        addr
    }

    /// `POST send?session=S&{query}` to the next node.
    async fn send_raw(&mut self, query: &str, body: &str) -> (StatusCode, Value) {
        let url = format!(
            "{}/send?session={}&{query}",
            base(self.next_node()),
            self.session
        );
        answer(
            self.http
                .post(url)
                .body(body.to_owned())
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Sends one command as the next `n`; its id.
    async fn command(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        self.n += 1;
        let body = json!({"id": self.next_id, method: params}).to_string();
        let (status, v) = self.send_raw(&format!("n={}", self.n), &body).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
        self.next_id
    }

    /// `GET poll?session=S&ack=N[&wait=0]` on the next node, without acknowledging what it gets.
    async fn poll_raw(&mut self, ack: u64, wait: bool) -> (StatusCode, Value) {
        let wait = if wait { "" } else { "&wait=0" };
        let url = format!(
            "{}/poll?session={}&ack={ack}{wait}",
            base(self.next_node()),
            self.session
        );
        answer(self.http.get(url).send().await.unwrap()).await
    }

    /// A long poll on the next node acknowledging what came before; the messages it brought.
    async fn poll(&mut self) -> Vec<Value> {
        let (status, v) = self.poll_raw(self.acked, true).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let seq = v["seq"].as_u64().unwrap();
        assert!(seq >= self.acked, "seq went back: {v}");
        self.acked = seq;
        v["messages"].as_array().unwrap().clone()
    }
}

/// The `pub` offsets and reply ids in `messages`, in order.
fn sort(messages: &[Value], offsets: &mut Vec<u64>, replies: &mut Vec<u64>) {
    for m in messages {
        if let Some(p) = m.get("pub") {
            offsets.push(p["offset"].as_u64().unwrap());
        } else if let Some(id) = m["id"].as_u64() {
            assert!(m.get("error").is_none(), "{m}");
            replies.push(id);
        }
    }
}

async fn every_request_of_a_session_may_land_on_any_node(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = three_nodes(&broker).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // Sessions name their node: one opened on each node, three different prefixes.
    let mut prefixes = BTreeSet::new();
    for first in 0..3 {
        let c = Client::open(addrs.clone(), first).await;
        prefixes.insert(c.session.split('-').next().unwrap().to_owned());
    }
    assert_eq!(prefixes.len(), 3, "{prefixes:?}");

    let mut c = Client::open(addrs.clone(), 0).await;
    let mut offsets = Vec::new();
    let mut replies = Vec::new();
    // The connect reply, through node B.
    let messages = c.poll().await;
    sort(&messages, &mut offsets, &mut replies);
    assert_eq!(replies, [1]);
    // Subscribed through node C; the reply is waiting by the time the send is answered, whichever
    // node polls for it (A).
    let id = c.command("subscribe", json!({"channel": "chat:rr"})).await;
    let messages = c.poll().await;
    sort(&messages, &mut offsets, &mut replies);
    assert_eq!(replies, [1, id]);

    // Publications through node C's API, interleaved with commands and polls going round-robin.
    let mut want = Vec::new();
    let mut ids = vec![1, id];
    for round in 0..12 {
        for _ in 0..=(round % 3) {
            want.push(publish(&nodes[2], "chat:rr", json!({"round": round})).await);
        }
        if round % 4 == 1 {
            ids.push(
                c.command("presence_stats", json!({"channel": "chat:rr"}))
                    .await,
            );
        }
        let messages = c.poll().await;
        sort(&messages, &mut offsets, &mut replies);
    }
    // Whatever is still on its way comes with the next polls (each answered at once when it has
    // anything, else held up to poll_timeout).
    let deadline = Instant::now() + WAIT;
    while offsets.len() < want.len() || replies.len() < ids.len() {
        assert!(Instant::now() < deadline, "{offsets:?} {replies:?}");
        let messages = c.poll().await;
        sort(&messages, &mut offsets, &mut replies);
    }
    assert_eq!(offsets, want, "every publication once, in order");
    assert_eq!(replies, ids, "every reply once, in order");

    // A lost poll answer is sent again when the ack does not advance, even from another node.
    publish(&nodes[1], "chat:rr", json!("lost")).await;
    let acked = c.acked;
    let (status, first) = c.poll_raw(acked, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["messages"].as_array().unwrap().len(), 1, "{first}");
    let (status, again) = c.poll_raw(acked, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first, "the same answer again, through another node");
    let (_, empty) = c.poll_raw(first["seq"].as_u64().unwrap(), false).await;
    assert_eq!(empty, json!({"seq": first["seq"], "messages": []}));
    c.acked = first["seq"].as_u64().unwrap();

    // A retried upstream POST (same n) landing on another node is not handled twice.
    c.n += 1;
    let body = json!({"id": 500, "publish": {"channel": "chat:rr", "data": "once"}}).to_string();
    for _ in 0..3 {
        let (status, v) = c.send_raw(&format!("n={}", c.n), &body).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }
    // Out of order, through another node: the same 409 as on the session's own.
    let (status, v) = c.send_raw(&format!("n={}", c.n + 2), "{}").await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], 107);
    let mut got: Vec<Value> = Vec::new();
    while !got.iter().any(|m| m.get("pub").is_some()) || !got.iter().any(|m| m["id"] == 500) {
        got.extend(c.poll().await);
    }
    let (_, rest) = c.poll_raw(c.acked, false).await;
    got.extend(rest["messages"].as_array().unwrap().iter().cloned());
    let pubs: Vec<&Value> = got.iter().filter(|m| m.get("pub").is_some()).collect();
    assert_eq!(pubs.len(), 1, "published once: {got:?}");
    assert_eq!(pubs[0]["pub"]["data"], "once");
}

async fn of_two_polls_on_two_nodes_the_older_is_answered_empty_at_once(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = three_nodes(&broker).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut c = Client::open(addrs.clone(), 0).await;
    c.poll().await;
    let older = {
        let url = format!(
            "{}/poll?session={}&ack={}",
            base(addrs[1]),
            c.session,
            c.acked
        );
        tokio::spawn(async move {
            let started = Instant::now();
            (
                answer(reqwest::get(url).await.unwrap()).await,
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = {
        let url = format!(
            "{}/poll?session={}&ack={}",
            base(addrs[2]),
            c.session,
            c.acked
        );
        tokio::spawn(async move { answer(reqwest::get(url).await.unwrap()).await })
    };
    let ((status, v), took) = older.await.unwrap();
    assert_eq!(
        (status, v),
        (StatusCode::OK, json!({"seq": c.acked, "messages": []}))
    );
    assert!(took < Duration::from_millis(1500), "held {took:?}");
    let id = c
        .command("presence_stats", json!({"channel": "chat:x"}))
        .await;
    let (status, v) = newer.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["messages"][0]["id"], id, "{v}");
}

/// Complete SSE events at the front of `buf` that have an id: (id, data lines as JSON); pings
/// (the only comments a stream may carry) counted apart.
fn take_events(buf: &mut Vec<u8>, pings: &mut usize) -> Vec<(u64, Vec<Value>)> {
    let mut events = Vec::new();
    for event in take_sse_events(buf) {
        for comment in &event.comments {
            assert_eq!(comment, ": ping", "unexpected SSE line");
            *pings += 1;
        }
        if let Some(id) = event.id {
            events.push((id, event.data));
        }
    }
    events
}

/// An open event stream.
struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
    pings: usize,
    events: VecDeque<(u64, Vec<Value>)>,
}

impl Sse {
    async fn open(addr: SocketAddr, session: &str, last_event_id: Option<u64>) -> Self {
        let mut req = reqwest::Client::new().get(format!("{}/sse?session={session}", base(addr)));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        assert_eq!(
            resp.headers()["cache-control"].to_str().unwrap(),
            "no-cache"
        );
        Self {
            resp,
            buf: Vec::new(),
            pings: 0,
            events: VecDeque::new(),
        }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<(u64, Vec<Value>)> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("timed out waiting for an event");
            match chunk {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
            let events = take_events(&mut self.buf, &mut self.pings);
            self.events.extend(events);
        }
    }
}

async fn an_sse_stream_on_another_node_delivers_every_batch_once(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = three_nodes(&broker).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut c = Client::open(addrs.clone(), 0).await;
    // The stream is on node B; the session on node A.
    let mut sse = Sse::open(addrs[1], &c.session, None).await;
    let (seq, data) = sse.next().await.unwrap();
    assert_eq!(
        (seq, data[0]["id"].as_u64()),
        (1, Some(1)),
        "the connect reply"
    );
    let id = c.command("subscribe", json!({"channel": "chat:sse"})).await;
    let (seq, data) = sse.next().await.unwrap();
    assert_eq!((seq, data[0]["id"].as_u64()), (2, Some(id)));
    let mut last = seq;
    let mut offsets = Vec::new();
    let mut want = Vec::new();
    for i in 0..10 {
        want.push(publish(&nodes[2], "chat:sse", json!(i)).await);
        if i % 3 == 0 {
            // Acknowledgements ride on sends, through whichever node.
            let (status, _) = c.send_raw(&format!("ack={last}"), "").await;
            assert_eq!(status, StatusCode::NO_CONTENT);
        }
        while offsets.len() < want.len() {
            let (seq, data) = sse.next().await.unwrap();
            assert_eq!(seq, last + 1, "ids follow each other");
            last = seq;
            for m in data {
                // Besides publications, the join push of the client's own subscription.
                match m["pub"]["offset"].as_u64() {
                    Some(offset) => offsets.push(offset),
                    None => assert!(m.get("join").is_some(), "{m}"),
                }
            }
        }
    }
    assert_eq!(offsets, want);
    // Quiet: the stream is kept alive with pings, as on the session's own node.
    let pings = sse.pings;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish(&nodes[0], "chat:sse", json!("after the quiet")).await;
    let (seq, data) = sse.next().await.unwrap();
    assert_eq!(
        (seq, &data[0]["pub"]["data"]),
        (last + 1, &json!("after the quiet"))
    );
    assert!(sse.pings > pings, "no ping while quiet");

    // EventSource reconnects, elsewhere, with Last-Event-ID of an earlier event: the events after it
    // come again, with the same ids (the client skips those it has), then the new ones.
    let before = last;
    last = seq;
    drop(sse);
    publish(&nodes[1], "chat:sse", json!("while away")).await;
    let mut sse = Sse::open(addrs[2], &c.session, Some(before)).await;
    let (seq, data) = sse.next().await.unwrap();
    assert_eq!(
        (seq, &data[0]["pub"]["data"]),
        (last, &json!("after the quiet"))
    );
    let (seq, data) = sse.next().await.unwrap();
    assert_eq!(
        (seq, &data[0]["pub"]["data"]),
        (last + 1, &json!("while away"))
    );

    // A poll on a third node replaces the stream: it ends.
    let (status, v) = c.poll_raw(seq, false).await;
    assert_eq!(
        (status, v),
        (StatusCode::OK, json!({"seq": seq, "messages": []}))
    );
    assert!(sse.next().await.is_none(), "the replaced stream ends");
}

async fn a_wrong_secret_through_another_node_is_404(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = three_nodes(&broker).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let c = Client::open(addrs.clone(), 0).await;
    let (id, secret) = c.session.split_once('.').unwrap();
    let wrong = format!("{id}.{}", "0".repeat(secret.len()));
    let http = reqwest::Client::new();
    let b = base(addrs[1]);
    for req in [
        http.get(format!("{b}/poll?session={wrong}&ack=0")),
        http.get(format!("{b}/poll?session={wrong}&ack=0&wait=0")),
        http.post(format!("{b}/send?session={wrong}&n=1"))
            .body("{}"),
        http.post(format!("{b}/send?session={wrong}&ack=1")),
        http.get(format!("{b}/sse?session={wrong}")),
        http.post(format!("{b}/close?session={wrong}")),
        http.get(format!("{b}/poll?session={id}&ack=0")),
    ] {
        let started = Instant::now();
        let (status, v) = answer(req.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
        assert_no_session(&v);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered by node A at once"
        );
    }
    // The real session is untouched, through either node.
    for addr in [addrs[1], addrs[0]] {
        let url = format!("{}/poll?session={}&ack=0&wait=0", base(addr), c.session);
        let (status, v) = answer(http.get(url).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["messages"][0]["id"], 1);
    }
}

async fn a_session_whose_node_is_gone_is_404_within_a_bounded_time(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    // Node A is a process of its own, so that it can hang and die like a real one.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, broker.engine_toml(PREFIX)).unwrap();
    assert!(std::path::Path::new(BIN).exists(), "{BIN}");
    let (mut a, a_addr) = common::process::serve(&file);
    let b = start(config(&broker)).await;
    let c = Client::open(vec![a_addr, b.addr], 0).await;
    let http = reqwest::Client::new();
    let poll_b = || {
        http.get(format!(
            "{}/poll?session={}&ack=0&wait=0",
            base(b.addr),
            c.session
        ))
        .send()
    };
    let (status, v) = answer(poll_b().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "relayed to the process: {v}");
    assert_eq!(v["messages"][0]["id"], 1);

    // Hung: it still listens on Redis but answers nothing. Node B gives up after relay_timeout.
    signal(&a, "STOP");
    let started = Instant::now();
    let (status, v) = answer(poll_b().await.unwrap()).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], 101);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );

    // Dead: Redis drops its subscription, and node B knows at once.
    a.kill().unwrap();
    a.wait().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let started = Instant::now();
        let (status, _) = answer(poll_b().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        if started.elapsed() < Duration::from_millis(500) {
            break;
        }
        // Redis had not noticed the dead connection yet: that one waited for the timeout.
        assert!(
            Instant::now() < deadline,
            "Redis never noticed the dead node"
        );
    }
    let started = Instant::now();
    let url = format!("{}/send?session={}&n=1", base(b.addr), c.session);
    let (status, _) = answer(http.post(url).body("{}").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(started.elapsed() < Duration::from_millis(500));
}

async fn a_close_through_another_node_ends_the_session_at_once(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = three_nodes(&broker).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut watcher = JsonClient::connected(addrs[2]).await;
    watcher
        .ok("subscribe", json!({"channel": "chat:mn-close"}))
        .await;
    // Opened on node 0, subscribed through node 1.
    let mut c = Client::open(addrs.clone(), 0).await;
    c.command("subscribe", json!({"channel": "chat:mn-close"}))
        .await;
    watcher.push("join").await;
    // Closed through node 2 (the next in turn): relayed to node 0, which ends the session.
    let started = Instant::now();
    let url = format!("{}/close?session={}", base(c.next_node()), c.session);
    let (status, v) = answer(c.http.post(url).body("").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    tokio::time::timeout(Duration::from_secs(1), watcher.push("leave"))
        .await
        .expect("a leave push within a second of the close");
    assert!(started.elapsed() < Duration::from_secs(1));
    let presence = watcher
        .ok("presence", json!({"channel": "chat:mn-close"}))
        .await;
    assert_eq!(presence["presence"].as_object().unwrap().len(), 1);
    for _ in 0..3 {
        let (status, v) = c.poll_raw(0, false).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    }
}

both_engines!(
    every_request_of_a_session_may_land_on_any_node,
    of_two_polls_on_two_nodes_the_older_is_answered_empty_at_once,
    an_sse_stream_on_another_node_delivers_every_batch_once,
    a_wrong_secret_through_another_node_is_404,
    a_session_whose_node_is_gone_is_404_within_a_bounded_time,
    a_close_through_another_node_ends_the_session_at_once,
);
