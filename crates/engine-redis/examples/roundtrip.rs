//! Publish round trip through Redis: how many publications per second one node, and two nodes, get
//! through the publish script and back out of pub/sub to a subscribed node, and the latency of one
//! (`switchboard_engine::testing::roundtrip`, the same measure as the NATS engine's example).
//!
//! ```text
//! cargo run --release -p switchboard-engine-redis --example roundtrip [-- PUBLICATIONS CONCURRENCY]
//! ```
//!
//! Starts its own `redis-server` on a free port (stopped at the end), with the engine's default
//! settings.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use switchboard_engine::Engine;
use switchboard_engine::testing::roundtrip::{self, Load};
use switchboard_engine_redis::testing::RedisServer;
use switchboard_engine_redis::{RedisConfig, RedisEngine};

#[tokio::main]
async fn main() {
    let redis = RedisServer::start();
    let config = RedisConfig {
        addresses: vec![redis.url()],
        ..RedisConfig::default()
    };
    roundtrip::run("Redis", Load::from_args(), || {
        let config = config.clone();
        async move { Arc::new(RedisEngine::connect(config).await.unwrap()) as Arc<dyn Engine> }
    })
    .await;
}
