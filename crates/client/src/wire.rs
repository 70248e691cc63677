//! The JSON wire format as the client sees it: commands out, replies and pushes in. Everything read
//! here comes from the network, so every failure is a value, never a panic.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ServerError;
use crate::types::{ClientInfo, Data, Publication};

/// One object of a frame from the server.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// The reply to command `id`: its result object, or the server's error.
    Reply {
        id: u64,
        result: Result<Box<RawValue>, ServerError>,
    },
    /// Something the server sent on its own.
    Push(Push),
}

/// Replies compare by their raw text (tests compare what was parsed).
#[cfg(test)]
impl PartialEq for Incoming {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Reply { id: a, result: ra }, Self::Reply { id: b, result: rb }) => {
                a == b
                    && match (ra, rb) {
                        (Ok(x), Ok(y)) => x.get() == y.get(),
                        (Err(x), Err(y)) => x == y,
                        _ => false,
                    }
            }
            (Self::Push(a), Self::Push(b)) => a == b,
            _ => false,
        }
    }
}

/// A push (docs/protocol.md, "Pushes").
#[derive(Debug, PartialEq)]
pub(crate) enum Push {
    Pub {
        channel: String,
        publication: Result<Publication, Undecodable>,
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

/// A publication whose envelope (channel, offset) was read but whose payload was not: its data is not
/// JSON that serde_json reads (a number beyond f64, an unpaired surrogate: a server that keeps
/// docs/protocol.md's JSON rule never forwards these) or its `b64data` is not base64. It keeps its
/// place in the channel's order, and is reported instead of being dropped without a word.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Undecodable {
    pub(crate) offset: u64,
    pub(crate) error: String,
}

/// Deepest nesting read from the server: the payload rule's bound (docs/protocol.md) plus the few
/// levels of the envelope around a payload (reply, result, publications list, publication).
const MAX_FRAME_DEPTH: usize = switchboard_protocol::json::MAX_DEPTH + 8;

/// Parses JSON read from the server. serde_json's recursion limit (127 levels) is below what a frame
/// carrying a 128-level payload nests to, so it is lifted here, after the nesting was bounded by
/// [`MAX_FRAME_DEPTH`] in [`parse_line`]: the parser's stack stays bounded either way.
fn from_json<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Decodes a raw result or push body (part of a line that [`parse_line`] bounded).
pub(crate) fn decode<T: DeserializeOwned>(raw: &RawValue) -> serde_json::Result<T> {
    from_json(raw.get())
}

/// The objects of one text frame: one per non-empty line.
pub(crate) fn parse_frame(text: &str) -> impl Iterator<Item = Result<Incoming, String>> + '_ {
    text.split('\n')
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
}

/// One object. Payloads stay raw until the end, so that one that cannot be decoded is reported with
/// its channel and offset rather than making the whole line unreadable.
pub(crate) fn parse_line(line: &str) -> Result<Incoming, String> {
    if switchboard_protocol::json::depth(line) > MAX_FRAME_DEPTH {
        return Err(format!("nested deeper than {MAX_FRAME_DEPTH} levels"));
    }
    let mut fields: BTreeMap<String, Box<RawValue>> =
        from_json(line).map_err(|e| format!("not a JSON object: {e}"))?;
    if let Some(id) = fields.remove("id") {
        let id: u64 = decode(&id).map_err(|_| format!("reply id is not an integer: {id}"))?;
        if let Some(error) = fields.remove("error") {
            let error: ServerError =
                decode(&error).map_err(|e| format!("reply {id}: malformed error: {e}"))?;
            return Ok(Incoming::Reply {
                id,
                result: Err(error),
            });
        }
        let result = match fields.into_iter().next() {
            Some((_, v)) => v,
            None => {
                RawValue::from_string("null".to_owned()).map_err(|e| format!("reply {id}: {e}"))?
            }
        };
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
            let PubPush {
                channel,
                offset,
                data,
                b64data,
                info,
                tags,
            } = body_of(&kind, &body)?;
            let publication = WirePublication {
                offset,
                data,
                b64data,
                info,
                tags,
            };
            Push::Pub {
                channel,
                publication: publication.into_publication(),
            }
        }
        "join" | "leave" => {
            let p: PresencePush = body_of(&kind, &body)?;
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
            let p: ChannelOnly = body_of(&kind, &body)?;
            Push::Subscribe { channel: p.channel }
        }
        "unsubscribe" => {
            let p: UnsubscribePush = body_of(&kind, &body)?;
            Push::Unsubscribe {
                channel: p.channel,
                code: p.code,
                reason: p.reason,
            }
        }
        "disconnect" => {
            let p: DisconnectPush = body_of(&kind, &body)?;
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

fn body_of<T: DeserializeOwned>(kind: &str, body: &RawValue) -> Result<T, String> {
    decode(body).map_err(|e| format!("malformed {kind} push: {e}"))
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
    // Raw: decoded last, so that a payload this client cannot read is reported with its offset.
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    info: Option<ClientInfo>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

impl WirePublication {
    pub(crate) fn into_publication(self) -> Result<Publication, Undecodable> {
        let offset = self.offset;
        let undecodable = |error: String| Undecodable { offset, error };
        let data = match (self.data, self.b64data) {
            (_, Some(b64)) => Data::Binary(
                BASE64
                    .decode(b64.as_bytes())
                    .map_err(|e| undecodable(format!("bad b64data: {e}")))?,
            ),
            (Some(raw), None) => {
                Data::Json(decode(&raw).map_err(|e| undecodable(format!("undecodable data: {e}")))?)
            }
            // `"data": null` deserializes as None: a publication of JSON null.
            (None, None) => Data::Json(Value::Null),
        };
        Ok(Publication {
            offset,
            data,
            info: self.info,
            tags: self.tags,
        })
    }
}

#[derive(Deserialize)]
struct PubPush {
    channel: String,
    // Not `#[serde(flatten)]`: it buffers fields and cannot hand a `RawValue` through.
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    info: Option<ClientInfo>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
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
                result: Ok(RawValue::from_string(r#"{"offset":7,"epoch":"e"}"#.into()).unwrap())
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
        let publication = publication.as_ref().unwrap();
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
        assert_eq!(publication.unwrap().data, Data::Binary(vec![0, 255]));
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
            r#"{"weird":{}}"#,
            r#"{"disconnect":{"code":99999}}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_publication_that_cannot_be_decoded_keeps_its_channel_and_offset() {
        // Data serde_json refuses (issue 18: servers that keep the JSON rule never send it), broken
        // base64, and a payload as deep as the rule allows inside the envelope, which must decode.
        for (line, offset, says) in [
            (
                r#"{"pub":{"channel":"c","offset":4,"data":[1E400]}}"#,
                4,
                "undecodable data",
            ),
            (
                r#"{"pub":{"channel":"c","offset":5,"data":"\ud800"}}"#,
                5,
                "undecodable data",
            ),
            (
                r#"{"pub":{"channel":"c","offset":6,"b64data":"***"}}"#,
                6,
                "b64data",
            ),
        ] {
            match parse_line(line) {
                Ok(Incoming::Push(Push::Pub {
                    channel,
                    publication: Err(u),
                })) => {
                    assert_eq!((channel.as_str(), u.offset), ("c", offset), "{line}");
                    assert!(u.error.contains(says), "{line}: {}", u.error);
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        let depth = switchboard_protocol::json::MAX_DEPTH - 1;
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let line =
            format!(r#"{{"id":2,"history":{{"publications":[{{"offset":1,"data":{deep}}}]}}}}"#);
        let Ok(Incoming::Reply {
            result: Ok(raw), ..
        }) = parse_line(&line)
        else {
            panic!("a deep payload in a reply")
        };
        let h: HistoryResult = decode(&raw).unwrap();
        assert!(
            h.publications
                .into_iter()
                .all(|p| p.into_publication().is_ok())
        );
        let too_deep = "[".repeat(1_000_000);
        assert!(parse_line(&too_deep).is_err(), "bounded before parsing");
    }

    #[test]
    fn commands() {
        let c: Value = serde_json::from_str(&command(9, "rpc", json!({"method": "m"}))).unwrap();
        assert_eq!(c, json!({"id": 9, "rpc": {"method": "m"}}));
    }
}
