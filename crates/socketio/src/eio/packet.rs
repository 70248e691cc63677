//! Engine.IO v4 packets and their two encodings: one packet per WebSocket frame, and the
//! HTTP long-polling payload (packets joined by the record separator `\x1e`, binary packets as `b`
//! followed by base64).
//!
//! Decoding follows the reference parser (`engine.io-parser` v5): the first character is the packet
//! type, the rest is the data; `b` starts a base64 binary message wherever a text packet is read.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use bytes::Bytes;
use thiserror::Error;

/// The record separator that joins packets in an HTTP long-polling payload.
pub const SEPARATOR: char = '\x1e';

/// base64 as browsers' `btoa` writes it, read as Node's `Buffer.from(s, "base64")` accepts it: with
/// or without padding (clients differ).
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The data of a `message` packet: text, or binary (a WebSocket binary frame, or `b` + base64 over
/// polling). Socket.IO sends its packets as text and its binary attachments as binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Binary(Bytes),
    /// UTF-8 text sent to many sessions (a publication), encoded once for all of them: see
    /// [`SharedText`]. Only the server sends it; it reads as [`Data::Text`] does.
    Shared(SharedText),
}

impl Data {
    /// The length in bytes, as `maxPayload` counts it.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(s) => s.len(),
            Self::Binary(b) => b.len(),
            Self::Shared(s) => s.text().len(),
        }
    }

    /// Whether the data is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A text `message` packet encoded once for many sessions: the whole packet (`4` + the text) behind
/// a reference count, so that queueing it on each subscriber's session copies nothing, and a slot
/// where the transport above leaves its own framing of it (the WebSocket frame) for the other
/// sessions to reuse.
#[derive(Clone)]
pub struct SharedText {
    inner: Arc<SharedInner>,
}

struct SharedInner {
    /// `4` followed by the text: a WebSocket text frame's payload, a polling payload's record.
    packet: Bytes,
    /// The transport's framing, made by the first session that sends it.
    framed: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl SharedText {
    /// The `message` packet of `text`.
    pub fn new(text: &str) -> Self {
        let mut packet = Vec::with_capacity(1 + text.len());
        packet.push(b'4');
        packet.extend_from_slice(text.as_bytes());
        Self {
            inner: Arc::new(SharedInner {
                packet: Bytes::from(packet),
                framed: OnceLock::new(),
            }),
        }
    }

    /// The whole packet as text (`4` + the data).
    pub fn packet(&self) -> &Bytes {
        &self.inner.packet
    }

    /// The packet as a string.
    pub fn packet_str(&self) -> &str {
        // Built from a `&str` plus an ASCII digit: always UTF-8.
        std::str::from_utf8(&self.inner.packet).unwrap_or_default()
    }

    /// The message's text (without the packet type).
    pub fn text(&self) -> &str {
        self.packet_str().get(1..).unwrap_or_default()
    }

    /// The transport's framing of the packet, made by `frame` on first use and shared by every
    /// later caller; `None` when a framing of another type was cached first (the caller frames
    /// the packet itself).
    pub fn framed<T: Any + Send + Sync>(&self, frame: impl FnOnce(&Bytes) -> T) -> Option<&T> {
        self.inner
            .framed
            .get_or_init(|| Box::new(frame(&self.inner.packet)))
            .downcast_ref()
    }

    /// True when both are the same shared packet.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.inner, &b.inner)
    }
}

impl fmt::Debug for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedText")
            .field(&self.packet_str())
            .finish()
    }
}

impl PartialEq for SharedText {
    /// Equal when the texts are (whatever framing is cached).
    fn eq(&self, other: &Self) -> bool {
        self.inner.packet == other.inner.packet
    }
}

impl Eq for SharedText {}

/// An Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0`: the handshake answer, with its JSON (see [`crate::eio::Handshake`]).
    Open(String),
    /// `1`: the sender closes the session.
    Close,
    /// `2`: the server's heartbeat, or `2probe` from a client testing a WebSocket before upgrading.
    Ping(String),
    /// `3`: the client's heartbeat answer, or `3probe`, the server's answer to `2probe`.
    Pong(String),
    /// `4`: application data (for Socket.IO, one Socket.IO packet or one binary attachment).
    Message(Data),
    /// `5`: the client switches the session to the probed WebSocket.
    Upgrade,
    /// `6`: nothing; ends a held poll during an upgrade, or the poll of a session the client closed.
    Noop,
}

/// The payload of `2probe` and `3probe`.
pub const PROBE: &str = "probe";

/// Why bytes are not an Engine.IO packet. The session that read them is closed with reason
/// `parse error`, as the reference server does.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// A packet with no type character (an empty frame, or two separators in a row).
    #[error(
        "empty Engine.IO packet: a packet starts with its type, a digit 0 (open) to 6 (noop), or `b` for binary"
    )]
    Empty,
    /// A first character that is no packet type.
    #[error(
        "unknown Engine.IO packet type {0:?}: the types are the digits 0 (open) to 6 (noop), and `b` for base64 binary"
    )]
    UnknownType(char),
    /// `b` followed by something that is not base64.
    #[error("invalid base64 after `b` in an Engine.IO binary packet: {0}")]
    Base64(String),
    /// A polling body that is not UTF-8 (payloads are text; binary travels as base64).
    #[error(
        "an Engine.IO polling payload must be UTF-8 text (binary packets are `b` + base64): invalid UTF-8 at byte {0}"
    )]
    NotUtf8(usize),
}

impl Packet {
    /// The type character on the wire.
    pub fn type_char(&self) -> char {
        match self {
            Self::Open(_) => '0',
            Self::Close => '1',
            Self::Ping(_) => '2',
            Self::Pong(_) => '3',
            Self::Message(_) => '4',
            Self::Upgrade => '5',
            Self::Noop => '6',
        }
    }

    /// Reads one packet written as text: a WebSocket text frame, or one record of a polling payload.
    ///
    /// The data of `close`, `upgrade` and `noop` is ignored, as the reference server ignores it.
    pub fn decode_text(text: &str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let first = chars.next().ok_or(PacketError::Empty)?;
        let rest = chars.as_str();
        Ok(match first {
            '0' => Self::Open(rest.to_owned()),
            '1' => Self::Close,
            '2' => Self::Ping(rest.to_owned()),
            '3' => Self::Pong(rest.to_owned()),
            '4' => Self::Message(Data::Text(rest.to_owned())),
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            'b' => Self::Message(Data::Binary(decode_base64(rest)?)),
            other => return Err(PacketError::UnknownType(other)),
        })
    }

    /// The packet a WebSocket binary frame carries: always a binary `message`, sent as is.
    pub fn from_binary_frame(bytes: Bytes) -> Self {
        Self::Message(Data::Binary(bytes))
    }

    /// The WebSocket frame of this packet: binary messages as binary frames, as is; everything else
    /// as a text frame `<type><data>`.
    pub fn to_frame(&self) -> Frame {
        match self {
            Self::Message(Data::Binary(b)) => Frame::Binary(b.clone()),
            Self::Message(Data::Shared(s)) => Frame::Shared(s.clone()),
            other => {
                let mut s = String::with_capacity(1 + other.text_len());
                other.write_text(&mut s);
                Frame::Text(s)
            }
        }
    }

    /// Appends the packet as one record of a polling payload (binary as `b` + base64).
    fn write_text(&self, out: &mut String) {
        match self {
            Self::Message(Data::Binary(b)) => {
                out.push('b');
                general_purpose::STANDARD.encode_string(b, out);
            }
            Self::Message(Data::Shared(s)) => out.push_str(s.packet_str()),
            Self::Open(s) | Self::Ping(s) | Self::Pong(s) | Self::Message(Data::Text(s)) => {
                out.push(self.type_char());
                out.push_str(s);
            }
            Self::Close | Self::Upgrade | Self::Noop => out.push(self.type_char()),
        }
    }

    fn text_len(&self) -> usize {
        match self {
            Self::Open(s) | Self::Ping(s) | Self::Pong(s) | Self::Message(Data::Text(s)) => s.len(),
            Self::Message(Data::Binary(b)) => b.len().div_ceil(3) * 4,
            Self::Message(Data::Shared(s)) => s.text().len(),
            Self::Close | Self::Upgrade | Self::Noop => 0,
        }
    }
}

/// A WebSocket frame's content, as Engine.IO sends one packet per frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
    /// A text frame whose payload is a shared packet ([`SharedText::packet`]), the same for many
    /// sessions: the transport frames it once ([`SharedText::framed`]).
    Shared(SharedText),
}

impl Frame {
    /// Reads the packet of a received frame.
    pub fn decode(self) -> Result<Packet, PacketError> {
        match self {
            Self::Text(t) => Packet::decode_text(&t),
            Self::Shared(s) => Packet::decode_text(s.packet_str()),
            Self::Binary(b) => Ok(Packet::from_binary_frame(b)),
        }
    }
}

fn decode_base64(text: &str) -> Result<Bytes, PacketError> {
    BASE64_LENIENT
        .decode(text)
        .map(Bytes::from)
        .map_err(|e| PacketError::Base64(e.to_string()))
}

/// Reads an HTTP long-polling request body: packets joined by `\x1e`.
///
/// One bad record rejects the whole body: the reference server closes the session on it, so the
/// packets around it would not be delivered in order anyway.
pub fn decode_payload(body: &[u8]) -> Result<Vec<Packet>, PacketError> {
    let text = std::str::from_utf8(body).map_err(|e| PacketError::NotUtf8(e.valid_up_to()))?;
    text.split(SEPARATOR).map(Packet::decode_text).collect()
}

/// Writes packets as one HTTP long-polling response body (`Content-Type: text/plain;
/// charset=UTF-8`).
///
/// A text packet whose data holds `\x1e` would be read back as two packets: senders keep the
/// separator out of text (Socket.IO's JSON escapes it; [`crate::eio::Session::send`] refuses it).
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Packet>) -> String {
    let mut out = String::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        p.write_text(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Packet {
        Packet::Message(Data::Text(s.into()))
    }

    #[test]
    fn decodes_every_type() {
        assert_eq!(Packet::decode_text("0{}"), Ok(Packet::Open("{}".into())));
        assert_eq!(Packet::decode_text("1"), Ok(Packet::Close));
        assert_eq!(Packet::decode_text("2"), Ok(Packet::Ping(String::new())));
        assert_eq!(
            Packet::decode_text("2probe"),
            Ok(Packet::Ping(PROBE.into()))
        );
        assert_eq!(
            Packet::decode_text("3probe"),
            Ok(Packet::Pong(PROBE.into()))
        );
        assert_eq!(Packet::decode_text("4hello"), Ok(text("hello")));
        assert_eq!(Packet::decode_text("4"), Ok(text("")));
        assert_eq!(Packet::decode_text("5"), Ok(Packet::Upgrade));
        assert_eq!(Packet::decode_text("6"), Ok(Packet::Noop));
        // Trailing data on data-less types is ignored, as the reference server does.
        assert_eq!(Packet::decode_text("6xyz"), Ok(Packet::Noop));
    }

    #[test]
    fn rejects_what_the_reference_rejects() {
        assert_eq!(Packet::decode_text(""), Err(PacketError::Empty));
        assert_eq!(
            Packet::decode_text("abc"),
            Err(PacketError::UnknownType('a'))
        );
        assert_eq!(Packet::decode_text("7"), Err(PacketError::UnknownType('7')));
        assert_eq!(
            Packet::decode_text("é4"),
            Err(PacketError::UnknownType('é'))
        );
        assert!(matches!(
            Packet::decode_text("b!!!"),
            Err(PacketError::Base64(_))
        ));
    }

    #[test]
    fn spec_payload_examples() {
        // PROTOCOL.md, "Packet encoding / HTTP long-polling".
        assert_eq!(
            decode_payload(b"4hello\x1e2\x1e4world"),
            Ok(vec![
                text("hello"),
                Packet::Ping(String::new()),
                text("world")
            ])
        );
        let mixed = vec![
            text("hello"),
            Packet::Message(Data::Binary(Bytes::from_static(&[1, 2, 3, 4]))),
        ];
        assert_eq!(decode_payload(b"4hello\x1ebAQIDBA=="), Ok(mixed.clone()));
        assert_eq!(encode_payload(&mixed), "4hello\x1ebAQIDBA==");
        // The suite's round trips.
        let three = decode_payload(b"4test1\x1e4test2\x1e4test3").unwrap();
        assert_eq!(encode_payload(&three), "4test1\x1e4test2\x1e4test3");
    }

    #[test]
    fn payload_errors() {
        assert_eq!(decode_payload(b""), Err(PacketError::Empty));
        assert_eq!(decode_payload(b"4a\x1e\x1e4b"), Err(PacketError::Empty));
        assert_eq!(decode_payload(b"4a\x1e"), Err(PacketError::Empty));
        assert_eq!(decode_payload(b"4a\xff"), Err(PacketError::NotUtf8(2)));
        assert_eq!(decode_payload(b"abc"), Err(PacketError::UnknownType('a')));
    }

    #[test]
    fn base64_with_or_without_padding() {
        let want = Packet::Message(Data::Binary(Bytes::from_static(&[1, 2, 3, 4])));
        assert_eq!(Packet::decode_text("bAQIDBA=="), Ok(want.clone()));
        assert_eq!(Packet::decode_text("bAQIDBA"), Ok(want));
        assert_eq!(
            Packet::decode_text("b"),
            Ok(Packet::Message(Data::Binary(Bytes::new())))
        );
    }

    #[test]
    fn shared_text_is_a_message_encoded_once() {
        let shared = SharedText::new("2[\"chat\"]");
        let packet = Packet::Message(Data::Shared(shared.clone()));
        let plain = text("2[\"chat\"]");
        // On the wire it is the text message it stands for, both ways.
        assert_eq!(
            encode_payload([&packet, &plain]),
            encode_payload([&plain, &plain])
        );
        assert_eq!(Data::Shared(shared.clone()).len(), 9);
        let Frame::Shared(frame) = packet.to_frame() else {
            panic!("a shared frame")
        };
        assert!(SharedText::ptr_eq(&frame, &shared));
        assert_eq!(Frame::Shared(frame.clone()).decode(), Ok(plain));
        // The transport's framing is made once and found by every later sender.
        let calls = std::cell::Cell::new(0);
        let framing = |p: &Bytes| {
            calls.set(calls.get() + 1);
            p.len()
        };
        assert_eq!(frame.framed(framing), Some(&10));
        assert_eq!(shared.framed(framing), Some(&10));
        assert_eq!(calls.get(), 1);
        // A framing of another type finds the slot taken.
        assert_eq!(shared.framed(|_| "other"), None);
    }

    #[test]
    fn websocket_frames() {
        assert_eq!(text("hello").to_frame(), Frame::Text("4hello".into()));
        assert_eq!(
            Packet::Pong(PROBE.into()).to_frame(),
            Frame::Text("3probe".into())
        );
        assert_eq!(Packet::Noop.to_frame(), Frame::Text("6".into()));
        let bin = Bytes::from_static(&[1, 2, 3, 4]);
        // Binary payloads are sent as is over WebSocket.
        assert_eq!(
            Packet::Message(Data::Binary(bin.clone())).to_frame(),
            Frame::Binary(bin.clone())
        );
        assert_eq!(
            Frame::Binary(bin.clone()).decode(),
            Ok(Packet::Message(Data::Binary(bin)))
        );
        assert_eq!(
            Frame::Text("abc".into()).decode(),
            Err(PacketError::UnknownType('a'))
        );
    }

    #[test]
    fn round_trips() {
        let packets = vec![
            Packet::Open("{\"sid\":\"x\"}".into()),
            Packet::Close,
            Packet::Ping(String::new()),
            Packet::Pong(PROBE.into()),
            text("€ and ✓"),
            Packet::Message(Data::Binary(Bytes::from_static(b"\x00\xff\x1e"))),
            Packet::Upgrade,
            Packet::Noop,
        ];
        assert_eq!(
            decode_payload(encode_payload(&packets).as_bytes()),
            Ok(packets.clone())
        );
        for p in packets {
            assert_eq!(p.to_frame().decode(), Ok(p));
        }
    }
}
