//! Recovery larger than the client's queue (docs/protocol.md, subscribe): the reply carries what fits,
//! the rest is replayed as `pub` pushes while the client drains its queue, live publications follow
//! in order and are never doubled; a replay whose publications left the history asks the client to
//! recover again. Driven without a transport, so that the client's pace is exactly the test's.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use switchboard_engine::MemoryEngine;
use switchboard_hub::{Client, NamespaceOptions, Node, NodeConfig, Signal};
use switchboard_protocol::{DisconnectCode, Payload};

const QUEUE: usize = 64 << 10;

fn node(history_size: usize) -> Arc<Node> {
    let mut config = NodeConfig::default();
    config.client.queue_bytes = QUEUE;
    config.channels.namespaces.insert(
        "c".into(),
        NamespaceOptions {
            history_size,
            history_ttl: Duration::from_secs(300),
            recover: true,
            allow_publish: true,
            allow_history: true,
            ..Default::default()
        },
    );
    Node::new(Arc::new(MemoryEngine::new()), config, None)
}

/// Publishes 4 KB numbered `i` to `c:x`; returns the stream's epoch.
async fn publish(node: &Node, i: u64) -> String {
    let data = json!({"i": i, "pad": "x".repeat(4000)}).to_string();
    node.publish("c:x", Payload::Json(Bytes::from(data)))
        .await
        .unwrap()
        .epoch
}

/// Publishes `1..=n` (see [`publish`]); returns the stream's epoch.
async fn publish_up_to(node: &Node, n: u64) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        epoch = publish(node, i).await;
    }
    epoch
}

/// A client and everything it received, read at the test's pace.
struct Reader {
    client: Client,
    got: Vec<Value>,
    next_id: u64,
}

impl Reader {
    async fn connected(node: &Arc<Node>) -> Self {
        let mut r = Self {
            client: node.client("test"),
            got: Vec::new(),
            next_id: 0,
        };
        r.send("connect", json!({})).await;
        r.read_all().await;
        r.got.clear();
        r
    }

    /// Subscribes to `c:x` recovering from `offset` of `epoch` (nothing read yet).
    async fn recover_from(&mut self, epoch: &str, offset: u64) {
        self.send(
            "subscribe",
            json!({"channel": "c:x", "recover": true, "epoch": epoch, "offset": offset}),
        )
        .await;
    }

    async fn send(&mut self, method: &str, params: Value) {
        self.next_id += 1;
        let frame = json!({"id": self.next_id, method: params}).to_string();
        self.client.handle_frame(frame.as_bytes()).await.unwrap();
    }

    /// Takes at most `n` messages off the queue, carrying out orders as a transport does. Returns
    /// how many it took, or the disconnect.
    async fn read(&mut self, n: usize) -> Result<usize, DisconnectCode> {
        let mut taken = 0;
        while taken < n {
            let mut out = Vec::new();
            let poll =
                self.client
                    .session()
                    .poll_drain(&mut Context::from_waker(Waker::noop()), |m| {
                        out.push(m);
                        taken + out.len() < n
                    });
            taken += out.len();
            for m in out {
                for line in m.as_str().unwrap().lines() {
                    self.got.push(serde_json::from_str(line).unwrap());
                }
            }
            match poll {
                Poll::Ready(Some(Signal::Control)) => self.client.apply_controls().await,
                Poll::Ready(Some(Signal::Disconnect(code))) => return Err(code),
                Poll::Ready(None) => {}
                Poll::Pending => break,
            }
        }
        Ok(taken)
    }

    async fn read_all(&mut self) {
        self.read(usize::MAX).await.unwrap();
    }

    /// Offsets of the `pub` pushes and of the publications in subscribe replies, as received.
    fn offsets(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for v in &self.got {
            if let Some(p) = v.get("pub") {
                assert_eq!(p["data"]["i"], p["offset"], "{p}");
                out.push(p["offset"].as_u64().unwrap());
            }
            for p in v["subscribe"]["publications"]
                .as_array()
                .into_iter()
                .flatten()
            {
                out.push(p["offset"].as_u64().unwrap());
            }
        }
        out
    }

    fn reply(&self, method: &str) -> &Value {
        let v = self.got.iter().find(|v| v.get(method).is_some()).unwrap();
        &v[method]
    }
}

#[tokio::test]
async fn a_recovery_many_times_the_queue_arrives_in_order_once_then_live_ones() {
    let node = node(1000);
    let epoch = publish_up_to(&node, 100).await;
    let mut r = Reader::connected(&node).await;
    r.recover_from(&epoch, 5).await;
    // The reply comes first, recovered, with what fits in half the queue.
    r.read(1).await.unwrap();
    let reply = r.reply("subscribe").clone();
    assert_eq!(reply["recovered"], true, "{}", reply["recovered"]);
    assert_eq!(reply["offset"], 100);
    let in_reply = reply["publications"].as_array().unwrap().len();
    assert!(
        (1..20).contains(&in_reply),
        "{in_reply} publications in the reply"
    );
    // A slow reader: a message at a time, while live publications go on. The queue never holds
    // more than half its bound plus one publication, and the client is never dropped.
    let mut live = 100;
    loop {
        if live < 130 {
            live += 1;
            publish(&node, live).await;
        }
        let taken = r.read(1).await.unwrap();
        assert!(
            r.client.session().queued_bytes() <= QUEUE / 2 + 5000,
            "{} queued",
            r.client.session().queued_bytes()
        );
        if taken == 0 {
            break;
        }
    }
    assert_eq!(live, 130, "the replay outlasted the live publications");
    assert_eq!(r.offsets(), (6..=130).collect::<Vec<_>>());
    // The replay is over: live publications are delivered at once.
    publish(&node, 131).await;
    r.read_all().await;
    assert_eq!(r.offsets().last(), Some(&131));
}

#[tokio::test]
async fn a_replay_whose_publications_left_the_history_asks_to_recover_again() {
    let node = node(30);
    let epoch = publish_up_to(&node, 30).await;
    let mut r = Reader::connected(&node).await;
    r.recover_from(&epoch, 0).await;
    // Before the client reads, 40 more push 31 to 40 out of the history of 30.
    for i in 31..=70 {
        publish(&node, i).await;
    }
    r.read_all().await;
    assert_eq!(r.reply("subscribe")["recovered"], true);
    // What was read with the reply is delivered; then the stream cannot continue.
    assert_eq!(r.offsets(), (1..=30).collect::<Vec<_>>());
    assert_eq!(
        r.got.last().unwrap()["unsubscribe"],
        json!({"channel": "c:x", "code": 2500, "reason": "insufficient state"})
    );
    // Resubscribing with recover tells it the truth: lost.
    r.got.clear();
    r.recover_from(&epoch, 30).await;
    r.read_all().await;
    assert_eq!(r.reply("subscribe")["recovered"], false);
    publish(&node, 71).await;
    r.read_all().await;
    assert_eq!(r.offsets(), [71]);
}

#[tokio::test]
async fn unsubscribing_ends_a_replay() {
    let node = node(1000);
    let epoch = publish_up_to(&node, 100).await;
    let mut r = Reader::connected(&node).await;
    r.recover_from(&epoch, 0).await;
    r.read(1).await.unwrap();
    let in_reply = r.offsets().len() as u64;
    r.send("unsubscribe", json!({"channel": "c:x"})).await;
    publish(&node, 101).await;
    r.read_all().await;
    assert!(r.got.last().unwrap().get("unsubscribe").is_some());
    // Nothing of the channel after the reply but what was queued before the unsubscribe.
    let offsets = r.offsets();
    assert!(
        offsets.len() < 100 && offsets == (1..=offsets.len() as u64).collect::<Vec<_>>(),
        "{offsets:?} (reply had {in_reply})"
    );
    // And subscribing again works from scratch.
    r.got.clear();
    r.send("subscribe", json!({"channel": "c:x"})).await;
    publish(&node, 102).await;
    r.read_all().await;
    assert_eq!(r.offsets(), [102]);
}
