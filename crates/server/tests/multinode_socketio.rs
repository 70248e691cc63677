//! Engine.IO polling sessions behind a plain round-robin load balancer, without sticky sessions:
//! one `redis-server` (or `nats-server -js`: every test runs for both engines) of the test's own,
//! nodes on it, and a client whose every request lands on the next node in turn. A session lives on
//! the node that opened it and its sid names that node; polls and POSTs that land elsewhere are
//! relayed there through the engine, and the client must see exactly what the session's own node
//! answers (statuses, `Content-Type`, bodies, the Engine.IO error bodies), with nothing lost and
//! nothing doubled. A sid of a node that is gone is `Session ID unknown`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{BIN, signal};
use common::*;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard::config::EngineKind;
use tokio::io::AsyncWriteExt;

const KEY: &str = "multinode-socketio-key";
const PATH: &str = "/socket.io/";
const PREFIX: &str = "mnsio";
/// What separates the packets of a polling payload.
const SEPARATOR: char = '\x1e';
const UNKNOWN_SID: &str = r#"{"code":1,"message":"Session ID unknown"}"#;
const BAD_REQUEST: &str = r#"{"code":3,"message":"Bad request"}"#;

fn config(broker: &broker::Broker) -> Config {
    let mut c = broker.node_config(KEY, PREFIX);
    c.socketio.enabled = true;
    c.client.allow_anonymous = true;
    // A held poll is answered by the next ping: short enough for the tests to wait for.
    c.socketio.ping_interval = Duration::from_secs(2);
    c.socketio.ping_timeout = Duration::from_secs(5);
    c.socketio.max_payload = 10_000;
    c.fallback.relay_timeout = Duration::from_secs(2);
    c
}

/// An HTTP answer: status, `Content-Type`, body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

async fn reply(resp: reqwest::Response) -> Reply {
    Reply {
        status: resp.status().as_u16(),
        content_type: resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body: resp.text().await.unwrap(),
    }
}

fn error_reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        content_type: "application/json".into(),
        body: body.into(),
    }
}

fn text_reply(body: &str) -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain; charset=UTF-8".into(),
        body: body.into(),
    }
}

fn ok_reply() -> Reply {
    Reply {
        status: 200,
        content_type: "text/html".into(),
        body: "ok".into(),
    }
}

/// An Engine.IO polling client behind a round-robin load balancer: each request goes to the next
/// node. Pings are answered (by a POST, on the next node) as they come.
struct Eio {
    http: reqwest::Client,
    nodes: Vec<SocketAddr>,
    turn: usize,
    sid: String,
}

impl Eio {
    /// A session opened on `nodes[first]`; later requests go round-robin from the node after it.
    async fn open(nodes: Vec<SocketAddr>, first: usize) -> Self {
        let http = reqwest::Client::new();
        let url = format!("http://{}{PATH}?EIO=4&transport=polling", nodes[first]);
        let open = reply(http.get(url).send().await.unwrap()).await;
        assert_eq!(
            (open.status, open.content_type.as_str()),
            (200, "text/plain; charset=UTF-8"),
            "{open:?}"
        );
        let handshake: Value = serde_json::from_str(open.body.strip_prefix('0').unwrap()).unwrap();
        Self {
            http,
            turn: first + 1,
            nodes,
            sid: handshake["sid"].as_str().unwrap().to_owned(),
        }
    }

    /// The node id the sid names.
    fn node(&self) -> &str {
        self.sid.split_once('-').unwrap().0
    }

    fn target(&mut self, at: Option<usize>) -> String {
        let i = at.unwrap_or_else(|| {
            self.turn += 1;
            self.turn - 1
        });
        let addr = self.nodes[i % self.nodes.len()];
        format!(
            "http://{addr}{PATH}?EIO=4&transport=polling&sid={}",
            self.sid
        )
    }

    /// A GET on the next node (`at`: on that one).
    async fn get(&mut self, at: Option<usize>) -> Reply {
        let url = self.target(at);
        reply(self.http.get(url).send().await.unwrap()).await
    }

    /// A POST of `body` on the next node (`at`: on that one).
    async fn post(&mut self, at: Option<usize>, body: &str) -> Reply {
        let url = self.target(at);
        reply(
            self.http
                .post(url)
                .header("content-type", "text/plain;charset=UTF-8")
                .body(body.to_owned())
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Sends packets in one POST on the next node.
    async fn send(&mut self, packets: &[&str]) {
        let body = packets.join(&SEPARATOR.to_string());
        assert_eq!(self.post(None, &body).await, ok_reply(), "POST {body:?}");
    }

    /// One poll on the next node: the packets it brought, pings answered and left out.
    async fn poll(&mut self) -> Vec<String> {
        let got = self.get(None).await;
        assert_eq!(
            (got.status, got.content_type.as_str()),
            (200, "text/plain; charset=UTF-8"),
            "{got:?}"
        );
        let mut packets = Vec::new();
        for packet in got.body.split(SEPARATOR) {
            if packet == "2" {
                self.send(&["3"]).await;
            } else {
                packets.push(packet.to_owned());
            }
        }
        packets
    }

    /// Polls until `done` holds for what came so far; everything that came.
    async fn poll_until(&mut self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while !done(&got) {
            assert!(Instant::now() < deadline, "timed out; got {got:?}");
            got.extend(self.poll().await);
        }
        got
    }

    /// Joins the main namespace and returns the socket id.
    async fn connect(&mut self) -> String {
        self.send(&["40"]).await;
        let got = self
            .poll_until(|p| p.iter().any(|p| p.starts_with("40")))
            .await;
        assert_eq!(got.len(), 1, "{got:?}");
        let connected: Value = serde_json::from_str(got[0].strip_prefix("40").unwrap()).unwrap();
        connected["sid"].as_str().unwrap().to_owned()
    }
}

async fn publish(node: &TestServer, channel: &str, data: Value) {
    let body = json!({"channel": channel, "data": data}).to_string();
    let (status, v) = api_call(node.api, Some(KEY), "publish", &body).await;
    assert_eq!(status, 200, "{v}");
}

async fn polls_and_posts_may_land_on_any_node(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = start_nodes(2, &config(&broker)).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // Sids name their node: one opened on each node, two different node ids.
    let mut ids = BTreeSet::new();
    for first in 0..2 {
        let c = Eio::open(addrs.clone(), first).await;
        assert!(
            c.node().len() == 8 && c.node().bytes().all(|b| b.is_ascii_hexdigit()),
            "{}",
            c.sid
        );
        ids.insert(c.node().to_owned());
    }
    assert_eq!(ids.len(), 2, "{ids:?}");

    let mut watcher = JsonClient::connected(addrs[1]).await;
    watcher.ok("subscribe", json!({"channel": "chat:rr"})).await;
    // Opened on node A; the CONNECT goes through node B, its answer comes through node A.
    let mut c = Eio::open(addrs.clone(), 0).await;
    c.connect().await;
    c.send(&[r#"421["subscribe","chat:rr"]"#]).await;
    assert_eq!(
        c.poll_until(|p| !p.is_empty()).await,
        ["431[null]"],
        "the ack, relayed"
    );

    // Publications through both nodes' APIs, client emits (a publish and an rpc without a
    // handler, each with its ack) through POSTs, polls, all going round-robin.
    let mut want = Vec::new();
    let mut acks = Vec::new();
    let mut got = Vec::new();
    let mut next_ack = 2;
    for round in 0..12 {
        for _ in 0..=(round % 3) {
            let n = want.len();
            publish(
                &nodes[round % 2],
                "chat:rr",
                json!({"event": "n", "args": [n]}),
            )
            .await;
            want.push(n);
        }
        if round % 4 == 1 {
            let (publish_ack, rpc_ack) = (next_ack, next_ack + 1);
            next_ack += 2;
            let emit = format!(r#"42{publish_ack}["publish","chat:rr",{{"round":{round}}}]"#);
            let rpc = format!(r#"42{rpc_ack}["dance",{round}]"#);
            c.send(&[&emit, &rpc]).await;
            acks.push(publish_ack);
            acks.push(rpc_ack);
        }
        got.extend(c.poll().await);
    }
    let done = |got: &[String]| {
        let events = got.iter().filter(|p| p.starts_with(r#"42["n""#)).count();
        let answered = got.iter().filter(|p| p.starts_with("43")).count();
        let published = got.iter().filter(|p| p.contains(r#""round""#)).count();
        events >= want.len() && answered >= acks.len() && published >= acks.len() / 2
    };
    let more = c.poll_until(|p| done(&[got.as_slice(), p].concat())).await;
    got.extend(more);

    let events: Vec<usize> = got
        .iter()
        .filter_map(|p| p.strip_prefix("42"))
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter(|e| e[0] == "n")
        .map(|e| e[1].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(events, want, "every publication once, in order");
    let mut answered = Vec::new();
    for packet in got.iter().filter(|p| p.starts_with("43")) {
        let id: String = packet[2..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let id: u64 = id.parse().unwrap();
        let args: Value = serde_json::from_str(&packet[2 + id.to_string().len()..]).unwrap();
        if id.is_multiple_of(2) {
            assert_eq!(args, json!([null]), "the publish ack: {packet}");
        } else {
            // No rpc handler on these nodes: the handler's refusal, through the ack.
            assert_eq!(args[0]["code"], 108, "{packet}");
        }
        answered.push(id);
    }
    // Each once; the hub may answer a batch's commands in any order.
    answered.sort_unstable();
    assert_eq!(answered, acks, "every ack once");
    // The client's publications reached the channel once each: the socket and the watcher on
    // node B got them.
    let rounds: Vec<u64> = got
        .iter()
        .filter_map(|p| p.strip_prefix("42"))
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter(|e| e[0] == "publication")
        .map(|e| e[2]["round"].as_u64().unwrap())
        .collect();
    assert_eq!(BTreeSet::from_iter(rounds.iter()).len(), 3, "{rounds:?}");
    assert_eq!(rounds.len(), 3, "{rounds:?}");
    let mut seen = Vec::new();
    while seen.len() < 3 + want.len() {
        let m = watcher.next().await.expect("a push");
        if let Some(p) = m.get("pub") {
            seen.push(p["data"].clone());
        }
    }
    let from_client: Vec<&Value> = seen.iter().filter(|d| d.get("round").is_some()).collect();
    assert_eq!(from_client.len(), 3, "{seen:?}");

    // Errors come back as the session's node words them, and end the session as there: a POST
    // that is no Engine.IO payload, through node B.
    assert_eq!(
        c.post(Some(1), "not a packet").await,
        error_reply(400, BAD_REQUEST)
    );
    for at in [0, 1] {
        assert_eq!(c.get(Some(at)).await, error_reply(400, UNKNOWN_SID));
    }
}

/// A held poll (GET) on `addr`, through a raw connection that the caller may drop.
async fn held_poll(addr: SocketAddr, sid: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {PATH}?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

async fn overlapping_polls_and_big_posts_are_refused_as_on_the_sessions_node(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = start_nodes(2, &config(&broker)).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // Both ways: the first poll relayed and the second local, then the first local and the second
    // relayed. The spec: the second is refused (400, "Bad request"), the session closes, and the
    // held one gets the close packet.
    for (first, second) in [(1, 0), (0, 1)] {
        let mut c = Eio::open(addrs.clone(), 0).await;
        c.connect().await;
        let held = {
            let (http, url) = (c.http.clone(), c.target(Some(first)));
            tokio::spawn(async move { reply(http.get(url).send().await.unwrap()).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            c.get(Some(second)).await,
            error_reply(400, BAD_REQUEST),
            "second poll on node {second}"
        );
        assert_eq!(held.await.unwrap(), text_reply("1"), "held on node {first}");
        assert_eq!(c.get(None).await, error_reply(400, UNKNOWN_SID));
    }

    // A POST over maxPayload, read by node B: 413 and the session closes, as on node A.
    let mut c = Eio::open(addrs.clone(), 0).await;
    c.connect().await;
    let big = format!("4{}", "x".repeat(20_000));
    assert_eq!(
        c.post(Some(1), &big).await,
        error_reply(413, r#"{"code":3,"message":"Payload too large"}"#)
    );
    assert_eq!(c.get(Some(0)).await, error_reply(400, UNKNOWN_SID));
}

async fn a_poll_whose_client_goes_away_closes_the_session_as_on_its_node(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = start_nodes(2, &config(&broker)).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // Locally (node A), then relayed (node B): the held poll's connection closes before it is
    // answered, and the session closes (the reference server's rule), rather than hand what it
    // holds to a poll nobody reads.
    for at in [0, 1] {
        let mut c = Eio::open(addrs.clone(), 0).await;
        c.connect().await;
        let stream = held_poll(addrs[at], &c.sid).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Were the session still open, this would be a second poll while one is held: code 3.
        assert_eq!(
            c.get(Some(0)).await,
            error_reply(400, UNKNOWN_SID),
            "poll dropped on node {at}"
        );
    }
}

async fn a_websocket_upgrade_on_another_node_is_refused_and_polling_goes_on(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    let nodes = start_nodes(2, &config(&broker)).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut c = Eio::open(addrs.clone(), 0).await;
    let path = format!("{PATH}?EIO=4&transport=websocket&sid={}", c.sid);
    let (_ws, resp) = handshake(addrs[1], &path, &[]).await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (400, BAD_REQUEST),
        "{resp:?}"
    );
    // The session goes on polling, on both nodes.
    c.connect().await;
    c.send(&[r#"421["subscribe","chat:ws"]"#]).await;
    assert_eq!(c.poll_until(|p| !p.is_empty()).await, ["431[null]"]);
    // On its own node, the upgrade is the usual one.
    let (_ws, resp) = handshake(addrs[0], &path, &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
}

async fn a_sid_of_a_node_that_is_gone_is_session_id_unknown(kind: EngineKind) {
    let broker = broker::Broker::start(kind);
    // Node A is a process of its own, so that it can hang and die like a real one.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    let toml = format!(
        "{}\n[client]\nallow_anonymous = true\n\n[socketio]\nenabled = true\nping_interval = \"2s\"\nping_timeout = \"5s\"\n",
        broker.engine_toml(PREFIX)
    );
    std::fs::write(&file, toml).unwrap();
    assert!(std::path::Path::new(BIN).exists(), "{BIN}");
    let (mut a, a_addr) = common::process::serve(&file);
    let b = start(config(&broker)).await;
    let mut c = Eio::open(vec![a_addr, b.addr], 0).await;
    // Relayed to the process and back.
    c.connect().await;

    // Hung: it still listens on the engine but answers nothing. Node B gives up after
    // relay_timeout (a POST is not held).
    signal(&a, "STOP");
    let started = Instant::now();
    assert_eq!(c.post(Some(1), "3").await, error_reply(400, UNKNOWN_SID));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );

    // Dead: the engine drops its subscription, and node B knows at once.
    a.kill().unwrap();
    a.wait().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let started = Instant::now();
        assert_eq!(c.post(Some(1), "3").await, error_reply(400, UNKNOWN_SID));
        if started.elapsed() < Duration::from_millis(500) {
            break;
        }
        // The engine had not noticed the dead connection yet: that one waited for the timeout.
        assert!(
            Instant::now() < deadline,
            "the engine never noticed the dead node"
        );
    }
    // A poll, which would be held there, is not waited for either; nor a sid naming a node that
    // never was, nor one naming no node.
    let started = Instant::now();
    assert_eq!(c.get(Some(1)).await, error_reply(400, UNKNOWN_SID));
    assert!(started.elapsed() < Duration::from_millis(500));
    let http = reqwest::Client::new();
    for sid in ["0badc0de-AAAAAAAAAAAAAAAAAAAA", "nonode"] {
        let started = Instant::now();
        let url = format!("http://{}{PATH}?EIO=4&transport=polling&sid={sid}", b.addr);
        assert_eq!(
            reply(http.get(url).send().await.unwrap()).await,
            error_reply(400, UNKNOWN_SID),
            "{sid}"
        );
        assert!(started.elapsed() < Duration::from_millis(500), "{sid}");
    }
}

both_engines!(
    polls_and_posts_may_land_on_any_node,
    overlapping_polls_and_big_posts_are_refused_as_on_the_sessions_node,
    a_poll_whose_client_goes_away_closes_the_session_as_on_its_node,
    a_websocket_upgrade_on_another_node_is_refused_and_polling_goes_on,
    a_sid_of_a_node_that_is_gone_is_session_id_unknown,
);
