//! What the engine tests share: a handler that records what the engine delivers, and a wait.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_engine::{EngineHandler, PresenceEvent};
use switchboard_protocol::{ClientInfo, Publication};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Recorder {
    pub pubs: Mutex<Vec<(String, u64, String)>>,
    pub presence: Mutex<Vec<(String, PresenceEvent, String)>>,
    pub gaps: Mutex<Vec<String>>,
    pub node_messages: Mutex<Vec<Bytes>>,
    pub controls: Mutex<Vec<Bytes>>,
}

impl EngineHandler for Recorder {
    fn on_publication(&self, channel: &str, p: Arc<Publication>, epoch: &str) {
        self.pubs
            .lock()
            .push((channel.to_owned(), p.offset, epoch.to_owned()));
    }
    fn on_presence(&self, channel: &str, event: PresenceEvent, info: Arc<ClientInfo>) {
        self.presence
            .lock()
            .push((channel.to_owned(), event, info.client.clone()));
    }
    fn on_stream_gap(&self, channel: &str) {
        self.gaps.lock().push(channel.to_owned());
    }
    fn on_node_message(&self, message: Bytes) {
        self.node_messages.lock().push(message);
    }
    fn on_control(&self, message: Bytes) {
        self.controls.lock().push(message);
    }
}

impl Recorder {
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        self.pubs
            .lock()
            .iter()
            .filter(|(c, _, _)| c == channel)
            .map(|(_, o, _)| *o)
            .collect()
    }
}

/// Waits until `f` holds, or fails the test.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
