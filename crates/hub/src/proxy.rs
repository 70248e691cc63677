//! Proxies: client events the application's backend decides on (connect, refresh, subscribe, publish,
//! rpc, sub_refresh).
//!
//! The hub only knows this trait and the JSON it exchanges; how a call travels (HTTP POST, with which
//! headers, cap and timeout) belongs to the implementation (`switchboard-proxy`), so the hub stays free
//! of HTTP. The request and result shapes are documented in docs/proxy.md.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::ErrorCode;

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
    /// The body is held to the JSON rule of [`switchboard_protocol::json`] as a whole: what a handler
    /// answers (`data`, `info`, a rewritten publication) reaches clients as it came.
    pub fn parse(body: &[u8]) -> Result<Self, ProxyError> {
        let wire: WireReply =
            serde_json::from_slice(body).map_err(|e| ProxyError::BadReply(e.to_string()))?;
        let text = std::str::from_utf8(body).map_err(|e| ProxyError::BadReply(e.to_string()))?;
        switchboard_protocol::json::check(text).map_err(|e| ProxyError::BadReply(e.to_string()))?;
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

/// The body of every proxy call: who asks, then the event's own fields.
#[derive(Debug, Serialize)]
pub(crate) struct Request<'a, T: Serialize> {
    pub client: &'a str,
    pub transport: &'a str,
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub user: &'a str,
    #[serde(flatten)]
    pub event: T,
}

/// `connect` fields.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a serde_json::Value>,
}

/// `subscribe` and `sub_refresh` fields.
#[derive(Debug, Serialize)]
pub(crate) struct ChannelRequest<'a> {
    pub channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a serde_json::Value>,
}

/// `publish` fields: the payload as the client sent it.
#[derive(Debug, Serialize)]
pub(crate) struct PublishRequest<'a> {
    pub channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64data: Option<String>,
}

/// `rpc` fields.
#[derive(Debug, Serialize)]
pub(crate) struct RpcRequest<'a> {
    pub method: &'a str,
    pub data: &'a RawValue,
}

/// `refresh` has no fields of its own.
#[derive(Debug, Serialize)]
pub(crate) struct Empty {}

/// `connect` result: who the connection is.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConnectResult {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub expire_at: Option<u64>,
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub channels: Vec<String>,
}

/// `refresh` and `sub_refresh` result.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RefreshResult {
    #[serde(default)]
    pub expired: bool,
    #[serde(default)]
    pub expire_at: Option<u64>,
}

/// `subscribe` result.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubscribeResult {
    #[serde(default)]
    pub expire_at: Option<u64>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// `publish` result: optionally another payload, and whether to keep it out of history.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PublishResult {
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub b64data: Option<String>,
    #[serde(default)]
    pub skip_history: bool,
}

/// `rpc` result.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RpcResult {
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// How a proxied command ends when the backend did not say "go ahead".
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The backend refused: answer this error.
    Error { code: u32, message: String },
    /// The backend wants the client gone.
    Disconnect { reconnect: bool },
    /// No usable answer (timeout, overload, failure): answer this error; the client may retry.
    Failed(ErrorCode, String),
}

impl From<ProxyError> for Refusal {
    fn from(e: ProxyError) -> Self {
        let code = match e {
            ProxyError::Overloaded { .. } => ErrorCode::TooManyRequests,
            _ => ErrorCode::Internal,
        };
        Self::Failed(code, e.to_string())
    }
}

/// Calls `proxy` for `event` and decodes a result of type `R`.
pub(crate) async fn call<T: Serialize, R: serde::de::DeserializeOwned>(
    proxy: &dyn Proxy,
    event: ProxyEvent,
    request: &Request<'_, T>,
    headers: &[(String, String)],
    metrics: &crate::metrics::Metrics,
) -> Result<R, Refusal> {
    let body = serde_json::to_vec(request)
        .map_err(|e| Refusal::Failed(ErrorCode::Internal, e.to_string()))?;
    let started = std::time::Instant::now();
    let reply = proxy.call(event, Bytes::from(body), headers).await;
    let took = started.elapsed();
    metrics.proxy_call(
        event.name(),
        took,
        reply.as_ref().err().map(ProxyError::kind),
    );
    tracing::debug!(%event, client = request.client, elapsed = ?took, ok = reply.is_ok(), "proxy call");
    match reply.inspect_err(
        |e| tracing::warn!(%event, client = request.client, error = %e, "proxy call failed"),
    )? {
        ProxyReply::Result(raw) => serde_json::from_str(raw.get()).map_err(|e| {
            let e = ProxyError::BadReply(format!("{event} result: {e}"));
            tracing::warn!(%event, error = %e, "proxy call failed");
            e.into()
        }),
        ProxyReply::Error { code, message } => Err(Refusal::Error { code, message }),
        ProxyReply::Disconnect { reconnect } => Err(Refusal::Disconnect { reconnect }),
    }
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
