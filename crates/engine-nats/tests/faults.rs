//! Faults of NATS, as the engine reports them: a server killed (SIGKILL) makes the engine not ready
//! at once and ready again once it is back, with a gap reported on every channel; back with its
//! store, the stream goes on in the same epoch with nothing missing; back without it (streams
//! lost), a new epoch, so that recovery from before fails instead of handing out a silent gap. A
//! server that hangs (SIGSTOP) makes even an idle engine not ready within about
//! `command_timeout`, and a publish it leaves unanswered is of unknown outcome, whose retry with the
//! same idempotency key does not publish twice. Errors are temporary and say nothing internal to
//! clients.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_engine::conformance::{
    Recorder, assert_published_once, opts, publication, time_until, until,
};
use switchboard_engine::{Engine, EngineError, HistoryQuery, StreamOptions};
use switchboard_engine_nats::testing::{self, NatsServer};
use switchboard_engine_nats::{NatsConfig, NatsEngine};

/// The request timeout of these tests: short, so that outages are noticed quickly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

async fn engine(nats: &NatsServer) -> (NatsEngine, Arc<Recorder>) {
    let config = NatsConfig {
        prefix: "faults".into(),
        presence_ttl: Duration::from_secs(5),
        command_timeout: COMMAND_TIMEOUT,
        ..testing::config(vec![nats.url()])
    };
    let e = NatsEngine::connect(config).await.unwrap();
    let rec = Recorder::attach(&e);
    (e, rec)
}

fn history() -> StreamOptions {
    opts(100, Duration::from_secs(60))
}

/// Publishes, retrying while the engine reconnects.
async fn publish_when_back(
    e: &NatsEngine,
    channel: &str,
    n: u64,
) -> switchboard_protocol::StreamPosition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match e.publish(channel, publication(n), &history()).await {
            Ok(pos) => return pos,
            Err(err) => {
                assert!(Instant::now() < deadline, "publish after the outage: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_killed_server_back_with_its_store_continues_the_epoch_and_subscribers_recover() {
    let mut nats = NatsServer::start();
    let (e, rec) = engine(&nats).await;
    e.subscribe("a").await.unwrap();
    e.subscribe("b").await.unwrap();
    let first = e.publish("a", publication(1), &history()).await.unwrap();
    until("first", || rec.offsets("a") == [1]).await;
    assert!(e.ready() && rec.gaps.lock().is_empty());

    nats.kill();
    let down = time_until("not ready after the kill", COMMAND_TIMEOUT * 3, || {
        !e.ready()
    })
    .await;
    assert!(!e.shards()[0].ready);
    // While it is away: a temporary error at once, that tells a client nothing internal.
    let started = Instant::now();
    let err = e
        .publish("a", publication(2), &history())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < COMMAND_TIMEOUT,
        "fails fast: {:?}",
        started.elapsed()
    );
    assert_eq!(err.client_message(), "temporarily unavailable, try again");
    assert!(!err.client_message().contains("127.0.0.1"));
    assert!(e.subscribe("c").await.is_err());

    nats.start_again();
    let up = time_until("ready again", Duration::from_secs(10), || e.ready()).await;
    eprintln!("not ready {down:?} after the kill, ready {up:?} after the restart");
    until("a gap on every channel", || {
        let gaps = rec.gaps.lock();
        gaps.contains(&"a".to_owned()) && gaps.contains(&"b".to_owned())
    })
    .await;
    // The store survived: the same stream, nothing missing.
    let second = publish_when_back(&e, "a", 2).await;
    assert_eq!((second.offset, &second.epoch), (2, &first.epoch));
    until("live again", || rec.offsets("a") == [1, 2]).await;
    let h = e
        .history("a", &HistoryQuery::default(), &history())
        .await
        .unwrap();
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[tokio::test]
async fn a_server_back_without_its_streams_starts_a_new_epoch_never_a_silent_gap() {
    let mut nats = NatsServer::start();
    let (a, rec_a) = engine(&nats).await;
    let (b, _) = engine(&nats).await;
    a.subscribe("c").await.unwrap();
    for n in 1..=3 {
        b.publish("c", publication(n), &history()).await.unwrap();
    }
    let before = a
        .history("c", &HistoryQuery::default(), &history())
        .await
        .unwrap()
        .position;
    assert_eq!(before.offset, 3);
    until("three", || rec_a.offsets("c") == [1, 2, 3]).await;

    nats.restart_empty();
    until("a ready", || a.ready()).await;
    until("b ready", || b.ready()).await;
    until("a's subscribers told to recover", || {
        rec_a.gaps.lock().contains(&"c".to_owned())
    })
    .await;
    // b publishes first after the loss: a new epoch from offset 1, not offset 4 of the old one.
    let after = publish_when_back(&b, "c", 4).await;
    assert_ne!(
        after.epoch, before.epoch,
        "the stream was lost: a new epoch"
    );
    assert_eq!(after.offset, 1);
    // A client of a recovering from offset 3 of the old epoch sees the epoch changed (the node
    // then answers recovered: false).
    let h = a
        .history(
            "c",
            &HistoryQuery {
                since: Some(3),
                ..HistoryQuery::default()
            },
            &history(),
        )
        .await
        .unwrap();
    assert_eq!((h.position.offset, &h.position.epoch), (1, &after.epoch));
    until("live in the new epoch", || {
        rec_a.offsets("c") == [1, 2, 3, 1]
    })
    .await;
}

#[tokio::test]
async fn a_hung_server_makes_an_idle_engine_not_ready_and_a_publish_of_unknown_outcome() {
    let mut nats = NatsServer::start();
    let (e, _rec) = engine(&nats).await;
    let window = Duration::from_secs(60);
    e.publish_idempotent("c", publication(0), &history(), "k0", window)
        .await
        .unwrap();

    nats.pause();
    // Nothing sent by the test first: only the engine's own round trips can notice.
    let down = time_until("not ready after the pause", COMMAND_TIMEOUT * 3, || {
        !e.ready()
    })
    .await;
    eprintln!("not ready {down:?} after the pause");
    let err = e
        .publish_idempotent("c", publication(1), &history(), "k1", window)
        .await
        .unwrap_err();
    // Sent and unanswered: of unknown outcome (or refused at once, if the client had already
    // given the connection up).
    match &err {
        EngineError::UnknownOutcome(message) => {
            assert!(
                message.contains("outcome is unknown") && message.contains("idempotency_key"),
                "the error says what to do: {message}"
            );
            assert!(err.client_message().contains("idempotency_key"));
        }
        EngineError::Unavailable(_) => {}
        other => panic!("{other:?}"),
    }
    nats.resume();
    until("ready again", || e.ready()).await;

    // The retry, with the same key: one publication with `1`, whether the first attempt was
    // stored when the server resumed or not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pos = loop {
        match e
            .publish_idempotent("c", publication(1), &history(), "k1", window)
            .await
        {
            Ok(pos) => break pos,
            Err(err) => {
                assert!(Instant::now() < deadline, "{err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_published_once(&e, "c", 1, &pos, &history()).await;
}

/// After the server lost its store, the nodes make the streams again at once, and read and
/// publish at once. nats-server 2.9 registers a stream before its store exists: a message get
/// (a read of a channel's last message) reaching a stream that another node is still making
/// dereferences the missing store, and the server dies (found by the server's NATS fault test: the
/// nodes then never became ready again). A node must not touch a stream it has not seen made since
/// it connected.
#[tokio::test]
async fn nodes_making_lost_streams_again_at_once_do_not_crash_the_server() {
    let mut nats = NatsServer::start();
    let mut engines = Vec::new();
    for _ in 0..4 {
        engines.push(engine(&nats).await.0);
    }
    // One stream per history setting: several streams made at once give the race more chances.
    let settings: Vec<StreamOptions> = (1..=6)
        .map(|n| opts(10 * n, Duration::from_secs(60)))
        .collect();
    // Every node knows every stream.
    burst(&engines, &settings, 0).await;
    for round in 1..=4 {
        nats.restart_empty();
        for e in &engines {
            until("ready after the restart", || e.ready()).await;
        }
        burst(&engines, &settings, round).await;
        assert!(
            std::net::TcpStream::connect(nats.addr()).is_ok(),
            "round {round}: nats-server died"
        );
        for s in &settings {
            // A server that died would not take this.
            let deadline = Instant::now() + Duration::from_secs(5);
            while engines[0].publish("c", publication(100), s).await.is_err() {
                assert!(Instant::now() < deadline, "round {round}: publishes fail");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every engine reads and publishes `n` in every history setting, all at once (errors allowed: the
/// server may still be coming back).
async fn burst(engines: &[NatsEngine], settings: &[StreamOptions], n: u64) {
    let mut calls = Vec::new();
    for e in engines {
        for s in settings {
            calls.push(async move {
                let _ = e.history("c", &HistoryQuery::default(), s).await;
                let _ = e.publish("c", publication(n), s).await;
            });
        }
    }
    futures_util::future::join_all(calls).await;
}
