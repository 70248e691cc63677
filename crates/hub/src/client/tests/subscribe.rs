//! `subscribe` and `unsubscribe` (docs/protocol.md, subscribe, Recovery, Private channels,
//! unsubscribe, Unsubscribe codes): the result's fields, every refusal, recovery with the same and
//! another epoch and from a position that left the history, join/leave pushes, and the server's
//! unsubscribe pushes 2000, 2500 and 2501.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_auth::{AuthConfig, Verifier};
use switchboard_engine::MemoryEngine;
use switchboard_protocol::DisconnectCode;

use super::{Conn, at, config, faulty_node, node, node_with, pushes, server_publish, token};
use crate::node::Node;
use crate::receipt::{Receipt, Receipts};
use crate::session::{Control, Signal};

#[tokio::test]
async fn subscribe_answers_the_streams_position_and_pushes_follow() {
    let node = node();
    let pos = server_publish(&node, "chat:a", json!("before")).await;
    let mut c = Conn::anonymous(&node).await;
    let result = c.ok("subscribe", json!({"channel": "chat:a"})).await;
    assert_eq!(
        result,
        json!({"epoch": pos.epoch, "offset": 1, "recoverable": true})
    );
    server_publish(&node, "chat:a", json!({"text": "hi"})).await;
    let got = c.drain();
    assert_eq!(
        got,
        [json!({"pub": {"channel": "chat:a", "offset": 2, "data": {"text": "hi"}}})]
    );
    // Without history: no position, offsets 0; a namespace without recover is not recoverable.
    assert_eq!(
        c.ok("subscribe", json!({"channel": "live:a"})).await,
        json!({})
    );
    server_publish(&node, "live:a", json!(1)).await;
    assert_eq!(pushes(&c.drain(), "pub")[0]["offset"], 0);
    let result = c.ok("subscribe", json!({"channel": "closed:a"})).await;
    assert_eq!(result["offset"], 0);
    assert!(result.get("recoverable").is_none(), "{result}");
}

#[tokio::test]
async fn subscribe_refusals_102_105_106_107() {
    let mut config = config();
    config.client.max_channels = 2;
    let node = node_with(config);
    let mut c = Conn::anonymous(&node).await;
    assert_eq!(
        c.err("subscribe", json!({"channel": "nons:a"})).await,
        (102, Ok(()))
    );
    assert_eq!(
        c.err("subscribe", json!({"channel": ""})).await,
        (107, Ok(()))
    );
    c.ok("subscribe", json!({"channel": "chat:a"})).await;
    assert_eq!(
        c.err("subscribe", json!({"channel": "chat:a"})).await,
        (105, Ok(()))
    );
    c.ok("subscribe", json!({"channel": "chat:b"})).await;
    assert_eq!(
        c.err("subscribe", json!({"channel": "chat:c"})).await,
        (106, Ok(()))
    );
    // Leaving one makes room.
    c.ok("unsubscribe", json!({"channel": "chat:a"})).await;
    c.ok("subscribe", json!({"channel": "chat:c"})).await;
}

#[tokio::test]
async fn unsubscribe_answers_empty_whether_subscribed_or_not_and_stops_pushes() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    assert_eq!(
        c.ok("unsubscribe", json!({"channel": "chat:a"})).await,
        json!({})
    );
    c.ok("subscribe", json!({"channel": "chat:a"})).await;
    assert_eq!(node.subscriber_count("chat:a"), 1);
    assert_eq!(
        c.ok("unsubscribe", json!({"channel": "chat:a"})).await,
        json!({})
    );
    assert_eq!(node.subscriber_count("chat:a"), 0);
    server_publish(&node, "chat:a", json!(1)).await;
    assert!(c.drain().is_empty());
}

#[tokio::test]
async fn a_private_channel_needs_a_subscription_token_for_this_user_and_channel() {
    let node = node();
    let mut c = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    let sub_token = |sub: &str, channel: &str, exp: Option<u64>| {
        let mut claims = json!({"sub": sub, "channel": channel});
        if let Some(exp) = exp {
            claims["exp"] = json!(exp);
        }
        token(claims)
    };
    assert_eq!(
        c.err("subscribe", json!({"channel": "secret:a"})).await,
        (103, Ok(()))
    );
    for wrong in [
        sub_token("bob", "secret:a", None),
        sub_token("ann", "secret:b", None),
        "garbage".to_owned(),
    ] {
        let (code, flow) = c
            .err("subscribe", json!({"channel": "secret:a", "token": wrong}))
            .await;
        assert_eq!((code, flow), (103, Ok(())));
    }
    let expired = sub_token("ann", "secret:a", Some(at(-60)));
    assert_eq!(
        c.err(
            "subscribe",
            json!({"channel": "secret:a", "token": expired})
        )
        .await,
        (109, Ok(()))
    );
    let good = sub_token("ann", "secret:a", None);
    c.ok("subscribe", json!({"channel": "secret:a", "token": good}))
        .await;
}

#[tokio::test]
async fn a_subscription_tokens_exp_ends_the_subscription_with_2501() {
    // A minute of leeway lets a token that expired a moment ago subscribe, so that its expiry is
    // due at once, without the test waiting for the clock.
    let verifier = Verifier::new(&AuthConfig {
        hmac_secret: Some(super::SECRET.into()),
        leeway_secs: 60,
        ..Default::default()
    })
    .unwrap();
    let node = Node::new(Arc::new(MemoryEngine::new()), config(), Some(verifier));
    let mut c = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    let t = token(json!({"sub": "ann", "channel": "secret:a", "exp": at(-5)}));
    c.ok("subscribe", json!({"channel": "secret:a", "token": t}))
        .await;
    let lasting = token(json!({"sub": "ann", "channel": "secret:b", "exp": at(3600)}));
    c.ok(
        "subscribe",
        json!({"channel": "secret:b", "token": lasting}),
    )
    .await;
    assert_eq!(node.expire_clients(at(-10)), 0, "not due yet");
    assert_eq!(node.expire_clients(at(0)), 1);
    assert_eq!(c.signal(), Some(Signal::Control));
    c.apply().await;
    assert_eq!(
        c.drain(),
        [
            json!({"unsubscribe": {"channel": "secret:a", "code": 2501, "reason": "subscription expired"}})
        ]
    );
    assert_eq!(node.subscriber_count("secret:a"), 0);
    assert_eq!(node.subscriber_count("secret:b"), 1, "the other one lasts");
    // Access ended with it.
    assert_eq!(
        c.err("history", json!({"channel": "secret:a"})).await,
        (103, Ok(()))
    );
    c.ok("history", json!({"channel": "secret:b"})).await;
}

#[tokio::test]
async fn recover_with_the_same_epoch_brings_every_missed_publication() {
    let node = node();
    let first = server_publish(&node, "chat:r", json!(1)).await;
    for n in 2..=4 {
        server_publish(&node, "chat:r", json!(n)).await;
    }
    let mut c = Conn::anonymous(&node).await;
    let result = c
        .ok(
            "subscribe",
            json!({"channel": "chat:r", "recover": true, "epoch": first.epoch, "offset": 1}),
        )
        .await;
    assert_eq!(result["recovered"], true);
    assert_eq!(result["offset"], 4);
    assert_eq!(result["epoch"], json!(first.epoch));
    assert_eq!(
        result["publications"],
        json!([{"offset": 2, "data": 2}, {"offset": 3, "data": 3}, {"offset": 4, "data": 4}])
    );
    // Nothing missed: recovered, no publications.
    let mut c = Conn::anonymous(&node).await;
    let result = c
        .ok(
            "subscribe",
            json!({"channel": "chat:r", "recover": true, "epoch": first.epoch, "offset": 4}),
        )
        .await;
    assert_eq!(result["recovered"], true);
    assert!(result.get("publications").is_none(), "{result}");
}

#[tokio::test]
async fn recover_from_another_epoch_or_a_lost_position_is_recovered_false() {
    let node = node();
    let pos = server_publish(&node, "short:r", json!(1)).await;
    for n in 2..=5 {
        server_publish(&node, "short:r", json!(n)).await;
    }
    let mut c = Conn::anonymous(&node).await;
    let other_epoch = c
        .ok(
            "subscribe",
            json!({"channel": "short:r", "recover": true, "epoch": "not-it", "offset": 4}),
        )
        .await;
    assert_eq!(
        other_epoch,
        json!({"epoch": pos.epoch, "offset": 5, "recoverable": true, "recovered": false})
    );
    // History keeps 2: publications 2 and 3 are gone.
    let mut c = Conn::anonymous(&node).await;
    let lost = c
        .ok(
            "subscribe",
            json!({"channel": "short:r", "recover": true, "epoch": pos.epoch, "offset": 1}),
        )
        .await;
    assert_eq!(lost["recovered"], false);
    assert!(lost.get("publications").is_none(), "{lost}");
    // A position ahead of the stream is not recoverable either.
    let mut c = Conn::anonymous(&node).await;
    let ahead = c
        .ok(
            "subscribe",
            json!({"channel": "short:r", "recover": true, "epoch": pos.epoch, "offset": 9}),
        )
        .await;
    assert_eq!(ahead["recovered"], false);
    // A namespace without history cannot recover at all.
    let none = c
        .ok(
            "subscribe",
            json!({"channel": "live:r", "recover": true, "epoch": "e", "offset": 1}),
        )
        .await;
    assert_eq!(none, json!({"recovered": false}));
}

#[tokio::test]
async fn join_and_leave_pushes_reach_the_other_subscribers() {
    let node = node();
    let mut a = Conn::anonymous(&node).await;
    a.ok("subscribe", json!({"channel": "chat:p"})).await;
    a.drain();
    let mut b = Conn::connected(
        &node,
        json!({"token": token(json!({"sub": "bob", "info": {"n": 1}}))}),
    )
    .await;
    b.ok("subscribe", json!({"channel": "chat:p"})).await;
    let info = json!({"client": b.client.id(), "user": "bob", "info": {"n": 1}});
    assert_eq!(
        a.drain(),
        [json!({"join": {"channel": "chat:p", "info": info}})]
    );
    b.ok("unsubscribe", json!({"channel": "chat:p"})).await;
    assert_eq!(
        a.drain(),
        [json!({"leave": {"channel": "chat:p", "info": info}})]
    );
    // No join_leave in the namespace: no pushes.
    a.ok("subscribe", json!({"channel": "closed:x"})).await;
    b.ok("subscribe", json!({"channel": "closed:x"})).await;
    assert!(pushes(&a.drain(), "join").is_empty());
}

#[tokio::test]
async fn the_servers_orders_subscribe_and_unsubscribe_with_pushes() {
    let node = node();
    let mut c = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    server_publish(&node, "chat:o", json!(1)).await;
    let receipts = Receipts::default();
    assert_eq!(
        node.subscribe_clients("ann", None, "chat:o", &receipts.receipt()),
        1
    );
    assert_eq!(c.signal(), Some(Signal::Control));
    c.apply().await;
    // The order's receipt is signed: the API would answer now, with the client in the channel.
    assert_eq!(receipts.wait(Duration::from_secs(60)).await, 1);
    let got = c.drain();
    let subscribed = pushes(&got, "subscribe");
    assert_eq!(subscribed.len(), 1, "{got:?}");
    assert_eq!(subscribed[0]["channel"], "chat:o");
    assert_eq!(subscribed[0]["offset"], 1);
    assert_eq!(node.subscriber_count("chat:o"), 1);
    // A second order for the same channel changes nothing, and is signed as done.
    let receipts = Receipts::default();
    c.client
        .session()
        .control(Control::Subscribe("chat:o".into(), receipts.receipt()));
    c.apply().await;
    assert!(c.drain().is_empty());
    assert_eq!(receipts.wait(Duration::from_secs(60)).await, 1);
    let receipts = Receipts::default();
    assert_eq!(
        node.unsubscribe_clients("ann", None, "chat:o", &receipts.receipt()),
        1
    );
    c.apply().await;
    assert_eq!(receipts.wait(Duration::from_secs(60)).await, 1);
    assert_eq!(
        c.drain(),
        [
            json!({"unsubscribe": {"channel": "chat:o", "code": 2000, "reason": "server unsubscribe"}})
        ]
    );
    assert_eq!(node.subscriber_count("chat:o"), 0);
    // The server's subscription grants a private channel, as a token would.
    node.subscribe_clients("ann", None, "secret:o", &Receipt::none());
    c.apply().await;
    c.drain();
    c.ok("history", json!({"channel": "secret:o"})).await;
    // And the server's disconnect reaches the session.
    assert_eq!(
        node.disconnect_clients("ann", None, DisconnectCode::ForceDisconnect),
        1
    );
    assert_eq!(
        c.signal(),
        Some(Signal::Disconnect(DisconnectCode::ForceDisconnect))
    );
}

#[tokio::test]
async fn a_gap_in_the_stream_unsubscribes_with_2500_and_recover_says_what_follows() {
    let node = node();
    let pos = server_publish(&node, "chat:g", json!(1)).await;
    let mut c = Conn::anonymous(&node).await;
    c.ok("subscribe", json!({"channel": "chat:g"})).await;
    node.hub.gap("chat:g");
    assert_eq!(
        c.drain(),
        [
            json!({"unsubscribe": {"channel": "chat:g", "code": 2500, "reason": "insufficient state"}})
        ]
    );
    // The client forgot the channel: it can subscribe again, recovering.
    let result = c
        .ok(
            "subscribe",
            json!({"channel": "chat:g", "recover": true, "epoch": pos.epoch, "offset": 1}),
        )
        .await;
    assert_eq!(result["recovered"], true);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected_as_slow_3008() {
    let mut config = config();
    config.client.queue_bytes = 4096;
    let node = node_with(config);
    let mut c = Conn::anonymous(&node).await;
    c.ok("subscribe", json!({"channel": "chat:s"})).await;
    for _ in 0..3 {
        server_publish(&node, "chat:s", json!("x".repeat(1500))).await;
    }
    assert_eq!(c.signal(), Some(Signal::Disconnect(DisconnectCode::Slow)));
}

/// A second subscriber of a channel that joins while the first is still subscribing the node with the
/// engine reads the channel's position only once that is done: reading it before, a publication in
/// between would reach neither its history read nor, live, the node (found by the NATS fault test).
#[tokio::test]
async fn a_subscriber_joining_while_the_node_subscribes_waits_for_the_engine() {
    let (node, engine) = faulty_node();
    let mut a = Conn::anonymous(&node).await;
    let mut b = Conn::anonymous(&node).await;
    let held = engine.hold_subscribe.write().await;
    let first = a.ok("subscribe", json!({"channel": "chat:race"}));
    let second = b.ok("subscribe", json!({"channel": "chat:race"}));
    tokio::pin!(first, second);
    let wait = std::time::Duration::from_millis(50);
    assert!(
        tokio::time::timeout(wait, &mut first).await.is_err(),
        "the engine holds the first"
    );
    assert!(
        tokio::time::timeout(wait, &mut second).await.is_err(),
        "the second must wait for the node's engine subscription"
    );
    drop(held);
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first["offset"], second["offset"]);
}

#[tokio::test]
async fn those_who_waited_for_a_failed_engine_subscription_fail_too_and_leave_nothing() {
    let (node, engine) = faulty_node();
    let mut a = Conn::anonymous(&node).await;
    let mut b = Conn::anonymous(&node).await;
    let held = engine.hold_subscribe.write().await;
    let ((first, _), (second, _)) = {
        let first = a.call("subscribe", json!({"channel": "chat:race"}));
        let second = b.call("subscribe", json!({"channel": "chat:race"}));
        tokio::pin!(first, second);
        let wait = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, &mut first).await.is_err());
        assert!(tokio::time::timeout(wait, &mut second).await.is_err());
        engine
            .down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(held);
        tokio::join!(first, second)
    };
    assert_eq!(first["error"]["code"], 100, "{first}");
    assert_eq!(second["error"]["code"], 100, "{second}");
    assert_eq!(node.subscriber_count("chat:race"), 0);
    engine
        .down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    a.ok("subscribe", json!({"channel": "chat:race"})).await;
}
