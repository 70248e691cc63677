//! The Redis engine against the engine conformance suite (`switchboard_engine::conformance`), each
//! check on a `redis-server` of its own: several nodes share it, presence expires 1 s after its node
//! stops, and an outage is a restart of that Redis without its data.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use switchboard_engine::Engine;
use switchboard_engine::conformance::Backend;
use switchboard_engine_redis::testing::{self, RedisServer};
use switchboard_engine_redis::{RedisConfig, RedisEngine};

const PRESENCE_TTL: Duration = Duration::from_secs(1);

struct Redis(Mutex<RedisServer>);

impl Redis {
    fn start() -> Self {
        Self(Mutex::new(RedisServer::start()))
    }
}

#[async_trait]
impl Backend for Redis {
    async fn node(&self) -> Arc<dyn Engine> {
        let config = RedisConfig {
            presence_ttl: PRESENCE_TTL,
            ..testing::config(vec![self.0.lock().url()])
        };
        Arc::new(RedisEngine::connect(config).await.unwrap())
    }

    fn shared(&self) -> bool {
        true
    }

    fn presence_ttl(&self) -> Option<Duration> {
        Some(PRESENCE_TTL)
    }

    async fn interrupt(&self) -> bool {
        self.0.lock().restart();
        true
    }
}

switchboard_engine::engine_conformance!(Redis::start());
