//! Publish round trip through NATS: how many publications per second one node, and two nodes, get
//! through JetStream and back out to a subscribed node, and the latency of one.
//!
//! ```text
//! cargo run --release -p switchboard-engine-nats --features testing --example nats_roundtrip [-- PUBLICATIONS CONCURRENCY]
//! ```
//!
//! Starts its own `nats-server -js` on a free port with a temporary store (stopped at the end).
//! "One node": the publishing engine is also the subscriber. "Two nodes": one engine publishes,
//! another receives. Latency is measured one publication at a time (publish, then wait for its
//! delivery); throughput with CONCURRENCY publishers at once (default 10,000 publications, 32
//! publishers), all on one channel (whose publishes take turns on a node: see the crate docs) and
//! then spread over CONCURRENCY channels.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_engine::{Engine, EngineHandler, PresenceEvent, StreamOptions};
use switchboard_engine_nats::testing::NatsServer;
use switchboard_engine_nats::{NatsConfig, NatsEngine};
use switchboard_protocol::{ClientInfo, Payload, Publication};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// Sends each delivery's channel and offset to the measuring task.
struct Probe(UnboundedSender<(String, u64)>);

impl EngineHandler for Probe {
    fn on_publication(&self, channel: &str, p: Arc<Publication>, _: &str) {
        let _ = self.0.send((channel.to_owned(), p.offset));
    }
    fn on_presence(&self, _: &str, _: PresenceEvent, _: Arc<ClientInfo>) {}
    fn on_stream_gap(&self, channel: &str) {
        eprintln!("gap reported in {channel}");
    }
}

fn payload() -> Publication {
    Publication::new(Payload::Json(Bytes::from_static(
        br#"{"text":"a message of about a hundred bytes, as a chat line or a price update would be"}"#,
    )))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let concurrency: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let nats = NatsServer::start();
    let config = NatsConfig {
        servers: vec![nats.url()],
        ..NatsConfig::default()
    };
    let opts = StreamOptions {
        history_size: 100,
        history_ttl: Duration::from_secs(60),
        history_meta_ttl: Duration::from_secs(600),
    };
    println!(
        "{total} publications of ~100 bytes, history on (file storage), {concurrency} publishers"
    );
    println!("| setup | channels | publications/s | round trip p50 µs | p99 µs |");
    println!("|---|--:|--:|--:|--:|");
    for nodes in [1, 2] {
        let publisher = Arc::new(NatsEngine::connect(config.clone()).await.unwrap());
        let subscriber = if nodes == 1 {
            Arc::clone(&publisher)
        } else {
            Arc::new(NatsEngine::connect(config.clone()).await.unwrap())
        };
        let (tx, mut rx) = unbounded_channel();
        subscriber.set_handler(Arc::new(Probe(tx)));
        for channels in [1, concurrency] {
            let names: Vec<String> = (0..channels)
                .map(|c| format!("bench{nodes}-{channels}-{c}"))
                .collect();
            for c in &names {
                subscriber.subscribe(c).await.unwrap();
            }
            // Latency: one at a time.
            let mut lat = Vec::new();
            for _ in 0..1_000 {
                let t = Instant::now();
                publisher
                    .publish(&names[0], payload(), &opts)
                    .await
                    .unwrap();
                rx.recv().await.unwrap();
                lat.push(t.elapsed());
            }
            lat.sort();
            let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);

            // Throughput: many publishers, until the last delivery.
            let t = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..concurrency {
                let e = Arc::clone(&publisher);
                let channel = names[(i % channels) as usize].clone();
                let opts = opts.clone();
                let n = total / concurrency + u64::from(i < total % concurrency);
                tasks.push(tokio::spawn(async move {
                    for _ in 0..n {
                        e.publish(&channel, payload(), &opts).await.unwrap();
                    }
                }));
            }
            let mut last = std::collections::HashMap::new();
            for _ in 0..total {
                let (c, o) = rx.recv().await.unwrap();
                let before = last.entry(c).or_insert(0);
                assert!(
                    *before == 0 || o == *before + 1,
                    "offsets in order, none lost"
                );
                *before = o;
            }
            for t in tasks {
                t.await.unwrap();
            }
            let rate = total as f64 / t.elapsed().as_secs_f64();
            let label = if nodes == 1 {
                "one node (publisher subscribes)"
            } else {
                "two nodes (A publishes, B receives)"
            };
            println!(
                "| {label} | {channels} | {rate:.0} | {} | {} |",
                p50.as_micros(),
                p99.as_micros()
            );
        }
    }
}
