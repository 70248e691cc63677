//! Several switchboard nodes on one Redis or one NATS (every test but the Redis Cluster's runs for
//! both engines, `both_engines!`): each test starts its own `redis-server` (a free port, no
//! persistence, killed at the end) or `nats-server -js` and servers on 127.0.0.1 with that engine,
//! then checks what a deployment relies on: a publication through any node reaches clients on every
//! node, presence and history are the same everywhere, a client recovers on another node, and when
//! the broker goes away and comes back without its data, clients stay connected, none loses a
//! publication silently, and a client recovering from the lost stream is told so (`recovered:
//! false`, a new epoch). The same holds on a Redis Cluster of three masters (`cluster = true`),
//! channels spread over its shards.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard::config::EngineKind;
use switchboard_engine_redis::testing::RedisCluster;

const KEY: &str = "multinode-key";

fn config(broker: &broker::Broker) -> Config {
    broker.node_config(KEY, "multinode")
}

fn config_for(addresses: Vec<String>, cluster: bool) -> Config {
    let mut c = redis_node_config(KEY, "multinode", addresses);
    c.engine.redis.cluster = cluster;
    c
}

async fn three_nodes(redis: &broker::Broker) -> Vec<TestServer> {
    start_nodes(3, &config(redis)).await
}

async fn api(node: &TestServer, method: &str, body: Value) -> Value {
    api_result(node.api, KEY, method, body).await
}

/// The next reply or push, pushes kept aside by `call` first.
async fn next(c: &mut JsonClient) -> Value {
    c.next_unread().await.expect("connection open")
}

async fn a_publication_through_one_node_reaches_clients_on_every_node(kind: EngineKind) {
    let redis = broker::Broker::start(kind);
    let nodes = three_nodes(&redis).await;
    let mut clients = Vec::new();
    for n in &nodes {
        let mut c = JsonClient::connected(n.addr).await;
        c.ok("subscribe", json!({"channel": "chat:lobby"})).await;
        clients.push(c);
    }
    // Through node B's API, and from a client on node C.
    let r = api(
        &nodes[1],
        "publish",
        json!({"channel": "chat:lobby", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(r["offset"], 1);
    let r = clients[2]
        .ok(
            "publish",
            json!({"channel": "chat:lobby", "data": {"n": 2}}),
        )
        .await;
    assert_eq!(r["offset"], 2);
    for c in &mut clients {
        for n in 1..=2 {
            let p = c.push("pub").await;
            assert_eq!(
                (p["offset"].as_u64(), p["data"]["n"].as_u64()),
                (Some(n), Some(n))
            );
        }
    }
    // Presence and history are the same from every node.
    let ids: BTreeSet<String> = clients.iter().map(|c| c.id.clone()).collect();
    for n in &nodes {
        let p = api(n, "presence", json!({"channel": "chat:lobby"})).await;
        let here: BTreeSet<String> = p["presence"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(here, ids);
    }
    let mut histories = Vec::new();
    for c in &mut clients {
        let s = c
            .ok("presence_stats", json!({"channel": "chat:lobby"}))
            .await;
        assert_eq!(s["num_clients"], 3);
        let h = c.ok("history", json!({"channel": "chat:lobby"})).await;
        assert_eq!(h["publications"].as_array().unwrap().len(), 2);
        histories.push(h);
    }
    assert!(histories.windows(2).all(|w| w[0] == w[1]), "{histories:?}");
    // An idempotency key is honoured whichever node the retry reaches.
    let first = api(
        &nodes[0],
        "publish",
        json!({"channel": "chat:lobby", "data": {"n": 3}, "idempotency_key": "k1"}),
    )
    .await;
    let retry = api(
        &nodes[2],
        "publish",
        json!({"channel": "chat:lobby", "data": {"n": 3}, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(first, retry);
    assert_eq!(clients[1].push("pub").await["offset"], 3);
    for n in &nodes {
        assert_eq!(get_status(n.api, "/health").await, 200);
        assert_eq!(get_status(n.api, "/ready").await, 200);
    }
}

async fn a_client_that_reconnects_to_another_node_recovers_exactly_what_it_missed(
    kind: EngineKind,
) {
    let redis = broker::Broker::start(kind);
    let nodes = three_nodes(&redis).await;
    let mut c = JsonClient::connected(nodes[0].addr).await;
    let sub = c.ok("subscribe", json!({"channel": "chat:move"})).await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for n in 1..=2 {
        api(
            &nodes[2],
            "publish",
            json!({"channel": "chat:move", "data": {"n": n}}),
        )
        .await;
        assert_eq!(c.push("pub").await["offset"], n);
    }
    drop(c);
    for n in 3..=5 {
        api(
            &nodes[2],
            "publish",
            json!({"channel": "chat:move", "data": {"n": n}}),
        )
        .await;
    }
    let mut c = JsonClient::connected(nodes[1].addr).await;
    let r = c
        .ok(
            "subscribe",
            json!({"channel": "chat:move", "recover": true, "epoch": epoch, "offset": 2}),
        )
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let got = publications_at(&r, "/data/n");
    assert_eq!(got, [3, 4, 5]);
    api(
        &nodes[0],
        "publish",
        json!({"channel": "chat:move", "data": {"n": 6}}),
    )
    .await;
    let p = c.push("pub").await;
    assert_eq!(
        (p["offset"].as_u64(), p["data"]["n"].as_u64()),
        (Some(6), Some(6))
    );
    // Nothing doubled: the next thing is the reply to this call, not another publication.
    let h = c
        .ok("history", json!({"channel": "chat:move", "limit": 0}))
        .await;
    assert_eq!(h["offset"], 6);
    assert!(c.pushes.is_empty(), "{:?}", c.pushes);
}

async fn when_redis_restarts_clients_stay_and_every_subscriber_recovers_every_publication(
    kind: EngineKind,
) {
    let mut redis = broker::Broker::start(kind);
    let nodes = three_nodes(&redis).await;
    let mut clients = Vec::new();
    for n in &nodes {
        let mut c = JsonClient::connected(n.addr).await;
        c.ok("subscribe", json!({"channel": "chat:r"})).await;
        clients.push(c);
    }
    let mut positions = Vec::new();
    for n in 1..=2 {
        api(
            &nodes[0],
            "publish",
            json!({"channel": "chat:r", "data": {"n": n}}),
        )
        .await;
    }
    for c in &mut clients {
        let mut last = json!(null);
        for _ in 1..=2 {
            last = c.push("pub").await;
        }
        let h = c
            .ok("history", json!({"channel": "chat:r", "limit": 0}))
            .await;
        assert_eq!(last["offset"], 2);
        positions.push((h["epoch"].as_str().unwrap().to_owned(), 2_u64));
    }

    redis.stop();
    ready_everywhere(&nodes, 503).await;
    for n in &nodes {
        assert_eq!(
            get_status(n.api, "/health").await,
            200,
            "alive while Redis is down"
        );
    }
    let (status, v) = api_call(
        nodes[1].api,
        Some(KEY),
        "publish",
        &json!({"channel": "chat:r", "data": {"n": 0}}).to_string(),
    )
    .await;
    assert!(
        status >= 500,
        "publishing without Redis fails: {status} {v}"
    );

    redis.restart();
    ready_everywhere(&nodes, 200).await;
    let expected: Vec<u64> = (100..110).collect();
    for (i, n) in expected.iter().enumerate() {
        let node = &nodes[i % nodes.len()];
        api(
            node,
            "publish",
            json!({"channel": "chat:r", "data": {"n": n}}),
        )
        .await;
    }
    for n in &nodes {
        // `info` lists every node; this node's own entry is the one named after its port.
        let info = api(n, "info", json!({})).await;
        let port = format!(":{}", n.addr.port());
        let here = info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str().unwrap().ends_with(&port))
            .unwrap_or_else(|| panic!("{info}"));
        assert_eq!(here["num_clients"], 1, "clients stayed connected");
    }
    for (c, (epoch, offset)) in clients.iter_mut().zip(positions) {
        let got = collect_after_return(c, &epoch, offset, expected.len()).await;
        assert_eq!(
            got, expected,
            "every publication after Redis returned, once each"
        );
    }
}

async fn when_the_broker_comes_back_empty_clients_stay_and_learn_the_stream_was_lost(
    kind: EngineKind,
) {
    let mut broker = broker::Broker::start(kind);
    let nodes = start_nodes(2, &config(&broker)).await;
    let mut clients = Vec::new();
    for n in &nodes {
        let mut c = JsonClient::connected(n.addr).await;
        c.ok("subscribe", json!({"channel": "chat:lost"})).await;
        clients.push(c);
    }
    api(
        &nodes[0],
        "publish",
        json!({"channel": "chat:lost", "data": {"n": 1}}),
    )
    .await;
    let mut epoch = String::new();
    for c in &mut clients {
        assert_eq!(c.push("pub").await["offset"], 1);
        let h = c
            .ok("history", json!({"channel": "chat:lost", "limit": 0}))
            .await;
        epoch = h["epoch"].as_str().unwrap().to_owned();
    }

    broker.stop();
    ready_everywhere(&nodes, 503).await;
    assert_eq!(get_status(nodes[0].api, "/health").await, 200);
    broker.restart();
    ready_everywhere(&nodes, 200).await;
    for c in &mut clients {
        let u = c.push("unsubscribe").await;
        assert_eq!(u["code"], 2500, "{u}");
        let r = c
            .ok(
                "subscribe",
                json!({"channel": "chat:lost", "recover": true, "epoch": epoch, "offset": 1}),
            )
            .await;
        assert_eq!(r["recovered"], false, "the stream was lost: {r}");
        assert_ne!(r["epoch"], json!(epoch), "{r}");
    }
    let r = api(
        &nodes[1],
        "publish",
        json!({"channel": "chat:lost", "data": {"n": 2}}),
    )
    .await;
    assert_eq!(r["offset"], 1, "a new stream");
    for c in &mut clients {
        let p = c.push("pub").await;
        assert_eq!(p["data"]["n"], 2);
    }
}

/// What a well-behaved client does: take live publications; on unsubscribe 2500, resubscribe with
/// recovery and, when the stream was lost (a new epoch), read the new stream's history. Returns the
/// `n` of every publication made after Redis returned (`n >= 100`), in arrival order.
async fn collect_after_return(
    c: &mut JsonClient,
    epoch: &str,
    offset: u64,
    want: usize,
) -> Vec<u64> {
    let mut got = Vec::new();
    let keep = |got: &mut Vec<u64>, p: &Value| {
        if let Some(n) = p["data"]["n"].as_u64().filter(|n| *n >= 100) {
            got.push(n);
        }
    };
    let (mut epoch, mut offset) = (epoch.to_owned(), offset);
    while got.len() < want {
        let v = next(c).await;
        if let Some(p) = v.get("pub") {
            keep(&mut got, p);
            offset = p["offset"].as_u64().unwrap_or(offset);
        } else if let Some(u) = v.get("unsubscribe") {
            assert_eq!(u["code"], 2500, "{v}");
            let r = c
                .ok(
                    "subscribe",
                    json!({"channel": "chat:r", "recover": true, "epoch": epoch, "offset": offset}),
                )
                .await;
            let pubs = if r["recovered"] == true {
                r["publications"].clone()
            } else {
                // A new stream: what it holds so far is in its history; what follows comes live.
                let h = c
                    .ok(
                        "history",
                        json!({"channel": "chat:r", "since": {"epoch": r["epoch"], "offset": 0}}),
                    )
                    .await;
                let until = r["offset"].as_u64().unwrap_or(0);
                Value::Array(
                    h["publications"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|p| p["offset"].as_u64().unwrap_or(0) <= until)
                        .cloned()
                        .collect(),
                )
            };
            for p in pubs.as_array().unwrap() {
                keep(&mut got, p);
            }
            epoch = r["epoch"].as_str().unwrap().to_owned();
            offset = r["offset"].as_u64().unwrap();
        }
    }
    got
}

#[tokio::test]
async fn on_a_redis_cluster_publications_reach_every_node_and_clients_recover_on_another() {
    let cluster = RedisCluster::start();
    let mut nodes = Vec::new();
    for i in 0..3 {
        // Each node knows one seed only; it discovers the rest of the cluster.
        let seed = cluster.urls()[i].clone();
        nodes.push(start(config_for(vec![seed], true)).await);
    }
    // Channels whose slots are served by every master (asked of the cluster, not of the engine).
    let channels: Vec<String> = (0..9).map(|i| format!("chat:c{i}")).collect();
    let owners: BTreeSet<usize> = channels
        .iter()
        .map(|c| cluster.owner_of(&format!("multinode.pub.{{{c}}}")))
        .collect();
    assert_eq!(owners.len(), 3, "channels on every master");
    let mut clients = Vec::new();
    for n in &nodes {
        let mut c = JsonClient::connected(n.addr).await;
        for ch in &channels {
            c.ok("subscribe", json!({"channel": ch})).await;
        }
        clients.push(c);
    }
    // Through node B's API, then from a client on node C: everyone receives both, in order.
    for ch in &channels {
        let r = api(
            &nodes[1],
            "publish",
            json!({"channel": ch, "data": {"n": 1}}),
        )
        .await;
        assert_eq!(r["offset"], 1);
        let r = clients[2]
            .ok("publish", json!({"channel": ch, "data": {"n": 2}}))
            .await;
        assert_eq!(r["offset"], 2);
    }
    for c in &mut clients {
        let mut got: Vec<(String, u64, u64)> = Vec::new();
        for _ in 0..channels.len() * 2 {
            let p = c.push("pub").await;
            got.push((
                p["channel"].as_str().unwrap().to_owned(),
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            ));
        }
        for ch in &channels {
            let mine: Vec<(u64, u64)> = got
                .iter()
                .filter(|(c, _, _)| c == ch)
                .map(|(_, o, n)| (*o, *n))
                .collect();
            assert_eq!(mine, [(1, 1), (2, 2)], "{ch}");
        }
    }
    // Presence, history and idempotency keys are the same from every node.
    let ids: BTreeSet<String> = clients.iter().map(|c| c.id.clone()).collect();
    for ch in &channels {
        for n in &nodes {
            let p = api(n, "presence", json!({"channel": ch})).await;
            let here: BTreeSet<String> =
                p["presence"].as_object().unwrap().keys().cloned().collect();
            assert_eq!(here, ids, "{ch}");
            let h = api(n, "history", json!({"channel": ch})).await;
            assert_eq!(h["publications"].as_array().unwrap().len(), 2, "{ch}");
        }
        let publish = json!({"channel": ch, "data": {"n": 3}, "idempotency_key": "k1"});
        let first = api(&nodes[0], "publish", publish.clone()).await;
        let retry = api(&nodes[2], "publish", publish).await;
        assert_eq!(first, retry, "{ch}");
    }
    for c in &mut clients {
        for _ in &channels {
            assert_eq!(c.push("pub").await["offset"], 3);
        }
    }

    // A client of node A leaves, misses publications made through node C, and recovers exactly
    // those on node B, on every shard.
    let mut positions = Vec::new();
    for ch in &channels {
        let h = clients[0]
            .ok("history", json!({"channel": ch, "limit": 0}))
            .await;
        assert_eq!(h["offset"], 3);
        positions.push(h["epoch"].as_str().unwrap().to_owned());
    }
    let gone = clients.remove(0);
    drop(gone);
    for ch in &channels {
        for n in 4..=5 {
            api(
                &nodes[2],
                "publish",
                json!({"channel": ch, "data": {"n": n}}),
            )
            .await;
        }
    }
    let mut c = JsonClient::connected(nodes[1].addr).await;
    for (ch, epoch) in channels.iter().zip(&positions) {
        let r = c
            .ok(
                "subscribe",
                json!({"channel": ch, "recover": true, "epoch": epoch, "offset": 3}),
            )
            .await;
        assert_eq!(r["recovered"], true, "{ch}: {r}");
        let got = publications_at(&r, "/data/n");
        assert_eq!(got, [4, 5], "{ch}");
    }
    // And live from then on, published through node A.
    api(
        &nodes[0],
        "publish",
        json!({"channel": channels[0], "data": {"n": 6}}),
    )
    .await;
    let p = c.push("pub").await;
    assert_eq!(
        (p["channel"].as_str(), p["offset"].as_u64()),
        (Some(channels[0].as_str()), Some(6))
    );
    for n in &nodes {
        assert_eq!(get_status(n.api, "/ready").await, 200);
    }
}

both_engines!(
    a_publication_through_one_node_reaches_clients_on_every_node,
    a_client_that_reconnects_to_another_node_recovers_exactly_what_it_missed,
    when_redis_restarts_clients_stay_and_every_subscriber_recovers_every_publication,
    when_the_broker_comes_back_empty_clients_stay_and_learn_the_stream_was_lost,
);
