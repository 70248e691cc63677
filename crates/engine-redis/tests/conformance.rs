//! The Redis engine against the engine conformance suite (`switchboard_engine::conformance`), each
//! check on a `redis-server` of its own ([`OneServer`]): several nodes share it, presence expires
//! 1 s after its node stops, and an outage is a restart of that Redis without its data.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use switchboard_engine::Engine;
use switchboard_engine::conformance::OneServer;
use switchboard_engine_redis::testing::{self, RedisServer};
use switchboard_engine_redis::{RedisConfig, RedisEngine};

fn redis() -> OneServer<RedisServer> {
    OneServer::new(RedisServer::start(), |url, presence_ttl| {
        Box::pin(async move {
            let config = RedisConfig {
                presence_ttl,
                ..testing::config(vec![url])
            };
            Arc::new(RedisEngine::connect(config).await.unwrap()) as Arc<dyn Engine>
        })
    })
}

switchboard_engine::engine_conformance!(redis());
