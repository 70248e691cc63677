//! The Engine.IO / Socket.IO endpoint on a real server (127.0.0.1, port 0): in conformance mode
//! (the Engine.IO echo at `/engine.io/` and the suites' reference application at `/socket.io/`),
//! and as switchboard clients. The official suites themselves run against a built server
//! (`/work/shared/conformance/socketio/run.sh`); these tests keep the wiring honest in `cargo test`.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{RawClient, Response, handshake, request, start};
use switchboard::Config;

fn config() -> Config {
    let mut c = Config::default();
    c.socketio.enabled = true;
    c.socketio.conformance = true;
    c.socketio.ping_interval = Duration::from_millis(300);
    c.socketio.ping_timeout = Duration::from_millis(200);
    c
}

async fn http(addr: SocketAddr, method: &str, target: &str, body: &str) -> Response {
    let raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    request(addr, &raw).await.1
}

async fn open_polling(addr: SocketAddr) -> String {
    let resp = http(addr, "GET", "/engine.io/?EIO=4&transport=polling", "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let open: serde_json::Value =
        serde_json::from_str(resp.body.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    open["sid"].as_str().unwrap().to_owned()
}

/// The next text frame, skipping pings and pongs of the WebSocket layer and answering Engine.IO
/// pings.
async fn text(ws: &mut RawClient) -> String {
    loop {
        let f = ws.read_frame().await.expect("a frame");
        if f.opcode == 1 && f.payload == b"2" {
            ws.send_text("3").await;
            continue;
        }
        if f.opcode == 1 {
            return String::from_utf8(f.payload).unwrap();
        }
        assert!(matches!(f.opcode, 9 | 10), "unexpected frame {f:?}");
    }
}

#[tokio::test]
async fn polling_echo_and_error_answers() {
    let server = start(config()).await;
    let addr = server.addr;
    let sid = open_polling(addr).await;
    let target = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let resp = http(addr, "POST", &target, "4hello\x1ebAQIDBA==").await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok"));
    let resp = http(addr, "GET", &target, "").await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "4hello\x1ebAQIDBA==")
    );
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );

    // The reference server's error answers.
    let resp = http(addr, "GET", "/engine.io/?EIO=3&transport=polling", "").await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#
        )
    );
    let resp = http(addr, "GET", "/engine.io/?EIO=4&transport=abc", "").await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (400, r#"{"code":0,"message":"Transport unknown"}"#)
    );
    let resp = http(addr, "POST", "/engine.io/?EIO=4&transport=polling", "").await;
    assert_eq!(resp.body, r#"{"code":2,"message":"Bad handshake method"}"#);

    // An invalid packet closes the session.
    let resp = http(addr, "POST", &target, "abc").await;
    assert_eq!(resp.status, 400);
    let resp = http(addr, "GET", &target, "").await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#)
    );
}

#[tokio::test]
async fn polling_heartbeat_and_timeout() {
    let server = start(config()).await;
    let addr = server.addr;
    let sid = open_polling(addr).await;
    let target = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    // The held poll is answered with the ping 300 ms after the handshake.
    let resp = http(addr, "GET", &target, "").await;
    assert_eq!(resp.body, "2");
    assert_eq!(http(addr, "POST", &target, "3").await.status, 200);
    // No pong this time: closed 200 ms after the next ping.
    assert_eq!(http(addr, "GET", &target, "").await.body, "2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http(addr, "GET", &target, "").await.status, 400);
}

#[tokio::test]
async fn upgrade_from_polling_to_websocket() {
    // Heartbeats slow enough that none falls inside the test.
    let mut c = config();
    c.socketio.ping_interval = Duration::from_secs(20);
    let server = start(c).await;
    let addr = server.addr;
    let sid = open_polling(addr).await;
    let (mut ws, resp) = handshake(
        addr,
        &format!("/engine.io/?EIO=4&transport=websocket&sid={sid}"),
        &[],
    )
    .await;
    assert_eq!(resp.status, 101, "{resp:?}");
    ws.send_text("2probe").await;
    assert_eq!(text(&mut ws).await, "3probe");
    let target = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(addr, "GET", &target, "").await.body, "6");
    ws.send_text("5").await;
    ws.send_text("4hello").await;
    assert_eq!(text(&mut ws).await, "4hello");
    // The session now belongs to the WebSocket: polling and a second WebSocket are refused.
    assert_eq!(http(addr, "GET", &target, "").await.status, 400);
    let (mut second, resp) = handshake(
        addr,
        &format!("/engine.io/?EIO=4&transport=websocket&sid={sid}"),
        &[],
    )
    .await;
    assert_eq!(resp.status, 101);
    second.expect_close().await;
    ws.send_text("4still here").await;
    assert_eq!(text(&mut ws).await, "4still here");
}

#[tokio::test]
async fn socketio_over_websocket() {
    let server = start(config()).await;
    let (mut ws, resp) = handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let open = text(&mut ws).await;
    assert!(
        open.starts_with("0{") && open.contains(r#""upgrades":[]"#),
        "{open}"
    );
    ws.send_text(r#"40{"token":"123"}"#).await;
    let connected = text(&mut ws).await;
    assert!(connected.starts_with(r#"40{"sid":""#), "{connected}");
    assert_eq!(text(&mut ws).await, r#"42["auth",{"token":"123"}]"#);
    ws.send_text(r#"42["message",1,"2",{"3":[true]}]"#).await;
    assert_eq!(
        text(&mut ws).await,
        r#"42["message-back",1,"2",{"3":[true]}]"#
    );
    ws.send_text("40/random").await;
    assert_eq!(
        text(&mut ws).await,
        r#"44/random,{"message":"Invalid namespace"}"#
    );
    // A malformed packet closes the connection.
    ws.send_text("42{}").await;
    loop {
        match ws.read_frame().await {
            Some(f) if f.opcode == 8 => break,
            Some(_) => {}
            None => break,
        }
    }
}

const KEY: &str = "api-key-for-socketio-tests";

/// Socket.IO on the hub: switchboard's application, not the conformance one.
fn hub_config(anonymous: bool) -> Config {
    let mut c = Config::default();
    c.socketio.enabled = true;
    c.client.allow_anonymous = anonymous;
    c.api.key = KEY.into();
    c
}

#[tokio::test]
async fn sockets_are_switchboard_clients() {
    let server = start(hub_config(true)).await;
    let (mut ws, resp) = handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert!(text(&mut ws).await.starts_with("0{"));
    ws.send_text("40").await;
    let connected = text(&mut ws).await;
    assert!(connected.starts_with(r#"40{"sid":""#), "{connected}");
    // Rooms are channels: join one with an ack.
    ws.send_text(r#"421["subscribe","news"]"#).await;
    assert_eq!(text(&mut ws).await, "431[null]");
    // A publication shaped as an event arrives as that event; any other as `publication`.
    let (status, _) = common::api_call(
        server.api,
        Some(KEY),
        "publish",
        r#"{"channel":"news","data":{"event":"chat","args":["hi",{"n":1}]}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(text(&mut ws).await, r#"42["chat","hi",{"n":1}]"#);
    let (status, _) = common::api_call(
        server.api,
        Some(KEY),
        "publish",
        r#"{"channel":"news","data":{"x":1}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(text(&mut ws).await, r#"42["publication","news",{"x":1}]"#);
    // Unknown events are refused through their ack; other namespaces are refused.
    ws.send_text(r#"422["dance"]"#).await;
    assert_eq!(
        text(&mut ws).await,
        r#"432[{"code":404,"message":"unknown event"}]"#
    );
    ws.send_text("40/admin,").await;
    assert_eq!(
        text(&mut ws).await,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
}

#[tokio::test]
async fn the_msgpack_parser() {
    use switchboard_socketio::eio::Data;
    use switchboard_socketio::sio::{Decoder, Packet, PacketType, Parser};
    let mut c = hub_config(true);
    c.socketio.parser = switchboard::transport::socketio::ParserKind::Msgpack;
    let server = start(c).await;
    let (mut ws, resp) = handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    text(&mut ws).await;
    let send = |p: Packet| match Parser::Msgpack.encode(&p).pop() {
        Some(Data::Binary(b)) => b,
        other => panic!("{other:?}"),
    };
    let connect = Packet {
        kind: PacketType::Connect,
        namespace: "/".into(),
        id: None,
        data: None,
        attachments: vec![],
    };
    ws.send_frame(true, false, 2, &send(connect), true).await;
    let mut decoder = Decoder::with_parser(Parser::Msgpack, 4);
    let mut next = async |ws: &mut RawClient| loop {
        let f = ws.read_frame().await.expect("a frame");
        if f.opcode == 2 {
            return decoder
                .decode(Data::Binary(f.payload.into()))
                .unwrap()
                .unwrap();
        }
    };
    let connected = next(&mut ws).await;
    assert_eq!(connected.kind, PacketType::Connect);
    assert!(connected.data.unwrap()["sid"].is_string());
    let subscribe = Packet::event("/", "subscribe", [serde_json::json!("news")], Some(5));
    ws.send_frame(true, false, 2, &send(subscribe), true).await;
    let ack = next(&mut ws).await;
    assert_eq!(
        (ack.kind, ack.id, ack.args()),
        (PacketType::Ack, Some(5), &[serde_json::Value::Null][..])
    );
    let (status, _) = common::api_call(
        server.api,
        Some(KEY),
        "publish",
        r#"{"channel":"news","data":{"event":"chat","args":["hi"]}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let event = next(&mut ws).await;
    assert_eq!(event.event_name().as_deref(), Some("chat"));
    assert_eq!(event.args(), &[serde_json::json!("hi")]);
}

#[tokio::test]
async fn a_refused_connect_is_connect_error() {
    let server = start(hub_config(false)).await;
    let (mut ws, resp) = handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    text(&mut ws).await;
    ws.send_text("40").await;
    let refused = text(&mut ws).await;
    assert!(refused.starts_with(r#"44{"data":{"code":"#), "{refused}");
}

#[tokio::test]
async fn sessions_count_under_the_connection_limits() {
    let mut c = hub_config(true);
    c.limits.max_connections_per_ip = 1;
    let server = start(c).await;
    let first = http(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        "",
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");
    let second = http(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        "",
    )
    .await;
    assert_eq!(second.status, 429, "{second:?}");
}

#[tokio::test]
async fn off_by_default() {
    let server = start(Config::default()).await;
    let resp = http(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        "",
    )
    .await;
    assert_eq!(resp.status, 404);
}

#[test]
fn settings_are_checked() {
    for (bad, key) in [
        ("path = \"socket.io\"", "path"),
        ("ping_timeout = \"0s\"", "ping_timeout"),
        ("allowed_origins = [\"a.example\"]", "allowed_origins"),
        (
            "allowed_origins = [\"*\"]\nallow_credentials = true",
            "allow_credentials",
        ),
        ("max_paylod = 1", "max_paylod"),
    ] {
        let err = Config::from_toml(&format!("[socketio]\n{bad}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{bad}: {err}");
    }
    let c =
        Config::from_toml("[socketio]\nenabled = true\nconformance = true\nping_interval = \"1s\"")
            .unwrap();
    assert_eq!(c.socketio.ping_interval, Duration::from_secs(1));
}
