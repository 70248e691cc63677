//! `switchboard-socketio`: the Engine.IO and Socket.IO parsers and state machines on arbitrary
//! input. Input `[mode, body…]`, `mode % 4` picks:
//!
//! - 0, Engine.IO codec: `body` as a polling payload (`eio::decode_payload`) and as a WebSocket text
//!   frame. Checks: what decodes encodes back (`encode_payload`, `to_frame`) to bytes that decode to
//!   the same packets.
//! - 1, Engine.IO request: `body` (UTF-8, lossy) as the query string of a GET, a POST and another
//!   method, with and without a WebSocket upgrade. Checks: an accepted request names a transport
//!   that agrees with the upgrade, a handshake is a GET; a refusal's status is 400, 403 or 413 and
//!   its body is `{"code","message"}`.
//! - 2, Socket.IO: `body` cut at `\x1e` into messages (a message starting with `0xff` is binary, the
//!   rest text) fed to a `sio::Connection` that accepts every `CONNECT`, until the first error; the
//!   default parser, or `socket.io-msgpack-parser` when `mode & 4`.
//!   Checks: a decoded packet encodes back to messages that decode to the same type, namespace, ack
//!   id and attachments, and its placeholders point at its attachments.
//! - 3, Engine.IO session: `body` is a program of operations on one `eio::Session` (polls, POSTs,
//!   WebSocket frames and probes, sends, closes, time passing). Checks: every poll answer is a
//!   payload that decodes; a closed session stays closed and takes no data; a finished one has no
//!   deadline and answers no more polls; deadlines never lie in the past after `on_timer`.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard_socketio::{eio, sio};

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else { return };
    match mode % 4 {
        0 => engine_codec(body),
        1 => engine_request(body),
        2 if mode & 4 == 0 => socket_io(body, sio::Parser::Default),
        2 => socket_io(body, sio::Parser::Msgpack),
        _ => session(body),
    }
});

fn engine_codec(body: &[u8]) {
    if let Ok(packets) = eio::decode_payload(body) {
        let again = eio::encode_payload(&packets);
        assert_eq!(eio::decode_payload(again.as_bytes()).as_ref(), Ok(&packets), "{again:?}");
    }
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(packet) = eio::Packet::decode_text(text)
    {
        assert_eq!(packet.to_frame().decode().as_ref(), Ok(&packet));
    }
    let binary = eio::Frame::Binary(Bytes::copy_from_slice(body)).decode();
    assert_eq!(binary, Ok(eio::Packet::Message(eio::Data::Binary(Bytes::copy_from_slice(body)))));
}

fn engine_request(body: &[u8]) {
    let query = String::from_utf8_lossy(body);
    for method in [eio::Method::Get, eio::Method::Post, eio::Method::Other] {
        for upgrade in [false, true] {
            match eio::verify(&query, method, upgrade) {
                Ok(request) => {
                    assert_eq!(request.transport == eio::Transport::WebSocket, upgrade);
                    if request.is_handshake() {
                        assert_eq!(method, eio::Method::Get);
                    }
                }
                Err(e) => {
                    assert!(matches!(e.status(), 400 | 403 | 413));
                    let v: serde_json::Value = serde_json::from_str(&e.body()).expect("error body is JSON");
                    assert!(v["code"].is_u64() && v["message"].is_string(), "{v}");
                }
            }
        }
    }
}

fn messages(body: &[u8]) -> impl Iterator<Item = eio::Data> + '_ {
    body.split(|&b| b == 0x1e).map(|m| match m.split_first() {
        Some((0xff, rest)) => eio::Data::Binary(Bytes::copy_from_slice(rest)),
        _ => eio::Data::Text(String::from_utf8_lossy(m).into_owned()),
    })
}

fn socket_io(body: &[u8], parser: sio::Parser) {
    let now = Instant::now();
    let mut conn =
        sio::Connection::new(sio::Decoder::with_parser(parser, 4), Duration::from_secs(1), now);
    for message in messages(body) {
        let incoming = match conn.receive(message) {
            Ok(Some(i)) => i,
            Ok(None) => continue,
            Err(_) => return,
        };
        match incoming {
            sio::Incoming::Connect { namespace, auth } => {
                assert!(auth.as_ref().is_none_or(serde_json::Value::is_object));
                assert!(namespace.starts_with('/'));
                let ok = conn.accept(&namespace, "s");
                round_trip(&ok, parser);
            }
            sio::Incoming::Packet(p) => {
                assert!(matches!(
                    p.kind,
                    sio::PacketType::Event | sio::PacketType::Ack | sio::PacketType::BinaryEvent | sio::PacketType::BinaryAck
                ));
                assert!(p.id.is_none_or(|id| id <= sio::MAX_ACK_ID));
                if p.kind.is_binary() {
                    assert!(p.attachments.len() <= 4);
                } else {
                    assert!(p.attachments.is_empty());
                }
                round_trip(&p, parser);
                // What a server answers must decode too.
                if let (Some(name), Some(id)) = (p.event_name(), p.id) {
                    round_trip(
                        &sio::Packet::ack(&p.namespace, id, vec![serde_json::Value::String(name)]),
                        parser,
                    );
                }
            }
            sio::Incoming::Disconnect { namespace } => assert!(!conn.is_joined(&namespace)),
        }
    }
    let _ = conn.on_timer(now + Duration::from_secs(2));
}

fn round_trip(packet: &sio::Packet, parser: sio::Parser) {
    let mut decoder = sio::Decoder::with_parser(parser, packet.attachments.len());
    let mut out = None;
    for m in parser.encode(packet) {
        assert!(out.is_none(), "a packet's messages end with its last attachment");
        out = decoder.decode(m).expect("an encoded packet decodes");
    }
    let back = out.expect("an encoded packet decodes completely");
    assert_eq!(
        (back.kind, &back.namespace, back.id, &back.attachments),
        (packet.kind, &packet.namespace, packet.id, &packet.attachments),
        "{packet}"
    );
    assert_eq!(back.data.is_some(), packet.data.is_some());
}

/// Operations of mode 3, one byte each (the low 4 bits pick it; some take the next bytes).
fn session(body: &[u8]) {
    let t0 = Instant::now();
    let config = eio::Config {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 64,
        upgrade_timeout: Duration::from_millis(500),
        allow_upgrades: true,
        close_timeout: Duration::from_millis(1000),
        max_buffered: 256,
    };
    let transport = if body.first().is_some_and(|b| b & 1 == 1) { eio::Transport::WebSocket } else { eio::Transport::Polling };
    let mut s = eio::Session::open(eio::Sid::from_random([1; 15]), transport, config, t0);
    let mut now = t0;
    let mut ops = body.iter().skip(1);
    while let Some(&op) = ops.next() {
        let arg = usize::from(op >> 4);
        let take = |ops: &mut std::iter::Skip<std::slice::Iter<'_, u8>>| -> Vec<u8> { ops.by_ref().take(arg * 3).copied().collect() };
        let was_closed = s.is_closed();
        match op & 0x0f {
            0 => {
                if let Ok(eio::Poll::Respond(b)) = s.poll(now) {
                    check_poll(&b);
                }
            }
            1 => {
                let bytes = take(&mut ops);
                if s.post_begin(arg == 15).is_ok() {
                    let _ = s.post_body(&bytes, now);
                }
            }
            2 => s.poll_aborted(),
            3 => {
                let _ = s.ws_begin(now);
            }
            4 => {
                let text = String::from_utf8_lossy(&take(&mut ops)).into_owned();
                let _ = s.ws_frame(eio::Frame::Text(text), now);
            }
            5 => {
                let _ = s.ws_frame(eio::Frame::Text("2probe".into()), now);
            }
            6 => {
                let _ = s.ws_frame(eio::Frame::Text("5".into()), now);
            }
            7 => s.ws_closed(),
            8 => {
                let bytes = take(&mut ops);
                let _ = s.send(eio::Data::Binary(Bytes::from(bytes)));
            }
            9 => {
                let text = String::from_utf8_lossy(&take(&mut ops)).into_owned();
                let _ = s.send(eio::Data::Text(text));
            }
            10 => s.close(now),
            11 => {
                let _ = s.ws_frame(eio::Frame::Text("3".into()), now);
                let _ = s.post_begin(false).and_then(|()| s.post_body(b"3", now));
            }
            _ => {
                now += Duration::from_millis(50 * (arg as u64 + 1));
                s.on_timer(now);
                if let Some(next) = s.next_deadline() {
                    assert!(next > now, "on_timer leaves no deadline in the past");
                }
            }
        }
        if let Some(b) = s.take_poll_response() {
            check_poll(&b);
        }
        for frame in s.take_outgoing() {
            assert!(frame.decode().is_ok());
        }
        let _ = s.take_probe_abandoned();
        if was_closed {
            assert!(s.is_closed(), "a closed session stays closed");
        }
        if s.is_closed() {
            assert!(s.close_reason().is_some());
            assert!(s.send(eio::Data::Text("x".into())).is_err());
        }
        if s.is_finished() {
            assert!(s.next_deadline().is_none());
            assert!(matches!(s.poll(now), Err(eio::RequestError::UnknownSid(_))));
        }
    }
}

fn check_poll(body: &str) {
    assert!(eio::decode_payload(body.as_bytes()).is_ok(), "poll answer {body:?} decodes");
}
