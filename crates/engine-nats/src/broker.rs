//! Live delivery and messages between nodes.
//!
//! A node subscribes to a channel's live subject (`P.l.<channel>`) while it has local subscribers,
//! one core NATS subscription and one task per channel, which hands what arrives to the node in
//! arrival order. JetStream republishes each stored publication there in stream order, so offsets
//! arrive in order; core NATS is at most once, so the task checks that each offset follows the last
//! one of the same epoch and reports a gap to the node when it does not (its subscribers then
//! recover from history, push 2500). After a reconnect every channel is reported (`health.rs`).
//!
//! Each node also listens on `P.n.<id>` (messages to it), `P.ctl` (control messages to every node)
//! and `P.ctl.<id>` (control messages to it). Messages to one node are NATS requests that the node
//! answers at once with an empty reply: NATS answers "no responders" when nobody listens, so a
//! node that is gone is known at once, as the engine contract asks.

use std::sync::Arc;

use async_nats::{Subscriber, client::RequestErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_engine::{EngineError, PresenceEvent, Reach};
use switchboard_protocol::ClientInfo;
use tokio::task::AbortHandle;

use crate::codec;
use crate::{Inner, NatsConfig};
use switchboard_engine::codec::Live;

/// A header on requests that only ask whether a node id is taken (at start): answered, never
/// delivered.
const PROBE: &str = "Sb-Probe";

/// A random node id (8 hex digits) that no other node listening through this NATS uses.
pub(crate) async fn free_node_id(
    client: &async_nats::Client,
    config: &NatsConfig,
) -> Result<String, String> {
    let subjects = crate::subjects::Subjects::new(&config.prefix);
    for _ in 0..8 {
        let id = switchboard_engine::new_node_id();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(PROBE, "1");
        let asked = client
            .request_with_headers(subjects.node(&id), headers, Bytes::new())
            .await;
        match asked {
            Err(e) if e.kind() == RequestErrorKind::NoResponders => return Ok(id),
            Err(e) if e.kind() == RequestErrorKind::TimedOut => {}
            Err(e) => return Err(format!("probing node ids: {e}")),
            Ok(_) => {}
        }
    }
    // 8 collisions of 32 random bits in a row: something else is wrong.
    Err("no free node id: every id tried already listens (check [engine.nats] prefix)".into())
}

/// Subscribes this node to its own subjects and starts the task that delivers what arrives there.
pub(crate) async fn listen_own(inner: &Arc<Inner>) -> Result<AbortHandle, EngineError> {
    let s = &inner.subjects;
    let subscribe = |subject: String| {
        let client = inner.client.clone();
        async move { client.subscribe(subject).await }
    };
    let node = subscribe(s.node(&inner.node_id))
        .await
        .map_err(|e| inner.error("subscribing", e))?;
    let control = subscribe(s.control())
        .await
        .map_err(|e| inner.error("subscribing", e))?;
    let node_control = subscribe(s.node_control(&inner.node_id))
        .await
        .map_err(|e| inner.error("subscribing", e))?;
    confirm(inner).await?;
    let task = tokio::spawn(deliver_own(Arc::clone(inner), node, control, node_control));
    Ok(task.abort_handle())
}

async fn deliver_own(
    inner: Arc<Inner>,
    mut node: Subscriber,
    mut control: Subscriber,
    mut node_control: Subscriber,
) {
    loop {
        let (m, is_control) = tokio::select! {
            Some(m) = node.next() => (m, false),
            Some(m) = control.next() => (m, true),
            Some(m) = node_control.next() => (m, true),
            else => return,
        };
        if let Some(reply) = &m.reply {
            // The sender waits for this to know that someone listens.
            let _ = inner.client.publish(reply.clone(), Bytes::new()).await;
        }
        if m.headers.as_ref().is_some_and(|h| h.get(PROBE).is_some()) {
            continue;
        }
        let Some(handler) = inner.handler() else {
            continue;
        };
        if is_control {
            handler.on_control(m.payload);
        } else {
            handler.on_node_message(m.payload);
        }
    }
}

/// Sends `message` to `subject`, where node `node` listens, and waits for its receipt;
/// [`EngineError::UnknownNode`] when nobody listens there.
pub(crate) async fn request(
    inner: &Inner,
    node: &str,
    subject: String,
    message: Bytes,
) -> Result<(), EngineError> {
    inner.connected()?;
    match inner.client.request(subject, message).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => {
            Err(EngineError::UnknownNode(node.to_owned()))
        }
        // Someone listens but does not answer while NATS itself does: a node that hangs is as
        // good as gone (callers still ask `node_messages_uncertain` before saying so).
        Err(e) if e.kind() == RequestErrorKind::TimedOut && inner.ready() => {
            Err(EngineError::UnknownNode(node.to_owned()))
        }
        Err(e) => Err(inner.error("message to another node", e)),
    }
}

/// Sends a control message to every node (this one included). Core NATS does not count
/// receivers: the reach is unknown, and the node relies on the others' announcements.
pub(crate) async fn broadcast_control(inner: &Inner, message: Bytes) -> Result<Reach, EngineError> {
    inner.connected()?;
    inner
        .client
        .publish(inner.subjects.control(), message)
        .await
        .map_err(|e| inner.error("control message", e))?;
    Ok(Reach::Unknown)
}

/// Makes sure the server has processed everything this client sent so far (a round trip).
async fn confirm(inner: &Inner) -> Result<(), EngineError> {
    crate::health::round_trip(inner).await
}

/// Subscribes this node to `channel`. Returns once the server confirmed: from then on every
/// publication reaches the node.
pub(crate) async fn subscribe(inner: &Arc<Inner>, channel: &str) -> Result<(), EngineError> {
    inner.connected()?;
    if inner.live.lock().contains_key(channel) {
        // Another subscribe of this channel may still wait for the server's confirmation: answer
        // only once the server has processed everything sent so far, its SUB included.
        return confirm(inner).await;
    }
    let sub = inner
        .client
        .subscribe(inner.subjects.live(channel))
        .await
        .map_err(|e| inner.error("subscribing", e))?;
    let task = tokio::spawn(deliver(Arc::clone(inner), channel.to_owned(), sub));
    let previous = inner
        .live
        .lock()
        .insert(channel.to_owned(), task.abort_handle());
    if let Some(previous) = previous {
        // Two subscribes raced: one subscription is enough.
        previous.abort();
    }
    if let Err(e) = confirm(inner).await {
        unsubscribe(inner, channel);
        return Err(e);
    }
    Ok(())
}

/// Unsubscribes this node from `channel`: its task stops at once, and with it the subscription.
pub(crate) fn unsubscribe(inner: &Inner, channel: &str) {
    if let Some(task) = inner.live.lock().remove(channel) {
        task.abort();
    }
}

/// Hands what arrives on `channel`'s live subject to the node, checking that offsets follow each
/// other. Runs until unsubscribed.
async fn deliver(inner: Arc<Inner>, channel: String, mut sub: Subscriber) {
    // The epoch and offset of the last publication delivered.
    let mut last: Option<(String, u64)> = None;
    while let Some(m) = sub.next().await {
        let Some(handler) = inner.handler() else {
            continue;
        };
        match codec::decode_live(m.headers.as_ref(), &m.payload) {
            Ok(Some(Live::Publication(p, epoch))) => {
                if !epoch.is_empty() {
                    if let Some((e, o)) = &last
                        && *e == epoch
                    {
                        if p.offset <= *o {
                            // Already delivered (never expected: JetStream republishes once).
                            continue;
                        }
                        if p.offset > o + 1 {
                            tracing::debug!(
                                channel,
                                after = o,
                                got = p.offset,
                                "gap in live delivery"
                            );
                            handler.on_stream_gap(&channel);
                        }
                    }
                    last = Some((epoch.clone(), p.offset));
                }
                handler.on_publication(&channel, Arc::new(p), &epoch);
            }
            Ok(Some(Live::Presence(event, info))) => {
                handler.on_presence(&channel, event, Arc::new(info))
            }
            Ok(None) => {}
            Err(e) => {
                // Perhaps a publication we cannot read: its subscribers must not silently miss it.
                tracing::warn!(channel, error = %e, "unreadable NATS message");
                handler.on_stream_gap(&channel);
            }
        }
    }
}

/// Sends a publication without history straight to the channel's live subject.
pub(crate) async fn publish_live(
    inner: &Inner,
    channel: &str,
    body: Bytes,
) -> Result<(), EngineError> {
    inner.connected()?;
    inner
        .client
        .publish_with_headers(
            inner.subjects.live(channel),
            codec::publication_headers(0, "", false),
            body,
        )
        .await
        .map_err(|e| inner.error("publish", e))
}

/// Sends a join or leave to every node subscribed to `channel`.
pub(crate) async fn publish_presence_event(
    inner: &Inner,
    channel: &str,
    event: PresenceEvent,
    info: &ClientInfo,
) -> Result<(), EngineError> {
    inner.connected()?;
    let body = codec::body(switchboard_engine::codec::encode_client_info(info))?;
    inner
        .client
        .publish_with_headers(
            inner.subjects.live(channel),
            codec::presence_headers(event),
            body,
        )
        .await
        .map_err(|e| inner.error("presence event", e))
}
