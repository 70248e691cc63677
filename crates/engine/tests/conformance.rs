//! The memory engine against the engine conformance suite (`switchboard_engine::conformance`): one
//! node in one process, so the checks of several nodes and of outages pass without asserting.

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_engine::conformance::Backend;
use switchboard_engine::{Engine, MemoryEngine};

struct Memory;

#[async_trait]
impl Backend for Memory {
    async fn node(&self) -> Arc<dyn Engine> {
        Arc::new(MemoryEngine::new())
    }

    fn shared(&self) -> bool {
        false
    }
}

switchboard_engine::engine_conformance!(Memory);
