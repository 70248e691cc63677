//! The `[proxy]` configuration section.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use switchboard_protocol::proxy::ProxyEvent;

/// Which events go to the backend, where, and how calls are bounded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// URL for connections without a token: the backend names the user.
    pub connect: Option<String>,
    /// URL asked when a connection granted by `connect` with `expire_at` expires.
    pub refresh: Option<String>,
    /// URL for subscriptions to namespaces with `subscribe_proxy = true`.
    pub subscribe: Option<String>,
    /// URL for client publications to namespaces with `publish_proxy = true`.
    pub publish: Option<String>,
    /// URL for the clients' `rpc` commands.
    pub rpc: Option<String>,
    /// URL asked when a subscription granted by `subscribe` with `expire_at` expires.
    pub sub_refresh: Option<String>,
    /// Longest wait for a backend's answer; the client then gets error 100.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most calls in progress per event; beyond it clients get error 111 at once.
    pub max_concurrency: usize,
    /// Handshake request headers passed on to the backend (case-insensitive names).
    pub forward_headers: Vec<String>,
    /// Cookies of the handshake's `Cookie` header passed on to the backend (`"*"`: all).
    pub forward_cookies: Vec<String>,
    /// Headers sent with every call, e.g. a shared secret the backend checks.
    pub headers: BTreeMap<String, String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect: None,
            refresh: None,
            subscribe: None,
            publish: None,
            rpc: None,
            sub_refresh: None,
            timeout: Duration::from_secs(3),
            max_concurrency: 64,
            forward_headers: Vec::new(),
            forward_cookies: Vec::new(),
            headers: BTreeMap::new(),
        }
    }
}

/// A `[proxy]` setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A URL that does not parse or is not `http://`.
    #[error("proxy.{event}: {message}")]
    Url {
        /// The event whose URL is wrong.
        event: ProxyEvent,
        /// What is wrong with it.
        message: String,
    },
    /// A zero timeout or cap.
    #[error("proxy.{key} must be greater than zero")]
    Zero {
        /// The key.
        key: &'static str,
    },
    /// A header in `proxy.headers` that HTTP does not allow.
    #[error("proxy.headers: {name:?} is not a valid header name and value")]
    Header {
        /// The header's name.
        name: String,
    },
    /// The HTTP client could not be built.
    #[error("proxy: cannot build the HTTP client: {0}")]
    Client(String),
}

/// The parts of a config that needed parsing.
pub(crate) struct Checked {
    pub urls: [Option<reqwest::Url>; ProxyEvent::ALL.len()],
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ProxyConfig {
    /// The URL configured for `event`.
    pub fn url(&self, event: ProxyEvent) -> Option<&str> {
        match event {
            ProxyEvent::Connect => self.connect.as_deref(),
            ProxyEvent::Refresh => self.refresh.as_deref(),
            ProxyEvent::Subscribe => self.subscribe.as_deref(),
            ProxyEvent::Publish => self.publish.as_deref(),
            ProxyEvent::Rpc => self.rpc.as_deref(),
            ProxyEvent::SubRefresh => self.sub_refresh.as_deref(),
        }
    }

    /// Whether any event is forwarded.
    pub fn enabled(&self) -> bool {
        ProxyEvent::ALL.iter().any(|e| self.url(*e).is_some())
    }

    /// Checks every setting, with the key's name in the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map(drop)
    }

    pub(crate) fn check(&self) -> Result<Checked, ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::Zero { key: "timeout" });
        }
        if self.max_concurrency == 0 {
            return Err(ConfigError::Zero {
                key: "max_concurrency",
            });
        }
        let mut urls: [Option<reqwest::Url>; ProxyEvent::ALL.len()] = Default::default();
        for (slot, event) in urls.iter_mut().zip(ProxyEvent::ALL) {
            let Some(text) = self.url(event) else {
                continue;
            };
            let url = reqwest::Url::parse(text).map_err(|e| ConfigError::Url {
                event,
                message: format!("{text:?} is not a URL: {e}"),
            })?;
            if url.scheme() != "http" {
                return Err(ConfigError::Url {
                    event,
                    message: format!(
                        "{text:?}: only http:// backends are supported (put HTTPS backends behind a \
                         local proxy, or on the same private network)"
                    ),
                });
            }
            *slot = Some(url);
        }
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                match (
                    HeaderName::try_from(name.as_str()),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    (Ok(n), Ok(v)) => Ok((n, v)),
                    _ => Err(ConfigError::Header { name: name.clone() }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Checked { urls, headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = ProxyConfig::default();
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.max_concurrency, 64);
        assert!(!c.enabled());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let bad = |c: ProxyConfig| c.validate().unwrap_err().to_string();
        let url = |u: &str| ProxyConfig {
            rpc: Some(u.into()),
            ..ProxyConfig::default()
        };
        assert!(bad(url("not a url")).starts_with("proxy.rpc: "));
        assert!(bad(url("https://example.com/rpc")).contains("only http://"));
        assert_eq!(
            bad(ProxyConfig {
                max_concurrency: 0,
                ..ProxyConfig::default()
            }),
            "proxy.max_concurrency must be greater than zero"
        );
        assert!(
            bad(ProxyConfig {
                headers: [("bad name".into(), "x".into())].into(),
                ..ProxyConfig::default()
            })
            .starts_with("proxy.headers")
        );
    }
}
