//! Identity told once: connection tokens at connect, server-side subscriptions from the token,
//! expiry and refresh, subscription tokens for private channels — over real connections.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
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
    c
}

struct Client {
    ws: RawClient,
    next_id: u64,
    /// Pushes seen while waiting for replies.
    pushes: Vec<Value>,
}

impl Client {
    async fn open(addr: SocketAddr) -> Self {
        let (ws, resp) = handshake(addr, "/connection/websocket", &[]).await;
        assert_eq!(resp.status, 101);
        Self {
            ws,
            next_id: 0,
            pushes: Vec::new(),
        }
    }

    async fn next(&mut self) -> Option<Value> {
        loop {
            let f = self.ws.read_frame().await?;
            match f.opcode {
                1 => return Some(serde_json::from_slice(&f.payload).unwrap()),
                8 => {
                    self.ws.send_frame(true, false, 8, &f.payload, true).await;
                    return Some(json!({"close": f.close_code()}));
                }
                9 => self.ws.send_frame(true, false, 10, &f.payload, true).await,
                _ => {}
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send_text(&json!({"id": id, method: params}).to_string())
            .await;
        loop {
            let v = self.next().await.expect("reply");
            if v["id"] == id {
                return v;
            }
            self.pushes.push(v);
        }
    }

    /// Reads until the end; the `disconnect` push's code.
    async fn disconnect_code(&mut self) -> Option<u64> {
        let mut code = None;
        while let Some(v) = self.next().await {
            if let Some(d) = v.get("disconnect") {
                code = d["code"].as_u64();
            }
        }
        code
    }
}

#[tokio::test]
async fn a_valid_token_names_the_user_and_subscribes_its_channels() {
    let s = start(config()).await;
    let t = token(
        json!({"sub": "alice", "aud": "switchboard", "exp": now() + 600, "info": {"name": "Alice"}, "channels": ["room:1"]}),
    );
    let mut c = Client::open(s.addr).await;
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
        c.pushes.push(v);
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
        let mut c = Client::open(s.addr).await;
        let params = if t.is_empty() {
            json!({})
        } else {
            json!({"token": t})
        };
        let r = c.call("connect", params).await;
        assert_eq!(r["error"]["code"], error, "{t}: {r}");
        assert_eq!(c.disconnect_code().await, Some(disconnect), "{t}");
    }
}

#[tokio::test]
async fn an_expiring_connection_is_disconnected_unless_refreshed() {
    let s = start(config()).await;
    let short = |user: &str, secs: u64| {
        token(json!({"sub": user, "aud": "switchboard", "exp": now() + secs}))
    };
    let mut lazy = Client::open(s.addr).await;
    let mut diligent = Client::open(s.addr).await;
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
    let mut other = Client::open(s.addr).await;
    other
        .call("connect", json!({"token": short("x", 600)}))
        .await;
    assert_eq!(
        other
            .call("refresh", json!({"token": short("y", 600)}))
            .await["error"]["code"],
        101
    );
    assert_eq!(other.disconnect_code().await, Some(3500));
    // The lazy one is told it expired (3005, reconnect with a new token).
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(8), lazy.disconnect_code())
            .await
            .unwrap(),
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
    let mut c = Client::open(s.addr).await;
    c.call(
        "connect",
        json!({"token": token(json!({"sub": "alice", "aud": "switchboard"}))}),
    )
    .await;
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
