//! `connect` and `refresh` (docs/protocol.md, connect, Tokens, refresh): the result's fields, the
//! anonymous rule, every way a token is refused with its error and disconnect code, the token's
//! server-side channels, and the connection's expiry.

use serde_json::{Value, json};
use std::sync::Arc;
use switchboard_auth::{AuthConfig, Verifier};
use switchboard_engine::MemoryEngine;
use switchboard_protocol::DisconnectCode;

use super::{Conn, at, config, node, node_with, pushes, server_publish, token};
use crate::node::Node;
use crate::session::Signal;

#[tokio::test]
async fn an_anonymous_connect_answers_the_documented_fields() {
    let node = node();
    let mut c = Conn::new(&node);
    let reply = c
        .ok(
            "connect",
            json!({"name": "js", "version": "1.2.3", "data": {"x": 1}}),
        )
        .await;
    let obj = reply.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["client", "ping", "subs", "version"], "{reply}");
    assert_eq!(reply["client"], c.client.id());
    assert_eq!(reply["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(reply["ping"], 25);
    assert_eq!(reply["subs"], json!({}));
    assert_eq!(c.client.user(), "");
    assert_eq!(node.client_count(), 1);
}

#[tokio::test]
async fn without_anonymous_access_a_connect_needs_a_token() {
    let mut config = config();
    config.client.allow_anonymous = false;
    let node = node_with(config);
    let mut c = Conn::new(&node);
    assert_eq!(
        c.err("connect", json!({})).await,
        (101, Err(DisconnectCode::InvalidToken))
    );
    // A token naming no user is anonymous, so refused too (no `sub`, or an empty one).
    for claims in [json!({}), json!({"sub": ""})] {
        let mut c = Conn::new(&node);
        let (code, flow) = c.err("connect", json!({"token": token(claims)})).await;
        assert_eq!((code, flow), (101, Err(DisconnectCode::InvalidToken)));
    }
    assert_eq!(node.client_count(), 0);
    // A user's token is fine.
    let c = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    assert_eq!(c.client.user(), "ann");
}

#[tokio::test]
async fn with_anonymous_access_a_token_without_user_connects_anonymously() {
    let node = node();
    let c = Conn::connected(&node, json!({"token": token(json!({"sub": ""}))})).await;
    assert_eq!(c.client.user(), "");
}

#[tokio::test]
async fn a_token_that_does_not_verify_is_101_and_3500() {
    let node = node();
    let forged = {
        let t = token(json!({"sub": "ann"}));
        let (rest, _sig) = t.rsplit_once('.').unwrap();
        format!("{rest}.AAAA")
    };
    for bad in ["not-a-jwt".to_owned(), forged] {
        let mut c = Conn::new(&node);
        let (code, flow) = c.err("connect", json!({"token": bad})).await;
        assert_eq!(
            (code, flow),
            (101, Err(DisconnectCode::InvalidToken)),
            "{bad}"
        );
    }
    // alg none is refused whatever it claims.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbm4ifQ.";
    let mut c = Conn::new(&node);
    let (code, flow) = c.err("connect", json!({"token": none})).await;
    assert_eq!((code, flow), (101, Err(DisconnectCode::InvalidToken)));
}

#[tokio::test]
async fn an_expired_token_is_109_and_3005() {
    let node = node();
    let mut c = Conn::new(&node);
    let expired = token(json!({"sub": "ann", "exp": at(-60)}));
    assert_eq!(
        c.err("connect", json!({"token": expired})).await,
        (109, Err(DisconnectCode::Expired))
    );
}

#[tokio::test]
async fn a_token_on_a_node_without_keys_is_101_and_3500() {
    let node = Node::new(Arc::new(MemoryEngine::new()), config(), None);
    let mut c = Conn::new(&node);
    let (code, flow) = c
        .err("connect", json!({"token": token(json!({"sub": "ann"}))}))
        .await;
    assert_eq!((code, flow), (101, Err(DisconnectCode::InvalidToken)));
}

#[tokio::test]
async fn a_token_with_exp_says_the_connection_expires_and_the_sweep_disconnects_it_with_3005() {
    let node = node();
    let exp = at(100);
    let mut c = Conn::new(&node);
    let reply = c
        .ok(
            "connect",
            json!({"token": token(json!({"sub": "ann", "exp": exp}))}),
        )
        .await;
    assert_eq!(reply["expires"], true);
    let ttl = reply["ttl"].as_u64().unwrap();
    assert!((98..=100).contains(&ttl), "{ttl}");
    // Not yet.
    assert_eq!(node.expire_clients(exp - 1), 0);
    assert_eq!(c.signal(), None);
    // Then.
    assert_eq!(node.expire_clients(exp), 1);
    assert_eq!(
        c.signal(),
        Some(Signal::Disconnect(DisconnectCode::Expired))
    );
}

#[tokio::test]
async fn the_tokens_channels_are_subscribed_at_connect_and_answered_in_subs() {
    let node = node();
    server_publish(&node, "chat:news", json!(1)).await;
    let claims = json!({
        "sub": "ann",
        "info": {"name": "Ann"},
        "channels": ["chat:news", "live:x", "nons:skipped"],
    });
    let mut c = Conn::new(&node);
    let reply = c.ok("connect", json!({"token": token(claims)})).await;
    let subs = reply["subs"].as_object().unwrap();
    assert_eq!(
        subs.len(),
        2,
        "a channel of no namespace is skipped: {reply}"
    );
    assert_eq!(subs["chat:news"]["offset"], 1);
    assert_eq!(subs["chat:news"]["recoverable"], true);
    assert!(subs["chat:news"]["epoch"].is_string());
    assert_eq!(subs["live:x"], json!({}), "no history: no position");
    // Subscribed for real: publications arrive, with the publisher's info from its own token.
    server_publish(&node, "chat:news", json!(2)).await;
    let got = c.drain();
    let pubs = pushes(&got, "pub");
    assert_eq!(pubs.len(), 1, "{got:?}");
    assert_eq!(pubs[0]["offset"], 2);
    // The token's info shows in presence.
    let presence = c.ok("presence", json!({"channel": "chat:news"})).await;
    assert_eq!(
        presence["presence"][c.client.id()],
        json!({"client": c.client.id(), "user": "ann", "info": {"name": "Ann"}})
    );
}

#[tokio::test]
async fn refresh_without_token_verification_answers_expires_false() {
    let node = Node::new(Arc::new(MemoryEngine::new()), config(), None);
    let mut c = Conn::anonymous(&node).await;
    let reply = c.ok("refresh", json!({"token": "anything"})).await;
    assert_eq!(reply, json!({"expires": false}));
}

#[tokio::test]
async fn refresh_with_a_token_of_the_same_user_moves_the_expiry() {
    let node = node();
    let soon = at(10);
    let mut c = Conn::connected(
        &node,
        json!({"token": token(json!({"sub": "ann", "exp": soon}))}),
    )
    .await;
    let later = at(3600);
    let reply = c
        .ok(
            "refresh",
            json!({"token": token(json!({"sub": "ann", "exp": later}))}),
        )
        .await;
    assert_eq!(reply["expires"], true);
    assert!(reply["ttl"].as_u64().unwrap() > 3500, "{reply}");
    assert_eq!(
        node.expire_clients(soon + 1),
        0,
        "no longer expires at the first exp"
    );
    assert_eq!(c.signal(), None);
    // A token without exp: the connection no longer expires.
    let reply = c
        .ok("refresh", json!({"token": token(json!({"sub": "ann"}))}))
        .await;
    assert_eq!(reply, json!({"expires": false}));
    assert_eq!(node.expire_clients(later + 1), 0);
}

#[tokio::test]
async fn refresh_refusals_and_their_codes() {
    let node = node();
    let user = |u: &str| json!({"token": token(json!({"sub": u, "exp": at(60)}))});
    // Already expired: 109, the connection stays (until its own expiry).
    let mut c = Conn::connected(&node, user("ann")).await;
    let expired = token(json!({"sub": "ann", "exp": at(-60)}));
    assert_eq!(
        c.err("refresh", json!({"token": expired})).await,
        (109, Ok(()))
    );
    // Another user's: 101 and 3500.
    assert_eq!(
        c.err("refresh", user("bob")).await,
        (101, Err(DisconnectCode::InvalidToken))
    );
    // One that does not verify: 101 and 3500.
    let mut c = Conn::connected(&node, user("ann")).await;
    assert_eq!(
        c.err("refresh", json!({"token": "garbage"})).await,
        (101, Err(DisconnectCode::InvalidToken))
    );
    // Missing token: 107.
    let mut c = Conn::connected(&node, user("ann")).await;
    assert_eq!(c.err("refresh", json!({})).await, (107, Ok(())));
}

#[tokio::test]
async fn tokens_are_held_to_the_configured_audience() {
    let verifier = Verifier::new(&AuthConfig {
        hmac_secret: Some(super::SECRET.into()),
        audience: Some("switchboard".into()),
        ..Default::default()
    })
    .unwrap();
    let node = Node::new(Arc::new(MemoryEngine::new()), config(), Some(verifier));
    let mut c = Conn::new(&node);
    let (code, flow) = c
        .err("connect", json!({"token": token(json!({"sub": "ann"}))}))
        .await;
    assert_eq!((code, flow), (101, Err(DisconnectCode::InvalidToken)));
    let claims: Value = json!({"sub": "ann", "aud": "switchboard"});
    Conn::connected(&node, json!({"token": token(claims)})).await;
}

#[tokio::test]
async fn close_forgets_the_client_and_leaves_its_channels() {
    let node = node();
    let mut watcher = Conn::anonymous(&node).await;
    watcher
        .ok("subscribe", json!({"channel": "chat:room"}))
        .await;
    let mut c = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    c.ok("subscribe", json!({"channel": "chat:room"})).await;
    let id = c.client.id().to_owned();
    watcher.drain();
    c.client.close(None).await;
    assert_eq!(node.client_count(), 1);
    assert_eq!(node.subscriber_count("chat:room"), 1);
    let got = watcher.drain();
    let leaves = pushes(&got, "leave");
    assert_eq!(leaves.len(), 1, "{got:?}");
    assert_eq!(leaves[0]["info"]["client"], json!(id));
    let stats = watcher
        .ok("presence_stats", json!({"channel": "chat:room"}))
        .await;
    assert_eq!(stats, json!({"num_clients": 1, "num_users": 1}));
}

#[tokio::test]
async fn the_servers_refresh_order_sets_or_clears_the_expiry() {
    let node = node();
    let c = Conn::connected(&node, json!({"token": token(json!({"sub": "ann"}))})).await;
    let exp = at(30);
    assert_eq!(node.refresh_clients("ann", None, Some(exp)), 1);
    assert_eq!(node.refresh_clients("bob", None, Some(exp)), 0);
    assert_eq!(node.expire_clients(exp - 1), 0);
    assert_eq!(node.refresh_clients("ann", Some(c.client.id()), None), 1);
    assert_eq!(node.expire_clients(exp), 0, "cleared: never expires");
    node.refresh_clients("ann", None, Some(exp));
    assert_eq!(node.expire_clients(exp), 1);
    assert_eq!(
        c.signal(),
        Some(Signal::Disconnect(DisconnectCode::Expired))
    );
}
