//! Publish round trip through NATS: how many publications per second one node, and two nodes, get
//! through JetStream and back out to a subscribed node, and the latency of one
//! (`switchboard_engine::testing::roundtrip`, the same measure as the Redis engine's example): all
//! on one channel (whose publishes take turns on a node: see the crate docs), then spread over
//! CONCURRENCY channels.
//!
//! ```text
//! cargo run --release -p switchboard-engine-nats --features testing --example nats_roundtrip [-- PUBLICATIONS CONCURRENCY]
//! ```
//!
//! Starts its own `nats-server -js` on a free port with a temporary store (stopped at the end), and
//! the engine's default settings (file storage).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use switchboard_engine::Engine;
use switchboard_engine::testing::roundtrip::{self, Load};
use switchboard_engine_nats::testing::NatsServer;
use switchboard_engine_nats::{NatsConfig, NatsEngine};

#[tokio::main]
async fn main() {
    let nats = NatsServer::start();
    let config = NatsConfig {
        servers: vec![nats.url()],
        ..NatsConfig::default()
    };
    roundtrip::run("NATS (file storage)", Load::from_args(), || {
        let config = config.clone();
        async move { Arc::new(NatsEngine::connect(config).await.unwrap()) as Arc<dyn Engine> }
    })
    .await;
}
