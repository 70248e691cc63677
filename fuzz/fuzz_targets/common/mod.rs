//! What the `api`, `fallback` and `token` targets share: a node as the server builds one (memory
//! engine, namespaces with every feature on), the token key, and a tokio runtime whose clock is paused
//! (a long poll or a session timeout passes at once instead of taking real seconds).
//!
//! Each input gets a fresh node and runtime, so that a crash replays from its input alone and no
//! state (history, idempotency keys, sessions) grows across millions of inputs.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use switchboard_auth::{AuthConfig, Verifier};
use switchboard_engine::MemoryEngine;
use switchboard_hub::{ChannelsConfig, ClientConfig, NamespaceOptions, Node, NodeConfig};

/// The HMAC secret the targets' verifier trusts (seeds' tokens are signed with it).
pub const SECRET: &str = "fuzz-secret";

/// A verifier for HS256/384/512 tokens signed with [`SECRET`].
pub fn verifier() -> Verifier {
    Verifier::new(&AuthConfig {
        hmac_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    })
    .expect("an HMAC secret always loads")
}

/// Channels: the default namespace keeps history and presence and lets clients publish and read;
/// `private:` is the same but needs a subscription; `bare:` keeps and allows nothing.
pub fn channels() -> ChannelsConfig {
    let open = NamespaceOptions {
        history_size: 16,
        history_ttl: Duration::from_secs(300),
        recover: true,
        presence: true,
        join_leave: true,
        allow_publish: true,
        allow_history: true,
        ..NamespaceOptions::default()
    };
    let mut channels = ChannelsConfig {
        default: open.clone(),
        ..ChannelsConfig::default()
    };
    channels.namespaces.insert(
        "private".into(),
        NamespaceOptions {
            private: true,
            ..open
        },
    );
    channels
        .namespaces
        .insert("bare".into(), NamespaceOptions::default());
    channels
}

/// A node on a fresh memory engine, with [`channels`], anonymous clients allowed and [`verifier`].
pub fn node(client: ClientConfig) -> Arc<Node> {
    Node::new(
        Arc::new(MemoryEngine::new()),
        NodeConfig {
            channels: channels(),
            client,
            ..NodeConfig::default()
        },
        Some(verifier()),
    )
}

/// A current-thread runtime with a paused clock that jumps ahead whenever every task waits.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds")
}
