//! What only the Redis engine does, against real `redis-server`s of its own (started on free ports,
//! stopped at the end): sharding channels and node messages over several Redis, a Redis that is not
//! there at start, and not being ready while Redis is away. What every engine must do is in the shared
//! conformance suite (tests/conformance.rs).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use switchboard_engine::conformance::{Recorder, WAIT, opts, publication, until, until_node_gone};
use switchboard_engine::{Engine, EngineError, Reach};
use switchboard_engine_redis::testing::{RedisServer, config, urls};
use switchboard_engine_redis::{RedisEngine, shard_of};

async fn engine(servers: &[&RedisServer]) -> (RedisEngine, Arc<Recorder>) {
    let e = RedisEngine::connect(config(urls(servers))).await.unwrap();
    let rec = Recorder::attach(&e);
    (e, rec)
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
async fn a_missing_redis_stops_the_start_with_its_address() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let mut c = config(vec![]);
    c.addresses = vec![url.clone()];
    let err = RedisEngine::connect(c).await.unwrap_err().to_string();
    assert!(
        err.contains(&url) && err.contains("cannot connect"),
        "{err}"
    );
    let mut c = config(vec![]);
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
    until_node_gone(&a, &gone).await;
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

#[tokio::test]
async fn control_messages_go_through_the_shard_every_node_computes_alike() {
    // Two Redis: the shared control channel lives on one, each node's own on the one its id
    // hashes to.
    let r1 = RedisServer::start();
    let r2 = RedisServer::start();
    let (a, rec_a) = engine(&[&r1, &r2]).await;
    let (b, rec_b) = engine(&[&r1, &r2]).await;
    let (c, rec_c) = engine(&[&r1, &r2]).await;
    let all = Bytes::from_static(b"{\"to\":\"all\"}");
    assert_eq!(a.broadcast_control(all.clone()).await, Ok(Reach::Nodes(3)));
    for (name, rec) in [("a", &rec_a), ("b", &rec_b), ("c", &rec_c)] {
        until(name, || rec.controls.lock().len() == 1).await;
        assert_eq!(rec.controls.lock()[..], [all.clone()][..], "{name}");
    }
    for (from, to) in [(&b, &a), (&c, &a), (&a, &b), (&a, &c)] {
        from.send_control(to.node_id(), Bytes::from_static(b"answer"))
            .await
            .unwrap();
    }
    until("a's answers", || rec_a.controls.lock().len() == 3).await;
    until("b's", || rec_b.controls.lock().len() == 2).await;
    until("c's", || rec_c.controls.lock().len() == 2).await;
    for rec in [&rec_a, &rec_b, &rec_c] {
        assert!(rec.node_messages.lock().is_empty(), "not node messages");
    }
}
