//! Proxies as the hub calls them: the request bodies it builds and the results it expects for each
//! event (docs/proxy.md), and how an answer ends a command. The contract itself (events, replies,
//! errors, the [`Proxy`] trait) is `switchboard_protocol::proxy`, shared with `switchboard-proxy`,
//! which carries the calls over HTTP, so the hub stays free of HTTP.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::ErrorCode;
pub use switchboard_protocol::proxy::{
    ForwardedHeaders, Proxy, ProxyError, ProxyEvent, ProxyReply,
};

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
    let reply = proxy.call(event, bytes::Bytes::from(body), headers).await;
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
