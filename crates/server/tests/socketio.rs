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
/// Opens an Engine.IO session on polling (its handshake, no namespace yet); its sid.
async fn polling_session(addr: SocketAddr) -> String {
    let handshake = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", "").await;
    let open: serde_json::Value =
        serde_json::from_str(handshake.body.strip_prefix('0').unwrap()).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

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
    // Other events go to the application's RPC handler: none here (error 108, through the ack).
    ws.send_text(r#"422["dance"]"#).await;
    let refused = text(&mut ws).await;
    assert!(refused.starts_with(r#"432[{"code":108,"#), "{refused}");
    // Other namespaces are refused.
    ws.send_text("40/admin,").await;
    assert_eq!(
        text(&mut ws).await,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
}

/// A client that sends faster than its hub client takes its packets (a burst of 3,000 publishes
/// in one write, more than a socket's queue of 1,024) is read as fast as it is served, as over the
/// native WebSocket: not disconnected as too slow. Every publish is acknowledged, in order.
#[tokio::test]
async fn a_burst_of_emits_is_read_as_it_is_served() {
    use tokio::io::AsyncWriteExt as _;
    let mut c = hub_config(true);
    c.channels.namespaces.insert(
        "b".into(),
        switchboard_hub::NamespaceOptions {
            allow_publish: true,
            ..Default::default()
        },
    );
    let server = start(c).await;
    let (mut ws, resp) = handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert!(text(&mut ws).await.starts_with("0{"));
    ws.send_text("40").await;
    assert!(text(&mut ws).await.starts_with("40{"));
    let mut burst = Vec::new();
    for i in 0..3000 {
        let emit = format!(r#"42{i}["publish","b:x",{{"n":{i}}}]"#);
        burst.extend(common::encode(true, false, 1, emit.as_bytes(), true));
    }
    ws.stream.write_all(&burst).await.unwrap();
    for i in 0..3000 {
        assert_eq!(text(&mut ws).await, format!("43{i}[null]"), "publish {i}");
    }
}

/// A shutdown closes every session: one joined over WebSocket, and one on polling that joined no
/// namespace (no hub client of its own to tell it), whose held poll gets the `close` packet. And
/// the Engine.IO WebSocket carries Engine.IO's heartbeat only, not the WebSocket layer's pings.
#[tokio::test]
async fn a_shutdown_closes_every_session_and_websockets_have_one_heartbeat() {
    let mut config = hub_config(true);
    config.websocket.ping_interval = Duration::from_millis(100);
    let server = start(config).await;
    let (mut ws, resp) = handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert!(text(&mut ws).await.starts_with("0{"));
    ws.send_text("40").await;
    assert!(text(&mut ws).await.starts_with(r#"40{"sid":""#));
    // Several WebSocket ping intervals: nothing arrives (a ping would be a frame).
    let quiet = tokio::time::timeout(Duration::from_millis(500), ws.read_frame()).await;
    assert!(
        quiet.is_err(),
        "a frame arrived on an idle session: {quiet:?}"
    );

    let sid = polling_session(server.addr).await;
    let addr = server.addr;
    let held = tokio::spawn(async move {
        http(
            addr,
            "GET",
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            "",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !held.is_finished(),
        "the poll was answered before the shutdown"
    );
    server.handle.shutdown();

    let polled = tokio::time::timeout(common::WAIT, held)
        .await
        .expect("the held poll was answered")
        .unwrap();
    assert_eq!(polled.status, 200, "{polled:?}");
    assert!(polled.body.split('\x1e').any(|p| p == "1"), "{polled:?}");
    let closed = tokio::time::timeout(common::WAIT, async {
        loop {
            match ws.read_frame().await {
                Some(f) if f.opcode == 1 && f.payload == b"1" => return true,
                Some(f) if f.opcode == 8 => return false,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await
    .expect("the WebSocket session ended");
    assert!(closed, "no Engine.IO close packet before the end");
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
        ("namespaces = { \"/chat\" = \"chat\" }", "namespaces"),
        ("namespaces = { \"chat\" = \"chat:\" }", "namespaces"),
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

/// A server with recovery on and history in namespace `h`.
fn recovery_config() -> Config {
    let mut c = hub_config(true);
    c.socketio.recovery = true;
    c.channels.namespaces.insert(
        "h".into(),
        switchboard_hub::NamespaceOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(60),
            recover: true,
            ..Default::default()
        },
    );
    c
}

/// The next Socket.IO packet text that is not a position event.
async fn packet(ws: &mut RawClient) -> String {
    loop {
        let t = text(ws).await;
        if !t.starts_with(r#"42["switchboard:position""#) {
            return t;
        }
    }
}

async fn publish(api: SocketAddr, channel: &str, n: u64) {
    let body = format!(r#"{{"channel":"{channel}","data":{{"event":"n","args":[{n}]}}}}"#);
    let (status, _) = common::api_call(api, Some(KEY), "publish", &body).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_reconnect_recovers_what_it_missed() {
    let server = start(recovery_config()).await;
    let open = async || {
        let (mut ws, resp) =
            handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
        assert_eq!(resp.status, 101, "{resp:?}");
        text(&mut ws).await;
        ws
    };
    let mut ws = open().await;
    ws.send_text("40").await;
    let connected: serde_json::Value =
        serde_json::from_str(packet(&mut ws).await.strip_prefix("40").unwrap()).unwrap();
    let pid = connected["pid"].as_str().unwrap().to_owned();
    ws.send_text(r#"421["subscribe","h:a"]"#).await;
    assert_eq!(packet(&mut ws).await, "431[null]");
    publish(server.api, "h:a", 1).await;
    let event: serde_json::Value =
        serde_json::from_str(packet(&mut ws).await.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(event[1], 1);
    let offset = event[2].as_str().unwrap().to_owned();
    drop(ws);
    // Missed while away.
    publish(server.api, "h:a", 2).await;
    publish(server.api, "h:a", 3).await;
    let connect = serde_json::json!({ "pid": pid, "offset": offset });
    let mut ws = open().await;
    ws.send_text(&format!("40{connect}")).await;
    let back: serde_json::Value =
        serde_json::from_str(packet(&mut ws).await.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(back["pid"], pid.as_str(), "recovered: the same pid");
    for n in [2, 3] {
        let event: serde_json::Value =
            serde_json::from_str(packet(&mut ws).await.strip_prefix("42").unwrap()).unwrap();
        assert_eq!(
            (&event[0], &event[1]),
            (&serde_json::json!("n"), &serde_json::json!(n))
        );
    }
    // Live publications follow, in the recovered room.
    publish(server.api, "h:a", 4).await;
    let event: serde_json::Value =
        serde_json::from_str(packet(&mut ws).await.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(event[1], 4);

    // A position from another epoch cannot be recovered: a new socket (another pid), in no room.
    let stale = serde_json::json!({ "pid": pid, "offset": r#"[["h:a",1,"gone"]]"# });
    let mut ws = open().await;
    ws.send_text(&format!("40{stale}")).await;
    let fresh: serde_json::Value =
        serde_json::from_str(packet(&mut ws).await.strip_prefix("40").unwrap()).unwrap();
    assert_ne!(fresh["pid"], pid.as_str());
    assert_eq!(text(&mut ws).await, r#"42["switchboard:position","[]"]"#);
}

#[tokio::test]
async fn a_polling_client_that_does_not_poll_is_slow_under_the_same_bound() {
    let mut c = hub_config(true);
    c.client.queue_bytes = 8 * 1024;
    let server = start(c).await;
    let sid = polling_session(server.addr).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(server.addr, "POST", &target, "40").await.body, "ok");
    let connected = http(server.addr, "GET", &target, "").await;
    assert!(connected.body.starts_with(r#"40{"sid":""#), "{connected:?}");
    let (status, _) = common::api_call(server.api, Some(KEY), "info", "{}").await;
    assert_eq!(status, 200);
    assert_eq!(
        http(server.addr, "POST", &target, r#"42["subscribe","news"]"#)
            .await
            .body,
        "ok"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 20 KB for a client that holds at most 8: it does not poll, so the session holds them.
    let big = "x".repeat(1000);
    for _ in 0..20 {
        let body = format!(r#"{{"channel":"news","data":{{"t":"{big}"}}}}"#);
        let (status, _) = common::api_call(server.api, Some(KEY), "publish", &body).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Disconnected as slow (3008): the session ends without all of them (and without a
    // DISCONNECT, so that the client reconnects and recovers).
    let mut delivered = 0;
    for _ in 0..3 {
        let resp = http(server.addr, "GET", &target, "").await;
        if resp.status != 200 {
            break;
        }
        delivered += resp.body.matches("publication").count();
        assert!(!resp.body.contains("\x1e41"), "{}", resp.body);
        if resp.body.ends_with('1') && !resp.body.contains("publication") {
            break;
        }
    }
    assert!(delivered < 20, "{delivered} publications delivered");
    let metrics = http(server.api, "GET", "/metrics", "").await;
    assert!(metrics.body.contains(r#"code="3008""#), "{}", metrics.body);
}

#[tokio::test]
async fn namespaces_map_to_channel_prefixes() {
    let mut c = hub_config(true);
    c.socketio.namespaces.insert("/chat".into(), "chat:".into());
    c.channels
        .namespaces
        .insert("chat".into(), switchboard_hub::NamespaceOptions::default());
    let server = start(c).await;
    let (mut ws, resp) = handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    text(&mut ws).await;
    // Two namespaces of one session: two sockets, two clients of the hub.
    ws.send_text("40").await;
    let main = text(&mut ws).await;
    assert!(main.starts_with(r#"40{"sid":""#), "{main}");
    ws.send_text("40/chat,").await;
    let chat = text(&mut ws).await;
    assert!(chat.starts_with(r#"40/chat,{"sid":""#), "{chat}");
    assert_ne!(main[2..], chat[8..]);
    // The room `lobby` of /chat is the channel chat:lobby.
    ws.send_text(r#"42/chat,1["subscribe","lobby"]"#).await;
    assert_eq!(text(&mut ws).await, "43/chat,1[null]");
    let (status, _) = common::api_call(
        server.api,
        Some(KEY),
        "publish",
        r#"{"channel":"chat:lobby","data":{"event":"say","args":["hi"]}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(text(&mut ws).await, r#"42/chat,["say","hi"]"#);
    let (status, _) = common::api_call(
        server.api,
        Some(KEY),
        "publish",
        r#"{"channel":"chat:lobby","data":{"x":1}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        text(&mut ws).await,
        r#"42/chat,["publication","lobby",{"x":1}]"#
    );
    // Leaving /chat leaves its rooms; / stays.
    ws.send_text("41/chat,").await;
    ws.send_text(r#"421["subscribe","news"]"#).await;
    assert_eq!(text(&mut ws).await, "431[null]");
    // Unlisted namespaces are refused.
    ws.send_text("40/admin,").await;
    assert_eq!(
        text(&mut ws).await,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
}

/// Tasks alive in this test's runtime (the server runs in it).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until `alive_tasks()` is `want` (tasks of finished HTTP connections end a moment after
/// their last answer); returns the last count seen.
async fn settle_tasks(want: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = alive_tasks();
        if n == want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_task_per_socketio_client() {
    let mut c = hub_config(true);
    c.socketio.ping_interval = Duration::from_secs(20);
    let server = start(c).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = alive_tasks();
    // WebSocket clients, each in the main namespace and in a room: one task each (the session's,
    // which owns the WebSocket and runs the socket's hub client).
    const N: usize = 8;
    let mut clients = Vec::new();
    for _ in 0..N {
        let (mut ws, resp) =
            handshake(server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).await;
        assert_eq!(resp.status, 101, "{resp:?}");
        assert!(text(&mut ws).await.starts_with("0{"));
        ws.send_text("40").await;
        assert!(text(&mut ws).await.starts_with(r#"40{"sid":""#));
        ws.send_text(r#"421["subscribe","news"]"#).await;
        assert_eq!(text(&mut ws).await, "431[null]");
        clients.push(ws);
    }
    // One more that starts on polling and upgrades: the probing WebSocket joins the session's
    // task too.
    let sid = polling_session(server.addr).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(server.addr, "POST", &target, "40").await.body, "ok");
    assert!(
        http(server.addr, "GET", &target, "")
            .await
            .body
            .starts_with(r#"40{"sid":""#)
    );
    let (mut upgraded, resp) = handshake(
        server.addr,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        &[],
    )
    .await;
    assert_eq!(resp.status, 101, "{resp:?}");
    upgraded.send_text("2probe").await;
    assert_eq!(text(&mut upgraded).await, "3probe");
    assert_eq!(http(server.addr, "GET", &target, "").await.body, "6");
    upgraded.send_text("5").await;
    upgraded.send_text(r#"421["subscribe","news"]"#).await;
    assert_eq!(text(&mut upgraded).await, "431[null]");
    clients.push(upgraded);
    let got = settle_tasks(before + N + 1).await;
    assert_eq!(got - before, N + 1, "tasks for {} clients", N + 1);
    // And every one of them gets a publication.
    let (status, _) = common::api_call(
        server.api,
        Some(KEY),
        "publish",
        r#"{"channel":"news","data":{"event":"chat","args":[1]}}"#,
    )
    .await;
    assert_eq!(status, 200);
    for ws in &mut clients {
        assert_eq!(text(ws).await, r#"42["chat",1]"#);
    }
    // Gone with their clients: the hub clients left their channels.
    drop(clients);
    let got = settle_tasks(before).await;
    assert_eq!(got, before, "tasks left after the clients closed");
    let (_, info) = common::api_call(server.api, Some(KEY), "info", "{}").await;
    assert_eq!(info["result"]["nodes"][0]["num_clients"], 0, "{info}");
}
