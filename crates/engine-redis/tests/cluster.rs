//! The Redis engine against a real Redis Cluster of three masters (its own, on free ports, removed at
//! the end): channels spread over every shard, sharded pub/sub between two nodes in order, history,
//! epochs, presence, idempotency and node-to-node messages, and a shard that goes away and comes back.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use switchboard_engine::conformance::{
    Recorder, WAIT, client, opts, publication, until, until_node_gone,
};
use switchboard_engine::{Engine, EngineError, HistoryQuery, PresenceEvent, Reach, StreamOptions};
use switchboard_engine_redis::testing::{self, RedisCluster};
use switchboard_engine_redis::{RedisConfig, RedisEngine};

async fn engine(seeds: Vec<String>) -> (RedisEngine, Arc<Recorder>) {
    let config = RedisConfig {
        cluster: true,
        ..testing::config(seeds)
    };
    let e = RedisEngine::connect(config).await.unwrap();
    let rec = Recorder::attach(&e);
    (e, rec)
}

/// `n` channel names, and which cluster node serves each (by `CLUSTER KEYSLOT` and `CLUSTER NODES`,
/// not by the engine's view).
fn channels_over_the_cluster(
    cluster: &RedisCluster,
    e: &RedisEngine,
    n: usize,
) -> Vec<(String, usize)> {
    let out: Vec<(String, usize)> = (0..n)
        .map(|i| {
            let c = format!("chat:room{i}");
            let owner = cluster.owner_of(&e.keys().pubsub(&c));
            (c, owner)
        })
        .collect();
    let owners: BTreeSet<usize> = out.iter().map(|(_, o)| *o).collect();
    assert_eq!(owners.len(), 3, "channels on every master: {out:?}");
    out
}

/// A plain connection to one cluster node: it answers for its own slots only.
async fn direct(url: &str) -> Client {
    let c = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

#[tokio::test]
async fn two_nodes_see_every_publication_once_in_order_on_every_shard() {
    let cluster = RedisCluster::start();
    let (a, rec_a) = engine(cluster.urls()).await;
    // One seed is enough: the rest of the cluster is discovered.
    let (b, rec_b) = engine(vec![cluster.urls()[2].clone()]).await;
    let channels = channels_over_the_cluster(&cluster, &a, 24);
    for (c, _) in &channels {
        a.subscribe(c).await.unwrap();
        b.subscribe(c).await.unwrap();
    }
    let o = opts(100, Duration::from_secs(60));
    let (a, b) = (Arc::new(a), Arc::new(b));
    // Concurrent publishers on both nodes, on every channel at once.
    let per_channel = 20_u64;
    let mut tasks = Vec::new();
    for (i, (c, _)) in channels.iter().enumerate() {
        for j in 0..2 {
            let e = if (i + j) % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let (c, o) = (c.clone(), o.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..per_channel / 2 {
                    e.publish(&c, publication(n), &o).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<u64> = (1..=per_channel).collect();
    let total = channels.len() * all.len();
    until("every publication on node a", || {
        rec_a.pubs.lock().len() >= total
    })
    .await;
    until("every publication on node b", || {
        rec_b.pubs.lock().len() >= total
    })
    .await;
    for (c, _) in &channels {
        assert_eq!(rec_a.offsets(c), all, "{c} on a");
        assert_eq!(rec_b.offsets(c), all, "{c} on b");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rec_a.pubs.lock().len(), total, "nothing twice");
    assert_eq!(rec_b.pubs.lock().len(), total, "nothing twice");
    assert!(rec_a.gaps.lock().is_empty() && rec_b.gaps.lock().is_empty());

    // Each channel's stream lives on the master serving its slot, and nowhere else.
    let urls = cluster.urls();
    let mut nodes = Vec::new();
    for u in &urls {
        nodes.push(direct(u).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        let keys: Vec<String> = node
            .custom(
                fred::types::CustomCommand::new_static("KEYS", None, false),
                vec!["test.stream.*"],
            )
            .await
            .unwrap();
        let held: BTreeSet<String> = keys.into_iter().collect();
        let expected: BTreeSet<String> = channels
            .iter()
            .filter(|(_, owner)| *owner == i)
            .map(|(c, _)| a.keys().stream(c))
            .collect();
        assert_eq!(held, expected, "streams on node {i}");
    }

    // Join/leave events go through sharded pub/sub too.
    let (c0, _) = &channels[0];
    a.publish_presence_event(c0, PresenceEvent::Join, client("x", "u"))
        .await
        .unwrap();
    until("join on b", || rec_b.presence.lock().len() == 1).await;
    assert_eq!(
        rec_b.presence.lock()[0],
        (c0.clone(), PresenceEvent::Join, "x".to_owned())
    );
    // Unsubscribed: nothing more arrives on b, a still gets it.
    b.unsubscribe(c0).await.unwrap();
    a.publish(c0, publication(0), &o).await.unwrap();
    until("one more on a", || rec_a.offsets(c0).len() == all.len() + 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rec_b.offsets(c0).len(), all.len());
}

#[tokio::test]
async fn history_epochs_presence_and_idempotency_work_on_every_shard() {
    let cluster = RedisCluster::start();
    let (a, rec_a) = engine(cluster.urls()).await;
    let (b, _) = engine(cluster.urls()).await;
    let channels = channels_over_the_cluster(&cluster, &a, 12);
    let o = opts(3, Duration::from_secs(60));
    for (c, _) in &channels {
        // History bounded by size, one epoch per stream.
        let mut epoch = String::new();
        for i in 1..=5 {
            let e = if i % 2 == 0 { &a } else { &b };
            let pos = e.publish(c, publication(i), &o).await.unwrap();
            assert_eq!(pos.offset, i, "{c}");
            if i > 1 {
                assert_eq!(pos.epoch, epoch, "{c}: one stream, one epoch");
            }
            epoch = pos.epoch;
        }
        let h = b.history(c, &HistoryQuery::default(), &o).await.unwrap();
        assert_eq!(
            h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [3, 4, 5],
            "{c}"
        );
        assert_eq!(h.publications[2].payload, publication(5).payload);
        assert_eq!((h.position.offset, h.position.epoch.as_str()), (5, &*epoch));
        // Removing the history starts a new epoch.
        a.remove_history(c).await.unwrap();
        let after = b.publish(c, publication(6), &o).await.unwrap();
        assert_eq!(after.offset, 1);
        assert_ne!(after.epoch, epoch);
        // Without history: offset 0, nothing kept.
        let live = a.publish(c, publication(7), &StreamOptions::NONE).await;
        assert_eq!(live.unwrap().offset, 0);

        // Presence is shared between nodes.
        a.add_presence(c, client("a1", "u1")).await.unwrap();
        a.add_presence(c, client("a2", "u1")).await.unwrap();
        b.add_presence(c, client("b1", "u2")).await.unwrap();
        let stats = b.presence_stats(c).await.unwrap();
        assert_eq!((stats.num_clients, stats.num_users), (3, 2), "{c}");
        a.remove_presence(c, "a2").await.unwrap();
        let here: BTreeSet<String> = b.presence(c).await.unwrap().into_keys().collect();
        assert_eq!(here, BTreeSet::from(["a1".into(), "b1".into()]), "{c}");

        // Idempotency keys are shared between nodes, per channel.
        let w = Duration::from_secs(30);
        let first = a
            .publish_idempotent(c, publication(8), &o, "k", w)
            .await
            .unwrap();
        let again = b
            .publish_idempotent(c, publication(8), &o, "k", w)
            .await
            .unwrap();
        assert_eq!(first, again, "{c}");
        assert_eq!(first.offset, 2, "{c}");
    }
    // Presence of a node that stops refreshing expires (ttl 1 s), on every shard.
    drop(b);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (c, _) in &channels {
        let left: Vec<String> = a.presence(c).await.unwrap().into_keys().collect();
        assert_eq!(left, ["a1"], "{c}");
    }
    assert!(rec_a.gaps.lock().is_empty());
}

#[tokio::test]
async fn node_messages_reach_their_node_only_and_a_gone_node_is_known_at_once() {
    let cluster = RedisCluster::start();
    let mut engines = Vec::new();
    for _ in 0..6 {
        engines.push(engine(cluster.urls()).await);
    }
    let ids: Vec<String> = engines
        .iter()
        .map(|(e, _)| e.node_id().to_owned())
        .collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());
    let key = |id: &str| engines[0].0.keys().node(id);
    // Node channels are sharded channels too: with six nodes, more than one master holds them.
    let owners: BTreeSet<usize> = ids.iter().map(|id| cluster.owner_of(&key(id))).collect();
    assert!(
        owners.len() > 1,
        "node channels on one master only: {owners:?}"
    );
    // Everyone sends to everyone else.
    for (i, (e, _)) in engines.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                let m = Bytes::from(format!("{i}->{j}\n\x00"));
                e.send_to_node(id, m).await.unwrap();
            }
        }
    }
    for (j, (_, rec)) in engines.iter().enumerate() {
        until("every message", || rec.node_messages.lock().len() == 5).await;
        let got: BTreeSet<Bytes> = rec.node_messages.lock().iter().cloned().collect();
        let want: BTreeSet<Bytes> = (0..6)
            .filter(|i| *i != j)
            .map(|i| Bytes::from(format!("{i}->{j}\n\x00")))
            .collect();
        assert_eq!(got, want, "node {j}");
    }
    // Control messages: to all six through one sharded channel (counted), and back to one.
    let (a, _) = &engines[0];
    let all = Bytes::from_static(b"all");
    assert_eq!(a.broadcast_control(all.clone()).await, Ok(Reach::Nodes(6)));
    for (j, (e, rec)) in engines.iter().enumerate() {
        until("the broadcast", || rec.controls.lock().len() == 1).await;
        let back = Bytes::from(format!("{j}"));
        e.send_control(&ids[0], back).await.unwrap();
    }
    let (_, rec_a) = &engines[0];
    until("every answer", || rec_a.controls.lock().len() == 1 + 6).await;
    let answers: BTreeSet<Bytes> = rec_a.controls.lock()[1..].iter().cloned().collect();
    assert_eq!(answers.len(), 6, "one from each node, this one included");
    assert_eq!(
        a.send_control("00000000", Bytes::new()).await,
        Err(EngineError::UnknownNode("00000000".into()))
    );
    // Nobody listens: known at once.
    let (a, _) = &engines[0];
    let err = a.send_to_node("00000000", Bytes::new()).await.unwrap_err();
    assert_eq!(err, EngineError::UnknownNode("00000000".into()));
    let (gone, _) = engines.pop().unwrap();
    let gone_id = gone.node_id().to_owned();
    drop(gone);
    let (a, _) = &engines[0];
    until_node_gone(a, &gone_id).await;
}

#[tokio::test]
async fn a_shard_that_is_down_fails_fast_and_its_channels_recover_when_it_returns() {
    let mut cluster = RedisCluster::start();
    let (a, rec_a) = engine(cluster.urls()).await;
    let (b, rec_b) = engine(cluster.urls()).await;
    let channels = channels_over_the_cluster(&cluster, &a, 12);
    let o = opts(10, Duration::from_secs(60));
    for (c, _) in &channels {
        a.subscribe(c).await.unwrap();
        b.subscribe(c).await.unwrap();
        b.publish(c, publication(1), &o).await.unwrap();
    }
    until("first round", || rec_a.pubs.lock().len() == channels.len()).await;
    assert!(a.ready() && b.ready());

    // Stop the master serving the first channel.
    let down = channels[0].1;
    cluster.node(down).stop();
    let (on_down, _) = channels.iter().find(|(_, o)| *o == down).unwrap();
    let started = Instant::now();
    let err = a.publish(on_down, publication(2), &o).await.unwrap_err();
    let took = started.elapsed();
    assert!(err.to_string().contains("Redis"), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "an error, not a hang: {took:?}"
    );
    until("not ready while a shard is down", || !a.ready()).await;
    // Without a replica to take over, the client reconnects to the whole cluster: every channel
    // fails fast meanwhile, none hangs.
    let (on_up, _) = channels.iter().find(|(_, o)| *o != down).unwrap();
    let started = Instant::now();
    assert!(a.publish(on_up, publication(2), &o).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));

    // Back (empty, with the same slots): every channel is subscribed again and reported as a gap.
    cluster.node(down).restart();
    cluster.wait_until_ok();
    until("ready again", || a.ready() && b.ready()).await;
    let gaps: BTreeSet<String> = rec_a.gaps.lock().iter().cloned().collect();
    let lost: BTreeSet<String> = channels
        .iter()
        .filter(|(_, o)| *o == down)
        .map(|(c, _)| c.clone())
        .collect();
    assert!(gaps.is_superset(&lost), "gaps {gaps:?}, lost {lost:?}");
    // Live publications flow again on every channel; the restarted shard's streams have new epochs.
    let before_a = rec_a.pubs.lock().len();
    let before_b = rec_b.pubs.lock().len();
    let mut offsets = Vec::new();
    for (c, _) in &channels {
        let deadline = tokio::time::Instant::now() + WAIT;
        let pos = loop {
            match b.publish(c, publication(3), &o).await {
                Ok(pos) => break pos,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{c}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        offsets.push((c.clone(), pos.offset));
    }
    for (c, offset) in &offsets {
        let expected = if lost.contains(c) { 1 } else { 2 };
        assert_eq!(*offset, expected, "{c}");
    }
    until("live on a after the return", || {
        rec_a.pubs.lock().len() == before_a + channels.len()
    })
    .await;
    until("live on b after the return", || {
        rec_b.pubs.lock().len() == before_b + channels.len()
    })
    .await;
}

#[tokio::test]
async fn subscribers_follow_a_slot_moved_to_another_master_and_lose_nothing_silently() {
    let cluster = RedisCluster::start();
    // Node a only listens: it never sends a command to the moved slot, so it must notice the move
    // by itself. Node b publishes.
    let (a, rec_a) = engine(cluster.urls()).await;
    let (b, _) = engine(cluster.urls()).await;
    let c = "chat:moving";
    a.subscribe(c).await.unwrap();
    let o = opts(100, Duration::from_secs(60));
    for n in 1..=3 {
        b.publish(c, publication(n), &o).await.unwrap();
    }
    until("before the move", || rec_a.offsets(c).len() == 3).await;
    let slot = cluster.slot_of(&a.keys().pubsub(c));
    let from = cluster.owner_of_slot(slot);
    let to = (from + 1) % 3;
    cluster.move_slot(slot, to);
    assert_eq!(cluster.owner_of(&a.keys().stream(c)), to);

    // Publish until node a receives live again. Every offset either arrives, or node a reports the
    // channel as a gap (its subscribers then recover from history, which moved with the slot).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = 3;
    let mut failed = 0;
    loop {
        match b.publish(c, publication(last + 1), &o).await {
            Ok(pos) => last = pos.offset,
            // The first command after the move is redirected; the engine never retries a publish
            // (it might have run), so this one fails fast, and the next goes to the new master.
            Err(e) => {
                failed += 1;
                assert!(failed <= 1, "{e}");
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if rec_a.offsets(c).last() == Some(&last) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node a hears nothing after the move: {:?}, gaps {:?}",
            rec_a.offsets(c),
            rec_a.gaps.lock()
        );
    }
    let got = rec_a.offsets(c);
    let contiguous = got.iter().copied().eq(1..=last);
    assert!(
        contiguous || rec_a.gaps.lock().iter().any(|g| g == c),
        "publications lost without a gap: {got:?}"
    );
    let h = a.history(c, &HistoryQuery::default(), &o).await.unwrap();
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "history moved with the slot"
    );
    // Node a subscribes anew (as its clients would after a gap) and hears every later publication.
    a.subscribe(c).await.unwrap();
    let before = rec_a.offsets(c).len();
    b.publish(c, publication(0), &o).await.unwrap();
    until("live after the move", || {
        rec_a.offsets(c).len() == before + 1
    })
    .await;
}
