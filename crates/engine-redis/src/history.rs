//! Channel streams in Redis: publish (offset, append, broadcast in one script), read, remove.
//!
//! A channel's stream is a Redis Stream (`XADD ... MAXLEN size`, the key expiring `history_ttl` after
//! the last publication) beside a hash with its epoch and latest offset (expiring `history_meta_ttl`
//! after it). The publish script increments the offset, appends and publishes as one step, so
//! offsets are gapless, and every node receives them in offset order. When the hash is gone (expired,
//! removed, or Redis lost its data), the next publish or read starts a new epoch, and recovery from
//! the old one fails as it must. Publications older than `history_ttl` are left out of reads by their
//! entry time (Redis's clock), like the in-memory engine's per-publication expiry.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use switchboard_engine::codec;
use switchboard_engine::{EngineError, History, HistoryQuery, StreamOptions, new_epoch};
use switchboard_protocol::{Publication, StreamPosition};

use crate::codec as framing;
use crate::scripts::{millis, run};
use crate::{Inner, Shard};

/// Publishes `publication` to `channel`: appended to its stream (when `opts` keeps one) and sent to
/// every node, in one script. With `idempotency = Some((key, window))`, a publish with the same key
/// within the window returns the first one's position instead.
pub(crate) async fn publish(
    inner: &Inner,
    channel: &str,
    publication: &Publication,
    opts: &StreamOptions,
    idempotency: Option<(&str, Duration)>,
) -> Result<StreamPosition, EngineError> {
    let shard = inner.shard(channel);
    let body = codec::encode_publication(publication).map_err(framing::unreadable)?;
    let keys = &inner.keys;
    let size = if opts.keeps_history() {
        opts.history_size
    } else {
        0
    };
    let (key, result_ttl) = match idempotency {
        Some((key, window)) => (key, millis(window)),
        None => ("", "0".to_owned()),
    };
    let client = shard.commands()?;
    let result: String = inner
        .scripts
        .publish
        .evalsha_with_reload(
            client,
            vec![
                keys.stream(channel),
                keys.meta(channel),
                keys.result(channel, key),
            ],
            vec![
                body,
                size.to_string(),
                millis(opts.history_ttl),
                millis(opts.history_meta_ttl.max(opts.history_ttl)),
                new_epoch(),
                keys.pubsub(channel),
                if inner.config.cluster {
                    "spublish"
                } else {
                    "publish"
                }
                .to_owned(),
                result_ttl,
            ],
        )
        .await
        .map_err(|e| publish_error(shard, &e))?;
    parse_position(&result)
}

/// A failed publish script as an engine error. Once sent, a script may run although its answer is
/// lost (Redis paused, then resumed; a connection dropped after writing): its outcome is unknown, and
/// the message says so, and how to retry safely.
fn publish_error(shard: &Shard, e: &fred::error::Error) -> EngineError {
    use fred::error::ErrorKind;
    match e.kind() {
        ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled => {
            EngineError::UnknownOutcome(format!(
                "Redis at {} did not confirm the publish ({e}): the outcome is unknown, it may \
                 still be applied; retry with the same idempotency_key so that it is not applied twice",
                shard.name
            ))
        }
        _ => shard.error(e),
    }
}

/// `offset:epoch` as a position.
pub(crate) fn parse_position(s: &str) -> Result<StreamPosition, EngineError> {
    let (offset, epoch) = s
        .split_once(':')
        .and_then(|(o, e)| Some((o.parse().ok()?, e)))
        .ok_or_else(|| {
            EngineError::Unavailable(format!("unreadable publish result from Redis: {s:?}"))
        })?;
    Ok(StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    })
}

/// Reads `channel`'s stream, creating it (with a new epoch) when it does not exist.
pub(crate) async fn read(
    inner: &Inner,
    channel: &str,
    query: &HistoryQuery,
    opts: &StreamOptions,
) -> Result<History, EngineError> {
    let shard = inner.shard(channel);
    let want = query.limit != Some(0);
    let out: Vec<Value> = run(
        shard,
        &inner.scripts.read,
        vec![inner.keys.stream(channel), inner.keys.meta(channel)],
        vec![
            new_epoch(),
            millis(opts.history_meta_ttl),
            millis(opts.history_ttl),
            if want { "1" } else { "0" }.to_owned(),
        ],
    )
    .await?;
    let unreadable = |what: &str| EngineError::Unavailable(format!("unreadable history: {what}"));
    let mut it = out.into_iter();
    let epoch = it
        .next()
        .and_then(Value::into_string)
        .ok_or_else(|| unreadable("epoch"))?;
    let offset = it
        .next()
        .as_ref()
        .and_then(u64_of)
        .ok_or_else(|| unreadable("offset"))?;
    let mut publications = Vec::new();
    while let (Some(o), Some(body)) = (it.next(), it.next()) {
        let o = u64_of(&o).ok_or_else(|| unreadable("publication offset"))?;
        if !query.wants(o) {
            continue;
        }
        let body = body
            .into_bytes()
            .ok_or_else(|| unreadable("publication body"))?;
        let p = codec::decode_publication(&body, o).map_err(framing::unreadable)?;
        publications.push(Arc::new(p));
    }
    Ok(History {
        publications: query.select(publications),
        position: StreamPosition { offset, epoch },
    })
}

/// A number Redis sent as an integer or as text.
fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Drops `channel`'s stream and its epoch.
pub(crate) async fn remove(inner: &Inner, channel: &str) -> Result<(), EngineError> {
    let shard = inner.shard(channel);
    let keys = vec![inner.keys.stream(channel), inner.keys.meta(channel)];
    shard
        .commands()?
        .del::<i64, _>(keys)
        .await
        .map(drop)
        .map_err(|e| shard.error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(
            parse_position("12:abc").ok(),
            Some(StreamPosition {
                offset: 12,
                epoch: "abc".into()
            })
        );
        assert_eq!(parse_position("0:").ok(), Some(StreamPosition::default()));
        assert!(parse_position("x:abc").is_err());
        assert!(parse_position("12").is_err());
    }
}
