//! Faults of Redis, told truthfully: nodes with the Redis engine, each test with `redis-server`s of
//! its own that it pauses (SIGSTOP), kills and restarts, checking that `/ready`, `/health` and
//! `/metrics` say what is true, that requests relayed between nodes are never answered 404 for a
//! session that may be alive, and that a relayed SSE stream lives through an outage. Every Redis is
//! resumed and killed when its test ends, whatever happened.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard_engine_redis::shard_of;
use switchboard_engine_redis::testing::RedisServer;

const KEY: &str = "redis-faults-key";
const PATH: &str = "/connection/http";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

fn config(servers: &[&RedisServer]) -> Config {
    let addresses = servers.iter().map(|s| s.url()).collect();
    let mut c = redis_node_config(KEY, "faults", addresses);
    c.engine.redis.command_timeout = COMMAND_TIMEOUT;
    c.fallback.poll_timeout = Duration::from_secs(2);
    c.fallback.sse_ping_interval = Duration::from_secs(1);
    c.fallback.relay_timeout = Duration::from_secs(1);
    c
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// `GET path` on the API listener: the status and the JSON body.
async fn get(api: SocketAddr, path: &str) -> (u16, Value) {
    let resp = http()
        .get(format!("http://{api}{path}"))
        .send()
        .await
        .unwrap();
    let (status, v) = answer(resp).await;
    (status.as_u16(), v)
}

async fn metrics(api: SocketAddr) -> String {
    http()
        .get(format!("http://{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// How long until every node's `/ready` answered `status` (each timed from now); fails after
/// `limit`.
async fn until_ready_is(nodes: &[&TestServer], status: u16, limit: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let mut took = vec![None; nodes.len()];
    while took.iter().any(Option::is_none) {
        for (i, n) in nodes.iter().enumerate() {
            if took[i].is_none() && get(n.api, "/ready").await.0 == status {
                took[i] = Some(started.elapsed());
            }
        }
        assert!(
            started.elapsed() < limit,
            "/ready not {status} everywhere within {limit:?}: {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_idle_nodes_are_unready_within_the_command_timeout_of_a_pause_and_ready_after() {
    let mut redis = RedisServer::start();
    let busy = start(config(&[&redis])).await;
    let idle = start(config(&[&redis])).await;
    let mut c = JsonClient::connected(busy.addr).await;
    c.ok("subscribe", json!({"channel": "chat:busy"})).await;
    until_ready_is(&[&busy, &idle], 200, WAIT).await;
    let (status, health) = get(idle.api, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["ready"], true, "{health}");
    assert_eq!(
        health["engine"]["shards"][0]["shard"],
        redis.addr().to_string()
    );
    assert_eq!(health["engine"]["shards"][0]["ready"], true, "{health}");

    // The busy node publishes all along; the idle one does nothing.
    let api = busy.api;
    let publisher = tokio::spawn(async move {
        loop {
            let body = json!({"channel": "chat:busy", "data": 1}).to_string();
            let _ = api_call(api, Some(KEY), "publish", &body).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    redis.pause();
    let down = until_ready_is(&[&busy, &idle], 503, COMMAND_TIMEOUT * 4).await;
    let (status, health) = get(idle.api, "/health").await;
    assert_eq!(status, 200, "alive all the same");
    assert_eq!(health["ready"], false, "{health}");
    assert_eq!(health["engine"]["shards"][0]["ready"], false, "{health}");
    let text = metrics(idle.api).await;
    let line = format!(
        "switchboard_engine_shard_ready{{shard=\"{}\"}} 0",
        redis.addr()
    );
    assert!(text.contains(&line), "{line} in:\n{text}");
    assert!(text.contains("switchboard_engine_ready 0"), "{text}");
    let (_, ready) = get(idle.api, "/ready").await;
    assert_eq!(ready["status"], "engine unavailable");
    assert_eq!(ready["shards"][0]["ready"], false, "{ready}");
    // Longer than the command timeout: connections are given up and reconnected meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in [&busy, &idle] {
        assert_eq!(get(n.api, "/ready").await.0, 503, "still paused");
    }

    redis.resume();
    let up = until_ready_is(&[&busy, &idle], 200, Duration::from_secs(5)).await;
    publisher.abort();
    eprintln!("503 after {down:?} of pause (busy, idle); 200 after {up:?} of resuming");
    for t in &up {
        assert!(
            *t <= Duration::from_secs(2),
            "ready {t:?} after Redis answered again"
        );
    }
    let text = metrics(idle.api).await;
    let line = format!(
        "switchboard_engine_shard_ready{{shard=\"{}\"}} 1",
        redis.addr()
    );
    assert!(text.contains(&line), "{line} in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_two_shards_down_nodes_stay_ready_and_the_other_shards_channels_work() {
    let a = RedisServer::start();
    let mut b = RedisServer::start();
    let node = start(config(&[&a, &b])).await;
    let on = |shard: usize| {
        (0..)
            .map(|i| format!("chat:s{i}"))
            .find(|c| shard_of(c, 2) == shard)
            .unwrap()
    };
    let (up, down) = (on(0), on(1));
    assert_eq!(publish(node.api, &down).await.0, 200);

    b.stop();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, health) = get(node.api, "/health").await;
        if health["engine"]["shards"][1]["ready"] == false {
            assert_eq!(health["engine"]["shards"][0]["ready"], true, "{health}");
            assert_eq!(health["ready"], true, "{health}");
            break;
        }
        assert!(Instant::now() < deadline, "shard 1 never reported down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, ready) = get(node.api, "/ready").await;
    assert_eq!(status, 200, "ready while one shard answers: {ready}");
    assert_eq!(ready["shards"][1]["shard"], b.addr().to_string());
    assert_eq!(ready["shards"][1]["ready"], false);
    let text = metrics(node.api).await;
    for (addr, v) in [(a.addr(), 1), (b.addr(), 0)] {
        let line = format!("switchboard_engine_shard_ready{{shard=\"{addr}\"}} {v}");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
    let (status, v) = publish(node.api, &up).await;
    assert_eq!(status, 200, "the other shard's channels work: {v}");
    let (status, v) = publish(node.api, &down).await;
    assert_eq!(status, 503, "this shard's channels fail, temporarily: {v}");

    b.restart();
    let deadline = Instant::now() + WAIT;
    while get(node.api, "/health").await.1["engine"]["shards"][1]["ready"] != true {
        assert!(Instant::now() < deadline, "shard 1 never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(publish(node.api, &down).await.0, 200);
    drop(a);
    b.stop();
    until_ready_is(&[&node], 503, WAIT).await;
}

/// Publishes `1` to `channel` through the API at `api`: the status and answer.
async fn publish(api: SocketAddr, channel: &str) -> (u16, Value) {
    let body = json!({"channel": channel, "data": 1}).to_string();
    api_call(api, Some(KEY), "publish", &body).await
}

/// A response's JSON body.
async fn json(resp: reqwest::Response) -> Value {
    answer(resp).await.1
}

/// The next chunk of an event stream as text (empty after 5 s without one); `None` when it ended.
async fn read(resp: &mut reqwest::Response) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
        Ok(Ok(Some(chunk))) => Some(String::from_utf8(chunk.to_vec()).unwrap()),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => panic!("stream broke: {e}"),
        Err(_) => Some(String::new()),
    }
}

/// Opens a fallback session on `addr`; its token.
async fn open_session(addr: SocketAddr) -> String {
    let resp = http()
        .post(format!("http://{addr}{PATH}?transport=long-poll"))
        .body(r#"{"id":1,"connect":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = json(resp).await;
    v["session"].as_str().unwrap().to_owned()
}

/// `POST send` of one command to `addr`.
async fn send(addr: SocketAddr, session: &str, n: u64, command: Value) {
    let resp = http()
        .post(format!("http://{addr}{PATH}/send?session={session}&n={n}"))
        .body(command.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_relayed_across_a_redis_restart_is_503_with_retry_after_never_404() {
    let mut redis = RedisServer::start();
    let a = start(config(&[&redis])).await;
    let b = start(config(&[&redis])).await;
    let session = open_session(a.addr).await;
    let poll = |ack: u64| {
        http()
            .get(format!(
                "http://{}{PATH}/poll?session={session}&ack={ack}",
                b.addr
            ))
            .send()
    };
    let resp = poll(0).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "relayed to node A");
    let v: Value = json(resp).await;
    assert_eq!(v["messages"][0]["id"], 1);
    let acked = v["seq"].as_u64().unwrap();

    // A long poll held on A for B when Redis dies: its answer is lost on the way.
    let held = tokio::spawn(poll(acked));
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    let mut seen = Vec::new();
    let resp = held.await.unwrap().unwrap();
    seen.push(resp.status());
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
        assert_eq!(resp.headers()["retry-after"], "1");
    }
    // Polls while Redis is down, and after it is back until one is answered.
    let down_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < down_until {
        let resp = poll(acked).await.unwrap();
        seen.push(resp.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = poll(acked).await.unwrap();
        let status = resp.status();
        seen.push(status);
        assert_ne!(
            status,
            StatusCode::NOT_FOUND,
            "a live session answered 404; statuses so far: {seen:?}"
        );
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{seen:?}");
        assert_eq!(resp.headers()["retry-after"], "1");
        let v: Value = json(resp).await;
        assert_eq!(v["error"]["code"], 100, "{v}");
        assert!(Instant::now() < deadline, "never answered: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !seen.contains(&StatusCode::NOT_FOUND),
        "no 404 for a live session: {seen:?}"
    );
    assert!(
        seen.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "the outage was seen: {seen:?}"
    );
    // The session is the same, and works through B as before.
    send(
        b.addr,
        &session,
        1,
        json!({"id": 2, "presence_stats": {"channel": "chat:x"}}),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let v: Value = json(poll(acked).await.unwrap()).await;
        if v["messages"].as_array().is_some_and(|m| !m.is_empty()) {
            assert_eq!(v["messages"][0]["id"], 2, "{v}");
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_sse_stream_keeps_pinging_through_a_redis_outage_and_delivers_the_2500_push() {
    let mut redis = RedisServer::start();
    let a = start(config(&[&redis])).await;
    let b = start(config(&[&redis])).await;
    let session = open_session(a.addr).await;
    send(
        a.addr,
        &session,
        1,
        json!({"id": 2, "subscribe": {"channel": "chat:o"}}),
    )
    .await;
    // The stream on B, for A's session.
    let mut resp = http()
        .get(format!("http://{}{PATH}/sse?session={session}", b.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut text = String::new();
    // The connect and subscribe replies.
    let deadline = Instant::now() + WAIT;
    while !text.contains("\"id\":2") {
        text.push_str(&read(&mut resp).await.expect("stream open"));
        assert!(Instant::now() < deadline, "no subscribe reply: {text}");
    }

    redis.stop();
    // 4 s without Redis: a ping at least every sse_ping_interval (1 s), give or take.
    let outage = Instant::now();
    let mut last = Instant::now();
    let mut pings = 0;
    while outage.elapsed() < Duration::from_secs(4) {
        let chunk = read(&mut resp).await.expect("the stream stays open");
        let gap = last.elapsed();
        assert!(
            gap < Duration::from_millis(2500),
            "{gap:?} without a byte during the outage"
        );
        if chunk.contains(": ping") {
            pings += 1;
            last = Instant::now();
        }
    }
    assert!(pings >= 2, "{pings} pings in 4 s");

    redis.restart();
    // Once Redis is back, the subscriber is told to recover, through the stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = String::new();
    loop {
        let chunk = read(&mut resp)
            .await
            .unwrap_or_else(|| panic!("the stream ended without the 2500 push: {after}"));
        after.push_str(&chunk);
        if after.contains("\"code\":2500") {
            break;
        }
        assert!(Instant::now() < deadline, "no 2500 push: {after}");
    }
    assert!(after.contains("\"unsubscribe\""), "{after}");
    assert!(after.contains("chat:o"), "{after}");
}

/// The publications in `channel`'s history, through the API.
async fn history(api: SocketAddr, channel: &str) -> Vec<Value> {
    let body = json!({"channel": channel, "limit": 100}).to_string();
    let (status, v) = api_call(api, Some(KEY), "history", &body).await;
    assert_eq!(status, 200, "{v}");
    v["result"]["publications"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_retries_a_publish_timed_out_in_a_pause_with_its_key_and_it_is_applied_once() {
    let mut redis = RedisServer::start();
    let node = start(config(&[&redis])).await;
    assert_eq!(publish(node.api, "chat:cli").await.0, 200);

    redis.pause();
    let cli = tokio::process::Command::new(common::process::BIN)
        .args([
            "publish",
            "--api",
            &format!("http://{}", node.api),
            "--api-key",
            KEY,
            "--timeout",
            "1500ms",
            "--attempts",
            "10",
            "chat:cli",
            r#"{"n":"once"}"#,
        ])
        .kill_on_drop(true)
        .output();
    let cli = tokio::spawn(cli);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.resume();
    let out = tokio::time::timeout(Duration::from_secs(30), cli)
        .await
        .expect("the CLI ends")
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("attempt 1 of 10") && stderr.contains("same idempotency key"),
        "it tried again: {stderr}"
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pubs = history(node.api, "chat:cli").await;
    let once: Vec<&Value> = pubs.iter().filter(|p| p["data"]["n"] == "once").collect();
    assert_eq!(once.len(), 1, "published once: {pubs:?}");
    assert_eq!(once[0]["offset"], result["offset"], "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_retries_a_publish_failed_in_a_pause_with_its_key_and_it_is_applied_once() {
    let mut redis = RedisServer::start();
    let node = start(config(&[&redis])).await;
    let client =
        switchboard_client::Client::builder(format!("ws://{}/connection/websocket", node.addr))
            .timeout(Duration::from_secs(3))
            .publish_attempts(10)
            .build()
            .unwrap();
    client.connect().await.unwrap();
    client.publish("chat:rc", json!({"n": 0})).await.unwrap();

    redis.pause();
    let publishing = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("chat:rc", json!({"n": "once"})).await })
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !publishing.is_finished(),
        "still trying while Redis is paused"
    );
    redis.resume();
    let pos = tokio::time::timeout(Duration::from_secs(30), publishing)
        .await
        .expect("the publish ends")
        .unwrap()
        .unwrap();
    let pubs = history(node.api, "chat:rc").await;
    let once: Vec<&Value> = pubs.iter().filter(|p| p["data"]["n"] == "once").collect();
    assert_eq!(once.len(), 1, "published once: {pubs:?}");
    assert_eq!(once[0]["offset"], pos.offset);
    client.close().await;
}
