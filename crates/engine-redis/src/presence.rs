//! Presence in Redis: per channel, a hash of client id to client info and a sorted set of when each
//! entry expires. Every node refreshes its own clients' entries every third of `presence_ttl`, so the
//! entries of a node that died (or lost Redis's data) vanish, or come back, within `presence_ttl`.
//! Readers drop expired entries first. Times are Redis's clock, the same for every node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use switchboard_engine::{EngineError, PresenceStats};
use switchboard_protocol::ClientInfo;

use crate::Inner;
use crate::scripts::{millis, run};

/// Records `info.client` in `channel`'s presence, and keeps refreshing it until removed.
pub(crate) async fn add(
    inner: &Inner,
    channel: &str,
    info: Arc<ClientInfo>,
) -> Result<(), EngineError> {
    let json =
        serde_json::to_string(&*info).map_err(|e| EngineError::Unavailable(e.to_string()))?;
    inner
        .local_presence
        .lock()
        .entry(channel.to_owned())
        .or_default()
        .insert(info.client.clone(), Arc::clone(&info));
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
    {
        let mut local = inner.local_presence.lock();
        if let Some(clients) = local.get_mut(channel) {
            clients.remove(client);
            if clients.is_empty() {
                local.remove(channel);
            }
        }
    }
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
        match serde_json::from_slice::<ClientInfo>(&info) {
            Ok(info) => {
                out.insert(id, Arc::new(info));
            }
            Err(e) => {
                tracing::warn!(channel, client = %id, error = %e, "unreadable presence entry; skipped")
            }
        }
    }
    Ok(out)
}

/// Presence counts of `channel`.
pub(crate) async fn stats(inner: &Inner, channel: &str) -> Result<PresenceStats, EngineError> {
    let members = get(inner, channel).await?;
    let users: HashSet<&str> = members.values().map(|c| c.user.as_str()).collect();
    Ok(PresenceStats {
        num_clients: members.len(),
        num_users: users.len(),
    })
}

/// Refreshes this node's presence entries every third of `presence_ttl`. Runs until the engine stops.
pub(crate) async fn refresh(inner: Arc<Inner>) {
    let period = (inner.config.presence_ttl / 3).max(Duration::from_millis(100));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let snapshot: Vec<(String, Vec<Arc<ClientInfo>>)> = inner
            .local_presence
            .lock()
            .iter()
            .map(|(c, m)| (c.clone(), m.values().cloned().collect()))
            .collect();
        for (channel, members) in snapshot {
            let mut args = vec![millis(inner.config.presence_ttl)];
            for info in &members {
                let Ok(json) = serde_json::to_string(&**info) else {
                    continue;
                };
                args.push(info.client.clone());
                args.push(json);
            }
            if let Err(e) = write(&inner, &channel, args).await {
                // Redis is away; the next round (after the reconnect) restores the entries.
                tracing::debug!(channel, error = %e, "presence refresh failed");
            }
        }
    }
}
