//! How publications and presence events are framed in Redis pub/sub messages. Their bodies (a
//! publication without its offset, a client's info) are the ones every remote engine writes
//! ([`switchboard_engine::codec`]); stream entries hold the publication body as it is.
//!
//! Pub/sub messages carry a kind letter first:
//!
//! - `p<offset>:<epoch>:<publication>`: a publication (offset 0 and an empty epoch without history);
//! - `j<info>` / `l<info>`: a client joined or left (its `ClientInfo` as JSON).

use switchboard_engine::PresenceEvent;
use switchboard_engine::codec::{self, Live};
use switchboard_protocol::ClientInfo;

pub(crate) use switchboard_engine::codec::DecodeError;

/// `reason` as data in Redis that cannot be read (another program, another version wrote it) or
/// written.
pub(crate) fn unreadable(reason: impl std::fmt::Display) -> DecodeError {
    DecodeError::new("Redis", reason)
}

/// The pub/sub message for a join or leave.
pub fn encode_presence(event: PresenceEvent, info: &ClientInfo) -> Result<String, DecodeError> {
    let kind = char::from(codec::presence_letter(event));
    let info = codec::encode_client_info(info).map_err(unreadable)?;
    Ok(format!("{kind}{info}"))
}

/// Decodes a pub/sub message.
pub fn decode_message(msg: &[u8]) -> Result<Live, DecodeError> {
    let Some((&kind, rest)) = msg.split_first() else {
        return Err(unreadable("empty pub/sub message"));
    };
    let (offset, epoch, body) = if kind == b'p' {
        let mut parts = rest.splitn(3, |b| *b == b':');
        let (Some(offset), Some(epoch), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(unreadable("publication message without offset:epoch:"));
        };
        let offset = std::str::from_utf8(offset)
            .ok()
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| unreadable("publication offset is not a number"))?;
        let epoch =
            String::from_utf8(epoch.to_vec()).map_err(|_| unreadable("epoch is not UTF-8"))?;
        (offset, epoch, body)
    } else {
        (0, String::new(), rest)
    };
    codec::decode_live(kind, offset, epoch, body).map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use switchboard_protocol::{Payload, Publication};

    use super::*;

    #[test]
    fn publications_round_trip_through_a_message() {
        for payload in [
            Payload::Json(Bytes::from_static(br#"{"text":"hi:there"}"#)),
            Payload::Binary(Bytes::from_static(&[0, 1, 2, 255])),
        ] {
            let mut p = Publication::new(payload);
            p.info = Some(Arc::new(ClientInfo {
                client: "c1".into(),
                user: "alice".into(),
                info: None,
            }));
            let body = codec::encode_publication(&p).unwrap_or_default();
            let msg = format!("p42:ep0ch:{body}");
            match decode_message(msg.as_bytes()) {
                Ok(Live::Publication(got, epoch)) => {
                    assert_eq!(epoch, "ep0ch");
                    assert_eq!(got.offset, 42);
                    assert_eq!(got.payload, p.payload);
                    assert_eq!(got.info, p.info);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn presence_events_round_trip() {
        let info = ClientInfo::clone(&switchboard_engine::conformance::client("c", "u"));
        let msg = encode_presence(PresenceEvent::Leave, &info).unwrap_or_default();
        assert_eq!(msg, r#"l{"client":"c","user":"u"}"#, "the format stays");
        match decode_message(msg.as_bytes()) {
            Ok(Live::Presence(PresenceEvent::Leave, got)) => assert_eq!(got, info),
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
