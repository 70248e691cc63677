//! Messages as the application sees them, and [`SharedMessage`]: one message encoded once for many
//! connections.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::deflate;
use crate::frame::{MAX_HEADER_LEN, OpCode, encode_header};

/// A complete data message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message. The bytes are valid UTF-8: received ones were checked, and the constructors
    /// from `&str`/`String` guarantee it for sent ones.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message from a string.
    pub fn text(s: impl Into<String>) -> Self {
        Self::Text(Bytes::from(s.into()))
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Self::Binary(b.into())
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        match self {
            Self::Text(b) | Self::Binary(b) => b,
        }
    }

    /// The payload as text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        self.as_ref().as_text()
    }

    /// The message borrowed, as [`WebSocket::poll_each`](crate::WebSocket::poll_each) hands it out.
    pub fn as_ref(&self) -> MessageRef<'_> {
        match self {
            Self::Text(b) => MessageRef::Text(b),
            Self::Binary(b) => MessageRef::Binary(b),
        }
    }

    pub(crate) fn opcode(&self) -> OpCode {
        self.as_ref().opcode()
    }
}

/// A complete data message borrowed from the connection's read, for a handler that does not keep it
/// (an echo, a parser that copies what it needs): receiving it costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageRef<'a> {
    /// A text message; the bytes were checked to be valid UTF-8.
    Text(&'a [u8]),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> MessageRef<'a> {
    /// The payload bytes.
    pub fn payload(&self) -> &'a [u8] {
        match *self {
            Self::Text(b) | Self::Binary(b) => b,
        }
    }

    /// The payload as text, if this is a text message.
    pub fn as_text(&self) -> Option<&'a str> {
        match *self {
            Self::Text(b) => std::str::from_utf8(b).ok(),
            Self::Binary(_) => None,
        }
    }

    /// An owned copy, for a handler that keeps the message after all.
    pub fn to_message(&self) -> Message {
        match *self {
            Self::Text(b) => Message::Text(Bytes::copy_from_slice(b)),
            Self::Binary(b) => Message::Binary(Bytes::copy_from_slice(b)),
        }
    }

    pub(crate) fn opcode(&self) -> OpCode {
        match self {
            Self::Text(_) => OpCode::Text,
            Self::Binary(_) => OpCode::Binary,
        }
    }
}

/// Encodes a complete single-frame message: header and payload in one buffer.
pub(crate) fn encode_frame(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Bytes {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, true, rsv1, opcode, payload.len());
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out.freeze()
}

/// A message prepared for broadcast: framed once, and compressed at most once per window size, however
/// many connections it is sent to.
///
/// Server frames are not masked, so the framed bytes are the same for every connection; with
/// `server_no_context_takeover` (the default) the compressed bytes are too. Cloning is a reference
/// count. Connections that take over context compress it themselves.
#[derive(Clone, Debug)]
pub struct SharedMessage {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    message: Message,
    plain: OnceLock<Bytes>,
    /// Compressed frames for window bits 9..=15; `None` inside when compression did not pay.
    deflated: [OnceLock<Option<Bytes>>; 7],
}

impl SharedMessage {
    /// Prepares `message` for broadcast. Nothing is encoded until the first connection needs it.
    pub fn new(message: Message) -> Self {
        Self {
            inner: Arc::new(Shared {
                message,
                plain: OnceLock::new(),
                deflated: Default::default(),
            }),
        }
    }

    /// True when both are the same prepared message (so they share every encoding).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.inner, &b.inner)
    }

    /// The message itself.
    pub fn message(&self) -> &Message {
        &self.inner.message
    }

    /// The uncompressed frame.
    pub(crate) fn plain_frame(&self) -> &Bytes {
        let m = &self.inner.message;
        self.inner
            .plain
            .get_or_init(|| encode_frame(m.opcode(), false, m.payload()))
    }

    /// The frame compressed without context for `window_bits` (9..=15), or `None` when compressing
    /// does not make it smaller. Computed by the first caller, shared by the rest.
    pub(crate) fn deflated_frame(&self, level: u32, window_bits: u8) -> Option<&Bytes> {
        let slot = &self.inner.deflated[usize::from(window_bits.clamp(9, 15) - 9)];
        slot.get_or_init(|| {
            let m = &self.inner.message;
            let compressed = deflate::compress_standalone(m.payload(), level, window_bits)?;
            (compressed.len() < m.payload().len())
                .then(|| encode_frame(m.opcode(), true, &compressed))
        })
        .as_ref()
    }
}

/// How one connection frames a [`SharedMessage`]: plain, or compressed without context takeover
/// (level, threshold, window bits) when that pays. Got from
/// [`WebSocket::shared_framing`](crate::WebSocket::shared_framing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFraming {
    pub(crate) deflate: Option<(u32, usize, u8)>,
}

impl SharedFraming {
    /// Frames as a connection without compression does.
    pub const PLAIN: Self = Self { deflate: None };

    /// The frame's bytes for this connection, encoded once for every connection framing alike.
    pub fn frame<'a>(&self, msg: &'a SharedMessage) -> &'a Bytes {
        match self.deflate {
            Some((level, threshold, window_bits)) if msg.message().payload().len() >= threshold => {
                msg.deflated_frame(level, window_bits)
                    .unwrap_or_else(|| msg.plain_frame())
            }
            _ => msg.plain_frame(),
        }
    }
}

impl From<Message> for SharedMessage {
    fn from(message: Message) -> Self {
        Self::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::parse_header;

    #[test]
    fn shared_frames_are_encoded_once() {
        let m = SharedMessage::new(Message::text("hello ".repeat(100)));
        let a = m.plain_frame().clone();
        let b = m.clone().plain_frame().clone();
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the second connection reuses the first encoding"
        );
        let h = parse_header(&a).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.rsv1, h.payload_len),
            (OpCode::Text, false, 600)
        );

        let z1 = m.deflated_frame(1, 15).unwrap().clone();
        let z2 = m.deflated_frame(1, 15).unwrap().clone();
        assert_eq!(z1.as_ptr(), z2.as_ptr());
        assert!(parse_header(&z1).unwrap().unwrap().rsv1);
        assert!(z1.len() < 100);
    }

    #[test]
    fn incompressible_messages_stay_plain() {
        let m = SharedMessage::new(Message::binary(&b"\x8f\x01"[..]));
        assert!(m.deflated_frame(1, 15).is_none());
    }
}
