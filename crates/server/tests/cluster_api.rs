//! The server API acts on the whole cluster: three nodes on one Redis or NATS (started by each test;
//! the first two tests run for both engines), and
//! every call made to a node other than the one holding the client or user it names. Orders reach
//! the clients wherever they are and count them all; `channels` merges every node's; `info` lists
//! every live node and drops one that stops (at once when it stops gracefully, after three missed
//! announcements when it is killed); a node that does not answer in time is counted, not waited for.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchboard::Config;
use switchboard::config::EngineKind;
use switchboard_engine_redis::testing::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "cluster-key";
const SECRET: &str = "cluster-test-secret-long-enough";
const PREFIX: &str = "clusterapi";

fn config(broker: &Broker, announce_interval: Duration) -> Config {
    let mut c = broker.node_config(KEY, PREFIX);
    c.auth.hmac_secret = Some(SECRET.into());
    c.engine.announce_interval = announce_interval;
    c.engine.control_timeout = Duration::from_secs(3);
    c
}

fn token(user: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "exp": switchboard_auth::now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn user_on(node: &TestServer, user: &str) -> JsonClient {
    user_at(node.addr, user).await
}

async fn user_at(addr: std::net::SocketAddr, user: &str) -> JsonClient {
    JsonClient::connect_with(addr, json!({"token": token(user)})).await
}

async fn api(node: &TestServer, method: &str, body: Value) -> Value {
    api_result(node.api, KEY, method, body).await
}

/// A client order's result: clients acted on, nodes that answered, nodes that did not.
fn counts(r: &Value) -> (u64, u64, u64) {
    (
        r["clients"].as_u64().unwrap(),
        r["nodes"].as_u64().unwrap(),
        r["unanswered"].as_u64().unwrap(),
    )
}

/// `channels` of `pattern` asked of `node`: channel to subscribers.
async fn channels(node: &TestServer, pattern: &str) -> Vec<(String, u64)> {
    let r = api(node, "channels", json!({ "pattern": pattern })).await;
    assert_eq!(
        (r["nodes"].as_u64(), r["unanswered"].as_u64()),
        (Some(3), Some(0)),
        "{r}"
    );
    r["channels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["num_clients"].as_u64().unwrap()))
        .collect()
}

/// Waits until `node`'s `info` satisfies `f`; the last `nodes` list.
async fn info_until(node: &TestServer, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = api(node, "info", json!({})).await;
        let nodes = info["nodes"].as_array().unwrap().clone();
        if f(&nodes) {
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "info never showed {what}: {nodes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `info` entry of the node listening for clients on `port`.
fn entry(nodes: &[Value], port: u16) -> Option<&Value> {
    nodes
        .iter()
        .find(|n| n["name"].as_str().unwrap().ends_with(&format!(":{port}")))
}

async fn orders_given_to_any_node_reach_the_clients_on_every_node(kind: EngineKind) {
    let redis = Broker::start(kind);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start(config(&redis, Duration::from_secs(1))).await);
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // alice on A and C, bob on B.
    let mut alice_a = user_on(a, "alice").await;
    let mut alice_c = user_on(c, "alice").await;
    let mut bob = user_on(b, "bob").await;

    // subscribe through B: alice is not there, both her connections are subscribed.
    let r = api(
        b,
        "subscribe",
        json!({"user": "alice", "channel": "chat:x"}),
    )
    .await;
    assert_eq!(counts(&r), (2, 3, 0), "{r}");
    for alice in [&mut alice_a, &mut alice_c] {
        let s = alice.push("subscribe").await;
        assert_eq!(s["channel"], "chat:x", "{s}");
    }
    let r = api(c, "subscribe", json!({"user": "bob", "channel": "chat:x"})).await;
    assert_eq!(counts(&r), (1, 3, 0));
    assert_eq!(bob.push("subscribe").await["channel"], "chat:x");
    api(a, "publish", json!({"channel": "chat:x", "data": {"n": 1}})).await;
    for client in [&mut alice_a, &mut alice_c, &mut bob] {
        assert_eq!(client.push("pub").await["data"]["n"], 1);
    }

    // channels, asked of any node, counts every node's subscribers; the pattern still filters.
    assert_eq!(channels(a, "chat:*").await, [("chat:x".to_owned(), 3)]);
    assert!(channels(b, "other:*").await.is_empty());

    // unsubscribe through C one connection of alice's, held by A.
    let r = api(
        c,
        "unsubscribe",
        json!({"user": "alice", "client": alice_a.id, "channel": "chat:x"}),
    )
    .await;
    assert_eq!(counts(&r), (1, 3, 0));
    let u = alice_a.push("unsubscribe").await;
    assert_eq!(
        (u["channel"].as_str(), u["code"].as_u64()),
        (Some("chat:x"), Some(2000))
    );
    assert_eq!(channels(b, "chat:*").await, [("chat:x".to_owned(), 2)]);

    // refresh through A bob's connection on B: expired now, so B disconnects it with 3005.
    let r = api(a, "refresh", json!({"user": "bob", "expired": true})).await;
    assert_eq!(counts(&r), (1, 3, 0));
    assert_eq!(bob.disconnected().await.0, Some(3005));
    // A refresh to a later expiry keeps the connection.
    let r = api(
        b,
        "refresh",
        json!({"user": "alice", "client": alice_c.id, "expire_at": switchboard_auth::now() + 3600}),
    )
    .await;
    assert_eq!(counts(&r), (1, 3, 0));

    // disconnect through B every connection of alice's (on A and C), with a code.
    let r = api(b, "disconnect", json!({"user": "alice", "code": 3000})).await;
    assert_eq!(counts(&r), (2, 3, 0));
    for alice in [&mut alice_a, &mut alice_c] {
        assert_eq!(alice.disconnected().await.0, Some(3000));
    }
    // A user connected nowhere: every node answers, none acts.
    let r = api(c, "disconnect", json!({"user": "carol"})).await;
    assert_eq!(counts(&r), (0, 3, 0));
    // A batch runs the same cluster-wide methods.
    let r = api(
        a,
        "batch",
        json!({"commands": [{"disconnect": {"user": "nobody"}}, {"channels": {}}]}),
    )
    .await;
    assert_eq!(counts(&r["replies"][0]["result"]), (0, 3, 0), "{r}");
    assert_eq!(r["replies"][1]["result"]["nodes"], 3, "{r}");
}

/// What a backend does when it adds a user to a room and greets the room: `subscribe`, then
/// `publish` as soon as the answer comes, each through a node the user is not on. The answer comes
/// once the user's connections are in the channel, so every greeting arrives (it raced the
/// connection's own task before, and lost now and then under load).
async fn a_publish_right_after_the_subscribe_answer_reaches_the_user(kind: EngineKind) {
    let broker = Broker::start(kind);
    let a = start(config(&broker, Duration::from_secs(1))).await;
    let b = start(config(&broker, Duration::from_secs(1))).await;
    // B expects the nodes it knows of to answer: A first has to announce itself.
    info_until(&b, "both nodes", |nodes| nodes.len() == 2).await;
    let mut dana = user_on(&a, "dana").await;
    const ROOMS: u64 = 40;
    for n in 0..ROOMS {
        let channel = format!("chat:room{n}");
        let r = api(&b, "subscribe", json!({"user": "dana", "channel": channel})).await;
        assert_eq!(counts(&r), (1, 2, 0), "{r}");
        api(&b, "publish", json!({"channel": channel, "data": {"n": n}})).await;
    }
    let mut greeted = Vec::new();
    while greeted.len() < ROOMS as usize {
        let p = dana.push("pub").await;
        greeted.push(p["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(greeted, (0..ROOMS).collect::<Vec<_>>());
    // And the other way round: what is published after the `unsubscribe` answer never arrives.
    for n in 0..10 {
        let channel = format!("chat:room{n}");
        let r = api(
            &b,
            "unsubscribe",
            json!({"user": "dana", "channel": channel}),
        )
        .await;
        assert_eq!(counts(&r), (1, 2, 0), "{r}");
        api(
            &b,
            "publish",
            json!({"channel": channel, "data": {"bye": n}}),
        )
        .await;
    }
    let last = ROOMS - 1;
    api(
        &b,
        "publish",
        json!({"channel": format!("chat:room{last}"), "data": {"end": true}}),
    )
    .await;
    loop {
        let p = dana.push("pub").await;
        assert!(
            p["data"].get("bye").is_none(),
            "after its unsubscribe answer: {p}"
        );
        if p["data"]["end"] == true {
            break;
        }
    }
}

async fn info_lists_every_live_node_and_forgets_the_ones_that_stop(kind: EngineKind) {
    let redis = Broker::start(kind);
    let interval = Duration::from_secs(1);
    let a = start(config(&redis, interval)).await;
    let b = start(config(&redis, interval)).await;
    // The third node is a process of its own, so that it can be killed without a goodbye.
    let mut env = redis.engine_env(PREFIX);
    env.extend([
        ("SWITCHBOARD_ENGINE__ANNOUNCE_INTERVAL", "1s".to_owned()),
        ("SWITCHBOARD_AUTH__HMAC_SECRET", SECRET.to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut child, c_addr) = process::spawn(&["--listen", "127.0.0.1:0"], &env);
    let ports = [a.addr.port(), b.addr.port(), c_addr.port()];

    // Every node learns of the others (a newcomer is answered at once, not at the next interval).
    for node in [&a, &b] {
        let nodes = info_until(node, "three nodes", |n| n.len() == 3).await;
        for port in ports {
            let e = entry(&nodes, port).unwrap_or_else(|| panic!("{port}: {nodes:#?}"));
            assert_eq!(e["version"], env!("CARGO_PKG_VERSION"));
            assert!(e["uptime"].is_u64() && e["num_users"].is_u64(), "{e}");
        }
        let ids: BTreeSet<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 3, "{nodes:#?}");
    }

    // The counts of another node, as it announces them.
    let mut alice = user_at(c_addr, "alice").await;
    alice.ok("subscribe", json!({"channel": "one"})).await;
    alice.ok("subscribe", json!({"channel": "two"})).await;
    let nodes = info_until(&a, "the client on C", |n| {
        entry(n, c_addr.port()).is_some_and(|e| e["num_clients"] == 1)
    })
    .await;
    let e = entry(&nodes, c_addr.port()).unwrap();
    assert_eq!(
        (&e["num_users"], &e["num_channels"], &e["num_subscriptions"]),
        (&json!(1), &json!(2), &json!(2)),
        "{e}"
    );

    // B stops gracefully: it says goodbye, and is gone well before three missed announcements.
    b.handle.shutdown();
    let stopped = Instant::now();
    b.task.await.unwrap();
    let nodes = info_until(&a, "two nodes", |n| n.len() == 2).await;
    assert!(
        stopped.elapsed() < interval * 2,
        "gone after {:?}, not at its goodbye",
        stopped.elapsed()
    );
    assert!(entry(&nodes, b.addr.port()).is_none());
    let r = api(&a, "disconnect", json!({"user": "nobody"})).await;
    assert_eq!(counts(&r), (0, 2, 0), "only live nodes are asked");

    // C is killed: no goodbye, gone once it missed three announcements.
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let nodes = info_until(&a, "one node", |n| n.len() == 1).await;
    assert!(entry(&nodes, a.addr.port()).is_some());
    assert!(
        killed.elapsed() <= interval * 4 + Duration::from_secs(1),
        "{:?}",
        killed.elapsed()
    );
    drop(alice);
}

/// Redis only: a silent listener is counted because Redis counts a message's receivers; core NATS
/// does not (the reach is unknown there, and nodes rely on each other's announcements).
#[tokio::test]
async fn a_node_that_does_not_answer_in_time_is_counted_not_waited_for() {
    let redis = Broker::Redis(RedisServer::start());
    let Broker::Redis(server) = &redis else {
        unreachable!()
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut c = config(&redis, Duration::from_secs(1));
        c.engine.control_timeout = Duration::from_millis(300);
        nodes.push(start(c).await);
    }
    let mut alice = user_on(&nodes[0], "alice").await;
    // Something that listens on the control channel like a node but never answers (a node that
    // hangs, or an operator's redis-cli SUBSCRIBE).
    let mut silent = tokio::net::TcpStream::connect(server.url().trim_start_matches("redis://"))
        .await
        .unwrap();
    let channel = format!("{PREFIX}.control");
    let subscribe = format!(
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
        channel.len()
    );
    silent.write_all(subscribe.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = silent.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("subscribe"),
        "SUBSCRIBE confirmed"
    );

    let started = Instant::now();
    let r = api(&nodes[2], "disconnect", json!({"user": "alice"})).await;
    let took = started.elapsed();
    assert_eq!(counts(&r), (1, 3, 1), "{r}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        alice.disconnected().await.0,
        Some(3503),
        "acted all the same"
    );
    let (status, v) = api_call(nodes[1].api, Some(KEY), "channels", "{}").await;
    assert_eq!(
        (status, &v["result"]["unanswered"]),
        (200, &json!(1)),
        "{v}"
    );
}

both_engines!(
    orders_given_to_any_node_reach_the_clients_on_every_node,
    a_publish_right_after_the_subscribe_answer_reaches_the_user,
    info_lists_every_live_node_and_forgets_the_ones_that_stop,
);
