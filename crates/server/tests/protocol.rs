//! The client protocol (docs/protocol.md) over real WebSocket connections to the real server: every
//! command, ordering, recovery, presence, permissions, slow consumers, and bad input.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard_hub::NamespaceOptions;
use switchboard_protocol::{DisconnectCode, ErrorCode, UnsubscribeCode};

fn config() -> Config {
    let mut c = Config::default();
    let history = |size: usize, ttl: u64| NamespaceOptions {
        history_size: size,
        history_ttl: Duration::from_secs(ttl),
        recover: true,
        allow_publish: true,
        allow_history: true,
        ..Default::default()
    };
    let ns = &mut c.channels.namespaces;
    ns.insert(
        "chat".into(),
        NamespaceOptions {
            presence: true,
            join_leave: true,
            ..history(1000, 300)
        },
    );
    ns.insert("short".into(), history(3, 300));
    ns.insert("brief".into(), history(100, 1));
    ns.insert(
        "live".into(),
        NamespaceOptions {
            allow_publish: true,
            ..Default::default()
        },
    );
    ns.insert(
        "readonly".into(),
        NamespaceOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..Default::default()
        },
    );
    ns.insert(
        "secret".into(),
        NamespaceOptions {
            private: true,
            ..Default::default()
        },
    );
    c
}

#[tokio::test]
async fn every_documented_command_works() {
    let s = start(config()).await;
    let mut a = JsonClient::connected(s.addr).await;
    let mut b = JsonClient::connected(s.addr).await;
    let sub = a.ok("subscribe", json!({"channel": "chat:lobby"})).await;
    assert_eq!(sub["recoverable"], true);
    assert_eq!(sub["offset"], 0);
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    b.ok("subscribe", json!({"channel": "chat:lobby"})).await;
    // Every subscriber (the joining one included) gets the join push.
    assert_eq!(a.push("join").await["info"]["client"], a.id.as_str());
    assert_eq!(a.push("join").await["info"]["client"], b.id.as_str());
    let published = b
        .ok(
            "publish",
            json!({"channel": "chat:lobby", "data": {"text": "hi"}}),
        )
        .await;
    assert_eq!(published["offset"], 1);
    assert_eq!(published["epoch"], epoch.as_str());
    let p = a.push("pub").await;
    assert_eq!(
        (
            p["channel"].as_str(),
            p["offset"].as_u64(),
            p["data"]["text"].as_str()
        ),
        (Some("chat:lobby"), Some(1), Some("hi"))
    );
    assert!(p["info"]["client"].is_string());
    let presence = a.ok("presence", json!({"channel": "chat:lobby"})).await;
    assert_eq!(presence["presence"].as_object().unwrap().len(), 2);
    let stats = a
        .ok("presence_stats", json!({"channel": "chat:lobby"}))
        .await;
    assert_eq!(
        (stats["num_clients"].as_u64(), stats["num_users"].as_u64()),
        (Some(2), Some(1))
    );
    let history = a
        .ok("history", json!({"channel": "chat:lobby", "limit": 10}))
        .await;
    assert_eq!(history["publications"][0]["data"]["text"], "hi");
    assert_eq!(history["offset"], 1);
    assert_eq!(
        a.error("rpc", json!({"method": "anything", "data": {}}))
            .await,
        108
    );
    assert_eq!(
        a.ok("refresh", json!({"token": "t"})).await["expires"],
        false
    );
    a.ok("unsubscribe", json!({"channel": "chat:lobby"})).await;
    assert_eq!(b.push("leave").await["info"]["client"], a.id.as_str());
    // Several commands in one frame, separated by newlines.
    b.send_raw("{\"id\":100,\"presence_stats\":{\"channel\":\"chat:lobby\"}}\n{\"id\":101,\"history\":{\"channel\":\"chat:lobby\",\"limit\":0}}")
        .await;
    assert_eq!(b.next().await.unwrap()["id"], 100);
    assert_eq!(b.next().await.unwrap()["id"], 101);
}

#[tokio::test]
async fn binary_payloads_travel_as_base64() {
    let s = start(config()).await;
    let mut a = JsonClient::connected(s.addr).await;
    a.ok("subscribe", json!({"channel": "chat:bin"})).await;
    a.ok(
        "publish",
        json!({"channel": "chat:bin", "b64data": "AAEC/w=="}),
    )
    .await;
    let p = a.push("pub").await;
    assert_eq!(p["b64data"], "AAEC/w==");
    assert!(p.get("data").is_none());
    let h = a.ok("history", json!({"channel": "chat:bin"})).await;
    assert_eq!(h["publications"][0]["b64data"], "AAEC/w==");
    assert_eq!(
        a.error(
            "publish",
            json!({"channel": "chat:bin", "b64data": "not base64!"})
        )
        .await,
        107
    );
}

#[tokio::test]
async fn order_is_kept_under_concurrent_publishers() {
    let s = start(config()).await;
    let mut sub = JsonClient::connected(s.addr).await;
    sub.ok("subscribe", json!({"channel": "chat:order"})).await;
    let (publishers, each) = (4, 150);
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = JsonClient::connected(addr).await;
            for i in 0..each {
                c.ok(
                    "publish",
                    json!({"channel": "chat:order", "data": {"p": p, "i": i}}),
                )
                .await;
            }
        }));
    }
    let mut last_offset = 0;
    let mut last_per_publisher = vec![-1i64; publishers];
    for _ in 0..publishers * each {
        let p = sub.push("pub").await;
        let offset = p["offset"].as_u64().unwrap();
        assert_eq!(offset, last_offset + 1, "offsets follow each other");
        last_offset = offset;
        let (who, i) = (
            p["data"]["p"].as_u64().unwrap() as usize,
            p["data"]["i"].as_i64().unwrap(),
        );
        assert_eq!(
            i,
            last_per_publisher[who] + 1,
            "each publisher's messages in its order"
        );
        last_per_publisher[who] = i;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Publications reach a subscriber by two paths: written by the fan-out itself while the
/// connection has nothing of its own to write, or queued for the connection's task. A subscriber
/// that stops reading now and then (its socket fills, writes come out short) and sends commands
/// meanwhile must still read every publication whole, once, in order, with its replies between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_stay_whole_and_in_order_while_the_reader_stalls_and_commands_interleave() {
    let mut c = config();
    c.client.queue_bytes = 64 << 20;
    let s = start(c).await;
    let mut sub = JsonClient::connected(s.addr).await;
    sub.ok("subscribe", json!({"channel": "chat:burst"})).await;
    let total = 600u64;
    let publisher = {
        let addr = s.addr;
        tokio::spawn(async move {
            let mut c = JsonClient::connected(addr).await;
            let filler = "x".repeat(8 << 10);
            for i in 1..=total {
                c.ok(
                    "publish",
                    json!({"channel": "chat:burst", "data": {"i": i, "filler": filler}}),
                )
                .await;
            }
        })
    };
    for i in 1..=total {
        if i % 100 == 0 {
            // Stall while the publisher goes on, then ask something: the reply comes between
            // publications, and the pushes read while waiting for it are kept in order.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let presence = sub.ok("presence", json!({"channel": "chat:burst"})).await;
            assert!(presence["presence"].get(&sub.id).is_some(), "{presence}");
        }
        let p = sub.push("pub").await;
        assert_eq!(p["offset"].as_u64(), Some(i), "offsets follow each other");
        assert_eq!(p["data"]["i"].as_u64(), Some(i));
        assert_eq!(p["data"]["filler"].as_str().map(str::len), Some(8 << 10));
    }
    publisher.await.unwrap();
}

#[tokio::test]
async fn recovery_after_a_dropped_connection_misses_nothing_and_doubles_nothing() {
    let s = start(config()).await;
    let mut publisher = JsonClient::connected(s.addr).await;
    let mut a = JsonClient::connected(s.addr).await;
    let sub = a.ok("subscribe", json!({"channel": "chat:rec"})).await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        publisher
            .ok("publish", json!({"channel": "chat:rec", "data": i}))
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(a.push("pub").await["data"].as_u64().unwrap());
    }
    drop(a); // the connection drops after the third publication was read
    for i in 6..=8 {
        publisher
            .ok("publish", json!({"channel": "chat:rec", "data": i}))
            .await;
    }
    let mut a = JsonClient::connected(s.addr).await;
    let sub = a
        .ok(
            "subscribe",
            json!({"channel": "chat:rec", "recover": true, "epoch": epoch, "offset": 3}),
        )
        .await;
    assert_eq!(sub["recovered"], true, "{sub}");
    for p in sub["publications"].as_array().unwrap() {
        seen.push(p["data"].as_u64().unwrap());
    }
    publisher
        .ok("publish", json!({"channel": "chat:rec", "data": 9}))
        .await;
    seen.push(a.push("pub").await["data"].as_u64().unwrap());
    assert_eq!(seen, (1..=9).collect::<Vec<_>>());
    // Recovering from the latest position: recovered, nothing to replay.
    let mut b = JsonClient::connected(s.addr).await;
    let sub = b
        .ok(
            "subscribe",
            json!({"channel": "chat:rec", "recover": true, "epoch": epoch, "offset": 9}),
        )
        .await;
    assert_eq!(sub["recovered"], true);
    assert!(sub.get("publications").is_none());
}

#[tokio::test]
async fn recovered_false_when_history_is_gone_or_the_epoch_changed() {
    let s = start(config()).await;
    let mut p = JsonClient::connected(s.addr).await;
    let mut a = JsonClient::connected(s.addr).await;
    // Too many missed for a history of 3.
    let epoch = a.ok("subscribe", json!({"channel": "short:x"})).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=5 {
        p.ok("publish", json!({"channel": "short:x", "data": i}))
            .await;
    }
    let mut b = JsonClient::connected(s.addr).await;
    let r = b
        .ok(
            "subscribe",
            json!({"channel": "short:x", "recover": true, "epoch": epoch, "offset": 1}),
        )
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["offset"].as_u64()),
        (Some(false), Some(5))
    );
    assert!(r.get("publications").is_none(), "all or nothing");
    // An epoch that is not the stream's.
    let mut c = JsonClient::connected(s.addr).await;
    let r = c
        .ok(
            "subscribe",
            json!({"channel": "short:x", "recover": true, "epoch": "other", "offset": 4}),
        )
        .await;
    assert_eq!(r["recovered"], false);
    assert_eq!(
        c.error(
            "history",
            json!({"channel": "short:x", "since": {"epoch": "other", "offset": 1}})
        )
        .await,
        112
    );
    // Expired by ttl (1 s).
    let epoch = a.ok("subscribe", json!({"channel": "brief:x"})).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    p.ok("publish", json!({"channel": "brief:x", "data": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = c
        .ok(
            "subscribe",
            json!({"channel": "brief:x", "recover": true, "epoch": epoch, "offset": 0}),
        )
        .await;
    assert_eq!(r["recovered"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_while_fast_ones_get_everything() {
    let mut cfg = config();
    // Room for a fast reader that the machine's load delays now and then; the slow one, which reads
    // nothing, passes it whatever the load.
    cfg.client.queue_bytes = 1 << 20;
    let s = start(cfg).await;
    let mut fast = JsonClient::connected(s.addr).await;
    fast.ok("subscribe", json!({"channel": "chat:flood"})).await;
    let mut slow = JsonClient::connected(s.addr).await;
    let epoch = slow.ok("subscribe", json!({"channel": "chat:flood"})).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut publisher = JsonClient::connected(s.addr).await;
    // 20 MB: more than the kernel's socket buffers can absorb for a client that does not read.
    let text = "x".repeat(32 << 10);
    let n = 640u64;
    let reader = tokio::spawn(async move {
        for i in 1..=n {
            assert_eq!(fast.push("pub").await["offset"].as_u64(), Some(i));
        }
    });
    // The slow client reads nothing meanwhile.
    for i in 0..n {
        publisher
            .ok(
                "publish",
                json!({"channel": "chat:flood", "data": {"i": i, "t": text}}),
            )
            .await;
    }
    reader.await.unwrap();
    let (push, close) = slow.disconnected().await;
    assert_eq!(push, Some(u64::from(DisconnectCode::Slow.code())));
    assert_eq!(close, Some(3008));
    // It reconnects and recovers (here the last five; all it missed, as much as it is, in
    // a_slow_consumer_recovers_all_it_missed_whatever_its_queue_bound below).
    let mut again = JsonClient::connected(s.addr).await;
    let r = again
        .ok(
            "subscribe",
            json!({"channel": "chat:flood", "recover": true, "epoch": epoch, "offset": n - 5}),
        )
        .await;
    assert_eq!(r["recovered"], true);
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (n - 4..=n).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_recovers_all_it_missed_whatever_its_queue_bound() {
    let mut cfg = config();
    cfg.client.queue_bytes = 1 << 20;
    let s = start(cfg).await;
    let channel = "chat:stall";
    let mut reader = JsonClient::connected(s.addr).await;
    let epoch = reader.ok("subscribe", json!({"channel": channel})).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut publisher = JsonClient::connected(s.addr).await;
    let text = "x".repeat(60_000);
    let publication = move |i: u64| json!({"channel": channel, "data": {"i": i, "t": text}});
    // The reader stalls while 400 publications of 60 KB are made: 24 MB, more than its queue and
    // the kernel's socket buffers hold.
    for i in 1..=400 {
        publisher.ok("publish", publication(i)).await;
    }
    // It reads what reached it before the server dropped it as slow.
    let mut seen = Vec::new();
    let code = loop {
        let v = match reader.pushes.pop_front() {
            Some(v) => v,
            None => reader.next().await.expect("a disconnect push"),
        };
        if let Some(p) = v.get("pub") {
            seen.push(p["offset"].as_u64().unwrap());
        } else if let Some(d) = v.get("disconnect") {
            break d["code"].as_u64();
        }
    };
    assert_eq!(code, Some(u64::from(DisconnectCode::Slow.code())));
    assert_eq!(reader.disconnected().await.1, Some(3008));
    let last = seen.last().copied().unwrap_or(0);
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());
    // 200 more are published while it is away.
    for i in 401..=600 {
        publisher.ok("publish", publication(i)).await;
    }
    let missed = 600 - last;
    assert!(
        missed * 60_000 > 4 << 20,
        "the recovery ({missed} publications) must be several times the queue"
    );
    // It reconnects and recovers, while live publications go on.
    let mut again = JsonClient::connected(s.addr).await;
    let live = tokio::spawn(async move {
        for i in 601..=650 {
            publisher.ok("publish", publication(i)).await;
        }
    });
    let r = again
        .ok(
            "subscribe",
            json!({"channel": channel, "recover": true, "epoch": epoch, "offset": last}),
        )
        .await;
    assert_eq!(r["recovered"], true, "{}", r["recovered"]);
    let check = |seen: &mut Vec<u64>, p: &serde_json::Value| {
        let offset = p["offset"].as_u64().unwrap();
        assert_eq!(p["data"]["i"].as_u64(), Some(offset));
        seen.push(offset);
    };
    for p in r["publications"].as_array().into_iter().flatten() {
        check(&mut seen, p);
    }
    while seen.len() < 650 {
        let p = again.push("pub").await;
        check(&mut seen, &p);
    }
    live.await.unwrap();
    // All of them, in order, once, and then the live ones.
    assert_eq!(seen, (1..=650).collect::<Vec<_>>());
    let mut publisher = JsonClient::connected(s.addr).await;
    publisher
        .ok("publish", json!({"channel": channel, "data": {"i": 651}}))
        .await;
    assert_eq!(again.push("pub").await["offset"], 651);
}

#[tokio::test]
async fn namespace_permissions_answer_the_documented_codes() {
    let s = start(config()).await;
    let mut c = JsonClient::connected(s.addr).await;
    let code = |e: ErrorCode| u64::from(e.code());
    assert_eq!(
        c.error("subscribe", json!({"channel": "nowhere:x"})).await,
        code(ErrorCode::UnknownChannel)
    );
    assert_eq!(
        c.error("subscribe", json!({"channel": "secret:x"})).await,
        code(ErrorCode::PermissionDenied)
    );
    assert_eq!(
        c.error("publish", json!({"channel": "readonly:x", "data": 1}))
            .await,
        code(ErrorCode::PermissionDenied)
    );
    assert_eq!(
        c.error("history", json!({"channel": "readonly:x"})).await,
        code(ErrorCode::PermissionDenied)
    );
    assert_eq!(
        c.error("history", json!({"channel": "live:x"})).await,
        code(ErrorCode::NotAvailable)
    );
    assert_eq!(
        c.error("presence", json!({"channel": "live:x"})).await,
        code(ErrorCode::NotAvailable)
    );
    assert_eq!(
        c.error("presence", json!({"channel": "chat:x"})).await,
        code(ErrorCode::PermissionDenied)
    );
    assert_eq!(
        c.error("publish", json!({"channel": "news", "data": 1}))
            .await,
        code(ErrorCode::PermissionDenied)
    );
    assert_eq!(
        c.error("subscribe", json!({"channel": ""})).await,
        code(ErrorCode::BadRequest)
    );
    c.ok("subscribe", json!({"channel": "live:x"})).await;
    assert_eq!(
        c.error("subscribe", json!({"channel": "live:x"})).await,
        code(ErrorCode::AlreadySubscribed)
    );
    assert_eq!(
        c.error("dance", json!({})).await,
        code(ErrorCode::MethodNotFound)
    );
    // Channels without history still deliver, with offset 0.
    let r = c
        .ok("publish", json!({"channel": "live:x", "data": "now"}))
        .await;
    assert_eq!(r["offset"], 0);
    assert_eq!(c.push("pub").await["offset"], 0);
}

#[tokio::test]
async fn channel_limit_per_connection() {
    let mut cfg = config();
    cfg.client.max_channels = 2;
    let s = start(cfg).await;
    let mut c = JsonClient::connected(s.addr).await;
    c.ok("subscribe", json!({"channel": "live:1"})).await;
    c.ok("subscribe", json!({"channel": "live:2"})).await;
    assert_eq!(
        c.error("subscribe", json!({"channel": "live:3"})).await,
        106
    );
}

#[tokio::test]
async fn bad_input_is_answered_and_never_disturbs_others() {
    let s = start(config()).await;
    let mut bystander = JsonClient::connected(s.addr).await;
    bystander
        .ok("subscribe", json!({"channel": "live:b"}))
        .await;
    let bad_request = Some(u64::from(DisconnectCode::BadRequest.code()));
    let deep = format!(
        r#"{{"id":1,"rpc":{{"method":"m","data":{}1{}}}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    for garbage in [
        "not json at all",
        "{\"id\":1,\"connect\":{}",
        "{\"id\":99999999999999999999,\"connect\":{}}",
        "{\"id\":-1,\"connect\":{}}",
        "[]",
        deep.as_str(),
    ] {
        let mut c = JsonClient::connected(s.addr).await;
        c.send_raw(garbage).await;
        assert_eq!(
            c.disconnected().await,
            (bad_request, bad_request),
            "{garbage}"
        );
    }
    // A command before connect.
    let mut c = JsonClient::open(s.addr).await;
    assert_eq!(
        c.error("subscribe", json!({"channel": "live:b"})).await,
        101
    );
    assert_eq!(c.disconnected().await.0, bad_request);
    // Anything else before connect, even what a connected client only gets an error for: an unknown
    // method, a command without a method, a connect with malformed parameters.
    for early in [
        r#"{"id":1,"dance":{}}"#,
        r#"{"id":1}"#,
        r#"{"id":1,"connect":{"token":5}}"#,
    ] {
        let mut c = JsonClient::open(s.addr).await;
        c.send_raw(early).await;
        let reply = c.next().await.unwrap();
        assert_eq!(reply["error"]["code"], 101, "{early}: {reply}");
        assert_eq!(
            c.disconnected().await,
            (bad_request, bad_request),
            "{early}"
        );
    }
    // A binary frame.
    let mut c = JsonClient::connected(s.addr).await;
    c.ws.send_frame(true, false, 2, b"\x00\x01", true).await;
    assert_eq!(c.disconnected().await.0, bad_request);
    // A token, with no verifier configured.
    let mut c = JsonClient::open(s.addr).await;
    assert_eq!(c.error("connect", json!({"token": "x.y.z"})).await, 101);
    assert_eq!(c.disconnected().await.0, Some(3500));
    // The bystander still works.
    bystander
        .ok("publish", json!({"channel": "live:b", "data": "fine"}))
        .await;
    assert_eq!(bystander.push("pub").await["data"], "fine");
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect() {
    let s = start(config()).await;
    let mut c = JsonClient::connected(s.addr).await;
    s.handle.shutdown();
    let (push, close) = c.disconnected().await;
    assert_eq!((push, close), (Some(3001), Some(1001)));
}

#[test]
fn docs_list_every_code() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap();
    for e in ErrorCode::ALL {
        let row = format!("| {} | {} |", e.code(), e.message());
        assert!(doc.contains(&row), "docs/protocol.md lacks {row}");
    }
    for d in DisconnectCode::ALL {
        let row = format!(
            "| {} | {} | {} |",
            d.code(),
            d.reason(),
            if d.reconnect() { "yes" } else { "no" }
        );
        assert!(doc.contains(&row), "docs/protocol.md lacks {row}");
    }
    for u in UnsubscribeCode::ALL {
        let row = format!("| {} | {} |", u.code(), u.reason());
        assert!(doc.contains(&row), "docs/protocol.md lacks {row}");
    }
    for method in [
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
        "rpc",
        "refresh",
    ] {
        assert!(
            doc.contains(&format!("### {method}")) || doc.contains(&format!(", {method}")),
            "{method}"
        );
    }
}

#[tokio::test]
async fn json_that_parsers_read_differently_is_answered_107_and_the_connection_stays() {
    // The next reply, past pushes (our own join).
    async fn reply(c: &mut JsonClient) -> Value {
        loop {
            let v = c.next().await.unwrap();
            if v.get("id").is_some() {
                return v;
            }
        }
    }
    let s = start(config()).await;
    let mut a = JsonClient::connected(s.addr).await;
    a.ok("subscribe", json!({"channel": "chat:rule"})).await;
    // The fuzzing find of issue 18, as sent.
    a.send_raw(r#"{"id":3,"publish":{"channel":"c","data":{"t@ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp]":[1E0040000000000000]}}}"#).await;
    let r = reply(&mut a).await;
    assert_eq!(
        (r["id"].as_u64(), r["error"]["code"].as_u64()),
        (Some(3), Some(107)),
        "{r}"
    );
    a.send_raw(r#"{"id":4,"publish":{"channel":"chat:rule","data":"\udc00"}}"#)
        .await;
    let r = reply(&mut a).await;
    assert_eq!(
        (r["id"].as_u64(), r["error"]["code"].as_u64()),
        (Some(4), Some(107)),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("surrogate"),
        "{r}"
    );
    // `data` is any JSON, null included; the connection still works.
    a.ok("publish", json!({"channel": "chat:rule", "data": null}))
        .await;
    assert_eq!(a.push("pub").await["data"], Value::Null);
}
