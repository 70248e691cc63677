//! Pub/sub between nodes: each node subscribes, on the Redis instance that holds a channel, to the
//! channel's pub/sub channel while it has local subscribers, and hands what arrives to the node in
//! the order Redis sent it (one connection and one task per instance, so offsets stay in order).
//!
//! Pub/sub is fire-and-forget: what is published while a node's subscriber connection is down never
//! reaches it. So after every reconnect the node subscribes again to all its channels and, once that
//! is done, reports each of them as a possible gap; the node then tells their subscribers to
//! resubscribe with recovery (2500), and history fills the hole.
//!
//! Each node also listens on a channel of its own (`P.node.{id}`), on the instance its id hashes to,
//! where other nodes send it messages ([`send_to_node`]): PUBLISH says how many listened, so a node
//! that is gone is known at once.
//!
//! Control messages travel the same way: to every node on `P.control` (one channel all nodes listen
//! on, whose PUBLISH count says how many nodes got it) and to one node on `P.control.{id}`, both
//! handed to [`EngineHandler::on_control`](switchboard_engine::EngineHandler::on_control).
//!
//! In a Redis Cluster the channels are sharded channels (`SSUBSCRIBE`/`SPUBLISH`), each served by the
//! master owning its slot; the subscriber client keeps one connection per master. Slots that move
//! are handled like a reconnect ([`follow_slot_moves`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::Message as RedisMessage;
use switchboard_engine::{EngineError, PresenceEvent, Reach};
use switchboard_protocol::ClientInfo;
use tokio::sync::broadcast::{Receiver, error::RecvError};

use crate::codec;
use crate::{Inner, Shard};
use switchboard_engine::codec::Live;

/// Channels per SUBSCRIBE command when resubscribing everything.
const RESUBSCRIBE_BATCH: usize = 256;

/// Subscribes this node to `channel`. Returns once Redis confirmed: from then on every publication
/// reaches the node.
pub(crate) async fn subscribe(inner: &Inner, channel: &str) -> Result<(), EngineError> {
    let shard = inner.shard(channel);
    if !shard.subscriber.is_connected() {
        return Err(EngineError::Unavailable(format!(
            "Redis at {} is not connected",
            shard.address
        )));
    }
    // Recorded first: a reconnect racing this call then resubscribes it too.
    shard.channels.lock().insert(channel.to_owned());
    let name = inner.keys.pubsub(channel);
    let result = if inner.config.cluster {
        // fred waits for SSUBSCRIBE's confirmation (to follow redirections).
        shard.subscriber.ssubscribe(name).await
    } else {
        match shard.subscriber.subscribe(name).await {
            Ok(()) => confirm(shard).await,
            Err(e) => Err(e),
        }
    };
    result.map_err(|e| {
        shard.channels.lock().remove(channel);
        shard.error(&e)
    })
}

/// Unsubscribes this node from `channel`.
pub(crate) async fn unsubscribe(inner: &Inner, channel: &str) -> Result<(), EngineError> {
    let shard = inner.shard(channel);
    shard.channels.lock().remove(channel);
    if !shard.subscriber.is_connected() {
        // The connection is gone, and the subscription with it; the reconnect will not restore it.
        return Ok(());
    }
    let name = inner.keys.pubsub(channel);
    let result = if inner.config.cluster {
        shard.subscriber.sunsubscribe(name).await
    } else {
        // Confirmed, so that a publication after this call no longer reaches the node.
        match shard.subscriber.unsubscribe(name).await {
            Ok(()) => confirm(shard).await,
            Err(e) => Err(e),
        }
    };
    result.map_err(|e| shard.error(&e))
}

/// Sends a join or leave to every node subscribed to `channel`.
pub(crate) async fn publish_presence_event(
    inner: &Inner,
    channel: &str,
    event: PresenceEvent,
    info: &ClientInfo,
) -> Result<(), EngineError> {
    let shard = inner.shard(channel);
    let msg = codec::encode_presence(event, info)?;
    let name = inner.keys.pubsub(channel);
    let client = shard.commands()?;
    let result: Result<i64, _> = if inner.config.cluster {
        client.spublish(name, msg).await
    } else {
        client.publish(name, msg).await
    };
    result.map(drop).map_err(|e| shard.error(&e))
}

/// Sends `message` to node `node`'s channel; [`EngineError::UnknownNode`] when nobody listens there.
pub(crate) async fn send_to_node(
    inner: &Inner,
    node: &str,
    message: Bytes,
) -> Result<(), EngineError> {
    let shard = inner.node_shard(node);
    let name = inner.keys.node(node);
    let client = shard.commands()?;
    let result: Result<i64, _> = if inner.config.cluster {
        client.spublish(name, message).await
    } else {
        client.publish(name, message).await
    };
    match result.map_err(|e| shard.error(&e))? {
        0 => Err(EngineError::UnknownNode(node.to_owned())),
        _ => Ok(()),
    }
}

/// Publishes `message` on `name` (a node's channel or the control channel) of `shard`; how many
/// listened.
async fn publish_to(
    inner: &Inner,
    shard: &crate::Shard,
    name: String,
    message: Bytes,
) -> Result<i64, EngineError> {
    let client = shard.commands()?;
    let result: Result<i64, _> = if inner.config.cluster {
        client.spublish(name, message).await
    } else {
        client.publish(name, message).await
    };
    result.map_err(|e| shard.error(&e))
}

/// Sends a control message to every node (this one included); PUBLISH counts who listened.
pub(crate) async fn broadcast_control(inner: &Inner, message: Bytes) -> Result<Reach, EngineError> {
    let name = inner.control_channel.clone();
    let listened = publish_to(inner, inner.control_shard(), name, message).await?;
    Ok(Reach::Nodes(usize::try_from(listened).unwrap_or(0)))
}

/// Sends a control message to node `node` alone; [`EngineError::UnknownNode`] when nobody listens.
pub(crate) async fn send_control(
    inner: &Inner,
    node: &str,
    message: Bytes,
) -> Result<(), EngineError> {
    let name = inner.keys.node_control(node);
    match publish_to(inner, inner.node_shard(node), name, message).await? {
        0 => Err(EngineError::UnknownNode(node.to_owned())),
        _ => Ok(()),
    }
}

/// The channels of this node's own that live on shard `index`: its node and control channels (on
/// the shard its id hashes to) and the control channel every node shares.
fn own_channels(inner: &Inner, index: usize) -> Vec<String> {
    let shard = &inner.shards[index];
    let mut names = Vec::new();
    if std::ptr::eq(shard, inner.node_shard(&inner.node_id)) {
        names.push(inner.node_channel.clone());
        names.push(inner.node_control_channel.clone());
    }
    if std::ptr::eq(shard, inner.control_shard()) {
        names.push(inner.control_channel.clone());
    }
    names
}

/// Subscribes this node to its own channels on shard `index` (at start, and again after each
/// reconnect).
pub(crate) async fn subscribe_own(inner: &Inner, index: usize) -> Result<(), fred::error::Error> {
    let shard = &inner.shards[index];
    let names = own_channels(inner, index);
    if names.is_empty() {
        return Ok(());
    }
    if inner.config.cluster {
        // Sharded subscriptions go to the node of each channel's slot, one at a time.
        for name in names {
            shard.subscriber.ssubscribe(name).await?;
        }
        Ok(())
    } else {
        shard.subscriber.subscribe(names).await?;
        confirm(shard).await
    }
}

/// Waits until Redis has carried out every (un)subscription sent on `shard`'s subscriber so far.
/// fred resolves `SUBSCRIBE` once it is written, before Redis confirms it (the confirmation arrives
/// out of band); Redis answers a connection's commands in order, so the answer to a `PING` written
/// after it means it took effect, and a message published from now on reaches this node.
async fn confirm(shard: &crate::Shard) -> Result<(), fred::error::Error> {
    let _: Value = shard.subscriber.ping(None).await?;
    Ok(())
}

/// Hands every message of shard `index` to the node, in arrival order. Runs until the engine stops.
pub(crate) async fn receive(inner: Arc<Inner>, index: usize, mut messages: Receiver<RedisMessage>) {
    loop {
        match messages.recv().await {
            Ok(m) => deliver(&inner, m),
            Err(RecvError::Lagged(n)) => {
                // Messages were dropped between the connection and this task: any channel may
                // have lost publications.
                tracing::warn!(
                    shard = %inner.shards[index].address,
                    lost = n,
                    "Redis pub/sub reader fell behind; every channel of this shard must recover"
                );
                report_gaps(&inner, &inner.shards[index]);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

fn deliver(inner: &Inner, m: RedisMessage) {
    let Some(handler) = inner.handler() else {
        return;
    };
    if *m.channel == *inner.node_channel {
        match m.value.into_bytes() {
            Some(bytes) => handler.on_node_message(bytes),
            None => tracing::warn!("node message that is not a string; ignored"),
        }
        return;
    }
    if *m.channel == *inner.control_channel || *m.channel == *inner.node_control_channel {
        match m.value.into_bytes() {
            Some(bytes) => handler.on_control(bytes),
            None => tracing::warn!("control message that is not a string; ignored"),
        }
        return;
    }
    let Some(channel) = inner.keys.channel_of(&m.channel) else {
        return;
    };
    // In a cluster nothing confirms a SUNSUBSCRIBE (a standalone unsubscribe is confirmed by a PING
    // on the same connection): a message still in flight then is the node's no longer.
    if inner.config.cluster && !inner.shard(channel).channels.lock().contains(channel) {
        return;
    }
    let Some(bytes) = m.value.into_bytes() else {
        tracing::warn!(channel, "pub/sub message that is not a string; ignored");
        return;
    };
    match codec::decode_message(&bytes) {
        Ok(Live::Publication(p, epoch)) => handler.on_publication(channel, Arc::new(p), &epoch),
        Ok(Live::Presence(event, info)) => handler.on_presence(channel, event, Arc::new(info)),
        Err(e) => {
            // Perhaps a publication we cannot read: its subscribers must not silently miss it.
            tracing::warn!(channel, error = %e, "unreadable pub/sub message");
            handler.on_stream_gap(channel);
        }
    }
}

/// After each (re)connect of shard `index`'s subscriber: subscribe again to every channel, then
/// report each as a possible gap. Runs until the engine stops.
pub(crate) async fn resubscribe_on_reconnect(
    inner: Arc<Inner>,
    index: usize,
    mut reconnects: Receiver<Server>,
) {
    loop {
        match reconnects.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        inner.shards[index].health.trouble();
        resync(&inner, index, "Redis is back").await;
    }
}

/// Subscribes shard `index` to every channel again and reports each as a gap, retrying until it
/// succeeds; the node is not ready meanwhile.
async fn resync(inner: &Inner, index: usize, why: &str) {
    let shard = &inner.shards[index];
    let _one_at_a_time = shard.resync_lock.lock().await;
    shard.resyncing.store(true, Ordering::Release);
    let mut delay = Duration::from_millis(50);
    loop {
        match resubscribe_all(inner, index).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(shard = %shard.address, channels = n, "{why}: resubscribed; subscribers recover");
                }
                break;
            }
            Err(e) => {
                tracing::warn!(shard = %shard.address, error = %e, ?delay, "resubscribing ({why}) failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    // Not serving until now: messages between nodes sent meanwhile may be lost.
    shard.health.trouble();
    shard.resyncing.store(false, Ordering::Release);
}

/// How often a node in a Redis Cluster reads the slot map, to notice slots that moved.
const SLOT_MAP_CHECK: Duration = Duration::from_secs(1);

/// In a Redis Cluster: follows slots moving between masters (resharding, a replica taking over).
///
/// A master that gives up a slot unsubscribes every sharded subscriber of the slot's channels, and
/// fred drops that notice; publications then go to the new master while this node listens on the
/// old one, and nothing would tell the subscribers. So the subscriber reads the slot map every
/// [`SLOT_MAP_CHECK`], and at once when the command connection was redirected (`MOVED`); when the
/// map changed, every channel is subscribed again, where it now lives, and reported as a gap:
/// subscribers recover from history (which moved with the slot) what was published meanwhile.
/// Runs until the engine stops.
pub(crate) async fn follow_slot_moves(inner: Arc<Inner>, index: usize) {
    let shard = &inner.shards[index];
    let mut redirected = shard.client.cluster_change_rx();
    let mut every = tokio::time::interval(SLOT_MAP_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known = slot_map(&shard.subscriber);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            changed = redirected.recv() => {
                if matches!(changed, Err(RecvError::Closed)) {
                    return;
                }
            }
        }
        if !shard.subscriber.is_connected() {
            // The reconnect resubscribes everything anyway, on the map it reads.
            continue;
        }
        if let Err(e) = shard.subscriber.sync_cluster().await {
            tracing::debug!(shard = %shard.address, error = %e, "reading the cluster's slot map failed");
            continue;
        }
        let now = slot_map(&shard.subscriber);
        if now != known {
            tracing::info!(shard = %shard.address, "Redis Cluster slots moved; resubscribing");
            known = now;
            // The command connection too: else its next command to a moved slot is redirected, and
            // fails (commands are written once; see `builder`).
            if let Err(e) = shard.client.sync_cluster().await {
                tracing::debug!(shard = %shard.address, error = %e, "reading the cluster's slot map failed");
            }
            resync(&inner, index, "Redis Cluster slots moved").await;
        }
    }
}

/// The slot ranges and the master serving each, as the subscriber routes them; sorted, so that only
/// a real change compares unequal (a false one would send every subscriber recovering).
fn slot_map(subscriber: &fred::clients::SubscriberClient) -> Vec<(u16, u16, String)> {
    let mut map: Vec<(u16, u16, String)> = subscriber
        .cached_cluster_state()
        .map(|state| {
            state
                .slots()
                .iter()
                .map(|r| (r.start, r.end, r.primary.to_string()))
                .collect()
        })
        .unwrap_or_default();
    map.sort_unstable();
    map
}

/// Subscribes again to every channel of shard `index` (and to the node's own channels that are
/// there), then reports each as a gap. The number of channels.
async fn resubscribe_all(inner: &Inner, index: usize) -> Result<usize, fred::error::Error> {
    let shard = &inner.shards[index];
    subscribe_own(inner, index).await?;
    let channels: Vec<String> = shard.channels.lock().iter().cloned().collect();
    for batch in channels.chunks(RESUBSCRIBE_BATCH) {
        if inner.config.cluster {
            // Sharded subscriptions go to the node of each channel's slot, one at a time.
            for c in batch {
                shard.subscriber.ssubscribe(inner.keys.pubsub(c)).await?;
            }
        } else {
            let names: Vec<String> = batch.iter().map(|c| inner.keys.pubsub(c)).collect();
            shard.subscriber.subscribe(names).await?;
        }
    }
    if !inner.config.cluster && !channels.is_empty() {
        confirm(shard).await?;
    }
    // Only now: a subscriber resubscribing with recovery after this report sees every publication,
    // from history up to its read and live after it.
    report_gaps(inner, shard);
    Ok(channels.len())
}

fn report_gaps(inner: &Inner, shard: &Shard) {
    let Some(handler) = inner.handler() else {
        return;
    };
    let channels: Vec<String> = shard.channels.lock().iter().cloned().collect();
    for c in &channels {
        handler.on_stream_gap(c);
    }
}
