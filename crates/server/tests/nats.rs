//! Two switchboard nodes on one NATS (`[engine] type = "nats"`): each test starts its own
//! `nats-server -js` (a free port, a temporary store, killed at the end) and two servers on
//! 127.0.0.1, a WebSocket client on each. A publication through either node's API reaches both
//! clients, history, presence and idempotency keys are the same everywhere; when NATS comes back
//! without its streams, clients stay, are told to recover (2500), and learn that the stream was
//! lost (`recovered: false`) instead of missing publications silently.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard::config::EngineKind;
use switchboard_engine_nats::testing::NatsServer;

const KEY: &str = "nats-key";

fn config(nats: &NatsServer) -> Config {
    let mut c = Config::default();
    c.api.key = KEY.into();
    c.engine.kind = EngineKind::Nats;
    c.engine.nats.servers = vec![nats.url()];
    c.engine.nats.prefix = "servertest".into();
    c.engine.nats.connect_timeout = Duration::from_secs(2);
    c.engine.nats.command_timeout = Duration::from_secs(2);
    c.channels
        .namespaces
        .insert("chat".into(), chat_namespace());
    c
}

async fn two_nodes(nats: &NatsServer) -> Vec<TestServer> {
    vec![start(config(nats)).await, start(config(nats)).await]
}

async fn api(node: &TestServer, method: &str, body: Value) -> Value {
    let (status, v) = api_call(node.api, Some(KEY), method, &body.to_string()).await;
    assert_eq!(status, 200, "{method}: {v}");
    v["result"].clone()
}

/// The status of `GET path` on the API listener.
async fn get_status(api: SocketAddr, path: &str) -> u16 {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    request(api, &raw).await.1.status
}

/// Waits until every node's `/ready` answers `status`.
async fn ready_everywhere(nodes: &[TestServer], status: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for n in nodes {
        while get_status(n.api, "/ready").await != status {
            assert!(
                tokio::time::Instant::now() < deadline,
                "/ready never answered {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_publication_through_the_api_reaches_clients_on_both_nats_nodes() {
    let nats = NatsServer::start();
    let nodes = two_nodes(&nats).await;
    let mut clients = Vec::new();
    for n in &nodes {
        let mut c = JsonClient::connected(n.addr).await;
        c.ok("subscribe", json!({"channel": "chat:lobby"})).await;
        clients.push(c);
    }
    // Through node A's API, then through node B's.
    for (n, node) in [(1, &nodes[0]), (2, &nodes[1])] {
        let r = api(
            node,
            "publish",
            json!({"channel": "chat:lobby", "data": {"n": n}}),
        )
        .await;
        assert_eq!(r["offset"], n);
    }
    for c in &mut clients {
        for n in 1..=2 {
            let p = c.push("pub").await;
            assert_eq!(
                (p["offset"].as_u64(), p["data"]["n"].as_u64()),
                (Some(n), Some(n))
            );
        }
    }
    // Presence and history are the same from both nodes.
    let ids: BTreeSet<String> = clients.iter().map(|c| c.id.clone()).collect();
    for n in &nodes {
        let p = api(n, "presence", json!({"channel": "chat:lobby"})).await;
        let here: BTreeSet<String> = p["presence"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(here, ids);
    }
    let mut histories = Vec::new();
    for c in &mut clients {
        let h = c.ok("history", json!({"channel": "chat:lobby"})).await;
        assert_eq!(h["publications"].as_array().unwrap().len(), 2);
        histories.push(h);
    }
    assert_eq!(histories[0], histories[1]);
    // An idempotency key is honoured whichever node the retry reaches.
    let body = json!({"channel": "chat:lobby", "data": {"n": 3}, "idempotency_key": "k1"});
    let first = api(&nodes[0], "publish", body.clone()).await;
    let retry = api(&nodes[1], "publish", body).await;
    assert_eq!(first, retry);
    for c in &mut clients {
        assert_eq!(c.push("pub").await["offset"], 3);
    }
    let h = clients[0]
        .ok("history", json!({"channel": "chat:lobby", "limit": 0}))
        .await;
    assert_eq!(h["offset"], 3, "the retry published nothing");
    // The cluster-wide API reaches the other node's client through NATS.
    let info = api(&nodes[1], "info", json!({})).await;
    assert_eq!(info["nodes"].as_array().unwrap().len(), 2, "{info}");
    for n in &nodes {
        assert_eq!(get_status(n.api, "/ready").await, 200);
    }
}

#[tokio::test]
async fn when_nats_comes_back_without_its_streams_clients_stay_and_learn_the_stream_was_lost() {
    let mut nats = NatsServer::start();
    let nodes = two_nodes(&nats).await;
    let mut clients = Vec::new();
    for n in &nodes {
        let mut c = JsonClient::connected(n.addr).await;
        c.ok("subscribe", json!({"channel": "chat:r"})).await;
        clients.push(c);
    }
    api(
        &nodes[0],
        "publish",
        json!({"channel": "chat:r", "data": {"n": 1}}),
    )
    .await;
    let mut epoch = String::new();
    for c in &mut clients {
        assert_eq!(c.push("pub").await["offset"], 1);
        let h = c
            .ok("history", json!({"channel": "chat:r", "limit": 0}))
            .await;
        epoch = h["epoch"].as_str().unwrap().to_owned();
    }

    nats.kill();
    ready_everywhere(&nodes, 503).await;
    assert_eq!(get_status(nodes[0].api, "/health").await, 200);
    nats.restart_empty();
    ready_everywhere(&nodes, 200).await;
    for c in &mut clients {
        let u = c.push("unsubscribe").await;
        assert_eq!(u["code"], 2500, "{u}");
        let r = c
            .ok(
                "subscribe",
                json!({"channel": "chat:r", "recover": true, "epoch": epoch, "offset": 1}),
            )
            .await;
        assert_eq!(r["recovered"], false, "the stream was lost: {r}");
        assert_ne!(r["epoch"], json!(epoch), "{r}");
    }
    let r = api(
        &nodes[1],
        "publish",
        json!({"channel": "chat:r", "data": {"n": 2}}),
    )
    .await;
    assert_eq!(r["offset"], 1, "a new stream");
    for c in &mut clients {
        let p = c.push("pub").await;
        assert_eq!(p["data"]["n"], 2);
    }
}
