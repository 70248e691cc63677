//! The Redis engine against a real `redis-server` of its own (started on a free port, stopped at the
//! end): ordering, history bounds, epochs, presence expiry, idempotency, several nodes, sharding, and
//! what happens when Redis goes away and comes back.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Recorder, WAIT, until};
use fred::prelude::*;
use switchboard_engine::{Engine, EngineError, HistoryQuery, PresenceEvent, StreamOptions};
use switchboard_engine_redis::testing::RedisServer;
use switchboard_engine_redis::{RedisConfig, RedisEngine, shard_of};
use switchboard_protocol::{ClientInfo, Payload, Publication};

fn config(servers: &[&RedisServer]) -> RedisConfig {
    RedisConfig {
        addresses: servers.iter().map(|s| s.url()).collect(),
        prefix: "test".into(),
        presence_ttl: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        cluster: false,
    }
}

fn opts(size: usize, ttl: Duration) -> StreamOptions {
    StreamOptions {
        history_size: size,
        history_ttl: ttl,
        history_meta_ttl: ttl * 10,
    }
}

fn publication(n: u64) -> Publication {
    Publication::new(Payload::Json(Bytes::from(n.to_string())))
}

async fn engine(servers: &[&RedisServer]) -> (RedisEngine, Arc<Recorder>) {
    let e = RedisEngine::connect(config(servers)).await.unwrap();
    let rec = Arc::new(Recorder::default());
    e.set_handler(rec.clone());
    (e, rec)
}

#[tokio::test]
async fn publish_orders_offsets_and_bounds_history_by_size() {
    let redis = RedisServer::start();
    let (e, rec) = engine(&[&redis]).await;
    e.subscribe("c").await.unwrap();
    let o = opts(3, Duration::from_secs(60));
    let mut epoch = String::new();
    for i in 1..=5 {
        let pos = e.publish("c", publication(i), &o).await.unwrap();
        assert_eq!(pos.offset, i);
        if i > 1 {
            assert_eq!(pos.epoch, epoch, "one stream, one epoch");
        }
        epoch = pos.epoch;
    }
    let h = e.history("c", &HistoryQuery::default(), &o).await.unwrap();
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(h.publications[0].payload, publication(3).payload);
    assert_eq!(
        (h.position.offset, h.position.epoch.as_str()),
        (5, epoch.as_str())
    );
    let q = HistoryQuery {
        since: Some(3),
        limit: Some(1),
        reverse: true,
    };
    let h = e.history("c", &q, &o).await.unwrap();
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [5]
    );
    until("5 deliveries", || rec.offsets("c").len() == 5).await;
    assert_eq!(rec.offsets("c"), [1, 2, 3, 4, 5]);
    // Without history: delivered, offset 0, nothing kept.
    let pos = e
        .publish("c", publication(6), &StreamOptions::NONE)
        .await
        .unwrap();
    assert_eq!(pos.offset, 0);
    until("the live one", || rec.offsets("c").len() == 6).await;
    assert_eq!(rec.offsets("c")[5], 0);
}

#[tokio::test]
async fn history_expires_by_ttl_and_the_epoch_changes_when_the_stream_is_lost() {
    let redis = RedisServer::start();
    let (e, _) = engine(&[&redis]).await;
    let o = StreamOptions {
        history_size: 10,
        history_ttl: Duration::from_millis(400),
        history_meta_ttl: Duration::from_millis(1500),
    };
    let first = e.publish("c", publication(1), &o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let h = e.history("c", &HistoryQuery::default(), &o).await.unwrap();
    assert!(h.publications.is_empty(), "expired by ttl");
    assert_eq!(h.position, first, "same stream, same position");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let h = e.history("c", &HistoryQuery::default(), &o).await.unwrap();
    assert_ne!(h.position.epoch, first.epoch, "stream lost: new epoch");
    assert_eq!(h.position.offset, 0);
    // A read creates the stream: the next publication continues its epoch.
    let next = e.publish("c", publication(2), &o).await.unwrap();
    assert_eq!((next.offset, &next.epoch), (1, &h.position.epoch));
    // Removing the history loses the stream too.
    e.remove_history("c").await.unwrap();
    let after = e.publish("c", publication(3), &o).await.unwrap();
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, next.epoch);
}

#[tokio::test]
async fn entries_older_than_the_ttl_leave_history_one_by_one() {
    let redis = RedisServer::start();
    let (e, _) = engine(&[&redis]).await;
    let o = opts(10, Duration::from_millis(700));
    e.publish("c", publication(1), &o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    e.publish("c", publication(2), &o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let h = e.history("c", &HistoryQuery::default(), &o).await.unwrap();
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [2],
        "the first is older than the ttl, the second is not"
    );
}

#[tokio::test]
async fn two_nodes_see_every_publication_once_in_order() {
    let redis = RedisServer::start();
    let (a, rec_a) = engine(&[&redis]).await;
    let (b, rec_b) = engine(&[&redis]).await;
    a.subscribe("c").await.unwrap();
    b.subscribe("c").await.unwrap();
    let o = opts(100, Duration::from_secs(60));
    let (a, b) = (Arc::new(a), Arc::new(b));
    // Concurrent publishers on both nodes.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let e = if i % 2 == 0 { a.clone() } else { b.clone() };
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..25 {
                e.publish("c", publication(n), &o).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<u64> = (1..=100).collect();
    until("100 on node a", || rec_a.offsets("c").len() >= 100).await;
    until("100 on node b", || rec_b.offsets("c").len() >= 100).await;
    assert_eq!(rec_a.offsets("c"), all);
    assert_eq!(rec_b.offsets("c"), all);
    // Join/leave events reach both nodes too.
    let info = Arc::new(ClientInfo {
        client: "x".into(),
        user: "u".into(),
        info: None,
    });
    a.publish_presence_event("c", PresenceEvent::Join, info)
        .await
        .unwrap();
    until("join on b", || rec_b.presence.lock().len() == 1).await;
    // Unsubscribed: nothing more arrives.
    b.unsubscribe("c").await.unwrap();
    a.publish("c", publication(0), &o).await.unwrap();
    until("101 on node a", || rec_a.offsets("c").len() == 101).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rec_b.offsets("c").len(), 100);
}

#[tokio::test]
async fn presence_is_shared_and_expires_when_its_node_is_gone() {
    let redis = RedisServer::start();
    let (a, _) = engine(&[&redis]).await;
    let (b, _) = engine(&[&redis]).await;
    for (client, user) in [("a1", "u1"), ("a2", "u1")] {
        let info = Arc::new(ClientInfo {
            client: client.into(),
            user: user.into(),
            info: None,
        });
        a.add_presence("room", info).await.unwrap();
    }
    let info = Arc::new(ClientInfo {
        client: "b1".into(),
        user: "u2".into(),
        info: Some(serde_json::value::RawValue::from_string(r#"{"n":1}"#.into()).unwrap()),
    });
    b.add_presence("room", info.clone()).await.unwrap();
    let stats = b.presence_stats("room").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    assert_eq!(a.presence("room").await.unwrap()["b1"], info);
    a.remove_presence("room", "a2").await.unwrap();
    assert_eq!(b.presence("room").await.unwrap().len(), 2);
    // Refreshed while its node lives: still there after more than a ttl (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.presence("room").await.unwrap().len(), 2);
    // Node a stops refreshing: its entry goes within the ttl.
    drop(a);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = b.presence("room").await.unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), ["b1"]);
}

#[tokio::test]
async fn idempotency_keys_are_shared_between_nodes() {
    let redis = RedisServer::start();
    let (a, rec) = engine(&[&redis]).await;
    let (b, _) = engine(&[&redis]).await;
    a.subscribe("c").await.unwrap();
    assert!(a.remembers_idempotency_keys());
    let o = opts(10, Duration::from_secs(60));
    let w = Duration::from_millis(500);
    let first = a
        .publish_idempotent("c", publication(1), &o, "k", w)
        .await
        .unwrap();
    let again = b
        .publish_idempotent("c", publication(1), &o, "k", w)
        .await
        .unwrap();
    assert_eq!(first, again);
    let other_channel = b
        .publish_idempotent("d", publication(1), &o, "k", w)
        .await
        .unwrap();
    assert_eq!(other_channel.offset, 1, "keys are per channel");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = b
        .publish_idempotent("c", publication(1), &o, "k", w)
        .await
        .unwrap();
    assert_eq!(later.offset, 2, "the window passed");
    until("two deliveries", || rec.offsets("c").len() == 2).await;
}

#[tokio::test]
async fn channels_are_sharded_over_several_redis_by_consistent_hashing() {
    let (r0, r1) = (RedisServer::start(), RedisServer::start());
    let (e, rec) = engine(&[&r0, &r1]).await;
    let o = opts(10, Duration::from_secs(60));
    let channels: Vec<String> = (0..20).map(|i| format!("ch{i}")).collect();
    for c in &channels {
        e.subscribe(c).await.unwrap();
        e.publish(c, publication(1), &o).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while rec.pubs.lock().len() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: 20 deliveries, got {:?}",
            rec.pubs.lock()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let direct = |r: &RedisServer| {
        Builder::from_config(Config::from_url(&r.url()).unwrap())
            .build()
            .unwrap()
    };
    let (c0, c1) = (direct(&r0), direct(&r1));
    c0.init().await.unwrap();
    c1.init().await.unwrap();
    let mut on = [0, 0];
    for c in &channels {
        let key = e.keys().stream(c);
        let there: [bool; 2] = [
            c0.exists::<u32, _>(&key).await.unwrap() == 1,
            c1.exists::<u32, _>(&key).await.unwrap() == 1,
        ];
        let expected = shard_of(c, 2);
        assert!(there[expected] && !there[1 - expected], "{c}: {there:?}");
        on[expected] += 1;
    }
    assert!(on[0] > 0 && on[1] > 0, "both shards used: {on:?}");
}

#[tokio::test]
async fn after_redis_returns_every_channel_is_resubscribed_and_reported_as_a_gap() {
    let mut redis = RedisServer::start();
    let (e, rec) = engine(&[&redis]).await;
    let o = opts(10, Duration::from_secs(60));
    e.subscribe("a").await.unwrap();
    e.subscribe("b").await.unwrap();
    let before = e.publish("a", publication(1), &o).await.unwrap();
    until("first", || rec.offsets("a").len() == 1).await;
    assert!(e.ready());
    redis.stop();
    until("not ready while Redis is down", || !e.ready()).await;
    let err = e.publish("a", publication(2), &o).await.unwrap_err();
    assert!(err.to_string().contains("Redis"), "{err}");
    redis.restart();
    until("ready again", || e.ready()).await;
    let mut gaps = rec.gaps.lock().clone();
    gaps.sort();
    assert_eq!(gaps, ["a", "b"], "every channel may have lost publications");
    // Subscribed again: live publications flow; Redis lost its data, so this is a new epoch.
    let after = e.publish("a", publication(3), &o).await.unwrap();
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, before.epoch);
    until("live after return", || rec.offsets("a").len() == 2).await;
}

#[tokio::test]
async fn a_missing_redis_stops_the_start_with_its_address() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let mut c = config(&[]);
    c.addresses = vec![url.clone()];
    let err = RedisEngine::connect(c).await.unwrap_err().to_string();
    assert!(
        err.contains(&url) && err.contains("cannot connect"),
        "{err}"
    );
    let mut c = config(&[]);
    c.addresses = vec![url];
    c.prefix = "a{b".into();
    let err = RedisEngine::connect(c).await.unwrap_err().to_string();
    assert!(err.contains("prefix"), "{err}");
}

#[tokio::test]
async fn node_messages_reach_their_node_only_and_a_gone_node_is_known_at_once() {
    // Two Redis: each node listens on the one its id hashes to, and every node computes the same.
    let mut r1 = RedisServer::start();
    let mut r2 = RedisServer::start();
    let (a, rec_a) = engine(&[&r1, &r2]).await;
    let (b, rec_b) = engine(&[&r1, &r2]).await;
    let (c, rec_c) = engine(&[&r1, &r2]).await;
    let ids = [a.node_id(), b.node_id(), c.node_id()];
    for id in ids {
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|x| x.is_ascii_hexdigit()), "{id}");
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    // Binary bodies go through as they are.
    let message = Bytes::from_static(b"Q{\"x\":1}\n\x00\xff");
    a.send_to_node(b.node_id(), message.clone()).await.unwrap();
    c.send_to_node(b.node_id(), Bytes::from_static(b"2"))
        .await
        .unwrap();
    b.send_to_node(a.node_id(), Bytes::from_static(b"back"))
        .await
        .unwrap();
    until("b's two messages", || rec_b.node_messages.lock().len() == 2).await;
    until("a's answer", || rec_a.node_messages.lock().len() == 1).await;
    assert!(rec_b.node_messages.lock().contains(&message));
    assert_eq!(*rec_a.node_messages.lock(), [Bytes::from_static(b"back")]);
    assert!(rec_c.node_messages.lock().is_empty(), "only the node named");
    // Nobody listens: known at once, not after a timeout.
    let err = a.send_to_node("00000000", Bytes::new()).await.unwrap_err();
    assert_eq!(err, EngineError::UnknownNode("00000000".into()));
    let gone = c.node_id().to_owned();
    drop(c);
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.send_to_node(&gone, Bytes::new()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a gone node still listens"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // After its Redis restarts, a node listens again on its channel.
    let shard = shard_of(b.node_id(), 2);
    let holder = if shard == 0 { &mut r1 } else { &mut r2 };
    holder.stop();
    // The node stays ready (the other shard answers), its shard does not.
    until("its shard down", || !b.shards()[shard].ready).await;
    holder.restart();
    let all_ready = |e: &RedisEngine| e.shards().iter().all(|s| s.ready);
    until("ready", || all_ready(&a) && all_ready(&b)).await;
    let before = rec_b.node_messages.lock().len();
    let deadline = tokio::time::Instant::now() + WAIT;
    while a
        .send_to_node(b.node_id(), Bytes::from_static(b"again"))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never listened again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until("after the restart", || {
        rec_b.node_messages.lock().len() > before
    })
    .await;
}
