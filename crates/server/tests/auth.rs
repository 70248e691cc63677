//! Identity told once: connection tokens at connect, server-side subscriptions from the token,
//! expiry and refresh, subscription tokens for private channels — over real connections.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchboard::Config;
use switchboard_auth::now;
use switchboard_hub::NamespaceOptions;

const SECRET: &str = "test-secret-that-is-long-enough";

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn config() -> Config {
    let mut c = Config::default();
    c.auth.hmac_secret = Some(SECRET.into());
    c.auth.audience = Some("switchboard".into());
    c.client.allow_anonymous = false;
    c.channels.namespaces.insert(
        "room".into(),
        NamespaceOptions {
            presence: true,
            allow_publish: true,
            ..Default::default()
        },
    );
    c.channels.namespaces.insert(
        "secret".into(),
        NamespaceOptions {
            private: true,
            ..Default::default()
        },
    );
    // Private, and everything else allowed: only the subscription may stand between a client and
    // the channel.
    c.channels.namespaces.insert(
        "vault".into(),
        NamespaceOptions {
            private: true,
            ..chat_namespace()
        },
    );
    c
}

/// Connects as `user` with a token that carries `extra` claims too.
async fn connect_as(addr: std::net::SocketAddr, user: &str, extra: Value) -> JsonClient {
    let mut claims = json!({"sub": user, "aud": "switchboard"});
    if let (Some(c), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    JsonClient::connect_with(addr, json!({"token": token(claims)})).await
}

/// What `client` gets for every command that reads or writes `channel`: each reply's error code, or
/// 0 for a success. Its publication (when let through) says `marker`.
async fn codes_of_channel_commands(
    client: &mut JsonClient,
    channel: &str,
    marker: &str,
) -> Vec<u64> {
    let mut codes = Vec::new();
    for (method, params) in [
        ("history", json!({"channel": channel})),
        ("publish", json!({"channel": channel, "data": marker})),
        ("presence", json!({"channel": channel})),
        ("presence_stats", json!({"channel": channel})),
    ] {
        let r = client.call(method, params).await;
        codes.push(r["error"]["code"].as_u64().unwrap_or(0));
    }
    codes
}

#[tokio::test]
async fn private_channels_are_private_to_every_command() {
    let s = start(config()).await;
    let sub_token =
        |user: &str| token(json!({"sub": user, "aud": "switchboard", "channel": "vault:plans"}));
    // Bob is subscribed (with a subscription token) and publishes: there is history to steal.
    let mut bob = connect_as(s.addr, "bob", json!({})).await;
    bob.ok(
        "subscribe",
        json!({"channel": "vault:plans", "token": sub_token("bob")}),
    )
    .await;
    bob.ok(
        "publish",
        json!({"channel": "vault:plans", "data": "plan A"}),
    )
    .await;
    // Mallory has a valid connection but no subscription: 103 for each command, and nothing she
    // tried to publish gets in.
    let mut mallory = connect_as(s.addr, "mallory", json!({})).await;
    assert_eq!(
        codes_of_channel_commands(&mut mallory, "vault:plans", "forged").await,
        [103, 103, 103, 103]
    );
    let history = bob.ok("history", json!({"channel": "vault:plans"})).await;
    let data = publications_at(&history, "/data");
    assert_eq!(data, [json!("plan A")], "{history}");
    // A subscription refused (a token for someone else) grants nothing either.
    let r = mallory
        .call(
            "subscribe",
            json!({"channel": "vault:plans", "token": sub_token("bob")}),
        )
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    assert_eq!(
        codes_of_channel_commands(&mut mallory, "vault:plans", "forged").await,
        [103, 103, 103, 103]
    );
    // Alice subscribes with her own token: every command works, while the subscription lives.
    let mut alice = connect_as(s.addr, "alice", json!({})).await;
    alice
        .ok(
            "subscribe",
            json!({"channel": "vault:plans", "token": sub_token("alice")}),
        )
        .await;
    assert_eq!(
        codes_of_channel_commands(&mut alice, "vault:plans", "plan B").await,
        [0, 0, 0, 0]
    );
    alice
        .ok("unsubscribe", json!({"channel": "vault:plans"}))
        .await;
    assert_eq!(
        codes_of_channel_commands(&mut alice, "vault:plans", "plan C").await,
        [103, 103, 103, 103]
    );
    // The connection token's `channels` claim is a grant too.
    let mut carol = connect_as(s.addr, "carol", json!({"channels": ["vault:plans"]})).await;
    assert_eq!(
        codes_of_channel_commands(&mut carol, "vault:plans", "plan D").await,
        [0, 0, 0, 0]
    );
    let history = bob.ok("history", json!({"channel": "vault:plans"})).await;
    let data = publications_at(&history, "/data");
    assert_eq!(
        data,
        [json!("plan A"), json!("plan B"), json!("plan D")],
        "{history}"
    );
}

#[tokio::test]
async fn a_token_that_names_no_user_is_refused_when_anonymous_access_is_off() {
    let s = start(config()).await;
    for claims in [
        json!({"aud": "switchboard"}),
        json!({"sub": "", "aud": "switchboard"}),
        json!({"sub": "", "aud": "switchboard", "channels": ["room:1"]}),
    ] {
        let mut c = JsonClient::open(s.addr).await;
        let r = c
            .call("connect", json!({"token": token(claims.clone())}))
            .await;
        assert_eq!(r["error"]["code"], 101, "{claims}: {r}");
        assert_eq!(c.disconnected().await, (Some(3500), Some(3500)), "{claims}");
    }
    // Where anonymous access is on, such a token connects anonymously.
    let mut open = config();
    open.client.allow_anonymous = true;
    let s = start(open).await;
    let mut c = JsonClient::open(s.addr).await;
    let r = c
        .call(
            "connect",
            json!({"token": token(json!({"sub": "", "aud": "switchboard"}))}),
        )
        .await;
    assert!(r["connect"]["client"].is_string(), "{r}");
}

#[tokio::test]
async fn a_valid_token_names_the_user_and_subscribes_its_channels() {
    let s = start(config()).await;
    let t = token(
        json!({"sub": "alice", "aud": "switchboard", "exp": now() + 600, "info": {"name": "Alice"}, "channels": ["room:1"]}),
    );
    let mut c = JsonClient::open(s.addr).await;
    let r = c.call("connect", json!({"token": t})).await;
    let connect = &r["connect"];
    assert!(connect["subs"]["room:1"].is_object(), "{r}");
    assert_eq!(connect["expires"], true);
    assert!(connect["ttl"].as_u64().unwrap() > 590);
    let p = c.call("presence", json!({"channel": "room:1"})).await;
    let me = p["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(
        (me["user"].as_str(), me["info"]["name"].as_str()),
        (Some("alice"), Some("Alice"))
    );
    // The server-side subscription delivers.
    let r = c
        .call("publish", json!({"channel": "room:1", "data": "hello"}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    while !c.pushes.iter().any(|v| v["pub"]["data"] == "hello") {
        let v = c.next().await.unwrap();
        c.pushes.push_back(v);
    }
}

#[tokio::test]
async fn refused_tokens_get_the_documented_codes() {
    let s = start(config()).await;
    let cases = [
        // (token, error code, disconnect code)
        (String::new(), 101, 3500),
        ("garbage".to_owned(), 101, 3500),
        (
            token(json!({"sub": "a", "aud": "switchboard", "exp": now() - 100})),
            109,
            3005,
        ),
        (token(json!({"sub": "a", "aud": "elsewhere"})), 101, 3500),
        (
            token(json!({"sub": "a", "aud": "switchboard", "nbf": now() + 600})),
            101,
            3500,
        ),
        (
            encode(
                &Header::new(Algorithm::HS256),
                &json!({"sub": "a", "aud": "switchboard"}),
                &EncodingKey::from_secret(b"wrong").unwrap(),
            )
            .unwrap(),
            101,
            3500,
        ),
    ];
    for (t, error, disconnect) in cases {
        let mut c = JsonClient::open(s.addr).await;
        let params = if t.is_empty() {
            json!({})
        } else {
            json!({"token": t})
        };
        let r = c.call("connect", params).await;
        assert_eq!(r["error"]["code"], error, "{t}: {r}");
        assert_eq!(c.disconnected().await.0, Some(disconnect), "{t}");
    }
}

#[tokio::test]
async fn an_expiring_connection_is_disconnected_unless_refreshed() {
    let s = start(config()).await;
    let short = |user: &str, secs: u64| {
        token(json!({"sub": user, "aud": "switchboard", "exp": now() + secs}))
    };
    let mut lazy = JsonClient::open(s.addr).await;
    let mut diligent = JsonClient::open(s.addr).await;
    assert_eq!(
        lazy.call("connect", json!({"token": short("lazy", 2)}))
            .await["connect"]["expires"],
        true
    );
    assert_eq!(
        diligent
            .call("connect", json!({"token": short("diligent", 2)}))
            .await["connect"]["ttl"]
            .as_u64()
            .map(|t| t <= 2),
        Some(true)
    );
    let r = diligent
        .call("refresh", json!({"token": short("diligent", 600)}))
        .await;
    assert_eq!(r["refresh"]["expires"], true);
    assert!(r["refresh"]["ttl"].as_u64().unwrap() > 500);
    // A refresh for another user is refused.
    let mut other = JsonClient::open(s.addr).await;
    other
        .call("connect", json!({"token": short("x", 600)}))
        .await;
    assert_eq!(
        other
            .call("refresh", json!({"token": short("y", 600)}))
            .await["error"]["code"],
        101
    );
    assert_eq!(other.disconnected().await.0, Some(3500));
    // The lazy one is told it expired (3005, reconnect with a new token).
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(8), lazy.disconnected())
            .await
            .unwrap()
            .0,
        Some(3005)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = diligent
        .call("presence_stats", json!({"channel": "room:1"}))
        .await;
    assert!(
        r.get("error").is_some() && r["error"]["code"] == 103,
        "still connected, not subscribed: {r}"
    );
}

#[tokio::test]
async fn private_channels_need_a_subscription_token_for_that_channel_and_user() {
    let s = start(config()).await;
    let mut c = connect_as(s.addr, "alice", json!({})).await;
    assert_eq!(
        c.call("subscribe", json!({"channel": "secret:plans"}))
            .await["error"]["code"],
        103
    );
    let other_channel =
        token(json!({"sub": "alice", "aud": "switchboard", "channel": "secret:other"}));
    assert_eq!(
        c.call(
            "subscribe",
            json!({"channel": "secret:plans", "token": other_channel})
        )
        .await["error"]["code"],
        103
    );
    let other_user = token(json!({"sub": "bob", "aud": "switchboard", "channel": "secret:plans"}));
    assert_eq!(
        c.call(
            "subscribe",
            json!({"channel": "secret:plans", "token": other_user})
        )
        .await["error"]["code"],
        103
    );
    let expired = token(
        json!({"sub": "alice", "aud": "switchboard", "channel": "secret:plans", "exp": now() - 100}),
    );
    assert_eq!(
        c.call(
            "subscribe",
            json!({"channel": "secret:plans", "token": expired})
        )
        .await["error"]["code"],
        109
    );
    let good = token(json!({"sub": "alice", "aud": "switchboard", "channel": "secret:plans"}));
    let r = c
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": good}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
}

#[tokio::test]
async fn an_expiring_subscription_token_ends_the_subscription_with_2501() {
    let s = start(config()).await;
    let mut c = connect_as(s.addr, "alice", json!({})).await;
    let short = token(
        json!({"sub": "alice", "aud": "switchboard", "channel": "secret:plans", "exp": now() + 1}),
    );
    c.ok(
        "subscribe",
        json!({"channel": "secret:plans", "token": short}),
    )
    .await;
    let u = tokio::time::timeout(Duration::from_secs(5), c.push("unsubscribe"))
        .await
        .expect("unsubscribed at expiry");
    assert_eq!(
        u,
        json!({"channel": "secret:plans", "code": 2501, "reason": "subscription expired"})
    );
    // The connection stays, and a fresh token subscribes again.
    let fresh = token(
        json!({"sub": "alice", "aud": "switchboard", "channel": "secret:plans", "exp": now() + 600}),
    );
    c.ok(
        "subscribe",
        json!({"channel": "secret:plans", "token": fresh}),
    )
    .await;
}
