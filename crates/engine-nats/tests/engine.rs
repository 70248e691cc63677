//! Two NATS engines (two nodes) on one `nats-server`: what one publishes reaches the other's
//! subscribers, history and recovery read the same stream from either, channel names that are not
//! subject tokens stay apart, and a live message that skips an offset is reported as a gap.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use switchboard_engine::conformance::{Recorder, client, opts, publication, until};
use switchboard_engine::{Engine, HistoryQuery, StreamOptions};
use switchboard_engine_nats::testing::NatsServer;
use switchboard_engine_nats::{NatsConfig, NatsEngine};

fn config(nats: &NatsServer) -> NatsConfig {
    NatsConfig {
        servers: vec![nats.url()],
        prefix: "two".into(),
        presence_ttl: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    }
}

async fn node(nats: &NatsServer) -> (NatsEngine, Arc<Recorder>) {
    let e = NatsEngine::connect(config(nats)).await.unwrap();
    let rec = Arc::new(Recorder::default());
    e.set_handler(rec.clone());
    (e, rec)
}

#[tokio::test]
async fn a_publication_on_one_node_reaches_the_other_and_both_read_the_same_history() {
    let nats = NatsServer::start();
    let (a, rec_a) = node(&nats).await;
    let (b, rec_b) = node(&nats).await;
    let o = opts(100, Duration::from_secs(60));
    a.subscribe("news").await.unwrap();
    // Interest only: b has no subscriber of "news", and receives nothing of it.
    let first = b.publish("news", publication(1), &o).await.unwrap();
    let second = b.publish("news", publication(2), &o).await.unwrap();
    assert_eq!((first.offset, second.offset), (1, 2));
    until("both on a", || rec_a.offsets("news") == [1, 2]).await;
    assert_eq!(rec_a.pubs.lock()[0].2, first.epoch, "with the epoch");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rec_b.pubs.lock().is_empty(), "b subscribed to nothing");

    // Recovery on either node: what came after offset 1, in the same epoch.
    for e in [&a, &b] {
        let since = HistoryQuery {
            since: Some(1),
            ..HistoryQuery::default()
        };
        let h = e.history("news", &since, &o).await.unwrap();
        assert_eq!(
            h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(h.publications[0].payload, publication(2).payload);
        assert_eq!((h.position.offset, &h.position.epoch), (2, &first.epoch));
    }
    // Publishes alternate between the nodes and the offsets still follow each other.
    for n in 3..=6 {
        let e = if n % 2 == 0 { &a } else { &b };
        assert_eq!(
            e.publish("news", publication(n), &o).await.unwrap().offset,
            n
        );
    }
    until("six on a", || rec_a.offsets("news") == [1, 2, 3, 4, 5, 6]).await;

    // Without history: delivered, offset 0, nothing kept.
    let none = a
        .publish("news", publication(7), &StreamOptions::NONE)
        .await
        .unwrap();
    assert_eq!(none.offset, 0);
    until("seventh", || rec_a.offsets("news").len() == 7).await;
    assert!(
        rec_a.gaps.lock().is_empty(),
        "no gap: {:?}",
        rec_a.gaps.lock()
    );

    // Presence written on b is seen on a.
    b.add_presence("news", client("b1", "u")).await.unwrap();
    assert!(a.presence("news").await.unwrap().contains_key("b1"));
}

#[tokio::test]
async fn channel_names_that_are_not_subject_tokens_stay_apart() {
    let nats = NatsServer::start();
    let (a, rec) = node(&nats).await;
    let (b, _) = node(&nats).await;
    let o = opts(10, Duration::from_secs(60));
    let names = ["a.b", "a", "*", ">", "a b", "ünï:1", ""];
    for c in names {
        a.subscribe(c).await.unwrap();
    }
    for (i, c) in names.iter().enumerate() {
        for _ in 0..=i {
            b.publish(c, publication(0), &o).await.unwrap();
        }
    }
    for (i, c) in names.iter().enumerate() {
        let want: Vec<u64> = (1..=i as u64 + 1).collect();
        until(c, || rec.offsets(c) == want).await;
        let h = a.history(c, &HistoryQuery::default(), &o).await.unwrap();
        assert_eq!(h.position.offset, i as u64 + 1, "{c:?}");
    }
    // Another history setting is another stream, with its own limits.
    let small = opts(2, Duration::from_secs(60));
    for _ in 0..5 {
        b.publish("other", publication(0), &small).await.unwrap();
    }
    let h = a
        .history("other", &HistoryQuery::default(), &small)
        .await
        .unwrap();
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [4, 5]
    );
}

#[tokio::test]
async fn a_live_message_that_skips_an_offset_is_reported_as_a_gap() {
    let nats = NatsServer::start();
    let (a, rec) = node(&nats).await;
    let o = opts(10, Duration::from_secs(60));
    a.subscribe("c").await.unwrap();
    let pos = a.publish("c", publication(1), &o).await.unwrap();
    until("first", || rec.offsets("c") == [1]).await;
    assert!(rec.gaps.lock().is_empty());
    // What a node sees when the broker dropped offset 2 on its way: offset 3 of the same epoch.
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sb-Kind", "p");
    headers.insert("Sb-Offset", "3");
    headers.insert("Sb-Epoch", pos.epoch.as_str());
    let subject = format!(
        "two.l.c{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("c")
    );
    raw.publish_with_headers(subject.clone(), headers, Bytes::from_static(b"{\"d\":3}"))
        .await
        .unwrap();
    raw.flush().await.unwrap();
    until("the gap", || rec.gaps.lock().as_slice() == ["c"]).await;
    until("delivered after the report", || rec.offsets("c") == [1, 3]).await;
    // Something this engine did not write: a gap too, never a panic nor a silent drop.
    raw.publish(subject, Bytes::from_static(b"garbage"))
        .await
        .unwrap();
    raw.flush().await.unwrap();
    until("the second gap", || rec.gaps.lock().len() == 2).await;
}

#[tokio::test]
async fn the_engine_does_not_start_without_nats_or_without_jetstream_and_says_which() {
    let plain = NatsServer::start_without_jetstream();
    let err = NatsEngine::connect(config(&plain))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("JetStream"), "{err}");
    assert!(
        err.contains(&plain.addr().to_string()),
        "names the server: {err}"
    );

    let nobody = format!(
        "nats://127.0.0.1:{}",
        switchboard_engine_nats::testing::free_port()
    );
    let started = std::time::Instant::now();
    let err = NatsEngine::connect(NatsConfig {
        servers: vec![nobody],
        ..config(&plain)
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot connect to NATS"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the connect timeout: {:?}",
        started.elapsed()
    );
    let err = NatsEngine::connect(NatsConfig {
        servers: vec!["nats://u:secret@127.0.0.1:1".into()],
        ..config(&plain)
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(!err.contains("secret"), "no password in errors: {err}");
}
