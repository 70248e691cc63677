//! The proxy contract (docs/proxy.md): client events the application's backend decides on
//! (connect, refresh, subscribe, publish, rpc, sub_refresh), what it may answer, and the [`Proxy`]
//! trait a way of calling it implements.
//!
//! It lives here, beside the client protocol, rather than in the hub: docs/proxy.md is a wire
//! contract like docs/protocol.md (the answers are held to the same JSON rule, [`crate::json`]),
//! and this way the hub, which calls proxies, and `switchboard-proxy`, which carries the calls over
//! HTTP, both depend on it without the proxy crate compiling against the whole core. How a call
//! travels (HTTP POST, with which headers, cap and timeout) belongs to the implementation.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A client event forwarded to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyEvent {
    /// A connection without a token asks to connect: the backend names the user.
    Connect,
    /// A connection established by the connect proxy reaches its expiry.
    Refresh,
    /// A subscription to a channel of a namespace with `subscribe_proxy`.
    Subscribe,
    /// A client publication to a channel of a namespace with `publish_proxy`.
    Publish,
    /// A client's `rpc` command.
    Rpc,
    /// A subscription granted by the subscribe proxy with an expiry reaches it.
    SubRefresh,
}

impl ProxyEvent {
    /// Every event, for configuration and documentation checks.
    pub const ALL: [ProxyEvent; 6] = [
        Self::Connect,
        Self::Refresh,
        Self::Subscribe,
        Self::Publish,
        Self::Rpc,
        Self::SubRefresh,
    ];

    /// The event's name in configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Refresh => "refresh",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Rpc => "rpc",
            Self::SubRefresh => "sub_refresh",
        }
    }
}

impl fmt::Display for ProxyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Request headers (and the `Cookie` header, filtered) of a client's original handshake, kept for
/// proxy calls. Only what the proxy configuration asks for is kept, so connections of deployments
/// without proxies carry nothing.
pub type ForwardedHeaders = Arc<[(String, String)]>;

/// What the backend answered.
#[derive(Debug, Clone)]
pub enum ProxyReply {
    /// Go ahead; the event's result object (raw JSON, `{}` when the backend sent none).
    Result(Box<RawValue>),
    /// Refuse the command with this error (the client's connection stays).
    Error {
        /// Error code for the client; application codes are 1000 and above.
        code: u32,
        /// Message for the client.
        message: String,
    },
    /// Disconnect the client.
    Disconnect {
        /// Whether the client should reconnect (3000 `normal`) or not (3503 `force disconnect`).
        reconnect: bool,
    },
}

/// The backend's answer, as JSON: exactly one of `result`, `error`, `disconnect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireReply {
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    disconnect: Option<WireDisconnect>,
}

#[derive(Debug, Deserialize)]
struct WireError {
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct WireDisconnect {
    #[serde(default)]
    reconnect: bool,
}

impl ProxyReply {
    /// Parses a backend's response body.
    ///
    /// The body is held to the JSON rule of [`crate::json`] as a whole: what a handler
    /// answers (`data`, `info`, a rewritten publication) reaches clients as it came.
    pub fn parse(body: &[u8]) -> Result<Self, ProxyError> {
        let wire: WireReply =
            serde_json::from_slice(body).map_err(|e| ProxyError::BadReply(e.to_string()))?;
        let text = std::str::from_utf8(body).map_err(|e| ProxyError::BadReply(e.to_string()))?;
        crate::json::check(text).map_err(|e| ProxyError::BadReply(e.to_string()))?;
        match (wire.result, wire.error, wire.disconnect) {
            (_, _, Some(d)) => Ok(Self::Disconnect {
                reconnect: d.reconnect,
            }),
            (_, Some(e), None) => Ok(Self::Error {
                code: e.code,
                message: e.message,
            }),
            (Some(r), None, None) => Ok(Self::Result(r)),
            (None, None, None) => Ok(Self::Result(empty_object())),
        }
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("`{{}}` is valid JSON"))
}

/// Why a proxy call gave no answer. Clients see the message; the server logs the event with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The backend did not answer within the proxy's timeout.
    #[error("the application's {event} handler did not answer within {millis} ms")]
    Timeout {
        /// Which event.
        event: ProxyEvent,
        /// The configured timeout.
        millis: u64,
    },
    /// The proxy's concurrency cap is reached: the backend is not keeping up.
    #[error(
        "the application's {event} handler is overloaded ({cap} calls in progress); retry later"
    )]
    Overloaded {
        /// Which event.
        event: ProxyEvent,
        /// The configured cap.
        cap: usize,
    },
    /// The backend could not be reached or answered with a non-2xx status.
    #[error("the application's handler failed: {0}")]
    Failed(String),
    /// The backend answered something that is not a reply object.
    #[error("the application's handler answered an invalid reply: {0}")]
    BadReply(String),
}

impl ProxyError {
    /// A short name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Overloaded { .. } => "overloaded",
            Self::Failed(_) => "failed",
            Self::BadReply(_) => "bad_reply",
        }
    }
}

/// Forwards events to the application's backend.
#[async_trait]
pub trait Proxy: Send + Sync + fmt::Debug {
    /// Whether `event` is configured (has a backend URL).
    fn handles(&self, event: ProxyEvent) -> bool;

    /// Calls the backend with `body`, a JSON object built by the hub, and the client's forwarded
    /// handshake headers. Must return within the proxy's timeout, whatever the backend does.
    async fn call(
        &self,
        event: ProxyEvent,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<ProxyReply, ProxyError>;

    /// Which handshake headers to keep for proxy calls (lowercase names), and which cookies of the
    /// `Cookie` header. Transports call [`Proxy::forward`] with the handshake's headers.
    fn forward(&self, headers: &mut dyn Iterator<Item = (&str, &str)>) -> ForwardedHeaders;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_reply_kind() {
        match ProxyReply::parse(br#"{"result":{"user":"ann"}}"#) {
            Ok(ProxyReply::Result(r)) => assert_eq!(r.get(), r#"{"user":"ann"}"#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ProxyReply::parse(br#"{"error":{"code":1001,"message":"no"}}"#),
            Ok(ProxyReply::Error { code: 1001, message }) if message == "no"
        ));
        assert!(matches!(
            ProxyReply::parse(br#"{"disconnect":{"reconnect":true}}"#),
            Ok(ProxyReply::Disconnect { reconnect: true })
        ));
        match ProxyReply::parse(b"{}") {
            Ok(ProxyReply::Result(r)) => assert_eq!(r.get(), "{}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ProxyReply::parse(b"<html>"),
            Err(ProxyError::BadReply(_))
        ));
        assert!(matches!(
            ProxyReply::parse(br#"{"result":{},"extra":1}"#),
            Err(ProxyError::BadReply(_))
        ));
    }

    #[test]
    fn answers_breaking_the_json_rule_are_bad_replies() {
        for body in [
            r#"{"result":{"data":1E400}}"#,
            r#"{"result":{"info":{"name":"\ud800"}}}"#,
            r#"{"result":{"data":{"id":9007199254740993}}}"#,
        ] {
            match ProxyReply::parse(body.as_bytes()) {
                Err(ProxyError::BadReply(m)) => assert!(!m.is_empty()),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
