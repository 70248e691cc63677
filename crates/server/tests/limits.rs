//! Limits against abuse, each answered with a clear status or code: client connections in total and
//! per address, the handshake rate per address, commands per second per connection, and a request
//! body that trickles in. (Header size, slowloris handshakes, frame and message sizes, channels per
//! connection and the API's body size are tested with their features: websocket.rs, protocol.rs,
//! api.rs.)

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn ws(addr: std::net::SocketAddr) -> (Option<RawClient>, Response) {
    let (c, r) = handshake(
        addr,
        "/connection/websocket",
        &[("Sec-WebSocket-Protocol", "switchboard.json")],
    )
    .await;
    (if r.status == 101 { Some(c) } else { None }, r)
}

#[tokio::test]
async fn the_server_refuses_connections_over_its_total_with_503() {
    let mut c = Config::default();
    c.limits.max_connections = 2;
    let s = start(c).await;
    let (a, _) = ws(s.addr).await;
    let (_b, _) = ws(s.addr).await;
    let (none, r) = ws(s.addr).await;
    assert!(none.is_none());
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(r.body.contains("server is full"), "{}", r.body);
    // A connection that ends frees its place.
    drop(a);
    let mut admitted = false;
    for _ in 0..50 {
        if ws(s.addr).await.1.status == 101 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "the freed place is taken again");
    // The echo endpoint is not a client connection and is not counted.
    connect(s.addr).await.echo_ok("not counted").await;
}

#[tokio::test]
async fn one_address_gets_429_over_its_share() {
    let mut c = Config::default();
    c.limits.max_connections_per_ip = 2;
    let s = start(c).await;
    let (_a, _) = ws(s.addr).await;
    let (_b, _) = ws(s.addr).await;
    let (none, r) = ws(s.addr).await;
    assert!(none.is_none());
    assert_eq!(r.status, 429);
    assert!(r.body.contains("from your address"), "{}", r.body);
}

#[tokio::test]
async fn connecting_too_fast_from_one_address_gets_429() {
    let mut c = Config::default();
    c.limits.handshakes_per_ip_per_second = 3;
    let s = start(c).await;
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for _ in 0..8 {
        let (c, r) = ws(s.addr).await;
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.header("retry-after"), Some("1"));
            assert!(r.body.contains("too fast"), "{}", r.body);
        }
        held.extend(c);
    }
    // A burst of twice the rate passes, then the address is told to slow down.
    assert_eq!(&statuses[..6], [101; 6], "{statuses:?}");
    assert!(statuses[6..].iter().all(|s| *s == 429), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(ws(s.addr).await.1.status, 101, "the bucket refills");
}

#[tokio::test]
async fn commands_over_the_rate_get_111_and_the_connection_stays() {
    let mut c = Config::default();
    c.client.max_commands_per_second = 5;
    let s = start(c).await;
    let mut client = JsonClient::connected(s.addr).await;
    // Connect took one; a burst of 10 is allowed, so of 20 more at once about 9 pass.
    let frame: Vec<String> = (100..120)
        .map(|id| json!({"id": id, "history": {"channel": "x"}}).to_string())
        .collect();
    client.send_raw(&frame.join("\n")).await;
    let mut limited = 0;
    for _ in 0..20 {
        let v = client.next().await.unwrap();
        if v["error"]["code"] == 111 {
            limited += 1;
            assert_eq!(v["error"]["temporary"], true);
        }
    }
    assert!((10..=12).contains(&limited), "{limited} of 20 limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Refilled: the connection works again.
    client.ok("subscribe", json!({"channel": "after"})).await;
}

#[tokio::test]
async fn an_api_body_that_trickles_in_gets_408() {
    let mut c = Config::default();
    c.api.key = "k".into();
    c.api.body_read_timeout = Duration::from_millis(300);
    let s = start(c).await;
    let mut stream = tokio::net::TcpStream::connect(s.api).await.unwrap();
    stream
        .write_all(
            b"POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: 100\r\n\r\n{\"a\"",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("not received within"), "{text}");
}
