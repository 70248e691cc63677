//! Idempotency keys of server publishes (the API's `idempotency_key`), kept in Redis so that a retry
//! reaching any node is caught.
//!
//! The check is inside the publish script, with the channel's other keys: `GET` the key's result; if
//! present, answer it and publish nothing; else publish and `SET` the result with the window as its
//! expiry. One script, so two nodes racing with the same key cannot both publish.

use std::time::Duration;

use switchboard_engine::{EngineError, StreamOptions};
use switchboard_protocol::{Publication, StreamPosition};

use crate::{Inner, history};

/// Publishes unless a publish to `channel` with `key` succeeded within `window`; then returns that
/// one's position.
pub(crate) async fn publish(
    inner: &Inner,
    channel: &str,
    publication: &Publication,
    opts: &StreamOptions,
    key: &str,
    window: Duration,
) -> Result<StreamPosition, EngineError> {
    history::publish(inner, channel, publication, opts, Some((key, window))).await
}
