//! Presence in a JetStream stream (`P_PRESENCE`): one subject per client and channel
//! (`P.p.<channel>.<client>`), keeping its last message only, and a maximum age of
//! `presence_ttl`. Every node rewrites its own clients' entries every third of `presence_ttl`, so
//! the entries of a node that died vanish within `presence_ttl` (JetStream drops them by age),
//! with no cleanup by anyone. A read takes every message of the channel's subjects, which is the
//! last one of each.
//!
//! This is what a NATS KV bucket with a TTL is, without the KV layer's tombstones: a removal purges
//! the subject.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream;
use switchboard_engine::EngineError;
use switchboard_engine::codec::encode_client_info;
use switchboard_engine::presence::insert_entry;
use switchboard_protocol::ClientInfo;

use crate::Inner;
use crate::codec;
use crate::history::{Known, consume, ensure_stream, forget_stream};

async fn presence_stream(inner: &Inner) -> Result<Known, EngineError> {
    let s = &inner.subjects;
    let ttl = inner.config.presence_ttl;
    let config = stream::Config {
        name: s.presence_stream(),
        subjects: vec![s.presence_filter()],
        max_messages_per_subject: 1,
        max_age: ttl,
        storage: match inner.config.storage {
            crate::NatsStorage::File => stream::StorageType::File,
            crate::NatsStorage::Memory => stream::StorageType::Memory,
        },
        num_replicas: inner.config.replicas,
        ..Default::default()
    };
    // Nodes share the stream: the last to start with another presence_ttl sets it.
    ensure_stream(inner, config, |c| c.max_age != ttl).await
}

/// Writes one entry.
async fn write(inner: &Inner, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
    let body = codec::body(encode_client_info(info))?;
    let subject = inner.subjects.presence(channel, &info.client);
    for _ in 0..2 {
        let stream = presence_stream(inner).await?;
        let acked = match inner.js.publish(subject.clone(), body.clone()).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                forget_stream(inner, &stream.stream.cached_info().config.name);
            }
            Err(e) => return Err(inner.error("presence", e)),
        }
    }
    Err(inner.error("presence", "the stream disappears as it is made"))
}

/// Records `info.client` in `channel`'s presence, and keeps rewriting it until removed.
pub(crate) async fn add(
    inner: &Inner,
    channel: &str,
    info: Arc<ClientInfo>,
) -> Result<(), EngineError> {
    inner.connected()?;
    inner.local_presence.add(channel, &info);
    write(inner, channel, &info).await
}

/// Removes `client` from `channel`'s presence.
pub(crate) async fn remove(inner: &Inner, channel: &str, client: &str) -> Result<(), EngineError> {
    inner.local_presence.remove(channel, client);
    inner.connected()?;
    let stream = presence_stream(inner).await?;
    stream.check(inner)?;
    stream
        .stream
        .purge()
        .filter(inner.subjects.presence(channel, client))
        .await
        .map(drop)
        .map_err(|e| inner.error("presence", e))
}

/// Who is present in `channel`, on every node.
pub(crate) async fn get(
    inner: &Inner,
    channel: &str,
) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError> {
    inner.connected()?;
    let stream = presence_stream(inner).await?;
    // `All`, not `LastPerSubject`: the stream keeps one message per subject, so both read the same
    // entries, but nats-server releases older than mid-2025 (fixed by nats-server#7005; Debian's
    // 2.9.10 among them) make a `LastPerSubject` consumer skip subjects behind the holes each
    // rewrite leaves in the stream, and a refreshed client went missing from the list (the engine
    // conformance suite's rewrite check). A client rewritten during the read may come twice; the
    // later entry wins.
    let messages = consume(
        inner,
        &stream,
        inner.subjects.presence_of(channel),
        DeliverPolicy::All,
    )
    .await?;
    let mut out = HashMap::new();
    for m in messages {
        if let Err(e) = insert_entry(&mut out, None, &m.payload) {
            tracing::warn!(channel, subject = %m.subject, error = %e, "unreadable presence entry; skipped");
        }
    }
    Ok(out)
}

/// Rewrites this node's presence entries every third of `presence_ttl`. Runs until the engine
/// stops.
pub(crate) async fn refresh(inner: Arc<Inner>) {
    let inner = &*inner;
    inner
        .local_presence
        .refresh(
            inner.config.presence_ttl,
            move |channel, members| async move {
                for info in members {
                    if let Err(e) = write(inner, &channel, &info).await {
                        tracing::debug!(channel, error = %e, "presence refresh failed");
                    }
                }
            },
        )
        .await;
}
