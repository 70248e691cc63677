//! The Engine.IO session against the scenarios of the official `engine.io-protocol` suite, with its
//! settings (pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1e6) and a clock under test.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

fn config() -> Config {
    Config {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        ..Config::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sid() -> Sid {
    Sid::from_random([7; 15])
}

/// A polling session whose handshake GET has been answered.
fn polling(t0: Instant) -> Session {
    let mut s = Session::open(sid(), Transport::Polling, config(), t0);
    match s.poll(t0) {
        Ok(Poll::Respond(body)) => assert!(body.starts_with("0{"), "{body}"),
        other => panic!("handshake poll: {other:?}"),
    }
    s
}

fn text(s: &str) -> Data {
    Data::Text(s.into())
}

#[test]
fn sid_is_url_safe_and_long_enough() {
    let s = Sid::from_random([0xff; 15]);
    assert_eq!(s.as_str().len(), 20);
    assert!(
        s.as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    // Naming its node: the node, a dash, then the same 20 characters.
    let on = Sid::on_node("0a1b2c3d", [0xff; 15]);
    assert_eq!(on.as_str(), format!("0a1b2c3d-{s}"));
    assert_eq!(on.as_str().split_once('-'), Some(("0a1b2c3d", s.as_str())));
}

#[test]
fn handshake_answers() {
    let t0 = Instant::now();
    let mut s = Session::open(sid(), Transport::Polling, config(), t0);
    let Ok(Poll::Respond(body)) = s.poll(t0) else {
        panic!("handshake")
    };
    let value: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "sid": sid().as_str(), "upgrades": ["websocket"],
            "pingInterval": 300, "pingTimeout": 200, "maxPayload": 1000000
        })
    );

    let mut ws = Session::open(sid(), Transport::WebSocket, config(), t0);
    let frames = ws.take_outgoing();
    let [Frame::Text(open)] = frames.as_slice() else {
        panic!("{frames:?}")
    };
    let value: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    assert_eq!(value["upgrades"], serde_json::json!([]));

    let no_upgrades = Session::open(
        sid(),
        Transport::Polling,
        Config {
            allow_upgrades: false,
            ..config()
        },
        t0,
    );
    assert!(no_upgrades.handshake().upgrades.is_empty());
}

#[test]
fn post_then_poll_echo() {
    // "sends and receives a payload containing plain text and binary packets"
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.post_begin(false).unwrap();
    let got = s.post_body(b"4hello\x1ebAQIDBA==", t0).unwrap();
    assert_eq!(
        got,
        vec![
            text("hello"),
            Data::Binary(Bytes::from_static(&[1, 2, 3, 4]))
        ]
    );
    for d in got {
        s.send(d).unwrap();
    }
    assert_eq!(s.poll(t0), Ok(Poll::Respond("4hello\x1ebAQIDBA==".into())));
}

#[test]
fn held_poll_gets_later_data() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    assert_eq!(s.poll(t0), Ok(Poll::Hold));
    assert_eq!(s.take_poll_response(), None);
    s.send(text("a")).unwrap();
    s.send(text("b")).unwrap();
    assert_eq!(s.take_poll_response(), Some("4a\x1e4b".into()));
    assert_eq!(s.take_poll_response(), None);
}

#[test]
fn invalid_packet_closes() {
    // "closes the session upon invalid packet format"
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.post_begin(false).unwrap();
    let e = s.post_body(b"abc", t0).unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(s.is_closed());
    assert_eq!(s.close_reason(), Some(&CloseReason::ParseError));
    assert_eq!(s.poll(t0).unwrap_err().code(), 1);
}

#[test]
fn duplicate_poll_closes() {
    // "closes the session upon duplicate poll requests": the first gets `1`, the second 400.
    let t0 = Instant::now();
    let mut s = polling(t0);
    assert_eq!(s.poll(t0), Ok(Poll::Hold));
    let e = s.poll(t0).unwrap_err();
    assert_eq!(e, RequestError::BadRequest(BadRequest::PollOverlap));
    assert_eq!(s.take_poll_response(), Some("1".into()));
    assert!(s.is_closed());
    assert_eq!(s.poll(t0).unwrap_err().status(), 400);
}

#[test]
fn duplicate_post_and_binary_post_close() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.post_begin(false).unwrap();
    assert_eq!(s.post_begin(false), Err(BadRequest::PostOverlap.into()));
    assert!(s.is_closed());

    let mut s = polling(t0);
    assert_eq!(s.post_begin(true), Err(BadRequest::BinaryBody.into()));
    assert!(s.is_closed());

    let mut s = polling(t0);
    s.post_begin(false).unwrap();
    s.post_aborted();
    assert!(s.is_closed());
}

#[test]
fn oversized_post_closes() {
    let t0 = Instant::now();
    let mut s = Session::open(
        sid(),
        Transport::Polling,
        Config {
            max_payload: 4,
            ..config()
        },
        t0,
    );
    s.post_begin(false).unwrap();
    assert_eq!(
        s.post_body(b"4hello", t0),
        Err(RequestError::PayloadTooLarge(4))
    );
    assert!(s.is_closed());
}

#[test]
fn polling_heartbeat() {
    // "sends ping/pong packets", three rounds.
    let t0 = Instant::now();
    let mut s = polling(t0);
    let mut now = t0;
    for _ in 0..3 {
        assert_eq!(s.poll(now), Ok(Poll::Hold));
        let due = s.next_deadline().unwrap();
        assert_eq!(due, now + ms(300));
        now = due;
        s.on_timer(now);
        assert_eq!(s.take_poll_response(), Some("2".into()));
        now += ms(10);
        s.post_begin(false).unwrap();
        assert_eq!(s.post_body(b"3", now), Ok(vec![]));
    }
    assert!(!s.is_closed());
}

#[test]
fn ping_timeout() {
    // "closes the session upon ping timeout": ping at 300 ms, closed at 500 ms.
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.on_timer(t0 + ms(300));
    assert!(!s.is_closed());
    assert_eq!(s.next_deadline(), Some(t0 + ms(500)));
    s.on_timer(t0 + ms(499));
    assert!(!s.is_closed());
    s.on_timer(t0 + ms(500));
    assert!(s.is_closed());
    assert_eq!(s.close_reason(), Some(&CloseReason::PingTimeout));
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.poll(t0 + ms(501)).unwrap_err().code(), 1);
}

#[test]
fn inputs_see_the_timeouts_that_passed() {
    // A poll at 500 ms finds the session closed even if the caller's timer has not fired yet.
    let t0 = Instant::now();
    let mut s = polling(t0);
    assert_eq!(s.poll(t0 + ms(500)).unwrap_err().code(), 1);
    assert_eq!(s.close_reason(), Some(&CloseReason::PingTimeout));
    let mut s = Session::open(sid(), Transport::WebSocket, config(), t0);
    assert_eq!(
        s.ws_frame(Frame::Text("4late".into()), t0 + ms(600)),
        Err(WsError::Closed(CloseReason::PingTimeout))
    );
    // A due ping is queued before the input is handled.
    let mut s = polling(t0);
    assert_eq!(s.poll(t0 + ms(300)), Ok(Poll::Respond("2".into())));
}

#[test]
fn a_late_timer_does_not_extend_the_ping_timeout() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    // The ping was due at 300 ms; the timer runs at 350 ms: the answer is still due at 500 ms.
    s.on_timer(t0 + ms(350));
    assert_eq!(s.next_deadline(), Some(t0 + ms(500)));
    assert_eq!(s.poll(t0 + ms(505)).unwrap_err().code(), 1);
    // Late but before the answer is due: the session goes on.
    let mut s = polling(t0);
    s.on_timer(t0 + ms(450));
    assert!(!s.is_closed());
    // So late that the answer was due already (a packet at 250 ms had pushed the liveness
    // deadline to 750 ms): closed at once.
    let mut s = Session::open(sid(), Transport::WebSocket, config(), t0);
    s.ws_frame(Frame::Text("4keepalive".into()), t0 + ms(250))
        .unwrap();
    s.on_timer(t0 + ms(520));
    assert_eq!(s.close_reason(), Some(&CloseReason::PingTimeout));
}

#[test]
fn client_ping_closes() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.post_begin(false).unwrap();
    assert_eq!(s.post_body(b"2", t0), Ok(vec![]));
    assert!(matches!(
        s.close_reason(),
        Some(CloseReason::TransportError(_))
    ));
}

#[test]
fn client_close_over_polling() {
    // "forcefully closes the session": the held poll gets `6`, the next one 400.
    let t0 = Instant::now();
    let mut s = polling(t0);
    assert_eq!(s.poll(t0), Ok(Poll::Hold));
    s.post_begin(false).unwrap();
    // Packets after the close are not delivered.
    assert_eq!(s.post_body(b"1\x1e4late", t0), Ok(vec![]));
    assert_eq!(s.take_poll_response(), Some("6".into()));
    assert!(s.is_finished());
    assert_eq!(s.close_reason(), Some(&CloseReason::TransportClose));
    assert_eq!(s.poll(t0).unwrap_err().code(), 1);
}

#[test]
fn a_poll_racing_the_clients_close_gets_noop_once() {
    // "forcefully closes the session" when the POST `1` reaches the server before the GET.
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.post_begin(false).unwrap();
    assert_eq!(s.post_body(b"1", t0), Ok(vec![]));
    assert!(s.is_closed());
    assert!(!s.is_finished());
    assert_eq!(s.poll(t0 + ms(10)), Ok(Poll::Respond("6".into())));
    assert!(s.is_finished());
    assert_eq!(s.poll(t0 + ms(20)).unwrap_err().code(), 1);
    // Nobody polls: the session is forgotten after the linger.
    let mut s = polling(t0);
    s.post_begin(false).unwrap();
    s.post_body(b"1", t0).unwrap();
    let due = s.next_deadline().unwrap();
    s.on_timer(due);
    assert!(s.is_finished());
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.poll(due).unwrap_err().code(), 1);
}

#[test]
fn server_close_over_polling() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.send(text("bye")).unwrap();
    s.close(t0);
    assert_eq!(s.send(text("more")), Err(SendError::Closed));
    assert!(!s.is_closed());
    assert_eq!(s.poll(t0), Ok(Poll::Respond("4bye\x1e1".into())));
    assert!(s.is_closed());
    assert_eq!(s.close_reason(), Some(&CloseReason::ForcedClose));

    // A client that never polls again: closed after close_timeout (or the ping timeout).
    let mut s = polling(t0);
    s.close(t0);
    s.on_timer(s.next_deadline().unwrap());
    assert!(s.is_closed());
}

#[test]
fn aborted_poll_closes() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    assert_eq!(s.poll(t0), Ok(Poll::Hold));
    s.poll_aborted();
    assert!(s.is_closed());
}

#[test]
fn a_client_that_does_not_poll_fills_its_buffer() {
    let t0 = Instant::now();
    let mut s = Session::open(
        sid(),
        Transport::Polling,
        Config {
            max_buffered: 10,
            ..config()
        },
        t0,
    );
    s.send(text("12345")).unwrap();
    s.send(text("67890")).unwrap();
    assert_eq!(s.send(text("x")), Err(SendError::Full(10)));
    // Delivered, the room is back.
    assert!(matches!(s.poll(t0), Ok(Poll::Respond(_))));
    s.send(text("1234567890")).unwrap();
}

#[test]
fn record_separator_refused_over_polling() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    assert_eq!(s.send(text("a\x1eb")), Err(SendError::RecordSeparator));
    let mut ws = Session::open(sid(), Transport::WebSocket, config(), t0);
    assert_eq!(ws.send(text("a\x1eb")), Ok(()));
}

#[test]
fn websocket_session() {
    // "sends and receives a plain text packet" / "a binary packet" / heartbeat / close.
    let t0 = Instant::now();
    let mut s = Session::open(sid(), Transport::WebSocket, config(), t0);
    assert_eq!(s.take_outgoing().len(), 1);
    assert_eq!(
        s.ws_frame(Frame::Text("4hello".into()), t0),
        Ok(WsOutcome::Message(text("hello")))
    );
    let bin = Bytes::from_static(&[1, 2, 3, 4]);
    assert_eq!(
        s.ws_frame(Frame::Binary(bin.clone()), t0),
        Ok(WsOutcome::Message(Data::Binary(bin.clone())))
    );
    s.send(Data::Binary(bin.clone())).unwrap();
    assert_eq!(s.take_outgoing(), vec![Frame::Binary(bin)]);

    s.on_timer(t0 + ms(300));
    assert_eq!(s.take_outgoing(), vec![Frame::Text("2".into())]);
    assert_eq!(
        s.ws_frame(Frame::Text("3".into()), t0 + ms(310)),
        Ok(WsOutcome::Nothing)
    );
    assert_eq!(s.next_deadline(), Some(t0 + ms(610)));

    assert_eq!(
        s.ws_frame(Frame::Text("1".into()), t0 + ms(320)),
        Err(WsError::Closed(CloseReason::TransportClose))
    );
    assert!(s.is_closed());
}

#[test]
fn websocket_invalid_packet_and_timeout() {
    let t0 = Instant::now();
    let mut s = Session::open(sid(), Transport::WebSocket, config(), t0);
    assert_eq!(
        s.ws_frame(Frame::Text("abc".into()), t0),
        Err(WsError::Closed(CloseReason::ParseError))
    );

    // "closes the session upon ping timeout": a client that never pongs.
    let mut s = Session::open(sid(), Transport::WebSocket, config(), t0);
    while let Some(due) = s.next_deadline() {
        s.on_timer(due);
    }
    assert_eq!(s.close_reason(), Some(&CloseReason::PingTimeout));
}

#[test]
fn server_close_over_websocket() {
    let t0 = Instant::now();
    let mut s = Session::open(sid(), Transport::WebSocket, config(), t0);
    s.take_outgoing();
    s.send(text("bye")).unwrap();
    s.close(t0);
    assert_eq!(
        s.take_outgoing(),
        vec![Frame::Text("4bye".into()), Frame::Text("1".into())]
    );
    assert!(s.is_closed());
}

#[test]
fn upgrade() {
    // "successfully upgrades from HTTP long-polling to WebSocket"
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.ws_begin(t0).unwrap();
    assert!(s.is_upgrading());
    assert_eq!(
        s.ws_frame(Frame::Text("2probe".into()), t0),
        Ok(WsOutcome::Reply(Frame::Text("3probe".into())))
    );
    // The poll after the probe ends with a noop.
    assert_eq!(s.poll(t0), Ok(Poll::Respond("6".into())));
    assert_eq!(
        s.ws_frame(Frame::Text("5".into()), t0),
        Ok(WsOutcome::Upgraded)
    );
    assert_eq!(s.transport(), Transport::WebSocket);
    assert_eq!(
        s.ws_frame(Frame::Text("4hello".into()), t0),
        Ok(WsOutcome::Message(text("hello")))
    );
    s.send(text("hello")).unwrap();
    assert_eq!(s.take_outgoing(), vec![Frame::Text("4hello".into())]);
}

#[test]
fn probe_answers_the_held_poll_and_keeps_the_outbox_in_order() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    assert_eq!(s.poll(t0), Ok(Poll::Hold));
    s.ws_begin(t0).unwrap();
    s.ws_frame(Frame::Text("2probe".into()), t0).unwrap();
    assert_eq!(s.take_poll_response(), Some("6".into()));
    // Data queued before `5` goes out on the WebSocket after it.
    s.send(text("queued")).unwrap();
    assert_eq!(s.take_outgoing(), vec![]);
    s.ws_frame(Frame::Text("5".into()), t0).unwrap();
    assert_eq!(s.take_outgoing(), vec![Frame::Text("4queued".into())]);
}

#[test]
fn after_upgrade_polling_and_second_websocket_are_refused() {
    // "ignores HTTP requests with same sid after upgrade" / "ignores WebSocket connection with same
    // sid after upgrade"
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.ws_begin(t0).unwrap();
    s.ws_frame(Frame::Text("2probe".into()), t0).unwrap();
    s.ws_frame(Frame::Text("5".into()), t0).unwrap();
    let e = s.poll(t0).unwrap_err();
    assert_eq!((e.status(), e.code()), (400, 3));
    assert_eq!(s.post_begin(false).unwrap_err().code(), 3);
    assert_eq!(s.ws_begin(t0), Err(BadRequest::AlreadyUpgraded.into()));
    assert!(!s.is_closed());
    assert_eq!(
        s.ws_frame(Frame::Text("4hello".into()), t0),
        Ok(WsOutcome::Message(text("hello")))
    );
}

#[test]
fn second_websocket_while_probing_is_refused() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.ws_begin(t0).unwrap();
    assert_eq!(s.ws_begin(t0), Err(BadRequest::AlreadyUpgraded.into()));
}

#[test]
fn bad_probe_is_abandoned_and_polling_goes_on() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.ws_begin(t0).unwrap();
    assert!(matches!(
        s.ws_frame(Frame::Text("4hello".into()), t0),
        Err(WsError::ProbeFailed(_))
    ));
    assert!(!s.is_upgrading());
    assert_eq!(s.transport(), Transport::Polling);
    assert_eq!(s.poll(t0), Ok(Poll::Hold));
    // A new probe may follow.
    s.ws_begin(t0).unwrap();
    s.ws_closed();
    assert!(!s.is_upgrading());
    assert!(!s.is_closed());
}

#[test]
fn upgrade_timeout() {
    let t0 = Instant::now();
    let mut s = Session::open(
        sid(),
        Transport::Polling,
        Config {
            upgrade_timeout: ms(100),
            ..config()
        },
        t0,
    );
    s.ws_begin(t0).unwrap();
    assert_eq!(s.next_deadline(), Some(t0 + ms(100)));
    s.on_timer(t0 + ms(100));
    assert!(s.take_probe_abandoned());
    assert!(!s.take_probe_abandoned());
    assert!(!s.is_upgrading());
    assert!(!s.is_closed());
}

#[test]
fn upgraded_websocket_closing_closes_the_session() {
    let t0 = Instant::now();
    let mut s = polling(t0);
    s.ws_begin(t0).unwrap();
    s.ws_frame(Frame::Text("2probe".into()), t0).unwrap();
    s.ws_frame(Frame::Text("5".into()), t0).unwrap();
    s.ws_closed();
    assert!(s.is_closed());
    assert_eq!(s.close_reason(), Some(&CloseReason::TransportClose));
}
