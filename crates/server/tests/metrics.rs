//! `/metrics` counts what clients did: connections by transport, commands, publications, deliveries,
//! bytes, disconnects by code (a slow consumer among them), queues, proxy calls and history.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::Config;
use switchboard_hub::NamespaceOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Scrapes `/metrics` (no key needed): sample name with labels to value.
async fn scrape(api: SocketAddr) -> HashMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.lines()
        .filter(|l| l.starts_with("switchboard_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| {
        let mut keys: Vec<_> = m.keys().collect();
        keys.sort();
        panic!("{key} not in /metrics: {keys:#?}")
    })
}

/// Opens a long-poll session with a `connect` and a `subscribe`; returns its token.
async fn http_session(addr: SocketAddr, channel: &str) -> String {
    let body = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {}}),
        json!({"id": 2, "subscribe": {"channel": channel}})
    );
    let raw = format!(
        "POST /connection/http?transport=long-poll HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (_, resp) = request(addr, &raw).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    v["session"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn metrics_count_what_clients_did() {
    let mut c = Config::default();
    c.api.key = "k".into();
    c.client.queue_bytes = 64 << 10;
    // An RPC handler nobody listens on: every call fails, and is counted.
    c.proxy.rpc = Some("http://127.0.0.1:9/rpc".into());
    c.channels.namespaces.insert(
        "h".into(),
        NamespaceOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            allow_publish: true,
            ..Default::default()
        },
    );
    let s = start(c).await;
    let before = scrape(s.api).await;
    assert_eq!(value(&before, "switchboard_engine_ready"), 1.0);
    assert_eq!(value(&before, "switchboard_deliveries_total"), 0.0);

    let mut a = JsonClient::connected(s.addr).await;
    let mut b = JsonClient::connected(s.addr).await;
    a.ok("subscribe", json!({"channel": "h:room"})).await;
    b.ok("subscribe", json!({"channel": "h:room"})).await;
    for i in 0..5 {
        a.ok("publish", json!({"channel": "h:room", "data": i}))
            .await;
    }
    for _ in 0..5 {
        b.push("pub").await;
    }
    assert_eq!(a.error("rpc", json!({"method": "x"})).await, 100);
    let token = http_session(s.addr, "h:other").await;

    let m = scrape(s.api).await;
    assert_eq!(
        value(
            &m,
            "switchboard_client_connections{transport=\"websocket\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "switchboard_client_connections{transport=\"long-poll\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&m, "switchboard_commands_total{method=\"connect\"}"),
        3.0
    );
    assert_eq!(
        value(&m, "switchboard_commands_total{method=\"subscribe\"}"),
        3.0
    );
    assert_eq!(
        value(&m, "switchboard_commands_total{method=\"publish\"}"),
        5.0
    );
    // a: connect, subscribe, 5 publish and 1 rpc replies, its own 5 publications; b: connect,
    // subscribe, 5 publications (join/leave pushes may come on top).
    let ws_messages = value(
        &m,
        "switchboard_client_messages_total{transport=\"websocket\"}",
    );
    assert!(ws_messages >= 20.0, "{ws_messages}");
    assert!(
        value(
            &m,
            "switchboard_client_messages_total{transport=\"long-poll\"}"
        ) >= 1.0,
        "the long-poll session's connect reply"
    );
    assert_eq!(value(&m, "switchboard_publications_total"), 5.0);
    assert_eq!(
        value(&m, "switchboard_deliveries_total"),
        10.0,
        "5 x 2 subscribers"
    );
    assert_eq!(value(&m, "switchboard_channels"), 2.0);
    assert_eq!(value(&m, "switchboard_history_publications"), 5.0);
    assert!(
        value(
            &m,
            "switchboard_transport_bytes_total{transport=\"websocket\",direction=\"in\"}"
        ) > 0.0
    );
    assert!(
        value(
            &m,
            "switchboard_transport_bytes_total{transport=\"websocket\",direction=\"out\"}"
        ) > 0.0
    );
    assert!(
        value(
            &m,
            "switchboard_transport_bytes_total{transport=\"http\",direction=\"in\"}"
        ) > 0.0
    );
    assert_eq!(
        value(
            &m,
            "switchboard_proxy_errors_total{event=\"rpc\",kind=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "switchboard_proxy_duration_seconds_count{event=\"rpc\"}"
        ),
        1.0
    );
    // The session's subscribe reply waits for a poll: it is queued.
    assert!(value(&m, "switchboard_client_queued_bytes") > 0.0);

    // A slow consumer: the long-poll session never polls while 100 KiB are published to it.
    let big = "x".repeat(20 << 10);
    for _ in 0..5 {
        let (status, _) = api_call(
            s.api,
            Some("k"),
            "publish",
            &json!({"channel": "h:other", "data": big}).to_string(),
        )
        .await;
        assert_eq!(status, 200);
    }
    // And one WebSocket client leaves by itself (no code).
    drop(b);
    let mut m = scrape(s.api).await;
    for _ in 0..50 {
        if m.get("switchboard_disconnects_total{code=\"3008\"}") == Some(&1.0)
            && m.get("switchboard_client_connections{transport=\"websocket\"}") == Some(&1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = scrape(s.api).await;
    }
    assert_eq!(
        value(&m, "switchboard_disconnects_total{code=\"3008\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "switchboard_client_connections{transport=\"websocket\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "switchboard_client_connections{transport=\"long-poll\"}"
        ),
        0.0
    );
    drop(token);
}

/// A slow WebSocket client is counted under 3008 when the server decides to drop it, not when its
/// socket has finished closing: a client that reads nothing and never answers the close keeps that
/// socket open for `write_timeout` or `close_timeout` (here a minute each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_client_is_counted_when_it_is_dropped() {
    let mut c = Config::default();
    c.api.key = "k".into();
    c.client.queue_bytes = 64 << 10;
    c.websocket.write_timeout = Duration::from_secs(60);
    c.websocket.close_timeout = Duration::from_secs(60);
    c.channels.namespaces.insert(
        "h".into(),
        NamespaceOptions {
            allow_publish: true,
            ..Default::default()
        },
    );
    let s = start(c).await;
    let mut slow = JsonClient::connected(s.addr).await;
    slow.ok("subscribe", json!({"channel": "h:flood"})).await;
    // Each publication alone is over the client's queue_bytes: the first one drops it.
    let big = "x".repeat(256 << 10);
    for _ in 0..4 {
        let (status, _) = api_call(
            s.api,
            Some("k"),
            "publish",
            &json!({"channel": "h:flood", "data": big}).to_string(),
        )
        .await;
        assert_eq!(status, 200);
    }
    let started = tokio::time::Instant::now();
    let mut counted = None;
    while started.elapsed() < WAIT {
        let m = scrape(s.api).await;
        counted = m
            .get("switchboard_disconnects_total{code=\"3008\"}")
            .copied();
        if counted == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, Some(1.0), "not counted within {WAIT:?}");
    drop(slow);
}
