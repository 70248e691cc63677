//! The NATS engine against the engine conformance suite (`switchboard_engine::conformance`), each
//! check on a `nats-server -js` of its own ([`OneServer`]): several nodes share it, presence
//! expires 1 s after its node stops, and an outage is a restart of that server without its store
//! (every stream lost).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use switchboard_engine::Engine;
use switchboard_engine::conformance::OneServer;
use switchboard_engine_nats::testing::{self, NatsServer};
use switchboard_engine_nats::{NatsConfig, NatsEngine};

fn nats() -> OneServer<NatsServer> {
    OneServer::new(NatsServer::start(), |url, presence_ttl| {
        Box::pin(async move {
            let config = NatsConfig {
                presence_ttl,
                ..testing::config(vec![url])
            };
            Arc::new(NatsEngine::connect(config).await.unwrap()) as Arc<dyn Engine>
        })
    })
}

switchboard_engine::engine_conformance!(nats());
