//! What the hub's unit tests share: an engine (the memory engine, which can be made to fail like an
//! unreachable store, or to count no receivers like an engine that cannot), and reading a session as
//! a transport does. Written once, so that the `Engine` trait's methods are delegated in one place
//! and a change of the session's message type is followed in one place.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use bytes::Bytes;
use switchboard_engine::{
    Engine, EngineError, EngineHandler, History, HistoryQuery, MemoryEngine, PresenceEvent,
    PresenceStats, Reach, StreamOptions,
};
use switchboard_protocol::{ClientInfo, Publication, StreamPosition};

use crate::session::{Session, Signal};

/// Reads `session` as a transport does, without waiting: its signal (a disconnect, orders), and
/// every message queued, as text.
pub(crate) fn drain(session: &Session) -> (Option<Signal>, Vec<String>) {
    let mut texts = Vec::new();
    let polled = session.poll_drain(&mut Context::from_waker(Waker::noop()), |m| {
        texts.push(m.as_str().unwrap_or_default().to_owned());
        true
    });
    let signal = match polled {
        Poll::Ready(signal) => signal,
        Poll::Pending => None,
    };
    (signal, texts)
}

/// The memory engine, with what tests need to change in it.
#[derive(Default)]
pub(crate) struct TestEngine {
    inner: MemoryEngine,
    /// While set, every stream and presence read or write fails as an unreachable store would.
    pub(crate) down: AtomicBool,
    /// Broadcasts say they reached an unknown number of nodes, as an engine that cannot count its
    /// receivers does ([`Reach::Unknown`]).
    pub(crate) uncounted: bool,
    /// Held (written) by a test to keep every engine subscribe waiting, as a slow broker would.
    pub(crate) hold_subscribe: tokio::sync::RwLock<()>,
}

impl TestEngine {
    /// An engine whose broadcasts cannot count their receivers, like a broker without subscriber
    /// counts.
    pub(crate) fn uncounted() -> Self {
        Self {
            uncounted: true,
            ..Self::default()
        }
    }

    fn check(&self) -> Result<(), EngineError> {
        if self.down.load(Ordering::Relaxed) {
            Err(EngineError::Unavailable(
                "redis://10.0.0.7:6379 refused".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Engine for TestEngine {
    fn set_handler(&self, handler: Arc<dyn EngineHandler>) {
        self.inner.set_handler(handler);
    }
    fn node_id(&self) -> &str {
        self.inner.node_id()
    }
    async fn broadcast_control(&self, message: Bytes) -> Result<Reach, EngineError> {
        let reach = self.inner.broadcast_control(message).await?;
        Ok(if self.uncounted {
            Reach::Unknown
        } else {
            reach
        })
    }
    async fn send_control(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        self.inner.send_control(node, message).await
    }
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let _held = self.hold_subscribe.read().await;
        self.check()?;
        self.inner.subscribe(channel).await
    }
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.inner.unsubscribe(channel).await
    }
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        self.check()?;
        self.inner.publish(channel, publication, opts).await
    }
    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        info: Arc<ClientInfo>,
    ) -> Result<(), EngineError> {
        self.inner
            .publish_presence_event(channel, event, info)
            .await
    }
    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        opts: &StreamOptions,
    ) -> Result<History, EngineError> {
        self.check()?;
        self.inner.history(channel, query, opts).await
    }
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        self.inner.remove_history(channel).await
    }
    async fn add_presence(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), EngineError> {
        self.inner.add_presence(channel, info).await
    }
    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        self.inner.remove_presence(channel, client).await
    }
    async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError> {
        self.check()?;
        self.inner.presence(channel).await
    }
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        self.check()?;
        self.inner.presence_stats(channel).await
    }
}
