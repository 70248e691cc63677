//! The bodies remote engines store and send: a publication without its position, and a client's
//! presence info. Every remote engine writes the same bodies, framed its own way around them (the
//! Redis engine prefixes a kind letter, offset and epoch; the NATS engine puts them in headers), so
//! that what one version wrote, the next reads: the formats here must not change.
//!
//! - A publication is a small JSON object: `{"d": <JSON payload>}` or `{"b": "<base64>"}`, with `i`
//!   (the publisher's info) and `t` (tags) when present. Its offset is not inside: the store
//!   assigns it, and the framing carries it.
//! - A presence entry or event is the client's [`ClientInfo`] as JSON.
//! - A presence event's kind is one letter in every framing: [`presence_letter`].

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::{ClientInfo, Payload, Publication};

use crate::{EngineError, PresenceEvent};

/// A body that cannot be written or read. Reading fails on data this engine did not write
/// (another program, another version); writing only on a payload the protocol layer should have
/// refused, a bug upstream that is reported rather than hidden.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A JSON payload that is not JSON text.
    #[error("JSON payload {0}")]
    Payload(String),
    /// A body that does not parse as what it should be.
    #[error("{what}: {reason}")]
    Unreadable {
        /// What was read: "publication", "presence info".
        what: &'static str,
        /// Why it did not parse.
        reason: String,
    },
    /// A message whose kind letter is not one this version knows.
    #[error("message of unknown kind {0:?}")]
    UnknownKind(char),
    /// A body that could not be serialized.
    #[error("cannot write {what}: {reason}")]
    Unwritable {
        /// What was written.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

/// Data in a remote engine's store that the engine cannot read (another program, another version
/// wrote it) or cannot write, naming the store ("Redis", "NATS") for the operator's log. A call
/// that meets it fails like an outage ([`EngineError::Unavailable`]): temporary for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable data in {store}: {reason}")]
pub struct DecodeError {
    /// The store the data is in.
    pub store: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl DecodeError {
    /// Data in `store` that cannot be read or written, and why.
    pub fn new(store: &'static str, reason: impl std::fmt::Display) -> Self {
        Self {
            store,
            reason: reason.to_string(),
        }
    }
}

impl From<DecodeError> for EngineError {
    fn from(e: DecodeError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

#[derive(Serialize)]
struct BodyOut<'a> {
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
struct BodyIn {
    #[serde(default)]
    d: Option<Box<RawValue>>,
    #[serde(default)]
    b: Option<String>,
    #[serde(default)]
    i: Option<ClientInfo>,
    #[serde(default)]
    t: Option<BTreeMap<String, String>>,
}

/// A publication's body (without its offset), as JSON text.
pub fn encode_publication(p: &Publication) -> Result<String, CodecError> {
    let (raw, b) = match &p.payload {
        Payload::Json(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| CodecError::Payload(format!("is not UTF-8: {e}")))?;
            let raw: &RawValue = serde_json::from_str(text)
                .map_err(|e| CodecError::Payload(format!("does not parse: {e}")))?;
            (Some(raw), None)
        }
        Payload::Binary(bytes) => (None, Some(BASE64.encode(bytes))),
    };
    serde_json::to_string(&BodyOut {
        d: raw,
        b,
        i: p.info.as_deref(),
        t: p.tags.as_ref(),
    })
    .map_err(|e| CodecError::Unwritable {
        what: "publication",
        reason: e.to_string(),
    })
}

/// A publication's body back, at `offset` (which the framing carries).
pub fn decode_publication(body: &[u8], offset: u64) -> Result<Publication, CodecError> {
    let unreadable = |reason: String| CodecError::Unreadable {
        what: "publication",
        reason,
    };
    let w: BodyIn = serde_json::from_slice(body).map_err(|e| unreadable(e.to_string()))?;
    let payload = match (w.d, w.b) {
        (Some(d), None) => Payload::Json(Bytes::copy_from_slice(d.get().as_bytes())),
        (None, Some(b)) => Payload::Binary(Bytes::from(
            BASE64
                .decode(b)
                .map_err(|e| unreadable(format!("base64: {e}")))?,
        )),
        _ => return Err(unreadable("not exactly one of d, b".into())),
    };
    Ok(Publication {
        offset,
        payload,
        info: w.i.map(Arc::new),
        tags: w.t,
    })
}

/// A client's presence info (a presence entry, or the body of a join or leave), as JSON text.
pub fn encode_client_info(info: &ClientInfo) -> Result<String, CodecError> {
    serde_json::to_string(info).map_err(|e| CodecError::Unwritable {
        what: "presence info",
        reason: e.to_string(),
    })
}

/// A client's presence info back.
pub fn decode_client_info(body: &[u8]) -> Result<ClientInfo, CodecError> {
    serde_json::from_slice(body).map_err(|e| CodecError::Unreadable {
        what: "presence info",
        reason: e.to_string(),
    })
}

/// The letter that says a message is a join (`j`) or a leave (`l`), in every engine's framing.
pub fn presence_letter(event: PresenceEvent) -> u8 {
    match event {
        PresenceEvent::Join => b'j',
        PresenceEvent::Leave => b'l',
    }
}

/// What a remote engine delivers live to the nodes subscribed to a channel, its framing taken off.
#[derive(Debug)]
pub enum Live {
    /// A publication and its stream's epoch (empty without history).
    Publication(Publication, String),
    /// A join or leave.
    Presence(PresenceEvent, ClientInfo),
}

/// A live message back from what its framing carries: its kind letter (`p` a publication, else
/// [`presence_letter`]), the publication's `offset` and `epoch` (0 and empty for presence events
/// and publications without history), and its `body`. Other letters are
/// [`CodecError::UnknownKind`]: a framing with kinds of its own decodes them first.
pub fn decode_live(
    letter: u8,
    offset: u64,
    epoch: String,
    body: &[u8],
) -> Result<Live, CodecError> {
    let event = match letter {
        b'p' => return Ok(Live::Publication(decode_publication(body, offset)?, epoch)),
        b'j' => PresenceEvent::Join,
        b'l' => PresenceEvent::Leave,
        other => return Err(CodecError::UnknownKind(char::from(other))),
    };
    Ok(Live::Presence(event, decode_client_info(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(payload: Payload) -> Publication {
        let mut p = Publication::new(payload);
        p.info = Some(Arc::new(ClientInfo {
            client: "c1".into(),
            user: "alice".into(),
            info: RawValue::from_string(r#"{"name":"A"}"#.into()).ok(),
        }));
        p.tags = Some(BTreeMap::from([("k".into(), "v".into())]));
        p
    }

    #[test]
    fn publications_round_trip() {
        for payload in [
            Payload::Json(Bytes::from_static(br#"{"text":"hi:there"}"#)),
            Payload::Binary(Bytes::from_static(&[0, 1, 2, 255])),
        ] {
            let p = publication(payload);
            let body = encode_publication(&p).unwrap_or_default();
            let got = decode_publication(body.as_bytes(), 42);
            let got = got.unwrap_or_else(|e| panic!("{e}: {body}"));
            assert_eq!(got.offset, 42);
            assert_eq!(got.payload, p.payload);
            assert_eq!(got.info, p.info);
            assert_eq!(got.tags, p.tags);
        }
    }

    #[test]
    fn the_stored_format_stays_what_earlier_versions_wrote_and_read() {
        let json = Publication::new(Payload::Json(Bytes::from_static(br#"{"a": 1}"#)));
        assert_eq!(
            encode_publication(&json).ok().as_deref(),
            Some(r#"{"d":{"a": 1}}"#)
        );
        let binary = publication(Payload::Binary(Bytes::from_static(&[0, 255])));
        assert_eq!(
            encode_publication(&binary).ok().as_deref(),
            Some(
                r#"{"b":"AP8=","i":{"client":"c1","user":"alice","info":{"name":"A"}},"t":{"k":"v"}}"#
            )
        );
        let read = decode_publication(br#"{"b":"AP8=","t":{"k":"v"}}"#, 7);
        assert_eq!(
            read.map(|p| (p.offset, p.payload, p.tags)),
            Ok((
                7,
                Payload::Binary(Bytes::from_static(&[0, 255])),
                Some(BTreeMap::from([("k".into(), "v".into())]))
            ))
        );
        let info = ClientInfo {
            client: "c".into(),
            user: "u".into(),
            info: None,
        };
        assert_eq!(
            encode_client_info(&info).ok().as_deref(),
            Some(r#"{"client":"c","user":"u"}"#)
        );
    }

    #[test]
    fn presence_info_round_trips() {
        let info = ClientInfo {
            client: "c".into(),
            user: "u".into(),
            info: RawValue::from_string("[1]".into()).ok(),
        };
        let body = encode_client_info(&info).unwrap_or_default();
        assert_eq!(decode_client_info(body.as_bytes()), Ok(info.clone()));
        for event in [PresenceEvent::Join, PresenceEvent::Leave] {
            match decode_live(presence_letter(event), 0, String::new(), body.as_bytes()) {
                Ok(Live::Presence(e, got)) => assert_eq!((e, got), (event, info.clone())),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            decode_live(b'x', 0, String::new(), body.as_bytes()),
            Err(CodecError::UnknownKind('x'))
        ));
        let p = encode_publication(&Publication::new(Payload::Json(Bytes::from_static(b"1"))));
        match decode_live(b'p', 3, "e".into(), p.unwrap_or_default().as_bytes()) {
            Ok(Live::Publication(got, epoch)) => assert_eq!((got.offset, epoch.as_str()), (3, "e")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreign_bodies_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"{}",
            b"[]",
            br#"{"d":1,"b":"AA=="}"#,
            br#"{"b":"!"}"#,
        ] {
            assert!(
                decode_publication(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_client_info(b"{").is_err());
        assert!(decode_client_info(b"{}").is_err());
        let not_json = Publication::new(Payload::Json(Bytes::from_static(b"{nope")));
        assert!(matches!(
            encode_publication(&not_json),
            Err(CodecError::Payload(_))
        ));
    }
}
