//! Presence in Redis: per channel, a hash of client id to client info and a sorted set of when each
//! entry expires. Every node refreshes its own clients' entries every third of `presence_ttl`, so the
//! entries of a node that died (or lost Redis's data) vanish, or come back, within `presence_ttl`.
//! Readers drop expired entries first. Times are Redis's clock, the same for every node.

use std::collections::HashMap;
use std::sync::Arc;

use fred::prelude::*;
use switchboard_engine::EngineError;
use switchboard_engine::codec::encode_client_info;
use switchboard_engine::presence::insert_entry;
use switchboard_protocol::ClientInfo;

use crate::Inner;
use crate::codec::unreadable;
use crate::scripts::{millis, run};

/// Records `info.client` in `channel`'s presence, and keeps refreshing it until removed.
pub(crate) async fn add(
    inner: &Inner,
    channel: &str,
    info: Arc<ClientInfo>,
) -> Result<(), EngineError> {
    let json = encode_client_info(&info).map_err(unreadable)?;
    inner.local_presence.add(channel, &info);
    let args = vec![millis(inner.config.presence_ttl), info.client.clone(), json];
    write(inner, channel, args).await
}

async fn write(inner: &Inner, channel: &str, args: Vec<String>) -> Result<(), EngineError> {
    let keys = vec![
        inner.keys.presence(channel),
        inner.keys.presence_expiry(channel),
    ];
    let shard = inner.shard(channel);
    run::<i64>(shard, &inner.scripts.presence_add, keys, args)
        .await
        .map(drop)
}

/// Removes `client` from `channel`'s presence.
pub(crate) async fn remove(inner: &Inner, channel: &str, client: &str) -> Result<(), EngineError> {
    inner.local_presence.remove(channel, client);
    let keys = vec![
        inner.keys.presence(channel),
        inner.keys.presence_expiry(channel),
    ];
    let shard = inner.shard(channel);
    run::<i64>(
        shard,
        &inner.scripts.presence_remove,
        keys,
        vec![client.to_owned()],
    )
    .await
    .map(drop)
}

/// Who is present in `channel`, on every node.
pub(crate) async fn get(
    inner: &Inner,
    channel: &str,
) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError> {
    let keys = vec![
        inner.keys.presence(channel),
        inner.keys.presence_expiry(channel),
    ];
    let shard = inner.shard(channel);
    let flat: Vec<Value> = run(shard, &inner.scripts.presence_get, keys, vec![]).await?;
    let mut out = HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(id), Some(info)) = (it.next(), it.next()) {
        let (Some(id), Some(info)) = (id.into_string(), info.into_bytes()) else {
            continue;
        };
        if let Err(e) = insert_entry(&mut out, Some(id.clone()), &info) {
            tracing::warn!(channel, client = %id, error = %e, "unreadable presence entry; skipped");
        }
    }
    Ok(out)
}

/// Refreshes this node's presence entries every third of `presence_ttl`, a channel's in one
/// script. Runs until the engine stops.
pub(crate) async fn refresh(inner: Arc<Inner>) {
    let ttl = inner.config.presence_ttl;
    let inner = &*inner;
    inner
        .local_presence
        .refresh(ttl, move |channel, members| async move {
            let mut args = vec![millis(ttl)];
            for info in &members {
                let Ok(json) = encode_client_info(info) else {
                    continue;
                };
                args.push(info.client.clone());
                args.push(json);
            }
            if let Err(e) = write(inner, &channel, args).await {
                tracing::debug!(channel, error = %e, "presence refresh failed");
            }
        })
        .await;
}
