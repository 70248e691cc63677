//! The JSON wire format as the client sees it: commands out, replies and pushes in. Everything read
//! here comes from the network, so every failure is a value, never a panic.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ServerError;
use crate::types::{ClientInfo, Data, Publication};

/// One object of a frame from the server.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    /// The reply to command `id`: its result object, or the server's error.
    Reply {
        id: u64,
        result: Result<Value, ServerError>,
    },
    /// Something the server sent on its own.
    Push(Push),
}

/// A push (docs/protocol.md, "Pushes").
#[derive(Debug, PartialEq)]
pub(crate) enum Push {
    Pub {
        channel: String,
        publication: Publication,
    },
    Join {
        channel: String,
        info: ClientInfo,
    },
    Leave {
        channel: String,
        info: ClientInfo,
    },
    /// A server-side subscription; this client only follows the ones it asked for.
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
        code: u32,
        reason: String,
    },
    Disconnect {
        code: u16,
        reason: String,
        reconnect: bool,
        /// Wait at least this long (ms) before reconnecting.
        delay: Option<u64>,
    },
}

/// The objects of one text frame: one per non-empty line.
pub(crate) fn parse_frame(text: &str) -> impl Iterator<Item = Result<Incoming, String>> + '_ {
    text.split('\n')
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
}

/// One object.
pub(crate) fn parse_line(line: &str) -> Result<Incoming, String> {
    let mut fields: Map<String, Value> =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    if let Some(id) = fields.remove("id") {
        let id = id
            .as_u64()
            .ok_or_else(|| format!("reply id is not an integer: {id}"))?;
        if let Some(error) = fields.remove("error") {
            let error: ServerError = serde_json::from_value(error)
                .map_err(|e| format!("reply {id}: malformed error: {e}"))?;
            return Ok(Incoming::Reply {
                id,
                result: Err(error),
            });
        }
        let result = fields.into_iter().next().map_or(Value::Null, |(_, v)| v);
        return Ok(Incoming::Reply {
            id,
            result: Ok(result),
        });
    }
    let (kind, body) = fields
        .into_iter()
        .next()
        .ok_or_else(|| "an empty object".to_owned())?;
    let push = match kind.as_str() {
        "pub" => {
            let p: PubPush = body_of(&kind, body)?;
            Push::Pub {
                channel: p.channel,
                publication: p.publication.into_publication()?,
            }
        }
        "join" | "leave" => {
            let p: PresencePush = body_of(&kind, body)?;
            if kind == "join" {
                Push::Join {
                    channel: p.channel,
                    info: p.info,
                }
            } else {
                Push::Leave {
                    channel: p.channel,
                    info: p.info,
                }
            }
        }
        "subscribe" => {
            let p: ChannelOnly = body_of(&kind, body)?;
            Push::Subscribe { channel: p.channel }
        }
        "unsubscribe" => {
            let p: UnsubscribePush = body_of(&kind, body)?;
            Push::Unsubscribe {
                channel: p.channel,
                code: p.code,
                reason: p.reason,
            }
        }
        "disconnect" => {
            let p: DisconnectPush = body_of(&kind, body)?;
            Push::Disconnect {
                code: p.code,
                reason: p.reason,
                reconnect: p.reconnect,
                delay: p.delay,
            }
        }
        other => return Err(format!("unknown push {other:?}")),
    };
    Ok(Incoming::Push(push))
}

fn body_of<T: serde::de::DeserializeOwned>(kind: &str, body: Value) -> Result<T, String> {
    serde_json::from_value(body).map_err(|e| format!("malformed {kind} push: {e}"))
}

/// A command `{"id":N,"<method>":<params>}`.
pub(crate) fn command(id: u64, method: &str, params: Value) -> String {
    let mut m = Map::with_capacity(2);
    m.insert("id".into(), Value::from(id));
    m.insert(method.into(), params);
    Value::Object(m).to_string()
}

/// A publication as the server writes it in `pub` pushes, history and recovery.
#[derive(Debug, Deserialize)]
pub(crate) struct WirePublication {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    info: Option<ClientInfo>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

impl WirePublication {
    pub(crate) fn into_publication(self) -> Result<Publication, String> {
        let data = match (self.data, self.b64data) {
            (_, Some(b64)) => Data::Binary(
                BASE64
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("publication {}: bad b64data: {e}", self.offset))?,
            ),
            // `"data": null` deserializes as None: a publication of JSON null.
            (data, None) => Data::Json(data.unwrap_or(Value::Null)),
        };
        Ok(Publication {
            offset: self.offset,
            data,
            info: self.info,
            tags: self.tags,
        })
    }
}

#[derive(Deserialize)]
struct PubPush {
    channel: String,
    #[serde(flatten)]
    publication: WirePublication,
}

#[derive(Deserialize)]
struct PresencePush {
    channel: String,
    #[serde(default)]
    info: ClientInfo,
}

#[derive(Deserialize)]
struct ChannelOnly {
    channel: String,
}

#[derive(Deserialize)]
struct UnsubscribePush {
    channel: String,
    code: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectPush {
    code: u16,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    reconnect: bool,
    /// Milliseconds to wait before reconnecting (a restarting server spreads its clients' returns).
    #[serde(default)]
    delay: Option<u64>,
}

/// The result of `connect`.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnectResult {
    pub(crate) client: String,
}

/// The result of `subscribe`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubscribeResult {
    #[serde(default)]
    pub(crate) epoch: Option<String>,
    #[serde(default)]
    pub(crate) offset: u64,
    #[serde(default)]
    pub(crate) recoverable: bool,
    #[serde(default)]
    pub(crate) recovered: Option<bool>,
    #[serde(default)]
    pub(crate) publications: Vec<WirePublication>,
    #[serde(default)]
    pub(crate) data: Option<Value>,
}

/// The result of `history`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryResult {
    #[serde(default)]
    pub(crate) publications: Vec<WirePublication>,
    #[serde(default)]
    pub(crate) epoch: String,
    #[serde(default)]
    pub(crate) offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_frame_of_several_lines() {
        let frame = "{\"id\":3,\"publish\":{\"offset\":7,\"epoch\":\"e\"}}\n\
                     {\"pub\":{\"channel\":\"c\",\"offset\":7,\"data\":{\"x\":1},\"info\":{\"client\":\"a\",\"user\":\"u\"}}}\n\
                     {\"id\":4,\"error\":{\"code\":108,\"message\":\"not available\",\"temporary\":false}}\n";
        let got: Vec<_> = parse_frame(frame).collect();
        assert_eq!(
            got[0],
            Ok(Incoming::Reply {
                id: 3,
                result: Ok(json!({"offset": 7, "epoch": "e"}))
            })
        );
        let Ok(Incoming::Push(Push::Pub {
            channel,
            publication,
        })) = &got[1]
        else {
            panic!("{:?}", got[1])
        };
        assert_eq!(channel, "c");
        assert_eq!(publication.offset, 7);
        assert_eq!(publication.data, Data::Json(json!({"x": 1})));
        assert_eq!(
            publication.info.as_ref().map(|i| i.user.as_str()),
            Some("u")
        );
        let Ok(Incoming::Reply {
            id: 4,
            result: Err(e),
        }) = &got[2]
        else {
            panic!("{:?}", got[2])
        };
        assert_eq!(
            e.kind(),
            Some(switchboard_protocol::ErrorCode::NotAvailable)
        );
    }

    #[test]
    fn binary_publications_and_pushes() {
        let Ok(Incoming::Push(Push::Pub { publication, .. })) =
            parse_line(r#"{"pub":{"channel":"c","offset":0,"b64data":"AP8="}}"#)
        else {
            panic!()
        };
        assert_eq!(publication.data, Data::Binary(vec![0, 255]));
        assert_eq!(
            parse_line(r#"{"disconnect":{"code":3008,"reason":"slow","reconnect":true}}"#),
            Ok(Incoming::Push(Push::Disconnect {
                code: 3008,
                reason: "slow".into(),
                reconnect: true,
                delay: None
            }))
        );
        assert_eq!(
            parse_line(r#"{"unsubscribe":{"channel":"c","code":2500,"reason":"x"}}"#),
            Ok(Incoming::Push(Push::Unsubscribe {
                channel: "c".into(),
                code: 2500,
                reason: "x".into()
            }))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "[]",
            "{}",
            "nope",
            r#"{"id":"x","publish":{}}"#,
            r#"{"id":-1}"#,
            r#"{"id":1,"error":"boom"}"#,
            r#"{"pub":{"offset":1}}"#,
            r#"{"pub":{"channel":"c","b64data":"***"}}"#,
            r#"{"weird":{}}"#,
            r#"{"disconnect":{"code":99999}}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands() {
        let c: Value = serde_json::from_str(&command(9, "rpc", json!({"method": "m"}))).unwrap();
        assert_eq!(c, json!({"id": 9, "rpc": {"method": "m"}}));
    }
}
