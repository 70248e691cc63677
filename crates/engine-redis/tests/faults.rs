//! Faults of Redis, as the engine reports them: a Redis that stops answering (SIGSTOP) makes even an
//! idle engine not ready within about `command_timeout`, and ready again within a second of it
//! answering; one shard down of two leaves the engine ready and says which shard is down; a publish
//! whose answer was lost is reported as of unknown outcome, and its retry with the same idempotency
//! key does not publish twice; messages between nodes during and just after an outage are reported
//! uncertain, not their node gone. Every Redis is stopped (resumed first) when its test ends.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_engine::conformance::{
    Recorder, assert_published_once, opts, publication, time_until, until,
};
use switchboard_engine::{Engine, EngineError, StreamOptions};
use switchboard_engine_redis::testing::{self, RedisServer, urls};
use switchboard_engine_redis::{RedisConfig, RedisEngine, shard_of};

/// The command timeout of these tests: short, so that outages are noticed quickly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

fn config(servers: &[&RedisServer]) -> RedisConfig {
    RedisConfig {
        prefix: "faults".into(),
        presence_ttl: Duration::from_secs(5),
        command_timeout: COMMAND_TIMEOUT,
        ..testing::config(urls(servers))
    }
}

async fn engine(servers: &[&RedisServer]) -> (RedisEngine, Arc<Recorder>) {
    let e = RedisEngine::connect(config(servers)).await.unwrap();
    let rec = Recorder::attach(&e);
    (e, rec)
}

fn history() -> StreamOptions {
    opts(100, Duration::from_secs(60))
}

#[tokio::test]
async fn an_idle_engine_notices_a_paused_redis_within_the_command_timeout_and_its_return_at_once() {
    let mut redis = RedisServer::start();
    // Nothing is sent by the test meanwhile: only the engine's own PING can notice.
    let (e, _rec) = engine(&[&redis]).await;
    assert!(e.ready());
    // Twice: the second pause comes after fred reconnected once, the way a flapping Redis does.
    for round in 0..2 {
        redis.pause();
        // At most one PING period (half the timeout) plus the timeout, with room for a slow machine.
        let down = time_until("not ready after the pause", COMMAND_TIMEOUT * 3, || {
            !e.ready()
        })
        .await;
        let shards = e.shards();
        assert_eq!(shards.len(), 1);
        assert!(!shards[0].ready, "{shards:?}");
        assert_eq!(
            shards[0].name,
            redis.addr().to_string(),
            "no credentials, host:port"
        );
        // Longer than the timeout: fred gives up on its connections and reconnects meanwhile.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!e.ready(), "still paused");
        redis.resume();
        let up = time_until("ready after resuming", Duration::from_secs(3), || e.ready()).await;
        eprintln!("round {round}: not ready {down:?} after the pause, ready {up:?} after resuming");
        assert!(
            up <= Duration::from_millis(1500),
            "ready {up:?} after Redis answered again, not within about a second"
        );
        assert!(e.shards()[0].ready);
    }
}

#[tokio::test]
async fn with_one_of_two_shards_down_the_engine_stays_ready_and_names_the_shard_down() {
    let a = RedisServer::start();
    let mut b = RedisServer::start();
    let (e, _rec) = engine(&[&a, &b]).await;
    let on = |shard: usize| {
        (0..)
            .map(|i| format!("c{i}"))
            .find(|c| shard_of(c, 2) == shard)
            .unwrap()
    };
    let (first, second) = (on(0), on(1));
    e.publish(&first, publication(1), &history()).await.unwrap();
    e.publish(&second, publication(1), &history())
        .await
        .unwrap();

    b.stop();
    until("shard 1 down", || {
        let s = e.shards();
        s[0].ready && !s[1].ready
    })
    .await;
    assert!(e.ready(), "ready while one shard answers");
    let s = e.shards();
    assert_eq!(
        (s[0].name.clone(), s[1].name.clone()),
        (a.addr().to_string(), b.addr().to_string())
    );
    // The channels of the shard that answers still work; the others fail, temporarily.
    let pos = e.publish(&first, publication(2), &history()).await.unwrap();
    assert_eq!(pos.offset, 2);
    // Unavailable, or of unknown outcome when the command was on its way as the shard went.
    assert!(matches!(
        e.publish(&second, publication(2), &history()).await,
        Err(EngineError::Unavailable(_) | EngineError::UnknownOutcome(_))
    ));

    b.restart();
    until("both shards ready", || e.shards().iter().all(|s| s.ready)).await;
    e.publish(&second, publication(1), &history())
        .await
        .unwrap();

    // Both down: not ready.
    drop(a);
    b.stop();
    until("not ready without any shard", || !e.ready()).await;
    assert!(e.shards().iter().all(|s| !s.ready));
}

#[tokio::test]
async fn a_publish_unanswered_during_a_pause_is_of_unknown_outcome_and_its_retry_does_not_double() {
    let mut redis = RedisServer::start();
    let (e, _rec) = engine(&[&redis]).await;
    let window = Duration::from_secs(60);
    e.publish_idempotent("c", publication(0), &history(), "k0", window)
        .await
        .unwrap();

    redis.pause();
    let err = e
        .publish_idempotent("c", publication(1), &history(), "k1", window)
        .await
        .unwrap_err();
    let EngineError::UnknownOutcome(message) = &err else {
        panic!("{err:?}");
    };
    assert!(
        message.contains("outcome is unknown") && message.contains("idempotency_key"),
        "the error says what to do: {message}"
    );
    redis.resume();
    until("ready again", || e.ready()).await;

    // The retry, with the same key: Redis ran the first attempt when it resumed (or not); either
    // way there is one publication with `1`.
    let pos = e
        .publish_idempotent("c", publication(1), &history(), "k1", window)
        .await
        .unwrap();
    assert_published_once(&e, "c", 1, &pos, &history()).await;
}

#[tokio::test]
async fn node_messages_are_uncertain_during_an_outage_and_until_nodes_listen_again() {
    let mut redis = RedisServer::start();
    let (a, _ra) = engine(&[&redis]).await;
    let (b, rb) = engine(&[&redis]).await;
    let to_b = b.node_id().to_owned();
    let before = Instant::now();
    a.send_to_node(&to_b, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    until("b got it", || rb.node_messages.lock().len() == 1).await;
    assert!(
        !a.node_messages_uncertain(&to_b, before),
        "all well: certain"
    );

    let sent = Instant::now();
    redis.stop();
    until("a not ready", || !a.ready()).await;
    assert!(a.node_messages_uncertain(&to_b, sent));
    redis.restart();
    until("a ready", || a.ready()).await;
    // Back, but b may not listen yet: still uncertain for a while, then certain again for new
    // messages, while one sent during the outage stays uncertain.
    assert!(a.node_messages_uncertain(&to_b, Instant::now()));
    until("b ready", || b.ready()).await;
    let settled = time_until("certain again", Duration::from_secs(10), || {
        !a.node_messages_uncertain(&to_b, Instant::now())
    })
    .await;
    assert!(a.node_messages_uncertain(&to_b, sent));
    eprintln!("certain again {settled:?} after ready");
    a.send_to_node(&to_b, Bytes::from_static(b"again"))
        .await
        .unwrap();
    until("b got it", || rb.node_messages.lock().len() == 2).await;
}
