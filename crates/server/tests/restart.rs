//! Graceful restarts: a stopping server tells each client to come back after a random delay (the
//! `disconnect` push's `delay`, within `[shutdown] reconnect_spread`), closes with 1001, and drains;
//! the clients of the restarted server come back by themselves and recover every publication made
//! meanwhile, exactly once and in order. History lives in Redis, so it outlives the process.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::config::EngineKind;
use switchboard::{Config, Server};
use switchboard_client::{Client, Data, Event, Recovery};
use switchboard_engine_redis::testing::RedisServer;
use switchboard_hub::NamespaceOptions;

const KEY: &str = "restart-key";

fn config(redis: &RedisServer) -> Config {
    let mut c = Config::default();
    c.api.key = KEY.into();
    c.engine.kind = EngineKind::Redis;
    c.engine.redis.addresses = vec![redis.url()];
    c.engine.redis.prefix = "restart".into();
    c.shutdown.reconnect_spread = Duration::from_millis(800);
    c.shutdown.drain_timeout = Duration::from_secs(3);
    c.channels.namespaces.insert(
        "chat".into(),
        NamespaceOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            recover: true,
            allow_publish: true,
            ..Default::default()
        },
    );
    c
}

/// A server on a fixed client port (so clients find it again after the restart).
async fn start_on(mut config: Config, port: u16) -> TestServer {
    config.listen.0 = format!("127.0.0.1:{port}").parse().unwrap();
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(config).await.expect("bind");
    TestServer {
        addr: server.local_addr(),
        api: server.api_addr(),
        handle: server.shutdown_handle(),
        task: tokio::spawn(server.run()),
    }
}

async fn publish(node: &TestServer, n: u64) {
    let body = json!({"channel": "chat:room", "data": n}).to_string();
    let (status, v) = api_call(node.api, Some(KEY), "publish", &body).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn clients_of_a_restarted_server_come_back_and_recover_without_loss() {
    let redis = RedisServer::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let first = start_on(config(&redis), port).await;
    let client = Client::builder(format!("ws://127.0.0.1:{port}/connection/websocket"))
        .backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .unwrap();
    client.connect().await.unwrap();
    let mut sub = client.subscribe("chat:room").await.unwrap();
    assert!(matches!(sub.recv().await, Some(Event::Subscribed(_))));
    for n in 1..=5 {
        publish(&first, n).await;
    }
    // A raw client sees exactly what the stop says.
    let mut raw = JsonClient::connected(first.addr).await;

    first.handle.shutdown();
    let mut push = None;
    while let Some(v) = raw.next().await {
        if let Some(d) = v.get("disconnect") {
            push = Some(d.clone());
        }
        if v.get("close").is_some() {
            assert_eq!(v["close"], 1001);
            break;
        }
    }
    let push = push.expect("a disconnect push before the close");
    assert_eq!(
        (push["code"].as_u64(), push["reconnect"].as_bool()),
        (Some(3001), Some(true))
    );
    let delay = push["delay"].as_u64().expect("a reconnect delay");
    assert!(delay <= 800, "within reconnect_spread: {delay}");
    tokio::time::timeout(Duration::from_secs(5), first.task)
        .await
        .expect("drained within the deadline")
        .unwrap();

    // While it is down, another node of the cluster publishes.
    let other = start(config(&redis)).await;
    for n in 6..=10 {
        publish(&other, n).await;
    }
    // The server comes back on the same address; the client returns by itself and recovers.
    let second = start_on(config(&redis), port).await;
    let mut got = Vec::new();
    let mut recovered = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < 13 {
        let event = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("every publication in time")
            .expect("the subscription stays");
        match event {
            Event::Publication(p) => {
                let Data::Json(v) = p.data else {
                    panic!("binary")
                };
                got.push(v.as_u64().unwrap());
                if got.len() == 10 {
                    for n in 11..=13 {
                        publish(&second, n).await;
                    }
                }
            }
            Event::Subscribed(s) => {
                assert_eq!(s.recovery, Recovery::Recovered, "nothing is lost");
                recovered = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(recovered, "the client resubscribed with recovery");
    assert_eq!(got, (1..=13).collect::<Vec<_>>(), "exactly once, in order");
    client.close().await;
}
