//! `history`, `presence` and `presence_stats` (docs/protocol.md), and error 100 for every command
//! that reaches a failing engine: what the client is told, and what it is not.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::{Conn, faulty_node, node, server_publish, token};

fn offsets(h: &Value) -> Vec<u64> {
    h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn history_with_limit_since_and_reverse() {
    let node = node();
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = server_publish(&node, "chat:h", json!(n)).await.epoch;
    }
    let mut c = Conn::anonymous(&node).await;
    let all = c.ok("history", json!({"channel": "chat:h"})).await;
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5]);
    assert_eq!(all["epoch"], json!(epoch));
    assert_eq!(all["offset"], 5);
    assert_eq!(all["publications"][0], json!({"offset": 1, "data": 1}));
    let q = |params: Value| {
        let mut p = json!({"channel": "chat:h"});
        p.as_object_mut()
            .unwrap()
            .extend(params.as_object().unwrap().clone());
        p
    };
    let limited = c.ok("history", q(json!({"limit": 2}))).await;
    assert_eq!(offsets(&limited), [1, 2]);
    let none = c.ok("history", q(json!({"limit": 0}))).await;
    assert_eq!(offsets(&none), Vec::<u64>::new());
    assert_eq!(none["offset"], 5, "only the position");
    let since = c
        .ok(
            "history",
            q(json!({"since": {"epoch": epoch, "offset": 3}})),
        )
        .await;
    assert_eq!(offsets(&since), [4, 5]);
    let reverse = c
        .ok("history", q(json!({"reverse": true, "limit": 2})))
        .await;
    assert_eq!(offsets(&reverse), [5, 4]);
    // A channel never published to: empty, at offset 0.
    let empty = c.ok("history", json!({"channel": "chat:none"})).await;
    assert_eq!((offsets(&empty), &empty["offset"]), (vec![], &json!(0)));
}

#[tokio::test]
async fn history_refusals_102_103_108_112() {
    let node = node();
    server_publish(&node, "chat:h", json!(1)).await;
    let mut c = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    let mut err = async |channel: &str, extra: Value| {
        let mut p = json!({"channel": channel});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c.err("history", p).await
    };
    assert_eq!(err("nons:h", json!({})).await, (102, Ok(())));
    assert_eq!(
        err("live:h", json!({})).await,
        (108, Ok(())),
        "no history kept"
    );
    assert_eq!(
        err("closed:h", json!({})).await,
        (103, Ok(())),
        "not for clients"
    );
    assert_eq!(
        err("secret:h", json!({})).await,
        (103, Ok(())),
        "private, not subscribed"
    );
    let since = json!({"since": {"epoch": "another", "offset": 0}});
    assert_eq!(err("chat:h", since).await, (112, Ok(())));
    assert_eq!(err("chat:h", json!({"limit": -1})).await, (107, Ok(())));
}

#[tokio::test]
async fn presence_lists_the_subscribers_and_presence_stats_counts_them() {
    let node = node();
    let mut ann = Conn::connected(
        &node,
        json!({"token": token(json!({"sub": "ann", "info": {"n": 1}}))}),
    )
    .await;
    let mut ann2 = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    let mut bob = Conn::connected(&node, json!({"token": token(json!({"sub": "bob"}))})).await;
    for c in [&mut ann, &mut ann2, &mut bob] {
        c.ok("subscribe", json!({"channel": "chat:w"})).await;
    }
    let p = ann.ok("presence", json!({"channel": "chat:w"})).await;
    let presence = p["presence"].as_object().unwrap();
    assert_eq!(presence.len(), 3, "{p}");
    assert_eq!(
        presence[ann.client.id()],
        json!({"client": ann.client.id(), "user": "ann", "info": {"n": 1}})
    );
    assert_eq!(presence[bob.client.id()]["user"], "bob");
    let stats = ann.ok("presence_stats", json!({"channel": "chat:w"})).await;
    assert_eq!(stats, json!({"num_clients": 3, "num_users": 2}));
    bob.ok("unsubscribe", json!({"channel": "chat:w"})).await;
    let stats = ann.ok("presence_stats", json!({"channel": "chat:w"})).await;
    assert_eq!(stats, json!({"num_clients": 2, "num_users": 1}));
}

#[tokio::test]
async fn presence_refusals_102_103_108() {
    let node = node();
    let mut c = Conn::anonymous(&node).await;
    for method in ["presence", "presence_stats"] {
        assert_eq!(
            c.err(method, json!({"channel": "nons:w"})).await,
            (102, Ok(()))
        );
        assert_eq!(
            c.err(method, json!({"channel": "chat:w"})).await,
            (103, Ok(())),
            "{method}: subscribe first"
        );
        assert_eq!(
            c.err(method, json!({"channel": "secret:w"})).await,
            (103, Ok(())),
            "{method}: private"
        );
        assert_eq!(
            c.err(method, json!({"channel": "live:w"})).await,
            (108, Ok(())),
            "{method}: no presence kept"
        );
    }
}

#[tokio::test]
async fn an_engine_failure_is_a_temporary_100_that_names_no_internals() {
    let (node, engine) = faulty_node();
    let mut c = Conn::anonymous(&node).await;
    c.ok("subscribe", json!({"channel": "chat:f"})).await;
    engine.down.store(true, Ordering::Relaxed);
    for (method, params) in [
        ("publish", json!({"channel": "chat:f", "data": 1})),
        ("history", json!({"channel": "chat:f"})),
        ("presence", json!({"channel": "chat:f"})),
        ("presence_stats", json!({"channel": "chat:f"})),
        ("subscribe", json!({"channel": "chat:g"})),
    ] {
        let (reply, flow) = c.call(method, params).await;
        assert_eq!(flow, Ok(()), "{method}");
        assert_eq!(reply["error"]["code"], 100, "{method}: {reply}");
        assert_eq!(reply["error"]["temporary"], true);
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(!message.contains("10.0.0.7"), "{method}: {message}");
    }
    // The failed subscribe left nothing behind; once the engine is back it works.
    assert_eq!(node.subscriber_count("chat:g"), 0);
    engine.down.store(false, Ordering::Relaxed);
    c.ok("subscribe", json!({"channel": "chat:g"})).await;
}
