//! How publications and presence events travel in NATS messages: headers say what a message is,
//! the body is the one every remote engine writes ([`switchboard_engine::codec`]).
//!
//! Headers: `Sb-Kind` (`p` a publication, `m` an epoch marker, `j`/`l` a client joined or left),
//! and for publications and markers `Sb-Offset` and `Sb-Epoch` (absent for publications without
//! history). A publication's body is the publication without its offset; a presence event's body is
//! the client's `ClientInfo` as JSON.

use async_nats::HeaderMap;
use bytes::Bytes;
use switchboard_engine::PresenceEvent;
use switchboard_engine::codec::{self, Live};

pub use switchboard_engine::codec::DecodeError;

/// What a message is.
pub(crate) const KIND: &str = "Sb-Kind";
/// A publication's offset.
pub(crate) const OFFSET: &str = "Sb-Offset";
/// A publication's stream epoch.
pub(crate) const EPOCH: &str = "Sb-Epoch";

/// `reason` as data in NATS that cannot be read (another program, another version wrote it) or
/// written.
pub(crate) fn unreadable(reason: impl std::fmt::Display) -> DecodeError {
    DecodeError::new("NATS", reason)
}

/// A message body: a publication's (without its offset) or a client's info, as the shared codec
/// wrote it.
pub(crate) fn body(encoded: Result<String, codec::CodecError>) -> Result<Bytes, DecodeError> {
    encoded.map(Bytes::from).map_err(unreadable)
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
    h.insert(KIND, char::from(codec::presence_letter(event)).to_string());
    h
}

/// A message's kind, offset and epoch (0 and empty when absent).
pub(crate) fn position(headers: Option<&HeaderMap>) -> Result<(u8, u64, String), DecodeError> {
    let headers = headers.ok_or_else(|| unreadable("message without headers"))?;
    let kind = headers
        .get(KIND)
        .and_then(|k| k.as_str().bytes().next())
        .ok_or_else(|| unreadable(format!("message without {KIND}")))?;
    let offset = match headers.get(OFFSET) {
        Some(o) => o
            .as_str()
            .parse()
            .map_err(|_| unreadable(format!("{OFFSET} is not a number")))?,
        None => 0,
    };
    let epoch = headers
        .get(EPOCH)
        .map(|e| e.as_str().to_owned())
        .unwrap_or_default();
    Ok((kind, offset, epoch))
}

/// Decodes what arrived on a channel's live subject; `None` for an epoch marker (nothing to
/// deliver).
pub(crate) fn decode_live(
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<Option<Live>, DecodeError> {
    let (kind, offset, epoch) = position(headers)?;
    if kind == b'm' {
        return Ok(None);
    }
    codec::decode_live(kind, offset, epoch, body)
        .map(Some)
        .map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use switchboard_protocol::{ClientInfo, Payload, Publication};

    use super::*;

    #[test]
    fn publications_round_trip_with_their_position_in_headers() {
        let p = Publication::new(Payload::Binary(Bytes::from_static(&[0, 1, 2, 255])));
        let body = self::body(codec::encode_publication(&p)).unwrap_or_default();
        let h = publication_headers(42, "ep0ch", false);
        match decode_live(Some(&h), &body) {
            Ok(Some(Live::Publication(got, epoch))) => {
                assert_eq!(epoch, "ep0ch");
                assert_eq!(got.offset, 42);
                assert_eq!(got.payload, p.payload);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.get(KIND).map(|k| k.as_str()),
            Some("p"),
            "the format stays"
        );
        let marker = publication_headers(3, "e", true);
        assert!(matches!(decode_live(Some(&marker), b"{}"), Ok(None)));
    }

    #[test]
    fn without_history_there_is_no_offset_nor_epoch() {
        let h = publication_headers(0, "", false);
        assert!(h.get(OFFSET).is_none());
        assert_eq!(position(Some(&h)).ok(), Some((b'p', 0, String::new())));
    }

    #[test]
    fn presence_events_round_trip() {
        let info = ClientInfo::clone(&switchboard_engine::conformance::client("c", "u"));
        let body = self::body(codec::encode_client_info(&info)).unwrap_or_default();
        let h = presence_headers(PresenceEvent::Leave);
        assert_eq!(
            h.get(KIND).map(|k| k.as_str()),
            Some("l"),
            "the format stays"
        );
        match decode_live(Some(&h), &body) {
            Ok(Some(Live::Presence(PresenceEvent::Leave, got))) => assert_eq!(got, info),
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
