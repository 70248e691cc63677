//! `publish` and `rpc` without a proxy (docs/protocol.md, publish, rpc, Private channels, Binary
//! payloads): the result, what subscribers get, the namespace's and private channels' rules, and
//! idempotency keys per user, shared with the server API's road.

use serde_json::json;

use super::{Conn, node, pushes, server_publish, token};
use crate::node::PublishOptions;

#[tokio::test]
async fn publish_answers_the_position_and_subscribers_get_it_with_the_publishers_info() {
    let node = node();
    let mut sub = Conn::anonymous(&node).await;
    sub.ok("subscribe", json!({"channel": "chat:p"})).await;
    let mut c = Conn::connected(
        &node,
        json!({"token": token(json!({"sub": "ann", "info": {"name": "Ann"}}))}),
    )
    .await;
    let result = c
        .ok(
            "publish",
            json!({"channel": "chat:p", "data": {"text": "hi"}}),
        )
        .await;
    let epoch = result["epoch"].as_str().unwrap().to_owned();
    assert_eq!(result, json!({"epoch": epoch, "offset": 1}));
    assert_eq!(
        sub.drain(),
        [json!({"pub": {
            "channel": "chat:p",
            "offset": 1,
            "data": {"text": "hi"},
            "info": {"client": c.client.id(), "user": "ann", "info": {"name": "Ann"}},
        }})]
    );
    // `null` is data like any other.
    let result = c
        .ok("publish", json!({"channel": "chat:p", "data": null}))
        .await;
    assert_eq!(result["offset"], 2);
    assert_eq!(pushes(&sub.drain(), "pub")[0]["data"], json!(null));
}

#[tokio::test]
async fn binary_payloads_stay_binary() {
    let node = node();
    let mut sub = Conn::anonymous(&node).await;
    sub.ok("subscribe", json!({"channel": "chat:b"})).await;
    let mut c = Conn::anonymous(&node).await;
    c.ok("publish", json!({"channel": "chat:b", "b64data": "AJ//"}))
        .await;
    let got = sub.drain();
    assert_eq!(pushes(&got, "pub")[0]["b64data"], "AJ//", "{got:?}");
    assert!(pushes(&got, "pub")[0].get("data").is_none());
    let h = c.ok("history", json!({"channel": "chat:b"})).await;
    assert_eq!(h["publications"][0]["b64data"], "AJ//");
    // Bad base64, or both payloads, or none: 107.
    for params in [
        json!({"channel": "chat:b", "b64data": "!!"}),
        json!({"channel": "chat:b", "b64data": "AA==", "data": 1}),
        json!({"channel": "chat:b"}),
    ] {
        assert_eq!(c.err("publish", params).await, (107, Ok(())));
    }
}

#[tokio::test]
async fn without_history_the_offset_is_0_and_no_epoch() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    let result = c
        .ok("publish", json!({"channel": "live:p", "data": 1}))
        .await;
    assert_eq!(result, json!({"offset": 0}));
}

#[tokio::test]
async fn publish_refusals_102_103() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    assert_eq!(
        c.err("publish", json!({"channel": "nons:p", "data": 1}))
            .await,
        (102, Ok(()))
    );
    // The namespace does not allow clients to publish, even subscribed.
    c.ok("subscribe", json!({"channel": "closed:p"})).await;
    assert_eq!(
        c.err("publish", json!({"channel": "closed:p", "data": 1}))
            .await,
        (103, Ok(()))
    );
    assert_eq!(
        c.err("publish", json!({"channel": "default", "data": 1}))
            .await,
        (103, Ok(())),
        "the default namespace allows nothing here"
    );
}

#[tokio::test]
async fn a_private_channel_takes_publications_only_from_its_subscribers() {
    let node = node();
    let mut c = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    let params = json!({"channel": "secret:p", "data": 1});
    assert_eq!(c.err("publish", params.clone()).await, (103, Ok(())));
    let t = token(json!({"sub": "ann", "channel": "secret:p"}));
    c.ok("subscribe", json!({"channel": "secret:p", "token": t}))
        .await;
    assert_eq!(c.ok("publish", params.clone()).await["offset"], 1);
    c.ok("unsubscribe", json!({"channel": "secret:p"})).await;
    assert_eq!(
        c.err("publish", params).await,
        (103, Ok(())),
        "access ends with the subscription"
    );
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_per_user_and_answers_the_first_position() {
    let node = node();
    let mut sub = Conn::anonymous(&node).await;
    sub.ok("subscribe", json!({"channel": "chat:i"})).await;
    let mut ann = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    let mut ann2 = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    let mut bob = Conn::connected(&node, json!({"token": token(json!({"sub": "bob"}))})).await;
    let params = json!({"channel": "chat:i", "data": "once", "idempotency_key": "k1"});
    let first = ann.ok("publish", params.clone()).await;
    assert_eq!(first["offset"], 1);
    // Again, from another connection of the same user: nothing published, the same position.
    assert_eq!(ann.ok("publish", params.clone()).await, first);
    assert_eq!(ann2.ok("publish", params.clone()).await, first);
    assert_eq!(pushes(&sub.drain(), "pub").len(), 1);
    // Another user's key is its own.
    assert_eq!(bob.ok("publish", params.clone()).await["offset"], 2);
    // So is the server API's: neither suppresses the other.
    let opts = PublishOptions {
        idempotency_key: Some("k1".into()),
        ..Default::default()
    };
    let payload = switchboard_protocol::Payload::Json(bytes::Bytes::from_static(b"3"));
    let api = node
        .publish_with("chat:i", payload.clone(), &opts)
        .await
        .unwrap();
    assert_eq!(api.offset, 3);
    assert_eq!(
        node.publish_with("chat:i", payload, &opts)
            .await
            .unwrap()
            .offset,
        3
    );
    // The same key in another channel publishes there.
    let other = json!({"channel": "chat:j", "data": 1, "idempotency_key": "k1"});
    assert_eq!(ann.ok("publish", other).await["offset"], 1);
    // A key of 0 or more than 128 bytes: 107.
    for key in [String::new(), "k".repeat(129)] {
        let bad = json!({"channel": "chat:i", "data": 1, "idempotency_key": key});
        assert_eq!(ann.err("publish", bad).await, (107, Ok(())));
    }
}

#[tokio::test]
async fn publish_and_server_publish_share_one_stream() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    server_publish(&node, "chat:s", json!(1)).await;
    assert_eq!(
        c.ok("publish", json!({"channel": "chat:s", "data": 2}))
            .await["offset"],
        2
    );
    let h = c.ok("history", json!({"channel": "chat:s"})).await;
    let pubs = h["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 2, "{h}");
    assert_eq!(
        (&pubs[0]["offset"], &pubs[0]["data"]),
        (&json!(1), &json!(1))
    );
    assert!(
        pubs[0].get("info").is_none(),
        "the server publishes as nobody"
    );
    assert_eq!(
        (&pubs[1]["offset"], &pubs[1]["data"]),
        (&json!(2), &json!(2))
    );
    assert_eq!(
        pubs[1]["info"]["client"],
        c.client.id(),
        "the client as itself"
    );
}

#[tokio::test]
async fn rpc_without_a_handler_is_108() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    assert_eq!(
        c.err("rpc", json!({"method": "sum", "data": [1, 2]})).await,
        (108, Ok(()))
    );
    assert_eq!(
        c.err("rpc", json!({"data": 1})).await,
        (107, Ok(())),
        "method is required"
    );
}

/// Fills `channel` with sessions of no client until the hub fans it out in runtime tasks.
fn crowd(node: &std::sync::Arc<crate::Node>, channel: &str) -> Vec<std::sync::Arc<crate::Session>> {
    let crowd = (0..=crate::hub::INLINE_MAX as u64 * 2)
        .map(|k| {
            let s =
                std::sync::Arc::new(crate::Session::new(1_000_000 + k, format!("x{k}"), 1 << 20));
            node.hub.add(channel, std::sync::Arc::clone(&s));
            s
        })
        .collect::<Vec<_>>();
    // No client subscribed the node with the engine: say it is done, as the first one would.
    node.hub.set_listening(channel, crate::Listening::Yes);
    crowd
}

#[tokio::test]
async fn in_a_big_channel_the_publisher_still_gets_its_own_publication_before_the_reply() {
    let node = node();
    let crowd = crowd(&node, "chat:big");
    let mut c = Conn::anonymous(&node).await;
    c.ok("subscribe", json!({"channel": "chat:big"})).await;
    let id = c
        .send("publish", json!({"channel": "chat:big", "data": {"n": 1}}))
        .await;
    let got = c.drain();
    let at = |f: &dyn Fn(&serde_json::Value) -> bool| got.iter().position(f);
    let publication = at(&|m| m["pub"]["data"] == json!({"n": 1}));
    let reply = at(&|m| m["id"] == json!(id));
    assert!(
        publication.is_some() && reply.is_some() && publication < reply,
        "{got:?}"
    );
    // The server API answers without waiting for the audience: on this one-worker runtime nobody
    // else has it when the call returns, and everybody gets it after.
    let before: usize = crowd.iter().map(|s| s.queued_bytes()).sum();
    server_publish(&node, "chat:big", json!({"n": 2})).await;
    assert_eq!(
        crowd.iter().map(|s| s.queued_bytes()).sum::<usize>(),
        before
    );
    for s in &crowd {
        node.hub.settled("chat:big", s.key()).await;
    }
    assert!(crowd.iter().all(|s| s.queued_bytes() > 0));
    node.hub.settled("chat:big", c.client.session().key()).await;
    assert_eq!(pushes(&c.drain(), "pub").len(), 1);
}
