//! How publications and presence events are written into Redis (stream entries and pub/sub
//! messages), and read back.
//!
//! A publication is a small JSON object: `{"d": <JSON payload>}` or `{"b": "<base64>"}`, with `i` (the
//! publisher's info) and `t` (tags) when present. Its offset is not inside: the publish script assigns
//! it. Pub/sub messages carry a kind letter first:
//!
//! - `p<offset>:<epoch>:<publication>`: a publication (offset 0 and an empty epoch without history);
//! - `j<info>` / `l<info>`: a client joined or left (its `ClientInfo` as JSON).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_engine::PresenceEvent;
use switchboard_protocol::{ClientInfo, Payload, Publication};

/// Something read from Redis that this engine did not write (another program, another version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable data in Redis: {0}")]
pub struct DecodeError(pub String);

#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    d: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    i: Option<&'a ClientInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<&'a BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct WireIn {
    #[serde(default)]
    d: Option<Box<RawValue>>,
    #[serde(default)]
    b: Option<String>,
    #[serde(default)]
    i: Option<ClientInfo>,
    #[serde(default)]
    t: Option<BTreeMap<String, String>>,
}

/// A publication's body (without its offset).
pub fn encode_publication(p: &Publication) -> Result<String, DecodeError> {
    let (raw, b) = match &p.payload {
        Payload::Json(bytes) => {
            // The protocol layer validated it; a failure here is a bug upstream, reported, not hidden.
            let text = std::str::from_utf8(bytes)
                .map_err(|e| DecodeError(format!("JSON payload is not UTF-8: {e}")))?;
            let raw: &RawValue = serde_json::from_str(text)
                .map_err(|e| DecodeError(format!("JSON payload does not parse: {e}")))?;
            (Some(raw), None)
        }
        Payload::Binary(bytes) => (None, Some(BASE64.encode(bytes))),
    };
    serde_json::to_string(&WireOut {
        d: raw,
        b,
        i: p.info.as_deref(),
        t: p.tags.as_ref(),
    })
    .map_err(|e| DecodeError(e.to_string()))
}

/// A publication's body back, with `offset`.
pub fn decode_publication(body: &[u8], offset: u64) -> Result<Publication, DecodeError> {
    let w: WireIn =
        serde_json::from_slice(body).map_err(|e| DecodeError(format!("publication: {e}")))?;
    let payload = match (w.d, w.b) {
        (Some(d), None) => Payload::Json(Bytes::copy_from_slice(d.get().as_bytes())),
        (None, Some(b)) => Payload::Binary(Bytes::from(
            BASE64
                .decode(b)
                .map_err(|e| DecodeError(format!("publication base64: {e}")))?,
        )),
        _ => {
            return Err(DecodeError(
                "publication without exactly one of d, b".into(),
            ));
        }
    };
    Ok(Publication {
        offset,
        payload,
        info: w.i.map(Arc::new),
        tags: w.t,
    })
}

/// A pub/sub message, decoded.
#[derive(Debug)]
pub enum Message {
    /// A publication and its stream's epoch.
    Publication(Publication, String),
    /// A join or leave.
    Presence(PresenceEvent, ClientInfo),
}

/// The pub/sub message for a join or leave.
pub fn encode_presence(event: PresenceEvent, info: &ClientInfo) -> Result<String, DecodeError> {
    let kind = match event {
        PresenceEvent::Join => 'j',
        PresenceEvent::Leave => 'l',
    };
    let json = serde_json::to_string(info).map_err(|e| DecodeError(e.to_string()))?;
    Ok(format!("{kind}{json}"))
}

/// Decodes a pub/sub message.
pub fn decode_message(msg: &[u8]) -> Result<Message, DecodeError> {
    let Some((&kind, rest)) = msg.split_first() else {
        return Err(DecodeError("empty pub/sub message".into()));
    };
    match kind {
        b'p' => {
            let mut parts = rest.splitn(3, |b| *b == b':');
            let (Some(offset), Some(epoch), Some(body)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(DecodeError(
                    "publication message without offset:epoch:".into(),
                ));
            };
            let offset = std::str::from_utf8(offset)
                .ok()
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| DecodeError("publication offset is not a number".into()))?;
            let epoch = String::from_utf8(epoch.to_vec())
                .map_err(|_| DecodeError("epoch is not UTF-8".into()))?;
            Ok(Message::Publication(
                decode_publication(body, offset)?,
                epoch,
            ))
        }
        b'j' | b'l' => {
            let info: ClientInfo = serde_json::from_slice(rest)
                .map_err(|e| DecodeError(format!("presence event: {e}")))?;
            let event = if kind == b'j' {
                PresenceEvent::Join
            } else {
                PresenceEvent::Leave
            };
            Ok(Message::Presence(event, info))
        }
        other => Err(DecodeError(format!(
            "pub/sub message of unknown kind {:?}",
            char::from(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(payload: Payload) -> Publication {
        let mut p = Publication::new(payload);
        p.info = Some(Arc::new(ClientInfo {
            client: "c1".into(),
            user: "alice".into(),
            info: Some(RawValue::from_string(r#"{"name":"A"}"#.into()).unwrap_or_default()),
        }));
        p.tags = Some(BTreeMap::from([("k".into(), "v".into())]));
        p
    }

    #[test]
    fn publications_round_trip_through_a_message() {
        for payload in [
            Payload::Json(Bytes::from_static(br#"{"text":"hi:there"}"#)),
            Payload::Binary(Bytes::from_static(&[0, 1, 2, 255])),
        ] {
            let p = publication(payload);
            let body = encode_publication(&p).unwrap_or_default();
            let msg = format!("p42:ep0ch:{body}");
            match decode_message(msg.as_bytes()) {
                Ok(Message::Publication(got, epoch)) => {
                    assert_eq!(epoch, "ep0ch");
                    assert_eq!(got.offset, 42);
                    assert_eq!(got.payload, p.payload);
                    assert_eq!(got.info, p.info);
                    assert_eq!(got.tags, p.tags);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn presence_events_round_trip() {
        let info = ClientInfo {
            client: "c".into(),
            user: "u".into(),
            info: None,
        };
        let msg = encode_presence(PresenceEvent::Leave, &info).unwrap_or_default();
        match decode_message(msg.as_bytes()) {
            Ok(Message::Presence(PresenceEvent::Leave, got)) => assert_eq!(got, info),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreign_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"x",
            b"p",
            b"p1",
            b"pnope:e:{}",
            b"p1:e:{",
            b"j{",
            b"p1:e:{}",
        ] {
            assert!(
                decode_message(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
