//! The NATS engine against the engine conformance suite (`switchboard_engine::conformance`), each
//! check on a `nats-server -js` of its own: several nodes share it, presence expires 1 s after its
//! node stops, and an outage is a restart of that server without its store (every stream lost).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use switchboard_engine::Engine;
use switchboard_engine::conformance::Backend;
use switchboard_engine_nats::testing::NatsServer;
use switchboard_engine_nats::{NatsConfig, NatsEngine};

const PRESENCE_TTL: Duration = Duration::from_secs(1);

struct Nats(Mutex<NatsServer>);

impl Nats {
    fn start() -> Self {
        Self(Mutex::new(NatsServer::start()))
    }
}

#[async_trait]
impl Backend for Nats {
    async fn node(&self) -> Arc<dyn Engine> {
        let config = NatsConfig {
            servers: vec![self.0.lock().url()],
            prefix: "test".into(),
            presence_ttl: PRESENCE_TTL,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            ..NatsConfig::default()
        };
        Arc::new(NatsEngine::connect(config).await.unwrap())
    }

    fn shared(&self) -> bool {
        true
    }

    fn presence_ttl(&self) -> Option<Duration> {
        Some(PRESENCE_TTL)
    }

    async fn interrupt(&self) -> bool {
        self.0.lock().restart_empty();
        true
    }
}

switchboard_engine::engine_conformance!(Nats::start());
