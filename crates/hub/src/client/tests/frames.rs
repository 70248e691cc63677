//! Frames and the rules every command shares (docs/protocol.md, Frames, Errors, Limits): several
//! commands a frame, what ends the connection before and after `connect`, unknown methods,
//! malformed parameters, the JSON rule and the command rate.

use serde_json::json;
use switchboard_protocol::DisconnectCode;

use super::{Conn, config, node, node_with};

#[tokio::test]
async fn before_connect_any_other_command_is_101_and_disconnect_3501() {
    let node = node();
    let mut c = Conn::new(&node);
    let (code, flow) = c.err("subscribe", json!({"channel": "chat:a"})).await;
    assert_eq!((code, flow), (101, Err(DisconnectCode::BadRequest)));
    // An unknown method, or a connect that does not parse, too: the connection must not stay.
    let mut c = Conn::new(&node);
    let (reply, flow) = c.call("nope", json!({})).await;
    assert_eq!(flow, Err(DisconnectCode::BadRequest));
    assert_eq!(reply["error"]["code"], 101);
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("unknown method"), "{message}");
    let mut c = Conn::new(&node);
    let (code, flow) = c.err("connect", json!({"name": 5})).await;
    assert_eq!((code, flow), (101, Err(DisconnectCode::BadRequest)));
}

#[tokio::test]
async fn unreadable_lines_end_the_connection_with_3501_unanswered() {
    let node = node();
    for line in [
        "not json",
        r#"["an array"]"#,
        r#"{"connect":{}}"#,
        r#"{"id":0,"connect":{}}"#,
        r#"{"id":9007199254740992,"connect":{}}"#,
        r#"{"id":"1","connect":{}}"#,
    ] {
        let mut c = Conn::new(&node);
        assert_eq!(
            c.frame(line).await,
            Err(DisconnectCode::BadRequest),
            "{line}"
        );
        assert!(
            c.drain().is_empty(),
            "{line}: nothing to answer without an id"
        );
    }
    // Too deep to read even its id, after connect as before.
    let mut c = Conn::anonymous(&node).await;
    let deep = format!(
        r#"{{"id":2,"publish":{{"channel":"chat:a","data":{}1{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(c.frame(&deep).await, Err(DisconnectCode::BadRequest));
}

#[tokio::test]
async fn after_connect_bad_commands_get_their_own_code_and_the_connection_stays() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    assert_eq!(c.err("nope", json!({})).await, (104, Ok(())));
    assert_eq!(
        c.err("subscribe", json!({"channel": 5})).await,
        (107, Ok(()))
    );
    assert_eq!(c.err("subscribe", json!({})).await, (107, Ok(())));
    // No method, or two.
    c.frame(r#"{"id":40}"#).await.unwrap();
    c.frame(r#"{"id":41,"presence":{"channel":"chat:a"},"history":{"channel":"chat:a"}}"#)
        .await
        .unwrap();
    let codes: Vec<_> = c
        .drain()
        .iter()
        .map(|m| m["error"]["code"].clone())
        .collect();
    assert_eq!(codes, [json!(107), json!(107)]);
    // The JSON rule: a number JavaScript reads as another one, a lone surrogate.
    let (code, flow) = c
        .err(
            "publish",
            json!({"channel": "chat:a", "data": 9_007_199_254_740_993_u64}),
        )
        .await;
    assert_eq!((code, flow), (107, Ok(())));
    c.frame(r#"{"id":50,"publish":{"channel":"chat:a","data":"\ud800"}}"#)
        .await
        .unwrap();
    assert_eq!(c.drain()[0]["error"]["code"], 107);
    // A channel name over 255 bytes.
    let long = format!("chat:{}", "x".repeat(251));
    assert_eq!(
        c.err("subscribe", json!({"channel": long})).await,
        (107, Ok(()))
    );
    // Still connected: a good command works.
    c.ok("subscribe", json!({"channel": "chat:a"})).await;
}

#[tokio::test]
async fn a_connected_client_that_connects_again_is_107_and_3501() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    let (code, flow) = c.err("connect", json!({})).await;
    assert_eq!((code, flow), (107, Err(DisconnectCode::BadRequest)));
}

#[tokio::test]
async fn several_commands_in_one_frame_are_answered_in_order_with_their_pushes() {
    let node = node();
    let mut c = Conn::new(&node);
    let frame = [
        r#"{"id":1,"connect":{"name":"t","version":"1"}}"#,
        "",
        r#"{"id":2,"subscribe":{"channel":"chat:batch"}}"#,
        r#"{"id":3,"publish":{"channel":"chat:batch","data":{"n":1}}}"#,
        r#"{"id":4,"nope":{}}"#,
        r#"{"id":5,"unsubscribe":{"channel":"chat:batch"}}"#,
    ]
    .join("\n");
    c.frame(&frame).await.unwrap();
    let got = c.drain();
    let order: Vec<String> = got
        .iter()
        .map(|m| match m.get("id") {
            Some(id) => format!("{id}"),
            None => m.as_object().unwrap().keys().next().unwrap().clone(),
        })
        .collect();
    // The subscriber's own join push, and its own publication (as any subscriber's), come before
    // the publish reply.
    assert_eq!(order, ["1", "2", "join", "pub", "3", "4", "5"], "{got:?}");
    assert_eq!(got[3]["pub"]["data"], json!({"n": 1}));
    assert_eq!(got[5]["error"]["code"], 104);
    assert_eq!(got[6]["unsubscribe"], json!({}));
}

#[tokio::test]
async fn a_frame_stops_at_the_command_that_ends_the_connection() {
    let node = node();
    let mut c = Conn::new(&node);
    let frame = [
        r#"{"id":1,"connect":{}}"#,
        r#"{"id":2,"connect":{}}"#,
        r#"{"id":3,"subscribe":{"channel":"chat:a"}}"#,
    ]
    .join("\n");
    assert_eq!(c.frame(&frame).await, Err(DisconnectCode::BadRequest));
    let ids: Vec<_> = c.drain().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, [json!(1), json!(2)], "command 3 is never run");
}

#[tokio::test]
async fn over_the_command_rate_each_command_is_111_and_the_connection_stays() {
    let mut config = config();
    config.client.max_commands_per_second = 1;
    let node = node_with(config);
    // A burst of twice the rate passes: connect and one more.
    let mut c = Conn::anonymous(&node).await;
    c.ok("subscribe", json!({"channel": "chat:a"})).await;
    let (reply, flow) = c.call("history", json!({"channel": "chat:a"})).await;
    assert_eq!(flow, Ok(()));
    assert_eq!(reply["error"]["code"], 111);
    assert_eq!(reply["error"]["temporary"], true, "{reply}");
}

#[tokio::test]
async fn errors_say_whether_they_are_temporary() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    let (reply, _) = c.call("subscribe", json!({"channel": "nons:a"})).await;
    assert_eq!(
        reply["error"],
        json!({"code": 102, "message": "unknown channel", "temporary": false})
    );
}
