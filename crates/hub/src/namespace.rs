//! Namespaces: a channel `ns:name` takes the options of namespace `ns`; a channel without `:` takes
//! the top-level `[channels]` options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_engine::StreamOptions;
use switchboard_protocol::ErrorCode;

/// What a namespace's channels keep and allow.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Publications kept per channel; 0 keeps none (offsets stay 0, nothing to recover).
    pub history_size: usize,
    /// How long each publication is kept. History needs both a size and a ttl.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// How long a channel's epoch and offset outlive its last publication.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// Subscribers may ask for missed publications (`recover`).
    pub recover: bool,
    /// Keep presence (who is subscribed); subscribers may read it.
    pub presence: bool,
    /// Send `join`/`leave` pushes to subscribers.
    pub join_leave: bool,
    /// Clients may publish (otherwise only the server API can).
    pub allow_publish: bool,
    /// Clients may read history with the `history` command.
    pub allow_history: bool,
    /// Subscribing needs a subscription token (verified by the auth layer).
    pub private: bool,
    /// Subscriptions (without a subscription token) are decided by the application's subscribe
    /// proxy.
    pub subscribe_proxy: bool,
    /// Client publications are decided (and may be rewritten) by the application's publish proxy,
    /// whatever `allow_publish` says.
    pub publish_proxy: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_meta_ttl: Duration::from_secs(24 * 3600),
            recover: false,
            presence: false,
            join_leave: false,
            allow_publish: false,
            allow_history: false,
            private: false,
            subscribe_proxy: false,
            publish_proxy: false,
        }
    }
}

impl NamespaceOptions {
    /// Every client feature on: recovery, presence with join/leave pushes, client publications and
    /// history reads, over a history of `history_size` publications kept for `history_ttl`. What a
    /// chat wants (the demo's `chat` namespace is this), and so what tests of several features start
    /// from; the rest (private, proxies) stays off, as each needs more setup.
    pub fn all_on(history_size: usize, history_ttl: Duration) -> Self {
        Self {
            history_size,
            history_ttl,
            recover: true,
            presence: true,
            join_leave: true,
            allow_publish: true,
            allow_history: true,
            ..Self::default()
        }
    }

    /// The engine's view of these options.
    pub fn stream(&self) -> StreamOptions {
        StreamOptions {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
            history_meta_ttl: self.history_meta_ttl,
        }
    }

    /// Whether channels of this namespace keep a stream.
    pub fn keeps_history(&self) -> bool {
        self.stream().keeps_history()
    }
}

/// The `[channels]` section: default options, named namespaces and channel limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Options of channels without a namespace.
    #[serde(flatten)]
    pub default: NamespaceOptions,
    /// Named namespaces.
    pub namespaces: BTreeMap<String, NamespaceOptions>,
    /// Longest channel name, in bytes.
    pub max_channel_length: usize,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            default: NamespaceOptions::default(),
            namespaces: BTreeMap::new(),
            max_channel_length: 255,
        }
    }
}

impl ChannelsConfig {
    /// The options for `channel`, or the error to answer.
    pub fn resolve(&self, channel: &str) -> Result<&NamespaceOptions, ErrorCode> {
        if channel.is_empty() || channel.len() > self.max_channel_length {
            return Err(ErrorCode::BadRequest);
        }
        match channel.split_once(':') {
            Some((ns, _)) => self.namespaces.get(ns).ok_or(ErrorCode::UnknownChannel),
            None => Ok(&self.default),
        }
    }

    /// Checks values that cannot work together, naming the namespace.
    pub fn validate(&self) -> Result<(), String> {
        let all = std::iter::once(("(default)", &self.default))
            .chain(self.namespaces.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, ns) in all {
            if ns.recover && !ns.keeps_history() {
                return Err(format!(
                    "namespace {name}: recover needs history_size and history_ttl"
                ));
            }
            if ns.join_leave && !ns.presence {
                return Err(format!("namespace {name}: join_leave needs presence"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_by_prefix() {
        let mut c = ChannelsConfig::default();
        c.namespaces.insert(
            "chat".into(),
            NamespaceOptions {
                allow_publish: true,
                ..Default::default()
            },
        );
        assert!(c.resolve("chat:room").unwrap().allow_publish);
        assert!(!c.resolve("news").unwrap().allow_publish);
        assert_eq!(c.resolve("nope:x"), Err(ErrorCode::UnknownChannel));
        assert_eq!(c.resolve(""), Err(ErrorCode::BadRequest));
        assert_eq!(c.resolve(&"x".repeat(256)), Err(ErrorCode::BadRequest));
    }

    #[test]
    fn all_on_is_a_valid_namespace_that_allows_every_client_feature() {
        let ns = NamespaceOptions::all_on(100, Duration::from_secs(600));
        assert!(ns.keeps_history() && ns.recover && ns.presence && ns.join_leave);
        assert!(ns.allow_publish && ns.allow_history);
        assert!(!ns.private && !ns.subscribe_proxy && !ns.publish_proxy);
        assert_eq!(
            ns.history_meta_ttl,
            NamespaceOptions::default().history_meta_ttl
        );
        let mut c = ChannelsConfig::default();
        c.namespaces.insert("chat".into(), ns);
        assert_eq!(c.validate(), Ok(()));
        // Without a history, recovery cannot work: the caller is told so.
        c.namespaces
            .insert("none".into(), NamespaceOptions::all_on(0, Duration::ZERO));
        assert!(c.validate().unwrap_err().contains("recover needs history"));
    }
}
