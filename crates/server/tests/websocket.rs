//! The WebSocket transport against the real server on 127.0.0.1: handshakes, limits, protocol
//! violations, compression, dead and slow peers, shutdown. Every misbehaving client is checked to leave
//! a well-behaved bystander connection untouched.

mod common;

use std::time::Duration;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn echoes_text_and_binary_and_answers_pings() {
    let s = start(default_limits()).await;
    let mut c = connect(s.addr).await;
    c.echo_ok("hello").await;
    let big = vec![0xabu8; 200_000];
    c.send_frame(true, false, 2, &big, true).await;
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.len()), (2, big.len()));
    c.send_frame(true, false, 9, b"are you there", true).await;
    let f = c.read_frame().await.unwrap();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (10, &b"are you there"[..])
    );
    // A fragmented message with a ping in the middle.
    c.send_frame(false, false, 1, "frag".as_bytes(), true).await;
    c.send_frame(true, false, 9, b"", true).await;
    c.send_frame(true, false, 0, "mented".as_bytes(), true)
        .await;
    assert_eq!(c.read_frame().await.unwrap().opcode, 10);
    assert_eq!(c.read_frame().await.unwrap().payload, b"fragmented");
    // Clean close: the server echoes the code and closes the TCP connection.
    c.send_frame(true, false, 8, &1000u16.to_be_bytes(), true)
        .await;
    assert_eq!(c.expect_close().await, 1000);
}

#[tokio::test]
async fn bad_handshakes_get_a_status_and_a_reason() {
    let s = start(default_limits()).await;
    let a = s.addr;
    let (_, r) = request(a, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Upgrade: websocket"), "{}", r.body);

    let raw = |method: &str, version: &str, key: &str, ws_version: &str| {
        format!(
            "{method} /echo {version}\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {ws_version}\r\n\r\n"
        )
    };
    let (_, r) = request(a, &raw("GET", "HTTP/1.1", KEY, "7")).await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    let (_, r) = request(a, &raw("GET", "HTTP/1.1", "c2hvcnQ=", "13")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Sec-WebSocket-Key"), "{}", r.body);
    let (_, r) = request(a, &raw("POST", "HTTP/1.1", KEY, "13")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("GET"), "{}", r.body);
    let (_, r) = request(a, &format!("GET /echo HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Connection"), "{}", r.body);
    let (_, r) = request(a, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 404);

    let (_, r) = request(a, &raw("GET", "HTTP/1.0", KEY, "13")).await;
    assert_eq!(r.status, 400);
    // A request head over the size limit is refused without taking anything down.
    let huge = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let (_, r) = request(a, &huge).await;
    assert_eq!(r.status, 431);
    let mut c = connect(a).await;
    c.echo_ok("the server is fine").await;
}

#[tokio::test]
async fn origin_check_stops_cross_site_pages() {
    let s = start(default_limits()).await;
    let own = format!("http://{}", s.addr);
    let (_, r) = handshake(s.addr, "/echo", &[("Origin", &own)]).await;
    assert_eq!(r.status, 101);
    let (_, r) = handshake(s.addr, "/echo", &[("Origin", "https://evil.example")]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("evil.example"), "{}", r.body);

    let mut cfg = default_limits();
    cfg.websocket.allowed_origins = vec!["https://app.example.com".into()];
    let s = start(cfg).await;
    let (_, r) = handshake(s.addr, "/echo", &[("Origin", "https://app.example.com")]).await;
    assert_eq!(r.status, 101);
    // The server's own origin stays allowed when the list names others (its own pages, the demo).
    let (_, r) = handshake(
        s.addr,
        "/echo",
        &[("Origin", &format!("http://{}", s.addr))],
    )
    .await;
    assert_eq!(r.status, 101);
    let (_, r) = handshake(s.addr, "/echo", &[("Origin", "https://evil.example")]).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn subprotocol_from_the_configured_list_or_none() {
    let mut cfg = default_limits();
    cfg.websocket.subprotocols = vec!["chat".into()];
    let s = start(cfg).await;
    let (_, r) = handshake(
        s.addr,
        "/echo",
        &[("Sec-WebSocket-Protocol", "superchat, chat")],
    )
    .await;
    assert_eq!(
        (r.status, r.header("sec-websocket-protocol")),
        (101, Some("chat"))
    );
    let (mut c, r) = handshake(s.addr, "/echo", &[("Sec-WebSocket-Protocol", "superchat")]).await;
    assert_eq!((r.status, r.header("sec-websocket-protocol")), (101, None));
    c.echo_ok("still works without a subprotocol").await;
}

/// Runs `misbehave` on a fresh connection while a bystander is connected, then checks the close code
/// it got and that the bystander still echoes.
async fn isolated<F, Fut>(cfg: switchboard::Config, want_code: u16, misbehave: F)
where
    F: FnOnce(RawClient) -> Fut,
    Fut: std::future::Future<Output = RawClient>,
{
    let s = start(cfg).await;
    let mut bystander = connect(s.addr).await;
    bystander.echo_ok("before").await;
    let mut bad = misbehave(connect(s.addr).await).await;
    assert_eq!(bad.expect_close().await, want_code);
    bystander.echo_ok("after").await;
}

#[tokio::test]
async fn oversized_frames_and_messages_close_1009() {
    let over = vec![b'a'; (1 << 20) + 1];
    isolated(default_limits(), 1009, |mut c| async move {
        c.send_frame(true, false, 2, &over, true).await;
        c
    })
    .await;
    // Fragments each under the frame limit, adding up to more than the message limit.
    isolated(default_limits(), 1009, |mut c| async move {
        let part = vec![b'a'; 600_000];
        c.send_frame(false, false, 2, &part, true).await;
        c.send_frame(true, false, 0, &part, true).await;
        c
    })
    .await;
    // The close comes as soon as the header declares too much, before any payload is sent.
    isolated(default_limits(), 1009, |mut c| async move {
        let header = &encode(true, false, 2, &vec![0; 5 << 20], true)[..14];
        c.stream.write_all(header).await.unwrap();
        c
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    isolated(default_limits(), 1007, |mut c| async move {
        c.send_frame(true, false, 1, b"caf\xc3", true).await;
        c
    })
    .await;
    // Fail fast: an impossible sequence in the first fragment closes before the message ends.
    isolated(default_limits(), 1007, |mut c| async move {
        c.send_frame(false, false, 1, b"ok \xf4\x90\x80\x80", true)
            .await;
        c
    })
    .await;
}

#[tokio::test]
async fn protocol_violations_close_1002() {
    let cases: Vec<Vec<u8>> = vec![
        encode(true, false, 1, b"unmasked", false),
        encode(true, false, 3, b"reserved opcode", true),
        encode(true, true, 1, b"rsv1 without deflate", true),
        encode(false, false, 9, b"fragmented ping", true),
        encode(true, false, 0, b"continuation of nothing", true),
        encode(true, false, 8, &1005u16.to_be_bytes(), true),
        // 0x23 sets RSV2.
        {
            let mut f = encode(true, false, 1, b"x", true);
            f[0] |= 0x20;
            f
        },
    ];
    for bytes in cases {
        isolated(default_limits(), 1002, |mut c| async move {
            c.stream.write_all(&bytes).await.unwrap();
            c
        })
        .await;
    }
}

#[tokio::test]
async fn garbage_after_the_handshake_closes_the_connection() {
    isolated(default_limits(), 1002, |mut c| async move {
        c.stream
            .write_all(b"GET / HTTP/1.1\r\nthis is not a frame\r\n\r\n")
            .await
            .unwrap();
        c
    })
    .await;
}

#[tokio::test]
async fn permessage_deflate_round_trip() {
    let s = start(default_limits()).await;
    let (mut c, r) = handshake(
        s.addr,
        "/echo",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    assert_eq!(r.status, 101);
    assert_eq!(
        r.header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let text = "compress me, compress me, compress me! ".repeat(40);
    let mut z = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    z.compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    c.send_frame(true, true, 1, &out, true).await;
    let f = c.read_frame().await.unwrap();
    assert!(f.rsv1, "large echoes come back compressed");
    assert!(f.payload.len() < text.len() / 4);
    let mut d = Decompress::new(false);
    let mut plain = Vec::with_capacity(text.len() + 16);
    let mut input = f.payload.clone();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    d.decompress_vec(&input, &mut plain, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(plain, text.as_bytes());
    // Small messages stay plain (below the threshold).
    c.echo_ok("tiny").await;
    // A compressed control frame is a protocol error even with deflate on.
    c.send_frame(true, true, 9, b"", true).await;
    assert_eq!(c.expect_close().await, 1002);
}

#[tokio::test]
async fn dead_peer_is_dropped_after_ping_and_pong_timeout() {
    let mut cfg = default_limits();
    cfg.websocket.ping_interval = Duration::from_millis(200);
    cfg.websocket.pong_timeout = Duration::from_millis(300);
    let s = start(cfg).await;
    let mut bystander = connect(s.addr).await;
    let mut dead = connect(s.addr).await;
    // The dead peer receives the ping but never answers; the bystander answers its pings.
    let ping = dead.read_frame().await.unwrap();
    assert_eq!(ping.opcode, 9);
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        let f = bystander.read_frame().await.unwrap();
        assert_eq!(f.opcode, 9);
        bystander
            .send_frame(true, false, 10, &f.payload, true)
            .await;
    }
    // It is told why (close 1001 on the echo endpoint), then dropped without waiting long.
    let close = dead.read_frame().await.unwrap();
    assert_eq!(close.close_code(), Some(1001));
    assert!(
        dead.read_frame().await.is_none(),
        "the server drops a peer that does not answer"
    );
    assert!(started.elapsed() < WAIT);
    bystander.echo_ok("still here").await;
}

/// The keepalive ping rides on a publication the fan-out writes in the interval's last fifth: it
/// comes right after a publication, sooner than the interval (2 s) after the last pong, and a
/// peer that does not answer it is still closed (3012) the pong timeout (1 s) after it.
#[tokio::test]
async fn the_keepalive_ping_rides_on_a_publication() {
    let mut cfg = switchboard::Config::default();
    cfg.channels.namespaces.insert(
        "live".into(),
        switchboard_hub::NamespaceOptions {
            allow_publish: true,
            ..Default::default()
        },
    );
    cfg.websocket.ping_interval = Duration::from_secs(2);
    cfg.websocket.pong_timeout = Duration::from_secs(1);
    let s = start(cfg).await;
    let mut sub = JsonClient::connected(s.addr).await;
    sub.ok("subscribe", serde_json::json!({"channel": "live:feed"}))
        .await;
    let mut heard = tokio::time::Instant::now();
    let mut publisher = JsonClient::connected(s.addr).await;
    let publishing = tokio::spawn(async move {
        for n in 0u64.. {
            let data = serde_json::json!({"channel": "live:feed", "data": {"n": n}});
            publisher.ok("publish", data).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    let mut before = 0u8;
    let mut pings = 0;
    while pings < 4 {
        let f = sub.ws.read_frame().await.expect("the connection lives");
        if f.opcode != 9 {
            before = f.opcode;
            continue;
        }
        let since = heard.elapsed();
        assert_eq!(before, 1, "the ping follows a publication");
        assert!(
            since >= Duration::from_millis(1500) && since < Duration::from_millis(1950),
            "ping {pings} came {since:?} after the last pong, not in the last fifth"
        );
        pings += 1;
        if pings < 4 {
            sub.ws.send_frame(true, false, 10, &f.payload, true).await;
            heard = tokio::time::Instant::now();
        }
    }
    // The fourth ping goes unanswered.
    let unanswered = tokio::time::Instant::now();
    let close = loop {
        let f = sub.ws.read_frame().await.expect("a close frame");
        assert_ne!(f.opcode, 9, "one ping only");
        if f.opcode == 8 {
            break f;
        }
    };
    let after = unanswered.elapsed();
    assert_eq!(close.close_code(), Some(3012));
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(1500),
        "closed {after:?} after the carried ping"
    );
    publishing.abort();
}

/// On the protocol endpoint an unanswered ping ends the connection with close code 3012 ("no pong",
/// docs/protocol.md), counted under that code, rather than with a bare TCP close.
#[tokio::test]
async fn an_unanswered_ping_closes_with_3012() {
    let mut cfg = default_limits();
    cfg.websocket.ping_interval = Duration::from_millis(200);
    cfg.websocket.pong_timeout = Duration::from_millis(300);
    cfg.websocket.close_timeout = Duration::from_millis(300);
    let s = start(cfg).await;
    let (mut dead, r) = handshake(s.addr, "/connection/websocket", &[]).await;
    assert_eq!(r.status, 101);
    dead.send_text(r#"{"id":1,"connect":{}}"#).await;
    let mut frames = Vec::new();
    while let Some(f) = dead.read_frame().await {
        frames.push(f);
    }
    let close = frames
        .iter()
        .find(|f| f.opcode == 8)
        .expect("a close frame");
    assert_eq!(close.close_code(), Some(3012));
    assert_eq!(&close.payload[2..], b"no pong");
    // Counted once the server's task is done with the connection, a moment after the socket closed.
    let started = tokio::time::Instant::now();
    loop {
        let (_, resp) = request(
            s.api,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if resp
            .body
            .contains("switchboard_disconnects_total{code=\"3012\"} 1")
        {
            break;
        }
        assert!(started.elapsed() < WAIT, "3012 not counted: {}", resp.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slowloris_handshake_and_trickled_frames_are_cut_off() {
    let mut cfg = default_limits();
    cfg.http.header_read_timeout = Duration::from_millis(300);
    cfg.websocket.message_timeout = Duration::from_millis(300);
    let s = start(cfg).await;
    let mut bystander = connect(s.addr).await;
    // Headers that never finish.
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut slow, &mut buf))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{n:?}"
    );
    // A frame whose payload never completes: policy violation 1008.
    let mut c = connect(s.addr).await;
    c.stream
        .write_all(&encode(true, false, 1, b"never finished", true)[..8])
        .await
        .unwrap();
    assert_eq!(c.expect_close().await, 1008);
    bystander.echo_ok("unaffected").await;
}

#[tokio::test]
async fn peer_that_stops_reading_is_dropped_and_memory_stays_bounded() {
    let mut cfg = default_limits();
    cfg.websocket.write_timeout = Duration::from_millis(500);
    let s = start(cfg).await;
    let mut bystander = connect(s.addr).await;
    let mut slow = connect(s.addr).await;
    // Pipeline echoes without ever reading: the server's queue hits its high-water mark, it stops
    // reading from this peer, and after the write timeout it drops it.
    let frame = encode(true, false, 2, &vec![7u8; 64 << 10], true);
    let mut sent = 0usize;
    let write_all = async {
        loop {
            if slow.stream.write_all(&frame).await.is_err() {
                break;
            }
            sent += frame.len();
        }
    };
    tokio::time::timeout(WAIT, write_all)
        .await
        .expect("the server stops reading, then drops the peer");
    assert!(
        sent < 64 << 20,
        "the server stopped reading after {sent} bytes"
    );
    bystander.echo_ok("unaffected").await;
}

#[tokio::test]
async fn graceful_shutdown_sends_1001_and_drains() {
    let s = start(default_limits()).await;
    let mut a = connect(s.addr).await;
    let mut b = connect(s.addr).await;
    a.echo_ok("hi").await;
    s.handle.shutdown();
    for c in [&mut a, &mut b] {
        let f = c.read_frame().await.unwrap();
        assert_eq!(f.close_code(), Some(1001));
        c.send_frame(true, false, 8, &1001u16.to_be_bytes(), true)
            .await;
        assert!(c.read_frame().await.is_none());
    }
    tokio::time::timeout(WAIT, s.task)
        .await
        .expect("server exits after draining")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn many_clients_at_once() {
    let s = start(default_limits()).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            for j in 0..20 {
                c.echo_ok(&format!("client {i} message {j}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
