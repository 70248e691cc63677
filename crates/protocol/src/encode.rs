//! Replies and pushes as JSON text.
//!
//! Pushes are on the fan-out path (one publication, thousands of subscribers), so they are written by
//! hand into one buffer, with the payload's raw JSON copied in as is: no `Value` tree, no re-encoding.
//! Replies are rarer and go through serde.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::codes::{DisconnectCode, ErrorCode, UnsubscribeCode};
use crate::types::{ClientInfo, Payload, Publication};

/// Result of `connect`.
#[derive(Debug, Serialize)]
pub struct ConnectResult {
    /// The connection's id.
    pub client: String,
    /// Server version.
    pub version: &'static str,
    /// Seconds between keepalive pings.
    pub ping: u64,
    /// Server-side subscriptions: channel to its `subscribe` result.
    pub subs: BTreeMap<String, SubscribeResult>,
    /// The connection expires unless refreshed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub expires: bool,
    /// Seconds until it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Data from the application's connect handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
}

/// Result of `subscribe` (and the body of a `subscribe` push).
#[derive(Debug, Default, Serialize)]
pub struct SubscribeResult {
    /// The stream's epoch, when the namespace keeps history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The stream's latest offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The namespace allows recovery.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recoverable: bool,
    /// Present when recovery was asked: whether it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Recovered publications, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<RawJson>,
    /// Data from the application's subscribe handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
}

/// Result of `publish`.
#[derive(Debug, Serialize)]
pub struct PublishResult {
    /// The stream's epoch (absent without history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The publication's offset (0 without history).
    pub offset: u64,
}

/// Result of `presence`.
#[derive(Debug, Serialize)]
pub struct PresenceResult<'a> {
    /// Client id to client info.
    pub presence: &'a HashMap<String, Arc<ClientInfo>>,
}

/// Result of `presence_stats`.
#[derive(Debug, Serialize)]
pub struct PresenceStatsResult {
    /// Connections subscribed.
    pub num_clients: usize,
    /// Distinct users among them.
    pub num_users: usize,
}

/// Result of `history`.
#[derive(Debug, Serialize)]
pub struct HistoryResult {
    /// The publications asked for.
    pub publications: Vec<RawJson>,
    /// The stream's epoch.
    pub epoch: String,
    /// The stream's latest offset.
    pub offset: u64,
}

/// Result of `refresh`.
#[derive(Debug, Serialize)]
pub struct RefreshResult {
    /// Whether the connection expires at all.
    pub expires: bool,
    /// Seconds until it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// Pre-encoded JSON embedded as is in a serde-encoded reply.
#[derive(Debug, Clone)]
pub struct RawJson(pub Bytes);

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Our own encoder produced these bytes, so they are valid JSON; RawValue checks anyway.
        let text = std::str::from_utf8(&self.0).map_err(serde::ser::Error::custom)?;
        let raw = serde_json::value::RawValue::from_string(text.to_owned())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// A reply `{"id":N,"<method>":<result>}`.
pub fn reply<T: Serialize>(id: u64, method: &str, result: &T) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(b"{\"id\":");
    out.put_slice(itoa(id).as_bytes());
    out.put_slice(b",");
    push_str(&mut out, method);
    out.put_slice(b":");
    // Serializing our own result types into a buffer cannot fail: no maps with non-string keys.
    match serde_json::to_vec(result) {
        Ok(v) => out.put_slice(&v),
        Err(_) => out.put_slice(b"{}"),
    }
    out.put_slice(b"}");
    out.freeze()
}

/// An error reply `{"id":N,"error":{"code":C,"message":"...","temporary":bool}}`.
pub fn error(id: u64, code: ErrorCode, message: &str) -> Bytes {
    error_code(id, code.code(), message, code.temporary())
}

/// An error reply with a code of the application (from a proxy's backend), not one of [`ErrorCode`].
pub fn error_code(id: u64, code: u32, message: &str, temporary: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(96);
    out.put_slice(b"{\"id\":");
    out.put_slice(itoa(id).as_bytes());
    out.put_slice(b",\"error\":{\"code\":");
    out.put_slice(itoa(u64::from(code)).as_bytes());
    out.put_slice(b",\"message\":");
    push_str(&mut out, message);
    out.put_slice(if temporary {
        b",\"temporary\":true}}"
    } else {
        b",\"temporary\":false}}"
    });
    out.freeze()
}

/// The publication object as it appears in `pub` pushes, history and recovery:
/// `{"offset":N,"data":...}` or with `b64data`, plus `info` and `tags` when present.
pub fn publication(p: &Publication) -> Bytes {
    let mut out = BytesMut::with_capacity(p.payload.len() + 48);
    write_publication_fields(&mut out, p);
    out.put_u8(b'}');
    out.freeze()
}

fn write_publication_fields(out: &mut BytesMut, p: &Publication) {
    out.put_slice(b"{\"offset\":");
    out.put_slice(itoa(p.offset).as_bytes());
    match &p.payload {
        Payload::Json(raw) => {
            out.put_slice(b",\"data\":");
            out.put_slice(raw);
        }
        Payload::Binary(bytes) => {
            out.put_slice(b",\"b64data\":\"");
            out.put_slice(BASE64.encode(bytes).as_bytes());
            out.put_u8(b'"');
        }
    }
    if let Some(info) = &p.info {
        out.put_slice(b",\"info\":");
        out.put_slice(&serde_json::to_vec(info.as_ref()).unwrap_or_else(|_| b"null".to_vec()));
    }
    if let Some(tags) = &p.tags {
        out.put_slice(b",\"tags\":");
        out.put_slice(&serde_json::to_vec(tags).unwrap_or_else(|_| b"{}".to_vec()));
    }
}

/// The `pub` push: `{"pub":{"channel":"c","offset":N,"data":...}}`.
pub fn pub_push(channel: &str, p: &Publication) -> Bytes {
    let mut out = BytesMut::with_capacity(p.payload.len() + channel.len() + 64);
    out.put_slice(b"{\"pub\":{\"channel\":");
    push_str(&mut out, channel);
    out.put_u8(b',');
    // Reuse the publication writer, dropping its opening brace.
    let mut body = BytesMut::with_capacity(p.payload.len() + 48);
    write_publication_fields(&mut body, p);
    out.put_slice(&body[1..]);
    out.put_slice(b"}}");
    out.freeze()
}

/// `join` or `leave` push.
pub fn presence_push(kind: PresenceEvent, channel: &str, info: &ClientInfo) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_slice(match kind {
        PresenceEvent::Join => b"{\"join\":{\"channel\":",
        PresenceEvent::Leave => b"{\"leave\":{\"channel\":",
    });
    push_str(&mut out, channel);
    out.put_slice(b",\"info\":");
    out.put_slice(&serde_json::to_vec(info).unwrap_or_else(|_| b"null".to_vec()));
    out.put_slice(b"}}");
    out.freeze()
}

/// Which presence push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// A client subscribed.
    Join,
    /// A client left.
    Leave,
}

/// `subscribe` push for a server-side subscription.
pub fn subscribe_push(channel: &str, result: &SubscribeResult) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_slice(b"{\"subscribe\":{\"channel\":");
    push_str(&mut out, channel);
    let body = serde_json::to_vec(result).unwrap_or_else(|_| b"{}".to_vec());
    if body.len() > 2 {
        out.put_u8(b',');
        out.put_slice(&body[1..body.len() - 1]);
    }
    out.put_slice(b"}}");
    out.freeze()
}

/// `unsubscribe` push.
pub fn unsubscribe_push(channel: &str, code: UnsubscribeCode) -> Bytes {
    let mut out = BytesMut::with_capacity(96);
    out.put_slice(b"{\"unsubscribe\":{\"channel\":");
    push_str(&mut out, channel);
    out.put_slice(b",\"code\":");
    out.put_slice(itoa(u64::from(code.code())).as_bytes());
    out.put_slice(b",\"reason\":");
    push_str(&mut out, code.reason());
    out.put_slice(b"}}");
    out.freeze()
}

/// `disconnect` push.
pub fn disconnect_push(code: DisconnectCode) -> Bytes {
    disconnect_push_after(code, None)
}

/// `disconnect` push advising the client to wait `delay_ms` before reconnecting (a restarting server
/// spreads its clients' returns over time, so they do not all come back in the same instant).
pub fn disconnect_push_after(code: DisconnectCode, delay_ms: Option<u64>) -> Bytes {
    let mut out = BytesMut::with_capacity(96);
    out.put_slice(b"{\"disconnect\":{\"code\":");
    out.put_slice(itoa(u64::from(code.code())).as_bytes());
    out.put_slice(b",\"reason\":");
    push_str(&mut out, code.reason());
    if let Some(ms) = delay_ms {
        out.put_slice(b",\"delay\":");
        out.put_slice(itoa(ms).as_bytes());
    }
    out.put_slice(if code.reconnect() {
        b",\"reconnect\":true}}"
    } else {
        b",\"reconnect\":false}}"
    });
    out.freeze()
}

fn push_str(out: &mut BytesMut, s: &str) {
    // A string always serializes.
    out.put_slice(&serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec()));
}

fn itoa(n: u64) -> String {
    // Replies are not on the hot path; pushes call this once per publication, not per subscriber.
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn pushes_are_valid_json_with_raw_data() {
        let mut p = Publication::new(Payload::Json(Bytes::from_static(
            br#"{"text":"hi \"you\""}"#,
        )));
        p.offset = 42;
        let v = json(&pub_push("chat:\"lobby\"", &p));
        assert_eq!(v["pub"]["channel"], "chat:\"lobby\"");
        assert_eq!(v["pub"]["offset"], 42);
        assert_eq!(v["pub"]["data"]["text"], "hi \"you\"");
        let b = Publication::new(Payload::Binary(Bytes::from_static(&[0, 255])));
        assert_eq!(json(&pub_push("c", &b))["pub"]["b64data"], "AP8=");
        let v = json(&disconnect_push(DisconnectCode::Slow));
        assert_eq!(
            (
                v["disconnect"]["code"].as_u64(),
                v["disconnect"]["reconnect"].as_bool()
            ),
            (Some(3008), Some(true))
        );
        let v = json(&unsubscribe_push("c", UnsubscribeCode::InsufficientState));
        assert_eq!(v["unsubscribe"]["code"], 2500);
        let info = ClientInfo {
            client: "c1".into(),
            user: "u".into(),
            info: None,
        };
        assert_eq!(
            json(&presence_push(PresenceEvent::Leave, "c", &info))["leave"]["info"]["user"],
            "u"
        );
    }

    #[test]
    fn replies_and_errors() {
        let v = json(&reply(
            9,
            "publish",
            &PublishResult {
                epoch: Some("e".into()),
                offset: 3,
            },
        ));
        assert_eq!(v["id"], 9);
        assert_eq!(v["publish"]["offset"], 3);
        let v = json(&error(9, ErrorCode::PermissionDenied, "no \"publish\""));
        assert_eq!(v["error"]["code"], 103);
        assert_eq!(v["error"]["temporary"], false);
        let v = json(&subscribe_push(
            "c",
            &SubscribeResult {
                recoverable: true,
                ..Default::default()
            },
        ));
        assert_eq!(v["subscribe"]["recoverable"], true);
    }
}
