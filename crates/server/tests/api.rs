//! The server HTTP API with real HTTP requests against the real server: every method, the API key,
//! errors with their codes, body limits, idempotency, and the OpenAPI document against the routes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard_hub::NamespaceOptions;

const KEY: &str = "api-key-for-tests";

fn config() -> Config {
    let mut c = Config::default();
    c.api.key = KEY.into();
    c.api.max_body_bytes = 64 << 10;
    c.channels.namespaces.insert(
        "news".into(),
        NamespaceOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            recover: true,
            presence: true,
            ..Default::default()
        },
    );
    c
}

async fn api(s: SocketAddr, method: &str, body: Value) -> Value {
    api_result(s, KEY, method, body).await
}

#[tokio::test]
async fn publish_broadcast_batch_reach_subscribers() {
    let s = start(config()).await;
    let mut c = JsonClient::connected(s.addr).await;
    c.call("subscribe", json!({"channel": "news:a"})).await;
    c.call("subscribe", json!({"channel": "news:b"})).await;
    let r = api(
        s.api,
        "publish",
        json!({"channel": "news:a", "data": {"title": "first"}, "tags": {"kind": "breaking"}}),
    )
    .await;
    assert_eq!(r["offset"], 1);
    assert!(r["epoch"].is_string());
    let p = c.push("pub").await;
    assert_eq!(
        (p["data"]["title"].as_str(), p["tags"]["kind"].as_str()),
        (Some("first"), Some("breaking"))
    );
    let r = api(
        s.api,
        "broadcast",
        json!({"channels": ["news:a", "news:b", "nope:x"], "b64data": "AQI="}),
    )
    .await;
    assert_eq!(r["responses"][0]["result"]["offset"], 2);
    assert_eq!(r["responses"][2]["error"]["code"], 102);
    assert_eq!(c.push("pub").await["b64data"], "AQI=");
    assert_eq!(c.push("pub").await["channel"], "news:b");
    let r = api(
        s.api,
        "batch",
        json!({"commands": [{"publish": {"channel": "news:a", "data": 3}}, {"info": {}}, {"dance": {}}]}),
    )
    .await;
    assert_eq!(r["replies"][0]["result"]["offset"], 3);
    assert_eq!(r["replies"][1]["result"]["nodes"][0]["num_clients"], 1);
    assert_eq!(r["replies"][2]["error"]["code"], 104);
    assert_eq!(c.push("pub").await["data"], 3);
}

#[tokio::test]
async fn idempotency_and_skip_history() {
    let s = start(config()).await;
    let mut c = JsonClient::connected(s.addr).await;
    c.call("subscribe", json!({"channel": "news:i"})).await;
    let once = json!({"channel": "news:i", "data": "once", "idempotency_key": "order-42"});
    let a = api(s.api, "publish", once.clone()).await;
    let b = api(s.api, "publish", once).await;
    assert_eq!(a, b, "the repeat answers the first publication's position");
    let r = api(
        s.api,
        "publish",
        json!({"channel": "news:i", "data": "live only", "skip_history": true}),
    )
    .await;
    assert_eq!(r["offset"], 0);
    assert_eq!(c.push("pub").await["data"], "once");
    assert_eq!(c.push("pub").await["data"], "live only", "no second 'once'");
    let h = api(s.api, "history", json!({"channel": "news:i"})).await;
    assert_eq!(h["publications"].as_array().unwrap().len(), 1);
    assert_eq!(h["offset"], 1);
}

#[tokio::test]
async fn client_management_methods() {
    let s = start(config()).await;
    let mut c = JsonClient::connected(s.addr).await;
    // Server-side subscribe of the (anonymous) user's connections.
    let r = api(
        s.api,
        "subscribe",
        json!({"user": "", "channel": "news:srv"}),
    )
    .await;
    assert_eq!(r["clients"], 1);
    let sub = c.push("subscribe").await;
    assert_eq!(sub["channel"], "news:srv");
    api(
        s.api,
        "publish",
        json!({"channel": "news:srv", "data": "pushed"}),
    )
    .await;
    assert_eq!(c.push("pub").await["data"], "pushed");
    let presence = api(s.api, "presence", json!({"channel": "news:srv"})).await;
    assert!(
        presence["presence"][c.id.as_str()].is_object(),
        "{presence}"
    );
    assert_eq!(
        api(s.api, "presence_stats", json!({"channel": "news:srv"})).await["num_clients"],
        1
    );
    let channels = api(s.api, "channels", json!({"pattern": "news:*"})).await;
    assert_eq!(channels["channels"]["news:srv"]["num_clients"], 1);
    assert!(
        api(s.api, "channels", json!({"pattern": "other*"})).await["channels"]
            .as_object()
            .unwrap()
            .is_empty()
    );
    // Unsubscribe.
    assert_eq!(
        api(
            s.api,
            "unsubscribe",
            json!({"user": "", "client": c.id, "channel": "news:srv"})
        )
        .await["clients"],
        1
    );
    let u = c.push("unsubscribe").await;
    assert_eq!(
        (u["channel"].as_str(), u["code"].as_u64()),
        (Some("news:srv"), Some(2000))
    );
    // History, then history_remove starts a new epoch.
    let h1 = api(s.api, "history", json!({"channel": "news:srv", "limit": 1})).await;
    assert_eq!(h1["publications"][0]["data"], "pushed");
    let since = json!({"channel": "news:srv", "since": {"offset": 0, "epoch": "wrong"}});
    let (status, v) = api_call(s.api, Some(KEY), "history", &since.to_string()).await;
    assert_eq!((status, v["error"]["code"].as_u64()), (400, Some(112)));
    api(s.api, "history_remove", json!({"channel": "news:srv"})).await;
    let h2 = api(s.api, "history", json!({"channel": "news:srv"})).await;
    assert_ne!(h1["epoch"], h2["epoch"]);
    // Refresh: expire now; the client is told with 3005.
    let mut d = JsonClient::connected(s.addr).await;
    assert_eq!(
        api(
            s.api,
            "refresh",
            json!({"user": "", "client": d.id, "expired": true})
        )
        .await["clients"],
        1
    );
    let disc = tokio::time::timeout(Duration::from_secs(5), d.push("disconnect"))
        .await
        .unwrap();
    assert_eq!(disc["code"], 3005);
    // Disconnect.
    assert_eq!(
        api(s.api, "disconnect", json!({"user": "", "client": c.id})).await["clients"],
        1
    );
    assert_eq!(c.push("disconnect").await["code"], 3503);
    // Both connections end (their close frames answered); the node forgets them.
    while c.next().await.is_some() {}
    while d.next().await.is_some() {}
    drop((c, d));
    let mut clients = Value::Null;
    for _ in 0..50 {
        clients = api(s.api, "info", json!({})).await["nodes"][0]["num_clients"].clone();
        if clients == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(clients, 0);
}

#[tokio::test]
async fn keys_errors_and_limits() {
    let s = start(config()).await;
    let body = json!({"channel": "news:x", "data": 1}).to_string();
    assert_eq!(api_call(s.api, None, "publish", &body).await.0, 401);
    let (status, v) = api_call(s.api, Some("wrong"), "publish", &body).await;
    assert_eq!((status, v["error"]["code"].as_u64()), (401, Some(101)));
    // X-API-Key works as well.
    let raw = format!(
        "POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_eq!(request(s.api, &raw).await.1.status, 200);
    let (status, v) = api_call(s.api, Some(KEY), "dance", "{}").await;
    assert_eq!((status, v["error"]["code"].as_u64()), (404, Some(104)));
    let (status, v) = api_call(s.api, Some(KEY), "publish", "{not json").await;
    assert_eq!((status, v["error"]["code"].as_u64()), (400, Some(107)));
    let (status, v) = api_call(
        s.api,
        Some(KEY),
        "publish",
        &json!({"channel": "nope:x", "data": 1}).to_string(),
    )
    .await;
    assert_eq!((status, v["error"]["code"].as_u64()), (400, Some(102)));
    let (status, _) = api_call(
        s.api,
        Some(KEY),
        "publish",
        &json!({"channel": "news:x", "data": 1, "extra": true}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "unknown fields are refused");
    let big = json!({"channel": "news:x", "data": "x".repeat(100 << 10)}).to_string();
    let (status, v) = api_call(s.api, Some(KEY), "publish", &big).await;
    assert_eq!((status, v["error"]["code"].as_u64()), (413, Some(106)));
    // An API without a key refuses everything.
    let s2 = start(Config::default()).await;
    let (status, v) = api_call(s2.api, Some(""), "info", "{}").await;
    assert_eq!(status, 401);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[api] key")
    );
}

/// A publish without `channel` says what is missing, alone and inside a batch; one with `channels`
/// points to broadcast.
#[tokio::test]
async fn publish_without_channel_says_channel_is_required() {
    let s = start(config()).await;
    let (status, v) = api_call(s.api, Some(KEY), "publish", r#"{"data": 1}"#).await;
    assert_eq!((status, v["error"]["code"].as_u64()), (400, Some(107)));
    assert_eq!(v["error"]["message"], "channel is required");
    let r = api(
        s.api,
        "batch",
        json!({"commands": [{"publish": {"data": 1}}, {"publish": {"channels": ["news:a"], "data": 1}}]}),
    )
    .await;
    assert_eq!(r["replies"][0]["error"]["message"], "channel is required");
    assert_eq!(
        r["replies"][1]["error"]["message"],
        "publish takes one channel (use broadcast for several)"
    );
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let s = start(config()).await;
    let (_, resp) = request(
        s.api,
        "GET /api/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let doc: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|p| p.strip_prefix("/api/"))
        .filter(|m| *m != "openapi.json")
        .map(str::to_owned)
        .collect();
    let routed: BTreeSet<String> = switchboard_api::METHODS
        .iter()
        .map(|m| (*m).to_owned())
        .collect();
    assert_eq!(documented, routed);
    for method in &routed {
        // Every documented method is routed: never 404, whatever the body.
        let (status, v) = api_call(s.api, Some(KEY), method, "{}").await;
        assert_ne!(status, 404, "{method}: {v}");
        let props = &doc["paths"][format!("/api/{method}")]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"];
        assert!(props.is_object(), "{method} has a request schema");
    }
}

#[tokio::test]
async fn pretty_printed_data_reaches_clients_on_one_line() {
    let s = start(config()).await;
    let mut c = JsonClient::connected(s.addr).await;
    c.ok("subscribe", json!({"channel": "pretty"})).await;
    // A backend's json_encode(..., JSON_PRETTY_PRINT): line breaks between tokens, and one escaped
    // inside a string, which must stay.
    let body = "{\"channel\": \"pretty\",\n \"data\": {\n    \"text\": \"two\\nlines\",\r\n    \"n\": [1,\n 2]\n}\n}";
    let (status, v) = api_call(s.api, Some(KEY), "publish", body).await;
    assert_eq!(status, 200, "{v}");
    let frame = c.ws.read_frame().await.unwrap();
    let text = String::from_utf8(frame.payload).unwrap();
    assert!(
        !text.contains(['\n', '\r']),
        "one line per message: {text:?}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["pub"]["data"], json!({"text": "two\nlines", "n": [1, 2]}));
}

#[tokio::test]
async fn json_that_parsers_read_differently_is_refused_with_400() {
    let s = start(config()).await;
    let mut c = JsonClient::connected(s.addr).await;
    c.ok("subscribe", json!({"channel": "rule"})).await;
    // Issue 18's two examples, then an integer JavaScript would round, then nesting past 128 levels.
    let deep = format!("{}1{}", "[".repeat(128), "]".repeat(128));
    for (body, says) in [
        (
            r#"{"channel":"rule","data":1E40000000000000}"#.to_owned(),
            "out of the range",
        ),
        (
            r#"{"channel":"rule","data":"\ud800"}"#.to_owned(),
            "surrogate",
        ),
        (
            r#"{"channel":"rule","data":{"id":12345678901234567890}}"#.to_owned(),
            "JavaScript",
        ),
        (format!(r#"{{"channel":"rule","data":{deep}}}"#), "nested"),
        (
            r#"{"commands":[{"publish":{"channel":"rule","data":[-1e999]}}]}"#.to_owned(),
            "out of the range",
        ),
    ] {
        let method = if body.contains("commands") {
            "batch"
        } else {
            "publish"
        };
        let (status, v) = api_call(s.api, Some(KEY), method, &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {v}"
        );
    }
    // `data` is any JSON, null included; a paired surrogate is fine. Only these two arrive.
    let (status, v) = api_call(
        s.api,
        Some(KEY),
        "publish",
        r#"{"channel":"rule","data":null}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let ok = r#"{"channel":"rule","data":"\ud83d\ude00"}"#;
    let (status, v) = api_call(s.api, Some(KEY), "publish", ok).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(c.push("pub").await["data"], Value::Null);
    assert_eq!(c.push("pub").await["data"], json!("\u{1F600}"));
}

/// The API is served by a thread of its own: it stops with the server, also when the server's
/// future is dropped without a shutdown (a thread left behind would keep answering on the port).
#[tokio::test]
async fn the_api_thread_stops_with_the_server() {
    let s = start(config()).await;
    let info = api(s.api, "info", json!({})).await;
    assert!(info.get("error").is_none(), "{info}");
    s.task.abort();
    let _ = s.task.await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(s.api).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API still accepts connections after the server was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
