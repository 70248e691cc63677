//! Commands from clients, and how a line of JSON becomes one.
//!
//! Everything here reads bytes a client controls, so every path ends in a [`DecodeError`] that says what
//! to answer, never in a panic. The fuzz target `protocol` drives [`decode_command`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::json::{self, JsonError};
use crate::types::{Payload, StreamPosition};

/// Largest command id: ids must survive a round trip through a JavaScript number.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// A decoded command.
#[derive(Debug, PartialEq)]
pub struct Command {
    /// The client's id for the command, echoed in the reply.
    pub id: u64,
    /// What the client asks for.
    pub method: Method,
}

/// A command's method and parameters.
#[derive(Debug, PartialEq)]
pub enum Method {
    /// `connect`.
    Connect(ConnectRequest),
    /// `subscribe`.
    Subscribe(SubscribeRequest),
    /// `unsubscribe`.
    Unsubscribe(ChannelRequest),
    /// `publish`.
    Publish(PublishRequest),
    /// `presence`.
    Presence(ChannelRequest),
    /// `presence_stats`.
    PresenceStats(ChannelRequest),
    /// `history`.
    History(HistoryRequest),
    /// `rpc`.
    Rpc(RpcRequest),
    /// `refresh`.
    Refresh(RefreshRequest),
}

impl Method {
    /// The method's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Subscribe(_) => "subscribe",
            Self::Unsubscribe(_) => "unsubscribe",
            Self::Publish(_) => "publish",
            Self::Presence(_) => "presence",
            Self::PresenceStats(_) => "presence_stats",
            Self::History(_) => "history",
            Self::Rpc(_) => "rpc",
            Self::Refresh(_) => "refresh",
        }
    }
}

/// `connect` parameters.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// Connection token.
    #[serde(default)]
    pub token: Option<String>,
    /// Client library name.
    #[serde(default)]
    pub name: Option<String>,
    /// Client library version.
    #[serde(default)]
    pub version: Option<String>,
    /// Data for the application's connect handler (the connect proxy), if any.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// `subscribe` parameters.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    /// The channel.
    pub channel: String,
    /// Subscription token for private channels.
    #[serde(default)]
    pub token: Option<String>,
    /// Ask for missed publications.
    #[serde(default)]
    pub recover: bool,
    /// With `recover`: the epoch last seen.
    #[serde(default)]
    pub epoch: Option<String>,
    /// With `recover`: the offset last seen.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Data for the application's subscribe handler (the subscribe proxy), if any.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// Parameters naming one channel (`unsubscribe`, `presence`, `presence_stats`).
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequest {
    /// The channel.
    pub channel: String,
}

/// `publish` parameters, with the payload already checked.
#[derive(Debug, PartialEq)]
pub struct PublishRequest {
    /// The channel.
    pub channel: String,
    /// `data` (JSON) or `b64data` (decoded bytes).
    pub payload: Payload,
    /// A key naming this publication, so that a retry after an unknown outcome (a timeout, a lost
    /// connection) is not published twice: a publish by the same user to the same channel with the
    /// same key within the server's idempotency window answers the first one's position instead.
    pub idempotency_key: Option<String>,
}

/// The longest `idempotency_key` a client may send, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish<'a> {
    channel: String,
    // `data` is any JSON, `null` included: present-but-null must not read as absent.
    #[serde(borrow, default, deserialize_with = "json::present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `history` parameters.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    /// The channel.
    pub channel: String,
    /// At most this many publications.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only publications after this position.
    #[serde(default)]
    pub since: Option<StreamPosition>,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// `rpc` parameters.
#[derive(Debug, PartialEq)]
pub struct RpcRequest {
    /// The call's name.
    pub method: String,
    /// Its argument, raw JSON (`null` when absent).
    pub data: Bytes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRpc<'a> {
    method: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// `refresh` parameters.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The new connection token.
    pub token: String,
}

/// Why a line could not become a command, and how to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON object with a valid `id`: nothing can be answered, the connection is closed (3501).
    #[error("not a command: {0}")]
    Frame(String),
    /// A command with a usable id that cannot be carried out: answered with an error, connection kept.
    #[error("command {id}: {message}")]
    Command {
        /// The command's id.
        id: u64,
        /// Error code to answer with.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
}

/// Decodes one command from one line of JSON.
///
/// The whole line is held to the JSON rule of [`crate::json`] once, payloads included: a line nested
/// too deep is not a command (it cannot be parsed for its id), and any other breach of the rule is
/// answered with error 107 naming what was wrong.
pub fn decode_command(line: &[u8]) -> Result<Command, DecodeError> {
    let text =
        std::str::from_utf8(line).map_err(|e| DecodeError::Frame(format!("invalid UTF-8: {e}")))?;
    let rule = json::check(text);
    if let Err(JsonError::TooDeep) = rule {
        return Err(DecodeError::Frame(JsonError::TooDeep.to_string()));
    }
    let fields: BTreeMap<Cow<'_, str>, &RawValue> = serde_json::from_str(text)
        .map_err(|e| DecodeError::Frame(format!("invalid JSON object: {e}")))?;
    let id = match fields
        .get("id")
        .map(|v| serde_json::from_str::<u64>(v.get()))
    {
        Some(Ok(id)) if (1..=MAX_ID).contains(&id) => id,
        Some(_) => {
            return Err(DecodeError::Frame(format!(
                "id must be an integer from 1 to {MAX_ID}"
            )));
        }
        None => return Err(DecodeError::Frame("missing id".into())),
    };
    if let Err(e) = rule {
        return Err(DecodeError::Command {
            id,
            code: ErrorCode::BadRequest,
            message: e.to_string(),
        });
    }
    let bad = |code: ErrorCode, message: String| DecodeError::Command { id, code, message };
    let mut methods = fields.iter().filter(|(k, _)| *k != "id");
    let (name, params) = match (methods.next(), methods.next()) {
        (Some(m), None) => m,
        (None, _) => return Err(bad(ErrorCode::BadRequest, "no method".into())),
        (Some(_), Some(_)) => {
            return Err(bad(ErrorCode::BadRequest, "more than one method".into()));
        }
    };
    let params = params.get();
    let method = match name.as_ref() {
        "connect" => Method::Connect(parse(params).map_err(|m| bad(ErrorCode::BadRequest, m))?),
        "subscribe" => Method::Subscribe(parse(params).map_err(|m| bad(ErrorCode::BadRequest, m))?),
        "unsubscribe" => {
            Method::Unsubscribe(parse(params).map_err(|m| bad(ErrorCode::BadRequest, m))?)
        }
        "presence" => Method::Presence(parse(params).map_err(|m| bad(ErrorCode::BadRequest, m))?),
        "presence_stats" => {
            Method::PresenceStats(parse(params).map_err(|m| bad(ErrorCode::BadRequest, m))?)
        }
        "history" => Method::History(parse(params).map_err(|m| bad(ErrorCode::BadRequest, m))?),
        "refresh" => Method::Refresh(parse(params).map_err(|m| bad(ErrorCode::BadRequest, m))?),
        "publish" => {
            let raw: RawPublish<'_> = serde_json::from_str(params)
                .map_err(|e| bad(ErrorCode::BadRequest, e.to_string()))?;
            let payload = match (raw.data, raw.b64data) {
                (Some(data), None) => Payload::Json(Bytes::copy_from_slice(data.get().as_bytes())),
                (None, Some(b64)) => Payload::Binary(
                    BASE64
                        .decode(b64)
                        .map_err(|e| bad(ErrorCode::BadRequest, format!("b64data: {e}")))?
                        .into(),
                ),
                _ => {
                    return Err(bad(
                        ErrorCode::BadRequest,
                        "exactly one of data and b64data is required".into(),
                    ));
                }
            };
            if let Some(key) = &raw.idempotency_key
                && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
            {
                return Err(bad(
                    ErrorCode::BadRequest,
                    format!("idempotency_key must have 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
                ));
            }
            Method::Publish(PublishRequest {
                channel: raw.channel,
                payload,
                idempotency_key: raw.idempotency_key,
            })
        }
        "rpc" => {
            let raw: RawRpc<'_> = serde_json::from_str(params)
                .map_err(|e| bad(ErrorCode::BadRequest, e.to_string()))?;
            Method::Rpc(RpcRequest {
                method: raw.method,
                data: Bytes::copy_from_slice(raw.data.map_or("null", RawValue::get).as_bytes()),
            })
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(
                ErrorCode::MethodNotFound,
                format!("unknown method {shown:?}"),
            ));
        }
    };
    Ok(Command { id, method })
}

fn parse<T: DeserializeOwned>(params: &str) -> Result<T, String> {
    serde_json::from_str(params).map_err(|e| e.to_string())
}

/// Splits a frame into its lines (commands are separated by `\n`; blank lines are skipped).
pub fn lines(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    frame
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_method() {
        let c = decode_command(br#"{"id":1,"connect":{"name":"js","version":"1"}}"#).unwrap();
        assert_eq!(c.id, 1);
        assert!(matches!(
            c.method,
            Method::Connect(ConnectRequest { name: Some(_), .. })
        ));
        let c = decode_command(
            br#"{"subscribe":{"channel":"a:b","recover":true,"epoch":"e","offset":3},"id":2}"#,
        )
        .unwrap();
        assert_eq!(
            c.method,
            Method::Subscribe(SubscribeRequest {
                channel: "a:b".into(),
                recover: true,
                epoch: Some("e".into()),
                offset: Some(3),
                token: None,
                data: None,
            })
        );
        let c =
            decode_command(br#"{"id":3,"publish":{"channel":"c","data":{"x":[1,2]}}}"#).unwrap();
        assert_eq!(
            c.method,
            Method::Publish(PublishRequest {
                channel: "c".into(),
                payload: Payload::Json(Bytes::from_static(br#"{"x":[1,2]}"#)),
                idempotency_key: None,
            })
        );
        let c =
            decode_command(br#"{"id":4,"publish":{"channel":"c","b64data":"AAEC/w=="}}"#).unwrap();
        assert_eq!(
            c.method,
            Method::Publish(PublishRequest {
                channel: "c".into(),
                payload: Payload::Binary(Bytes::from_static(&[0, 1, 2, 255])),
                idempotency_key: None,
            })
        );
        let c = decode_command(
            br#"{"id":4,"publish":{"channel":"c","data":1,"idempotency_key":"k-1"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.method,
            Method::Publish(PublishRequest {
                channel: "c".into(),
                payload: Payload::Json(Bytes::from_static(b"1")),
                idempotency_key: Some("k-1".into()),
            })
        );
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY + 1);
        for key in ["", long.as_str()] {
            let json = format!(
                r#"{{"id":4,"publish":{{"channel":"c","data":1,"idempotency_key":"{key}"}}}}"#
            );
            assert!(decode_command(json.as_bytes()).is_err(), "{key:?}");
        }
        for (json, name) in [
            (r#"{"id":5,"unsubscribe":{"channel":"c"}}"#, "unsubscribe"),
            (r#"{"id":5,"presence":{"channel":"c"}}"#, "presence"),
            (
                r#"{"id":5,"presence_stats":{"channel":"c"}}"#,
                "presence_stats",
            ),
            (
                r#"{"id":5,"history":{"channel":"c","limit":2,"since":{"offset":1,"epoch":"e"},"reverse":true}}"#,
                "history",
            ),
            (r#"{"id":5,"rpc":{"method":"m"}}"#, "rpc"),
            (r#"{"id":5,"refresh":{"token":"t"}}"#, "refresh"),
        ] {
            assert_eq!(decode_command(json.as_bytes()).unwrap().method.name(), name);
        }
    }

    #[test]
    fn bad_input_gets_the_documented_answer() {
        let frame = |s: &str| matches!(decode_command(s.as_bytes()), Err(DecodeError::Frame(_)));
        assert!(frame("not json"));
        assert!(frame("[1,2]"));
        assert!(frame(r#"{"connect":{}}"#));
        assert!(frame(r#"{"id":0,"connect":{}}"#));
        assert!(frame(r#"{"id":9007199254740992,"connect":{}}"#));
        assert!(frame(r#"{"id":1e400,"connect":{}}"#));
        assert!(frame(r#"{"id":"1","connect":{}}"#));
        assert!(frame(&format!(
            "{}{}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        )));
        let deep = |n: usize| {
            format!(
                r#"{{"id":1,"rpc":{{"method":"m","data":{}1{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(decode_command(deep(100).as_bytes()).is_ok());
        assert!(frame(&deep(127)));
        // Brackets inside strings do not count.
        let quoted = format!(
            r#"{{"id":1,"rpc":{{"method":"m","data":"{}\\"}}}}"#,
            "[".repeat(500)
        );
        assert!(decode_command(quoted.as_bytes()).is_ok(), "{quoted}");
        assert!(
            frame(&deep(100_000)),
            "deep nesting is refused, not a stack overflow"
        );
        let code = |s: &str| match decode_command(s.as_bytes()) {
            Err(DecodeError::Command { code, id, .. }) => Some((id, code)),
            _ => None,
        };
        assert_eq!(
            code(r#"{"id":7,"dance":{}}"#),
            Some((7, ErrorCode::MethodNotFound))
        );
        assert_eq!(code(r#"{"id":7}"#), Some((7, ErrorCode::BadRequest)));
        assert_eq!(
            code(r#"{"id":7,"connect":{},"subscribe":{}}"#),
            Some((7, ErrorCode::BadRequest))
        );
        assert_eq!(
            code(r#"{"id":7,"subscribe":{"channel":5}}"#),
            Some((7, ErrorCode::BadRequest))
        );
        assert_eq!(
            code(r#"{"id":7,"subscribe":{"channel":"c","extra":1}}"#),
            Some((7, ErrorCode::BadRequest))
        );
        assert_eq!(
            code(r#"{"id":7,"publish":{"channel":"c"}}"#),
            Some((7, ErrorCode::BadRequest))
        );
        assert_eq!(
            code(r#"{"id":7,"publish":{"channel":"c","b64data":"!!"}}"#),
            Some((7, ErrorCode::BadRequest))
        );
    }

    #[test]
    fn the_json_rule_is_answered_with_107() {
        let code = |s: &str| match decode_command(s.as_bytes()) {
            Err(DecodeError::Command { code, id, message }) => Some((id, code, message)),
            _ => None,
        };
        // The fuzzing find of issue 18: a number serde_json refuses inside a publication.
        let (id, c, message) = code(
            r#"{"id":3,"publish":{"channel":"c","data":{"t@ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp]":[1E0040000000000000]}}}"#,
        )
        .unwrap();
        assert_eq!((id, c), (3, ErrorCode::BadRequest));
        assert!(message.contains("out of the range"), "{message}");
        for (line, says) in [
            (
                r#"{"id":4,"publish":{"channel":"c","data":"\ud800"}}"#,
                "surrogate",
            ),
            (
                r#"{"id":4,"publish":{"channel":"c","data":{"n":9007199254740993}}}"#,
                "JavaScript",
            ),
            (
                r#"{"id":4,"rpc":{"method":"m","data":[1e999]}}"#,
                "out of the range",
            ),
            (r#"{"id":4,"connect":{"data":{"x":"\udc00"}}}"#, "surrogate"),
            (
                r#"{"id":4,"subscribe":{"channel":"c","data":-1e400}}"#,
                "out of the range",
            ),
        ] {
            let (id, c, message) = code(line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!((id, c), (4, ErrorCode::BadRequest), "{line}");
            assert!(message.contains(says), "{line}: {message}");
        }
    }

    #[test]
    fn publish_data_may_be_null() {
        let c = decode_command(br#"{"id":1,"publish":{"channel":"c","data":null}}"#).unwrap();
        assert_eq!(
            c.method,
            Method::Publish(PublishRequest {
                channel: "c".into(),
                payload: Payload::Json(Bytes::from_static(b"null")),
                idempotency_key: None,
            })
        );
    }

    #[test]
    fn splits_lines() {
        let frame = b"{\"id\":1}\n\n  \n{\"id\":2}\n";
        assert_eq!(lines(frame).count(), 2);
    }
}
