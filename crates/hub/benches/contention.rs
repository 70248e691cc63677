//! Lock contention on the publish path: publications per second through the real node, hub and
//! in-memory engine, from 1 and then 2 threads (this machine has 2 cores), to separate channels and to
//! one shared channel. With no global lock, separate channels should scale with threads; one channel is
//! serialized by design (its order is the product).
//!
//! Run: `cargo bench -p switchboard-hub --bench contention`

use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_engine::MemoryEngine;
use switchboard_hub::{ChannelsConfig, Node, NodeConfig, Session};
use switchboard_protocol::Payload;

const SUBSCRIBERS_PER_CHANNEL: u64 = 10;
const RUN: Duration = Duration::from_secs(2);

fn node() -> Arc<Node> {
    let channels = ChannelsConfig::default();
    Node::new(
        Arc::new(MemoryEngine::new()),
        NodeConfig {
            channels,
            ..Default::default()
        },
        None,
    )
}

/// Publishes to `channel` for `RUN`, draining the subscribers' queues as a transport would.
fn publish_loop(node: &Node, channel: &str, sessions: &[Arc<Session>]) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let payload = Payload::Json(Bytes::from_static(
        br#"{"text":"a chat message of ordinary size"}"#,
    ));
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..256 {
            rt.block_on(node.publish(channel, payload.clone()))
                .expect("publish");
        }
        n += 256;
        for s in sessions {
            let _ = s.poll_drain(&mut Context::from_waker(Waker::noop()), |_| true);
        }
    }
    n
}

fn run(threads: usize, shared_channel: bool) -> f64 {
    let node = node();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let node = Arc::clone(&node);
            let channel = if shared_channel {
                "shared".to_owned()
            } else {
                format!("ch{t}")
            };
            let sessions: Vec<_> = (0..SUBSCRIBERS_PER_CHANNEL)
                .map(|k| {
                    let s = Arc::new(Session::new(
                        t as u64 * 1000 + k,
                        format!("c{k}"),
                        usize::MAX,
                    ));
                    node.hub_for_bench().add(&channel, Arc::clone(&s));
                    s
                })
                .collect();
            std::thread::spawn(move || publish_loop(&node, &channel, &sessions))
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    total as f64 / RUN.as_secs_f64()
}

fn main() {
    println!(
        "publications/s through node -> memory engine -> hub -> {SUBSCRIBERS_PER_CHANNEL} session queues"
    );
    for shared in [false, true] {
        let one = run(1, shared);
        let two = run(2, shared);
        let what = if shared {
            "one shared channel"
        } else {
            "a channel per thread"
        };
        println!(
            "{what:>22}: 1 thread {one:>10.0}/s   2 threads {two:>10.0}/s   scaling x{:.2}",
            two / one
        );
    }
}
