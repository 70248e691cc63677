//! How publications and presence events travel in NATS messages.
//!
//! Headers say what a message is: `Sb-Kind` (`p` a publication, `m` an epoch marker, `j`/`l` a
//! client joined or left), and for publications and markers `Sb-Offset` and `Sb-Epoch` (absent for
//! publications without history). A publication's body is a small JSON object: `{"d": <JSON
//! payload>}` or `{"b": "<base64>"}`, with `i` (the publisher's info) and `t` (tags) when present;
//! a presence event's body is the client's `ClientInfo` as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_engine::PresenceEvent;
use switchboard_protocol::{ClientInfo, Payload, Publication};

/// What a message is.
pub(crate) const KIND: &str = "Sb-Kind";
/// A publication's offset.
pub(crate) const OFFSET: &str = "Sb-Offset";
/// A publication's stream epoch.
pub(crate) const EPOCH: &str = "Sb-Epoch";

/// Something read from NATS that this engine did not write (another program, another version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable data in NATS: {0}")]
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
pub(crate) fn encode_publication(p: &Publication) -> Result<Bytes, DecodeError> {
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
    serde_json::to_vec(&WireOut {
        d: raw,
        b,
        i: p.info.as_deref(),
        t: p.tags.as_ref(),
    })
    .map(Bytes::from)
    .map_err(|e| DecodeError(e.to_string()))
}

/// A publication's body back, with `offset`.
pub(crate) fn decode_publication(body: &[u8], offset: u64) -> Result<Publication, DecodeError> {
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

/// The headers of a publication (`marker`: an epoch marker, which holds no publication).
pub(crate) fn publication_headers(offset: u64, epoch: &str, marker: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(KIND, if marker { "m" } else { "p" });
    if !epoch.is_empty() {
        h.insert(OFFSET, offset.to_string());
        h.insert(EPOCH, epoch);
    }
    h
}

/// The headers of a presence event.
pub(crate) fn presence_headers(event: PresenceEvent) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        KIND,
        match event {
            PresenceEvent::Join => "j",
            PresenceEvent::Leave => "l",
        },
    );
    h
}

/// A message's kind, offset and epoch (0 and empty when absent).
pub(crate) fn position(headers: Option<&HeaderMap>) -> Result<(u8, u64, String), DecodeError> {
    let headers = headers.ok_or_else(|| DecodeError("message without headers".into()))?;
    let kind = headers
        .get(KIND)
        .and_then(|k| k.as_str().bytes().next())
        .ok_or_else(|| DecodeError(format!("message without {KIND}")))?;
    let offset = match headers.get(OFFSET) {
        Some(o) => o
            .as_str()
            .parse()
            .map_err(|_| DecodeError(format!("{OFFSET} is not a number")))?,
        None => 0,
    };
    let epoch = headers
        .get(EPOCH)
        .map(|e| e.as_str().to_owned())
        .unwrap_or_default();
    Ok((kind, offset, epoch))
}

/// A live message, decoded.
#[derive(Debug)]
pub(crate) enum Live {
    /// A publication and its stream's epoch.
    Publication(Publication, String),
    /// A join or leave.
    Presence(PresenceEvent, ClientInfo),
    /// An epoch marker: nothing to deliver.
    Marker,
}

/// Decodes what arrived on a channel's live subject.
pub(crate) fn decode_live(headers: Option<&HeaderMap>, body: &[u8]) -> Result<Live, DecodeError> {
    let (kind, offset, epoch) = position(headers)?;
    match kind {
        b'p' => Ok(Live::Publication(decode_publication(body, offset)?, epoch)),
        b'm' => Ok(Live::Marker),
        b'j' | b'l' => {
            let info: ClientInfo = serde_json::from_slice(body)
                .map_err(|e| DecodeError(format!("presence event: {e}")))?;
            let event = if kind == b'j' {
                PresenceEvent::Join
            } else {
                PresenceEvent::Leave
            };
            Ok(Live::Presence(event, info))
        }
        other => Err(DecodeError(format!(
            "message of unknown kind {:?}",
            char::from(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_round_trip() {
        for payload in [
            Payload::Json(Bytes::from_static(br#"{"text":"hi:there"}"#)),
            Payload::Binary(Bytes::from_static(&[0, 1, 2, 255])),
        ] {
            let mut p = Publication::new(payload);
            p.info = Some(Arc::new(ClientInfo {
                client: "c1".into(),
                user: "alice".into(),
                info: RawValue::from_string(r#"{"name":"A"}"#.into()).ok(),
            }));
            p.tags = Some(BTreeMap::from([("k".into(), "v".into())]));
            let body = encode_publication(&p).unwrap_or_default();
            let h = publication_headers(42, "ep0ch", false);
            match decode_live(Some(&h), &body) {
                Ok(Live::Publication(got, epoch)) => {
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
    fn without_history_there_is_no_offset_nor_epoch() {
        let h = publication_headers(0, "", false);
        assert!(h.get(OFFSET).is_none());
        assert_eq!(position(Some(&h)).ok(), Some((b'p', 0, String::new())));
    }

    #[test]
    fn presence_events_round_trip() {
        let info = ClientInfo {
            client: "c".into(),
            user: "u".into(),
            info: None,
        };
        let body = serde_json::to_vec(&info).unwrap_or_default();
        let h = presence_headers(PresenceEvent::Leave);
        match decode_live(Some(&h), &body) {
            Ok(Live::Presence(PresenceEvent::Leave, got)) => assert_eq!(got, info),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreign_messages_are_errors_not_panics() {
        assert!(decode_live(None, b"{}").is_err());
        let mut h = HeaderMap::new();
        h.insert(KIND, "x");
        assert!(decode_live(Some(&h), b"{}").is_err());
        let mut h = publication_headers(1, "e", false);
        h.insert(OFFSET, "nope");
        assert!(decode_live(Some(&h), b"{}").is_err());
        let h = publication_headers(1, "e", false);
        assert!(decode_live(Some(&h), b"{").is_err());
        assert!(decode_live(Some(&h), b"{}").is_err());
    }
}
