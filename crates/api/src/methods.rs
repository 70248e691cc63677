//! One function per API method. Each parses its own request type and calls the node.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_engine::HistoryQuery;
use switchboard_hub::{
    ClientOrder, ClientTarget as Target, ClusterError, Node, PublishError, PublishOptions,
};
use switchboard_protocol::{DisconnectCode, ErrorCode, Payload, StreamPosition, encode};

use crate::ApiError;

/// Every method, as routed (`POST /api/<method>`) and as documented in openapi.json.
pub const METHODS: [&str; 13] = [
    "publish",
    "broadcast",
    "batch",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
];

type Result<T> = std::result::Result<T, ApiError>;

/// Every body goes through here: held to the JSON rule of `switchboard_protocol::json` as a whole (so
/// every `data` inside, batch included, is), then parsed.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        "{}"
    } else {
        std::str::from_utf8(body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    // Grammar first (its message names line and column), then the rule.
    let parsed = serde_json::from_str(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    switchboard_protocol::json::check(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    Ok(parsed)
}

/// Runs `method` with the JSON `body`; the `result` value on success.
pub(crate) async fn dispatch(node: &Node, method: &str, body: &[u8]) -> Result<Value> {
    match method {
        "publish" => publish(node, parse(body)?).await,
        "broadcast" => broadcast(node, parse(body)?).await,
        "batch" => batch(node, parse(body)?).await,
        "subscribe" => {
            let r: ClientTarget = parse(body)?;
            let channel = r.channel()?;
            check_channel(node, channel)?;
            order(node, r.target(), ClientOrder::Subscribe(channel)).await
        }
        "unsubscribe" => {
            let r: ClientTarget = parse(body)?;
            let channel = r.channel()?;
            order(node, r.target(), ClientOrder::Unsubscribe(channel)).await
        }
        "disconnect" => {
            let r: DisconnectRequest = parse(body)?;
            let code = match r.code {
                None => DisconnectCode::ForceDisconnect,
                Some(n) => DisconnectCode::ALL
                    .into_iter()
                    .find(|c| u64::from(c.code()) == n)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "code {n} is not a documented disconnect code"
                        ))
                    })?,
            };
            let target = Target {
                user: r.user,
                client: r.client,
            };
            order(node, target, ClientOrder::Disconnect(code)).await
        }
        "refresh" => {
            let r: RefreshRequest = parse(body)?;
            let at = if r.expired { Some(1) } else { r.expire_at };
            let target = Target {
                user: r.user,
                client: r.client,
            };
            order(node, target, ClientOrder::Refresh(at)).await
        }
        "presence" => {
            let r: ChannelOnly = parse(body)?;
            let ns = check_channel(node, &r.channel)?;
            if !ns.presence {
                return Err(not_available("this namespace keeps no presence"));
            }
            let p = node.engine().presence(&r.channel).await.map_err(engine)?;
            Ok(json!({ "presence": p }))
        }
        "presence_stats" => {
            let r: ChannelOnly = parse(body)?;
            let ns = check_channel(node, &r.channel)?;
            if !ns.presence {
                return Err(not_available("this namespace keeps no presence"));
            }
            let s = node
                .engine()
                .presence_stats(&r.channel)
                .await
                .map_err(engine)?;
            Ok(json!({"num_clients": s.num_clients, "num_users": s.num_users}))
        }
        "history" => history(node, parse(body)?).await,
        "history_remove" => {
            let r: ChannelOnly = parse(body)?;
            check_channel(node, &r.channel)?;
            node.engine()
                .remove_history(&r.channel)
                .await
                .map_err(engine)?;
            Ok(json!({}))
        }
        "channels" => {
            let r: ChannelsRequest = parse(body)?;
            let gathered = node
                .cluster_channels(r.pattern.as_deref())
                .await
                .map_err(cluster)?;
            let channels: BTreeMap<String, Value> = gathered
                .value
                .into_iter()
                .map(|(name, n)| (name, json!({ "num_clients": n })))
                .collect();
            Ok(json!({
                "channels": channels,
                "nodes": gathered.nodes,
                "unanswered": gathered.unanswered,
            }))
        }
        "info" => {
            let _: Empty = parse(body)?;
            Ok(json!({"nodes": node.cluster_info()}))
        }
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::MethodNotFound,
            format!(
                "unknown method {:?}; see /api/openapi.json",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// Carries out a client order on every node; how many clients it reached, and on how many nodes.
async fn order(node: &Node, target: Target, order: ClientOrder<'_>) -> Result<Value> {
    let gathered = node.order_clients(&target, order).await.map_err(cluster)?;
    Ok(json!({
        "clients": gathered.value,
        "nodes": gathered.nodes,
        "unanswered": gathered.unanswered,
    }))
}

fn cluster(e: ClusterError) -> ApiError {
    match e {
        ClusterError::Engine(e) => engine(e),
        ClusterError::Encode(m) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, m)
        }
    }
}

fn engine(e: switchboard_engine::EngineError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal,
        e.to_string(),
    )
}

fn not_available(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::NotAvailable, message)
}

fn check_channel<'a>(
    node: &'a Node,
    channel: &str,
) -> Result<&'a switchboard_hub::NamespaceOptions> {
    node.channels_config().resolve(channel).map_err(|code| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("{}: {channel:?}", code.message()),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelOnly {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsRequest {
    #[serde(default)]
    pattern: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientTarget {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

impl ClientTarget {
    fn target(&self) -> Target {
        Target {
            user: self.user.clone(),
            client: self.client.clone(),
        }
    }

    fn channel(&self) -> Result<&str> {
        self.channel
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("channel is required"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    code: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    user: String,
    #[serde(default)]
    client: Option<String>,
    /// Unix seconds of the new expiry; absent: never expires.
    #[serde(default)]
    expire_at: Option<u64>,
    /// Expire now.
    #[serde(default)]
    expired: bool,
}

/// `publish` and `broadcast` share these fields; `channel` or `channels` names the target.
/// (Not `#[serde(flatten)]`: it buffers fields and cannot hand a `RawValue` through.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "switchboard_protocol::json::present"
    )]
    data: Option<&'a RawValue>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

impl PublishBody<'_> {
    fn payload(&self) -> Result<Payload> {
        match (self.data, &self.b64data) {
            (Some(d), None) => Ok(Payload::Json(Bytes::copy_from_slice(
                switchboard_protocol::single_line(d.get()).as_bytes(),
            ))),
            (None, Some(b)) => BASE64
                .decode(b)
                .map(|v| Payload::Binary(v.into()))
                .map_err(|e| ApiError::bad_request(format!("b64data: {e}"))),
            _ => Err(ApiError::bad_request(
                "exactly one of data and b64data is required",
            )),
        }
    }

    fn options(&self) -> PublishOptions {
        PublishOptions {
            skip_history: self.skip_history,
            tags: self.tags.clone(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

fn position(pos: StreamPosition) -> Value {
    if pos.epoch.is_empty() {
        json!({"offset": pos.offset})
    } else {
        json!({"offset": pos.offset, "epoch": pos.epoch})
    }
}

fn publish_error(e: PublishError) -> ApiError {
    match e {
        PublishError::Channel(code) => ApiError::new(StatusCode::BAD_REQUEST, code, code.message()),
        PublishError::Engine(e) => engine(e),
    }
}

async fn publish(node: &Node, r: PublishBody<'_>) -> Result<Value> {
    let channel = match (&r.channel, &r.channels) {
        (Some(channel), None) => channel,
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "publish takes one channel (use broadcast for several)",
            ));
        }
        (None, None) => return Err(ApiError::bad_request("channel is required")),
    };
    let pos = node
        .publish_with(channel, r.payload()?, &r.options())
        .await
        .map_err(publish_error)?;
    Ok(position(pos))
}

async fn broadcast(node: &Node, r: PublishBody<'_>) -> Result<Value> {
    let (None, Some(channels)) = (&r.channel, &r.channels) else {
        return Err(ApiError::bad_request("broadcast takes channels, a list"));
    };
    let payload = r.payload()?;
    let opts = r.options();
    let mut responses = Vec::with_capacity(channels.len());
    for channel in channels {
        responses.push(
            match node.publish_with(channel, payload.clone(), &opts).await {
                Ok(pos) => json!({ "result": position(pos) }),
                Err(e) => publish_error(e).body(),
            },
        );
    }
    Ok(json!({ "responses": responses }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    commands: Vec<BTreeMap<String, &'a RawValue>>,
}

async fn batch(node: &Node, r: BatchRequest<'_>) -> Result<Value> {
    let mut replies = Vec::with_capacity(r.commands.len());
    for command in r.commands {
        let mut it = command.into_iter();
        let reply = match (it.next(), it.next()) {
            (Some((method, _)), _) if method == "batch" => {
                ApiError::bad_request("batch cannot contain batch").body()
            }
            (Some((method, params)), None) => {
                match Box::pin(dispatch(node, &method, params.get().as_bytes())).await {
                    Ok(result) => json!({ "result": result }),
                    Err(e) => e.body(),
                }
            }
            _ => ApiError::bad_request("each command is an object with exactly one method").body(),
        };
        replies.push(reply);
    }
    Ok(json!({ "replies": replies }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryRequest {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

async fn history(node: &Node, r: HistoryRequest) -> Result<Value> {
    let ns = check_channel(node, &r.channel)?;
    if !ns.keeps_history() {
        return Err(not_available("this namespace keeps no history"));
    }
    let query = HistoryQuery {
        since: r.since.as_ref().map(|s| s.offset),
        limit: r.limit,
        reverse: r.reverse,
    };
    let h = node
        .engine()
        .history(&r.channel, &query, &ns.stream())
        .await
        .map_err(engine)?;
    if r.since
        .as_ref()
        .is_some_and(|s| s.epoch != h.position.epoch)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnrecoverablePosition,
            "the stream's epoch changed",
        ));
    }
    let publications: Vec<Value> = h
        .publications
        .iter()
        .map(|p| serde_json::from_slice(&encode::publication(p)).unwrap_or(Value::Null))
        .collect();
    Ok(
        json!({"publications": publications, "epoch": h.position.epoch, "offset": h.position.offset}),
    )
}
